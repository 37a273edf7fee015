//! The shipped alert rules (`deploy/prometheus/`): promtool accepts them, their unit tests pass
//! (each alert fires on its pattern and stays quiet short of it), and every metric they read is
//! one a real server exposes — a renamed metric would otherwise leave an alert silent forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

/// `promtool <args>` in `deploy/prometheus`; a missing promtool fails unless
/// `ATLASIA_TEST_SKIP_PROMTOOL=1` (then `None`).
fn promtool(args: &[&str]) -> Option<String> {
    match Command::new("promtool")
        .args(args)
        .current_dir(deploy())
        .output()
    {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "promtool {args:?}:\n{text}");
            Some(text)
        }
        Err(e) if std::env::var("ATLASIA_TEST_SKIP_PROMTOOL").as_deref() == Ok("1") => {
            eprintln!("promtool not run ({e}); ATLASIA_TEST_SKIP_PROMTOOL=1");
            None
        }
        Err(e) => panic!("promtool is needed (apt-get install prometheus): {e}"),
    }
}

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    if let Some(out) = promtool(&["check", "rules", "alerts.yml"]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
    if let Some(out) = promtool(&["test", "rules", "alerts.test.yml"]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// PromQL expressions of the alert rules and of the Grafana dashboard's panels.
fn expressions() -> Vec<String> {
    let rules = std::fs::read_to_string(deploy().join("alerts.yml")).unwrap();
    let mut exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_owned))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/atlasia.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root).unwrap()).unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// Metric names in `exprs` (words that look like metrics and are not PromQL).
fn metric_names(exprs: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for expr in exprs {
        // Label matchers and values are not metric names.
        let mut cleaned = String::new();
        let mut depth = 0;
        for c in expr.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ if depth == 0 => cleaned.push(c),
                _ => {}
            }
        }
        for word in cleaned.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            // A histogram is exposed as its `_bucket`, `_sum` and `_count` series.
            let word = word.strip_suffix("_bucket").unwrap_or(word);
            if word.contains('_')
                && word != "histogram_quantile"
                && !names.iter().any(|n| n == word)
            {
                names.push(word.to_owned());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alerts_and_dashboard_read_exists() {
    let srv = TestServer::start_with(TestDb::new(Db::Sqlite).await, &[]).await;
    // One request so the HTTP histogram has a series.
    srv.get("/api/runs", ADMIN_TOKEN).await;
    let body = srv.metrics().await;
    let exposed = |name: &str| {
        body.lines()
            .any(|l| !l.starts_with('#') && l.starts_with(name))
    };
    let rules = std::fs::read_to_string(deploy().join("alerts.yml")).unwrap();
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_owned))
        .collect();
    let in_rules = metric_names(&rule_exprs);
    assert!(in_rules.len() >= 15, "{in_rules:?}");
    for name in &in_rules {
        // Vault lands with its issue; the cgroup limit is absent where there is none. Every
        // other metric an alert reads exists from start, so `increase()` sees its first rise.
        if matches!(name.as_str(), "vault_sealed" | "process_memory_limit_bytes") {
            continue;
        }
        assert!(
            exposed(name),
            "an alert reads `{name}`, which a fresh server does not expose"
        );
    }
    // The dashboard may also show series that appear with the first call or bolt: each is
    // exposed already or written by the code under that exact name.
    let sources = rust_sources();
    for name in metric_names(&expressions()) {
        let quoted = format!("\"{name}\"");
        assert!(
            exposed(&name) || sources.contains(&quoted) || name.starts_with("vault_"),
            "the dashboard reads `{name}`, which no code writes"
        );
    }
}

/// Every Rust source of the crates (not their tests), concatenated.
fn rust_sources() -> String {
    let mut all = String::new();
    let mut todo = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("..")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() && !p.ends_with("tests") && !p.ends_with("target") {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    all
}

/// `NAME=value` pairs the deploy assets set for Atlasia: the Dockerfile's `ENV`, the compose
/// file's `atlasia` service, the systemd unit's `Environment=`.
fn deploy_env() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let mut pairs = Vec::new();
    let docker = read("Dockerfile").replace("\\\n", " ");
    for line in docker.lines().filter_map(|l| l.strip_prefix("ENV ")) {
        for pair in line.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            pairs.push((k.to_owned(), v.to_owned()));
        }
    }
    let compose = read("compose.yml");
    let service = compose.split("\n  postgres:").next().unwrap();
    let env = service.split("environment:").nth(1).unwrap();
    for line in env.lines().skip(1) {
        if line.trim().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.trim().split_once(": ") else {
            break;
        };
        if !line.starts_with("      ") {
            break;
        }
        pairs.push((
            k.to_owned(),
            v.trim_matches(|c| c == '"' || c == '\'').to_owned(),
        ));
    }
    for line in read("systemd/atlasia.service").lines() {
        if let Some(pair) = line.strip_prefix("Environment=") {
            let (k, v) = pair.split_once('=').unwrap();
            pairs.push((k.to_owned(), v.to_owned()));
        }
    }
    pairs
}

#[test]
fn every_variable_the_deploy_assets_set_is_a_real_setting() {
    let pairs = deploy_env();
    assert!(pairs.len() >= 12, "{pairs:?}");
    let documented = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    for (name, value) in pairs {
        if name.starts_with("ATLASIA_") {
            // The settings refuse an unknown section or key: `config show` exits 2 naming it.
            // Paths of the deploy host (repository roots must exist) become a scratch dir.
            let dir = tempfile::tempdir().unwrap();
            let value = if value.contains("${") {
                "placeholder-value-0123".into()
            } else if value.starts_with("[\"/") {
                format!("[\"{}\"]", dir.path().display())
            } else {
                value
            };
            let out = cli(
                dir.path(),
                &["config", "show"],
                &[(name.as_str(), value.as_str())],
            );
            assert!(
                out.status.success(),
                "{name}={value}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            // The original system's names: each must be one the settings read (documented).
            assert!(
                documented.contains(&format!("`{name}`")),
                "{name} is not a documented setting"
            );
        }
    }
}
