//! The provider adapters against local HTTP servers that answer with the providers' documented
//! bytes (OpenAI Chat Completions, Anthropic Messages): request mapping on the wire, response
//! and stream mapping, and the classification of every failure.

#![expect(clippy::unwrap_used, reason = "a test fails loudly")]

use std::time::Duration;

use atlasia_llm::provider::{Endpoint, EventStream, ProviderClient, Wire};
use atlasia_llm::{
    ChatRequest, ErrorKind, FinishReason, JsonSchema, LlmError, Message, RateHints, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, Usage,
};
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-4f9a1c7e2b8d6053";
const OPENAI_PATH: &str = "/v1/chat/completions";
const ANTHROPIC_PATH: &str = "/v1/messages";

fn client() -> ProviderClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ProviderClient::new().unwrap()
}

fn endpoint(wire: Wire, base_url: impl Into<String>) -> Endpoint {
    Endpoint {
        name: "test".into(),
        wire,
        base_url: base_url.into(),
        api_key: Some(SecretString::from(KEY)),
        model: match wire {
            Wire::OpenAi => "gpt-4o-mini".into(),
            Wire::Anthropic => "claude-sonnet-4-5".into(),
        },
        timeout: Duration::from_secs(5),
    }
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        model: "smart".into(),
        messages: vec![Message::text(Role::User, text)],
        ..ChatRequest::default()
    }
}

async fn mock(server: &MockServer, route: &str, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .mount(server)
        .await;
}

fn json_response(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

fn sse_response(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "text/event-stream")
}

/// The JSON body of the only request the server received.
async fn sent_body(server: &MockServer) -> Value {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "exactly one request");
    requests[0].body_json().unwrap()
}

async fn collect(stream: EventStream) -> Vec<Result<StreamEvent, LlmError>> {
    stream.collect().await
}

fn text_of(items: &[Result<StreamEvent, LlmError>]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(StreamEvent::Text { text }) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn last_error(items: &[Result<StreamEvent, LlmError>]) -> LlmError {
    match items.last() {
        Some(Err(e)) => e.clone(),
        other => panic!("the stream should end with an error, ended with {other:?}"),
    }
}

fn tool_tool() -> Tool {
    Tool {
        name: "get_current_weather".into(),
        description: Some("Get the current weather in a given location".into()),
        parameters: json!({
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["location"]
        }),
    }
}

/// A conversation that already went through one tool call, and asks for the next.
fn tool_conversation() -> ChatRequest {
    ChatRequest {
        model: "smart".into(),
        messages: vec![
            Message::text(Role::System, "You are a weather bot."),
            Message::text(Role::User, "Weather in Boston and Paris?"),
            Message {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![
                    ToolCall {
                        id: "call_1".into(),
                        name: "get_current_weather".into(),
                        arguments: r#"{"location":"Boston, MA"}"#.into(),
                    },
                    ToolCall {
                        id: "call_2".into(),
                        name: "get_current_weather".into(),
                        arguments: r#"{"location":"Paris"}"#.into(),
                    },
                ],
                tool_call_id: None,
            },
            Message {
                role: Role::Tool,
                content: Some("22C sunny".into()),
                tool_calls: Vec::new(),
                tool_call_id: Some("call_1".into()),
            },
            Message {
                role: Role::Tool,
                content: Some("18C rain".into()),
                tool_calls: Vec::new(),
                tool_call_id: Some("call_2".into()),
            },
        ],
        tools: vec![tool_tool()],
        tool_choice: Some(ToolChoice::Required),
        temperature: Some(0.0),
        max_tokens: Some(256),
        ..ChatRequest::default()
    }
}

fn weather_schema() -> JsonSchema {
    JsonSchema {
        name: "weather_report".into(),
        schema: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
            "required": ["city", "celsius"],
            "additionalProperties": false
        }),
        strict: true,
    }
}

// --- Documented bodies -------------------------------------------------------------------

const OPENAI_ANSWER: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {
      "cached_tokens": 0,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default"
}"#;

const OPENAI_TOOL_ANSWER: &str = r#"{
  "id": "chatcmpl-abc123",
  "object": "chat.completion",
  "created": 1699896916,
  "model": "gpt-4o-mini",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": null,
        "tool_calls": [
          {
            "id": "call_abc123",
            "type": "function",
            "function": {
              "name": "get_current_weather",
              "arguments": "{\n\"location\": \"Boston, MA\"\n}"
            }
          }
        ]
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {
    "prompt_tokens": 82,
    "completion_tokens": 17,
    "total_tokens": 99,
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  }
}"#;

const OPENAI_STREAM: &str = "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}

data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\", \"system_fingerprint\": \"fp_44709d6fcb\", \"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}

data: [DONE]

";

const OPENAI_TOOL_STREAM: &str = "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_current_weather\",\"arguments\":\"\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"location\"}}]},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}

data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}

data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":60,\"completion_tokens\":15,\"total_tokens\":75}}

data: [DONE]

";

const ANTHROPIC_ANSWER: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [
    {
      "type": "text",
      "text": "Hi! My name is Claude."
    }
  ],
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "output_tokens": 503
  }
}"#;

const ANTHROPIC_TOOL_ANSWER: &str = r#"{
  "id": "msg_01Aq9w938a90dw8q",
  "type": "message",
  "model": "claude-sonnet-4-5-20250929",
  "stop_reason": "tool_use",
  "role": "assistant",
  "content": [
    {
      "type": "text",
      "text": "I'll check the current weather in San Francisco for you."
    },
    {
      "type": "tool_use",
      "id": "toolu_01A09q90qw90lq917835lq9",
      "name": "get_current_weather",
      "input": {"location": "San Francisco, CA", "unit": "celsius"}
    }
  ],
  "usage": {"input_tokens": 472, "output_tokens": 89}
}"#;

const ANTHROPIC_STREAM: &str = "event: message_start
data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-sonnet-4-5-20250929\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"output_tokens\": 1}}}

event: content_block_start
data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}

event: ping
data: {\"type\": \"ping\"}

event: content_block_delta
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}

event: content_block_delta
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"!\"}}

event: content_block_stop
data: {\"type\": \"content_block_stop\", \"index\": 0}

event: message_delta
data: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\":null}, \"usage\": {\"output_tokens\": 15}}

event: message_stop
data: {\"type\": \"message_stop\"}

";

const ANTHROPIC_TOOL_STREAM: &str = "event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}

event: ping
data: {\"type\": \"ping\"}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", let me check.\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":0}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_current_weather\",\"input\":{}}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":1}

event: message_delta
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}

event: message_stop
data: {\"type\":\"message_stop\"}

";

const ANTHROPIC_OVERLOADED: &str = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;

// --- Base URLs ---------------------------------------------------------------------------

#[tokio::test]
async fn openai_base_url_forms_all_reach_chat_completions() {
    let client = client();
    for suffix in ["", "/", "/v1", "/v1/"] {
        let server = MockServer::start().await;
        mock(&server, OPENAI_PATH, json_response(200, OPENAI_ANSWER)).await;
        let ep = endpoint(Wire::OpenAi, format!("{}{suffix}", server.uri()));
        let (answer, _) = client.chat(&ep, &ask("hi")).await.unwrap();
        assert_eq!(
            answer.content.as_deref(),
            Some("Hello! How can I assist you today?"),
            "{suffix}"
        );
    }
    // A proxy prefix is kept (Groq's https://api.groq.com/openai/v1).
    let server = MockServer::start().await;
    mock(
        &server,
        "/openai/v1/chat/completions",
        json_response(200, OPENAI_ANSWER),
    )
    .await;
    let ep = endpoint(Wire::OpenAi, format!("{}/openai/v1", server.uri()));
    client.chat(&ep, &ask("hi")).await.unwrap();
}

#[tokio::test]
async fn anthropic_base_url_forms_all_reach_messages() {
    let client = client();
    for suffix in ["", "/", "/v1", "/v1/"] {
        let server = MockServer::start().await;
        mock(
            &server,
            ANTHROPIC_PATH,
            json_response(200, ANTHROPIC_ANSWER),
        )
        .await;
        let ep = endpoint(Wire::Anthropic, format!("{}{suffix}", server.uri()));
        let (answer, _) = client.chat(&ep, &ask("hi")).await.unwrap();
        assert_eq!(
            answer.content.as_deref(),
            Some("Hi! My name is Claude."),
            "{suffix}"
        );
    }
    let server = MockServer::start().await;
    mock(
        &server,
        "/proxy/v1/messages",
        json_response(200, ANTHROPIC_ANSWER),
    )
    .await;
    let ep = endpoint(Wire::Anthropic, format!("{}/proxy/v1", server.uri()));
    client.chat(&ep, &ask("hi")).await.unwrap();
}

// --- Plain answers -----------------------------------------------------------------------

#[tokio::test]
async fn openai_plain_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(OPENAI_PATH))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(json_response(200, OPENAI_ANSWER))
        .expect(1)
        .mount(&server)
        .await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let mut req = ask("Hello!");
    req.messages.insert(
        0,
        Message::text(Role::System, "You are a helpful assistant."),
    );
    req.max_tokens = Some(64);
    req.seed = Some(42);

    let (answer, _) = client().chat(&ep, &req).await.unwrap();
    assert_eq!(answer.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(
        answer.content.as_deref(),
        Some("Hello! How can I assist you today?")
    );
    assert!(answer.tool_calls.is_empty());
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 19,
            output_tokens: 10
        }
    );

    assert_eq!(
        sent_body(&server).await,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!"}
            ],
            "max_tokens": 64,
            "seed": 42
        })
    );
}

#[tokio::test]
async fn anthropic_plain_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ANTHROPIC_PATH))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(header("content-type", "application/json"))
        .respond_with(json_response(200, ANTHROPIC_ANSWER))
        .expect(1)
        .mount(&server)
        .await;
    let ep = endpoint(Wire::Anthropic, server.uri());
    let mut req = ask("Hello, Claude");
    req.messages
        .insert(0, Message::text(Role::System, "Be friendly."));
    req.temperature = Some(0.2);
    req.top_p = Some(0.9);
    req.stop = vec!["\n\nHuman:".into()];

    let (answer, _) = client().chat(&ep, &req).await.unwrap();
    assert_eq!(answer.id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
    assert_eq!(answer.model, "claude-sonnet-4-5-20250929");
    assert_eq!(answer.content.as_deref(), Some("Hi! My name is Claude."));
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 2095,
            output_tokens: 503
        }
    );

    let requests = server.received_requests().await.unwrap();
    assert!(requests[0].headers.get("authorization").is_none());
    assert_eq!(
        sent_body(&server).await,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": "Be friendly.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["\n\nHuman:"]
        })
    );
}

// --- Tools -------------------------------------------------------------------------------

#[tokio::test]
async fn openai_tools_round_trip() {
    let server = MockServer::start().await;
    mock(&server, OPENAI_PATH, json_response(200, OPENAI_TOOL_ANSWER)).await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let mut req = tool_conversation();
    req.tool_choice = Some(ToolChoice::Tool("get_current_weather".into()));

    let (answer, _) = client().chat(&ep, &req).await.unwrap();
    assert_eq!(answer.content, None);
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        answer.tool_calls,
        vec![ToolCall {
            id: "call_abc123".into(),
            name: "get_current_weather".into(),
            arguments: "{\n\"location\": \"Boston, MA\"\n}".into(),
        }]
    );
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 82,
            output_tokens: 17
        }
    );

    assert_eq!(
        sent_body(&server).await,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a weather bot."},
                {"role": "user", "content": "Weather in Boston and Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "22C sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "18C rain"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": tool_tool().parameters
            }}],
            "tool_choice": {"type": "function", "function": {"name": "get_current_weather"}},
            "temperature": 0.0,
            "max_tokens": 256
        })
    );
}

#[tokio::test]
async fn anthropic_tools_round_trip() {
    let server = MockServer::start().await;
    mock(
        &server,
        ANTHROPIC_PATH,
        json_response(200, ANTHROPIC_TOOL_ANSWER),
    )
    .await;
    let ep = endpoint(Wire::Anthropic, server.uri());

    let (answer, _) = client().chat(&ep, &tool_conversation()).await.unwrap();
    assert_eq!(
        answer.content.as_deref(),
        Some("I'll check the current weather in San Francisco for you.")
    );
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    assert_eq!(answer.tool_calls.len(), 1);
    assert_eq!(answer.tool_calls[0].id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(answer.tool_calls[0].name, "get_current_weather");
    let arguments: Value = serde_json::from_str(&answer.tool_calls[0].arguments).unwrap();
    assert_eq!(
        arguments,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 472,
            output_tokens: 89
        }
    );

    assert_eq!(
        sent_body(&server).await,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": "You are a weather bot.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Boston and Paris?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_current_weather", "input": {"location": "Boston, MA"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_current_weather", "input": {"location": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "22C sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "18C rain"}
                ]}
            ],
            "tools": [{
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "input_schema": tool_tool().parameters
            }],
            "tool_choice": {"type": "any"},
            "temperature": 0.0
        })
    );
}

// --- Structured output ---------------------------------------------------------------------

#[tokio::test]
async fn openai_structured_output_sends_response_format() {
    let server = MockServer::start().await;
    let answer = r#"{"id":"chatcmpl-s1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"{\"city\":\"Paris\",\"celsius\":18}","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":9,"total_tokens":49}}"#;
    mock(&server, OPENAI_PATH, json_response(200, answer)).await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let mut req = ask("Weather in Paris as JSON");
    req.response_format = Some(weather_schema());

    let (answer, _) = client().chat(&ep, &req).await.unwrap();
    assert_eq!(
        answer.content.as_deref(),
        Some(r#"{"city":"Paris","celsius":18}"#)
    );
    let body = sent_body(&server).await;
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "weather_report",
            "schema": weather_schema().schema,
            "strict": true
        }})
    );
    assert!(body.get("tools").is_none());
}

#[tokio::test]
async fn anthropic_structured_output_uses_a_forced_tool() {
    let server = MockServer::start().await;
    let answer = r#"{"id":"msg_01S","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"tool_use","id":"toolu_01S","name":"weather_report","input":{"city":"Paris","celsius":18}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":400,"output_tokens":30}}"#;
    mock(&server, ANTHROPIC_PATH, json_response(200, answer)).await;
    let ep = endpoint(Wire::Anthropic, server.uri());
    let mut req = ask("Weather in Paris as JSON");
    req.response_format = Some(weather_schema());

    let (answer, _) = client().chat(&ep, &req).await.unwrap();
    let content: Value = serde_json::from_str(answer.content.as_deref().unwrap()).unwrap();
    assert_eq!(content, json!({"city": "Paris", "celsius": 18}));
    assert!(answer.tool_calls.is_empty());
    assert_eq!(answer.finish_reason, FinishReason::Stop);

    let body = sent_body(&server).await;
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "weather_report"})
    );
    assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    assert_eq!(body["tools"][0]["name"], json!("weather_report"));
    assert_eq!(body["tools"][0]["input_schema"], weather_schema().schema);
    assert!(body.get("response_format").is_none());
}

// --- Streaming -----------------------------------------------------------------------------

#[tokio::test]
async fn openai_stream_text() {
    let server = MockServer::start().await;
    mock(&server, OPENAI_PATH, sse_response(OPENAI_STREAM)).await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let (stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
    let items = collect(stream).await;

    assert_eq!(text_of(&items), "Hello!");
    assert_eq!(
        items.last().unwrap().as_ref().unwrap(),
        &StreamEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                input_tokens: 9,
                output_tokens: 2
            }),
        }
    );
    assert_eq!(
        items
            .iter()
            .filter(|i| matches!(i, Ok(StreamEvent::Done { .. })))
            .count(),
        1
    );
    let body = sent_body(&server).await;
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn openai_stream_tool_call_deltas() {
    let server = MockServer::start().await;
    mock(&server, OPENAI_PATH, sse_response(OPENAI_TOOL_STREAM)).await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let (stream, _) = client()
        .chat_stream(&ep, &tool_conversation())
        .await
        .unwrap();
    let items: Vec<StreamEvent> = collect(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(
        items[0],
        StreamEvent::ToolCallDelta {
            index: 0,
            id: Some("call_DdmO9pD3xa9XTPNJ32zg2hcA".into()),
            name: Some("get_current_weather".into()),
            arguments: String::new(),
        }
    );
    let arguments: String = items
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments,
                ..
            } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(arguments, r#"{"location":"Paris"}"#);
    assert_eq!(
        items.last().unwrap(),
        &StreamEvent::Done {
            finish_reason: FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 60,
                output_tokens: 15
            }),
        }
    );
}

#[tokio::test]
async fn anthropic_stream_text() {
    let server = MockServer::start().await;
    mock(&server, ANTHROPIC_PATH, sse_response(ANTHROPIC_STREAM)).await;
    let ep = endpoint(Wire::Anthropic, server.uri());
    let (stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
    let items: Vec<StreamEvent> = collect(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(
        items,
        vec![
            StreamEvent::Text {
                text: "Hello".into()
            },
            StreamEvent::Text { text: "!".into() },
            StreamEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Some(Usage {
                    input_tokens: 25,
                    output_tokens: 15
                }),
            },
        ]
    );
    assert_eq!(sent_body(&server).await["stream"], json!(true));
}

#[tokio::test]
async fn anthropic_stream_tool_use_deltas() {
    let server = MockServer::start().await;
    mock(&server, ANTHROPIC_PATH, sse_response(ANTHROPIC_TOOL_STREAM)).await;
    let ep = endpoint(Wire::Anthropic, server.uri());
    let (stream, _) = client()
        .chat_stream(&ep, &tool_conversation())
        .await
        .unwrap();
    let items: Vec<StreamEvent> = collect(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(
        items,
        vec![
            StreamEvent::Text {
                text: "Okay".into()
            },
            StreamEvent::Text {
                text: ", let me check.".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()),
                name: Some("get_current_weather".into()),
                arguments: String::new(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "{\"location\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: " \"San Francisco, CA\"}".into(),
            },
            StreamEvent::Done {
                finish_reason: FinishReason::ToolCalls,
                usage: Some(Usage {
                    input_tokens: 472,
                    output_tokens: 89
                }),
            },
        ]
    );
}

#[tokio::test]
async fn anthropic_stream_structured_output_arrives_as_text() {
    let server = MockServer::start().await;
    let stream_body = "event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01K2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-haiku-4-5-20251001\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":849,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":10}}}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01KF\",\"name\":\"weather_report\",\"input\":{}}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}

event: ping
data: {\"type\":\"ping\"}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Paris\\\", \\\"celsius\\\": 18\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"}\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":0}

event: message_delta
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":47}}

event: message_stop
data: {\"type\":\"message_stop\"}

";
    mock(&server, ANTHROPIC_PATH, sse_response(stream_body)).await;
    let ep = endpoint(Wire::Anthropic, server.uri());
    let mut req = ask("Weather in Paris as JSON");
    req.response_format = Some(weather_schema());
    let (stream, _) = client().chat_stream(&ep, &req).await.unwrap();
    let items = collect(stream).await;

    let text = text_of(&items);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer, json!({"city": "Paris", "celsius": 18}));
    assert!(
        !items
            .iter()
            .any(|i| matches!(i, Ok(StreamEvent::ToolCallDelta { .. })))
    );
    assert_eq!(
        items.last().unwrap().as_ref().unwrap(),
        &StreamEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                input_tokens: 849,
                output_tokens: 47
            }),
        }
    );
}

// --- Cut streams ---------------------------------------------------------------------------

#[tokio::test]
async fn openai_stream_cut_before_finish_is_an_error() {
    let server = MockServer::start().await;
    // The body ends after "Hello", mid-way through the next event.
    let cut_at = OPENAI_STREAM.find("\"!\"").unwrap();
    mock(&server, OPENAI_PATH, sse_response(&OPENAI_STREAM[..cut_at])).await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let (mut stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    assert_eq!(text_of(&items), "Hello");
    assert_eq!(last_error(&items).kind, ErrorKind::StreamCut);
    assert!(
        stream.next().await.is_none(),
        "nothing after the final item"
    );
}

#[tokio::test]
async fn anthropic_stream_cut_before_message_stop_is_an_error() {
    // Cut after message_delta: the stop reason came, the end marker did not.
    let cut_at = ANTHROPIC_STREAM.find("event: message_stop").unwrap();
    for body in [&ANTHROPIC_STREAM[..cut_at], &ANTHROPIC_STREAM[..120]] {
        let server = MockServer::start().await;
        mock(&server, ANTHROPIC_PATH, sse_response(body)).await;
        let ep = endpoint(Wire::Anthropic, server.uri());
        let (stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
        let items = collect(stream).await;
        assert_eq!(last_error(&items).kind, ErrorKind::StreamCut);
        assert!(
            !items
                .iter()
                .any(|i| matches!(i, Ok(StreamEvent::Done { .. })))
        );
    }
}

#[tokio::test]
async fn openai_stream_missing_only_the_done_marker_still_completes() {
    let server = MockServer::start().await;
    let cut_at = OPENAI_STREAM.find("data: [DONE]").unwrap();
    mock(&server, OPENAI_PATH, sse_response(&OPENAI_STREAM[..cut_at])).await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let (stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
    let items = collect(stream).await;
    assert!(matches!(
        items.last(),
        Some(Ok(StreamEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Some(_)
        }))
    ));
}

/// A server that answers one connection with `head` and `body`, then either closes the
/// connection abruptly or holds it open, silent.
async fn raw_server(response: Vec<u8>, hold_open: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Read the whole request first, so the client is not reset mid-send.
        let mut request = Vec::new();
        let mut buf = [0_u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if request.len() >= end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        socket.write_all(&response).await.unwrap();
        socket.flush().await.unwrap();
        if hold_open {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    format!("http://{addr}")
}

fn chunked_sse(events: &str) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    out.extend_from_slice(format!("{:x}\r\n{events}\r\n", events.len()).as_bytes());
    out
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_a_stream_cut() {
    let first = "event: message_start\ndata: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude\", \"usage\": {\"input_tokens\": 25, \"output_tokens\": 1}}}\n\nevent: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hel\"}}\n\n";
    // The chunked body never gets its terminating chunk: the connection just closes.
    let base = raw_server(chunked_sse(first), false).await;
    let ep = endpoint(Wire::Anthropic, base);
    let (stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
    let items = collect(stream).await;
    assert_eq!(text_of(&items), "Hel");
    assert_eq!(last_error(&items).kind, ErrorKind::StreamCut);
}

#[tokio::test]
async fn a_stream_that_stalls_times_out() {
    let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    let base = raw_server(chunked_sse(first), true).await;
    let mut ep = endpoint(Wire::OpenAi, base);
    ep.timeout = Duration::from_millis(200);
    let (stream, _) = client().chat_stream(&ep, &ask("hi")).await.unwrap();
    let items = tokio::time::timeout(Duration::from_secs(5), collect(stream))
        .await
        .unwrap();
    assert_eq!(text_of(&items), "Hi");
    assert_eq!(last_error(&items).kind, ErrorKind::Timeout);
}

#[tokio::test]
async fn in_stream_errors_end_the_stream() {
    // OpenAI-compatible servers report a failure after the 200 as an error chunk.
    let server = MockServer::start().await;
    let body = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    mock(&server, OPENAI_PATH, sse_response(body)).await;
    let (stream, _) = client()
        .chat_stream(&endpoint(Wire::OpenAi, server.uri()), &ask("hi"))
        .await
        .unwrap();
    let items = collect(stream).await;
    assert_eq!(text_of(&items), "Hi");
    let e = last_error(&items);
    assert_eq!(e.kind, ErrorKind::ServerError);
    assert!(e.message.contains("The server had an error"));

    // Anthropic sends `event: error`.
    let server = MockServer::start().await;
    let cut_at = ANTHROPIC_STREAM.find("event: content_block_stop").unwrap();
    let body = format!(
        "{}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n",
        &ANTHROPIC_STREAM[..cut_at]
    );
    mock(&server, ANTHROPIC_PATH, sse_response(&body)).await;
    let (stream, _) = client()
        .chat_stream(&endpoint(Wire::Anthropic, server.uri()), &ask("hi"))
        .await
        .unwrap();
    let items = collect(stream).await;
    assert_eq!(text_of(&items), "Hello!");
    let e = last_error(&items);
    assert_eq!((e.kind, e.status), (ErrorKind::ServerError, Some(529)));
    assert!(e.is_retryable());
}

// --- Error classification ------------------------------------------------------------------

#[tokio::test]
async fn rate_limited_with_retry_after_seconds() {
    let server = MockServer::start().await;
    let body = r#"{
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "type": "requests",
        "param": null,
        "code": "rate_limit_exceeded"
    }
}"#;
    mock(
        &server,
        OPENAI_PATH,
        json_response(429, body)
            .insert_header("retry-after", "2")
            .insert_header("x-ratelimit-limit-requests", "3")
            .insert_header("x-ratelimit-remaining-requests", "0")
            .insert_header("x-ratelimit-reset-requests", "20s"),
    )
    .await;
    let ep = endpoint(Wire::OpenAi, server.uri());
    let (e, hints) = client().chat(&ep, &ask("hi")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimit);
    assert_eq!(e.status, Some(429));
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    assert!(e.message.contains("rate_limit_exceeded") && e.message.contains("Rate limit reached"));
    assert_eq!(hints.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(hints.remaining_requests, Some(0));
    assert_eq!(hints.reset_requests, Some(Duration::from_secs(20)));

    // The streaming call classifies its refusal the same way, hints included.
    let (e, hints) = match client().chat_stream(&ep, &ask("hi")).await {
        Err(failure) => failure,
        Ok(_) => panic!("a 429 must fail the streaming call"),
    };
    assert_eq!(e.kind, ErrorKind::RateLimit);
    assert_eq!(hints.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn rate_limited_with_retry_after_ms() {
    let server = MockServer::start().await;
    mock(
        &server,
        ANTHROPIC_PATH,
        json_response(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_01"}"#,
        )
        .insert_header("retry-after-ms", "1500")
        .insert_header("retry-after", "9"),
    )
    .await;
    let ep = endpoint(Wire::Anthropic, server.uri());
    let (e, hints) = client().chat(&ep, &ask("hi")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimit);
    assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
    assert_eq!(hints.retry_after, Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn service_unavailable_is_a_retryable_server_error() {
    let server = MockServer::start().await;
    mock(
        &server,
        OPENAI_PATH,
        json_response(
            503,
            r#"{"error":{"message":"The engine is currently overloaded, please try again later.","type":"server_error","param":null,"code":null}}"#,
        ),
    )
    .await;
    let (e, _) = client()
        .chat(&endpoint(Wire::OpenAi, server.uri()), &ask("hi"))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::ServerError, Some(503)));
    assert!(e.is_retryable() && e.tries_next_endpoint());
    assert!(e.message.contains("currently overloaded"));
}

#[tokio::test]
async fn anthropic_overloaded_529() {
    let server = MockServer::start().await;
    mock(
        &server,
        ANTHROPIC_PATH,
        json_response(529, ANTHROPIC_OVERLOADED),
    )
    .await;
    let (e, _) = client()
        .chat(&endpoint(Wire::Anthropic, server.uri()), &ask("hi"))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::ServerError, Some(529)));
    assert_eq!(e.message, "overloaded_error: Overloaded");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn unauthorized_is_auth_and_never_shows_the_key() {
    let server = MockServer::start().await;
    // A careless proxy echoing the whole key back.
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
    );
    mock(&server, OPENAI_PATH, json_response(401, &body)).await;
    let (e, _) = client()
        .chat(&endpoint(Wire::OpenAi, server.uri()), &ask("hi"))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Auth, Some(401)));
    assert!(!e.is_retryable() && e.tries_next_endpoint());
    assert!(e.message.contains("Incorrect API key provided: [redacted]"));
    assert!(!e.to_string().contains(KEY));
    assert!(!format!("{e:?}").contains(KEY));
}

#[tokio::test]
async fn context_length_is_classified_on_both_wires() {
    let server = MockServer::start().await;
    mock(
        &server,
        OPENAI_PATH,
        json_response(
            400,
            r#"{
  "error": {
    "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130011 tokens. Please reduce the length of the messages.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded"
  }
}"#,
        ),
    )
    .await;
    let (e, _) = client()
        .chat(&endpoint(Wire::OpenAi, server.uri()), &ask("hi"))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::ContextLength, Some(400)));
    // Another endpoint may have a larger context; this one is never asked again.
    assert!(e.tries_next_endpoint() && !e.is_retryable());

    let server = MockServer::start().await;
    mock(
        &server,
        ANTHROPIC_PATH,
        json_response(
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"},"request_id":"req_02"}"#,
        ),
    )
    .await;
    let (e, _) = client()
        .chat(&endpoint(Wire::Anthropic, server.uri()), &ask("hi"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextLength);
}

#[tokio::test]
async fn a_malformed_success_body_is_malformed() {
    for (wire, route, body) in [
        (
            Wire::OpenAi,
            OPENAI_PATH,
            "<html>upstream maintenance</html>",
        ),
        (
            Wire::OpenAi,
            OPENAI_PATH,
            r#"{"id":"x","object":"chat.completion","choices":[]}"#,
        ),
        (
            Wire::Anthropic,
            ANTHROPIC_PATH,
            r#"{"id":"msg","type":"message","content":"not blocks"}"#,
        ),
    ] {
        let server = MockServer::start().await;
        mock(&server, route, json_response(200, body)).await;
        let (e, _) = client()
            .chat(&endpoint(wire, server.uri()), &ask("hi"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed, "{body}");
    }
}

#[tokio::test]
async fn rate_limit_headers_become_hints() {
    let server = MockServer::start().await;
    mock(
        &server,
        OPENAI_PATH,
        json_response(200, OPENAI_ANSWER)
            .insert_header("x-ratelimit-limit-requests", "60")
            .insert_header("x-ratelimit-limit-tokens", "150000")
            .insert_header("x-ratelimit-remaining-requests", "59")
            .insert_header("x-ratelimit-remaining-tokens", "149984")
            .insert_header("x-ratelimit-reset-requests", "1s")
            .insert_header("x-ratelimit-reset-tokens", "6m0s"),
    )
    .await;
    let (_, hints) = client()
        .chat(&endpoint(Wire::OpenAi, server.uri()), &ask("hi"))
        .await
        .unwrap();
    assert_eq!(
        hints,
        RateHints {
            remaining_requests: Some(59),
            remaining_tokens: Some(149_984),
            reset_requests: Some(Duration::from_secs(1)),
            reset_tokens: Some(Duration::from_secs(360)),
            retry_after: None,
        }
    );

    // Anthropic's resets are instants; 30 s from now reads as about 30 s.
    let reset = httpdate_free_rfc3339(std::time::SystemTime::now() + Duration::from_secs(30));
    let server = MockServer::start().await;
    mock(
        &server,
        ANTHROPIC_PATH,
        json_response(200, ANTHROPIC_ANSWER)
            .insert_header("anthropic-ratelimit-requests-limit", "50")
            .insert_header("anthropic-ratelimit-requests-remaining", "49")
            .insert_header("anthropic-ratelimit-requests-reset", reset.as_str())
            .insert_header("anthropic-ratelimit-tokens-limit", "40000")
            .insert_header("anthropic-ratelimit-tokens-remaining", "38000")
            .insert_header("anthropic-ratelimit-tokens-reset", reset.as_str()),
    )
    .await;
    let (_, hints) = client()
        .chat(&endpoint(Wire::Anthropic, server.uri()), &ask("hi"))
        .await
        .unwrap();
    assert_eq!(hints.remaining_requests, Some(49));
    assert_eq!(hints.remaining_tokens, Some(38_000));
    for reset in [hints.reset_requests.unwrap(), hints.reset_tokens.unwrap()] {
        assert!(
            reset > Duration::from_secs(25) && reset <= Duration::from_secs(30),
            "{reset:?}"
        );
    }
}

/// Formats an instant as RFC 3339 UTC, without a date crate.
fn httpdate_free_rfc3339(when: std::time::SystemTime) -> String {
    let secs = when
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// --- Transport failures --------------------------------------------------------------------

#[tokio::test]
async fn connection_refused_is_unreachable_and_names_the_endpoint() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let ep = endpoint(Wire::OpenAi, format!("http://127.0.0.1:{port}"));
    let (e, hints) = client().chat(&ep, &ask("hi")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert_eq!(
        e.message,
        format!("LLM endpoint http://127.0.0.1:{port} refused the connection")
    );
    assert_eq!(hints, RateHints::default());
    assert!(
        !e.is_retryable(),
        "a refused connection is not a passing outage"
    );
    assert!(e.tries_next_endpoint());
    let (e, _) = match client()
        .chat_stream(&endpoint(Wire::Anthropic, ep.base_url.clone()), &ask("hi"))
        .await
    {
        Err(failure) => failure,
        Ok(_) => panic!("nothing listens there"),
    };
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
}

#[tokio::test]
async fn a_server_slower_than_the_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    mock(
        &server,
        OPENAI_PATH,
        json_response(200, OPENAI_ANSWER).set_delay(Duration::from_secs(3)),
    )
    .await;
    let mut ep = endpoint(Wire::OpenAi, server.uri());
    ep.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let (e, _) = client().chat(&ep, &ask("hi")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));

    let server = MockServer::start().await;
    mock(
        &server,
        ANTHROPIC_PATH,
        sse_response(ANTHROPIC_STREAM).set_delay(Duration::from_secs(3)),
    )
    .await;
    let mut ep = endpoint(Wire::Anthropic, server.uri());
    ep.timeout = Duration::from_millis(200);
    let (e, _) = match client().chat_stream(&ep, &ask("hi")).await {
        Err(failure) => failure,
        Ok(_) => panic!("the first byte comes too late"),
    };
    assert_eq!(e.kind, ErrorKind::Timeout);
}

#[tokio::test]
async fn the_key_never_appears_in_any_error() {
    let client = client();
    let echo = format!(r#"{{"error":{{"message":"bad key {KEY}","type":"x"}}}}"#);
    let mut errors: Vec<LlmError> = Vec::new();
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        for status in [400_u16, 401, 403, 429, 500, 503] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(json_response(status, &echo))
                .mount(&server)
                .await;
            let ep = endpoint(wire, server.uri());
            errors.push(client.chat(&ep, &ask("hi")).await.unwrap_err().0);
            if let Err((e, _)) = client.chat_stream(&ep, &ask("hi")).await {
                errors.push(e);
            }
        }
        // An error inside a 200 stream.
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(sse_response(&format!(
                "data: {echo}\n\nevent: error\ndata: {echo}\n\n"
            )))
            .mount(&server)
            .await;
        let (stream, _) = client
            .chat_stream(&endpoint(wire, server.uri()), &ask("hi"))
            .await
            .unwrap();
        errors.extend(collect(stream).await.into_iter().filter_map(Result::err));
        // A base URL carrying the key, unreachable.
        let mut ep = endpoint(wire, format!("http://user:{KEY}@127.0.0.1:9/v1"));
        ep.timeout = Duration::from_millis(500);
        errors.push(client.chat(&ep, &ask("hi")).await.unwrap_err().0);
    }
    assert!(errors.len() >= 26);
    for e in errors {
        assert!(!e.to_string().contains(KEY), "{e}");
        assert!(!format!("{e:?}").contains(KEY), "{e:?}");
    }
}
