//! The gateway's retry and breaker decisions, probes and timeouts against local servers
//! answering with real providers' bytes: a failure the request caused is neither retried nor
//! held against the endpoint; a probe tells refused, bad key and wrong path apart and learns
//! the context size; per-agent timeouts apply.

#![expect(clippy::unwrap_used, reason = "a test fails loudly")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlasia_llm::config::{AgentSettings, EndpointSettings, LlmSettings, ModelSettings};
use atlasia_llm::{
    CallMeta, ChatRequest, ErrorKind, Gateway, GatewayError, Message, NoRecorder, ProbeResult, Role,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn endpoint(name: &str, base: &str) -> EndpointSettings {
    EndpointSettings {
        name: Some(name.into()),
        wire: None,
        base_url: base.into(),
        api_key: None,
        model: None,
        timeout_ms: 5_000,
        rate_limit: None,
    }
}

fn settings(endpoints: Vec<EndpointSettings>) -> LlmSettings {
    let mut s = LlmSettings {
        default_model: Some("m".into()),
        models: vec![ModelSettings {
            name: "m".into(),
            endpoints,
        }],
        ..LlmSettings::default()
    };
    s.retry.base_ms = 1;
    s
}

fn gateway(base: &str) -> Gateway {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = settings(vec![endpoint("llama", base)]);
    Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap()
}

fn closed_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

fn ask() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::User, "hi")],
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn a_500_caused_by_the_request_is_not_retried_and_keeps_the_breaker_closed() {
    let server = MockServer::start().await;
    // llama-server's answer to a `tool_choice` it cannot parse.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(500).set_body_string(
            r#"{"error":{"code":500,"message":"Invalid tool_choice: {\"type\":\"function\"}","type":"server_error"}}"#,
        ))
        .mount(&server)
        .await;
    let g = gateway(&server.uri());
    let meta = CallMeta::default();
    // More calls than the breaker's minimum: were they counted, it would open.
    for _ in 0..6 {
        match g.chat(&meta, ask()).await.unwrap_err() {
            GatewayError::Rejected { error, .. } => {
                assert_eq!(error.kind, ErrorKind::BadRequest, "{error}");
                assert_eq!(error.status, Some(500));
                assert!(error.message.contains("Invalid tool_choice"), "{error}");
            }
            other => panic!("expected a rejection, got {other}"),
        }
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests.len(),
        6,
        "one attempt per call, never CIRCUIT_OPEN"
    );
}

#[tokio::test]
async fn a_passing_500_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(500).set_body_string(
            r#"{"error":{"code":500,"message":"slot unavailable","type":"server_error"}}"#,
        ))
        .mount(&server)
        .await;
    let g = gateway(&server.uri());
    let err = g.chat(&CallMeta::default(), ask()).await.unwrap_err();
    assert!(matches!(err, GatewayError::AllFailed { .. }), "{err}");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn probe_tells_the_failures_apart_and_learns_the_context_size() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let llama = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            r#"{"object":"list","data":[{"id":"m","object":"model","owned_by":"llamacpp","meta":{"n_ctx":2048,"n_ctx_train":8192}}]}"#,
        ))
        .mount(&llama)
        .await;
    let locked = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_string(
            r#"{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}"#,
        ))
        .mount(&locked)
        .await;
    let empty = MockServer::start().await;
    let nowhere = closed_port();
    let s = settings(vec![
        endpoint("llama", &llama.uri()),
        endpoint("nowhere", &nowhere),
        endpoint("locked", &locked.uri()),
        endpoint("empty", &format!("{}/v1", empty.uri())),
    ]);
    let g = Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();
    let meta = CallMeta::default();
    assert_eq!(
        g.context_tokens(&meta, ""),
        None,
        "unknown before the probe"
    );
    let probes = g.probe().await;
    let result = |name: &str| {
        probes
            .iter()
            .find(|p| p.endpoint == name)
            .unwrap()
            .result
            .clone()
    };
    assert_eq!(result("llama"), ProbeResult::Ok);
    assert_eq!(result("nowhere"), ProbeResult::Refused);
    assert!(matches!(result("locked"), ProbeResult::Auth(m) if m.contains("Invalid API Key")));
    assert_eq!(result("empty"), ProbeResult::NotFound);
    let refused = probes.iter().find(|p| p.endpoint == "nowhere").unwrap();
    assert_eq!(
        refused.to_string(),
        format!("LLM endpoint {nowhere} (nowhere) refused the connection")
    );
    assert_eq!(
        g.context_tokens(&meta, ""),
        Some(2048),
        "read from /v1/models"
    );
    assert_eq!(g.context_tokens(&meta, "no-such-model"), None);

    // A configured size wins over what the endpoint reports.
    let mut s = settings(vec![endpoint("llama", &llama.uri())]);
    s.context_tokens = Some(1000);
    let g = Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();
    assert_eq!(g.context_tokens(&meta, ""), Some(1000));
    g.probe().await;
    assert_eq!(g.context_tokens(&meta, ""), Some(1000));
    s.endpoint_context_tokens.insert("llama".into(), 500);
    let g = Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();
    assert_eq!(
        g.context_tokens(&meta, ""),
        Some(500),
        "per endpoint over [llm]"
    );
}

#[tokio::test]
async fn timeouts_come_from_the_agent_then_the_llm_section_then_the_endpoint() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(600))
                .set_body_string(
                    r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
                ),
        )
        .mount(&slow)
        .await;
    let mut s = settings(vec![endpoint("slow", &slow.uri())]);
    s.retry.attempts = 1;
    let mut agents = BTreeMap::new();
    agents.insert(
        "hasty".to_owned(),
        AgentSettings {
            timeout_ms: Some(100),
            ..AgentSettings::default()
        },
    );
    let g = Gateway::new(&s, agents.clone(), Arc::new(NoRecorder)).unwrap();
    let hasty = CallMeta {
        agent: "hasty".into(),
        ..CallMeta::default()
    };
    let patient = CallMeta {
        agent: "developer".into(),
        ..CallMeta::default()
    };
    let timed_out = |e: GatewayError| match e {
        GatewayError::AllFailed { causes, .. } => causes[0].1.kind == ErrorKind::Timeout,
        _ => false,
    };
    assert!(timed_out(g.chat(&hasty, ask()).await.unwrap_err()));
    assert!(g.chat(&patient, ask()).await.is_ok(), "the endpoint's 5 s");
    s.timeout_ms = Some(100);
    let g = Gateway::new(&s, agents, Arc::new(NoRecorder)).unwrap();
    assert!(
        timed_out(g.chat(&patient, ask()).await.unwrap_err()),
        "llm.timeout_ms"
    );
}
