//! The outcome invariants, through the real binary (`serve` with workers on both backends, and
//! `atlasia run` with the built-in simulator): no change → escalated `no_change` after one
//! re-ask; no verify configuration → the repository's own test command is detected and run;
//! a breaking change without verify configuration → not DONE (the judges' evidence rule vetoes
//! without asking any judge); nothing to run → `untested` unless `allow_untested = true`, and
//! then the PR says "untested"; an unscripted issue for `atlasia run` → exit 3 `no_change`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use serde_json::{Value, json};
use std::path::Path;

/// A server with workers pointed at `sim`.
async fn server(db: TestDb, sim: &Sim, extra: &[(&str, &str)]) -> TestServer {
    bolt_server(db, sim, extra).await
}

/// A committed git repository on `trunk` holding `files` (no `.atlasia.toml` unless given).
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "trunk"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "initial"]);
    dir
}

/// The calc project with its bug and its failing unittest, and no verify configuration.
fn calc_without_config() -> tempfile::TempDir {
    repo(&[
        ("calc.py", BUGGY),
        ("test_calc.py", TEST_CALC),
        (".gitignore", "__pycache__/\n"),
    ])
}

async fn start(db: Db, extra: &[(&str, &str)]) -> (Sim, TestServer) {
    let sim = Sim::start(&[]).await;
    let srv = server(TestDb::new(db).await, &sim, extra).await;
    (sim, srv)
}

async fn run_to_end(srv: &TestServer, repo: &Path, title: &str, body: String) -> (String, Value) {
    let run = srv
        .create_run(json!({"repo": repo.display().to_string(), "title": title, "body": body}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let end = wait_status(srv, &id, &["DONE", "FAILED", "ESCALATED"]).await;
    (id, end)
}

/// LLM calls the run made as `agent`.
fn calls_by(srv: &TestServer, id: &str, agent: &str) -> i64 {
    srv.db
        .sql_cli(&format!(
            "SELECT COUNT(*) FROM llm_calls WHERE run_id = '{id}' AND agent = '{agent}'"
        ))
        .trim()
        .parse()
        .unwrap()
}

on_both! {
    no_change_is_asked_again_then_escalates => no_change_is_asked_again_then_escalates;
    no_verify_config_runs_the_detected_command => no_verify_config_runs_the_detected_command;
    a_breaking_change_without_verify_config_is_vetoed_by_rule => a_breaking_change_without_verify_config_is_vetoed_by_rule;
    nothing_to_run_is_untested_unless_allowed => nothing_to_run_is_untested_unless_allowed;
}

/// A developer that only touches the Writer's files (CHANGELOG) changed nothing: it is asked
/// once more, told so, then the bolt escalates `no_change`; no review, test or PR happens.
async fn no_change_is_asked_again_then_escalates(db: Db) {
    let (_sim, srv) = start(db, &[]).await;
    let repo = calc_without_config();
    let only_changelog = json!([[{"tool": "write_file",
        "args": {"path": "CHANGELOG.md", "content": "# Changelog\n\n- fixed add\n"}}]]);
    let (id, end) = run_to_end(
        &srv,
        repo.path(),
        "add() subtracts",
        body(json!({"developer": only_changelog})),
    )
    .await;
    assert_eq!(end["status"], "ESCALATED", "{end}\n{}", srv.log());
    assert_eq!(end["current_step"], "DEVELOPER", "{end}");
    let esc = &artifacts(&srv, &id, "escalation").await[0]["payload"];
    assert_eq!(esc["reason"], "no_change", "{esc}");
    assert!(
        esc["blocker"].as_str().unwrap().contains("changed nothing"),
        "{esc}"
    );
    assert!(esc["options"].as_array().unwrap().len() >= 2, "{esc}");
    let evs = events(&srv, &id).await;
    let reasks: Vec<&Value> = kinds(&evs, "tool_called")
        .into_iter()
        .filter(|e| e["data"]["tool"] == "no_change_reask")
        .collect();
    assert_eq!(reasks.len(), 1, "asked again exactly once");
    // Nothing after DEVELOPER ran and no pull request exists.
    for kind in ["review", "test_report", "judge_decision", "docs_update"] {
        assert!(artifacts(&srv, &id, kind).await.is_empty(), "{kind} exists");
    }
    let prs = srv.db.sql_cli(&format!(
        "SELECT COUNT(*) FROM pull_requests WHERE run_id = '{id}'"
    ));
    assert_eq!(prs.trim(), "0");
}

/// No `.atlasia.toml` and no work plan commands: the tester detects the repository's Python
/// tests, runs them in the sandbox, and records the command and why it was chosen; the PR body
/// states the evidence.
async fn no_verify_config_runs_the_detected_command(db: Db) {
    let (_sim, srv) = start(db, &[]).await;
    let repo = calc_without_config();
    let (id, end) = run_to_end(
        &srv,
        repo.path(),
        "add() subtracts",
        body(json!({"developer": [edit_to(FIXED_NEW)]})),
    )
    .await;
    assert_eq!(end["status"], "DONE", "{end}\n{}", srv.log());
    let report = &artifacts(&srv, &id, "test_report").await[0]["payload"];
    assert_eq!(report["status"], "passed", "{report}");
    let cmd = &report["commands"][0];
    assert_eq!(cmd["source"], "detected", "{report}");
    let command = cmd["command"].as_str().unwrap();
    assert!(
        command == "python3 -m unittest" || command == "python3 -m pytest -q",
        "{report}"
    );
    assert!(
        cmd["why"].as_str().unwrap().contains("Python files"),
        "{report}"
    );
    assert_eq!(cmd["exit_code"], 0, "{report}");
    assert!(
        report["selection"]
            .as_str()
            .unwrap()
            .contains("was detected"),
        "{report}"
    );
    // The detected command really ran in the sandbox (a verify tool event names it).
    let evs = events(&srv, &id).await;
    assert!(
        kinds(&evs, "tool_called")
            .iter()
            .any(|e| e["data"]["tool"] == "verify" && e["data"]["target"] == command),
        "no verify event for {command}"
    );
    let (_, pr) = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await;
    let pr_body = pr["body"].as_str().unwrap_or_default();
    assert!(pr_body.contains("**Tests:** passed"), "{pr}");
    assert!(
        pr_body.contains(&format!("`{command}` passed (exit 0) in ")),
        "{pr}"
    );
}

/// A correct repository without verify configuration, and a change that breaks its tests: the
/// detected tests fail, the fix loop (0 here) is used up, and the judges' evidence rule vetoes
/// before any judge is asked — the bolt is not DONE.
async fn a_breaking_change_without_verify_config_is_vetoed_by_rule(db: Db) {
    let (_sim, srv) = start(db, &[("ATLASIA_ENGINE__FIX_LOOPS", "0")]).await;
    let repo = repo(&[
        ("calc.py", "def add(a, b):\n    return a + b\n"),
        ("test_calc.py", TEST_CALC),
        (".gitignore", "__pycache__/\n"),
    ]);
    let breaking = json!([[{"tool": "edit_file", "args": {"path": "calc.py",
        "old_text": FIXED_NEW, "new_text": WRONG_NEW}}]]);
    let (id, end) = run_to_end(
        &srv,
        repo.path(),
        "Make add() faster",
        body(json!({"developer": breaking})),
    )
    .await;
    assert_eq!(end["status"], "ESCALATED", "{end}\n{}", srv.log());
    let report = &artifacts(&srv, &id, "test_report").await[0]["payload"];
    assert_eq!(report["status"], "failed", "{report}");
    assert_eq!(report["commands"][0]["source"], "detected", "{report}");
    assert_ne!(report["commands"][0]["exit_code"], 0, "{report}");
    let decision = &artifacts(&srv, &id, "judge_decision").await[0]["payload"];
    assert_eq!(
        (&decision["outcome"], &decision["rule"], &decision["votes"]),
        (&json!("veto"), &json!("tests_failed"), &json!(0)),
        "{decision}"
    );
    assert!(
        artifacts(&srv, &id, "judge_verdict").await.is_empty(),
        "a judge voted"
    );
    assert_eq!(calls_by(&srv, &id, "judge"), 0, "a judge LLM call was made");
    let esc = &artifacts(&srv, &id, "escalation").await[0]["payload"];
    assert_eq!(esc["reason"], "tests_failed", "{esc}");
    assert!(esc["blocker"].as_str().unwrap().contains("failed"), "{esc}");
}

/// A repository with nothing to test: the report is `not_run` and the bolt escalates
/// `untested` (no judge asked); with `allow_untested = true` it goes on and the PR body says
/// "untested".
async fn nothing_to_run_is_untested_unless_allowed(db: Db) {
    let (_sim, srv) = start(db, &[]).await;
    let edit = json!([[{"tool": "edit_file", "args": {"path": "notes.txt",
        "old_text": "teh\n", "new_text": "the\n"}}]]);
    let plain = repo(&[("notes.txt", "teh\n")]);
    let (id, end) = run_to_end(
        &srv,
        plain.path(),
        "Fix the typo in notes",
        body(json!({"developer": edit.clone()})),
    )
    .await;
    assert_eq!(end["status"], "ESCALATED", "{end}\n{}", srv.log());
    let report = &artifacts(&srv, &id, "test_report").await[0]["payload"];
    assert_eq!(
        (&report["status"], &report["passed"]),
        (&json!("not_run"), &json!(false)),
        "{report}"
    );
    assert_eq!(report["commands"], json!([]), "{report}");
    let esc = &artifacts(&srv, &id, "escalation").await[0]["payload"];
    assert_eq!(esc["reason"], "untested", "{esc}");
    assert_eq!(calls_by(&srv, &id, "judge"), 0);

    // A Python module without a single test: the detected runner runs and finds nothing,
    // which is no evidence either.
    let no_tests = repo(&[("greet.py", "def greet():\n    return 'hi'\n")]);
    let rename = json!([[{"tool": "edit_file", "args": {"path": "greet.py",
        "old_text": "'hi'", "new_text": "'hello'"}}]]);
    let (id, end) = run_to_end(
        &srv,
        no_tests.path(),
        "Say hello",
        body(json!({"developer": rename})),
    )
    .await;
    assert_eq!(end["status"], "ESCALATED", "{end}\n{}", srv.log());
    let report = &artifacts(&srv, &id, "test_report").await[0]["payload"];
    assert_eq!(report["status"], "not_run", "{report}");
    assert_eq!(report["commands"][0]["source"], "detected", "{report}");
    assert!(
        report["summary"]
            .as_str()
            .unwrap()
            .contains("found no tests"),
        "{report}"
    );
    let esc = &artifacts(&srv, &id, "escalation").await[0]["payload"];
    assert_eq!(esc["reason"], "untested", "{esc}");

    let allowed = repo(&[
        ("notes.txt", "teh\n"),
        (".atlasia.toml", "allow_untested = true\n"),
    ]);
    let (id, end) = run_to_end(
        &srv,
        allowed.path(),
        "Fix the typo in notes",
        body(json!({"developer": edit})),
    )
    .await;
    assert_eq!(end["status"], "DONE", "{end}\n{}", srv.log());
    assert_eq!(calls_by(&srv, &id, "judge"), 3, "the judges voted");
    let (_, pr) = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await;
    let pr_body = pr["body"].as_str().unwrap_or_default();
    assert!(pr_body.contains("**Tests:** untested"), "{pr}");
}

/// The new user's first try: `atlasia run` on a small Python repository with a failing test,
/// an issue the simulator has no script for, no `.atlasia.toml`: the simulator changes
/// nothing and says so, and the bolt escalates `no_change` with exit 3 — never DONE.
#[test]
fn an_unscripted_issue_exits_3_no_change() {
    let project = calc_without_config();
    let dir = tempfile::tempdir().unwrap();
    let issue = dir.path().join("issue.md");
    std::fs::write(&issue, "# add() subtracts\n\n`add(2, 3)` returns -1.\n").unwrap();
    let out = cli(
        dir.path(),
        &[
            "run",
            "--repo",
            project.path().to_str().unwrap(),
            "--issue",
            issue.to_str().unwrap(),
        ],
        &[("LLM_ENDPOINT", ""), ("NO_COLOR", "1")],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("status:   ESCALATED"), "{stdout}");
    assert!(stdout.contains("reason:   no_change"), "{stdout}");
    assert!(stdout.contains("nothing was modified"), "{stdout}");
    assert!(stdout.contains("option proceed"), "{stdout}");
}
