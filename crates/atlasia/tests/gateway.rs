//! The LLM gateway end to end: the real `atlasia serve` proxying to real `atlasia sim-llm`
//! processes over HTTP, configured only with the original `LLM_*` variables. Covers fallback on
//! a 5xx storm, the error listing every endpoint's cause, streaming with and without a cut,
//! the cache (no upstream call on a hit), budgets, records in `llm_calls`, and the metrics the
//! runbook's PromQL reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The server with the original variables pointing at `primary` (and `fallback`).
async fn server(
    db: Db,
    primary: &Sim,
    fallback: Option<&Sim>,
    extra: &[(&str, &str)],
) -> TestServer {
    let mut env: Vec<(&str, &str)> = vec![
        ("LLM_ENDPOINT", primary.base.as_str()),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-primary-key"),
        // Keep test retries fast; the behaviour is the same as with the 1 s default.
        ("ATLASIA_LLM__RETRY__BASE_MS", "10"),
    ];
    if let Some(f) = fallback {
        env.push(("LLM_FALLBACK_ENDPOINT", f.base.as_str()));
    }
    env.extend_from_slice(extra);
    TestServer::start_with(TestDb::new(db).await, &env).await
}

fn chat_body(text: &str) -> Value {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": text}]})
}

async fn metrics(srv: &TestServer) -> String {
    srv.metrics().await
}

/// Sum of the samples of `name` whose labels contain every `label="value"` given.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn plain_call_is_recorded_and_measured(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(db, &sim, None, &[]).await;
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("hello"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["model"].as_str().unwrap().contains("sim"), "{v}");
    assert!(
        v["choices"][0]["message"]["content"].as_str().is_some(),
        "{v}"
    );
    assert!(v["usage"]["total_tokens"].as_u64() > Some(0), "{v}");

    let (s, models) = srv.get("/v1/models", ADMIN_TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(models["data"][0]["id"], "sim-model");

    let m = metrics(&srv).await;
    assert_eq!(
        sum(
            &m,
            "llm_api_calls_total",
            &["outcome=\"ok\"", "provider=\"primary\""]
        ),
        1.0,
        "{m}"
    );
    assert!(sum(&m, "llm_tokens_total", &["kind=\"input\""]) > 0.0);
    assert_eq!(
        sum(&m, "llm_calls_by_agent_total", &["agent=\"proxy\""]),
        1.0
    );
    assert!(m.contains("llm_api_duration_seconds_bucket"));

    // The ledger row is written by a background task: poll for it.
    let store = srv.db.store(2).await;
    let totals = eventually(Duration::from_secs(10), || async {
        let t = store.llm_totals(None).await.unwrap();
        (t.calls == 1).then_some(t)
    })
    .await;
    assert!(totals.tokens_in > 0 && totals.tokens_out > 0, "{totals:?}");
    // The API key never reaches the log.
    assert!(!srv.log().contains("sk-test-primary-key"));
}

async fn storm_falls_back_then_reports_every_cause(db: Db) {
    let storm = Sim::start(&["--fail-first", "1000", "--fail-status", "503"]).await;
    let healthy = Sim::start(&[]).await;
    let srv = server(db, &storm, Some(&healthy), &[]).await;
    let (s, v) = srv
        .post(
            "/v1/chat/completions",
            ADMIN_TOKEN,
            &chat_body("fallback please"),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(storm.requests().await, 3, "three attempts on the primary");
    assert_eq!(healthy.requests().await, 1);
    let m = metrics(&srv).await;
    assert_eq!(
        sum(
            &m,
            "llm_api_errors_total",
            &["error_type=\"SERVER_ERROR\"", "provider=\"primary\""]
        ),
        3.0,
        "{m}"
    );
    // One ledger row per provider attempt: three failures, then the answer.
    let store = srv.db.store(2).await;
    eventually(Duration::from_secs(10), || async {
        (store.llm_totals(None).await.unwrap().calls == 4).then_some(())
    })
    .await;

    // Both down: one error naming both endpoints, in OpenAI's error format.
    let storm2 = Sim::start(&["--fail-first", "1000", "--fail-status", "502"]).await;
    let srv2 = server(db, &storm, Some(&storm2), &[]).await;
    let (s, v) = srv2
        .post(
            "/v1/chat/completions",
            ADMIN_TOKEN,
            &chat_body("nobody home"),
        )
        .await;
    assert_eq!(s, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("primary") && msg.contains("fallback"), "{msg}");
    assert!(msg.contains("503") && msg.contains("502"), "{msg}");
    assert_eq!(v["error"]["type"], "api_error");
}

async fn bad_requests_fail_at_once(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(db, &sim, None, &[]).await;
    let (s, v) = srv
        .post(
            "/v1/chat/completions",
            ADMIN_TOKEN,
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    let (s, v) = srv
        .post(
            "/v1/chat/completions",
            ADMIN_TOKEN,
            &json!({"messages": []}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(sim.requests().await, 0, "nothing reached the provider");
    let viewer = srv.token("v", "viewer").await;
    let (s, _) = srv
        .post("/v1/chat/completions", &viewer, &chat_body("x"))
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = srv
        .call(
            reqwest::Method::POST,
            "/v1/chat/completions",
            None,
            Some(&chat_body("x")),
        )
        .await;
    assert_eq!(s, 401);
}

async fn deterministic_requests_hit_the_cache(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(db, &sim, None, &[]).await;
    let mut body = chat_body("cache me");
    body["temperature"] = json!(0);
    let (s1, a) = srv.post("/v1/chat/completions", ADMIN_TOKEN, &body).await;
    let (s2, b) = srv.post("/v1/chat/completions", ADMIN_TOKEN, &body).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200));
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(
        sim.requests().await,
        1,
        "the second answer came from the cache"
    );
    let m = metrics(&srv).await;
    assert_eq!(
        sum(&m, "llm_cache_requests_total", &["result=\"hit\""]),
        1.0,
        "{m}"
    );
    // Sampling at temperature 0.7 is not deterministic: never cached.
    body["temperature"] = json!(0.7);
    srv.post("/v1/chat/completions", ADMIN_TOKEN, &body).await;
    srv.post("/v1/chat/completions", ADMIN_TOKEN, &body).await;
    assert_eq!(sim.requests().await, 3);
}

async fn daily_budget_refuses_with_402(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(
        db,
        &sim,
        None,
        &[
            ("ATLASIA_LLM__BUDGET__PER_DAY_USD", "0.000001"),
            ("ATLASIA_LLM__PRICES__SIM-MODEL__INPUT_PER_MTOK", "1000"),
            ("ATLASIA_LLM__PRICES__SIM-MODEL__OUTPUT_PER_MTOK", "1000"),
        ],
    )
    .await;
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("expensive"))
        .await;
    assert_eq!(s, 402, "{v}");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(sim.requests().await, 0);
    let m = metrics(&srv).await;
    assert_eq!(
        sum(&m, "llm_api_errors_total", &["error_type=\"BUDGET\""]),
        1.0,
        "{m}"
    );
}

/// Reads an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

async fn streams_end_with_done_or_an_error(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(db, &sim, None, &[]).await;
    let mut body = chat_body("stream this");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = srv
        .client
        .post(srv.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["usage"]["total_tokens"].as_u64() > Some(0))
    );

    // The same request without streaming gives the same text.
    let (_, plain) = srv
        .post(
            "/v1/chat/completions",
            ADMIN_TOKEN,
            &chat_body("stream this"),
        )
        .await;
    assert_eq!(plain["choices"][0]["message"]["content"], json!(text));
}

async fn retry_after_is_honoured(db: Db) {
    // The first answer is a 429 asking for 1 s; the retry waits at least that long.
    let sim = Sim::start(&[
        "--fail-first",
        "1",
        "--fail-status",
        "429",
        "--retry-after-secs",
        "1",
    ])
    .await;
    let srv = server(db, &sim, None, &[]).await;
    let started = std::time::Instant::now();
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("patience"))
        .await;
    let took = started.elapsed();
    assert_eq!(s, 200, "{v}");
    assert_eq!(sim.requests().await, 2);
    assert!(
        took >= Duration::from_millis(1000),
        "retried after only {took:?}"
    );
    let m = metrics(&srv).await;
    assert_eq!(
        sum(&m, "llm_api_errors_total", &["error_type=\"RATE_LIMIT\""]),
        1.0,
        "{m}"
    );
}

async fn open_breaker_skips_the_primary(db: Db) {
    let storm = Sim::start(&["--fail-first", "1000", "--fail-status", "500"]).await;
    let healthy = Sim::start(&[]).await;
    // One attempt per endpoint so each call is one breaker outcome.
    let srv = server(
        db,
        &storm,
        Some(&healthy),
        &[("ATLASIA_LLM__RETRY__ATTEMPTS", "1")],
    )
    .await;
    for i in 0..4 {
        let (s, v) = srv
            .post(
                "/v1/chat/completions",
                ADMIN_TOKEN,
                &chat_body(&format!("n{i}")),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    assert_eq!(storm.requests().await, 4);
    // The window now holds 4 failures out of 4: the breaker is open and the primary is skipped
    // without being contacted.
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("skip"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        storm.requests().await,
        4,
        "the open breaker sent nothing to the primary"
    );
    assert_eq!(healthy.requests().await, 5);
    let m = metrics(&srv).await;
    assert_eq!(
        sum(&m, "llm_circuit_state", &["provider=\"primary\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        sum(&m, "llm_api_errors_total", &["error_type=\"CIRCUIT_OPEN\""]),
        1.0,
        "{m}"
    );
}

async fn stream(srv: &TestServer, text: &str) -> (u16, Vec<String>) {
    let mut body = chat_body(text);
    body["stream"] = json!(true);
    let resp = srv
        .client
        .post(srv.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    // A cut upstream may end the body abruptly; what arrived is what counts.
    let text = resp.text().await.unwrap_or_default();
    (status, sse_data(&text))
}

async fn cut_streams_never_look_complete(db: Db) {
    // Cut after 2 chunks: the client sees the start, then an error event and no [DONE].
    let cutter = Sim::start(&["--fault", "cut=2"]).await;
    let srv = server(db, &cutter, None, &[]).await;
    let (status, data) = stream(&srv, "a long answer that will be cut").await;
    assert_eq!(status, 200);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{data:?}");

    // Cut before the first event: that fails over like any call.
    let dead = Sim::start(&["--fault", "cut=0"]).await;
    let healthy = Sim::start(&[]).await;
    let srv = server(
        db,
        &dead,
        Some(&healthy),
        &[("ATLASIA_LLM__RETRY__ATTEMPTS", "1")],
    )
    .await;
    let (status, data) = stream(&srv, "fail over please").await;
    assert_eq!(status, 200);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(healthy.requests().await, 1);
}

async fn anthropic_wire_round_trips_tools_and_schemas(db: Db) {
    let sim = Sim::start(&[]).await;
    let config = format!(
        "[llm]\ndefault_model = \"claude\"\n[[llm.models]]\nname = \"claude\"\n\
         [[llm.models.endpoints]]\nname = \"anthropic-sim\"\nwire = \"anthropic\"\n\
         base_url = \"{}\"\nmodel = \"claude-sonnet-4\"\napi_key = \"sk-ant-test\"\n",
        sim.base
    );
    let db_ = TestDb::new(db).await;
    std::fs::write(db_.dir.path().join("atlasia.toml"), config).unwrap();
    let srv = TestServer::start_with(db_, &[]).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "Find",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &json!({"model": "claude",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "find it"}],
            "tools": tools, "tool_choice": "required"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup", "{v}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["q"].is_string(), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let schema = json!({"type": "object", "properties": {"verdict": {"type": "string", "enum": ["pass", "fail"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["verdict", "score"]});
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &json!({"model": "claude",
            "messages": [{"role": "user", "content": "judge"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}}))
        .await;
    assert_eq!(s, 200, "{v}");
    let out: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        out["verdict"] == "pass" || out["verdict"] == "fail",
        "{out}"
    );
    assert!(
        out["score"]
            .as_f64()
            .is_some_and(|x| (0.0..=1.0).contains(&x)),
        "{out}"
    );
    assert!(!srv.log().contains("sk-ant-test"));
}

/// Where `first` and then `second` occur in `text`, in that order (panics otherwise).
fn in_order(text: &str, first: &str, second: &str) {
    let a = text
        .find(first)
        .unwrap_or_else(|| panic!("no {first} in {text}"));
    let b = text
        .find(second)
        .unwrap_or_else(|| panic!("no {second} in {text}"));
    assert!(a < b, "{first} must come before {second}: {text}");
}

/// Models fill objects in schema order, so a schema's and a tool's properties reach the
/// provider in the order the client wrote them (not sorted), on both wires, and the answer
/// keeps that order too.
async fn key_order_survives_end_to_end(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = server(db, &sim, None, &[]).await;
    let schema = json!({"type": "object", "properties": {
        "summary": {"type": "string"}, "acceptance_criteria": {"type": "array", "items": {"type": "string"}}},
        "required": ["summary", "acceptance_criteria"]});
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &json!({"model": "sim-model",
            "messages": [{"role": "user", "content": "plan it"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}}}))
        .await;
    assert_eq!(s, 200, "{v}");
    in_order(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        "\"summary\"",
        "\"acceptance_criteria\"",
    );
    let tools = json!([{"type": "function", "function": {"name": "decide",
        "parameters": {"type": "object", "properties": {"scores": {"type": "number"},
            "rationale": {"type": "string"}, "decision": {"type": "string"}},
            "required": ["scores", "rationale", "decision"]}}}]);
    let (s, v) = srv
        .post(
            "/v1/chat/completions",
            ADMIN_TOKEN,
            &json!({"model": "sim-model",
            "messages": [{"role": "user", "content": "judge"}],
            "tools": tools, "tool_choice": "required"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let args = v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    in_order(args, "\"scores\"", "\"rationale\"");
    in_order(args, "\"rationale\"", "\"decision\"");
    let bodies = sim.bodies().await;
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    in_order(&bodies[0], "\"summary\"", "\"acceptance_criteria\"");
    in_order(&bodies[1], "\"scores\"", "\"rationale\"");
    in_order(&bodies[1], "\"rationale\"", "\"decision\"");
}

/// A prompt too long for the primary's context is tried once on the fallback (never again on
/// the primary); when nothing can hold it, the client gets OpenAI's `context_length_exceeded`.
/// Such failures are the request's, so they never open the breaker.
async fn context_overflow_tries_the_next_endpoint_once(db: Db) {
    let small = Sim::start(&["--fault", "context=50"]).await;
    let big = Sim::start(&[]).await;
    let srv = server(db, &small, Some(&big), &[]).await;
    let long = "a long prompt ".repeat(40);
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body(&long))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        small.requests().await,
        1,
        "not retried on the small context"
    );
    assert_eq!(big.requests().await, 1);

    let only_small = Sim::start(&["--fault", "context=50"]).await;
    let srv2 = server(db, &only_small, None, &[]).await;
    for i in 0..6 {
        let (s, v) = srv2
            .post(
                "/v1/chat/completions",
                ADMIN_TOKEN,
                &chat_body(&format!("{long} {i}")),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("exceeds the available context size"), "{msg}");
    }
    assert_eq!(only_small.requests().await, 6, "one attempt each");
    // The breaker stayed closed: a prompt that fits is answered at once.
    let (s, v) = srv2
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("short"))
        .await;
    assert_eq!(s, 200, "{v}");
    let (status, lines) = stream(&srv2, &long).await;
    assert_eq!(status, 400, "{lines:?}");
}

/// A provider's 4xx reaches the client with its status and words, after one attempt; a
/// refused connection says which endpoint refused, at once.
async fn provider_errors_reach_the_client_as_they_are(db: Db) {
    let strict = Sim::start(&["--fault", "422"]).await;
    let srv = server(db, &strict, None, &[]).await;
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("x"))
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("HTTP 422"),
        "{v}"
    );
    assert_eq!(strict.requests().await, 1, "not retried");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let env = [
        ("LLM_ENDPOINT", nowhere.as_str()),
        ("LLM_MODEL", "sim-model"),
        ("ATLASIA_LLM__RETRY__BASE_MS", "5000"),
    ];
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let started = std::time::Instant::now();
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("x"))
        .await;
    assert_eq!(s, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("LLM endpoint {nowhere} refused the connection")),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no backoff on a refused connection"
    );
}

/// `LLM_TIMEOUT_MS` bounds each attempt (a slow CPU model needs more than the default; a test
/// less).
async fn llm_timeout_ms_bounds_each_attempt(db: Db) {
    let slow = Sim::start(&["--latency-ms", "3000"]).await;
    let srv = server(
        db,
        &slow,
        None,
        &[
            ("LLM_TIMEOUT_MS", "200"),
            ("ATLASIA_LLM__RETRY__ATTEMPTS", "1"),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let (s, v) = srv
        .post("/v1/chat/completions", ADMIN_TOKEN, &chat_body("x"))
        .await;
    assert_eq!(s, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("200ms"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{v}");
}

on_both! {
    llm_timeout => llm_timeout_ms_bounds_each_attempt;
    context_overflow => context_overflow_tries_the_next_endpoint_once;
    provider_errors => provider_errors_reach_the_client_as_they_are;
    key_order => key_order_survives_end_to_end;
    retry_after => retry_after_is_honoured;
    open_breaker => open_breaker_skips_the_primary;
    cut_streams => cut_streams_never_look_complete;
    anthropic_wire => anthropic_wire_round_trips_tools_and_schemas;
    plain_call => plain_call_is_recorded_and_measured;
    storm_fallback => storm_falls_back_then_reports_every_cause;
    bad_requests => bad_requests_fail_at_once;
    cache_hits => deterministic_requests_hit_the_cache;
    budget => daily_budget_refuses_with_402;
    streaming => streams_end_with_done_or_an_error;
}

/// The official `openai` Python package against the proxy (installed by `.ci/run`). Without it
/// the test fails unless `ATLASIA_TEST_SKIP_PYTHON=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client_drives_the_proxy() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("ATLASIA_TEST_SKIP_PYTHON").is_ok_and(|v| v == "1"),
            "python3 with the `openai` package is needed (pip install openai), or set ATLASIA_TEST_SKIP_PYTHON=1"
        );
        return;
    }
    let sim = Sim::start(&[]).await;
    let srv = server(Db::Sqlite, &sim, None, &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &srv.base, ADMIN_TOKEN, "sim-model"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
