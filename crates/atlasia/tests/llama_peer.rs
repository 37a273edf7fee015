//! Conformance against a real OpenAI- and Anthropic-compatible server: llama.cpp's
//! `llama-server` with SmolLM2-135M (built by `scripts/llama-peer`, which CI runs and whose
//! output CI exports as `ATLASIA_LLAMA_SERVER`). The real `atlasia serve` proxies to it over
//! HTTP: plain, streaming, `json_schema` with key order, tools with `tool_choice`, truncation,
//! context overflow, the Anthropic wire; and the gateway's probe reads its context size.
//!
//! A 135M model writes poor answers: these tests check plumbing and honesty (statuses, finish
//! reasons, shapes, error codes), never quality. Without `ATLASIA_LLAMA_SERVER` the test says why
//! and passes; with it set, anything broken (the binary, the model, the server) fails it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Context of each of the server's two slots (`-c 4096 -np 2`).
const SLOT_CONTEXT: u32 = 2048;

/// A running `llama-server`, killed when dropped.
struct Peer {
    base: String,
    _child: Child,
    _logs: tempfile::TempDir,
}

impl Peer {
    /// Starts `bin` with the model and chat template `scripts/llama-peer` put next to it and
    /// waits (at most 120 s) for `GET /health` to answer 200.
    async fn start(bin: &Path) -> Self {
        let dir = bin.parent().expect("the binary's directory");
        let model = dir.join("smollm2-135m.gguf");
        let template = dir.join("chat-template.jinja");
        for f in [bin, model.as_path(), template.as_path()] {
            assert!(
                f.exists(),
                "{} is missing: run scripts/llama-peer",
                f.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let logs = tempfile::tempdir().unwrap();
        let log_path = logs.path().join("llama-server.log");
        let mut child = Command::new(bin)
            .arg("-m")
            .arg(&model)
            .args(["--alias", "smollm2", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["-c", "4096", "-np", "2", "-t", "2", "--no-webui", "--jinja"])
            .arg("--chat-template-file")
            .arg(&template)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let base = format!("http://127.0.0.1:{port}");
        let health = format!("{base}/health");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "llama-server {} within 120 s; its log ends:\n{}",
                    exited.map_or("was not healthy".to_owned(), |s| format!("exited ({s})")),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            base,
            _child: child,
            _logs: logs,
        }
    }
}

/// The server binary, or `None` (with the reason printed) when the variable is unset.
fn peer_binary() -> Option<PathBuf> {
    match std::env::var_os("ATLASIA_LLAMA_SERVER") {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => {
            eprintln!(
                "skipping the llama-server conformance test: ATLASIA_LLAMA_SERVER is not set \
                 (run `export ATLASIA_LLAMA_SERVER=$(scripts/llama-peer)`)"
            );
            None
        }
    }
}

fn ask(model: &str, text: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
           "messages": [{"role": "user", "content": text}]})
}

async fn post(srv: &TestServer, body: &Value) -> (u16, Value) {
    let (s, v) = srv.post("/v1/chat/completions", ADMIN_TOKEN, body).await;
    (s.as_u16(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_proxy_hold_up_against_llama_server() {
    let Some(bin) = peer_binary() else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let peer = Peer::start(&bin).await;

    // The gateway's probe: reachable, and it learns the slot's context size.
    let mut settings = atlasia_llm::config::LlmSettings::default();
    settings.models.push(atlasia_llm::config::ModelSettings {
        name: "smollm2".into(),
        endpoints: vec![atlasia_llm::config::EndpointSettings {
            name: Some("llama".into()),
            wire: None,
            base_url: format!("{}/v1", peer.base),
            api_key: None,
            model: None,
            timeout_ms: 60_000,
            rate_limit: None,
        }],
    });
    let gateway = atlasia_llm::Gateway::new(
        &settings,
        Default::default(),
        std::sync::Arc::new(atlasia_llm::NoRecorder),
    )
    .unwrap();
    let probes = gateway.probe().await;
    assert!(probes[0].result.is_ok(), "{}", probes[0]);
    let meta = atlasia_llm::CallMeta::default();
    assert_eq!(gateway.context_tokens(&meta, "smollm2"), Some(SLOT_CONTEXT));

    let config = format!(
        "[llm]\ndefault_model = \"smollm2\"\ntimeout_ms = 120000\n[llm.retry]\nbase_ms = 10\n\
         [[llm.models]]\nname = \"smollm2\"\n[[llm.models.endpoints]]\nname = \"llama\"\n\
         base_url = \"{base}/v1\"\n\
         [[llm.models]]\nname = \"smollm2-anthropic\"\n[[llm.models.endpoints]]\n\
         name = \"llama-anthropic\"\nwire = \"anthropic\"\nbase_url = \"{base}\"\n\
         model = \"smollm2\"\napi_key = \"sk-local-peer-key\"\n",
        base = peer.base
    );
    let db = TestDb::new(Db::Sqlite).await;
    std::fs::write(db.dir.path().join("atlasia.toml"), config).unwrap();
    let srv = TestServer::start_with(db, &[]).await;

    // Plain.
    let (s, v) = post(&srv, &ask("smollm2", "Say hello.", 16)).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{v}"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64() > Some(0), "{v}");

    // Truncation: the output bound is honoured and reported.
    let (s, v) = post(
        &srv,
        &ask("smollm2", "Write a long story about a dragon.", 5),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64() <= Some(5), "{v}");

    // Streaming: deltas, a finish reason, then [DONE].
    let mut body = ask("smollm2", "Count to five.", 12);
    body["stream"] = json!(true);
    let text = srv
        .client
        .post(srv.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks.iter().any(|c| c["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())),
        "{text}"
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"].is_string()),
        "{text}"
    );

    // json_schema: the server's grammar follows the schema's key order, which only holds if
    // the order reached it.
    let schema = json!({"type": "object", "properties": {
        "summary": {"type": "string", "maxLength": 60},
        "acceptance_criteria": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 2}},
        "required": ["summary", "acceptance_criteria"]});
    let mut body = ask("smollm2", "Plan a fix for a typo in the README.", 120);
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}});
    let (s, v) = post(&srv, &body).await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let compact: String = content.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.starts_with("{\"summary\""), "{content}");

    // Tools: they reach the server (the prompt grows by their definitions) and the answer is
    // either a call of the tool or, as this model may answer even under `required`, prose
    // that says it stopped normally — never a malformed call.
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut body = ask("smollm2", "What is the weather in Paris?", 1);
    let (s, bare) = post(&srv, &body).await;
    assert_eq!(s, 200, "{bare}");
    body["max_tokens"] = json!(32);
    body["tools"] = tools.clone();
    body["tool_choice"] = json!("required");
    let (s, v) = post(&srv, &body).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            > bare["usage"]["prompt_tokens"].as_u64().unwrap() + 20,
        "the tools were not in the prompt: {v}"
    );
    let choice = &v["choices"][0];
    match choice["message"]["tool_calls"][0].as_object() {
        Some(call) => {
            assert_eq!(call["function"]["name"], "get_weather", "{v}");
            assert!(call["function"]["arguments"].is_string(), "{v}");
            assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        }
        None => {
            assert!(choice["message"]["content"].is_string(), "{v}");
            assert!(
                choice["finish_reason"] == "stop" || choice["finish_reason"] == "length",
                "{v}"
            );
        }
    }
    // A named tool choice: answered, or refused as the client's fault; never a 5xx.
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (s, v) = post(&srv, &body).await;
    assert!(s == 200 || (400..500).contains(&s), "{s} {v}");

    // Context overflow: OpenAI's code, the server's words, the client's status.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    let (s, v) = post(&srv, &ask("smollm2", &long, 8)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the available context size"),
        "{v}"
    );
    // The breaker did not count it: the next call is served.
    let (s, v) = post(&srv, &ask("smollm2", "Say yes.", 4)).await;
    assert_eq!(s, 200, "{v}");

    // The Anthropic wire (`/v1/messages` on the same server).
    let (s, v) = post(&srv, &ask("smollm2-anthropic", "Say hello.", 16)).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let (s, v) = post(&srv, &ask("smollm2-anthropic", "Write a long story.", 4)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
}

/// One whole bolt through `atlasia run` against the real model. A 135M model will not fix the
/// bug: this checks plumbing and honesty — the bolt ends within its bound with a clear outcome
/// (exit 0, 1 or 3 and its `status:` line, never a hang or a crash), and a DONE is only
/// possible with a change whose tests passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_bolt_against_llama_server_ends_with_a_clear_outcome() {
    let Some(bin) = peer_binary() else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let peer = Peer::start(&bin).await;
    let repo = common::bolts::calc_repo();
    let work = tempfile::tempdir().unwrap();
    let issue = work.path().join("issue.md");
    std::fs::write(
        &issue,
        "# add() subtracts\n\n`add(2, 3)` returns -1 instead of 5. Fix `add` in calc.py.\n",
    )
    .unwrap();
    let endpoint = format!("{}/v1", peer.base);
    let (repo_path, issue_path, dir) = (
        repo.path().display().to_string(),
        issue.display().to_string(),
        work.path().to_path_buf(),
    );
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::task::spawn_blocking(move || {
            cli(
                &dir,
                &["run", "--repo", &repo_path, "--issue", &issue_path],
                &[
                    ("LLM_ENDPOINT", endpoint.as_str()),
                    ("LLM_MODEL", "smollm2"),
                    ("LLM_API_KEY", "sk-local-peer-key"),
                    ("NO_COLOR", "1"),
                    // Small bounds: the model's answers are short or useless either way.
                    ("ATLASIA_ENGINE__DEVELOPER_MAX_TOKENS", "12000"),
                    ("ATLASIA_ENGINE__LLM_PATIENCE_SECS", "30"),
                    ("ATLASIA_AGENTS__DEVELOPER__MAX_TOKENS", "512"),
                    ("ATLASIA_LLM__TIMEOUT_MS", "120000"),
                ],
            )
        }),
    )
    .await
    .expect("the bolt ended within 15 minutes")
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!(
        "whole bolt against llama-server: exit {:?} in {:?}",
        out.status.code(),
        started.elapsed()
    );
    let status = stdout
        .lines()
        .find_map(|l| l.strip_prefix("status:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    match out.status.code() {
        Some(0) => {
            assert_eq!(status, "DONE", "{stdout}\n{stderr}");
            assert!(
                stdout.contains("passed (exit 0)"),
                "DONE only with tests that ran and passed:\n{stdout}"
            );
        }
        Some(1) => assert_eq!(status, "FAILED", "{stdout}\n{stderr}"),
        Some(3) => assert!(
            matches!(status.as_str(), "ESCALATED" | "WAITING_GATE"),
            "{stdout}\n{stderr}"
        ),
        other => panic!("exit {other:?}: not a clear outcome\n{stdout}\n{stderr}"),
    }
}
