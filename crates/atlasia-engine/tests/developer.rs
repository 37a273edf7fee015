//! The developer tool loop end to end: a real gateway talking HTTP (OpenAI wire) to a scripted
//! model server in this process, a real SQLite store with a leased run, real files in a temporary
//! repository and real sandboxed subprocesses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use atlasia_core::{Autonomy, NewRun, Run};
use atlasia_engine::contracts::Contracts;
use atlasia_engine::ctx::StepCtx;
use atlasia_engine::developer::{DeveloperLimits, DeveloperOutcome, develop};
use atlasia_engine::tools::{self, Workdir};
use atlasia_llm::config::{EndpointSettings, LlmSettings, ModelSettings};
use atlasia_llm::{Gateway, NoRecorder};
use atlasia_store::{DbOptions, Store};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the scripted model answers, given the request number (0-based) and the request body.
type Script = dyn Fn(usize, &Value) -> Value + Send + Sync;

#[derive(Clone)]
struct Model {
    script: Arc<Script>,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn completions(State(m): State<Model>, Json(body): Json<Value>) -> Json<Value> {
    let n = {
        let mut r = m.requests.lock().unwrap();
        r.push(body.clone());
        r.len() - 1
    };
    let message = (m.script)(n, &body);
    let finish = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "model": "scripted-test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
    }))
}

/// An assistant message calling one tool.
fn tool_call(n: usize, name: &str, args: &Value) -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [{
        "id": format!("call_{n}"), "type": "function",
        "function": {"name": name, "arguments": args.to_string()}}]})
}

/// The tool results (`role: tool` contents) of a request, in order.
fn tool_results(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

struct Harness {
    _db: tempfile::TempDir,
    repo: tempfile::TempDir,
    store: Store,
    gateway: Gateway,
    contracts: Contracts,
    run: Run,
    owner: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Harness {
    async fn start(script: Arc<Script>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(Model {
                script,
                requests: requests.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let settings = LlmSettings {
            default_model: Some("dev".into()),
            cheap_model: Some("dev".into()),
            models: vec![ModelSettings {
                name: "dev".into(),
                endpoints: vec![EndpointSettings {
                    name: Some("scripted".into()),
                    wire: None,
                    base_url: format!("http://{addr}/v1"),
                    api_key: None,
                    model: None,
                    timeout_ms: 10_000,
                    rate_limit: None,
                }],
            }],
            ..LlmSettings::default()
        };
        let gateway = Gateway::new(&settings, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();

        let db = tempfile::tempdir().unwrap();
        let store = Store::connect(&DbOptions {
            url: format!("sqlite://{}/atlasia.db", db.path().display()),
            max_connections: 4,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(30),
            ..DbOptions::default()
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
            .create_run(&NewRun {
                repo: "acme/calc".into(),
                issue_number: Some(7),
                title: "add() subtracts".into(),
                body: "calc.add(2, 3) returns -1".into(),
                priority: 5,
                autonomy: Autonomy::Autonomous,
                budget_usd: None,
            })
            .await
            .unwrap();
        let owner = "test-worker".to_owned();
        let claim = store
            .claim(&owner, Duration::from_secs(300))
            .await
            .unwrap()
            .expect("the run is claimable");

        let repo = tempfile::tempdir().unwrap();
        write_repo(repo.path());
        Self {
            _db: db,
            repo,
            store,
            gateway,
            contracts: Contracts::embedded().unwrap(),
            run: claim.run,
            owner,
            requests,
        }
    }

    async fn develop(&self, limits: DeveloperLimits) -> DeveloperOutcome {
        self.develop_until(limits, &CancellationToken::new()).await
    }

    async fn develop_until(
        &self,
        limits: DeveloperLimits,
        cancel: &CancellationToken,
    ) -> DeveloperOutcome {
        let limits_of_bolt = atlasia_engine::steps::BoltLimits {
            llm_patience: std::time::Duration::ZERO,
            ..Default::default()
        };
        let ctx = StepCtx {
            store: &self.store,
            gateway: &self.gateway,
            contracts: &self.contracts,
            run: &self.run,
            owner: &self.owner,
            step: atlasia_core::Step::Developer,
            cancel,
            limits: &limits_of_bolt,
            simulator: true,
        };
        let contract = self.contracts.agent("developer").unwrap();
        let wd = Workdir::new(self.repo.path());
        develop(
            &ctx,
            contract,
            "issue: add() subtracts; make add() add".into(),
            &wd,
            limits,
        )
        .await
    }

    async fn tool_events(&self) -> Vec<Value> {
        self.store
            .events(self.run.id, 0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "tool_called")
            .map(|e| e.data)
            .collect()
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

fn write_repo(root: &Path) {
    std::fs::write(
        root.join("calc.py"),
        "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n",
    )
    .unwrap();
    std::fs::write(
        root.join("test_calc.py"),
        "import unittest\n\nimport calc\n\n\nclass CalcTest(unittest.TestCase):\n    \
         def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n\n    \
         def test_mul(self):\n        self.assertEqual(calc.mul(2, 3), 6)\n\n\n\
         if __name__ == \"__main__\":\n    unittest.main()\n",
    )
    .unwrap();
}

fn valid_report() -> Value {
    json!({
        "summary": "add() now adds; the existing unit test covers it.",
        "files_changed": [{"path": "calc.py", "change": "return a + b instead of a - b"}],
        "commands_run": ["python3 -m unittest"],
        "notes": ""
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_fixes_the_bug_runs_the_tests_and_finishes() {
    let script: Arc<Script> = Arc::new(|n, _body| match n {
        0 => tool_call(n, tools::LIST, &json!({"path": ""})),
        1 => tool_call(n, tools::READ, &json!({"path": "calc.py"})),
        2 => tool_call(
            n,
            tools::EDIT,
            &json!({"path": "calc.py", "old_text": "return a - b", "new_text": "return a + b"}),
        ),
        3 => tool_call(n, tools::RUN, &json!({"command": "python3 -m unittest"})),
        // An incomplete report first: the loop must send the validation errors back.
        4 => tool_call(n, tools::FINISH, &json!({"summary": "done"})),
        _ => tool_call(n, tools::FINISH, &valid_report()),
    });
    let h = Harness::start(script).await;
    let outcome = h.develop(DeveloperLimits::default()).await;

    let DeveloperOutcome::Report(report) = outcome else {
        panic!("expected a report, got {outcome:?}");
    };
    assert_eq!(report, valid_report());
    h.contracts
        .validate("implementation_report", &report)
        .unwrap();
    let calc = std::fs::read_to_string(h.repo.path().join("calc.py")).unwrap();
    assert!(calc.contains("return a + b"), "{calc}");
    assert!(
        calc.contains("return a * b"),
        "untouched lines stay: {calc}"
    );

    // What the model saw: the file, the real test run, and the validation errors.
    let requests = h.requests();
    assert_eq!(requests.len(), 6);
    let first = &requests[0];
    assert_eq!(first["messages"][0]["role"], "system");
    assert_eq!(first["tool_choice"], "required");
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "list_files",
            "read_file",
            "search",
            "write_file",
            "edit_file",
            "run_command",
            "finish"
        ]
    );
    let results = tool_results(&requests[5]);
    assert_eq!(results.len(), 5);
    assert!(
        results[0].contains("calc.py") && results[0].contains("test_calc.py"),
        "{}",
        results[0]
    );
    assert!(results[1].contains("return a - b"), "{}", results[1]);
    assert!(results[2].starts_with("edited calc.py"), "{}", results[2]);
    assert!(results[3].starts_with("exit code: 0"), "{}", results[3]);
    assert!(results[3].contains("Ran 2 tests"), "{}", results[3]);
    assert!(results[3].contains("OK"), "{}", results[3]);
    assert!(
        results[4].contains("/files_changed: required property is missing"),
        "{}",
        results[4]
    );
    // Tool results answer their calls.
    let last_tool = requests[5]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|m| m["role"] == "tool")
        .unwrap();
    assert_eq!(last_tool["tool_call_id"], "call_4");

    let events = h.tool_events().await;
    let summary: Vec<(String, String, bool)> = events
        .iter()
        .map(|e| {
            (
                e["tool"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("list_files".into(), ".".into(), true),
            ("read_file".into(), "calc.py".into(), true),
            ("edit_file".into(), "calc.py".into(), true),
            ("run_command".into(), "python3 -m unittest".into(), true),
            ("finish".into(), "implementation_report".into(), false),
            ("finish".into(), "implementation_report".into(), true),
        ]
    );
    for e in &events {
        assert_eq!(e["step"], "DEVELOPER");
        assert!(e["detail"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_ci_workflow_escalates_and_writes_nothing() {
    let script: Arc<Script> = Arc::new(|n, _body| match n {
        0 => tool_call(
            n,
            tools::WRITE,
            &json!({"path": "notes.txt", "content": "plan\n"}),
        ),
        1 => tool_call(
            n,
            tools::WRITE,
            &json!({"path": ".github/workflows/ci.yml", "content": "on: push\n"}),
        ),
        _ => tool_call(n, tools::FINISH, &valid_report()),
    });
    let h = Harness::start(script).await;
    let outcome = h.develop(DeveloperLimits::default()).await;
    let DeveloperOutcome::Escalate { reason } = outcome else {
        panic!("expected an escalation, got {outcome:?}");
    };
    assert!(reason.contains(".github/workflows/ci.yml"), "{reason}");
    assert!(reason.contains("protected"), "{reason}");
    assert!(!h.repo.path().join(".github").exists());
    assert!(h.repo.path().join("notes.txt").exists());
    assert_eq!(h.requests().len(), 2, "the loop stops at the escalation");
    let events = h.tool_events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["tool"], "write_file");
    assert_eq!(events[1]["target"], ".github/workflows/ci.yml");
    assert_eq!(events[1]["ok"], false);
    // Contents never reach the event log.
    assert!(!events[0].to_string().contains("plan"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_finishes_fails_after_max_turns() {
    let script: Arc<Script> =
        Arc::new(|n, _body| tool_call(n, tools::SEARCH, &json!({"pattern": "def "})));
    let h = Harness::start(script).await;
    let outcome = h
        .develop(DeveloperLimits {
            max_turns: 4,
            max_tokens: 1_000_000,
        })
        .await;
    let DeveloperOutcome::Failed(why) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(why.contains("no finish after 4 turns"), "{why}");
    assert_eq!(h.requests().len(), 4);
    assert_eq!(h.tool_events().await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_budget_and_text_answers_end_the_loop() {
    // 120 tokens per answer: the third answer crosses 300.
    let script: Arc<Script> = Arc::new(|n, _body| tool_call(n, tools::LIST, &json!({"path": "."})));
    let h = Harness::start(script).await;
    let outcome = h
        .develop(DeveloperLimits {
            max_turns: 40,
            max_tokens: 300,
        })
        .await;
    let DeveloperOutcome::Failed(why) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(why.contains("token budget"), "{why}");
    assert_eq!(h.requests().len(), 3);

    // Text instead of tool calls: one nudge, then failure.
    let script: Arc<Script> =
        Arc::new(|_n, _body| json!({"role": "assistant", "content": "I think the fix is easy."}));
    let h = Harness::start(script).await;
    let outcome = h.develop(DeveloperLimits::default()).await;
    let DeveloperOutcome::Invalid(why) = outcome else {
        panic!("expected an unusable answer, got {outcome:?}");
    };
    assert!(why.contains("instead of calling a tool"), "{why}");
    let requests = h.requests();
    assert_eq!(requests.len(), 2);
    let last = requests[1]["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "user");
    assert!(last["content"].as_str().unwrap().contains("call finish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_a_running_command_and_the_loop() {
    let script: Arc<Script> =
        Arc::new(|n, _body| tool_call(n, tools::RUN, &json!({"command": "python3 hang.py"})));
    let h = Harness::start(script).await;
    std::fs::write(
        h.repo.path().join("hang.py"),
        "import time\nopen('started', 'w').close()\ntime.sleep(600)\n",
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let started_file = h.repo.path().join("started");
    tokio::spawn(async move {
        // Cancel once the command is really running.
        for _ in 0..200 {
            if started_file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        trigger.cancel();
    });
    let began = std::time::Instant::now();
    let outcome = h.develop_until(DeveloperLimits::default(), &cancel).await;
    assert_eq!(outcome, DeveloperOutcome::Cancelled);
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert!(h.repo.path().join("started").exists(), "the command ran");
    assert_eq!(h.requests().len(), 1);
}
