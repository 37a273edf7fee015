//! Whole bolts: the real `atlasia serve` with workers, the real `atlasia sim-llm` over HTTP
//! (its scripts drive the developer's tool calls, the reviewers' verdicts and the judges'
//! scores), real git repositories and real test subprocesses. Happy path to one pull request on
//! a branch whose tests pass; review loop-back; tester fix loop; escalation then PROCEED, and
//! ABORT; the confirm gate approved and rejected; two servers on one database never run the
//! same bolt; `kill -9` during DEVELOPER then restart finishes without paying twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(180);

/// A server with workers pointed at `sim`, plus extra settings.
async fn server(db: TestDb, sim: &Sim, extra: &[(&str, &str)]) -> TestServer {
    bolt_server(db, sim, extra).await
}

/// A user's git repository on branch `trunk` with a bug, its tests, and an uncommitted file.
fn user_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_calc_project(p);
    git(p, &["init", "-q", "-b", "trunk"]);
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "initial"]);
    std::fs::write(p.join("notes.txt"), "work in progress, not committed\n").unwrap();
    dir
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .canonicalize()
        .unwrap()
}

/// Title and body of a bundled example issue.
fn example_issue(name: &str) -> (String, String) {
    let text = std::fs::read_to_string(example(&format!("issues/{name}"))).unwrap();
    let (title, rest) = text.split_once('\n').unwrap();
    (
        title.trim_start_matches('#').trim().to_owned(),
        rest.trim().to_owned(),
    )
}

async fn decide(srv: &TestServer, id: &str, path: &str, body: Value) {
    let (s, v) = srv
        .post(&format!("/api/runs/{id}/{path}"), ADMIN_TOKEN, &body)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

on_both! {
    happy_path_opens_one_pull_request => happy_path_opens_one_pull_request;
    review_loop_back_then_done => review_loop_back_then_done;
    tester_fix_loop_then_done => tester_fix_loop_then_done;
    escalation_proceed_and_abort => escalation_proceed_and_abort;
    confirm_gate_approve_and_reject => confirm_gate_approve_and_reject;
    kill_during_developer_resumes_without_paying_twice => kill_during_developer_resumes_without_paying_twice;
    spent_budget_escalates => spent_budget_escalates;
    a_burst_of_429s_slows_the_bolt_but_loses_nothing => a_burst_of_429s_slows_the_bolt_but_loses_nothing;
}

/// The provider refuses the first calls with 429 (more than the gateway's own retries absorb):
/// the step waits and tries again instead of failing the bolt.
async fn a_burst_of_429s_slows_the_bolt_but_loses_nothing(db: Db) {
    let sim = Sim::start(&[
        "--fail-first",
        "4",
        "--fail-status",
        "429",
        "--retry-after-secs",
        "0",
    ])
    .await;
    let extra = [
        ("ATLASIA_LLM__RETRY__ATTEMPTS", "2"),
        ("ATLASIA_LLM__RETRY__BASE_MS", "10"),
    ];
    let srv = server(TestDb::new(db).await, &sim, &extra).await;
    let repo = user_repo();
    let started = std::time::Instant::now();
    let run = srv
        .create_run(
            json!({"repo": repo.path().display().to_string(), "title": "add() subtracts",
                           "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}),
        )
        .await;
    let id = run["id"].as_str().unwrap();
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    let took = started.elapsed();
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    let evs = events(&srv, id).await;
    let waits: Vec<&Value> = kinds(&evs, "llm_call_failed")
        .into_iter()
        .filter(|e| e["data"]["retry_in_ms"].is_number())
        .collect();
    assert!(!waits.is_empty(), "the 429s never reached the step");
    let limited = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM llm_calls WHERE run_id = '{id}' AND outcome = 'RATE_LIMIT'"
    ));
    assert!(limited.trim().parse::<i64>().unwrap() >= 3, "{limited}");
    eprintln!(
        "chaos: 429 storm ({db:?}): lost nothing (DONE after {} rate-limited attempts); bolt took {took:?}",
        limited.trim()
    );
}

/// A bolt whose cap cannot pay for the next call stops for a human, resumable at that step.
async fn spent_budget_escalates(db: Db) {
    let sim = Sim::start(&[]).await;
    let tdb = TestDb::new(db).await;
    // The server reads ./atlasia.toml from its working directory (the test's scratch dir).
    std::fs::write(
        tdb.dir.path().join("atlasia.toml"),
        "[llm.prices.\"sim-model\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 1000.0\n",
    )
    .unwrap();
    let srv = server(tdb, &sim, &[]).await;
    let repo = user_repo();
    let run = srv
        .create_run(
            json!({"repo": repo.path().display().to_string(), "title": "add() subtracts",
                           "budget_usd": 0.05}),
        )
        .await;
    let id = run["id"].as_str().unwrap();
    let esc = wait_status(&srv, id, &["ESCALATED", "DONE", "FAILED"]).await;
    assert_eq!(esc["status"], "ESCALATED", "{esc}\n{}", srv.log());
    assert_eq!(
        esc["current_step"], "PM",
        "PROCEED must retry the step that ran out"
    );
    let e = &artifacts(&srv, id, "escalation").await[0]["payload"];
    assert!(e["blocker"].as_str().unwrap().contains("budget"), "{e}");
    let evs = events(&srv, id).await;
    assert_eq!(kinds(&evs, "escalated")[0]["data"]["resume_step"], "PM");
}

async fn happy_path_opens_one_pull_request(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(TestDb::new(db).await, &sim, &[]).await;
    let repo = user_repo();
    let head_before = git(repo.path(), &["rev-parse", "HEAD"]);
    let run = srv
        .create_run(json!({
            "repo": repo.path().display().to_string(), "issue_number": 7,
            "title": "add() subtracts",
            "body": body(json!({"developer": [edit_to(FIXED_NEW)]})),
        }))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    assert_eq!(done["current_step"], Value::Null);
    assert!(done["tokens_in"].as_i64().unwrap() > 0, "{done}");

    // Exactly one pull request, with the fix in its diff.
    let count = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM pull_requests WHERE run_id = '{id}'"
    ));
    assert_eq!(count.trim(), "1");
    let (s, pr) = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await;
    assert_eq!(s, StatusCode::OK, "{pr}");
    assert_eq!(pr["head"], "ai/issue-7");
    assert_eq!(pr["base"], "trunk");
    assert!(pr["title"].as_str().unwrap().starts_with("[AI] "), "{pr}");
    assert!(pr["body"].as_str().unwrap().contains("Closes #7"), "{pr}");
    let diff = pr["diff"].as_str().unwrap();
    assert!(diff.contains("+    return a + b"), "{diff}");
    assert!(diff.contains("CHANGELOG.md"), "{diff}");

    // The user's checkout is untouched; the branch holds the fix and its tests pass.
    assert_eq!(git(repo.path(), &["rev-parse", "HEAD"]), head_before);
    assert_eq!(git(repo.path(), &["branch", "--show-current"]), "trunk");
    assert_eq!(
        std::fs::read_to_string(repo.path().join("calc.py")).unwrap(),
        BUGGY
    );
    assert!(repo.path().join("notes.txt").exists());
    let log = git(
        repo.path(),
        &["log", "--format=%an|%s", "trunk..ai/issue-7"],
    );
    assert!(log.lines().all(|l| l.starts_with("Atlasia Bot|")), "{log}");
    assert!(log.contains(": add() subtracts (iteration 1)"), "{log}");
    assert!(branch_tests_pass(repo.path(), "ai/issue-7"));
    assert!(
        !branch_tests_pass(repo.path(), "trunk"),
        "the test must be able to fail"
    );

    // What a watcher sees.
    let evs = events(&srv, id).await;
    for kind in [
        "llm_call_started",
        "llm_call_completed",
        "tool_called",
        "committed",
        "pull_request_updated",
    ] {
        assert!(!kinds(&evs, kind).is_empty(), "no {kind} event");
    }
    assert!(
        kinds(&evs, "tool_called")
            .iter()
            .any(|e| e["data"]["tool"] == "edit_file" && e["data"]["target"] == "calc.py")
    );
    let last = evs.last().unwrap();
    assert_eq!(last["data"]["to"], "DONE", "{last}");
    // Every step ran once, in order.
    let started: Vec<&str> = kinds(&evs, "step_started")
        .iter()
        .map(|e| e["data"]["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        started,
        [
            "PM",
            "QUALIFIER",
            "ARCHITECT",
            "DEVELOPER",
            "REVIEW",
            "TESTER",
            "JUDGE",
            "WRITER"
        ]
    );
    let tests = artifacts(&srv, id, "test_report").await;
    assert_eq!(tests.len(), 1);
    assert_eq!(tests[0]["payload"]["passed"], true, "{tests:?}");
    assert_eq!(artifacts(&srv, id, "persona_review").await.len(), 4);
    assert_eq!(artifacts(&srv, id, "judge_verdict").await.len(), 3);
}

async fn review_loop_back_then_done(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(TestDb::new(db).await, &sim, &[]).await;
    let (title, body) = example_issue("py-inventory-1.md");
    let repo = example("py-inventory");
    let before = snapshot(&repo);
    let run = srv
        .create_run(json!({"repo": repo.display().to_string(), "title": title, "body": body}))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    assert_eq!(done["review_loops"], 1, "{done}");
    let evs = events(&srv, id).await;
    let loops = kinds(&evs, "loop_back");
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["data"]["edge"], "review_to_developer");
    let reviews = artifacts(&srv, id, "review").await;
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[0]["payload"]["verdict"], "changes_required");
    assert_eq!(reviews[1]["payload"]["verdict"], "approved");
    assert_eq!(artifacts(&srv, id, "implementation_report").await.len(), 2);
    // The example folder itself is never modified (it was imported).
    assert_eq!(snapshot(&repo), before);
}

async fn tester_fix_loop_then_done(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(TestDb::new(db).await, &sim, &[]).await;
    let repo = user_repo();
    let script = json!({"developer": [edit_to(WRONG_NEW), re_edit(WRONG_NEW, FIXED_NEW)]});
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts", "body": body(script)}))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    let why = artifacts(&srv, id, "escalation").await;
    assert_eq!(done["status"], "DONE", "{why:?}\n{done}\n{}", srv.log());
    assert_eq!(done["fix_loops"], 1, "{done}");
    let tests = artifacts(&srv, id, "test_report").await;
    assert_eq!(tests.len(), 2);
    assert_eq!(tests[0]["payload"]["passed"], false);
    let tail = tests[0]["payload"]["commands"][0]["output_tail"]
        .as_str()
        .unwrap();
    assert!(tail.contains("FAIL") || tail.contains("Error"), "{tail}");
    assert_eq!(tests[1]["payload"]["passed"], true);
    let evs = events(&srv, id).await;
    let loops = kinds(&evs, "loop_back");
    assert_eq!(loops.len(), 1);
    assert_eq!(loops[0]["data"]["edge"], "tester_to_developer");
}

async fn escalation_proceed_and_abort(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(
        TestDb::new(db).await,
        &sim,
        &[("ATLASIA_ENGINE__FIX_LOOPS", "1")],
    )
    .await;

    // Wrong twice (the fix loop allows one loop-back), then right after the human's PROCEED.
    let repo = user_repo();
    let script = json!({"developer": [
        edit_to(WRONG_NEW),
        re_edit(WRONG_NEW, "    return (a * b)\n"),
        re_edit("    return (a * b)\n", FIXED_NEW),
    ]});
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts", "body": body(script)}))
        .await;
    let id = run["id"].as_str().unwrap();
    let esc = wait_status(&srv, id, &["ESCALATED", "DONE", "FAILED"]).await;
    assert_eq!(esc["status"], "ESCALATED", "{esc}\n{}", srv.log());
    assert_eq!(esc["current_step"], "DEVELOPER");
    let escalation = artifacts(&srv, id, "escalation").await;
    assert_eq!(escalation.len(), 1);
    let e = &escalation[0]["payload"];
    assert!(e["blocker"].as_str().unwrap().contains("failed"), "{e}");
    assert!(e["options"].as_array().unwrap().len() >= 2, "{e}");
    // A wrong decision for the state is refused.
    let (s, _) = srv
        .post(
            &format!("/api/runs/{id}/gates/architecture_approval/respond"),
            ADMIN_TOKEN,
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    decide(
        &srv,
        id,
        "escalation-decision",
        json!({"decision": "PROCEED", "guidance": "Use + in add()."}),
    )
    .await;
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    let evs = events(&srv, id).await;
    let pm_runs = kinds(&evs, "step_started")
        .iter()
        .filter(|e| e["data"]["step"] == "PM")
        .count();
    assert_eq!(pm_runs, 1, "PROCEED resumed from the start");
    assert_eq!(artifacts(&srv, id, "implementation_report").await.len(), 3);
    let journal = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM llm_calls WHERE run_id = '{id}' AND agent = 'developer' \
         AND outcome = 'ok'"
    ));
    assert!(journal.trim().parse::<i64>().unwrap() > 0);

    // The bundled example that never gets fixed: escalate, then ABORT fails the run.
    let (title, body) = example_issue("py-inventory-escalate.md");
    let run = srv
        .create_run(
            json!({"repo": example("py-inventory").display().to_string(),
                           "title": title, "body": body}),
        )
        .await;
    let id = run["id"].as_str().unwrap();
    let esc = wait_status(&srv, id, &["ESCALATED", "DONE", "FAILED"]).await;
    assert_eq!(esc["status"], "ESCALATED", "{esc}\n{}", srv.log());
    decide(
        &srv,
        id,
        "escalation-decision",
        json!({"decision": "ABORT", "guidance": "needs a human"}),
    )
    .await;
    let (_, aborted) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
    assert_eq!(aborted["status"], "FAILED", "{aborted}");
    let count = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM pull_requests WHERE run_id = '{id}'"
    ));
    assert_eq!(count.trim(), "0");
}

async fn confirm_gate_approve_and_reject(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(TestDb::new(db).await, &sim, &[]).await;
    let repo = user_repo();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let run = srv
            .create_run(json!({"repo": repo.path().display().to_string(),
                               "title": "add() subtracts", "autonomy": "confirm",
                               "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}))
            .await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let parked = wait_status(&srv, id, &["WAITING_GATE", "DONE", "FAILED"]).await;
        assert_eq!(parked["status"], "WAITING_GATE", "{parked}");
        assert_eq!(parked["current_step"], "DEVELOPER");
        let evs = events(&srv, id).await;
        assert_eq!(kinds(&evs, "gate_opened").len(), 1);
    }
    decide(
        &srv,
        &ids[0],
        "gates/architecture_approval/respond",
        json!({"decision": "approve", "comment": "fine"}),
    )
    .await;
    decide(
        &srv,
        &ids[1],
        "gates/architecture_approval/respond",
        json!({"decision": "reject", "comment": "wrong approach"}),
    )
    .await;
    let approved = wait_status(&srv, &ids[0], &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(approved["status"], "DONE", "{approved}\n{}", srv.log());
    let (_, rejected) = srv.get(&format!("/api/runs/{}", ids[1]), ADMIN_TOKEN).await;
    assert_eq!(rejected["status"], "FAILED", "{rejected}");
    let evs = events(&srv, &ids[1]).await;
    assert!(
        kinds(&evs, "step_started")
            .iter()
            .all(|e| e["data"]["step"] != "DEVELOPER")
    );

    // `observe`: the architecture gate, then a second gate before the pull request.
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts", "autonomy": "observe",
                           "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}))
        .await;
    let id = run["id"].as_str().unwrap();
    wait_status(&srv, id, &["WAITING_GATE"]).await;
    // Answering a gate the run does not wait at is refused.
    let (s, v) = srv
        .post(
            &format!("/api/runs/{id}/gates/publish_approval/respond"),
            ADMIN_TOKEN,
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("architecture_approval"),
        "{v}"
    );
    decide(
        &srv,
        id,
        "gates/architecture_approval/respond",
        json!({"decision": "approve"}),
    )
    .await;
    let parked = eventually(BOLT_LIMIT, || async {
        let (_, r) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        (r["status"] == "WAITING_GATE" && r["current_step"] == "WRITER").then_some(r)
    })
    .await;
    assert_eq!(parked["current_step"], "WRITER");
    let (s, _) = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "nothing is published before the gate"
    );
    let gates: Vec<String> = kinds(&events(&srv, id).await, "gate_opened")
        .iter()
        .map(|e| e["data"]["gate"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(gates, ["architecture_approval", "publish_approval"]);
    decide(
        &srv,
        id,
        "gates/publish_approval/respond",
        json!({"decision": "approve"}),
    )
    .await;
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}");
}

async fn kill_during_developer_resumes_without_paying_twice(db: Db) {
    // Slow answers, so the kill lands in the middle of the developer's tool loop.
    let sim = Sim::start(&["--latency-ms", "700"]).await;
    let extra = [("ATLASIA_ENGINE__LEASE_MS", "1500")];
    let mut srv = server(TestDb::new(db).await, &sim, &extra).await;
    let repo = user_repo();
    let script = json!({"developer": [[
        {"tool": "list_files", "args": {"path": "."}},
        {"tool": "read_file", "args": {"path": "calc.py"}},
        {"tool": "read_file", "args": {"path": "test_calc.py"}},
        {"tool": "edit_file", "args": {"path": "calc.py", "old_text": FIXED_OLD,
                                        "new_text": FIXED_NEW}},
        {"tool": "run_command", "args": {"command": "python3 -m unittest -q"}},
    ]]});
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts", "body": body(script)}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    eventually(LIMIT, || async {
        let evs = events(&srv, &id).await;
        let dev_calls = kinds(&evs, "llm_call_completed")
            .iter()
            .filter(|e| e["data"]["step"] == "DEVELOPER")
            .count();
        (dev_calls >= 3).then_some(())
    })
    .await;
    let pid = srv.child.id().unwrap();
    let killed = StdCommand::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    srv.child.wait().await.unwrap();
    let before: HashMap<String, i64> = agent_counts(&srv.db, &id);

    let TestServer { db, .. } = srv;
    let restarted = std::time::Instant::now();
    let srv = server(db, &sim, &extra).await;
    let done = wait_status(&srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    let recovery = restarted.elapsed();
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());
    assert!(branch_tests_pass(repo.path(), &pr_head(&srv, &id).await));

    // Completed steps did not run again; the developer's paid answers were replayed.
    let after = agent_counts(&srv.db, &id);
    for agent in ["pm", "qualifier", "architect"] {
        assert_eq!(after.get(agent), Some(&1), "{agent}: {after:?}");
    }
    let dups = srv.db.sql_cli(&format!(
        "SELECT request_key FROM llm_calls WHERE run_id = '{id}' AND outcome = 'ok' \
         GROUP BY request_key HAVING COUNT(*) > 1"
    ));
    assert!(dups.trim().is_empty(), "answers paid twice: {dups}");
    let evs = events(&srv, &id).await;
    let replayed = kinds(&evs, "llm_call_completed")
        .iter()
        .filter(|e| e["data"]["replayed"] == true)
        .count();
    assert!(
        replayed >= 1 && replayed <= before.get("developer").copied().unwrap_or(0) as usize,
        "replayed {replayed}, journaled before the kill {before:?}"
    );
    eprintln!(
        "chaos: kill -9 mid-bolt ({:?}): lost nothing (DONE, 0 answers paid twice, {replayed} replayed); restart to DONE in {recovery:?}",
        srv.db.kind
    );
}

async fn pr_head(srv: &TestServer, id: &str) -> String {
    let (s, pr) = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await;
    assert_eq!(s, StatusCode::OK, "{pr}");
    pr["head"].as_str().unwrap().to_owned()
}

/// Successful `llm_calls` rows per agent.
fn agent_counts(db: &TestDb, id: &str) -> HashMap<String, i64> {
    let out = db.sql_cli(&format!(
        "SELECT agent || ' ' || COUNT(*) FROM llm_calls WHERE run_id = '{id}' \
         AND outcome = 'ok' GROUP BY agent"
    ));
    out.lines()
        .filter_map(|l| {
            let (a, n) = l.split_once(' ')?;
            Some((a.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// Two servers on one PostgreSQL database: every bolt is claimed once and finishes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_never_run_the_same_bolt() {
    if skip_postgres() {
        return;
    }
    let sim = Sim::start(&[]).await;
    let first_db = TestDb::new(Db::Postgres).await;
    let second_db = first_db.same_database();
    let a = server(first_db, &sim, &[]).await;
    let b = server(second_db, &sim, &[]).await;
    let repo = user_repo();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let run = a
            .create_run(json!({"repo": repo.path().display().to_string(),
                               "title": "add() subtracts",
                               "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}))
            .await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let mut owners = std::collections::HashSet::new();
    for id in &ids {
        let done = wait_status(&a, id, &["DONE", "FAILED", "ESCALATED"]).await;
        assert_eq!(done["status"], "DONE", "{done}\n{}\n{}", a.log(), b.log());
        let evs = events(&a, id).await;
        let claims: Vec<&Value> = evs
            .iter()
            .filter(|e| e["data"]["reason"] == "claimed" || e["kind"] == "lease_claimed")
            .collect();
        assert_eq!(claims.len(), 1, "{id} claimed more than once: {claims:?}");
        owners.insert(claims[0]["data"]["owner"].as_str().unwrap().to_owned());
        let starts = kinds(&evs, "step_started").len();
        assert_eq!(starts, 8, "{id}: a step ran twice");
    }
    let procs: std::collections::HashSet<&str> = owners
        .iter()
        .map(|o| o.split('-').nth(1).unwrap())
        .collect();
    assert_eq!(
        procs.len(),
        2,
        "both servers should have worked: {owners:?}"
    );
}

/// A run enqueued through one process wakes an idle worker in another at once (PostgreSQL
/// NOTIFY), not at its next poll (here a minute away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_enqueued_elsewhere_wakes_idle_workers() {
    if skip_postgres() {
        return;
    }
    let sim = Sim::start(&[]).await;
    let api_db = TestDb::new(Db::Postgres).await;
    let worker_db = api_db.same_database();
    let api = TestServer::start_with(api_db, &[]).await;
    let worker = server(
        worker_db,
        &sim,
        &[
            ("ATLASIA_ENGINE__WORKERS", "1"),
            ("ATLASIA_ENGINE__POLL_MS", "60000"),
        ],
    )
    .await;
    let repo = user_repo();
    let run = api
        .create_run(
            json!({"repo": repo.path().display().to_string(), "title": "add() subtracts",
                           "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}),
        )
        .await;
    let id = run["id"].as_str().unwrap();
    let claimed = eventually(Duration::from_secs(15), || async {
        let (_, r) = api.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        (r["status"] != "PENDING").then_some(r)
    })
    .await;
    assert_ne!(claimed["status"], "PENDING", "{}", worker.log());
}
