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

/// Runs every check. `server` is the base URL of a running instance, `None` to skip it.
pub async fn diagnose(settings: &Settings, server: Option<&str>) -> Vec<Finding> {
    let mut out = vec![finding(Level::Ok, "settings", "valid")];
    out.extend(database(settings).await);
    out.push(disk(settings));
    out.push(sandbox(settings).await);
    if let Some(url) = server {
        out.push(running_server(url).await);
    }
    out
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
    // The doctor must answer quickly even when the pool settings are the problem.
    opts.max_connections = 2;
    opts.min_idle = 0;
    opts.acquire_timeout = Duration::from_secs(5);
    let shown = atlasia_server::settings::redact_url(&opts.url);
    let store = match tokio::time::timeout(Duration::from_secs(10), Store::connect(&opts)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return vec![finding(Level::Fail, "database", format!("{shown}: {e}"))],
        Err(_) => {
            return vec![finding(
                Level::Fail,
                "database",
                format!("{shown}: no answer in 10 s"),
            )];
        }
    };
    let started = Instant::now();
    let mut out = Vec::new();
    match store.ping().await {
        Ok(()) => out.push(finding(
            Level::Ok,
            "database",
            format!(
                "{} at {shown}, SELECT 1 in {:.1} ms",
                store.backend().as_str(),
                started.elapsed().as_secs_f64() * 1000.0
            ),
        )),
        Err(e) => {
            out.push(finding(Level::Fail, "database", format!("{shown}: {e}")));
            store.close().await;
            return out;
        }
    }
    match (store.count_by_status().await, store.diagnostics().await) {
        (Ok(counts), Ok(d)) => {
            let mut line = counts
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            if line.is_empty() {
                line = "no runs".into();
            }
            if let Some(age) = d.oldest_pending_ms {
                let _ = write!(line, "; oldest PENDING waits {} s", age / 1000);
            }
            let level = if d.expired_leases > 0 {
                let _ = write!(
                    line,
                    "; {} RUNNING run(s) with an expired lease (their worker died; they will be reclaimed)",
                    d.expired_leases
                );
                Level::Warn
            } else {
                Level::Ok
            };
            out.push(finding(level, "queue", line));
            if !d.connections_by_state.is_empty() {
                let total: i64 = d.connections_by_state.iter().map(|(_, n)| n).sum();
                let states = d
                    .connections_by_state
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let max = d.server_max_connections.unwrap_or(0);
                let level = if max > 0 && total * 10 > max * 8 {
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
            for (pid, secs, query) in d.long_queries {
                out.push(finding(
                    Level::Warn,
                    "long query",
                    format!("pid {pid} running {secs:.0} s: {query}"),
                ));
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            let mut detail = e.to_string();
            if detail.contains("workflow_runs") {
                detail.push_str(" (has `atlasia migrate` or `atlasia serve` run against it?)");
            }
            out.push(finding(Level::Fail, "queue", detail));
        }
    }
    store.close().await;
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

async fn running_server(base: &str) -> Finding {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return finding(Level::Fail, "server", e.to_string()),
    };
    let ready = client.get(format!("{base}/api/health/ready")).send().await;
    let (status, body) = match ready {
        Ok(r) => {
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
        Err(e) => {
            return finding(
                Level::Fail,
                "server",
                format!(
                    "{base} not reachable ({e}); is `atlasia serve` running? (--no-server skips this)"
                ),
            );
        }
    };
    let metrics = match client
        .get(format!("{base}/api/metrics/prometheus"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
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
    if !status.is_success() {
        for (name, check) in body["checks"].as_object().into_iter().flatten() {
            if let Some(reason) = check["reason"].as_str() {
                let _ = write!(detail, "; {name}: {reason}");
            }
        }
        return finding(Level::Fail, "server", detail);
    }
    finding(Level::Ok, "server", detail)
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
    fn reads_unlabelled_samples_only() {
        let text = "# HELP x\nfoo_total 3\nfoo_total_other 9\nbar{a=\"b\"} 1\n";
        assert_eq!(sample(text, "foo_total"), Some(3.0));
        assert_eq!(sample(text, "bar"), None);
        assert_eq!(sample(text, "missing"), None);
    }
}
