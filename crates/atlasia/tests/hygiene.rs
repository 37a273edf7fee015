//! Issue 9, parts 3 and 4, through the real binary on both backends: no secret the server
//! knows reaches what a viewer reads (run, events, artifacts, pull request and its diff, the
//! log), secrets shorter than 8 characters are refused at start, a NUL in a tool argument is
//! stored (sanitised) instead of making every write fail, a run whose worker keeps dying is
//! failed after `engine.max_attempts`, and every engine log line names its run. None of these
//! rely on the sandbox: the secret comes from the issue, the simulator's script and the
//! repository under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use serde_json::{Value, json};
use std::process::Command as StdCommand;

/// The webhook secret of the servers below: a value the server knows as a secret.
const SECRET: &str = "whsec-hygiene-0123456789-abcdef";
const LLM_KEY: &str = "sk-hygiene-llm-key-0123456789";

/// A server on `sim` that knows `LLM_KEY` and `SECRET` as secrets, plus `extra`.
async fn server(db: TestDb, sim: &Sim, extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![("LLM_API_KEY", LLM_KEY), ("GITHUB_WEBHOOK_SECRET", SECRET)];
    env.extend_from_slice(extra);
    bolt_server(db, sim, &env).await
}

/// The calc project, plus a committed `leak.txt` holding the secret and a test that prints
/// it, so the Tester's command output carries it, and a script that copies it.
fn leaky_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_calc_project(p);
    std::fs::write(p.join("leak.txt"), format!("{SECRET}\n")).unwrap();
    std::fs::write(
        p.join("test_leak.py"),
        "import unittest\n\n\nclass L(unittest.TestCase):\n    def test_leak(self):\n        \
         print(open('leak.txt').read())\n",
    )
    .unwrap();
    std::fs::write(
        p.join("copy_leak.py"),
        "import shutil\nshutil.copy('leak.txt', 'copy.txt')\n",
    )
    .unwrap();
    git(p, &["init", "-q", "-b", "trunk"]);
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "initial"]);
    dir
}

on_both! {
    secrets_never_reach_what_a_viewer_reads => secrets_never_reach_what_a_viewer_reads;
    sim_scripts_never_reach_a_real_model => sim_scripts_never_reach_a_real_model;
    a_nul_in_a_tool_argument_is_stored_and_the_bolt_goes_on => a_nul_in_a_tool_argument_is_stored_and_the_bolt_goes_on;
    a_run_whose_worker_keeps_dying_fails_after_max_attempts => a_run_whose_worker_keeps_dying_fails_after_max_attempts;
    a_value_the_database_refuses_is_not_retryable => a_value_the_database_refuses_is_not_retryable;
}

/// A recording relay between the server and the simulator, over real HTTP: every request
/// body the server sends to its "provider" is kept (the server is pointed at it exactly as it
/// would be at the simulator), so a test can say what left the machine.
struct Relay {
    base: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Relay {
    async fn start(upstream: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // reqwest needs a crypto provider before its first client (as TestServer does).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (kept, upstream_base) = (bodies.clone(), upstream.trim_end_matches('/').to_owned());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (kept, client, up) = (kept.clone(), client.clone(), upstream_base.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let n = conn.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.lines();
                    let path = lines.next().unwrap().split(' ').nth(1).unwrap().to_owned();
                    let mut len = 0;
                    let mut auth = None;
                    for l in lines {
                        let (k, v) = l.split_once(':').unwrap_or((l, ""));
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap(),
                            "authorization" => auth = Some(v.trim().to_owned()),
                            _ => {}
                        }
                    }
                    while buf.len() < head_end + len {
                        let n = conn.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    kept.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).to_string());
                    let mut req = client
                        .post(format!("{up}{path}"))
                        .header("content-type", "application/json")
                        .body(body);
                    if let Some(a) = auth {
                        req = req.header("authorization", a);
                    }
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    let answer = resp.bytes().await.unwrap();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        answer.len()
                    );
                    conn.write_all(head.as_bytes()).await.unwrap();
                    conn.write_all(&answer).await.unwrap();
                });
            }
        });
        Self { base, bodies }
    }

    fn sent(&self) -> String {
        self.bodies.lock().unwrap().join("\n")
    }
}

/// A bundled-style issue carries the simulator's script (the whole fix). With a model that is
/// not the simulator (`[llm] simulator` off), no request carries it: the model gets the issue
/// without its answer key — here the simulator behind the relay, which then has no script,
/// changes nothing and the bolt escalates `no_change`.
async fn sim_scripts_never_reach_a_real_model(db: Db) {
    let sim = Sim::start(&[]).await;
    let relay = Relay::start(&sim.base).await;
    let srv = server(
        TestDb::new(db).await,
        &sim,
        &[
            ("LLM_ENDPOINT", relay.base.as_str()),
            ("ATLASIA_LLM__SIMULATOR", "false"),
        ],
    )
    .await;
    let repo = tempfile::tempdir().unwrap();
    write_calc_project(repo.path());
    let issue = body(json!({"developer": [edit_to(FIXED_NEW)]}));
    assert!(
        issue.contains("atlasia-sim") && issue.contains("a + b"),
        "{issue}"
    );
    let run = srv
        .create_run(
            json!({"repo": repo.path().display().to_string(), "issue_number": 4,
                           "title": "add() subtracts", "body": issue}),
        )
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    let sent = relay.bodies.lock().unwrap().clone();
    assert!(
        sent.len() >= 4,
        "the planners and the developer were asked: {}",
        sent.len()
    );
    for b in &sent {
        assert!(
            !b.contains("atlasia-sim\\n") && !b.contains("a + b"),
            "script sent: {b}"
        );
    }
    assert!(
        sent.iter()
            .any(|b| b.contains("atlasia-sim script removed")),
        "the model is told something was cut"
    );
    let why = artifacts(&srv, &id, "escalation").await;
    assert_eq!(done["status"], "ESCALATED", "{done}\n{}", srv.log());
    assert_eq!(why[0]["payload"]["reason"], "no_change", "{why:?}");
}

async fn secrets_never_reach_what_a_viewer_reads(db: Db) {
    let sim = Sim::start(&[]).await;
    let relay = Relay::start(&sim.base).await;
    let srv = server(
        TestDb::new(db).await,
        &sim,
        &[("LLM_ENDPOINT", relay.base.as_str())],
    )
    .await;
    let repo = leaky_repo();
    // The developer (scripted) writes the secret into a file with write_file: the path policy
    // must refuse it. In the script the secret's first letter is a JSON escape, so the stored
    // issue body does not contain it but the simulator's tool call does.
    let mut steps = edit_to(FIXED_NEW).as_array().unwrap().clone();
    steps.insert(
        0,
        json!({"tool": "read_file", "args": {"path": "leak.txt"}}),
    );
    steps.push(json!({"tool": "write_file", "args": {"path": "dump.txt", "content": "LEAK_HERE"}}));
    let escaped = format!("\\u{:04x}{}", SECRET.as_bytes()[0], &SECRET[1..]);
    let issue = body(json!({"developer": [steps]})).replace("LEAK_HERE", &escaped);
    let issue = format!("{issue}\nThe deploy token is {SECRET} (and the key {LLM_KEY}).\n");
    let title = format!("add() subtracts {SECRET}");
    let run = srv
        .create_run(
            json!({"repo": repo.path().display().to_string(), "issue_number": 9,
                           "title": title, "body": issue}),
        )
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    assert!(!run.to_string().contains(SECRET), "{run}");
    let done = wait_status(&srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    let why = artifacts(&srv, &id, "escalation").await;
    assert_eq!(done["status"], "DONE", "{why:?}\n{}", srv.log());

    // Everything a viewer reads through the API.
    let viewer = srv.token("viewer", "viewer").await;
    let mut shown = String::new();
    for path in ["", "/events?limit=1000", "/artifacts", "/pull-request"] {
        let (s, v) = srv.get(&format!("/api/runs/{id}{path}"), &viewer).await;
        assert!(s.is_success(), "{path}: {v}");
        shown.push_str(&v.to_string());
    }
    for secret in [SECRET, LLM_KEY] {
        assert!(!shown.contains(secret), "{secret} shown to a viewer");
        let reversed: String = secret.chars().rev().collect();
        assert!(!shown.contains(&reversed), "{secret} reversed shown");
    }
    // The secret was there, and was redacted (the test can fail): in the run's title (so in
    // the pull request and its diff's CHANGELOG line) and body, and the Tester's output.
    assert!(
        done["body"].as_str().unwrap().contains("[redacted]"),
        "{done}"
    );
    assert!(
        done["title"].as_str().unwrap().contains("[redacted]"),
        "{done}"
    );
    let tests = artifacts(&srv, &id, "test_report").await;
    let tails = tests[0]["payload"].to_string();
    assert!(tails.contains("[redacted]"), "{tails}");
    let (_, pr) = srv
        .get(&format!("/api/runs/{id}/pull-request"), &viewer)
        .await;
    assert!(pr["diff"].as_str().unwrap().contains("[redacted]"), "{pr}");

    // The write_file of the secret was refused by the path policy: not on the branch.
    let evs = events(&srv, &id).await;
    let refused = kinds(&evs, "tool_called")
        .into_iter()
        .find(|e| e["data"]["tool"] == "write_file")
        .unwrap()
        .to_string();
    assert!(refused.contains("secret value of this server"), "{refused}");
    let head = pr["head"].as_str().unwrap();
    let on_branch = |file: &str| {
        StdCommand::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["cat-file", "-e", &format!("{head}:{file}")])
            .status()
            .unwrap()
            .success()
    };
    assert!(!on_branch("dump.txt"), "dump.txt was committed");
    assert!(on_branch("calc.py"), "the check above must be able to fail");

    // A file a command writes (a copy of the repository's leak.txt) holding the secret is
    // refused too, before any commit: the bolt escalates and no branch ever holds it.
    let script = json!({"developer": [[
        {"tool": "run_command", "args": {"command": "python3 copy_leak.py"}},
    ]]});
    let run = srv
        .create_run(
            json!({"repo": repo.path().display().to_string(), "issue_number": 10,
                           "title": "copy", "body": body(script)}),
        )
        .await;
    let copy_id = run["id"].as_str().unwrap().to_owned();
    let stopped = wait_status(&srv, &copy_id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(stopped["status"], "ESCALATED", "{stopped}");
    let why = artifacts(&srv, &copy_id, "escalation").await;
    let blocker = why[0]["payload"]["blocker"].as_str().unwrap();
    assert!(
        blocker.contains("copy.txt") && blocker.contains("secret value of this server"),
        "{blocker}"
    );
    let copied = StdCommand::new("git")
        .arg("-C")
        .arg(repo.path())
        .args(["log", "--all", "--format=%H", "--", "copy.txt"])
        .output()
        .unwrap();
    assert!(copied.stdout.is_empty(), "copy.txt was committed");

    // Nor an error answer that echoes the request (the one HTTP error mapping redacts).
    let (s, v) = srv.get(&format!("/api/{SECRET}"), ADMIN_TOKEN).await;
    assert_eq!(s, reqwest::StatusCode::NOT_FOUND, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("/api/[redacted]"), "{message}");
    // The proxy's OpenAI-shaped errors likewise (an unknown model is named in the message).
    let (s, v, _) = srv
        .call(
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(ADMIN_TOKEN),
            Some(&json!({"model": SECRET, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert!(s.is_client_error(), "{s} {v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("[redacted]") && !message.contains(SECRET),
        "{message}"
    );

    // Nor the database's own rows, read behind the API's back.
    let rows = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM run_events WHERE CAST(data AS TEXT) LIKE '%{SECRET}%'"
    ));
    assert_eq!(rows.trim(), "0");
    // Nor did it leave for the LLM provider: the Developer read leak.txt, the issue quoted it.
    let sent = relay.sent();
    assert!(
        sent.contains("Developer") || sent.contains("developer"),
        "nothing relayed"
    );
    assert!(
        sent.contains("[redacted]"),
        "the secret never reached a prompt?"
    );
    for secret in [SECRET, LLM_KEY] {
        if let Some(at) = sent.find(secret) {
            let from = sent[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            panic!(
                "secret sent to the LLM: …{}…",
                &sent[from..at + secret.len()]
            );
        }
    }
    // Nor the log.
    let log = srv.log();
    assert!(
        !log.contains(SECRET) && !log.contains(LLM_KEY),
        "secret in the log"
    );
}

/// Secrets shorter than 8 characters are refused at start with exit 2 and one line naming
/// the setting, never echoing the value: redacting them would mangle ordinary words.
#[test]
fn short_secrets_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("LLM_ENDPOINT", "http://127.0.0.1:9/v1"),
                ("LLM_MODEL", "m"),
                ("LLM_API_KEY", "x"),
            ],
            "LLM_API_KEY",
        ),
        (
            &[("GITHUB_WEBHOOK_SECRET", "s3cr3t")],
            "github.webhook_secret",
        ),
        (&[("GITHUB_TOKEN", "ghp_1")], "github.token"),
        (
            &[("DB_URL", "postgres://u:pw4u@127.0.0.1:9/db")],
            "database.url",
        ),
    ];
    for (env, key) in cases {
        let out = cli(dir.path(), &["serve", "--bind", "127.0.0.1:0"], env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{err}");
        assert!(err.contains("at least 8 characters"), "{err}");
        let value = env.last().unwrap().1;
        assert!(!err.contains(&format!(" {value}")), "{err}");
    }
    // Eight characters are enough.
    let out = cli(
        dir.path(),
        &["config", "show"],
        &[("GITHUB_WEBHOOK_SECRET", "8chars!!")],
    );
    assert!(out.status.success(), "{out:?}");
}

async fn a_nul_in_a_tool_argument_is_stored_and_the_bolt_goes_on(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(
        TestDb::new(db).await,
        &sim,
        &[("ATLASIA_SERVER__LOG_FORMAT", "json")],
    )
    .await;
    let repo = tempfile::tempdir().unwrap();
    write_calc_project(repo.path());
    git(repo.path(), &["init", "-q", "-b", "trunk"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "initial"]);
    let mut steps = vec![json!({"tool": "read_file", "args": {"path": "calc\u{0}.py"}})];
    steps.extend(edit_to(FIXED_NEW).as_array().unwrap().iter().cloned());
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts", "body": body(json!({"developer": [steps]}))}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    // The argument was stored, its NUL replaced the same way on both backends.
    let evs = events(&srv, &id).await;
    let read = kinds(&evs, "tool_called")
        .into_iter()
        .find(|e| e["data"]["tool"] == "read_file" && e.to_string().contains("calc"))
        .unwrap()
        .to_string();
    assert!(read.contains("calc\u{FFFD}.py"), "{read}");
    let log = srv.log();
    assert!(!log.contains("run abandoned"), "{log}");
    // Every engine log line written while the bolt runs names the run (the lines before it
    // are the process's start-up: the sandbox probe, the worker pool).
    let mut engine_lines = 0;
    let from_claim = log
        .lines()
        .skip_while(|line| !line.contains(&id))
        .collect::<Vec<_>>();
    for line in from_claim {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("atlasia_engine"))
        {
            engine_lines += 1;
            assert!(line.contains(&id), "engine line without the run: {line}");
        }
    }
    assert!(engine_lines > 5, "only {engine_lines} engine lines:\n{log}");
}

/// The step in progress never ends (the simulator answers after a minute); the server is
/// killed (-9) during it three times. The fourth start finds the lease expired once more and
/// fails the run with the reason and its event, in one transaction, instead of running it.
async fn a_run_whose_worker_keeps_dying_fails_after_max_attempts(db: Db) {
    let sim = Sim::start(&["--latency-ms", "60000"]).await;
    let repo = leaky_repo();
    let extra = [
        ("ATLASIA_ENGINE__LEASE_MS", "1000"),
        ("ATLASIA_ENGINE__MAX_ATTEMPTS", "3"),
    ];
    let mut srv = server(TestDb::new(db).await, &sim, &extra).await;
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "never finishes", "body": "a step that kills its worker"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    for death in 1..=3usize {
        eventually(BOLT_LIMIT, || async {
            let evs = events(&srv, &id).await;
            (kinds(&evs, "step_started").len() == death).then_some(())
        })
        .await;
        let pid = srv.child.id().unwrap();
        let killed = StdCommand::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        srv.child.wait().await.unwrap();
        let TestServer { db, .. } = srv;
        srv = server(db, &sim, &extra).await;
    }
    let failed = wait_status(&srv, &id, &["FAILED", "DONE", "ESCALATED"]).await;
    assert_eq!(failed["status"], "FAILED", "{failed}\n{}", srv.log());
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("the worker died 3 times during PM"),
        "{error}"
    );
    let evs = events(&srv, &id).await;
    let last = evs.last().unwrap();
    assert_eq!(last["kind"], "status_changed", "{last}");
    assert_eq!(last["data"]["to"], "FAILED", "{last}");
    assert_eq!(last["data"]["poisoned"], true, "{last}");
    // Reclaimed twice, never a third time; the step ran three times.
    assert_eq!(kinds(&evs, "lease_claimed").len(), 2, "{evs:?}");
    assert_eq!(kinds(&evs, "step_started").len(), 3);
    let text = srv.metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("workflow_runs_poisoned_total") && l.ends_with(" 1")),
        "{text}"
    );
    // The failed step row says why, too.
    let step = srv.db.sql_cli(&format!(
        "SELECT status FROM run_steps WHERE run_id = '{id}' ORDER BY seq DESC LIMIT 1"
    ));
    assert_eq!(step.trim(), "FAILED");
}

/// The worker fails a run (instead of abandoning it to be reclaimed) when a write is refused
/// for its value; this checks, on a real database of each kind, that such a refusal is told
/// apart from a passing failure. A loop counter beyond INTEGER: PostgreSQL refuses it (SQLSTATE
/// 22003), SQLite stores it and cannot read it back as one.
async fn a_value_the_database_refuses_is_not_retryable(db: Db) {
    use atlasia_core::{Autonomy, NewRun};
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    store
        .create_run(&NewRun {
            repo: "acme/widgets".into(),
            issue_number: Some(7),
            title: "t".into(),
            body: "b".into(),
            priority: 5,
            autonomy: Autonomy::Autonomous,
            budget_usd: None,
        })
        .await
        .unwrap();
    let run = store
        .claim("w1", std::time::Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap()
        .run;
    store.start_step(run.id, "w1", "PM").await.unwrap().unwrap();
    let payload = json!({"v": 1});
    let end = atlasia_store::StepEnd {
        loops: Some((i64::MAX, 0)),
        ..atlasia_store::StepEnd::done("PM", ("ticket_plan", &payload), Some("QUALIFIER"))
    };
    let e = store.end_step(run.id, "w1", &end).await.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
    // A passing failure stays retryable.
    let busy = atlasia_store::StoreError::PoolTimeout(std::time::Duration::from_secs(1));
    assert!(busy.is_retryable());
}
