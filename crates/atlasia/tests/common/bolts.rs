//! Helpers for tests that run whole bolts: a tiny Python project with a bug, simulator scripts
//! for the developer, reading a run's events and artifacts, and checking a branch's tests.

use super::{ADMIN_TOKEN, Sim, TestDb, TestServer, eventually};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A server with two bolt workers pointed at `sim` (model `sim-model`); `extra` comes last, so
/// it overrides any of these (another key, one worker, secrets of the test's own).
pub async fn bolt_server(db: TestDb, sim: &Sim, extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![
        ("LLM_ENDPOINT", sim.base.as_str()),
        ("ATLASIA_LLM__SIMULATOR", "true"),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("ATLASIA_ENGINE__WORKERS", "2"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
    ];
    env.extend_from_slice(extra);
    TestServer::start_with(db, &env).await
}

/// How long a whole bolt may take in a test.
pub const BOLT_LIMIT: Duration = Duration::from_secs(180);

/// The bug: `calc.py` as committed.
pub const BUGGY: &str = "def add(a, b):\n    return a - b\n";
/// The buggy line.
pub const FIXED_OLD: &str = "    return a - b\n";
/// The fix.
pub const FIXED_NEW: &str = "    return a + b\n";
/// A wrong fix (the test still fails).
pub const WRONG_NEW: &str = "    return a * b\n";
/// `test_calc.py`.
pub const TEST_CALC: &str = "import unittest\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n    \
    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\nif __name__ == \"__main__\":\n    \
    unittest.main()\n";

/// `git` in `dir` as a developer, ignoring the machine's git configuration.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.invalid",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Writes the calc project (bug, test, `.atlasia.toml`, `.gitignore`) into `dir`.
pub fn write_calc_project(dir: &Path) {
    std::fs::write(dir.join("calc.py"), BUGGY).unwrap();
    std::fs::write(dir.join("test_calc.py"), TEST_CALC).unwrap();
    std::fs::write(
        dir.join(".atlasia.toml"),
        "verify = [\"python3 -m unittest -q\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join(".gitignore"), "__pycache__/\n").unwrap();
}

/// A developer iteration that edits `calc.py`'s return line to `new`, then runs the tests.
pub fn edit_to(new: &str) -> Value {
    json!([
        {"tool": "read_file", "args": {"path": "calc.py"}},
        {"tool": "edit_file", "args": {"path": "calc.py", "old_text": FIXED_OLD, "new_text": new}},
        {"tool": "run_command", "args": {"command": "python3 -m unittest -q"}},
    ])
}

/// An iteration that changes the return line from `from` to `new`, then runs the tests.
pub fn re_edit(from: &str, new: &str) -> Value {
    json!([
        {"tool": "edit_file", "args": {"path": "calc.py", "old_text": from, "new_text": new}},
        {"tool": "run_command", "args": {"command": "python3 -m unittest -q"}},
    ])
}

/// An issue body carrying a simulator script.
pub fn body(script: Value) -> String {
    format!(
        "`add(2, 3)` returns -1.\n\n<!-- atlasia-sim\n{}\n-->\n",
        serde_json::to_string_pretty(&script).unwrap()
    )
}

/// Clones `branch` of `repo` into a scratch directory and runs its tests there.
pub fn branch_tests_pass(repo: &Path, branch: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("git")
        .args(["clone", "-q", "-b", branch])
        .arg(repo)
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Command::new("python3")
        .args(["-m", "unittest", "-q"])
        .current_dir(dir.path().join("c"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap()
        .status
        .success()
}

/// Every file under `dir` with its content, sorted.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Polls until the run has one of the `want` statuses; returns it.
pub async fn wait_status(srv: &TestServer, id: &str, want: &[&str]) -> Value {
    eventually(BOLT_LIMIT, || async {
        let (_, run) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        want.iter().any(|w| run["status"] == *w).then_some(run)
    })
    .await
}

/// The run's events (at most 1000).
pub async fn events(srv: &TestServer, id: &str) -> Vec<Value> {
    let (s, v) = srv
        .get(&format!("/api/runs/{id}/events?limit=1000"), ADMIN_TOKEN)
        .await;
    assert!(s.is_success(), "{v}");
    v["items"].as_array().unwrap().clone()
}

/// Every artifact version of the run.
pub async fn all_artifacts(srv: &TestServer, id: &str) -> Vec<Value> {
    let (s, v) = srv
        .get(&format!("/api/runs/{id}/artifacts"), ADMIN_TOKEN)
        .await;
    assert!(s.is_success(), "{v}");
    v["items"].as_array().unwrap().clone()
}

/// The run's artifact versions of `kind`, oldest first.
pub async fn artifacts(srv: &TestServer, id: &str, kind: &str) -> Vec<Value> {
    all_artifacts(srv, id)
        .await
        .into_iter()
        .filter(|a| a["kind"] == kind)
        .collect()
}

/// The events of `kind`.
pub fn kinds<'a>(evs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["kind"] == kind).collect()
}

/// The calc project with its bug, committed on `trunk`.
pub fn calc_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_calc_project(dir.path());
    git(dir.path(), &["init", "-q", "-b", "trunk"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "initial"]);
    dir
}
