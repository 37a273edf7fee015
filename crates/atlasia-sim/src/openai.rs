//! The OpenAI Chat Completions wire: request parsing (`model`, `messages`, `tools`,
//! `tool_choice`, `response_format`, `max_tokens`/`max_completion_tokens`, `stream`,
//! `stream_options`), `chat.completion` objects, `chat.completion.chunk` streams ending in
//! `data: [DONE]`, `{"error": {message, type, param, code}}` bodies and `x-ratelimit-*` headers.

use crate::error::SimError;
use crate::pipeline::{Wire, same_secret};
use crate::ratelimit::RateSnapshot;
use crate::reply::{
    self, Chat, Finish, Format, Output, Reply, Tool, ToolChoice, ToolResult, model_label, pieces,
};
use crate::stats::Route;
use crate::stream::sse;
use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The OpenAI wire.
pub(crate) struct OpenAi;

/// The model ids `GET /v1/models` lists (any model name is accepted in requests).
pub(crate) const MODELS: [&str; 3] = ["sim-llm/fast", "sim-llm/balanced", "sim-llm/smart"];
/// A fixed "created" for the listed models, so the list never changes.
const MODELS_CREATED: u64 = 1_700_000_000;

impl Wire for OpenAi {
    const ROUTE: Route = Route::ChatCompletions;
    const REQUEST_ID_HEADER: &'static str = "x-request-id";

    fn check_auth(headers: &HeaderMap, key: &str) -> Result<(), SimError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(SimError::Unauthorized(
                "You didn't provide an API key. Provide it in the Authorization header \
                 (Authorization: Bearer YOUR_KEY)."
                    .into(),
            )),
            Some(k) if same_secret(k.trim(), key) => Ok(()),
            Some(_) => Err(SimError::Unauthorized("Incorrect API key provided.".into())),
        }
    }

    fn parse(body: &[u8]) -> Result<Chat, SimError> {
        parse(body)
    }

    fn error_body(err: &SimError, _request_id: Option<&str>) -> Value {
        if let SimError::ContextExceeded { n_prompt, n_ctx } = err {
            // Exactly as llama-server sends it (its OpenAI-compatible route).
            return json!({"error": {
                "code": 400,
                "message": err.to_string(),
                "type": "exceed_context_size_error",
                "n_prompt_tokens": n_prompt,
                "n_ctx": n_ctx,
            }});
        }
        let (kind, code): (&str, Option<&str>) = match err {
            SimError::BadRequest { code, .. } => ("invalid_request_error", *code),
            SimError::TooLarge(_) => ("invalid_request_error", Some("request_too_large")),
            SimError::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            SimError::NotFound(_) => ("invalid_request_error", Some("unknown_url")),
            SimError::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            SimError::RateLimited { .. } => ("requests", Some("rate_limit_exceeded")),
            SimError::Overloaded => ("server_error", Some("overloaded")),
            SimError::Injected(s) if *s >= 500 => ("server_error", None),
            SimError::Injected(_) => ("invalid_request_error", None),
            SimError::StallEnded => ("server_error", Some("timeout")),
            SimError::ContextExceeded { .. } => ("invalid_request_error", None),
        };
        let param = match err {
            SimError::BadRequest { param, .. } => param.clone(),
            _ => None,
        };
        json!({"error": {
            "message": message(err),
            "type": kind,
            "param": param,
            "code": code,
        }})
    }

    fn rate_headers(snap: &RateSnapshot, h: &mut HeaderMap) {
        let reset = go_duration(snap.reset);
        let pairs = [
            (
                "x-ratelimit-limit-requests",
                snap.limit_requests.to_string(),
            ),
            (
                "x-ratelimit-remaining-requests",
                snap.remaining_requests.to_string(),
            ),
            ("x-ratelimit-reset-requests", reset.clone()),
            ("x-ratelimit-limit-tokens", snap.limit_tokens.to_string()),
            (
                "x-ratelimit-remaining-tokens",
                snap.remaining_tokens.to_string(),
            ),
            ("x-ratelimit-reset-tokens", reset),
        ];
        for (name, value) in pairs {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }

    fn render(chat: &Chat, reply: &Reply) -> Value {
        let message = match &reply.output {
            Output::Text(text) => json!({
                "role": "assistant",
                "content": text,
                "refusal": null,
                "annotations": [],
            }),
            Output::ToolCall { name, arguments } => json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "annotations": [],
                "tool_calls": [{
                    "id": tool_call_id(chat),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments.to_string()},
                }],
            }),
        };
        json!({
            "id": completion_id(chat),
            "object": "chat.completion",
            "created": now_secs(),
            "model": model_label(&chat.model),
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(reply.finish),
            }],
            "usage": usage(reply),
            "system_fingerprint": "sim-llm",
        })
    }

    fn frames(chat: &Chat, reply: &Reply) -> Vec<Bytes> {
        let chunk = Chunker::new(chat);
        let mut out = Vec::new();
        match &reply.output {
            Output::Text(text) => {
                out.push(chunk.delta(json!({"role": "assistant", "content": "", "refusal": null})));
                for piece in pieces(text) {
                    out.push(chunk.delta(json!({"content": piece})));
                }
            }
            Output::ToolCall { name, arguments } => {
                out.push(chunk.delta(json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": tool_call_id(chat),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }],
                })));
                for piece in pieces(&arguments.to_string()) {
                    out.push(chunk.delta(json!({
                        "tool_calls": [{"index": 0, "function": {"arguments": piece}}],
                    })));
                }
            }
        }
        out.push(chunk.finish(reply.finish));
        if chat.include_usage {
            out.push(chunk.usage(reply));
        }
        out.push(sse(None, "[DONE]"));
        out
    }

    fn malformed_frames(chat: &Chat, _reply: &Reply) -> Vec<Bytes> {
        let chunk = Chunker::new(chat);
        let broken = format!(
            "{{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"[sim-llm",
            completion_id(chat)
        );
        vec![
            chunk.delta(json!({"role": "assistant", "content": "", "refusal": null})),
            sse(None, &broken),
            sse(None, "[DONE]"),
        ]
    }

    fn models() -> Value {
        let data: Vec<Value> = MODELS
            .iter()
            .map(|id| json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "sim-llm"}))
            .collect();
        json!({"object": "list", "data": data})
    }
}

/// The message of an error, as OpenAI would phrase it.
fn message(err: &SimError) -> String {
    match err {
        SimError::NotFound(what) => format!("Invalid URL ({what})"),
        SimError::RateLimited { retry_after } => format!(
            "Rate limit reached for requests (simulated by sim-llm). Please try again in {}.",
            go_duration(*retry_after)
        ),
        SimError::Overloaded => "The server is overloaded (simulated 529).".into(),
        SimError::Injected(s) => format!(
            "The server had an error while processing your request (simulated {s} from sim-llm)."
        ),
        other => other.to_string(),
    }
}

/// Chunks of one streamed completion: same id, created and model on each.
struct Chunker {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Chunker {
    fn new(chat: &Chat) -> Self {
        Self {
            id: completion_id(chat),
            created: now_secs(),
            model: model_label(&chat.model),
            include_usage: chat.include_usage,
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "sim-llm",
            "choices": choices,
        });
        // With include_usage every chunk has a `usage` key: null except on the last one.
        if self.include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        sse(None, &c.to_string())
    }

    fn delta(&self, delta: Value) -> Bytes {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
            None,
        )
    }

    fn finish(&self, finish: Finish) -> Bytes {
        self.chunk(
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason(finish)}]),
            None,
        )
    }

    fn usage(&self, reply: &Reply) -> Bytes {
        self.chunk(json!([]), Some(usage(reply)))
    }
}

fn usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens.saturating_add(reply.output_tokens),
    })
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCall => "tool_calls",
    }
}

fn completion_id(chat: &Chat) -> String {
    reply::id("chatcmpl-", &chat.digest, "completion")
}

fn tool_call_id(chat: &Chat) -> String {
    reply::id("call_", &chat.digest, "tool_call")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's reset format, Go-style: `250ms`, `1.5s`, `6m0s`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = |ms: u128| {
        let text = format!("{}.{:03}", ms / 1000, ms % 1000);
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    if ms < 60_000 {
        format!("{}s", secs(ms))
    } else {
        format!("{}m{}s", ms / 60_000, secs(ms % 60_000))
    }
}

fn parse(body: &[u8]) -> Result<Chat, SimError> {
    let v: Value = serde_json::from_slice(body).map_err(SimError::not_json)?;
    let Some(o) = v.as_object() else {
        return Err(SimError::not_json("the body must be a JSON object"));
    };
    let model = match o.get("model") {
        None | Some(Value::Null) => {
            return Err(SimError::BadRequest {
                param: Some("model".into()),
                message: "you must provide a model parameter".into(),
                code: Some("missing_required_parameter"),
            });
        }
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(SimError::invalid("model", "expected a non-empty string")),
    };
    let messages = match o.get("messages") {
        None | Some(Value::Null) => return Err(SimError::missing("messages")),
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(SimError::invalid(
                "messages",
                "expected at least one message",
            ));
        }
        Some(_) => return Err(SimError::invalid("messages", "expected an array")),
    };
    let stream = opt_bool(o, "stream")?;
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(SimError::invalid(
                "stream_options",
                "only allowed when 'stream' is enabled",
            ));
        }
        Some(Value::Object(so)) => opt_bool(so, "include_usage")
            .map_err(|_| SimError::invalid("stream_options.include_usage", "expected a boolean"))?,
        Some(_) => return Err(SimError::invalid("stream_options", "expected an object")),
    };
    let max_tokens = match opt_positive(o, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_positive(o, "max_tokens")?,
    };
    let tools = parse_tools(o)?;
    let choice = parse_choice(o, &tools)?;
    let (format, schema_name) = parse_format(o)?;

    let mut input_chars = 0;
    let mut last_user = String::new();
    let mut first_user: Option<String> = None;
    let mut tool_turns = 0;
    let mut call_names: HashMap<String, String> = HashMap::new();
    let mut tool_result = None;
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(SimError::invalid(
                &format!("messages[{i}]"),
                "expected an object",
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => {
                return Err(SimError::missing(&format!("messages[{i}].role")));
            }
            Some(_) => {
                return Err(SimError::invalid(
                    &format!("messages[{i}].role"),
                    "expected a string",
                ));
            }
        };
        let text = content_text(m.get("content")).ok_or_else(|| {
            SimError::invalid(
                &format!("messages[{i}].content"),
                "expected a string or an array of content parts",
            )
        })?;
        input_chars += text.chars().count();
        tool_result = None;
        match role {
            "system" | "developer" | "function" => {}
            "user" => {
                if first_user.is_none() {
                    first_user = Some(text.clone());
                }
                last_user = text;
            }
            "assistant" => {
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    if !calls.is_empty() {
                        tool_turns += 1;
                    }
                    for call in calls {
                        let f = call.get("function");
                        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                        let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str);
                        input_chars += args.map_or(0, |a| a.chars().count());
                        if let (Some(id), Some(name)) =
                            (call.get("id").and_then(Value::as_str), name)
                        {
                            call_names.insert(id.to_owned(), name.to_owned());
                        }
                    }
                }
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                tool_result = Some(ToolResult {
                    name: call_names.get(id).cloned(),
                    chars: text.chars().count(),
                });
            }
            other => {
                return Err(SimError::invalid(
                    &format!("messages[{i}].role"),
                    format!("'{other}' is not one of system, developer, user, assistant, tool"),
                ));
            }
        }
    }
    Ok(Chat {
        model,
        stream,
        include_usage,
        max_tokens,
        input_chars,
        last_user,
        first_user: first_user.unwrap_or_default(),
        tool_turns,
        schema_name,
        tool_result,
        tools,
        choice,
        format,
        digest: reply::digest(&v),
    })
}

/// The text of a message's `content`: a string, an array of parts (text parts count, others
/// such as images add nothing), or null. `None` for anything else.
fn content_text(content: Option<&Value>) -> Option<String> {
    match content {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Some(_) => None,
    }
}

fn parse_tools(o: &Map<String, Value>) -> Result<Vec<Tool>, SimError> {
    let list = match o.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(SimError::invalid("tools", "expected an array")),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let f = t
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| SimError::missing(&format!("tools[{i}].function")))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| SimError::missing(&format!("tools[{i}].function.name")))?;
            let schema = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            Ok(Tool {
                name: name.to_owned(),
                schema,
            })
        })
        .collect()
}

fn parse_choice(o: &Map<String, Value>, tools: &[Tool]) -> Result<ToolChoice, SimError> {
    let choice = match o.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Any,
            other => {
                return Err(SimError::invalid(
                    "tool_choice",
                    format!("'{other}' is not one of none, auto, required"),
                ));
            }
        },
        Some(Value::Object(c)) => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| SimError::missing("tool_choice.function.name"))?;
            ToolChoice::Named(name.to_owned())
        }
        Some(_) => {
            return Err(SimError::invalid(
                "tool_choice",
                "expected a string or an object",
            ));
        }
    };
    if matches!(choice, ToolChoice::Any | ToolChoice::Named(_)) && tools.is_empty() {
        return Err(SimError::invalid(
            "tool_choice",
            "only allowed when 'tools' are specified",
        ));
    }
    if let ToolChoice::Named(name) = &choice
        && !tools.iter().any(|t| &t.name == name)
    {
        return Err(SimError::invalid(
            "tool_choice",
            format!("no tool named '{name}' in 'tools'"),
        ));
    }
    Ok(choice)
}

/// The response format, with the name of a `json_schema` format.
fn parse_format(o: &Map<String, Value>) -> Result<(Format, Option<String>), SimError> {
    let Some(rf) = o.get("response_format").filter(|v| !v.is_null()) else {
        return Ok((Format::Text, None));
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok((Format::Text, None)),
        Some("json_object") => Ok((Format::JsonObject, None)),
        Some("json_schema") => {
            let js = rf
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| SimError::missing("response_format.json_schema"))?;
            let Some(name) = js.get("name").and_then(Value::as_str) else {
                return Err(SimError::missing("response_format.json_schema.name"));
            };
            let format = match js.get("schema") {
                Some(schema @ Value::Object(_)) => Format::JsonSchema(schema.clone()),
                None | Some(Value::Null) => Format::JsonObject,
                Some(_) => {
                    return Err(SimError::invalid(
                        "response_format.json_schema.schema",
                        "expected an object",
                    ));
                }
            };
            Ok((format, Some(name.to_owned())))
        }
        Some(other) => Err(SimError::invalid(
            "response_format.type",
            format!("'{other}' is not one of text, json_object, json_schema"),
        )),
        None => Err(SimError::missing("response_format.type")),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<bool, SimError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(SimError::invalid(key, "expected a boolean")),
    }
}

fn opt_positive(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, SimError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(SimError::invalid(key, "expected a positive integer")),
        },
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(7)), "7s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn parse_names_missing_fields() {
        let err = |body: &str| match parse(body.as_bytes()) {
            Err(SimError::BadRequest { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(err("{"), None);
        assert_eq!(err("[]"), None);
        assert_eq!(err(r#"{"messages": []}"#).as_deref(), Some("model"));
        assert_eq!(err(r#"{"model": "m"}"#).as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"model": "m", "messages": [{"content": "x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#
            )
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}"#)
                .as_deref(),
            Some("tool_choice")
        );
    }

    #[test]
    fn parse_tracks_the_tool_result_and_its_tool() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "call grep"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "grep", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "12345"}
            ],
            "tools": [{"type": "function", "function": {"name": "grep"}}]
        });
        let chat = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(chat.last_user, "call grep");
        assert_eq!(
            chat.tool_result,
            Some(ToolResult {
                name: Some("grep".into()),
                chars: 5
            })
        );
        assert_eq!(chat.input_chars, 9 + 2 + 5);
    }
}
