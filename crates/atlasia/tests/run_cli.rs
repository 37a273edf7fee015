//! `atlasia run` as a user meets it, from a scratch directory with no settings at all: the
//! offline simulator banner, the bundled examples to DONE (exit 0) and to an escalation (exit
//! 3, the escalation printed), a `confirm` bolt stopping at the gate (exit 3), and bad input
//! refused with exit 2 and one line. The example folders are never modified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use std::path::Path;

fn example(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(rel)
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Runs `atlasia run` in a fresh directory without any LLM settings.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let out = cli(dir.path(), &all, &[("LLM_ENDPOINT", ""), ("NO_COLOR", "1")]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map_or("", str::trim)
}

#[test]
fn a_bundled_example_runs_to_done_offline() {
    let project = example("py-inventory");
    let before = snapshot(Path::new(&project));
    let (code, out, err) = run(&[
        "--repo",
        &project,
        "--issue",
        &example("issues/py-inventory-1.md"),
        "--issue-number",
        "12",
    ]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("built-in simulator"), "no banner: {err}");
    // The simulator is free, and priced so: no "unpriced model" warning in the demo.
    assert!(!err.contains("has no price"), "{err}");
    assert!(
        err.contains("loop-back REVIEW"),
        "the demo loops back once: {err}"
    );
    assert_eq!(field(&out, "status"), "DONE", "{out}");
    assert!(field(&out, "branch").starts_with("ai/issue-12"), "{out}");
    assert!(field(&out, "PR").starts_with("[AI] "), "{out}");
    assert!(field(&out, "tests").starts_with("passed"), "{out}");
    // The evidence exactly: the command, its result and duration, and where it came from.
    assert!(
        out.contains("evidence: `python3 -m unittest -q` passed (exit 0) in ")
            && out.contains("[atlasia_toml: "),
        "{out}"
    );
    assert!(
        out.contains("inventory/core.py"),
        "diff stat missing: {out}"
    );
    assert!(field(&out, "cost").contains("LLM calls"), "{out}");
    assert_eq!(
        snapshot(Path::new(&project)),
        before,
        "the example was modified"
    );
}

#[test]
fn an_escalating_example_exits_3_and_prints_the_escalation() {
    let (code, out, err) = run(&[
        "--repo",
        &example("py-inventory"),
        "--issue",
        &example("issues/py-inventory-escalate.md"),
    ]);
    assert_eq!(code, Some(3), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(field(&out, "status"), "ESCALATED");
    assert!(field(&out, "tests").starts_with("FAILED"), "{out}");
    assert!(out.contains("ESCALATED: "), "{out}");
    assert!(
        out.contains("option proceed") && out.contains("option abort"),
        "{out}"
    );
    assert!(out.contains("escalation-decision"), "{out}");
}

#[test]
fn confirm_stops_at_the_gate_with_exit_3() {
    let (code, out, err) = run(&[
        "--repo",
        &example("py-inventory"),
        "--issue",
        &example("issues/py-inventory-1.md"),
        "--autonomy",
        "confirm",
    ]);
    assert_eq!(code, Some(3), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(field(&out, "status"), "WAITING_GATE", "{out}");
    assert!(out.contains("architecture_approval/respond"), "{out}");
}

#[test]
fn bad_input_is_refused_with_exit_2_and_one_line() {
    let issue = example("issues/py-inventory-1.md");
    let repo = example("py-inventory");
    let cases: [(&[&str], &str); 4] = [
        (&["--repo", "/no/such/dir", "--issue", &issue], "--repo"),
        (
            &["--repo", &repo, "--issue", "/no/such/issue.md"],
            "--issue",
        ),
        (
            &["--repo", &repo, "--issue", &issue, "--priority", "11"],
            "priority",
        ),
        (&["--repo", &repo], "--issue"),
    ];
    for (args, mention) in cases {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}\nstdout:\n{out}\nstderr:\n{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.iter().any(|l| l.contains(mention)), "{args:?}: {err}");
        assert!(lines.len() <= 4, "{args:?}: too chatty: {err}");
    }
    // An empty issue file.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.md");
    std::fs::write(&empty, "\n\n").unwrap();
    let (code, _, err) = run(&["--repo", &repo, "--issue", empty.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("empty"), "{err}");
}

/// An LLM outage while a step runs: `atlasia run` says it is waiting, why and for how long,
/// then finishes the bolt once the provider answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_passing_llm_outage_is_shown_as_a_wait() {
    // Three answers fail (one call's worth of the gateway's own 3 attempts) before it
    // recovers; the breaker stays out of the way.
    let sim = Sim::start(&["--fail-first", "3", "--fail-status", "503"]).await;
    let project = example("py-inventory");
    let issue = example("issues/py-inventory-1.md");
    let base = sim.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        cli(
            dir.path(),
            &["run", "--repo", &project, "--issue", &issue],
            &[
                ("LLM_ENDPOINT", base.as_str()),
                ("LLM_MODEL", "sim-model"),
                ("LLM_API_KEY", "sk-test-key"),
                ("ATLASIA_LLM__SIMULATOR", "true"),
                ("ATLASIA_LLM__RETRY__BASE_MS", "10"),
                ("ATLASIA_LLM__BREAKER__MIN_CALLS", "100"),
                ("NO_COLOR", "1"),
            ],
        )
    })
    .await
    .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        err.contains("waiting for the LLM: ") && err.contains(", retry in "),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.contains("503"),
        "the reason names the provider's answer: {err}"
    );
    assert_eq!(
        field(&out, "status"),
        "DONE",
        "stdout:\n{out}\nstderr:\n{err}"
    );
}

/// An LLM endpoint nothing listens on: `atlasia run` says so in one line and exits 2 before
/// the first step, instead of waiting out the step's patience.
#[test]
fn an_unreachable_llm_is_refused_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = cli(
        dir.path(),
        &[
            "run",
            "--repo",
            &example("py-inventory"),
            "--issue",
            &example("issues/py-inventory-1.md"),
        ],
        &[
            ("LLM_ENDPOINT", "http://127.0.0.1:9/v1"),
            ("LLM_MODEL", "house-model"),
            ("LLM_API_KEY", "sk-test-key"),
            ("NO_COLOR", "1"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("LLM endpoint http://127.0.0.1:9/v1")
            && err.contains("refused the connection"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
