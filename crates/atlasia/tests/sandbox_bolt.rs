//! The sandbox through the real binary: whole bolts (real `atlasia serve` with workers, the
//! real `sim-llm`, real git, real `bwrap`) whose verify commands try what issue 9 reports —
//! reading the server's environment through `/proc`, writing to the host's `/tmp`, killing the
//! server — and end with no secret in what a viewer reads, no trace on the host and the server
//! alive. Plus: `sandbox.mode = "none"` and an unusable sandbox shown by readiness, metrics and
//! `atlasia doctor`; an unusable sandbox makes the TESTER step escalate with the reason. And the
//! path with nothing installed: without bubblewrap the same hostile bolt runs in the in-process
//! backend and ends DONE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "webhook-secret-value-for-the-sandbox-test";
const LLM_KEY: &str = "sk-llm-key-value-for-the-sandbox-test";

/// A server with one worker pointed at `sim`, secrets in its environment, plus `extra`.
async fn server(db: Db, sim: &Sim, extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![
        ("LLM_API_KEY", LLM_KEY),
        ("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("ATLASIA_ENGINE__WORKERS", "1"),
    ];
    env.extend_from_slice(extra);
    bolt_server(TestDb::new(db).await, sim, &env).await
}

/// The calc project with `verify` set to `commands` (then its unit tests), committed.
fn repo_with_verify(commands: &[String]) -> tempfile::TempDir {
    repo_with_config(commands, "")
}

/// [`repo_with_verify`] with `extra` appended to `.atlasia.toml`.
fn repo_with_config(commands: &[String], extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_calc_project(p);
    let mut all: Vec<String> = commands.to_vec();
    all.push("python3 -m unittest -q".into());
    let list = toml_list(&all);
    std::fs::write(p.join(".atlasia.toml"), format!("verify = {list}\n{extra}")).unwrap();
    git(p, &["init", "-q", "-b", "main"]);
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "initial"]);
    dir
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|c| format!("'''{c}'''")).collect();
    format!("[{}]", quoted.join(", "))
}

on_both! {
    hostile_verify_commands_leak_nothing_and_harm_nothing => hostile_verify_commands_leak_nothing_and_harm_nothing;
    an_unusable_sandbox_escalates_the_tester => an_unusable_sandbox_escalates_the_tester;
    mode_none_is_visible_in_ready_metrics_and_doctor => mode_none_is_visible_in_ready_metrics_and_doctor;
    the_repository_can_opt_in_to_the_network => the_repository_can_opt_in_to_the_network;
    without_bubblewrap_a_bolt_runs_sandboxed_in_process => without_bubblewrap_a_bolt_runs_sandboxed_in_process;
}

/// A fresh machine: no bubblewrap (`sandbox.bwrap_path` names a missing file, backend `auto`).
/// Readiness and metrics name the in-process backend, and the hostile bolt of
/// [`hostile_verify_commands_leak_nothing_and_harm_nothing`] ends DONE, leaking nothing.
async fn without_bubblewrap_a_bolt_runs_sandboxed_in_process(db: Db) {
    hostile_bolt(
        db,
        &[("ATLASIA_SANDBOX__BWRAP_PATH", "/nonexistent/bwrap")],
        "inprocess",
    )
    .await;
}

/// `[sandbox] network = true` in the committed `.atlasia.toml` gives the verify commands the
/// host's network (here: a listener of the test's on loopback); without it they have none.
async fn the_repository_can_opt_in_to_the_network(db: Db) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')\""
    );
    let sim = Sim::start(&[]).await;
    let srv = server(db, &sim, &[]).await;
    for (extra, want) in [("[sandbox]\nnetwork = true\n", true), ("", false)] {
        let repo = repo_with_config(std::slice::from_ref(&connect), extra);
        let run = srv
            .create_run(json!({
                "repo": repo.path().display().to_string(), "title": "add() subtracts",
                "body": body(json!({"developer": [edit_to(FIXED_NEW)]})),
            }))
            .await;
        let id = run["id"].as_str().unwrap();
        wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
        let report = &artifacts(&srv, id, "test_report").await[0]["payload"];
        let first = &report["commands"][0];
        assert_eq!(first["exit_code"] == json!(0), want, "{report}");
        assert_eq!(
            first["output_tail"].as_str().unwrap().contains("connected"),
            want,
            "{report}"
        );
    }
}

async fn hostile_verify_commands_leak_nothing_and_harm_nothing(db: Db) {
    hostile_bolt(db, &[], "bwrap").await;
}

/// A bolt whose verify commands attack the server ends DONE with the sandbox `label` in use.
async fn hostile_bolt(db: Db, extra: &[(&str, &str)], label: &str) {
    let unique = format!("atlasia-escape-{}", uuid::Uuid::now_v7().simple());
    let sim = Sim::start(&[]).await;
    let mut srv = server(db, &sim, extra).await;
    let (_, ready) = srv.get("/api/health/ready", ADMIN_TOKEN).await;
    let check = &ready["checks"]["sandbox"];
    assert_eq!(check["detail"]["mode"], label, "{ready}");
    assert_eq!(check["detail"]["state"], "ok", "{ready}");
    // The server's own port, from inside: the sandbox has no network to reach it with.
    let port = srv
        .base
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let data_dir = srv.db.dir.path().display().to_string();
    let repo = repo_with_verify(&[
        // The server's environment, every way /proc offers it.
        r"tr '\0' '\n' < /proc/$PPID/environ; cat /proc/1/environ /proc/*/environ | tr '\0' '\n'; env; true".into(),
        // A trace on the host.
        format!("touch /tmp/{unique} && echo wrote-tmp"),
        // The server itself. (Never `kill -9 -1` here: should the sandbox ever regress, that
        // would take down every process of the machine's user.)
        "kill -9 $PPID; kill -9 1; echo still-here".into(),
        format!(
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2); \
             print('reached-server')\" || echo no-network"
        ),
        // The server's database and data directory: only the path down to this bolt's
        // worktree (and the build cache) exists in there.
        format!("ls -A {data_dir}; cat {data_dir}/atlasia.db > /dev/null && echo saw-db || echo no-db"),
    ]);
    let run = srv
        .create_run(json!({
            "repo": repo.path().display().to_string(), "title": "add() subtracts",
            "body": body(json!({"developer": [edit_to(FIXED_NEW)]})),
        }))
        .await;
    let id = run["id"].as_str().unwrap();
    let done = wait_status(&srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    assert_eq!(done["status"], "DONE", "{done}\n{}", srv.log());

    // The commands really ran (the controls), and nothing secret is in what a viewer reads.
    let (s, all) = srv
        .get(&format!("/api/runs/{id}/artifacts"), ADMIN_TOKEN)
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = all.to_string();
    let report = &artifacts(&srv, id, "test_report").await[0]["payload"];
    let tails: Vec<&str> = report["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["output_tail"].as_str().unwrap())
        .collect();
    assert!(tails[0].contains("PATH="), "{report}");
    assert!(tails[1].contains("wrote-tmp"), "{report}");
    assert!(tails[2].contains("still-here"), "{report}");
    assert!(
        tails[3].contains("no-network") && !tails[3].contains("reached-server"),
        "{report}"
    );
    assert!(
        tails[4].contains("no-db") && !tails[4].contains("saw-db"),
        "{report}"
    );
    assert!(!tails[4].lines().any(|l| l == "atlasia.db"), "{report}");
    if srv.db.kind == Db::Sqlite {
        // The control: the database is there, on the host.
        assert!(srv.db.dir.path().join("atlasia.db").exists());
    }
    for secret in [ADMIN_TOKEN, WEBHOOK_SECRET, LLM_KEY] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the artifacts: {report}"
        );
    }
    // No trace on the host; the server is alive and serving.
    assert!(!std::path::Path::new("/tmp").join(&unique).exists());
    assert!(srv.child.try_wait().unwrap().is_none(), "{}", srv.log());
    let (s, _) = srv.get("/api/health/live", ADMIN_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    let status = srv.terminate(std::time::Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
}

async fn an_unusable_sandbox_escalates_the_tester(db: Db) {
    let repo = repo_with_verify(&[]);
    let sim = Sim::start(&[]).await;
    let srv = server(
        db,
        &sim,
        &[
            ("ATLASIA_SANDBOX__BWRAP_PATH", "/nonexistent/bwrap"),
            ("ATLASIA_SANDBOX__BACKEND", "bwrap"),
        ],
    )
    .await;
    let (s, ready) = srv.get("/api/health/ready", ADMIN_TOKEN).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "an unusable sandbox is not a reason for 503: {ready}"
    );
    let check = &ready["checks"]["sandbox"];
    assert_eq!(check["detail"]["mode"], "unavailable", "{ready}");
    assert_eq!(check["detail"]["state"], "degraded", "{ready}");
    assert!(
        check["reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/bwrap"),
        "{ready}"
    );

    let run = srv
        .create_run(json!({
            "repo": repo.path().display().to_string(), "title": "add() subtracts",
            "body": body(json!({"developer": [edit_to(FIXED_NEW)]})),
        }))
        .await;
    let id = run["id"].as_str().unwrap();
    let esc = wait_status(&srv, id, &["ESCALATED", "DONE", "FAILED"]).await;
    assert_eq!(esc["status"], "ESCALATED", "{esc}\n{}", srv.log());
    assert_eq!(esc["current_step"], "TESTER", "{esc}");
    let e = &artifacts(&srv, id, "escalation").await[0]["payload"];
    let blocker = e["blocker"].as_str().unwrap();
    assert!(blocker.starts_with("sandbox unavailable: "), "{e}");
    assert!(blocker.contains("/nonexistent/bwrap"), "{e}");
    assert!(
        blocker.contains("install bubblewrap or set sandbox.mode = \"none\""),
        "{e}"
    );
    // The Developer's run_command was refused too (reported to the model as a tool error).
    let evs = events(&srv, id).await;
    let runs: Vec<&Value> = kinds(&evs, "tool_called")
        .into_iter()
        .filter(|e| e["data"]["tool"] == "run_command")
        .collect();
    assert!(!runs.is_empty(), "no run_command event");
    assert!(runs.iter().all(|e| e["data"]["ok"] == false), "{runs:?}");
    assert!(
        kinds(&evs, "tool_called")
            .iter()
            .all(|e| e["data"]["tool"] != "verify")
    );
}

async fn mode_none_is_visible_in_ready_metrics_and_doctor(db: Db) {
    let sim = Sim::start(&[]).await;
    for (mode, backend, label, enabled, state) in [
        ("none", "auto", "none", "0", "degraded"),
        ("bwrap", "auto", "bwrap", "1", "ok"),
        ("bwrap", "inprocess", "inprocess", "1", "ok"),
    ] {
        let srv = server(
            db,
            &sim,
            &[
                ("ATLASIA_SANDBOX__MODE", mode),
                ("ATLASIA_SANDBOX__BACKEND", backend),
            ],
        )
        .await;
        let (s, ready) = srv.get("/api/health/ready", ADMIN_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{ready}");
        assert_eq!(
            ready["checks"]["sandbox"]["detail"]["mode"], label,
            "{ready}"
        );
        assert_eq!(
            ready["checks"]["sandbox"]["detail"]["state"], state,
            "{ready}"
        );
        let metrics = srv.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l == format!("sandbox_enabled {enabled}")),
            "{metrics}"
        );
        assert!(
            metrics
                .lines()
                .any(|l| l == format!("sandbox_mode{{mode=\"{label}\"}} 1")),
            "{metrics}"
        );
        if mode == "none" {
            assert!(srv.log().contains("WITHOUT isolation"), "{}", srv.log());
        }

        let data_dir = srv.db.dir.path().to_str().unwrap().to_owned();
        let out = cli(
            srv.db.dir.path(),
            &["doctor", "--no-server"],
            &[
                ("DB_URL", srv.db.url.as_str()),
                ("ATLASIA_STORAGE__DATA_DIR", data_dir.as_str()),
                ("ATLASIA_SANDBOX__MODE", mode),
                ("ATLASIA_SANDBOX__BACKEND", backend),
            ],
        );
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = report
            .lines()
            .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with("sandbox")))
            .unwrap_or_else(|| panic!("no sandbox line: {report}"));
        if mode == "none" {
            assert!(line.starts_with("WARN"), "{report}");
        } else {
            assert!(line.starts_with("ok"), "{report}");
            assert!(line.contains("net=lo"), "{report}");
            let named = if backend == "inprocess" {
                "in-process"
            } else {
                "bubblewrap at"
            };
            assert!(line.contains(named), "{report}");
        }
    }
    // An unusable sandbox fails the doctor (exit 1).
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let out = cli(
        dir.path(),
        &["doctor", "--no-server"],
        &[
            ("ATLASIA_STORAGE__DATA_DIR", data_dir.as_str()),
            ("ATLASIA_SANDBOX__BWRAP_PATH", "/nonexistent/bwrap"),
            ("ATLASIA_SANDBOX__BACKEND", "bwrap"),
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL  sandbox") && l.contains("/nonexistent/bwrap")),
        "{report}"
    );
}

/// Bad `[sandbox]` settings stop the process with exit code 2 and one line naming the key.
#[test]
fn bad_sandbox_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, key) in [
        ("ATLASIA_SANDBOX__MODE", "docker", "sandbox.mode"),
        ("ATLASIA_SANDBOX__BACKEND", "docker", "sandbox.backend"),
        ("ATLASIA_SANDBOX__UID", "0", "sandbox.uid"),
        (
            "ATLASIA_SANDBOX__MAX_PROCESSES",
            "0",
            "sandbox.max_processes",
        ),
        ("ATLASIA_SANDBOX__MEMORY_MB", "lots", "sandbox.memory_mb"),
    ] {
        let out = cli(dir.path(), &["config", "show"], &[(var, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid setting {key}")),
            "{var}={value}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    // The defaults show in `config show`.
    let out = cli(dir.path(), &["config", "show"], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("[sandbox]") && shown.contains("mode = \"bwrap\""),
        "{shown}"
    );
}
