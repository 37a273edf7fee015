//! The OpenAI-compatible proxy: `POST /v1/chat/completions` (plain, streaming, tools,
//! structured output) and `GET /v1/models`, served by the gateway, so any OpenAI client gets
//! Atlasia's routing, limits, retries, fallback, cache and budgets. Authenticated with the API
//! tokens; optional `X-Atlasia-Agent`, `X-Atlasia-Priority`, `X-Atlasia-Run` headers. Errors
//! use OpenAI's error format and statuses.

use crate::auth::{AsOperator, AsViewer};
use crate::extract::parse_json;
use crate::state::AppState;
use atlasia_llm::{
    CallMeta, ChatRequest, ChatResponse, FinishReason, GatewayError, JsonSchema, LlmError, Message,
    Role, StreamEvent, Tool, ToolCall, ToolChoice,
};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// An error in OpenAI's shape.
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
}

impl OpenAiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    fn body(&self) -> Value {
        let message = crate::error::redacted(self.message.clone());
        json!({"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<GatewayError> for OpenAiError {
    fn from(e: GatewayError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let (kind, code) = match status.as_u16() {
            402 => ("insufficient_quota", Some("budget_exceeded")),
            429 => ("rate_limit_error", Some("rate_limit_exceeded")),
            // The request is at fault (ours or the provider's 4xx, passed through).
            400..=499 => ("invalid_request_error", None),
            _ => ("api_error", Some(e.error_type())),
        };
        let code = if matches!(e, GatewayError::UnknownModel(_)) {
            Some("model_not_found")
        } else if e.context_exceeded() {
            Some("context_length_exceeded")
        } else {
            code
        };
        Self {
            status,
            kind,
            code,
            message: e.to_string(),
            param: None,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The parts of an OpenAI request we read; everything else is ignored like OpenAI-compatible
/// servers do, so clients that send extra fields keep working.
#[derive(Debug, Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    tools: Vec<WireTool>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "empty_object")]
    parameters: Value,
}

fn empty_object() -> Value {
    json!({"type": "object", "properties": {}})
}

/// Text of a message: a string, or the text parts of a content array.
fn content_text(v: Option<Value>) -> Result<Option<String>, OpenAiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(OpenAiError::invalid(
                            "only text content parts are supported",
                            Some("messages"),
                        ));
                    }
                }
            }
            Ok(Some(out))
        }
        Some(_) => Err(OpenAiError::invalid(
            "content must be a string or an array",
            Some("messages"),
        )),
    }
}

fn to_canonical(w: WireRequest) -> Result<ChatRequest, OpenAiError> {
    if w.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::invalid("only n = 1 is supported", Some("n")));
    }
    if w.messages.is_empty() {
        return Err(OpenAiError::invalid(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(w.messages.len());
    for m in w.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(OpenAiError::invalid(
                    format!("unknown role '{other}'"),
                    Some("messages"),
                ));
            }
        };
        messages.push(Message {
            role,
            content: content_text(m.content)?,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments: c.function.arguments,
                })
                .collect(),
            tool_call_id: m.tool_call_id,
        });
    }
    let tool_choice = match w.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(OpenAiError::invalid(
                    "unknown tool_choice",
                    Some("tool_choice"),
                ));
            }
        }),
        Some(v) => match v["function"]["name"].as_str() {
            Some(name) => Some(ToolChoice::Tool(name.to_owned())),
            None => {
                return Err(OpenAiError::invalid(
                    "tool_choice needs function.name",
                    Some("tool_choice"),
                ));
            }
        },
    };
    let response_format = match w.response_format {
        Some(v) if v["type"] == "json_schema" => {
            let js = &v["json_schema"];
            let (Some(name), Some(schema)) = (js["name"].as_str(), js.get("schema")) else {
                return Err(OpenAiError::invalid(
                    "json_schema needs name and schema",
                    Some("response_format"),
                ));
            };
            Some(JsonSchema {
                name: name.to_owned(),
                schema: schema.clone(),
                strict: js["strict"].as_bool().unwrap_or(false),
            })
        }
        Some(v) if v["type"] == "json_object" => Some(JsonSchema {
            name: "json_object".into(),
            schema: json!({"type": "object"}),
            strict: false,
        }),
        _ => None,
    };
    let stop = match w.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            return Err(OpenAiError::invalid(
                "stop must be a string or an array",
                Some("stop"),
            ));
        }
    };
    Ok(ChatRequest {
        model: w.model,
        messages,
        tools: w
            .tools
            .into_iter()
            .map(|t| Tool {
                name: t.function.name,
                description: t.function.description,
                parameters: t.function.parameters,
            })
            .collect(),
        tool_choice,
        response_format,
        temperature: w.temperature,
        top_p: w.top_p,
        max_tokens: w.max_completion_tokens.or(w.max_tokens),
        stop,
        seed: w.seed,
    })
}

/// The call's context from the optional `X-Atlasia-*` headers.
fn meta(headers: &HeaderMap, caller: &str) -> Result<CallMeta, OpenAiError> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let priority = match text("x-atlasia-priority") {
        None => 5,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 10)
            .ok_or_else(|| OpenAiError::invalid("X-Atlasia-Priority must be 0-10", None))?,
    };
    let agent = text("x-atlasia-agent").unwrap_or("proxy");
    if agent.is_empty()
        || agent.len() > 64
        || !agent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(OpenAiError::invalid(
            "X-Atlasia-Agent must be 1-64 letters, digits, '-', '_' or '.'",
            None,
        ));
    }
    let run_id = match text("x-atlasia-run") {
        None => None,
        Some(r) => Some(
            r.parse::<atlasia_core::RunId>()
                .map_err(|_| OpenAiError::invalid("X-Atlasia-Run must be a run id", None))?
                .to_string(),
        ),
    };
    tracing::debug!(caller, agent, "proxy call");
    Ok(CallMeta {
        agent: agent.to_owned(),
        run_id,
        priority,
        run_budget_usd: None,
        cache_opt_in: false,
        step: None,
        cheap: false,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn completion(r: &ChatResponse) -> Value {
    let tool_calls: Vec<Value> = r
        .tool_calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect();
    let mut message = json!({"role": "assistant", "content": r.content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": r.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": r.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish(r.finish_reason), "logprobs": null}],
        "usage": {
            "prompt_tokens": r.usage.input_tokens,
            "completion_tokens": r.usage.output_tokens,
            "total_tokens": r.usage.input_tokens + r.usage.output_tokens,
        },
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match chat_inner(st, &caller.name, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    st: AppState,
    caller: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OpenAiError> {
    let wire: WireRequest = parse_json(body).map_err(|e| {
        let param = match &e {
            crate::error::ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        OpenAiError::invalid(e.to_string(), param.as_deref())
    })?;
    let stream = wire.stream;
    let include_usage = wire
        .stream_options
        .as_ref()
        .and_then(|o| o["include_usage"].as_bool())
        .unwrap_or(false);
    let req = to_canonical(wire)?;
    let meta = meta(headers, caller)?;
    if !stream {
        let resp = st.gateway.chat(&meta, req).await?;
        return Ok(Json(completion(&resp)).into_response());
    }
    let model = req.model.clone();
    let events = st.gateway.chat_stream(&meta, req).await?;
    Ok(sse(events, model, include_usage))
}

/// Turns gateway events into OpenAI `chat.completion.chunk` SSE. A broken upstream stream ends
/// with an `error` chunk and no `[DONE]`, so a client can never mistake it for a full answer.
fn sse(
    events: futures::stream::BoxStream<'static, Result<StreamEvent, LlmError>>,
    model: String,
    include_usage: bool,
) -> Response {
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = unix_now();
    let chunk = move |delta: Value, finish_reason: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}]})
    };
    let first = futures::stream::once({
        let c = chunk(json!({"role": "assistant", "content": ""}), None);
        async move { c }
    });
    let chunk2 = chunk.clone();
    let body = events.flat_map(move |item| {
        let out: Vec<Value> = match item {
            Ok(StreamEvent::Text { text }) => vec![chunk2(json!({"content": text}), None)],
            Ok(StreamEvent::ToolCallDelta { index, id, name, arguments }) => {
                let mut call = json!({"index": index, "function": {"arguments": arguments}});
                if let Some(id) = id {
                    call["id"] = json!(id);
                    call["type"] = json!("function");
                }
                if let Some(name) = name {
                    call["function"]["name"] = json!(name);
                }
                vec![chunk2(json!({"tool_calls": [call]}), None)]
            }
            Ok(StreamEvent::Done { finish_reason, usage }) => {
                let mut v = vec![chunk2(json!({}), Some(finish(finish_reason)))];
                if include_usage {
                    let mut u = chunk2(json!({}), None);
                    u["choices"] = json!([]);
                    let usage = usage.unwrap_or_default();
                    u["usage"] = json!({"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                                        "total_tokens": usage.input_tokens + usage.output_tokens});
                    v.push(u);
                }
                v.push(Value::String("[DONE]".into()));
                v
            }
            Err(e) => vec![json!({"error": {"message": crate::error::redacted(e.to_string()), "type": "api_error",
                                            "code": e.kind.error_type(), "param": null}})],
        };
        futures::stream::iter(out)
    });
    let frames = first.chain(body).map(|v| {
        let data = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("data: {data}\n\n")))
    });
    let mut resp = Response::new(Body::from_stream(frames));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /v1/models`.
pub async fn models(State(st): State<AppState>, _: AsViewer) -> Json<Value> {
    let data: Vec<Value> = st
        .gateway
        .model_names()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "atlasia"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
