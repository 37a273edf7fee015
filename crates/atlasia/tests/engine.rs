//! The bolt engine end to end: the real `atlasia serve` with workers, calling the real
//! `atlasia sim-llm` over HTTP. A run on a repository that cannot be checked out goes through
//! PM → QUALIFIER → ARCHITECT with valid, versioned artifacts, ordered step events and
//! `llm_calls` rows, then fails at DEVELOPER with the reason (or waits at the gate with autonomy
//! `confirm`). Whole bolts on real repositories are in `bolt.rs`. After `kill -9` mid-run
//! and a restart on the same database, the run resumes after its last completed step. Cancel
//! stops the step in flight; SIGTERM requeues the run; a failing LLM fails the run with the
//! cause; schema-invalid answers are re-asked twice, then fail the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_engine::contracts::Contracts;

/// How a run on `acme/widgets` ends: no GitHub is configured and it is no local path, so the
/// planning steps run (they do not need the code) and DEVELOPER fails with the reason.
const NO_REPO_ERROR: &str = "cannot prepare repository 'acme/widgets'";
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The server with workers, pointed at `sim`.
async fn server(db: TestDb, sim: &Sim, lease_ms: &str) -> TestServer {
    let env = [
        ("LLM_ENDPOINT", sim.base.as_str()),
        ("ATLASIA_LLM__SIMULATOR", "true"),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("ATLASIA_ENGINE__WORKERS", "2"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
        ("ATLASIA_ENGINE__LEASE_MS", lease_ms),
    ];
    TestServer::start_with(db, &env).await
}

const LIMIT: Duration = Duration::from_secs(60);

/// Polls until the run is out of PENDING/RUNNING; returns it.
async fn settled(srv: &TestServer, id: &str) -> Value {
    eventually(LIMIT, || async {
        let (_, run) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        let s = run["status"].as_str().unwrap_or_default().to_owned();
        (s != "PENDING" && s != "RUNNING").then_some(run)
    })
    .await
}

async fn events(srv: &TestServer, id: &str) -> Vec<Value> {
    let (s, v) = srv
        .get(&format!("/api/runs/{id}/events?limit=1000"), ADMIN_TOKEN)
        .await;
    assert!(s.is_success(), "{v}");
    v["items"].as_array().unwrap().clone()
}

/// `(kind, step)` of each step event, in log order.
fn step_events(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "step_started" || e["kind"] == "step_completed")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["data"]["step"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn artifacts(srv: &TestServer, id: &str) -> Vec<Value> {
    let (s, v) = srv
        .get(&format!("/api/runs/{id}/artifacts"), ADMIN_TOKEN)
        .await;
    assert!(s.is_success(), "{v}");
    v["items"].as_array().unwrap().clone()
}

/// The agents of the run's `llm_calls` rows, oldest first, once `n` are written (the ledger
/// writes in the background).
async fn llm_agents(srv: &TestServer, id: &str, n: usize) -> Vec<String> {
    let sql = format!("SELECT agent FROM llm_calls WHERE run_id = '{id}' ORDER BY id");
    eventually(LIMIT, || async {
        let out = srv.db.sql_cli(&sql);
        let agents: Vec<String> = out.lines().map(str::to_owned).collect();
        (agents.len() >= n).then_some(agents)
    })
    .await
}

on_both! {
    planning_runs_then_developer_fails_without_a_repository => planning_runs_then_developer_fails_without_a_repository;
    killed_server_resumes_after_the_last_completed_step => killed_server_resumes_after_the_last_completed_step;
    cancel_stops_the_running_step => cancel_stops_the_running_step;
    failing_llm_fails_the_run_with_the_cause => failing_llm_fails_the_run_with_the_cause;
    invalid_answers_are_reasked_then_escalate => invalid_answers_are_reasked_then_escalate;
    cut_answers_are_reasked_with_a_larger_bound_then_escalate => cut_answers_are_reasked_with_a_larger_bound_then_escalate;
    shutdown_requeues_the_run => shutdown_requeues_the_run;
}

async fn planning_runs_then_developer_fails_without_a_repository(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(TestDb::new(db).await, &sim, "30000").await;
    let contracts = Contracts::embedded().unwrap();

    let run = srv
        .create_run(json!({"repo": "acme/widgets", "issue_number": 12,
                           "title": "Add a health endpoint", "body": "GET /health returns ok"}))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = settled(&srv, id).await;
    assert_eq!(done["status"], "FAILED", "{done}\n{}", srv.log());
    assert!(
        done["error"].as_str().unwrap().starts_with(NO_REPO_ERROR),
        "{done}"
    );
    assert_eq!(done["current_step"], "DEVELOPER");

    let arts = artifacts(&srv, id).await;
    let kinds: Vec<(&str, i64, &str)> = arts
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap(),
                a["version"].as_i64().unwrap(),
                a["step"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("ticket_plan", 1, "PM"),
            ("work_plan", 1, "QUALIFIER"),
            ("architecture_notes", 1, "ARCHITECT"),
            ("step_error", 1, "DEVELOPER")
        ]
    );
    for a in arts.iter().filter(|a| a["kind"] != "step_error") {
        let kind = a["kind"].as_str().unwrap();
        assert!(contracts.validate(kind, &a["payload"]).is_ok(), "{a}");
    }

    let evs = events(&srv, id).await;
    let seqs: Vec<i64> = evs.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=evs.len() as i64).collect::<Vec<_>>());
    let steps = step_events(&evs);
    let mut expected: Vec<(String, String)> = ["PM", "QUALIFIER", "ARCHITECT"]
        .iter()
        .flat_map(|s| {
            [
                ("step_started".to_owned(), (*s).to_owned()),
                ("step_completed".to_owned(), (*s).to_owned()),
            ]
        })
        .collect();
    expected.push(("step_started".to_owned(), "DEVELOPER".to_owned()));
    assert_eq!(steps, expected);
    assert_eq!(evs.last().unwrap()["data"]["to"], "FAILED");

    let agents = llm_agents(&srv, id, 3).await;
    assert_eq!(agents, ["pm", "qualifier", "architect"]);

    // Autonomy `confirm`: the architecture gate instead of the failure.
    let gated = srv
        .create_run(json!({"repo": "acme/widgets", "title": "Gate me", "autonomy": "confirm"}))
        .await;
    let gid = gated["id"].as_str().unwrap();
    let parked = settled(&srv, gid).await;
    assert_eq!(parked["status"], "WAITING_GATE", "{parked}");
    assert_eq!(parked["current_step"], "DEVELOPER");
    assert!(parked["error"].is_null());
    assert_eq!(artifacts(&srv, gid).await.len(), 3);
}

async fn killed_server_resumes_after_the_last_completed_step(db: Db) {
    // Each answer takes a while, so the kill lands while QUALIFIER's call is in flight.
    let sim = Sim::start(&["--latency-ms", "1500"]).await;
    let mut srv = server(TestDb::new(db).await, &sim, "1500").await;
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": "Survive a crash"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();

    eventually(LIMIT, || async {
        let steps = step_events(&events(&srv, &id).await);
        steps
            .contains(&("step_completed".to_owned(), "PM".to_owned()))
            .then_some(())
    })
    .await;
    let pid = srv.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    srv.child.wait().await.unwrap();
    // The server is gone: read the log from the database itself.
    let completed = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM run_events WHERE run_id = '{id}' AND kind = 'step_completed'"
    ));
    assert_eq!(
        completed.trim(),
        "1",
        "only PM may have completed before the kill, or the test did not exercise a resume"
    );

    let TestServer { db, .. } = srv;
    let srv = server(db, &sim, "1500").await;
    let done = settled(&srv, &id).await;
    assert_eq!(done["status"], "FAILED", "{done}\n{}", srv.log());
    assert!(
        done["error"].as_str().unwrap().starts_with(NO_REPO_ERROR),
        "{done}"
    );

    let arts = artifacts(&srv, &id).await;
    let kinds: Vec<(&str, i64)> = arts
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ticket_plan", 1),
            ("work_plan", 1),
            ("architecture_notes", 1),
            ("step_error", 1)
        ]
    );

    let evs = events(&srv, &id).await;
    let steps = step_events(&evs);
    let pm_starts = steps
        .iter()
        .filter(|(k, s)| k == "step_started" && s == "PM")
        .count();
    assert_eq!(pm_starts, 1, "PM ran again: {steps:?}");
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "lease_claimed" && e["data"]["reclaimed"] == true),
        "the run was not reclaimed"
    );
    // QUALIFIER's interrupted call and its retry, then ARCHITECT; PM's one call at most (the
    // killed process may not have flushed its ledger row).
    let agents = llm_agents(&srv, &id, 2).await;
    assert!(
        agents.iter().filter(|a| *a == "pm").count() <= 1,
        "{agents:?}"
    );
    let tail: Vec<&str> = agents
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "pm")
        .collect();
    assert_eq!(tail.last(), Some(&"architect"), "{agents:?}");
}

async fn cancel_stops_the_running_step(db: Db) {
    // PM's answer would take 20 s; the cancel must not wait for it.
    let sim = Sim::start(&["--latency-ms", "20000"]).await;
    let srv = server(TestDb::new(db).await, &sim, "1500").await;
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": "Cancel me"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    eventually(LIMIT, || async {
        let steps = step_events(&events(&srv, &id).await);
        (!steps.is_empty()).then_some(())
    })
    .await;
    let (s, v) = srv
        .post(&format!("/api/runs/{id}/cancel"), ADMIN_TOKEN, &json!({}))
        .await;
    assert!(s.is_success(), "{v}");
    // The heartbeat (every 500 ms) sees the lease gone and stops the step well before the
    // simulator would answer.
    eventually(Duration::from_secs(10), || async {
        srv.log()
            .contains("lease lost; stopping the step")
            .then_some(())
    })
    .await;
    let (_, run) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
    assert_eq!(run["status"], "CANCELLED");
    assert!(artifacts(&srv, &id).await.is_empty());
    let steps = step_events(&events(&srv, &id).await);
    assert_eq!(steps, [("step_started".to_owned(), "PM".to_owned())]);
}

async fn failing_llm_fails_the_run_with_the_cause(db: Db) {
    let sim = Sim::start(&["--fault", "500"]).await;
    let env = [
        ("LLM_ENDPOINT", sim.base.as_str()),
        ("ATLASIA_LLM__SIMULATOR", "true"),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("ATLASIA_LLM__RETRY__BASE_MS", "10"),
        // The step's own patience with a failing provider, short for the test.
        ("ATLASIA_ENGINE__LLM_PATIENCE_SECS", "3"),
        ("ATLASIA_ENGINE__WORKERS", "1"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
    ];
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": "No model today"}))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = settled(&srv, id).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("pm: LLM call failed"), "{error}");
    assert_eq!(done["current_step"], "PM");
    assert_only_the_error_artifact(&artifacts(&srv, id).await, error);
    // It waited for the provider before giving up.
    let waits = events(&srv, id)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "llm_call_failed" && e["data"]["retry_in_ms"].is_number())
        .count();
    assert!(waits >= 1, "no patient retry before failing");
}

/// One worker against the fake LLM at `base` (plus `extra`), and one run on a repository that
/// cannot be prepared (the planners answer first): the server, the run's id and the run once
/// it settled.
async fn one_planning_run(
    db: Db,
    base: &str,
    extra: &[(&str, &str)],
    title: &str,
) -> (TestServer, String, Value) {
    let mut env = vec![
        ("LLM_ENDPOINT", base),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("ATLASIA_ENGINE__WORKERS", "1"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
    ];
    env.extend_from_slice(extra);
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": title}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let done = settled(&srv, &id).await;
    (srv, id, done)
}

/// A fake OpenAI endpoint that answers every request with the same schema-invalid JSON (`{}`)
/// and records each request body: the simulator only gives valid answers.
async fn invalid_llm() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    fixed_llm("stop", "{}").await
}

/// A fake OpenAI endpoint that answers every request with `content` and `finish_reason`,
/// recording each request body.
async fn fixed_llm(
    finish_reason: &'static str,
    content: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // Read the head, then as much body as Content-Length says.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let body_start = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..body_start]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < body_start + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                // Model calls only: the server's start-up probe (`GET /v1/models`) is not one.
                if head.starts_with("post ") {
                    let request: Value = serde_json::from_slice(&buf[body_start..body_start + len])
                        .unwrap_or_default();
                    seen.lock().unwrap().push(request);
                }
                let body = json!({"id": "fake-1", "object": "chat.completion", "created": 0,
                    "model": "fake-invalid",
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
                .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, bodies)
}

/// Answers that stay invalid are re-asked twice, each re-ask carrying only the last answer and
/// its errors (the prompt does not grow), every call bounded by the contract's `max_tokens`;
/// then the bolt escalates `invalid_output` at the step, rather than failing.
async fn invalid_answers_are_reasked_then_escalate(db: Db) {
    let (base, bodies) = invalid_llm().await;
    let (srv, id, done) = one_planning_run(db, &base, &[], "Answer badly").await;
    let id = id.as_str();
    assert_eq!(done["status"], "ESCALATED", "{done}\n{}", srv.log());
    assert_eq!(done["current_step"], "PM", "PROCEED asks the PM again");
    let arts = artifacts(&srv, id).await;
    assert_eq!(arts.len(), 1, "{arts:?}");
    let esc = &arts[0]["payload"];
    assert_eq!(arts[0]["kind"], "escalation");
    assert_eq!(esc["reason"], "invalid_output", "{esc}");
    let blocker = esc["blocker"].as_str().unwrap();
    assert!(
        blocker.starts_with("pm: no valid ticket_plan after 2 re-asks; last: "),
        "{blocker}"
    );
    assert!(
        blocker.contains("summary"),
        "the cause names the missing field: {blocker}"
    );
    // The first answer and two corrections, each bounded, the re-asks of equal size.
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3);
    for b in &bodies {
        assert_eq!(b["max_tokens"], 1024, "the pm contract's bound: {b}");
    }
    let sizes: Vec<usize> = bodies
        .iter()
        .map(|b| b["messages"].to_string().len())
        .collect();
    assert_eq!(
        sizes[1], sizes[2],
        "re-asks do not grow the prompt: {sizes:?}"
    );
    assert_eq!(bodies[2]["messages"].as_array().map(Vec::len), Some(4));
}

/// An answer cut by the output bound (`finish_reason: length`) is never echoed back: the
/// re-ask says where it was cut and asks for brevity with twice the bound; answers that stay
/// cut escalate saying so.
async fn cut_answers_are_reasked_with_a_larger_bound_then_escalate(db: Db) {
    let (base, bodies) = fixed_llm("length", "{\"summary\": \"Make add() add, and then").await;
    let (srv, id, done) = one_planning_run(
        db,
        &base,
        &[("ATLASIA_AGENTS__PM__MAX_TOKENS", "300")],
        "Answer at length",
    )
    .await;
    let id = id.as_str();
    assert_eq!(done["status"], "ESCALATED", "{done}\n{}", srv.log());
    let arts = artifacts(&srv, id).await;
    let esc = &arts[0]["payload"];
    assert_eq!(esc["reason"], "invalid_output", "{esc}");
    let blocker = esc["blocker"].as_str().unwrap();
    assert!(
        blocker.contains("the answer was cut at 7 tokens"),
        "{blocker}"
    );
    let bodies = bodies.lock().unwrap().clone();
    let bounds: Vec<&Value> = bodies.iter().map(|b| &b["max_tokens"]).collect();
    assert_eq!(
        bounds,
        [&json!(300), &json!(600), &json!(1200)],
        "the operator's bound, doubled"
    );
    for b in &bodies[1..] {
        let messages = b["messages"].to_string();
        assert!(
            !messages.contains("and then"),
            "the cut answer is not echoed: {messages}"
        );
        assert!(messages.contains("was cut at 7 tokens"), "{messages}");
    }
}

/// A failed step leaves no output, only a `step_error` artifact saying why.
fn assert_only_the_error_artifact(arts: &[Value], error: &str) {
    assert_eq!(arts.len(), 1, "{arts:?}");
    assert_eq!(arts[0]["kind"], "step_error");
    assert_eq!(arts[0]["step"], "PM");
    assert_eq!(arts[0]["payload"]["error"], error);
}

async fn shutdown_requeues_the_run(db: Db) {
    let sim = Sim::start(&["--latency-ms", "20000"]).await;
    let mut srv = server(TestDb::new(db).await, &sim, "30000").await;
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": "Stop politely"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    eventually(LIMIT, || async {
        let steps = step_events(&events(&srv, &id).await);
        (!steps.is_empty()).then_some(())
    })
    .await;
    let stopping = std::time::Instant::now();
    let status = srv.terminate(Duration::from_secs(30)).await;
    let stopped_in = stopping.elapsed();
    assert!(status.success(), "{status:?}\n{}", srv.log());
    // Handed back at once instead of waiting 30 s for the lease to expire.
    let row = srv.db.sql_cli(&format!(
        "SELECT status, current_step, lease_owner IS NULL FROM workflow_runs WHERE id = '{id}'"
    ));
    let row = row.trim().replace('|', " ");
    assert!(
        row == "PENDING PM 1" || row == "PENDING PM t",
        "{row}\n{}",
        srv.log()
    );
    eprintln!(
        "chaos: SIGTERM mid-bolt ({db:?}): lost nothing (the run is PENDING again at its step, no lease left); the server stopped in {stopped_in:?}"
    );
}

/// The reviewers run on a model with a small context (its endpoint's size configured); the
/// Developer's change adds a big generated file, so the diff they read no longer fits: their
/// input is cut to fit, with a mark, and the bolt goes on to DONE instead of overflowing.
#[tokio::test(flavor = "multi_thread")]
async fn inputs_are_cut_to_fit_a_small_context() {
    let sim = Sim::start(&[]).await;
    let tdb = TestDb::new(Db::Sqlite).await;
    let model = |name: &str| {
        format!(
            "[[llm.models]]\nname = \"{name}\"\n[[llm.models.endpoints]]\nname = \"{name}-ep\"\n\
             base_url = \"{}\"\nmodel = \"sim-model\"\napi_key = \"sk-test-key\"\n",
            sim.base
        )
    };
    let config = format!(
        "[llm]\ndefault_model = \"big\"\nsimulator = true\n{}{}\
         [llm.endpoint_context_tokens]\nsmall-ep = 6000\n\
         [agents.reviewer]\nllm_model = \"small\"\n",
        model("big"),
        model("small"),
    );
    std::fs::write(tdb.dir.path().join("atlasia.toml"), config).unwrap();
    let srv = TestServer::start_with(
        tdb,
        &[
            ("ATLASIA_ENGINE__WORKERS", "2"),
            ("ATLASIA_ENGINE__POLL_MS", "50"),
        ],
    )
    .await;
    let repo = common::bolts::calc_repo();
    // A small generator the Developer writes and runs: the change becomes ~30 KB.
    let generator = "with open('data.txt', 'w') as f:\n    for i in range(1200):\n        f.write(f'line {i} of the data\\n')\n";
    let mut steps = vec![
        json!({"tool": "write_file", "args": {"path": "gen.py", "content": generator}}),
        json!({"tool": "run_command", "args": {"command": "python3 gen.py"}}),
    ];
    steps.extend(
        common::bolts::edit_to(common::bolts::FIXED_NEW)
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts",
                           "body": common::bolts::body(json!({"developer": [steps]}))}))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = common::bolts::wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    let diff = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await
        .1["diff"]
        .as_str()
        .unwrap_or_default()
        .len();
    assert!(diff > 25_000, "the change is big: {diff} bytes");
    let bodies = sim.bodies().await;
    let reviews: Vec<&String> = bodies
        .iter()
        .filter(|b| b.contains(r#""name":"persona_review""#))
        .collect();
    assert!(!reviews.is_empty());
    for b in &reviews {
        assert!(
            b.contains("cut to fit the model's context"),
            "a reviewer got the whole diff"
        );
        // 80 % of 6000 tokens at ~4 bytes a token: a request far above it would overflow.
        assert!(
            b.len() < 6000 * 4,
            "a reviewer's request of {} bytes",
            b.len()
        );
    }
}
