//! Pool exhaustion, black-box over HTTP against the real binary. The server runs with two
//! connections and a 200 ms acquire timeout; the test holds a database lock so the server's
//! writes block while holding their connections, then fires a burst of `POST /api/runs`. The
//! server must answer every request (202, or 503 `db_pool_timeout` with `Retry-After`), lose
//! nothing, count the timeouts, keep answering liveness, and recover once the lock is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 2;
const BURST: usize = 50;
/// A request that takes longer than this has hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest the lock is held: well below the server's SQLite busy_timeout (10 s), so the
/// blocked writes wait rather than fail.
const MAX_HOLD: Duration = Duration::from_secs(5);

/// What one `POST /api/runs` of the burst got back.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: Option<String>,
}

/// Sends one create request; `Err` when the client gave up (the server hung).
async fn post_run(
    client: reqwest::Client,
    url: String,
    n: usize,
    done: Arc<AtomicUsize>,
) -> Result<Reply, String> {
    let body = json!({"repo": "acme/widgets", "title": format!("burst {n}")});
    let res = async {
        let resp = client
            .post(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        let text = resp.text().await?;
        Ok::<_, reqwest::Error>(Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            retry_after,
        })
    }
    .await
    .map_err(|e| format!("request {n}: {e}"));
    done.fetch_add(1, Ordering::SeqCst);
    res
}

/// Polls until `done` reaches `target` or `limit` passes; returns the count reached.
async fn wait_for(done: &AtomicUsize, target: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while done.load(Ordering::SeqCst) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.load(Ordering::SeqCst)
}

/// The value of an unlabelled sample in Prometheus text, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// The run ids the database holds, and how many `run_created` events, read with the CLI.
fn stored(db: &TestDb) -> (HashSet<String>, usize) {
    let ids = db
        .sql_cli("SELECT id FROM workflow_runs;")
        .lines()
        .map(str::to_owned)
        .collect();
    let created = db
        .sql_cli("SELECT COUNT(*) FROM run_events WHERE kind = 'run_created';")
        .trim()
        .parse()
        .unwrap();
    (ids, created)
}

async fn pool_exhaustion(db: Db) {
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[
            ("ATLASIA_DATABASE__MAX_CONNECTIONS", "2"),
            ("ATLASIA_DATABASE__MIN_IDLE", "0"),
            ("ATLASIA_DATABASE__ACQUIRE_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/api/health/ready", None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let lock = WriteLock::take(&srv.db).await;
    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..BURST)
        .map(|n| {
            tokio::spawn(post_run(
                client.clone(),
                srv.url("/api/runs"),
                n,
                done.clone(),
            ))
        })
        .collect();

    // Once the first answer is back the writers are certainly stuck: the process must still
    // say it is alive, promptly. On PostgreSQL the blocked writes hold every connection, so
    // readiness must say the database is not usable; on SQLite writers queue in the process
    // (one connection in the database at a time) and reads still work, so it stays ready.
    assert!(
        wait_for(&done, 1, MAX_HOLD).await >= 1,
        "no request finished while the lock was held"
    );
    let started = Instant::now();
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/api/health/live", None, None)
        .await;
    let live_took = started.elapsed();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        live_took < Duration::from_secs(2),
        "liveness took {live_took:?}"
    );
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/api/health/ready", None, None)
        .await;
    if db == Db::Postgres {
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["checks"]["database"]["ok"], json!(false), "{v}");
    } else {
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // At most MAX_CONNECTIONS requests can be inside the database; every other one must give
    // up after the acquire timeout, while the lock is still held.
    let answered_while_locked = wait_for(&done, BURST - MAX_CONNECTIONS, MAX_HOLD).await;
    lock.release().await;

    let mut replies = Vec::new();
    for task in burst {
        replies.push(task.await.unwrap().unwrap_or_else(|e| panic!("hung: {e}")));
    }
    assert!(
        answered_while_locked >= BURST - MAX_CONNECTIONS,
        "only {answered_while_locked} of {BURST} requests were answered while the pool was \
         exhausted; waiters outlived the 200 ms acquire timeout"
    );

    let mut accepted = HashSet::new();
    let mut rejected = 0;
    for r in &replies {
        match r.status {
            StatusCode::ACCEPTED => {
                assert!(accepted.insert(r.body["id"].as_str().unwrap().to_owned()));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.body["error"]["code"], json!("db_pool_timeout"), "{r:?}");
                assert!(r.retry_after.is_some(), "503 without Retry-After: {r:?}");
                rejected += 1;
            }
            _ => panic!("unexpected reply {r:?}"),
        }
    }
    eprintln!("burst: {} accepted, {rejected} rejected", accepted.len());
    let released = Instant::now();
    assert!(rejected >= 1, "the pool was never exhausted");
    // The requests that held the connections waited on the lock and then completed.
    assert!(
        (1..=MAX_CONNECTIONS).contains(&accepted.len()),
        "{} accepted while only {MAX_CONNECTIONS} connections exist",
        accepted.len()
    );

    // Nothing lost, nothing half-written: exactly the accepted runs, each with its event.
    let (ids, created) = stored(&srv.db);
    assert_eq!(ids, accepted);
    assert_eq!(created, accepted.len());

    // Every rejection was counted; the gauge shows the configured ceiling.
    let resp = srv
        .client
        .get(srv.url("/api/metrics/prometheus"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert_eq!(
        sample(&text, "db_pool_timeouts_total"),
        Some(rejected as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "db_pool_connections_max"),
        Some(2.0),
        "{text}"
    );

    // The pool recovered: the next requests succeed.
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/api/health/ready", None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": "after the burst"}))
        .await;
    let (ids, created) = stored(&srv.db);
    assert!(ids.contains(run["id"].as_str().unwrap()));
    assert_eq!(
        (ids.len(), created),
        (accepted.len() + 1, accepted.len() + 1)
    );
    eprintln!(
        "chaos: pool exhaustion ({db:?}): lost 0 of {} acknowledged, {rejected} answered 503 db_pool_timeout; a new run accepted {:?} after the lock was released",
        accepted.len(),
        released.elapsed()
    );
}

on_both! {
    pool_exhaustion_answers_503_and_recovers => pool_exhaustion;
}
