//! What operators watch: the Prometheus exposition (route templates, pool, queue, disk and
//! process gauges, valid for promtool before and after whole bolts ran; error and outcome
//! counters at 0 from start; `llm_cost_per_bolt` once per finished bolt, failed ones included;
//! budgets seeded from the ledger after a restart), the readiness checks and their reasons, JSON
//! logs tied to the correlation id without secrets, and graceful shutdown on SIGTERM (in-flight
//! requests finish, the drain deadline is honoured).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

// ---- helpers --------------------------------------------------------------------------------

/// A run request the API accepts.
fn run_body(title: &str) -> Value {
    json!({"repo": "acme/widgets", "title": title})
}

/// `GET /api/metrics/prometheus` without a token; the text body.
async fn scrape(srv: &TestServer) -> String {
    let resp = srv
        .client
        .get(srv.url("/api/metrics/prometheus"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    resp.text().await.unwrap()
}

/// Fails unless `promtool check metrics` accepts `body`. A missing promtool fails too, unless
/// `ATLASIA_TEST_SKIP_PROMTOOL=1`, so a CI image without it cannot pass this silently.
fn promtool_check(body: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if std::env::var("ATLASIA_TEST_SKIP_PROMTOOL").is_ok_and(|v| v == "1") => {
            eprintln!("skipping promtool ({e}; ATLASIA_TEST_SKIP_PROMTOOL=1)");
            return;
        }
        Err(e) => panic!("promtool is required (or set ATLASIA_TEST_SKIP_PROMTOOL=1): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /api/health/ready` without a token.
async fn ready(srv: &TestServer) -> (StatusCode, Value) {
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/api/health/ready", None, None)
        .await;
    (s, v)
}

/// The database name at the end of a PostgreSQL URL.
fn pg_database_name(url: &str) -> &str {
    url.rsplit_once('/').unwrap().1
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm(srv: &TestServer) {
    let pid = srv.child.id().expect("server already exited");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits at most `limit` for the server to exit.
async fn wait_exit(srv: &mut TestServer, limit: Duration) -> std::process::ExitStatus {
    let waited = tokio::time::timeout(limit, srv.child.wait()).await;
    match waited {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("server still running after {limit:?}; log:\n{}", srv.log()),
    }
}

/// Waits until the server's log contains `needle`.
async fn log_contains(srv: &TestServer, needle: &str) {
    eventually(Duration::from_secs(10), || async {
        srv.log().contains(needle).then_some(())
    })
    .await;
}

// ---- 6. metrics -----------------------------------------------------------------------------

async fn prometheus_exposition(db: Db) {
    let srv = TestServer::start(db).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let run = srv.create_run(run_body(&format!("run {i}"))).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..2] {
        let (s, v) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, _) = srv.get("/api/no/such/route", ADMIN_TOKEN).await;
    assert_eq!(s, 404);

    // A run that never ran, cancelled: a finished bolt that cost nothing.
    let (s, v) = srv
        .post(
            &format!("/api/runs/{}/cancel", ids[2]),
            ADMIN_TOKEN,
            &json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let body = scrape(&srv).await;
    assert_http_histogram(&body, &ids);
    assert_pool_and_queue(&body, 2);
    assert_host_gauges(&body);
    assert_eq!(sample(&body, "llm_cost_per_bolt_count", &[]), Some(1.0));
    assert_eq!(sample(&body, "llm_cost_per_bolt_sum", &[]), Some(0.0));
    assert_outcomes(&body, 0.0, 0.0, 1.0);
    promtool_check(&body);
}

/// `workflow_runs_finished_total{status}` as expected (every status present, 0 included).
fn assert_outcomes(body: &str, done: f64, failed: f64, cancelled: f64) {
    for (status, want) in [("DONE", done), ("FAILED", failed), ("CANCELLED", cancelled)] {
        let label = format!(r#"status="{status}""#);
        assert_eq!(
            sample(body, "workflow_runs_finished_total", &[&label]),
            Some(want),
            "workflow_runs_finished_total{{{label}}}:\n{body}"
        );
    }
}

/// The counters alerts read with `increase()` exist at 0 before anything happened: a series
/// born with its first failure hides that failure from `increase()`.
fn assert_zero_counters(body: &str, provider: &str) {
    let p = format!(r#"provider="{provider}""#);
    for t in [
        "RATE_LIMIT",
        "TIMEOUT",
        "SERVER_ERROR",
        "AUTH",
        "BAD_REQUEST",
        "NETWORK",
        "CIRCUIT_OPEN",
    ] {
        let label = format!(r#"error_type="{t}""#);
        assert_eq!(
            sample(body, "llm_api_errors_total", &[&p, &label]),
            Some(0.0),
            "llm_api_errors_total{{{p},{label}}}:\n{body}"
        );
    }
    let budget = [r#"provider="-""#, r#"error_type="BUDGET""#];
    assert_eq!(sample(body, "llm_api_errors_total", &budget), Some(0.0));
    for (name, label) in [
        ("github_api_errors_total", r#"error_type="RATE_LIMIT""#),
        ("github_api_errors_total", r#"error_type="AUTH""#),
        ("github_webhook_rejected_total", r#"reason="bad_signature""#),
        ("github_webhook_deliveries_total", r#"outcome="accepted""#),
        ("llm_cache_requests_total", r#"result="hit""#),
    ] {
        assert_eq!(sample(body, name, &[label]), Some(0.0), "{name}{{{label}}}");
    }
    assert_outcomes(body, 0.0, 0.0, 0.0);
}

/// `atlasia.toml` pricing the simulator's model (1000/2000 USD per million tokens), so bolts
/// cost money; `extra` is appended.
fn price_sim_model(db: &TestDb, extra: &str) {
    std::fs::write(
        db.dir.path().join("atlasia.toml"),
        format!(
            "[llm.prices.\"sim-model\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 2000.0\n{extra}"
        ),
    )
    .unwrap();
}

/// A server with two workers on `sim` (its model priced) plus `extra` variables.
async fn priced_bolt_server(db: TestDb, sim: &Sim, extra: &[(&str, &str)]) -> TestServer {
    price_sim_model(&db, "");
    common::bolts::bolt_server(db, sim, extra).await
}

/// Creates the calc bolt whose developer applies `fix`; returns the run id.
async fn calc_bolt(srv: &TestServer, repo: &std::path::Path, fix: &str) -> String {
    let run = srv
        .create_run(
            json!({"repo": repo.display().to_string(), "title": "add() subtracts",
                           "body": body(json!({"developer": [edit_to(fix)]}))}),
        )
        .await;
    run["id"].as_str().unwrap().to_owned()
}

/// The ledger's (calls, tokens in, tokens out, USD) for run `id`, read with the database CLI.
fn ledger(db: &TestDb, id: &str) -> (i64, i64, i64, f64) {
    let out = db.sql_cli(&format!(
        "SELECT COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), \
         COALESCE(SUM(cost_usd), 0) FROM llm_calls WHERE run_id = '{id}'"
    ));
    let f: Vec<&str> = out.trim().split('|').collect();
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    )
}

/// After a whole bolt: promtool still passes, the runbook's names are there (the renamed
/// `llm_calls_by_agent_total` still matches the runbook's grep), the bolt's cost is observed
/// once, and the budget ledger forgot the finished run.
async fn metrics_after_a_bolt(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = priced_bolt_server(TestDb::new(db).await, &sim, &[]).await;
    let before = scrape(&srv).await;
    assert_zero_counters(&before, "primary");
    promtool_check(&before);

    let repo = calc_repo();
    let id = calc_bolt(&srv, repo.path(), FIXED_NEW).await;
    let done = wait_status(&srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    let cost = done["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{done}");
    let (_, tin, tout, usd) = ledger(&srv.db, &id);
    assert_eq!(
        (done["tokens_in"].as_i64(), done["tokens_out"].as_i64()),
        (Some(tin), Some(tout))
    );
    assert!((usd - cost).abs() < 1e-9, "ledger {usd} vs run {cost}");

    let body = scrape(&srv).await;
    promtool_check(&body);
    assert_eq!(sample(&body, "llm_cost_per_bolt_count", &[]), Some(1.0));
    let observed = sample(&body, "llm_cost_per_bolt_sum", &[]).unwrap();
    assert!(
        (observed - cost).abs() < 1e-9,
        "observed {observed}, run {cost}"
    );
    assert_outcomes(&body, 1.0, 0.0, 0.0);
    for agent in ["developer", "reviewer-security", "judge", "writer"] {
        let label = format!(r#"agent="{agent}""#);
        let n = sample(&body, "llm_calls_by_agent_total", &[&label]).unwrap_or(0.0);
        assert!(n >= 1.0, "llm_calls_by_agent_total{{{label}}} = {n}");
    }
    assert!(
        body.lines().any(|l| l.starts_with("llm_calls_by_agent")),
        "the runbook's `grep llm_calls_by_agent` finds nothing"
    );
    let steps = sample(
        &body,
        "workflow_step_duration_seconds_count",
        &[r#"agent="DEVELOPER""#],
    );
    assert!(steps.is_some_and(|n| n >= 1.0), "{body}");
    assert!(body.contains("# HELP workflow_step_duration_seconds "));
    assert_eq!(sample(&body, "llm_budget_tracked_runs", &[]), Some(0.0));
}

/// A bolt that fails after paying for calls: the run record's tokens and cost are the
/// ledger's, all of them (the failing step's calls included), and the bolt's cost is observed.
async fn a_failed_bolt_counts_its_cost(db: Db) {
    let sim = Sim::start(&[]).await;
    // The developer's first answer already exceeds its token allowance: DEVELOPER fails.
    let extra = [("ATLASIA_ENGINE__DEVELOPER_MAX_TOKENS", "1")];
    let srv = priced_bolt_server(TestDb::new(db).await, &sim, &extra).await;
    let repo = calc_repo();
    let id = calc_bolt(&srv, repo.path(), FIXED_NEW).await;
    let failed = wait_status(&srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(failed["status"], "FAILED", "{failed}\n{}", srv.log());
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("token budget"), "{failed}");
    let developer_calls = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM llm_calls WHERE run_id = '{id}' AND step = 'DEVELOPER'"
    ));
    assert!(developer_calls.trim().parse::<i64>().unwrap() >= 1);
    // Read as soon as the run says FAILED: no waiting for a late roll-up.
    let (calls, tin, tout, usd) = ledger(&srv.db, &id);
    assert!(calls > 0 && tin > 0 && tout > 0 && usd > 0.0);
    assert_eq!(failed["tokens_in"].as_i64(), Some(tin), "{failed}");
    assert_eq!(failed["tokens_out"].as_i64(), Some(tout), "{failed}");
    let cost = failed["cost_usd"].as_f64().unwrap();
    assert!((cost - usd).abs() < 1e-9, "run {cost} vs ledger {usd}");

    let body = scrape(&srv).await;
    promtool_check(&body);
    assert_outcomes(&body, 0.0, 1.0, 0.0);
    assert_eq!(sample(&body, "llm_cost_per_bolt_count", &[]), Some(1.0));
    let observed = sample(&body, "llm_cost_per_bolt_sum", &[]).unwrap();
    assert!(
        (observed - cost).abs() < 1e-9,
        "observed {observed}, run {cost}"
    );
}

/// Spend recorded before a restart still counts: the day cap from the ledger's rows since UTC
/// midnight (not older ones), a run's cap from its own rows.
async fn budgets_survive_a_restart(db: Db) {
    let sim = Sim::start(&[]).await;
    let first = TestServer::start_with(TestDb::new(db).await, &[]).await;
    let repo = calc_repo();
    let run = first
        .create_run(
            json!({"repo": repo.path().display().to_string(), "title": "add() subtracts",
                           "budget_usd": 20.0}),
        )
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    // What the first process spent: 19 USD on this run today, 100 USD on nothing yesterday.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let yesterday = now - 86_400_000 - (now % 86_400_000) + 1_000;
    first.db.sql_cli(&format!(
        "INSERT INTO llm_calls (run_id, step, agent, provider, model, tokens_in, tokens_out, \
         cost_usd, latency_ms, outcome, cached, created_at) VALUES \
         ('{id}', 'PM', 'pm', 'primary', 'sim-model', 1000, 1000, 19.0, 5, 'ok', false, {now}), \
         (NULL, NULL, 'proxy', 'primary', 'sim-model', 1, 1, 100.0, 5, 'ok', false, {yesterday})"
    ));
    let TestServer { db, .. } = first;
    // The day cap (50) is only spent by yesterday's rows; the run's cap (20) is nearly spent.
    let srv = priced_bolt_server(db, &sim, &[("ATLASIA_LLM__BUDGET__PER_DAY_USD", "50.0")]).await;
    let esc = wait_status(&srv, &id, &["ESCALATED", "DONE", "FAILED"]).await;
    assert_eq!(esc["status"], "ESCALATED", "{esc}\n{}", srv.log());
    assert_eq!(esc["current_step"], "PM", "{esc}");
    let e = &artifacts(&srv, &id, "escalation").await[0]["payload"];
    let blocker = e["blocker"].as_str().unwrap_or_default();
    assert!(blocker.contains("bolt budget"), "{e}");
    assert_eq!(
        ledger(&srv.db, &id).0,
        1,
        "no call was paid for past the cap"
    );
    assert!(
        srv.log().contains("spent_today_usd=19"),
        "the day was not seeded with today's 19 USD only:\n{}",
        srv.log()
    );
    let body = scrape(&srv).await;
    assert_eq!(sample(&body, "llm_budget_tracked_runs", &[]), Some(0.0));
    // Escalated is not finished: a human may still PROCEED. ABORT finishes it (FAILED), and
    // the bolt's cost is observed then, with what the ledger holds for it.
    let observed = sample(&body, "llm_cost_per_bolt_count", &[]).unwrap_or(0.0);
    assert_eq!(observed, 0.0, "an escalated bolt was observed as finished");
    assert_eq!(esc["cost_usd"].as_f64(), Some(19.0), "{esc}");
    let (s, v) = srv
        .post(
            &format!("/api/runs/{id}/escalation-decision"),
            ADMIN_TOKEN,
            &json!({"decision": "ABORT", "guidance": "over budget"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let body = scrape(&srv).await;
    promtool_check(&body);
    assert_outcomes(&body, 0.0, 1.0, 0.0);
    assert_eq!(sample(&body, "llm_cost_per_bolt_count", &[]), Some(1.0));
    assert_eq!(sample(&body, "llm_cost_per_bolt_sum", &[]), Some(19.0));
}

/// Latencies are labelled by route template; raw ids and unmatched paths never become labels.
fn assert_http_histogram(body: &str, ids: &[String]) {
    let name = "http_server_requests_seconds_bucket";
    let by_template = sample(
        body,
        name,
        &[r#"route="/api/runs/{id}""#, r#"status="200""#],
    );
    assert!(by_template.is_some(), "no /api/runs/{{id}} bucket:\n{body}");
    let count = sample(
        body,
        "http_server_requests_seconds_count",
        &[r#"route="/api/runs/{id}""#, r#"method="GET""#],
    );
    assert_eq!(count, Some(2.0), "both GETs share the template's series");
    let unmatched = sample(body, name, &[r#"route="unmatched""#, r#"status="404""#]);
    assert!(unmatched.is_some(), "404 not labelled unmatched:\n{body}");
    assert!(!body.contains("/no/such/route"), "raw path became a label");
    for id in ids {
        assert!(!body.contains(id.as_str()), "raw id {id} in the exposition");
    }
}

fn assert_pool_and_queue(body: &str, pending: usize) {
    for g in ["active", "idle", "pending"] {
        let name = format!("db_pool_connections_{g}");
        assert!(sample(body, &name, &[]).is_some(), "{name} missing");
    }
    assert_eq!(sample(body, "db_pool_connections_max", &[]), Some(20.0));
    let pending = Some(pending as f64);
    let runs = sample(body, "workflow_runs", &[r#"status="PENDING""#]);
    assert_eq!(runs, pending, "workflow_runs{{status=PENDING}}");
    assert_eq!(
        sample(body, "workflow_runs", &[r#"status="DONE""#]),
        Some(0.0)
    );
    assert_eq!(sample(body, "workflow_queue_depth", &[]), pending);
}

fn assert_host_gauges(body: &str) {
    let free = sample(body, "disk_free_bytes", &[]).expect("disk_free_bytes missing");
    assert!(free > 0.0);
    let rss = sample(body, "process_resident_memory_bytes", &[]).expect("rss missing");
    assert!(rss > 0.0);
    let fds = sample(body, "process_open_fds", &[]).expect("open fds missing");
    assert!(fds >= 3.0);
    let start = sample(body, "process_start_time_seconds", &[]).expect("start time missing");
    assert!(start > 1.6e9, "start time {start} is not a Unix time");
    assert!(sample(body, "process_cpu_seconds_total", &[]).is_some());
}

// ---- 7. readiness ---------------------------------------------------------------------------

async fn readiness_checks(db: Db) {
    let srv = TestServer::start(db).await;
    let (s, v) = ready(&srv).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ready");
    for check in ["database", "disk"] {
        assert_eq!(v["checks"][check]["ok"], true, "{v}");
        assert!(v["checks"][check]["latency_ms"].is_number(), "{v}");
        assert!(v["checks"][check].get("reason").is_none(), "{v}");
    }
}

async fn readiness_disk_floor(db: Db) {
    let env = [("ATLASIA_STORAGE__MIN_FREE_DISK_MB", "1000000000")];
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let (s, v) = ready(&srv).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["checks"]["disk"]["ok"], false);
    let reason = v["checks"]["disk"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("floor") && reason.contains("1000000000"),
        "{reason}"
    );
    assert_eq!(v["checks"]["database"]["ok"], true, "{v}");
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/api/health/live", None, None)
        .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_dropped_postgres_database() {
    if skip_postgres() {
        return;
    }
    let srv = TestServer::start(Db::Postgres).await;
    assert_eq!(ready(&srv).await.0, 200);
    drop_database(pg_database_name(&srv.db.url)).await;

    let v = eventually(Duration::from_secs(30), || async {
        let (s, v) = ready(&srv).await;
        (s == 503).then_some(v)
    })
    .await;
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["checks"]["database"]["ok"], false, "{v}");
    let reason = v["checks"]["database"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(!reason.is_empty(), "{v}");
    assert_eq!(v["checks"]["disk"]["ok"], true, "{v}");
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/api/health/live", None, None)
        .await;
    assert_eq!(s, 200, "liveness must not depend on the database");
}

/// Drops `name` from outside, cutting the server's connections (`WITH (FORCE)`).
async fn drop_database(name: &str) {
    use sqlx::Connection;
    let admin = std::env::var("ATLASIA_TEST_PG_URL").unwrap();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let sql = format!("DROP DATABASE {name} WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

// ---- 8. logs --------------------------------------------------------------------------------

async fn json_logs(db: Db) {
    let env = [("ATLASIA_SERVER__LOG_FORMAT", "json")];
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let run = srv.create_run(run_body("logged")).await;
    let id = run["id"].as_str().unwrap();
    let resp = srv
        .client
        .get(srv.url(&format!("/api/runs/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Correlation-ID", "corr-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-correlation-id"], "corr-123");
    // A later request's line, once present, means every earlier line is written too.
    send_marker(&srv, "corr-marker").await;

    let lines = json_lines(&srv.log());
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && correlation(l) == Some("corr-123"))
        .collect();
    assert_eq!(ours.len(), 1, "request lines for corr-123: {ours:?}");
    let line = ours[0];
    assert_eq!(line["route"], "/api/runs/{id}", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["latency_ms"].is_number(), "{line}");
    assert!(
        !srv.log().contains(ADMIN_TOKEN),
        "the bearer token reached the log"
    );
}

/// Sends an unauthenticated request with correlation id `marker` and waits for its log line.
async fn send_marker(srv: &TestServer, marker: &str) {
    srv.client
        .get(srv.url("/api/health/live"))
        .header("X-Correlation-ID", marker)
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        json_lines(&srv.log())
            .iter()
            .any(|l| l["message"] == "request" && correlation(l) == Some(marker))
            .then_some(())
    })
    .await;
}

/// Every non-empty line, parsed; panics on one that is not JSON.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The correlation id a JSON line carries: as a field or in its current span.
fn correlation(line: &Value) -> Option<&str> {
    line.get("correlation_id")
        .or_else(|| line.get("span").and_then(|s| s.get("correlation_id")))
        .and_then(Value::as_str)
}

// ---- 9. graceful shutdown -------------------------------------------------------------------

async fn sigterm_idle(db: Db) {
    let mut srv = TestServer::start(db).await;
    let started = std::time::Instant::now();
    let status = srv.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}; log:\n{}", srv.log());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(srv.log().contains("SIGTERM received"), "{}", srv.log());
}

/// Starts `POST /api/runs` in the background; it blocks on the lock.
fn spawn_create(srv: &TestServer) -> tokio::task::JoinHandle<reqwest::Result<StatusCode>> {
    let req = srv
        .client
        .post(srv.url("/api/runs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&run_body("in flight"));
    tokio::spawn(async move { req.send().await.map(|r| r.status()) })
}

/// Waits until the insert is waiting inside the server: a pool connection is lent out on
/// several scrapes in a row (one scrape could catch a connection on its way back to the pool),
/// and on PostgreSQL the server's backend is seen waiting for the lock.
async fn wait_in_flight(srv: &TestServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut streak = 0;
    while streak < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the POST never showed up as a lent-out connection"
        );
        let body = scrape(srv).await;
        let active = sample(&body, "db_pool_connections_active", &[]).unwrap_or(0.0);
        streak = if active >= 1.0 { streak + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if srv.db.kind == Db::Postgres {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'atlasia' \
                   AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO workflow_runs%'";
        eventually(Duration::from_secs(20), || async {
            (srv.db.sql_cli(sql).trim() == "1").then_some(())
        })
        .await;
    }
}

/// The server's address for a raw TCP connect.
fn socket_addr(srv: &TestServer) -> String {
    srv.base.trim_start_matches("http://").to_owned()
}

async fn in_flight_request_finishes(db: Db) {
    // No minimum of idle connections: nothing but requests lends connections out.
    let env = [("ATLASIA_DATABASE__MIN_IDLE", "0")];
    let mut srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let lock = WriteLock::take(&srv.db).await;
    let post = spawn_create(&srv);
    wait_in_flight(&srv).await;

    sigterm(&srv);
    log_contains(&srv, "SIGTERM received").await;
    assert!(
        !post.is_finished(),
        "the POST finished while the lock was held"
    );
    lock.release().await;

    let status = tokio::time::timeout(Duration::from_secs(20), post)
        .await
        .expect("POST did not complete")
        .unwrap()
        .expect("POST failed during shutdown");
    assert_eq!(status, StatusCode::ACCEPTED);
    let exit = wait_exit(&mut srv, Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}; log:\n{}", srv.log());
    let refused = tokio::net::TcpStream::connect(socket_addr(&srv)).await;
    assert!(refused.is_err(), "still accepting connections after exit");
    let n = srv.db.sql_cli("SELECT count(*) FROM workflow_runs");
    assert_eq!(n.trim(), "1", "the in-flight run was not stored");
}

async fn shutdown_deadline_is_honoured(db: Db) {
    let env = [
        ("ATLASIA_DATABASE__MIN_IDLE", "0"),
        ("ATLASIA_SERVER__SHUTDOWN_TIMEOUT_MS", "500"),
    ];
    let mut srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let lock = WriteLock::take(&srv.db).await;
    let post = spawn_create(&srv);
    wait_in_flight(&srv).await;

    sigterm(&srv);
    // Well under the SQLite busy timeout (10 s) and the request timeout (30 s): the server
    // must give up on the blocked request, not wait for it to fail on its own.
    let exit = wait_exit(&mut srv, Duration::from_secs(5)).await;
    assert!(exit.code().is_some(), "killed by a signal: {exit}");
    assert!(
        srv.log().contains("did not finish in time"),
        "no warning about the abandoned request:\n{}",
        srv.log()
    );
    lock.release().await;
    post.abort();
}

/// Which endpoints served each agent of run `id`, from the ledger.
fn providers_by_agent(
    db: &TestDb,
    id: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let out = db.sql_cli(&format!(
        "SELECT agent, provider FROM llm_calls WHERE run_id = '{id}' GROUP BY agent, provider"
    ));
    let mut map = std::collections::BTreeMap::<_, std::collections::BTreeSet<_>>::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let (agent, provider) = line.trim().split_once('|').unwrap();
        map.entry(agent.to_owned())
            .or_default()
            .insert(provider.to_owned());
    }
    map
}

/// `[agents.reviewer]` (the runbook's name) routes all four review personas; a persona's own
/// section, written in its environment form, wins; every agent whose contract says
/// `model_class: cheap` (the tester included) runs on `llm.cheap_model`.
async fn agents_route_as_configured(db: Db) {
    let sim = Sim::start(&[]).await;
    let tdb = TestDb::new(db).await;
    let model = |name: &str| {
        format!(
            "[[llm.models]]\nname = \"{name}\"\n[[llm.models.endpoints]]\nname = \"{name}-ep\"\n\
             base_url = \"{}\"\nmodel = \"sim-model\"\napi_key = \"sk-test-key\"\n",
            sim.base
        )
    };
    let config = format!(
        "[llm]\ndefault_model = \"big\"\ncheap_model = \"small\"\n{}{}{}\
         [agents.reviewer]\nllm_model = \"review\"\n",
        model("big"),
        model("small"),
        model("review")
    );
    std::fs::write(tdb.dir.path().join("atlasia.toml"), config).unwrap();
    let env = [
        ("ATLASIA_ENGINE__WORKERS", "2"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
        ("ATLASIA_AGENTS__REVIEWER_SECURITY__LLM_MODEL", "big"),
        ("ATLASIA_LLM__SIMULATOR", "true"),
    ];
    let srv = TestServer::start_with(tdb, &env).await;
    let repo = calc_repo();
    // A wrong fix first: the tests fail, so the tester agent is asked for its report.
    let script = json!({"developer": [edit_to(WRONG_NEW), re_edit(WRONG_NEW, FIXED_NEW)]});
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts", "body": body(script)}))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    // Three endpoints serve the unpriced `sim-model`: one warning, at start, not one per call.
    let warnings = srv.log().matches("model has no price").count();
    assert_eq!(warnings, 1, "{}", srv.log());
    let served = providers_by_agent(&srv.db, id);
    let expect = [
        ("developer", "big-ep"),
        ("architect", "big-ep"),
        ("reviewer-security", "big-ep"),
        ("reviewer-sre", "review-ep"),
        ("reviewer-code-quality", "review-ep"),
        ("reviewer-frontend-ux", "review-ep"),
        ("pm", "small-ep"),
        ("qualifier", "small-ep"),
        ("tester", "small-ep"),
        ("judge", "small-ep"),
        ("writer", "small-ep"),
    ];
    for (agent, provider) in expect {
        let got = served.get(agent);
        assert_eq!(
            got.map(|s| s.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(vec![provider]),
            "{agent}: {served:?}"
        );
    }
}

on_both! {
    metrics => prometheus_exposition;
    agents_route => agents_route_as_configured;
    metrics_after_bolt => metrics_after_a_bolt;
    failed_bolt_cost => a_failed_bolt_counts_its_cost;
    budgets_restart => budgets_survive_a_restart;
    ready_ok => readiness_checks;
    ready_disk_floor => readiness_disk_floor;
    logs_json => json_logs;
    shutdown_idle => sigterm_idle;
    shutdown_in_flight => in_flight_request_finishes;
    shutdown_deadline => shutdown_deadline_is_honoured;
}
