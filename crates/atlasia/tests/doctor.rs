//! `atlasia doctor` against real databases and a real running server: healthy installations
//! pass, and each kind of trouble it is meant to reveal turns into a WARN or FAIL line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

fn doctor(srv_db: &TestDb, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
    let data_dir = srv_db.dir.path().to_str().unwrap().to_owned();
    let mut env = vec![
        ("DB_URL", srv_db.url.as_str()),
        ("ATLASIA_STORAGE__DATA_DIR", data_dir.as_str()),
    ];
    env.extend_from_slice(extra);
    let mut full = vec!["doctor"];
    full.extend_from_slice(args);
    let out = cli(srv_db.dir.path(), &full, &env);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l[6..].starts_with(check))
        .unwrap_or_else(|| panic!("no '{check}' line in:\n{report}"))
}

async fn healthy_then_troubled(db: Db) {
    let srv = TestServer::start(db).await;
    srv.create_run(serde_json::json!({"repo": "acme/w", "title": "t"}))
        .await;
    let (code, report) = doctor(&srv.db, &["--server", &srv.base], &[]);
    eprintln!("{report}");
    assert_eq!(code, 0, "{report}");
    for check in ["db faults", "memory", "llm", "api latency", "live streams"] {
        assert!(line(&report, check).starts_with("ok"), "{report}");
    }
    assert!(line(&report, "database").starts_with("ok"), "{report}");
    assert!(line(&report, "queue").contains("PENDING 1"), "{report}");
    let server = line(&report, "server");
    assert!(
        server.starts_with("ok") && server.contains("ready"),
        "{report}"
    );
    assert!(server.contains("max 20"), "{report}");
    if db == Db::Postgres {
        assert!(line(&report, "connections").starts_with("ok"), "{report}");
    }

    // A worker that died: its lease expires and the doctor points at it.
    let store = srv.db.store(2).await;
    let claim = store
        .claim("dead-worker", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        let r = store.get_run(claim.run.id).await.unwrap();
        (r.lease_expires_at.unwrap().0 < atlasia_core::Timestamp::now().0).then_some(())
    })
    .await;
    let (code, report) = doctor(&srv.db, &["--no-server"], &[]);
    assert_eq!(code, 0, "a warning is not a failure:\n{report}");
    let queue = line(&report, "queue");
    assert!(
        queue.starts_with("WARN") && queue.contains("expired lease"),
        "{report}"
    );
    assert!(
        !report.lines().any(|l| l[6..].starts_with("server")),
        "--no-server skips the probe:\n{report}"
    );

    // Disk below the floor fails, and so does the server's readiness.
    let (code, report) = doctor(
        &srv.db,
        &["--server", &srv.base],
        &[("ATLASIA_STORAGE__MIN_FREE_DISK_MB", "1000000000")],
    );
    assert_eq!(code, 1, "{report}");
    assert!(line(&report, "disk").starts_with("FAIL"), "{report}");
    store.close().await;
}

async fn unreachable_server_and_unmigrated_database(db: Db) {
    let fresh = TestDb::new(db).await;
    if db == Db::Sqlite {
        // Create the file without tables, as a wrong DB_URL would.
        fresh.sql_cli("CREATE TABLE unrelated (x INTEGER);");
    }
    let (code, report) = doctor(&fresh, &["--server", "http://127.0.0.1:9"], &[]);
    assert_eq!(code, 1, "{report}");
    assert!(
        line(&report, "queue").contains("atlasia migrate"),
        "{report}"
    );
    assert!(
        line(&report, "server").contains("not reachable"),
        "{report}"
    );
}

on_both! {
    healthy_and_troubled => healthy_then_troubled;
    unreachable_and_unmigrated => unreachable_server_and_unmigrated_database;
}

#[test]
fn an_unreachable_database_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &["doctor", "--no-server"],
        &[("DB_URL", "postgres://nobody@127.0.0.1:9/none")],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(line(&report, "database").starts_with("FAIL"), "{report}");
}

/// A table locked by a session that never commits (incident 6): the doctor does not hang — the
/// queue check fails with "no answer in 5 s" — and it names the blocking session's pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_fails_within_the_deadline_and_names_the_blocker() {
    if skip_postgres() {
        return;
    }
    let srv = TestServer::start(Db::Postgres).await;
    srv.create_run(serde_json::json!({"repo": "acme/w", "title": "t"}))
        .await;
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(&srv.db.url).await.unwrap();
    let blocker: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let db = srv.db.same_database();
    let (code, report) = tokio::task::spawn_blocking(move || doctor(&db, &["--no-server"], &[]))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("doctor under a held lock, {took:?}:\n{report}");
    assert_eq!(code, 1, "{report}");
    assert!(
        took < Duration::from_secs(15),
        "the doctor took {took:?}:\n{report}"
    );
    let queue = line(&report, "queue");
    assert!(
        queue.starts_with("FAIL") && queue.contains("no answer in 5 s"),
        "{report}"
    );
    let wait = line(&report, "lock wait");
    assert!(
        wait.starts_with("FAIL") && wait.contains(&format!("blocked by pid {blocker}")),
        "{report}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
}

/// PENDING runs and no worker alive (none holds a live lease): FAIL with the count and the
/// oldest age, not "ok".
async fn pending_work_without_a_live_worker_fails(db: Db) {
    let srv = TestServer::start(db).await;
    for i in 0..3 {
        srv.create_run(serde_json::json!({"repo": "acme/w", "title": format!("t{i}")}))
            .await;
    }
    // With a 50 ms lease the runs are older than the lease almost at once; the server has no
    // workers (ATLASIA_ENGINE__WORKERS=0), so no lease is live.
    let report = eventually(Duration::from_secs(10), || async {
        let (code, report) = doctor(
            &srv.db,
            &["--no-server"],
            &[("ATLASIA_ENGINE__LEASE_MS", "50")],
        );
        (code == 1).then_some(report)
    })
    .await;
    let queue = line(&report, "queue");
    assert!(
        queue.starts_with("FAIL")
            && queue.contains("3 PENDING and NO LIVE WORKER")
            && queue.contains("oldest PENDING waits"),
        "{report}"
    );
    // A worker holding a live lease means the queue is served, just busy: not a FAIL.
    let store = srv.db.store(2).await;
    store
        .claim("busy-worker", Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    let (_, report) = doctor(
        &srv.db,
        &["--no-server"],
        &[("ATLASIA_ENGINE__LEASE_MS", "50")],
    );
    assert!(line(&report, "queue").starts_with("ok"), "{report}");
    store.close().await;
}

on_both! {
    no_live_worker => pending_work_without_a_live_worker_fails;
}

/// Every configured LLM endpoint is asked for its model list: one that nothing listens on is a
/// FAIL naming it, one that answers is ok.
#[tokio::test(flavor = "multi_thread")]
async fn llm_endpoints_are_probed() {
    let sim = Sim::start(&[]).await;
    let db = TestDb::new(Db::Sqlite).await;
    let env = [
        ("LLM_ENDPOINT", "http://127.0.0.1:9/v1"),
        ("LLM_MODEL", "house-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("LLM_FALLBACK_ENDPOINT", sim.base.as_str()),
        ("LLM_FALLBACK_API_KEY", "sk-test-key"),
    ];
    let (code, report) = doctor(&db, &[], &env);
    assert_eq!(code, 1, "{report}");
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.get(6..).is_some_and(|c| c.starts_with("llm endpoint ")))
        .collect();
    assert_eq!(lines.len(), 2, "{report}");
    assert!(
        lines.iter().any(|l| l.starts_with("FAIL")
            && l.contains("LLM endpoint http://127.0.0.1:9/v1")
            && l.contains("refused the connection")),
        "{report}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok") && l.contains(sim.base.trim_end_matches('/'))),
        "{report}"
    );
}
