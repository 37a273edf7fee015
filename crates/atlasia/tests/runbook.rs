//! Every command of docs/RUNBOOK.md marked `runnable` works: the fenced `sh runnable` blocks run
//! through `bash -e -o pipefail` and the `sql runnable` blocks through the backend's own CLI,
//! against a live server (SQLite and PostgreSQL) that has finished a bolt, with the variables
//! the runbook names (`ATLASIA`, `TOKEN`) and `atlasia` on the PATH with the server's settings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use serde_json::json;
use std::path::Path;

on_both! {
    every_runnable_command_of_the_runbook_works => every_runnable_command_of_the_runbook_works;
}

/// The runbook's fenced blocks marked runnable: (language, body).
fn runnable_blocks() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/RUNBOOK.md"),
    )
    .unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let mut words = info.split_whitespace();
                let lang = words.next().unwrap_or_default().to_owned();
                if words.any(|w| w == "runnable") {
                    open = Some((lang, String::new()));
                } else {
                    open = Some((String::new(), String::new()));
                }
            }
            (Some(_), Some(_)) => {
                let (lang, body) = open.take().unwrap();
                if !lang.is_empty() {
                    blocks.push((lang, body));
                }
            }
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed fence in RUNBOOK.md");
    blocks
}

async fn every_runnable_command_of_the_runbook_works(db: Db) {
    let blocks = runnable_blocks();
    assert!(
        blocks.iter().filter(|(l, _)| l == "sh").count() >= 8
            && blocks.iter().filter(|(l, _)| l == "sql").count() >= 3,
        "{blocks:?}"
    );
    let sim = Sim::start(&[]).await;
    let srv = bolt_server(TestDb::new(db).await, &sim, &[]).await;
    // A finished bolt, so the queue and the metrics have something to show.
    let repo = calc_repo();
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts",
                           "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}))
        .await;
    wait_status(&srv, run["id"].as_str().unwrap(), &["DONE"]).await;

    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let data_dir = srv.db.dir.path().display().to_string();
    for (lang, body) in blocks {
        match lang.as_str() {
            "sh" => {
                let out = std::process::Command::new("bash")
                    .args(["-e", "-o", "pipefail", "-c", &body])
                    .current_dir(srv.db.dir.path())
                    .env("ATLASIA", &srv.base)
                    .env("TOKEN", ADMIN_TOKEN)
                    .env("PATH", &path)
                    .env("DB_URL", &srv.db.url)
                    .env("ATLASIA_STORAGE__DATA_DIR", &data_dir)
                    .env("ATLASIA_STORAGE__MIN_FREE_DISK_MB", "1")
                    .env("LLM_ENDPOINT", &sim.base)
                    .env("LLM_MODEL", "sim-model")
                    .env("LLM_API_KEY", "sk-test-key")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "runbook block failed:\n{body}\nstdout:\n{}\nstderr:\n{}\nserver log:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    srv.log()
                );
            }
            "sql" => {
                srv.db.sql_cli(&body);
            }
            other => panic!("a runnable block in an unknown language: {other}"),
        }
    }
}
