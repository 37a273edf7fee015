//! The gateway's retry and breaker decisions against a local server answering with a real
//! provider's bytes: a failure the request caused is neither retried nor held against the
//! endpoint.

#![expect(clippy::unwrap_used, reason = "a test fails loudly")]

use std::collections::BTreeMap;
use std::sync::Arc;

use atlasia_llm::config::{EndpointSettings, LlmSettings, ModelSettings};
use atlasia_llm::{
    CallMeta, ChatRequest, ErrorKind, Gateway, GatewayError, Message, NoRecorder, Role,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn gateway(base: &str) -> Gateway {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut s = LlmSettings {
        default_model: Some("m".into()),
        models: vec![ModelSettings {
            name: "m".into(),
            endpoints: vec![EndpointSettings {
                name: Some("llama".into()),
                wire: None,
                base_url: base.into(),
                api_key: None,
                model: None,
                timeout_ms: 5_000,
                rate_limit: None,
            }],
        }],
        ..LlmSettings::default()
    };
    s.retry.base_ms = 1;
    Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap()
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
