//! Guards `examples/` against drift: each example issue's script, applied the way the bolt's
//! developer iterations would apply it (every iteration's `write_file`/`edit_file` in order, on a
//! copy of the project), must make the project's verify command pass for the solvable issues and
//! keep it failing for the one that is meant to escalate. No engine and no simulator here: plain
//! file edits and a subprocess.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use atlasia_sim::script::{self, Script, ToolStep};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The issue's title and script.
fn read_issue(name: &str) -> (String, Script) {
    let text = std::fs::read_to_string(examples().join("issues").join(name)).unwrap();
    let (first, body) = text.split_once('\n').unwrap();
    let title = first.strip_prefix("# ").expect("first line is `# <title>`");
    let script = script::from_issue_body(body)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name} has no atlasia-sim script"));
    (title.to_owned(), script)
}

/// The `verify` list of a project's `.atlasia.toml` (a TOML array of plain strings reads as JSON).
fn configured_verify(project: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(project.join(".atlasia.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("verify"))
        .expect("a verify line");
    let (_, list) = line.split_once('=').unwrap();
    serde_json::from_str(list.trim()).unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == "__pycache__" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

fn arg<'a>(step: &'a ToolStep, key: &str) -> &'a str {
    step.args
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{} needs a string `{key}`: {}", step.tool, step.args))
}

/// Applies one iteration's file operations; `edit_file`'s `old_text` must occur exactly once.
fn apply(dir: &Path, steps: &[ToolStep], what: &str) {
    for step in steps {
        match step.tool.as_str() {
            "write_file" => {
                let path = dir.join(arg(step, "path"));
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).unwrap();
                }
                std::fs::write(path, arg(step, "content")).unwrap();
            }
            "edit_file" => {
                let path = dir.join(arg(step, "path"));
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}", path.display()));
                let old = arg(step, "old_text");
                assert_eq!(
                    text.matches(old).count(),
                    1,
                    "{what}: old_text must occur exactly once in {}: {old:?}",
                    arg(step, "path")
                );
                std::fs::write(&path, text.replacen(old, arg(step, "new_text"), 1)).unwrap();
            }
            "read_file" | "list_files" | "search" | "run_command" => {}
            other => panic!("{what}: unknown developer tool `{other}`"),
        }
    }
}

/// Runs the commands from `dir`: whether all passed, and the output of the first failure.
fn verify(dir: &Path, commands: &[String]) -> (bool, String) {
    for c in commands {
        let out = Command::new("sh")
            .arg("-c")
            .arg(c)
            .current_dir(dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{c}`: {e}"));
        if !out.status.success() {
            let log = format!(
                "`{c}` exited {:?}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (false, log);
        }
    }
    (true, String::new())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Copies `project`, checks it passes as shipped, applies the script of `issue` and returns
/// whether the verify commands pass afterwards.
fn solve(project: &str, issue: &str) -> Option<(bool, String)> {
    let src = examples().join(project);
    let commands = configured_verify(&src);
    let (title, script) = read_issue(issue);
    assert!(!title.trim().is_empty(), "{issue}: empty title");
    assert_eq!(
        script.verify.as_ref(),
        Some(&commands),
        "{issue}: the script's verify should be the project's configured verify"
    );
    let tool = commands[0].split_whitespace().next().unwrap();
    if !have(tool) {
        eprintln!("skipping {issue}: `{tool}` is not installed, cannot run {commands:?}");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(project);
    copy_tree(&src, &dir);
    let (ok, log) = verify(&dir, &commands);
    assert!(ok, "{project} as shipped must pass its own verify:\n{log}");
    assert!(!script.developer.is_empty(), "{issue}: no developer script");
    for (i, steps) in script.developer.iter().enumerate() {
        apply(&dir, steps, &format!("{issue} iteration {}", i + 1));
    }
    Some(verify(&dir, &commands))
}

#[test]
fn rust_calc_1_is_solved_by_its_script() {
    if let Some((ok, log)) = solve("rust-calc", "rust-calc-1.md") {
        assert!(ok, "{log}");
    }
}

#[test]
fn py_inventory_1_is_solved_after_one_review_loop_back() {
    let (_, script) = read_issue("py-inventory-1.md");
    assert_eq!(
        script.developer.len(),
        2,
        "one developer list per review round"
    );
    assert_eq!(
        script.verdict(1, "code_quality"),
        script::Verdict::ChangesRequired
    );
    assert_eq!(script.verdict(2, "code_quality"), script::Verdict::Approved);
    if let Some((ok, log)) = solve("py-inventory", "py-inventory-1.md") {
        assert!(ok, "{log}");
    }
}

#[test]
fn py_inventory_escalate_keeps_failing() {
    if let Some((ok, log)) = solve("py-inventory", "py-inventory-escalate.md") {
        assert!(
            !ok,
            "the escalating issue's fix must keep failing the tests"
        );
        assert!(
            log.contains("test_total_value_rounds_half_up_to_cents"),
            "{log}"
        );
    }
}

#[test]
fn every_issue_file_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(examples().join("issues"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "py-inventory-1.md",
            "py-inventory-escalate.md",
            "rust-calc-1.md"
        ]
    );
}
