//! The trust boundary's inputs, attacked through the real binary on both backends: local
//! repositories only from `server.repo_roots` (never the data directory, never through a
//! symlink out), re-checked when the bolt prepares its worktree; plain-folder imports capped;
//! webhooks never naming a local path; one active bolt per (repository, issue); and the
//! unauthenticated surface bounded (metric labels, webhook bodies, slow or idle connections,
//! connection count).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_core::{Autonomy, NewRun};
use atlasia_github::sign;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "a-webhook-secret-for-tests";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = StdCommand::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A git repository with one commit in `dir`.
fn git_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("README.md"), "hello\n").unwrap();
    git(dir, &["init", "-q", "-b", "trunk"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial"]);
}

/// Everything git shows about a repository's refs and worktrees.
fn git_state(dir: &Path) -> String {
    format!(
        "{}\n{}\n{}",
        git(dir, &["for-each-ref"]),
        git(dir, &["worktree", "list", "--porcelain"]),
        git(dir, &["status", "--porcelain"])
    )
}

async fn run_count(srv: &TestServer) -> usize {
    let (s, v) = srv.get("/api/runs", ADMIN_TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().len()
}

fn host(srv: &TestServer) -> String {
    srv.base.trim_start_matches("http://").to_owned()
}

/// `POST /api/runs` expecting 400 `repo_not_allowed`; returns the message.
async fn refused(srv: &TestServer, repo: &str) -> String {
    let (s, v) = srv
        .post(
            "/api/runs",
            ADMIN_TOKEN,
            &json!({"repo": repo, "title": "Take this"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{repo}: {v}");
    assert_eq!(v["error"]["code"], "repo_not_allowed", "{repo}: {v}");
    assert_eq!(v["error"]["field"], "repo", "{v}");
    let message = v["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("server.repo_roots"), "{repo}: {message}");
    message
}

// ---------------------------------------------------------------------------------------------
// Repository roots

async fn local_paths_only_under_roots(db: Db) {
    let db = TestDb::new(db).await;
    // The server's working directory is the root, and the data directory is `./data` inside
    // it, as with the defaults: the root contains the data directory.
    let cwd = db.dir.path().canonicalize().unwrap();
    let root = cwd.join("repos");
    let app = root.join("app");
    git_repo(&app);
    std::fs::create_dir_all(cwd.join("data/imports/x")).unwrap();
    std::fs::write(root.join("file.txt"), "not a folder").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink(&app, root.join("app-link")).unwrap();
    // A git repository outside the roots, e.g. someone's checkout elsewhere on the host.
    let elsewhere = tempfile::tempdir().unwrap();
    git_repo(elsewhere.path());
    let before = git_state(elsewhere.path());
    let app_before = git_state(&app);

    let roots = repo_roots(&[&cwd]);
    let srv = TestServer::start_with(
        db,
        &[
            ("ATLASIA_SERVER__REPO_ROOTS", roots.as_str()),
            ("ATLASIA_STORAGE__DATA_DIR", "./data"),
        ],
    )
    .await;

    for repo in ["/etc", "/", "/root", "../../..", "/tmp/.."] {
        let m = refused(&srv, repo).await;
        assert!(m.contains("is not under any directory"), "{repo}: {m}");
    }
    let m = refused(&srv, &root.join("etc-link").display().to_string()).await;
    assert!(
        m.contains("/etc"),
        "the symlink is judged by its target: {m}"
    );
    for repo in ["./data", "./data/imports/x", ".", "./repos/.."] {
        let m = refused(&srv, repo).await;
        assert!(m.contains("data directory"), "{repo}: {m}");
    }
    let m = refused(&srv, &root.join("missing").display().to_string()).await;
    assert!(m.contains("does not exist"), "{m}");
    // Outside the roots a missing path is refused like an existing one: no existence oracle.
    let m = refused(&srv, "/nonexistent-atlasia-path").await;
    assert!(m.contains("is not under any directory"), "{m}");
    let m = refused(&srv, &root.join("file.txt").display().to_string()).await;
    assert!(m.contains("not a directory"), "{m}");
    let m = refused(&srv, &elsewhere.path().display().to_string()).await;
    assert!(m.contains("is not under any directory"), "{m}");
    assert_eq!(run_count(&srv).await, 0, "nothing refused was stored");

    // Under the root: accepted, and the run keeps the canonical path (a symlink is resolved
    // now, so swapping it later cannot redirect the run).
    let run = srv
        .create_run(json!({"repo": root.join("app-link").display().to_string(), "title": "Work"}))
        .await;
    assert_eq!(run["repo"], app.display().to_string());
    let run = srv
        .create_run(json!({"repo": "./repos/app", "title": "Relative"}))
        .await;
    assert_eq!(run["repo"], app.display().to_string());

    // No worker ran, and the repository outside the roots is untouched.
    assert_eq!(git_state(elsewhere.path()), before);
    assert_eq!(git_state(&app), app_before);
}

async fn no_roots_no_local_paths(db: Db) {
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[("ATLASIA_SERVER__REPO_ROOTS", "[]")],
    )
    .await;
    let repo = tempfile::tempdir().unwrap();
    let m = refused(&srv, &repo.path().display().to_string()).await;
    assert!(m.contains("local repositories are refused"), "{m}");
    // `owner/name` is not a local path and stays accepted.
    srv.create_run(json!({"repo": "acme/widgets", "title": "Remote"}))
        .await;
}

#[test]
fn roots_are_validated_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    for (roots, why) in [
        (
            repo_roots(&[&dir.path().join("missing")]),
            "cannot be resolved",
        ),
        (repo_roots(&[&file]), "not a directory"),
        (r#"["relative/dir"]"#.to_owned(), "not an absolute path"),
        (repo_roots(&[&dir.path().join("data")]), "storage.data_dir"),
    ] {
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let out = cli(
            dir.path(),
            &["config", "show"],
            &[
                ("ATLASIA_SERVER__REPO_ROOTS", roots.as_str()),
                ("ATLASIA_STORAGE__DATA_DIR", "./data"),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{roots}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("server.repo_roots") && err.contains(why),
            "{roots}: {err}"
        );
    }
    // The documented env form (a TOML/JSON array) is read, and shown canonical.
    let out = cli(
        dir.path(),
        &["config", "show"],
        &[("ATLASIA_SERVER__REPO_ROOTS", &repo_roots(&[dir.path()]))],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    let canonical = dir.path().canonicalize().unwrap().display().to_string();
    assert!(shown.contains(&canonical), "{shown}");
}

/// A run stored before a root was removed (here: written straight into the store) is checked
/// again when its bolt prepares the worktree: `/etc` is never imported. A plain folder over the
/// import caps fails its bolt before anything is copied.
async fn forge_rechecks_and_caps_imports(db: Db) {
    let sim = Sim::start(&[]).await;
    let db = TestDb::new(db).await;
    let store = db.store(2).await;
    let root = tempfile::tempdir().unwrap();
    let big = root.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..5 {
        std::fs::write(big.join(format!("f{i}.txt")), "x").unwrap();
    }
    let planted = store
        .create_run(&NewRun {
            repo: "/etc".into(),
            issue_number: None,
            title: "Planted".into(),
            body: String::new(),
            priority: 5,
            autonomy: Autonomy::Autonomous,
            budget_usd: None,
        })
        .await
        .unwrap();
    store.close().await;
    let data = db.dir.path().to_path_buf();
    let roots = repo_roots(&[root.path()]);
    let srv = TestServer::start_with(
        db,
        &[
            ("LLM_ENDPOINT", sim.base.as_str()),
            ("ATLASIA_LLM__SIMULATOR", "true"),
            ("LLM_MODEL", "sim-model"),
            ("LLM_API_KEY", "sk-test-key"),
            ("ATLASIA_ENGINE__WORKERS", "2"),
            ("ATLASIA_ENGINE__POLL_MS", "50"),
            ("ATLASIA_SERVER__REPO_ROOTS", roots.as_str()),
            ("ATLASIA_STORAGE__IMPORT_MAX_FILES", "3"),
        ],
    )
    .await;
    let capped = srv
        .create_run(json!({"repo": big.display().to_string(), "title": "Too big"}))
        .await;
    let failed = |id: String| {
        let srv = &srv;
        async move {
            eventually(Duration::from_secs(90), || async {
                let (_, r) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
                (r["status"] == "FAILED" || r["status"] == "DONE" || r["status"] == "ESCALATED")
                    .then_some(r)
            })
            .await
        }
    };
    let r = failed(planted.id.to_string()).await;
    assert_eq!(r["status"], "FAILED", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("server.repo_roots"), "{error}");
    let r = failed(capped["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(r["status"], "FAILED", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("too large to import") && error.contains("more than 3 files"),
        "{error}"
    );
    // Nothing of either was copied into the data directory.
    let imports = data.join("imports");
    let copied = std::fs::read_dir(&imports).map_or(0, |d| d.count());
    assert_eq!(copied, 0, "imports: {}", imports.display());
}

// ---------------------------------------------------------------------------------------------
// Webhooks never name local paths; one active bolt per issue

async fn deliver(srv: &TestServer, delivery: &str, body: &[u8]) -> (StatusCode, Value) {
    let resp = srv
        .client
        .post(srv.url("/api/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "issues")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn labeled(full_name: &str, number: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "labeled",
        "label": {"name": "ai:run"},
        "issue": {"number": number, "title": "Do it", "body": "", "labels": [{"name": "ai:run"}]},
        "repository": {"full_name": full_name},
    }))
    .unwrap()
}

async fn webhooks_never_name_local_paths(db: Db) {
    let roots = repo_roots(&[Path::new("/")]);
    // Even with every path allowed, a delivery cannot name one.
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[
            ("GITHUB_WEBHOOK_SECRET", SECRET),
            ("ATLASIA_SERVER__REPO_ROOTS", roots.as_str()),
        ],
    )
    .await;
    for (i, name) in [
        "/etc", "../x", "a/b/c", "./data", "..", "acme/..", "/", ".", "acme",
    ]
    .iter()
    .enumerate()
    {
        let (s, v) = deliver(&srv, &format!("d-path-{i}"), &labeled(name, 1)).await;
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
        assert_eq!(v["status"], "ignored", "{name}: {v}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("is not a GitHub owner/name"),
            "{name}: {v}"
        );
    }
    assert_eq!(run_count(&srv).await, 0);
}

async fn one_active_run_per_issue(db: Db) {
    let srv = TestServer::start(db).await;
    let first = srv
        .create_run(json!({"repo": "acme/widgets", "issue_number": 5, "title": "One"}))
        .await;
    let id = first["id"].as_str().unwrap();
    let (s, v) = srv
        .post(
            "/api/runs",
            ADMIN_TOKEN,
            &json!({"repo": "acme/widgets", "issue_number": 5, "title": "Two"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "run_active", "{v}");
    assert_eq!(v["error"]["run_id"], id, "{v}");
    // Another issue, or no issue at all, is not limited.
    srv.create_run(json!({"repo": "acme/widgets", "issue_number": 6, "title": "Other"}))
        .await;
    for _ in 0..2 {
        srv.create_run(json!({"repo": "acme/widgets", "title": "No issue"}))
            .await;
    }
    // Every active status holds the issue; a finished run frees it.
    for status in ["RUNNING", "PAUSED", "WAITING_GATE", "ESCALATED"] {
        srv.db.sql_cli(&format!(
            "UPDATE workflow_runs SET status = '{status}' WHERE id = '{id}'"
        ));
        let (s, v) = srv
            .post(
                "/api/runs",
                ADMIN_TOKEN,
                &json!({"repo": "acme/widgets", "issue_number": 5, "title": "Again"}),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{status}: {v}");
    }
    srv.db.sql_cli(&format!(
        "UPDATE workflow_runs SET status = 'FAILED' WHERE id = '{id}'"
    ));
    srv.create_run(json!({"repo": "acme/widgets", "issue_number": 5, "title": "After"}))
        .await;

    // Concurrent triggers for one issue: exactly one run, every other answer names it.
    let race = json!({"repo": "acme/race", "issue_number": 1, "title": "Race"});
    let answers =
        futures::future::join_all((0..10).map(|_| srv.post("/api/runs", ADMIN_TOKEN, &race))).await;
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners[0]["id"].as_str().unwrap();
    for (s, v) in answers.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        assert_eq!(*s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["run_id"], winner, "{v}");
    }
    let count = srv.db.sql_cli(
        "SELECT COUNT(*) FROM workflow_runs WHERE repo = 'acme/race' AND issue_number = 1",
    );
    assert_eq!(count.trim(), "1");
}

/// Migration 0002 on a database that already holds several active runs of one issue: the oldest
/// stays, the others are cancelled with their event, and the index then holds.
async fn migration_keeps_the_oldest_active_run(db: Db) {
    let db = TestDb::new(db).await;
    db.store(1).await.close().await;
    // Back to the schema before 0002, with duplicates it would have allowed.
    db.sql_cli("DROP INDEX workflow_runs_one_active");
    db.sql_cli("DELETE FROM _sqlx_migrations WHERE version = 2");
    db.sql_cli(
        "INSERT INTO workflow_runs (id, repo, issue_number, title, status, last_event_seq, \
         created_at, updated_at) VALUES \
         ('r1', 'acme/w', 3, 't', 'PAUSED', 0, 1, 1), \
         ('r2', 'acme/w', 3, 't', 'PENDING', 0, 2, 2), \
         ('r3', 'acme/w', 3, 't', 'ESCALATED', 4, 3, 3), \
         ('r4', 'acme/w', 3, 't', 'DONE', 0, 4, 4), \
         ('r5', 'acme/w', 4, 't', 'RUNNING', 0, 5, 5), \
         ('r6', 'acme/w', NULL, 't', 'PENDING', 0, 6, 6), \
         ('r7', 'acme/w', NULL, 't', 'PENDING', 0, 7, 7)",
    );
    let store = db.store(1).await;
    let rows = db.sql_cli(
        "SELECT id || ' ' || status || ' ' || last_event_seq FROM workflow_runs ORDER BY id",
    );
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            "r1 PAUSED 0",
            "r2 CANCELLED 1",
            "r3 CANCELLED 5",
            "r4 DONE 0",
            "r5 RUNNING 0",
            "r6 PENDING 0",
            "r7 PENDING 0"
        ]
    );
    let events =
        db.sql_cli("SELECT run_id || ' ' || seq || ' ' || kind FROM run_events ORDER BY run_id");
    assert_eq!(
        events.lines().collect::<Vec<_>>(),
        ["r2 1 status_changed", "r3 5 status_changed"]
    );
    let again = store
        .create_run(&NewRun {
            repo: "acme/w".into(),
            issue_number: Some(3),
            title: "again".into(),
            body: String::new(),
            priority: 5,
            autonomy: Autonomy::Autonomous,
            budget_usd: None,
        })
        .await;
    assert!(
        matches!(&again, Err(atlasia_store::StoreError::RunActive(Some(id))) if id == "r1"),
        "{again:?}"
    );
    store.close().await;
}

/// A webhook replayed with fresh delivery ids while its run is active, racing a POST for the
/// same issue: one run in all.
async fn replays_and_posts_race_to_one_run(db: Db) {
    let srv =
        TestServer::start_with(TestDb::new(db).await, &[("GITHUB_WEBHOOK_SECRET", SECRET)]).await;
    let body = labeled("acme/widgets", 77);
    let hooks = futures::future::join_all((0..6).map(|i| {
        let body = body.clone();
        let srv = &srv;
        async move { deliver(srv, &format!("replay-{i}"), &body).await }
    }));
    let mine = json!({"repo": "acme/widgets", "issue_number": 77, "title": "Mine"});
    let post = srv.post("/api/runs", ADMIN_TOKEN, &mine);
    let (hooks, post) = tokio::join!(hooks, post);
    let count = srv.db.sql_cli(
        "SELECT COUNT(*) FROM workflow_runs WHERE repo = 'acme/widgets' AND issue_number = 77",
    );
    assert_eq!(count.trim(), "1", "{hooks:?} {post:?}");
    let statuses: Vec<&str> = hooks
        .iter()
        .map(|(_, v)| v["status"].as_str().unwrap_or("?"))
        .collect();
    assert!(
        statuses.iter().all(|s| *s == "accepted" || *s == "active"),
        "{statuses:?}"
    );
    // Every delivery is recorded (dedupe by delivery id stays).
    let recorded = srv.db.sql_cli("SELECT COUNT(*) FROM webhook_deliveries");
    assert_eq!(recorded.trim(), "6");
}

// ---------------------------------------------------------------------------------------------
// The unauthenticated surface

async fn invented_methods_add_no_series(db: Db) {
    let srv = TestServer::start(db).await;
    let series = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| l.starts_with("http_server_requests_seconds_count"))
            .map(str::to_owned)
            .collect()
    };
    let metrics = || async { srv.metrics().await };
    let _ = metrics().await;
    for chunk in 0..10 {
        futures::future::join_all((0..50).map(|i| {
            let method = reqwest::Method::from_bytes(format!("X{chunk}Y{i}").as_bytes()).unwrap();
            srv.client
                .request(method, srv.url(&format!("/api/nowhere/{chunk}/{i}")))
                .send()
        }))
        .await;
    }
    let body = metrics().await;
    let found = series(&body);
    assert!(
        found.iter().all(|l| {
            let m = l
                .split("method=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            matches!(
                m,
                "GET"
                    | "HEAD"
                    | "POST"
                    | "PUT"
                    | "DELETE"
                    | "PATCH"
                    | "OPTIONS"
                    | "TRACE"
                    | "CONNECT"
                    | "OTHER"
            )
        }),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|l| l.contains("method=\"OTHER\"") && l.contains("route=\"unmatched\"")),
        "{found:#?}"
    );
    assert!(found.len() < 20, "{} series: {found:#?}", found.len());
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `head` (and `body`) on a fresh connection and returns what the server answers before
/// closing or `limit`.
async fn raw(srv: &TestServer, head: &str, body: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(host(srv)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before taking the whole body: that is the point.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&out).contains("\r\n\r\n{") && out.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn webhook_bodies_are_capped_before_reading(db: Db) {
    let srv =
        TestServer::start_with(TestDb::new(db).await, &[("GITHUB_WEBHOOK_SECRET", SECRET)]).await;
    let pid = srv.child.id().unwrap();
    let rss_before = rss_kb(pid);
    // Declared larger than GitHub's cap, with a bad signature: refused from the headers alone.
    for i in 0..5 {
        let head = format!(
            "POST /api/webhooks/github HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             X-GitHub-Event: issues\r\nX-GitHub-Delivery: big-{i}\r\n\
             X-Hub-Signature-256: sha256=00\r\nContent-Length: 104857600\r\n\r\n",
            host(&srv)
        );
        let answer = raw(&srv, &head, &[b' '; 1024], Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    // Streamed without a length: cut at the cap, not read to the end.
    let head = format!(
        "POST /api/webhooks/github HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: issues\r\nX-GitHub-Delivery: chunked\r\n\
         X-Hub-Signature-256: sha256=00\r\nTransfer-Encoding: chunked\r\n\r\n",
        host(&srv)
    );
    let mut s = TcpStream::connect(host(&srv)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 1024 * 1024];
    let mut sent = 0_usize;
    let mut cut = false;
    for _ in 0..40 {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if s.write_all(&frame).await.is_err() {
            cut = true;
            break;
        }
        sent += chunk.len();
    }
    let mut answer = vec![0_u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 413") || cut,
        "sent {sent} bytes; answer: {answer}"
    );
    // 5 × 100 MiB declared and a 40 MiB stream: the server's memory did not follow.
    let grown_mb = rss_kb(pid).saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 64, "RSS grew by {grown_mb} MiB");
    assert_eq!(
        srv.db
            .sql_cli("SELECT COUNT(*) FROM webhook_deliveries")
            .trim(),
        "0"
    );
}

/// Bodies that trickle in hold a read slot at most `server.request_timeout_ms`: more slow posts
/// than slots do not lock GitHub's deliveries out.
async fn slow_webhook_bodies_give_their_slot_back(db: Db) {
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[
            ("GITHUB_WEBHOOK_SECRET", SECRET),
            ("ATLASIA_SERVER__REQUEST_TIMEOUT_MS", "700"),
        ],
    )
    .await;
    let head = format!(
        "POST /api/webhooks/github HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: issues\r\nX-GitHub-Delivery: slow\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: 1000\r\n\r\n{{\"a\":",
        host(&srv)
    );
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(host(&srv)).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(s);
    }
    // A real delivery gets through while the slow ones are still open.
    let body = b"{\"zen\":\"Keep it logically awesome.\"}";
    let started = Instant::now();
    let resp = srv
        .client
        .post(srv.url("/api/webhooks/github"))
        .header("x-github-event", "ping")
        .header("x-github-delivery", "ping-1")
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Each slow post is answered 503 `request_timeout`, not held open.
    for mut s in slow {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.contains("request_timeout"), "{out}");
    }
}

async fn webhook_without_secret_reads_nothing(db: Db) {
    let srv = TestServer::start(db).await;
    // The body is announced but never sent: the answer must not wait for it.
    let head = format!(
        "POST /api/webhooks/github HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: 20000000\r\n\r\n",
        host(&srv)
    );
    let started = Instant::now();
    let answer = raw(&srv, &head, b"", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("no webhook secret"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// Reads until the server closes the connection; the elapsed time, or None past `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0_u8; 1024];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn slow_and_idle_connections_are_closed(db: Db) {
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[("ATLASIA_SERVER__HEADER_READ_TIMEOUT_MS", "500")],
    )
    .await;
    // Slowloris: a request head that never ends.
    let mut slow = TcpStream::connect(host(&srv)).await.unwrap();
    slow.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(10))
        .await
        .expect("a partial header must not hold the connection");
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    // An idle keep-alive connection after a complete request.
    let mut idle = TcpStream::connect(host(&srv)).await.unwrap();
    idle.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_within(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    // The server still serves.
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/api/health/live", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

async fn connections_are_limited(db: Db) {
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[
            ("ATLASIA_SERVER__MAX_CONNECTIONS", "2"),
            ("ATLASIA_SERVER__HEADER_READ_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(host(&srv)).await.unwrap();
        s.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // A third connection is accepted by the kernel but not served while both slots are held.
    let third = tokio::spawn({
        let host = host(&srv);
        async move {
            let mut s = TcpStream::connect(host).await.unwrap();
            s.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    let metrics = srv
        .client
        .get(srv.url("/api/metrics/prometheus"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(metrics.is_err(), "no slot for a fourth client either");
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Open connections are visible: the held one and the metrics request itself.
    let body = srv.metrics().await;
    let open: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("http_server_connections "))
        .unwrap_or_else(|| panic!("{body}"))
        .parse()
        .unwrap();
    assert!((1.0..=2.0).contains(&open), "{open}");
}

// ---------------------------------------------------------------------------------------------
// `atlasia run`: any folder but the data directory

#[test]
fn cli_run_refuses_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/imports")).unwrap();
    let issue = dir.path().join("issue.md");
    std::fs::write(&issue, "# Fix it\n").unwrap();
    for repo in ["./data", "data/imports", ".", "./data/.."] {
        let out = cli(
            dir.path(),
            &["run", "--repo", repo, "--issue", issue.to_str().unwrap()],
            &[("ATLASIA_STORAGE__DATA_DIR", "./data")],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{repo}: {err}");
        assert!(
            err.contains("data directory") && err.contains("storage.data_dir"),
            "{repo}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{repo}: {err}");
    }
}

on_both! {
    local_paths => local_paths_only_under_roots;
    no_roots => no_roots_no_local_paths;
    forge_recheck => forge_rechecks_and_caps_imports;
    webhook_paths => webhooks_never_name_local_paths;
    one_active => one_active_run_per_issue;
    replay_race => replays_and_posts_race_to_one_run;
    migration_0002 => migration_keeps_the_oldest_active_run;
    method_labels => invented_methods_add_no_series;
    webhook_caps => webhook_bodies_are_capped_before_reading;
    webhook_no_secret => webhook_without_secret_reads_nothing;
    webhook_slow_bodies => slow_webhook_bodies_give_their_slot_back;
    slow_connections => slow_and_idle_connections_are_closed;
    max_connections => connections_are_limited;
}
