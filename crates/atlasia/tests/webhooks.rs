//! `POST /api/webhooks/github` against the real binary on both backends: GitHub's signature
//! vector, forged and unsigned deliveries refused with nothing stored, redeliveries deduped
//! (also when they race), non-matching events ignored, the `priority:N` label honoured; and
//! `POST /api/runs` reading the issue from a fake GitHub (App auth) without leaking the App
//! key, installation tokens or the admin token anywhere they must not be.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_github::sign;
use atlasia_github_sim::{SimConfig, SimGithub};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// GitHub's documented example secret.
const SECRET: &str = "It's a Secret to Everybody";

async fn server(db: Db) -> TestServer {
    TestServer::start_with(TestDb::new(db).await, &[("GITHUB_WEBHOOK_SECRET", SECRET)]).await
}

/// Posts a delivery; `signature` None means "sign it correctly".
async fn deliver(
    srv: &TestServer,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (StatusCode, Value) {
    let sig = signature
        .map(str::to_owned)
        .unwrap_or_else(|| sign(SECRET.as_bytes(), body));
    let mut req = srv
        .client
        .post(srv.url("/api/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .body(body.to_vec());
    if !sig.is_empty() {
        req = req.header("x-hub-signature-256", sig);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn labeled(label: &str, labels: &[&str]) -> Vec<u8> {
    let all: Vec<Value> = labels.iter().map(|l| json!({"name": l})).collect();
    serde_json::to_vec(&json!({
        "action": "labeled",
        "label": {"name": label},
        "issue": {
            "number": 42,
            "title": "Add a dark mode",
            "body": "Users want a dark theme.",
            "labels": all,
        },
        "repository": {"full_name": "acme/widgets", "name": "widgets", "owner": {"login": "acme"}},
        "sender": {"login": "octocat"},
    }))
    .unwrap()
}

async fn run_count(srv: &TestServer) -> usize {
    let (s, v) = srv.get("/api/runs", ADMIN_TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().len()
}

async fn metrics(srv: &TestServer) -> String {
    srv.metrics().await
}

async fn signature_vector_and_forgeries(db: Db) {
    let srv = server(db).await;
    // GitHub's documented vector: payload "Hello, World!" under SECRET.
    let vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let (s, v) = deliver(&srv, "ping", "d-ping", b"Hello, World!", Some(vector)).await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"status": "pong"})));

    let body = labeled("ai:run", &["ai:run"]);
    for (sig, reason) in [
        (vector, "bad_signature"), // a valid signature of another payload
        ("sha256=00", "bad_signature"),
        ("", "missing_signature"),
    ] {
        let (s, v) = deliver(&srv, "issues", "d-forged", &body, Some(sig)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"]["code"], "invalid_signature", "{v}");
        assert!(v["error"]["message"].is_string());
        let m = metrics(&srv).await;
        assert!(
            m.lines()
                .any(|l| l.starts_with("github_webhook_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{m}"
        );
    }
    assert_eq!(run_count(&srv).await, 0);
    assert_eq!(
        srv.db
            .sql_cli("SELECT COUNT(*) FROM webhook_deliveries")
            .trim(),
        "0",
        "a refused delivery stores nothing"
    );
}

async fn accepted_then_replayed(db: Db) {
    let srv = server(db).await;
    let body = labeled("ai:run", &["bug", "ai:run", "priority:9"]);
    let (s, v) = deliver(&srv, "issues", "delivery-1", &body, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(v["repo"], "acme/widgets");
    assert_eq!(v["issue_number"], 42);
    let run_id = v["run_id"].as_str().unwrap().to_owned();
    let (s, run) = srv.get(&format!("/api/runs/{run_id}"), ADMIN_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(run["title"], "Add a dark mode");
    assert_eq!(run["body"], "Users want a dark theme.");
    assert_eq!(run["priority"], 9, "priority:9 label");
    assert_eq!(run["status"], "PENDING");
    let (_, events) = srv
        .get(&format!("/api/runs/{run_id}/events"), ADMIN_TOKEN)
        .await;
    assert_eq!(events["items"][0]["kind"], "run_created", "{events}");

    // GitHub redelivers (same delivery id): nothing new starts.
    let (s, v) = deliver(&srv, "issues", "delivery-1", &body, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "duplicate", "{v}");
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(run_count(&srv).await, 1);

    // The captured delivery replayed under a new delivery id: recorded, but the issue's run is
    // still active, so nothing starts and the answer names that run.
    let (s, v) = deliver(&srv, "issues", "delivery-replayed", &body, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "active", "{v}");
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(run_count(&srv).await, 1);
    assert_eq!(
        srv.db
            .sql_cli(
                "SELECT outcome || ' ' || run_id FROM webhook_deliveries \
                 WHERE delivery_id = 'delivery-replayed'"
            )
            .trim(),
        format!("active {run_id}")
    );
    assert!(
        metrics(&srv).await.contains("outcome=\"active\""),
        "the replay is counted"
    );

    // Once that run is over, the issue may run again; without a priority label the default
    // applies.
    let (s, v) = srv
        .post(
            &format!("/api/runs/{run_id}/cancel"),
            ADMIN_TOKEN,
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = deliver(
        &srv,
        "issues",
        "delivery-2",
        &labeled("ai:run", &["ai:run"]),
        None,
    )
    .await;
    assert_eq!(v["status"], "accepted", "{v}");
    let (_, run) = srv
        .get(
            &format!("/api/runs/{}", v["run_id"].as_str().unwrap()),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(run["priority"], 5);
}

async fn racing_redeliveries_start_one_run(db: Db) {
    let srv = server(db).await;
    let body = labeled("ai:run", &["ai:run"]);
    let answers = futures::future::join_all(
        (0..8).map(|_| deliver(&srv, "issues", "delivery-race", &body, None)),
    )
    .await;
    let statuses: Vec<&str> = answers
        .iter()
        .map(|(_, v)| v["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "accepted").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "duplicate").count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(run_count(&srv).await, 1);
}

async fn other_events_are_ignored(db: Db) {
    let srv = server(db).await;
    let unlabeled = serde_json::to_vec(&json!({
        "action": "opened", "issue": {"number": 1, "title": "t"},
        "repository": {"full_name": "acme/widgets"},
    }))
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "issues",
            labeled("bug", &["bug"]),
            "label 'bug' is not 'ai:run'",
        ),
        (
            "issues",
            unlabeled,
            "issues action 'opened' is not 'labeled'",
        ),
        (
            "push",
            br#"{"ref":"refs/heads/main"}"#.to_vec(),
            "event 'push' is not handled",
        ),
    ];
    for (i, (event, body, reason)) in cases.into_iter().enumerate() {
        let (s, v) = deliver(&srv, event, &format!("ignored-{i}"), &body, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"status": "ignored", "reason": reason}));
    }
    assert_eq!(run_count(&srv).await, 0);
}

async fn no_secret_refuses_everything(db: Db) {
    let srv = TestServer::start(db).await;
    let body = labeled("ai:run", &["ai:run"]);
    let (s, v) = deliver(&srv, "issues", "d", &body, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let m = metrics(&srv).await;
    assert!(m.contains("reason=\"no_secret\""), "{m}");
    assert_eq!(run_count(&srv).await, 0);
}

/// An RSA key pair made by openssl in `dir` (never committed): (private path, public PEM).
fn app_key(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join("app.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success());
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    (key, public.stdout)
}

async fn runs_read_the_issue_from_github_without_leaking_secrets(db: Db) {
    let tdb = TestDb::new(db).await;
    let (key_path, public) = app_key(tdb.dir.path());
    let sim = SimGithub::start(SimConfig {
        app_id: "1001".into(),
        installation_id: 55,
        public_key_pem: Some(public),
        pat: None,
        token_ttl: Duration::from_secs(3600),
        git_root: tdb.dir.path().join("git"),
    })
    .await
    .unwrap();
    sim.add_repo("acme/widgets", "main").unwrap();
    sim.add_issue(
        "acme/widgets",
        7,
        "Export to CSV",
        "Add an export button.",
        &["ai:run", "priority:8"],
    );
    sim.add_comment("acme/widgets", 7, "alice", "Please include headers.");
    let base = sim.base();
    let key = key_path.to_str().unwrap().to_owned();
    let srv = TestServer::start_with(
        tdb,
        &[
            ("GITHUB_APP_ID", "1001"),
            ("GITHUB_INSTALLATION_ID", "55"),
            ("GITHUB_PRIVATE_KEY_PATH", &key),
            ("GITHUB_API_URL", &base),
            ("GITHUB_WEBHOOK_SECRET", SECRET),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;

    let run = srv
        .create_run(json!({"repo": "acme/widgets", "issue_number": 7}))
        .await;
    assert_eq!(run["title"], "Export to CSV");
    let body = run["body"].as_str().unwrap();
    assert!(body.starts_with("Add an export button."), "{body}");
    assert!(body.contains("@alice:\nPlease include headers."), "{body}");
    assert_eq!(run["priority"], 8);
    // One active run per issue: the first is cancelled before the next one on #7.
    let (s, v) = srv
        .post(
            &format!("/api/runs/{}/cancel", run["id"].as_str().unwrap()),
            ADMIN_TOKEN,
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // An explicit title keeps the old behaviour: no GitHub call.
    let before = sim.requests().len();
    let own = srv
        .create_run(json!({"repo": "acme/widgets", "issue_number": 7, "title": "Mine"}))
        .await;
    assert_eq!(own["title"], "Mine");
    assert_eq!(sim.requests().len(), before);
    // An issue GitHub does not know is the client's mistake.
    let (s, v) = srv
        .post(
            "/api/runs",
            ADMIN_TOKEN,
            &json!({"repo": "acme/widgets", "issue_number": 999}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "issue_number");

    // What went to GitHub: the JWT only to the token endpoint, the installation token
    // elsewhere, never our admin token (the original forwarded it).
    let requests = sim.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/app/installations/55/access_tokens" && r.auth == "app-jwt")
    );
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/repos/acme/widgets/issues/7" && r.auth == "installation-token")
    );
    for r in &requests {
        assert!(
            matches!(r.auth.as_str(), "app-jwt" | "installation-token"),
            "{r:?}"
        );
        let seen = serde_json::to_string(r).unwrap();
        assert!(
            !seen.contains(ADMIN_TOKEN),
            "admin token sent to GitHub: {seen}"
        );
    }

    // Nothing secret in the server's log, even at debug level.
    let log = eventually(Duration::from_secs(10), || async {
        let l = srv.log();
        l.contains("run created").then_some(l)
    })
    .await;
    let pem = std::fs::read_to_string(&key_path).unwrap();
    let key_lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(key_lines.len() > 10);
    for line in key_lines {
        assert!(
            !log.contains(line),
            "a line of the App private key is in the log"
        );
    }
    let tokens = sim.issued_tokens();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert!(
            !log.contains(t.as_str()),
            "an installation token is in the log"
        );
    }
    assert!(!log.contains(SECRET), "the webhook secret is in the log");
    assert!(!log.contains("eyJ"), "a JWT is in the log");

    // `config show` masks the GitHub secrets.
    let out = cli(
        srv.db.dir.path(),
        &["config", "show"],
        &[
            ("GITHUB_TOKEN", "ghp_do_not_print_me_123"),
            ("GITHUB_WEBHOOK_SECRET", SECRET),
        ],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("[github]"), "{shown}");
    assert!(
        !shown.contains("ghp_do_not_print_me_123") && !shown.contains(SECRET),
        "{shown}"
    );
}

/// Below the disk floor a delivery that would start a run is refused with 507 and not recorded,
/// so GitHub's redelivery once space is back starts the run.
async fn refused_at_the_disk_floor_then_redelivered(db: Db) {
    let floor = [
        ("GITHUB_WEBHOOK_SECRET", SECRET),
        ("ATLASIA_STORAGE__MIN_FREE_DISK_MB", "1000000000"),
    ];
    let mut srv = TestServer::start_with(TestDb::new(db).await, &floor).await;
    let body = labeled("ai:run", &["ai:run"]);
    let (s, v) = deliver(&srv, "issues", "delivery-full", &body, None).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_storage", "{v}");
    assert_eq!(run_count(&srv).await, 0);
    srv.terminate(Duration::from_secs(30)).await;
    let TestServer { db, .. } = srv;
    let srv = TestServer::start_with(db, &[("GITHUB_WEBHOOK_SECRET", SECRET)]).await;
    let (s, v) = deliver(&srv, "issues", "delivery-full", &body, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(run_count(&srv).await, 1);
}

on_both! {
    disk_floor => refused_at_the_disk_floor_then_redelivered;
    signature => signature_vector_and_forgeries;
    replay => accepted_then_replayed;
    race => racing_redeliveries_start_one_run;
    ignored => other_events_are_ignored;
    no_secret => no_secret_refuses_everything;
    issue_context => runs_read_the_issue_from_github_without_leaking_secrets;
}
