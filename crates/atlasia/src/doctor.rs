//! `atlasia doctor`: one command that collects what the runbook's diagnosis steps gather by hand
//! — settings, database reachability and latency, queue state and stuck leases, PostgreSQL
//! connection use and long queries, disk headroom, and the running server's readiness, pool and
//! memory — and prints one verdict line per check. Exit 1 when any check fails.

use atlasia_server::Settings;
use atlasia_server::routes::health::free_bytes;
use atlasia_store::Store;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub detail: String,
}

fn finding(level: Level, check: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        check,
        detail: detail.into(),
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Every check answers within this or is reported as FAIL "no answer in 5 s": a locked table,
/// an unreachable host or a stuck server never make the doctor hang.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// The sandbox check really starts a sandboxed command, which may take longer on a cold host.
const SANDBOX_DEADLINE: Duration = Duration::from_secs(20);

/// A session waiting this long for a lock is a FAIL (shorter waits are a WARN): the API's
/// writes answer in milliseconds, so seconds of waiting mean a session holds a lock too long.
const LOCK_WAIT_FAIL: Duration = Duration::from_secs(2);

fn no_answer(check: &'static str, limit: Duration) -> Finding {
    finding(
        Level::Fail,
        check,
        format!("no answer in {} s", limit.as_secs()),
    )
}

/// Runs one check under its deadline.
async fn bounded(
    check: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Vec<Finding>>,
) -> Vec<Finding> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| vec![no_answer(check, limit)])
}

/// Runs every check, the database, the sandbox and the server side by side, each bounded.
/// `server` is the base URL of a running instance, `None` to skip it.
pub async fn diagnose(settings: &Settings, server: Option<&str>) -> Vec<Finding> {
    let mut out = vec![finding(Level::Ok, "settings", "valid")];
    let (db, sandbox, srv, llm) = tokio::join!(
        database(settings),
        bounded("sandbox", SANDBOX_DEADLINE, async {
            vec![sandbox(settings).await]
        }),
        async {
            match server {
                Some(url) => running_server(url).await,
                None => Vec::new(),
            }
        },
        bounded("llm endpoints", CHECK_DEADLINE, llm_endpoints(settings)),
    );
    out.extend(db);
    out.push(disk(settings));
    out.extend(sandbox);
    out.extend(llm);
    out.extend(srv);
    out
}

/// Every configured LLM endpoint answers its model list (`GET /models`): FAIL for one nothing
/// listens on, that refuses the key, or that has no model list at its base URL.
async fn llm_endpoints(settings: &Settings) -> Vec<Finding> {
    let recorder = std::sync::Arc::new(atlasia_llm::NoRecorder);
    let gateway = match atlasia_llm::Gateway::new(&settings.llm, settings.agents.clone(), recorder)
    {
        Ok(g) => g,
        Err(e) => return vec![finding(Level::Fail, "llm endpoints", e.to_string())],
    };
    let probes = gateway.probe().await;
    if probes.is_empty() {
        return vec![finding(
            Level::Ok,
            "llm endpoints",
            "none configured: `atlasia run` uses the built-in simulator",
        )];
    }
    probes
        .into_iter()
        .map(|p| {
            let level = if p.result.is_ok() {
                Level::Ok
            } else {
                Level::Fail
            };
            finding(level, "llm endpoint", p.to_string())
        })
        .collect()
}

/// Really runs a command in the sandbox the settings describe: OK when it is isolated (no
/// network, its own PID namespace), WARN for `sandbox.mode = "none"`, FAIL when it cannot run.
async fn sandbox(settings: &Settings) -> Finding {
    use atlasia_engine::sandbox::{CommandSpec, Sandbox, Status};
    let sandbox = Sandbox::start(settings.sandbox_config()).await;
    match sandbox.status() {
        Status::Disabled => {
            return finding(
                Level::Warn,
                "sandbox",
                "sandbox.mode = \"none\": commands of bolts run WITHOUT isolation",
            );
        }
        Status::Unavailable(why) => {
            return finding(
                Level::Fail,
                "sandbox",
                format!(
                    "unavailable: {why}; bolts refuse to run commands (install bubblewrap or \
                     set sandbox.mode = \"none\")"
                ),
            );
        }
        Status::Enabled => {}
    }
    let dir = std::env::temp_dir().join(format!("atlasia-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return finding(
            Level::Fail,
            "sandbox",
            format!("creating {}: {e}", dir.display()),
        );
    }
    // PID 1 is the sandbox's own init and no network interface but loopback exists.
    let probe = r#"echo "pid=$$ uid=$(id -u) net=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')""#;
    let started = Instant::now();
    let res = sandbox
        .run(
            &CommandSpec::new(probe, &dir),
            Duration::from_secs(20),
            4096,
        )
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match res {
        Ok(o) if o.success() => finding(
            Level::Ok,
            "sandbox",
            format!(
                "{}: a command ran isolated in {ms:.0} ms ({})",
                match sandbox.bwrap_binary() {
                    Some(bwrap) => format!("bubblewrap at {}", bwrap.display()),
                    None => "in-process namespaces (no bubblewrap needed)".to_owned(),
                },
                o.output_tail
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        Ok(o) => finding(
            Level::Fail,
            "sandbox",
            format!(
                "a test command failed (exit {:?}): {}",
                o.exit_code,
                o.output_tail.trim()
            ),
        ),
        Err(e) => finding(Level::Fail, "sandbox", e.to_string()),
    }
}

async fn database(settings: &Settings) -> Vec<Finding> {
    let mut opts = settings.db_options();
    // The doctor must answer quickly even when the pool settings are the problem; a check
    // blocked by a lock keeps its connection, so the others get their own.
    opts.max_connections = 4;
    opts.min_idle = 0;
    opts.acquire_timeout = CHECK_DEADLINE;
    opts.connect_timeout = opts.connect_timeout.min(CHECK_DEADLINE);
    let shown = atlasia_server::settings::redact_url(&opts.url);
    let store = match tokio::time::timeout(CHECK_DEADLINE, Store::connect(&opts)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return vec![finding(Level::Fail, "database", format!("{shown}: {e}"))],
        Err(_) => return vec![no_answer("database", CHECK_DEADLINE)],
    };
    let mut out = bounded("database", CHECK_DEADLINE, async {
        let started = Instant::now();
        match store.ping().await {
            Ok(()) => vec![finding(
                Level::Ok,
                "database",
                format!(
                    "{} at {shown}, SELECT 1 in {:.1} ms",
                    store.backend().as_str(),
                    started.elapsed().as_secs_f64() * 1000.0
                ),
            )],
            Err(e) => vec![finding(Level::Fail, "database", format!("{shown}: {e}"))],
        }
    })
    .await;
    if out.iter().all(|f| f.level != Level::Fail) {
        let lease = Duration::from_millis(settings.engine.lease_ms);
        out.extend(bounded("queue", CHECK_DEADLINE, queue(&store, lease)).await);
        out.extend(bounded("connections", CHECK_DEADLINE, activity(&store)).await);
    }
    // A connection still waiting on a lock cannot be closed politely; do not wait for it.
    let _ = tokio::time::timeout(Duration::from_secs(1), store.close()).await;
    out
}

/// Run counts, the oldest PENDING run, stuck leases, and whether any worker is alive: PENDING
/// work older than the lease while no run holds a live lease means no worker heartbeated
/// within the lease — nobody is taking work.
async fn queue(store: &Store, lease: Duration) -> Vec<Finding> {
    let (counts, d) = match (store.count_by_status().await, store.diagnostics().await) {
        (Ok(c), Ok(d)) => (c, d),
        (Err(e), _) | (_, Err(e)) => {
            let mut detail = e.to_string();
            if detail.contains("workflow_runs") {
                detail.push_str(" (has `atlasia migrate` or `atlasia serve` run against it?)");
            }
            return vec![finding(Level::Fail, "queue", detail)];
        }
    };
    let mut line = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if line.is_empty() {
        line = "no runs".into();
    }
    let mut level = Level::Ok;
    if let Some(age) = d.oldest_pending_ms {
        let _ = write!(line, "; oldest PENDING waits {} s", age / 1000);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        if d.live_leases == 0 && age > lease_ms {
            level = Level::Fail;
            let _ = write!(
                line,
                "; {} PENDING and NO LIVE WORKER: no run heartbeated within engine.lease_ms                  ({} s) — is `atlasia serve` running with engine.workers > 0?",
                d.pending,
                lease.as_secs_f64()
            );
        }
    }
    if d.expired_leases > 0 {
        let _ = write!(
            line,
            "; {} RUNNING run(s) with an expired lease (their worker died; they will be reclaimed)",
            d.expired_leases
        );
        level = level.max(Level::Warn);
    }
    vec![finding(level, "queue", line)]
}

/// PostgreSQL's own view: connections against `max_connections`, long queries, lock waits
/// with the blocking session. Nothing on SQLite.
async fn activity(store: &Store) -> Vec<Finding> {
    let a = match store.activity().await {
        Ok(Some(a)) => a,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![finding(Level::Fail, "connections", e.to_string())],
    };
    let mut out = Vec::new();
    if !a.connections_by_state.is_empty() {
        let total: i64 = a.connections_by_state.iter().map(|(_, n)| n).sum();
        let states = a
            .connections_by_state
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let max = a.server_max_connections.unwrap_or(0);
        let level = if max > 0 && total * 100 >= max * 95 {
            Level::Fail
        } else if max > 0 && total * 10 > max * 8 {
            Level::Warn
        } else {
            Level::Ok
        };
        out.push(finding(
            level,
            "connections",
            format!("{total} to this database ({states}); server max_connections {max}"),
        ));
    }
    for (pid, secs, query) in a.long_queries {
        out.push(finding(
            Level::Warn,
            "long query",
            format!("pid {pid} running {secs:.0} s: {query}"),
        ));
    }
    for w in a.lock_waits {
        let level = if w.waiting_s >= LOCK_WAIT_FAIL.as_secs_f64() {
            Level::Fail
        } else {
            Level::Warn
        };
        out.push(finding(
            level,
            "lock wait",
            format!(
                "pid {} waits {:.1} s, blocked by pid {} ({}: {}); waiting: {} \
                 (end the blocker with SELECT pg_terminate_backend({}))",
                w.pid,
                w.waiting_s,
                w.blocking_pid,
                w.blocking_state,
                w.blocking_query.trim(),
                w.query.trim(),
                w.blocking_pid
            ),
        ));
    }
    out
}

fn disk(settings: &Settings) -> Finding {
    let dir = &settings.storage.data_dir;
    let floor = settings.storage.min_free_disk_mb as f64 * 1024.0 * 1024.0;
    match free_bytes(dir) {
        Ok(free) => {
            let free = free as f64;
            let level = if free <= floor {
                Level::Fail
            } else if free <= 2.0 * floor {
                Level::Warn
            } else {
                Level::Ok
            };
            finding(
                level,
                "disk",
                format!(
                    "{} free on {} (floor {})",
                    mib(free),
                    dir.display(),
                    mib(floor)
                ),
            )
        }
        Err(e) => finding(Level::Fail, "disk", format!("{}: {e}", dir.display())),
    }
}

/// Reads one unlabelled sample from Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The running server: readiness, pool, and what only it knows — database faults it saw,
/// memory against the cgroup limit, the LLM gateway, API latency by route. Bounded as a whole.
async fn running_server(base: &str) -> Vec<Finding> {
    let fetched = tokio::time::timeout(CHECK_DEADLINE, fetch_server(base)).await;
    let (status, body, metrics) = match fetched {
        Ok(Ok(x)) => x,
        Ok(Err(f)) => return vec![f],
        Err(_) => return vec![no_answer("server", CHECK_DEADLINE)],
    };
    let samples = crate::prom::parse(&metrics);
    let g = |n| sample(&metrics, n).map_or_else(|| "?".into(), |v| format!("{v}"));
    let mut detail = format!(
        "{base} {}; pool active {} idle {} pending {} max {}; pool timeouts {}",
        if status.is_success() {
            "ready"
        } else {
            "NOT READY"
        },
        g("db_pool_connections_active"),
        g("db_pool_connections_idle"),
        g("db_pool_connections_pending"),
        g("db_pool_connections_max"),
        sample(&metrics, "db_pool_timeouts_total").unwrap_or(0.0),
    );
    if let Some(rss) = sample(&metrics, "process_resident_memory_bytes") {
        let _ = write!(detail, "; RSS {}", mib(rss));
    }
    let mut level = Level::Ok;
    if !status.is_success() {
        for (name, check) in body["checks"].as_object().into_iter().flatten() {
            if let Some(reason) = check["reason"].as_str() {
                let _ = write!(detail, "; {name}: {reason}");
            }
        }
        level = Level::Fail;
    }
    let mut out = vec![finding(level, "server", detail)];
    out.push(db_faults(&samples));
    out.push(memory(sample(&metrics, "process_resident_memory_bytes")));
    out.push(llm(&samples));
    out.push(api_latency(&samples));
    out.push(live_streams(&samples));
    out
}

/// The live view's streams: how many are open, and how many ended badly (a slow or dead peer,
/// a failed read) since start — a WARN, since clients resume without loss.
fn live_streams(samples: &[crate::prom::Sample]) -> Finding {
    let ws = crate::prom::sum(samples, "websocket_connections_active");
    let sse = crate::prom::sum(samples, "sse_connections_active");
    let bad: f64 = samples
        .iter()
        .filter(|s| s.name == "websocket_disconnects_total")
        .filter(|s| {
            matches!(
                s.label("reason"),
                Some("slow_consumer" | "ping_timeout" | "error")
            )
        })
        .map(|s| s.value)
        .sum();
    let detail = format!(
        "{ws} WebSocket and {sse} SSE stream(s) open; {bad} dropped (slow, dead or failed) since start"
    );
    let level = if bad > 0.0 { Level::Warn } else { Level::Ok };
    finding(level, "live streams", detail)
}

async fn fetch_server(base: &str) -> Result<(reqwest::StatusCode, Value, String), Finding> {
    let client = reqwest::Client::builder()
        .timeout(CHECK_DEADLINE)
        .build()
        .map_err(|e| finding(Level::Fail, "server", e.to_string()))?;
    let ready = client
        .get(format!("{base}/api/health/ready"))
        .send()
        .await
        .map_err(|e| {
            finding(
                Level::Fail,
                "server",
                format!(
                    "{base} not reachable ({e}); is `atlasia serve` running? (--no-server skips this)"
                ),
            )
        })?;
    let status = ready.status();
    let body = ready.json::<Value>().await.unwrap_or(Value::Null);
    let metrics = match client
        .get(format!("{base}/api/metrics/prometheus"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Ok((status, body, metrics))
}

/// `db_up` and `db_errors_total{kind}` as the server counted them since it started.
fn db_faults(samples: &[crate::prom::Sample]) -> Finding {
    let up = samples.iter().find(|s| s.name == "db_up").map(|s| s.value);
    let mut kinds: Vec<String> = samples
        .iter()
        .filter(|s| s.name == "db_errors_total" && s.value > 0.0)
        .map(|s| format!("{} {}", s.label("kind").unwrap_or("?"), s.value))
        .collect();
    kinds.sort();
    let seen = if kinds.is_empty() {
        "no database errors since start".to_owned()
    } else {
        format!("database errors since start: {}", kinds.join(", "))
    };
    match up {
        Some(v) if v < 1.0 => finding(
            Level::Fail,
            "db faults",
            format!("the server cannot reach its database (db_up 0); {seen}"),
        ),
        None => finding(Level::Warn, "db faults", "the server reports no db_up"),
        Some(_) if kinds.is_empty() => finding(Level::Ok, "db faults", seen),
        Some(_) => finding(Level::Warn, "db faults", format!("db_up 1; {seen}")),
    }
}

/// The server's RSS against the cgroup memory limit (of the host the doctor runs on, which is
/// the server's own when both run in the same container).
fn memory(rss: Option<f64>) -> Finding {
    let Some(rss) = rss else {
        return finding(Level::Warn, "memory", "the server reports no RSS");
    };
    match atlasia_server::telemetry::cgroup_memory_limit() {
        None => finding(
            Level::Ok,
            "memory",
            format!("RSS {} (no cgroup memory limit)", mib(rss)),
        ),
        Some(limit) => {
            let share = rss / limit;
            let level = if share >= 0.95 {
                Level::Fail
            } else if share >= 0.8 {
                Level::Warn
            } else {
                Level::Ok
            };
            finding(
                level,
                "memory",
                format!(
                    "RSS {} of the cgroup limit {} ({:.0}%)",
                    mib(rss),
                    mib(limit),
                    share * 100.0
                ),
            )
        }
    }
}

/// The gateway since the server started: attempts, errors and 429s, open breakers, calls
/// waiting for a rate-limiter permit.
fn llm(samples: &[crate::prom::Sample]) -> Finding {
    let calls = crate::prom::sum(samples, "llm_api_calls_total");
    let errors_of = |t: Option<&str>| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == "llm_api_errors_total")
            .filter(|s| t.is_none_or(|t| s.label("error_type") == Some(t)))
            .map(|s| s.value)
            .sum::<f64>()
            + 0.0
    };
    let errors = errors_of(None);
    let limited = errors_of(Some("RATE_LIMIT"));
    let waiting = crate::prom::sum(samples, "llm_ratelimiter_waiting");
    let mut open = Vec::new();
    let mut half = Vec::new();
    for s in samples.iter().filter(|s| s.name == "llm_circuit_state") {
        let p = s.label("provider").unwrap_or("?").to_owned();
        if s.value == 1.0 {
            open.push(p);
        } else if s.value == 2.0 {
            half.push(p);
        }
    }
    let rate = |n: f64| {
        if calls > 0.0 { n / calls * 100.0 } else { 0.0 }
    };
    let mut detail = format!(
        "{calls:.0} attempts since start, errors {errors:.0} ({:.0}%), 429s {limited:.0} ({:.0}%), {waiting:.0} waiting for a rate-limiter permit",
        rate(errors),
        rate(limited)
    );
    let mut level = Level::Ok;
    if !open.is_empty() {
        let _ = write!(detail, "; circuit OPEN for {}", open.join(", "));
        level = Level::Fail;
    }
    if !half.is_empty() {
        let _ = write!(detail, "; circuit half-open for {}", half.join(", "));
        level = level.max(Level::Warn);
    }
    if calls >= 10.0 && (rate(errors) > 10.0 || rate(limited) > 5.0) || waiting > 0.0 {
        level = level.max(Level::Warn);
    }
    finding(level, "llm", detail)
}

/// p99 of each API route from the server's latency histogram; the three slowest are shown.
fn api_latency(samples: &[crate::prom::Sample]) -> Finding {
    let mut routes =
        crate::prom::quantile_by(samples, "http_server_requests_seconds", "route", 0.99);
    if routes.is_empty() {
        return finding(Level::Ok, "api latency", "no requests yet");
    }
    routes.sort_by(|a, b| b.2.total_cmp(&a.2));
    let worst = routes[0].2;
    let shown = routes
        .iter()
        .take(3)
        .map(|(route, n, p99)| {
            let p99 = if p99.is_finite() {
                format!("{:.0} ms", p99 * 1000.0)
            } else {
                "above the largest bucket".to_owned()
            };
            format!("{route} p99 ≤ {p99} ({n} requests)")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let level = if worst > 5.0 {
        Level::Fail
    } else if worst > 1.0 {
        Level::Warn
    } else {
        Level::Ok
    };
    finding(level, "api latency", format!("slowest: {shown}"))
}

/// Prints the report; returns the worst level.
pub fn print(findings: &[Finding]) -> Level {
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {:<12} {}", f.check, f.detail);
    }
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_metrics_turn_into_verdicts() {
        let healthy = crate::prom::parse(
            "db_up 1\ndb_errors_total{kind=\"unavailable\"} 0\n\
             llm_api_calls_total{provider=\"p\",outcome=\"ok\"} 100\n\
             llm_circuit_state{provider=\"p\"} 0\n\
             http_server_requests_seconds_bucket{route=\"/api/runs\",le=\"0.01\"} 99\n\
             http_server_requests_seconds_bucket{route=\"/api/runs\",le=\"+Inf\"} 100\n",
        );
        assert_eq!(db_faults(&healthy).level, Level::Ok);
        assert_eq!(llm(&healthy).level, Level::Ok);
        assert_eq!(api_latency(&healthy).level, Level::Ok);

        let troubled = crate::prom::parse(
            "db_up 0\ndb_errors_total{kind=\"unavailable\"} 7\n\
             llm_api_calls_total{provider=\"p\",outcome=\"error\"} 20\n\
             llm_api_errors_total{provider=\"p\",error_type=\"RATE_LIMIT\"} 15\n\
             llm_circuit_state{provider=\"p\"} 1\n\
             http_server_requests_seconds_bucket{route=\"/api/runs\",le=\"1\"} 1\n\
             http_server_requests_seconds_bucket{route=\"/api/runs\",le=\"10\"} 100\n\
             http_server_requests_seconds_bucket{route=\"/api/runs\",le=\"+Inf\"} 100\n",
        );
        let db = db_faults(&troubled);
        assert_eq!(db.level, Level::Fail);
        assert!(db.detail.contains("unavailable 7"), "{}", db.detail);
        let l = llm(&troubled);
        assert_eq!(l.level, Level::Fail);
        assert!(l.detail.contains("circuit OPEN for p"), "{}", l.detail);
        assert!(l.detail.contains("429s 15 (75%)"), "{}", l.detail);
        let api = api_latency(&troubled);
        assert_eq!(api.level, Level::Fail);
        assert!(
            api.detail.contains("/api/runs p99 ≤ 10000 ms"),
            "{}",
            api.detail
        );
    }

    #[test]
    fn reads_unlabelled_samples_only() {
        let text = "# HELP x\nfoo_total 3\nfoo_total_other 9\nbar{a=\"b\"} 1\n";
        assert_eq!(sample(text, "foo_total"), Some(3.0));
        assert_eq!(sample(text, "bar"), None);
        assert_eq!(sample(text, "missing"), None);
    }
}
