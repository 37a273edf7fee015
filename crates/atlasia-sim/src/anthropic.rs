//! The Anthropic Messages wire: request parsing (`model`, `max_tokens`, `messages` with text,
//! `tool_use` and `tool_result` blocks, `system`, `tools`, `tool_choice`, `stream`), `message`
//! objects, the SSE sequence `message_start` → `content_block_start` → `ping` →
//! `content_block_delta`… → `content_block_stop` → `message_delta` → `message_stop`,
//! `{"type": "error", "error": {type, message}}` bodies and `anthropic-ratelimit-*` headers.

use crate::error::SimError;
use crate::pipeline::{Wire, same_secret};
use crate::ratelimit::RateSnapshot;
use crate::reply::{
    self, Chat, Finish, Format, Output, Reply, Tool, ToolChoice, ToolResult, model_label, pieces,
};
use crate::stats::Route;
use crate::stream::sse;
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The Anthropic wire.
pub(crate) struct Anthropic;

impl Wire for Anthropic {
    const ROUTE: Route = Route::Messages;
    const REQUEST_ID_HEADER: &'static str = "request-id";

    fn check_auth(headers: &HeaderMap, key: &str) -> Result<(), SimError> {
        let given = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        match given {
            None => {
                return Err(SimError::Unauthorized(
                    "x-api-key header is required".into(),
                ));
            }
            Some(k) if same_secret(k.trim(), key) => {}
            Some(_) => return Err(SimError::Unauthorized("invalid x-api-key".into())),
        }
        if !headers.contains_key("anthropic-version") {
            return Err(SimError::BadRequest {
                param: Some("anthropic-version".into()),
                message: "anthropic-version: header is required".into(),
                code: None,
            });
        }
        Ok(())
    }

    fn parse(body: &[u8]) -> Result<Chat, SimError> {
        parse(body)
    }

    fn error_body(err: &SimError, request_id: Option<&str>) -> Value {
        let kind = match err {
            SimError::BadRequest { .. }
            | SimError::MethodNotAllowed
            | SimError::ContextExceeded { .. } => "invalid_request_error",
            SimError::TooLarge(_) => "request_too_large",
            SimError::Unauthorized(_) => "authentication_error",
            SimError::NotFound(_) => "not_found_error",
            SimError::RateLimited { .. } => "rate_limit_error",
            SimError::Overloaded => "overloaded_error",
            SimError::StallEnded => "timeout_error",
            SimError::Injected(s) => match s {
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                504 => "timeout_error",
                s if *s >= 500 => "api_error",
                _ => "invalid_request_error",
            },
        };
        let message = match err {
            SimError::RateLimited { retry_after } => format!(
                "Number of requests has exceeded your rate limit (simulated by sim-llm); retry \
                 after {} s.",
                crate::ratelimit::ceil_secs(*retry_after)
            ),
            SimError::Overloaded => "Overloaded (simulated by sim-llm)".into(),
            SimError::Injected(s) => format!("Internal server error (simulated {s} by sim-llm)"),
            SimError::NotFound(what) => format!("Not found: {what}"),
            SimError::ContextExceeded { n_prompt, n_ctx } => {
                format!("prompt is too long: {n_prompt} tokens > {n_ctx} maximum")
            }
            other => other.to_string(),
        };
        let mut body = json!({"type": "error", "error": {"type": kind, "message": message}});
        if let Some(id) = request_id {
            body["request_id"] = json!(id);
        }
        body
    }

    fn rate_headers(snap: &RateSnapshot, h: &mut HeaderMap) {
        let reset = (OffsetDateTime::now_utc() + snap.reset)
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        let pairs = [
            (
                "anthropic-ratelimit-requests-limit",
                snap.limit_requests.to_string(),
            ),
            (
                "anthropic-ratelimit-requests-remaining",
                snap.remaining_requests.to_string(),
            ),
            ("anthropic-ratelimit-requests-reset", reset.clone()),
            (
                "anthropic-ratelimit-tokens-limit",
                snap.limit_tokens.to_string(),
            ),
            (
                "anthropic-ratelimit-tokens-remaining",
                snap.remaining_tokens.to_string(),
            ),
            ("anthropic-ratelimit-tokens-reset", reset),
        ];
        for (name, value) in pairs {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }

    fn render(chat: &Chat, reply: &Reply) -> Value {
        let block = match &reply.output {
            Output::Text(text) => json!({"type": "text", "text": text}),
            Output::ToolCall { name, arguments } => json!({
                "type": "tool_use",
                "id": tool_use_id(chat),
                "name": name,
                "input": as_input(arguments),
            }),
        };
        json!({
            "id": message_id(chat),
            "type": "message",
            "role": "assistant",
            "model": model_label(&chat.model),
            "content": [block],
            "stop_reason": stop_reason(reply.finish),
            "stop_sequence": null,
            "usage": usage(reply.input_tokens, reply.output_tokens),
        })
    }

    fn frames(chat: &Chat, reply: &Reply) -> Vec<Bytes> {
        let mut out = vec![message_start(chat, reply)];
        match &reply.output {
            Output::Text(text) => {
                out.push(block_start(json!({"type": "text", "text": ""})));
                out.push(ping());
                for piece in pieces(text) {
                    out.push(block_delta(json!({"type": "text_delta", "text": piece})));
                }
            }
            Output::ToolCall { name, arguments } => {
                out.push(block_start(json!({
                    "type": "tool_use",
                    "id": tool_use_id(chat),
                    "name": name,
                    "input": {},
                })));
                out.push(ping());
                for piece in pieces(&as_input(arguments).to_string()) {
                    out.push(block_delta(
                        json!({"type": "input_json_delta", "partial_json": piece}),
                    ));
                }
            }
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        out.push(event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(reply.finish), "stop_sequence": null},
                "usage": {"output_tokens": reply.output_tokens},
            }),
        ));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
        out
    }

    fn malformed_frames(chat: &Chat, reply: &Reply) -> Vec<Bytes> {
        let broken = "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"[sim-llm";
        vec![
            message_start(chat, reply),
            block_start(json!({"type": "text", "text": ""})),
            sse(Some("content_block_delta"), broken),
            event("message_stop", &json!({"type": "message_stop"})),
        ]
    }

    fn models() -> Value {
        let data: Vec<Value> = crate::openai::MODELS
            .iter()
            .map(|id| {
                json!({
                    "type": "model",
                    "id": id,
                    "display_name": format!("{id} (simulator)"),
                    "created_at": "2023-11-14T22:13:20Z",
                })
            })
            .collect();
        let first = crate::openai::MODELS.first();
        let last = crate::openai::MODELS.last();
        json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
    }
}

fn event(name: &str, data: &Value) -> Bytes {
    sse(Some(name), &data.to_string())
}

fn message_start(chat: &Chat, reply: &Reply) -> Bytes {
    event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": message_id(chat),
                "type": "message",
                "role": "assistant",
                "model": model_label(&chat.model),
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(reply.input_tokens, 1),
            },
        }),
    )
}

fn block_start(block: Value) -> Bytes {
    event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    )
}

fn block_delta(delta: Value) -> Bytes {
    event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
    )
}

fn ping() -> Bytes {
    event("ping", &json!({"type": "ping"}))
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    })
}

/// A `tool_use` input must be an object; a schema whose instance is not one gets `{}`.
fn as_input(arguments: &Value) -> Value {
    if arguments.is_object() {
        arguments.clone()
    } else {
        json!({})
    }
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCall => "tool_use",
    }
}

fn message_id(chat: &Chat) -> String {
    reply::id("msg_", &chat.digest, "message")
}

fn tool_use_id(chat: &Chat) -> String {
    reply::id("toolu_", &chat.digest, "tool_use")
}

/// Anthropic names fields with dots (`messages.0.role`) and says "Field required".
fn required(field: &str) -> SimError {
    SimError::BadRequest {
        param: Some(field.to_owned()),
        message: format!("{field}: Field required"),
        code: None,
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> SimError {
    SimError::BadRequest {
        param: Some(field.to_owned()),
        message: format!("{field}: {why}"),
        code: None,
    }
}

fn parse(body: &[u8]) -> Result<Chat, SimError> {
    let v: Value = serde_json::from_slice(body).map_err(SimError::not_json)?;
    let Some(o) = v.as_object() else {
        return Err(SimError::not_json("the body must be a JSON object"));
    };
    let model = match o.get("model") {
        None | Some(Value::Null) => return Err(required("model")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(invalid("model", "Input should be a non-empty string")),
    };
    let max_tokens = match o.get("max_tokens") {
        None | Some(Value::Null) => return Err(required("max_tokens")),
        Some(n) => match n.as_u64() {
            Some(n) if n > 0 => n,
            _ => return Err(invalid("max_tokens", "Input should be a positive integer")),
        },
    };
    let messages = match o.get("messages") {
        None | Some(Value::Null) => return Err(required("messages")),
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid("messages", "at least one message is required"));
        }
        Some(_) => return Err(invalid("messages", "Input should be a valid list")),
    };
    let stream = match o.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "Input should be a valid boolean")),
    };
    let mut input_chars = match o.get("system") {
        None | Some(Value::Null) => 0,
        Some(s) => blocks_text(s)
            .ok_or_else(|| {
                invalid(
                    "system",
                    "Input should be a string or a list of text blocks",
                )
            })?
            .chars()
            .count(),
    };
    let tools = parse_tools(o)?;
    let choice = parse_choice(o, &tools)?;

    let mut last_user = String::new();
    let mut first_user: Option<String> = None;
    let mut tool_turns = 0;
    let mut tool_names: HashMap<String, String> = HashMap::new();
    let mut tool_result = None;
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(invalid(
                &format!("messages.{i}"),
                "Input should be an object",
            ));
        };
        let role = match m.get("role") {
            None | Some(Value::Null) => return Err(required(&format!("messages.{i}.role"))),
            Some(Value::String(r)) if r == "user" || r == "assistant" => r.as_str(),
            Some(other) => {
                return Err(invalid(
                    &format!("messages.{i}.role"),
                    format!("Input should be 'user' or 'assistant', got {other}"),
                ));
            }
        };
        let blocks = match m.get("content") {
            None | Some(Value::Null) => return Err(required(&format!("messages.{i}.content"))),
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(b)) => b.clone(),
            Some(_) => {
                return Err(invalid(
                    &format!("messages.{i}.content"),
                    "Input should be a string or a list of content blocks",
                ));
            }
        };
        tool_result = None;
        let mut text = Vec::new();
        let mut calls_tools = false;
        for (j, b) in blocks.iter().enumerate() {
            let path = format!("messages.{i}.content.{j}");
            match b.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let t = b
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| required(&format!("{path}.text")))?;
                    input_chars += t.chars().count();
                    text.push(t.to_owned());
                }
                Some("tool_use") => {
                    let id = b
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| required(&format!("{path}.id")))?;
                    let name = b
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| required(&format!("{path}.name")))?;
                    tool_names.insert(id.to_owned(), name.to_owned());
                    calls_tools = true;
                    input_chars += b.get("input").map_or(0, |x| x.to_string().chars().count());
                }
                Some("tool_result") => {
                    let id = b
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| required(&format!("{path}.tool_use_id")))?;
                    let content = match b.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(c) => blocks_text(c).ok_or_else(|| {
                            invalid(
                                &format!("{path}.content"),
                                "Input should be a string or a list of blocks",
                            )
                        })?,
                    };
                    let chars = content.chars().count();
                    input_chars += chars;
                    tool_result = Some(ToolResult {
                        name: tool_names.get(id).cloned(),
                        chars,
                    });
                }
                Some(_) => {} // images, documents, thinking: no text to count
                None => return Err(required(&format!("{path}.type"))),
            }
        }
        if role == "user" && tool_result.is_none() {
            last_user = text.join("\n");
            if first_user.is_none() {
                first_user = Some(last_user.clone());
            }
        }
        if role == "assistant" {
            tool_result = None;
            if calls_tools {
                tool_turns += 1;
            }
        }
    }
    Ok(Chat {
        model,
        stream,
        include_usage: false,
        max_tokens: Some(max_tokens),
        input_chars,
        last_user,
        first_user: first_user.unwrap_or_default(),
        tool_turns,
        schema_name: None,
        tool_result,
        tools,
        choice,
        format: Format::Text,
        digest: reply::digest(&v),
    })
}

/// The text of a `system` prompt or `tool_result` content: a string or a list of blocks whose
/// text blocks count.
fn blocks_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => Some(
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

fn parse_tools(o: &Map<String, Value>) -> Result<Vec<Tool>, SimError> {
    let list = match o.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("tools", "Input should be a valid list")),
    };
    let mut tools = Vec::new();
    for (i, t) in list.iter().enumerate() {
        // Server tools (web search, code execution…) carry a versioned `type` and no schema;
        // the simulator never calls them.
        if t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|ty| ty != "custom")
        {
            continue;
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| required(&format!("tools.{i}.name")))?;
        let schema = match t.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            None | Some(Value::Null) => return Err(required(&format!("tools.{i}.input_schema"))),
            Some(_) => {
                return Err(invalid(
                    &format!("tools.{i}.input_schema"),
                    "Input should be an object",
                ));
            }
        };
        tools.push(Tool {
            name: name.to_owned(),
            schema,
        });
    }
    Ok(tools)
}

fn parse_choice(o: &Map<String, Value>, tools: &[Tool]) -> Result<ToolChoice, SimError> {
    let Some(c) = o.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(ToolChoice::Auto);
    };
    let choice = match c.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("none") => ToolChoice::None,
        Some("any") => ToolChoice::Any,
        Some("tool") => {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| required("tool_choice.name"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(invalid(
                    "tool_choice.name",
                    format!("no tool named '{name}' in 'tools'"),
                ));
            }
            ToolChoice::Named(name.to_owned())
        }
        Some(other) => {
            return Err(invalid(
                "tool_choice.type",
                format!("'{other}' is not one of auto, any, tool, none"),
            ));
        }
        None => return Err(required("tool_choice.type")),
    };
    if choice == ToolChoice::Any && tools.is_empty() {
        return Err(invalid(
            "tool_choice",
            "requires at least one tool in 'tools'",
        ));
    }
    Ok(choice)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn parse_names_missing_fields_the_anthropic_way() {
        let err = |body: &str| match parse(body.as_bytes()) {
            Err(SimError::BadRequest { param, message, .. }) => (param, message),
            other => panic!("{other:?}"),
        };
        let (p, m) = err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#);
        assert_eq!(p.as_deref(), Some("max_tokens"));
        assert_eq!(m, "max_tokens: Field required");
        let (p, _) = err(r#"{"max_tokens": 5, "messages": []}"#);
        assert_eq!(p.as_deref(), Some("model"));
        let (p, _) = err(r#"{"model": "m", "max_tokens": 5}"#);
        assert_eq!(p.as_deref(), Some("messages"));
        let (p, _) = err(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}"#,
        );
        assert_eq!(p.as_deref(), Some("messages.0.role"));
    }

    #[test]
    fn tool_result_in_the_last_user_message_is_found() {
        let body = json!({
            "model": "m", "max_tokens": 100, "system": "be brief",
            "messages": [
                {"role": "user", "content": "call grep please"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "grep", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "abc"}]}]}
            ],
            "tools": [{"name": "grep", "input_schema": {"type": "object"}}]
        });
        let chat = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(chat.last_user, "call grep please");
        assert_eq!(
            chat.tool_result,
            Some(ToolResult {
                name: Some("grep".into()),
                chars: 3
            })
        );
        assert_eq!(chat.input_chars, 8 + 16 + 2 + 3);
    }
}
