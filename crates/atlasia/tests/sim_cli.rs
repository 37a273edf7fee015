//! `atlasia sim-llm` as a user meets it: the first stdout line gives the address, stderr says
//! it is a simulator, it answers both wires, SIGTERM stops it with exit 0, and bad flags are
//! refused with exit 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_atlasia");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_llm_serves_both_wires_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("sim.log");
    let mut child = Command::new(BIN)
        .args(["sim-llm", "--bind", "127.0.0.1:0", "--api-key", "k-123"])
        .current_dir(dir.path())
        .env_remove("DB_URL")
        .env_remove("SIM_LLM_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("no address printed within 60 s")
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "exited early: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
    let base = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("sim-llm: SIMULATOR"),
        "banner missing from stderr: {log}"
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("k-123")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model"], "sim-llm/gpt-4o");
    let r = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "k-123")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let unauth = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("still running 15 s after SIGTERM")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

#[test]
fn sim_llm_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("sim-llm")
            .args(args)
            .current_dir(dir.path())
            .env_remove("DB_URL")
            .output()
            .unwrap()
    };
    let out = run(&["--bind", "127.0.0.1:0", "--fail-rate", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fail-rate"), "{stderr}");
    let out = run(&["--bind", "127.0.0.1:0", "--fault", "teapot"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("teapot"));
}
