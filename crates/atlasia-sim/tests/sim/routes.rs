//! Every route, both auth modes, determinism, `max_tokens`, 400s on bad input, `/sim/stats`.

use crate::common::*;
use atlasia_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn health_models_and_unknown_routes() {
    let sim = Sim::start().await;
    let r = sim.client.get(sim.url("/health")).send().await.unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");

    let r = sim.client.get(sim.url("/v1/models")).send().await.unwrap();
    let (status, h, body) = parts(r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert!(
        ids.len() >= 2 && ids.iter().all(|i| i.starts_with("sim-llm/")),
        "{ids:?}"
    );
    header(&h, "x-ratelimit-limit-requests");

    // The same route answers in Anthropic's list format to Anthropic clients.
    let r = sim
        .client
        .get(sim.url("/v1/models"))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .send()
        .await
        .unwrap();
    let (_, h, body) = parts(r).await;
    assert_eq!(body["data"][0]["type"], "model");
    assert_eq!(body["has_more"], false);
    header(&h, "anthropic-ratelimit-requests-limit");

    let r = sim.client.get(sim.url("/v1/nothing")).send().await.unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let r = sim
        .client
        .get(sim.url("/v1/messages"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["type"], "error");
}

#[tokio::test]
async fn openai_text_answer_has_the_chat_completion_shape() {
    let sim = Sim::start().await;
    let req = openai_body("What is the capital of France?");
    let (status, h, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "sim-llm/gpt-4o-mini");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("[sim-llm] "), "{content}");
    assert!(
        content.contains("What is the capital of France?"),
        "{content}"
    );
    let input_chars = "You are terse.".len() + "What is the capital of France?".len();
    assert_eq!(body["usage"]["prompt_tokens"], tokens(input_chars));
    assert_eq!(
        body["usage"]["completion_tokens"],
        tokens(content.chars().count())
    );
    assert_eq!(
        body["usage"]["total_tokens"].as_u64().unwrap(),
        body["usage"]["prompt_tokens"].as_u64().unwrap()
            + body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for name in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-request-id",
    ] {
        header(&h, name);
    }
    let limit: u64 = header(&h, "x-ratelimit-limit-requests").parse().unwrap();
    let left: u64 = header(&h, "x-ratelimit-remaining-requests")
        .parse()
        .unwrap();
    assert_eq!(left, limit - 1);
    assert!(header(&h, "content-type").starts_with("application/json"));
}

#[tokio::test]
async fn anthropic_text_answer_has_the_message_shape() {
    let sim = Sim::start().await;
    let req = anthropic_body("Summarise the issue");
    let (status, h, body) = parts(sim.anthropic(&req, &[]).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["model"], "sim-llm/claude-sonnet-4");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["content"][0]["type"], "text");
    let text = body["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("[sim-llm] ") && text.contains("Summarise the issue"));
    let input_chars = "You are terse.".len() + "Summarise the issue".len();
    assert_eq!(body["usage"]["input_tokens"], tokens(input_chars));
    assert_eq!(body["usage"]["output_tokens"], tokens(text.chars().count()));
    for name in [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        "request-id",
    ] {
        header(&h, name);
    }
    // The reset is an RFC 3339 instant.
    assert!(header(&h, "anthropic-ratelimit-requests-reset").ends_with('Z'));
}

#[tokio::test]
async fn the_same_request_gets_the_same_answer() {
    let sim = Sim::start().await;
    let req = openai_body("determinism please");
    let a = sim.openai(&req, &[]).await.text().await.unwrap();
    let b = sim.openai(&req, &[]).await.text().await.unwrap();
    let a: Value = serde_json::from_str(&a).unwrap();
    let b: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(without_created(a.clone()), without_created(b));
    // Another simulator instance says the same.
    let other = Sim::start().await;
    let c: Value = other.openai(&req, &[]).await.json().await.unwrap();
    assert_eq!(without_created(a.clone()), without_created(c));
    // A different question, a different answer and id.
    let d: Value = sim
        .openai(&openai_body("something else"), &[])
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(a["id"], d["id"]);
    assert_ne!(a["choices"], d["choices"]);

    // Anthropic messages carry no timestamp: byte for byte.
    let req = anthropic_body("determinism please");
    let a = sim.anthropic(&req, &[]).await.bytes().await.unwrap();
    let b = sim.anthropic(&req, &[]).await.bytes().await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn openai_auth_needs_the_bearer_key() {
    let sim = Sim::with(SimConfig {
        api_key: Some("sk-sim-123".into()),
        ..SimConfig::default()
    })
    .await;
    let req = openai_body("hi");
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("x-api-key", "sk-sim-123")],
    ] {
        let (status, _, body) = parts(sim.openai(&req, &headers).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(body["error"]["message"].is_string());
        assert_eq!(body["error"]["param"], Value::Null);
    }
    let ok = sim
        .openai(&req, &[("authorization", "Bearer sk-sim-123")])
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let models = sim.client.get(sim.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anthropic_auth_needs_the_x_api_key_and_a_version() {
    let sim = Sim::with(SimConfig {
        api_key: Some("sk-ant-sim".into()),
        ..SimConfig::default()
    })
    .await;
    let req = anthropic_body("hi");
    for headers in [
        vec![],
        vec![("x-api-key", "nope")],
        vec![("authorization", "Bearer sk-ant-sim")],
    ] {
        let (status, _, body) = parts(sim.anthropic(&req, &headers).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["message"].is_string());
    }
    // Right key, no anthropic-version header.
    let r = sim
        .client
        .post(sim.url("/v1/messages"))
        .header("x-api-key", "sk-ant-sim")
        .json(&req)
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );
    let ok = sim.anthropic(&req, &[("x-api-key", "sk-ant-sim")]).await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn openai_bad_input_is_a_400_naming_the_field() {
    let sim = Sim::start().await;
    let raw = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(raw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": "hello"}), "messages"),
        (
            json!({"model": "m", "messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name",
        ),
    ];
    for (req, field) in cases {
        let (status, _, body) = parts(sim.openai(&req, &[]).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{req}");
        assert_eq!(body["error"]["param"], field, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field.split('[').next().unwrap())
        );
    }
}

#[tokio::test]
async fn anthropic_bad_input_is_a_400_naming_the_field() {
    let sim = Sim::start().await;
    let raw = sim
        .client
        .post(sim.url("/v1/messages"))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .body("[1, 2")
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(raw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let cases = [
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!({"model": "m", "max_tokens": 5}), "messages"),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user"}]}),
            "messages.0.content",
        ),
    ];
    for (req, field) in cases {
        let (status, _, body) = parts(sim.anthropic(&req, &[]).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{req}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{field} not named in: {msg}");
    }
}

#[tokio::test]
async fn max_tokens_cuts_the_answer() {
    let sim = Sim::start().await;
    let mut req = openai_body("a question long enough to need more than three tokens");
    req["max_tokens"] = json!(3);
    let (_, _, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "[sim-llm] Si");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    let mut req = anthropic_body("a question long enough to need more than three tokens");
    req["max_tokens"] = json!(3);
    let (_, _, body) = parts(sim.anthropic(&req, &[]).await).await;
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["content"][0]["text"], "[sim-llm] Si");
    assert_eq!(body["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn stats_count_requests_per_route_and_faults() {
    let sim = Sim::start().await;
    let before = sim.stats().await;
    assert_eq!(before["requests_total"], 0);
    sim.openai(&openai_body("a"), &[]).await;
    sim.openai(&openai_body("b"), &[("x-sim-fault", "503")])
        .await;
    sim.anthropic(&anthropic_body("c"), &[]).await;
    sim.client.get(sim.url("/v1/models")).send().await.unwrap();
    sim.client.get(sim.url("/health")).send().await.unwrap();
    let s = sim.stats().await;
    assert_eq!(s["simulator"], "sim-llm");
    assert_eq!(s["requests_total"], 5);
    assert_eq!(s["routes"]["chat_completions"], 2);
    assert_eq!(s["routes"]["messages"], 1);
    assert_eq!(s["routes"]["models"], 1);
    assert_eq!(s["routes"]["health"], 1);
    assert_eq!(s["answers"], 2);
    assert_eq!(s["faults_injected"], 1);
    assert_eq!(s["faults"]["503"], 1);
    // Reading the stats is not counted.
    assert_eq!(sim.stats().await["requests_total"], 5);
}
