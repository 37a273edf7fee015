//! The Anthropic Messages wire: the canonical (OpenAI-shaped) conversation rewritten into
//! Anthropic's turns and content blocks, structured output emulated with a forced tool, and the
//! streaming translation of `message_start` … `message_stop` events.

use std::collections::{HashMap, VecDeque};

use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::sse::SseEvent;
use super::{Endpoint, Translator, cut, describe_error_value, secret_header};
use crate::{
    ChatRequest, ChatResponse, ErrorKind, FinishReason, LlmError, Role, StreamEvent, ToolCall,
    ToolChoice, Usage,
};

/// The API version the mapping is written against.
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic requires `max_tokens`; this is used when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

pub(crate) fn headers(ep: &Endpoint) -> Result<HeaderMap, LlmError> {
    let mut headers = HeaderMap::new();
    headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    if let Some(key) = &ep.api_key {
        headers.insert("x-api-key", secret_header(key.expose_secret())?);
    }
    Ok(headers)
}

pub(crate) fn request_body(
    ep: &Endpoint,
    req: &ChatRequest,
    stream: bool,
) -> Result<Value, LlmError> {
    let conversation = conversation(req)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(ep.model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(system) = conversation.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(conversation.turns));

    let mut tools: Vec<Value> = Vec::new();
    let mut tool_choice: Option<Value> = None;
    if !req.tools.is_empty() {
        let declared = || {
            req.tools
                .iter()
                .map(|tool| {
                    let mut out = Map::new();
                    out.insert("name".into(), json!(tool.name));
                    if let Some(description) = &tool.description {
                        out.insert("description".into(), json!(description));
                    }
                    out.insert("input_schema".into(), tool.parameters.clone());
                    Value::Object(out)
                })
                .collect::<Vec<_>>()
        };
        match &req.tool_choice {
            // "None" is expressed by not offering tools — unless the history holds tool
            // blocks, which Anthropic accepts only alongside tool definitions.
            Some(ToolChoice::None) if !conversation.has_tool_blocks => {}
            Some(ToolChoice::None) => {
                tools = declared();
                tool_choice = Some(json!({"type": "none"}));
            }
            Some(ToolChoice::Auto) => {
                tools = declared();
                tool_choice = Some(json!({"type": "auto"}));
            }
            Some(ToolChoice::Required) => {
                tools = declared();
                tool_choice = Some(json!({"type": "any"}));
            }
            Some(ToolChoice::Tool(name)) => {
                tools = declared();
                tool_choice = Some(json!({"type": "tool", "name": name}));
            }
            None => tools = declared(),
        }
    }
    // Structured output: the model must call a tool whose input schema is the answer's schema;
    // its input is the answer. This overrides any other tool choice.
    if let Some(format) = &req.response_format {
        tools.push(json!({
            "name": format.name,
            "description": "Give the answer by calling this tool; its input is the answer, as JSON matching the schema.",
            "input_schema": format.schema,
        }));
        tool_choice = Some(json!({"type": "tool", "name": format.name}));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        body.insert("tool_choice".into(), choice);
    }

    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    // `seed` has no Anthropic equivalent and is dropped.
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

struct Conversation {
    system: Option<String>,
    turns: Vec<Value>,
    has_tool_blocks: bool,
}

/// System messages go to the top-level `system`; tool results become `tool_result` blocks of a
/// user turn; consecutive turns of one role merge, since Anthropic wants them alternating.
fn conversation(req: &ChatRequest) -> Result<Conversation, LlmError> {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut has_tool_blocks = false;
    for m in &req.messages {
        // Anthropic refuses empty text blocks.
        let text = m.content.as_deref().filter(|t| !t.is_empty());
        let (role, blocks) = match m.role {
            Role::System => {
                system.extend(text);
                continue;
            }
            Role::User => ("user", text.map(text_block).into_iter().collect::<Vec<_>>()),
            Role::Assistant => {
                let mut blocks: Vec<Value> = text.map(text_block).into_iter().collect();
                for call in &m.tool_calls {
                    has_tool_blocks = true;
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(call)?,
                    }));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                has_tool_blocks = true;
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    LlmError::new(ErrorKind::BadRequest, "a tool message has no tool_call_id")
                })?;
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": id,
                    "content": m.content.as_deref().unwrap_or(""),
                });
                ("user", vec![result])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Tool results must open their user turn; text said after them follows.
            blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            json!({"role": role, "content": blocks})
        })
        .collect();
    Ok(Conversation {
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        turns,
        has_tool_blocks,
    })
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A tool call's arguments text as the JSON object Anthropic wants for `input`.
fn tool_input(call: &ToolCall) -> Result<Value, LlmError> {
    if call.arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&call.arguments).map_err(|e| {
        LlmError::new(
            ErrorKind::BadRequest,
            format!("the arguments of tool call {} are not JSON: {e}", call.id),
        )
    })
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Block {
    #[serde(rename = "text")]
    Text { text: String },
    #[serde(rename = "tool_use")]
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// Thinking, citations, server tools: not part of the canonical answer.
    #[serde(other)]
    Other,
}

pub(crate) fn parse_response(
    body: &[u8],
    ep: &Endpoint,
    req: &ChatRequest,
) -> Result<ChatResponse, LlmError> {
    let value: Value = serde_json::from_slice(body).map_err(malformed)?;
    if value.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_from_event(&value));
    }
    let usage = value.get("usage").map(usage_of).unwrap_or_default();
    let message: WireMessage = serde_json::from_value(value).map_err(malformed)?;
    let structured = req.response_format.as_ref().map(|f| f.name.as_str());

    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    let mut answer: Option<String> = None;
    for block in message.content {
        match block {
            Block::Text { text: t } => text.get_or_insert_with(String::new).push_str(&t),
            Block::ToolUse { id, name, input } => {
                if answer.is_none() && structured == Some(name.as_str()) {
                    answer = Some(input.to_string());
                } else {
                    tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments: input.to_string(),
                    });
                }
            }
            Block::Other => {}
        }
    }
    let answered = answer.is_some();
    if let Some(name) = structured
        && !answered
    {
        // Some Anthropic-compatible servers (llama-server) do not enforce the forced tool that
        // emulates `json_schema`: the caller gets the prose as content and must validate it.
        tracing::warn!(endpoint = %ep.name, schema = %name, "the structured-output tool was \
            not called: the answer is text, not the schema's JSON");
    }
    let (content, tool_calls) = match answer {
        // The forced tool's input is the answer; it is not a tool call of the caller's.
        Some(json) => (Some(json), Vec::new()),
        None => (text, tool_calls),
    };
    Ok(ChatResponse {
        id: message.id,
        model: if message.model.is_empty() {
            ep.model.clone()
        } else {
            message.model
        },
        content,
        tool_calls,
        finish_reason: finish_reason(message.stop_reason.as_deref(), answered),
        usage,
    })
}

/// `answered`: the forced structured-output tool was called, which is a normal stop.
fn finish_reason(stop_reason: Option<&str>, answered: bool) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") if !answered => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Input tokens of every cache status, like OpenAI's `prompt_tokens`.
fn usage_of(usage: &Value) -> Usage {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("input_tokens")
            + n("cache_creation_input_tokens")
            + n("cache_read_input_tokens"),
        output_tokens: n("output_tokens"),
    }
}

fn malformed(e: serde_json::Error) -> LlmError {
    LlmError::new(
        ErrorKind::Malformed,
        format!("the answer is not an Anthropic message: {e}"),
    )
}

/// An `error` object (a streamed `event: error`, or a 200 carrying one), classified by the
/// status Anthropic documents for its type.
pub(crate) fn error_from_event(value: &Value) -> LlmError {
    let error = value.get("error").unwrap_or(value);
    let status = match error.get("type").and_then(Value::as_str).unwrap_or("") {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    };
    let message = describe_error_value(value).unwrap_or_else(|| "unspecified error".to_owned());
    LlmError::from_status(status, message, None)
}

/// What a content block of the stream is, by its index.
#[derive(Clone, Copy)]
enum BlockKind {
    Text,
    /// A tool call, with its position among the answer's tool calls.
    Tool(u32),
    /// The forced structured-output tool: its input is streamed as text.
    Answer,
    Other,
}

/// Translates the Messages stream. Only `message_stop` completes it.
pub(crate) struct StreamState {
    structured: Option<String>,
    blocks: HashMap<u64, BlockKind>,
    tools_seen: u32,
    answered: bool,
    input_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    output_tokens: u64,
    stop_reason: Option<String>,
}

impl StreamState {
    pub(crate) fn new(req: &ChatRequest) -> Self {
        Self {
            structured: req.response_format.as_ref().map(|f| f.name.clone()),
            blocks: HashMap::new(),
            tools_seen: 0,
            answered: false,
            input_tokens: 0,
            cache_creation_tokens: 0,
            cache_read_tokens: 0,
            output_tokens: 0,
            stop_reason: None,
        }
    }

    /// Counts are cumulative: a later report replaces an earlier one, field by field.
    fn read_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        if let Some(v) = n("input_tokens") {
            self.input_tokens = v;
        }
        if let Some(v) = n("cache_creation_input_tokens") {
            self.cache_creation_tokens = v;
        }
        if let Some(v) = n("cache_read_input_tokens") {
            self.cache_read_tokens = v;
        }
        if let Some(v) = n("output_tokens") {
            self.output_tokens = v;
        }
    }

    fn block_start(&mut self, value: &Value, out: &mut VecDeque<Result<StreamEvent, LlmError>>) {
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = value.get("content_block").unwrap_or(&Value::Null);
        let str_of = |k: &str| block.get(k).and_then(Value::as_str);
        let kind = match str_of("type") {
            Some("text") => {
                if let Some(text) = str_of("text").filter(|t| !t.is_empty())
                    && self.structured.is_none()
                {
                    out.push_back(Ok(StreamEvent::Text {
                        text: text.to_owned(),
                    }));
                }
                BlockKind::Text
            }
            Some("tool_use") => {
                let name = str_of("name").unwrap_or("");
                if !self.answered && self.structured.as_deref() == Some(name) {
                    self.answered = true;
                    BlockKind::Answer
                } else {
                    let position = self.tools_seen;
                    self.tools_seen += 1;
                    out.push_back(Ok(StreamEvent::ToolCallDelta {
                        index: position,
                        id: str_of("id").map(str::to_owned),
                        name: Some(name.to_owned()),
                        arguments: String::new(),
                    }));
                    BlockKind::Tool(position)
                }
            }
            _ => BlockKind::Other,
        };
        self.blocks.insert(index, kind);
    }

    fn block_delta(&mut self, value: &Value, out: &mut VecDeque<Result<StreamEvent, LlmError>>) {
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = value.get("delta").unwrap_or(&Value::Null);
        let str_of = |k: &str| {
            delta
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let kind = self.blocks.get(&index).copied().unwrap_or(BlockKind::Text);
        match (kind, str_of("type")) {
            // In structured mode only the forced tool's input is the answer.
            (BlockKind::Text, Some("text_delta")) if self.structured.is_none() => {
                if let Some(text) = str_of("text") {
                    out.push_back(Ok(StreamEvent::Text {
                        text: text.to_owned(),
                    }));
                }
            }
            (BlockKind::Tool(position), Some("input_json_delta")) => {
                if let Some(json) = str_of("partial_json") {
                    out.push_back(Ok(StreamEvent::ToolCallDelta {
                        index: position,
                        id: None,
                        name: None,
                        arguments: json.to_owned(),
                    }));
                }
            }
            (BlockKind::Answer, Some("input_json_delta")) => {
                if let Some(json) = str_of("partial_json") {
                    out.push_back(Ok(StreamEvent::Text {
                        text: json.to_owned(),
                    }));
                }
            }
            // Thinking, signatures, citations.
            _ => {}
        }
    }
}

impl Translator for StreamState {
    fn event(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<Result<StreamEvent, LlmError>>,
    ) -> bool {
        if event.data.trim().is_empty() {
            return false;
        }
        let value: Value = match serde_json::from_str(&event.data) {
            Ok(value) => value,
            Err(e) => {
                out.push_back(Err(malformed(e)));
                return true;
            }
        };
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let usage = value.get("message").and_then(|m| m.get("usage"));
                self.read_usage(usage);
            }
            "content_block_start" => self.block_start(&value, out),
            "content_block_delta" => self.block_delta(&value, out),
            "message_delta" => {
                if let Some(reason) = value
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(reason.to_owned());
                }
                self.read_usage(value.get("usage"));
            }
            "message_stop" => {
                out.push_back(Ok(StreamEvent::Done {
                    finish_reason: finish_reason(self.stop_reason.as_deref(), self.answered),
                    usage: Some(Usage {
                        input_tokens: self.input_tokens
                            + self.cache_creation_tokens
                            + self.cache_read_tokens,
                        output_tokens: self.output_tokens,
                    }),
                }));
                return true;
            }
            "error" => {
                out.push_back(Err(error_from_event(&value)));
                return true;
            }
            // `ping`, `content_block_stop`, and event types added later: Anthropic's
            // versioning policy asks clients to ignore what they do not know.
            _ => {}
        }
        false
    }

    fn end(&mut self, cause: Option<LlmError>) -> Result<StreamEvent, LlmError> {
        Err(cut(cause, "message_stop"))
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "a test fails loudly")]

    use super::*;
    use crate::{JsonSchema, Message, Tool};
    use std::time::Duration;

    fn ep() -> Endpoint {
        Endpoint {
            name: "anthropic".into(),
            wire: super::super::Wire::Anthropic,
            base_url: "http://h".into(),
            api_key: None,
            model: "claude-sonnet-4-5".into(),
            timeout: Duration::from_secs(1),
        }
    }

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    fn tool_result(id: &str, content: &str) -> Message {
        Message {
            role: Role::Tool,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: Some(id.into()),
        }
    }

    #[test]
    fn turns_merge_and_tool_results_lead() {
        let req = ChatRequest {
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, "a"),
                Message::text(Role::User, "b"),
                Message {
                    role: Role::Assistant,
                    content: None,
                    tool_calls: vec![call("t1", "f", r#"{"x":1}"#), call("t2", "g", "")],
                    tool_call_id: None,
                },
                tool_result("t1", "one"),
                Message::text(Role::System, "Mind the format."),
                tool_result("t2", "two"),
                Message::text(Role::User, "and?"),
            ],
            ..ChatRequest::default()
        };
        let body = request_body(&ep(), &req, false).unwrap();
        assert_eq!(body["system"], json!("Be brief.\n\nMind the format."));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
                    {"type": "tool_use", "id": "t2", "name": "g", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
                    {"type": "text", "text": "and?"},
                ]},
            ])
        );
        assert_eq!(body["max_tokens"], json!(DEFAULT_MAX_TOKENS));
    }

    #[test]
    fn text_after_tool_results_is_moved_behind_them() {
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "first"), tool_result("t1", "r")],
            ..ChatRequest::default()
        };
        let body = request_body(&ep(), &req, false).unwrap();
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                {"type": "text", "text": "first"},
            ])
        );
    }

    #[test]
    fn invalid_tool_arguments_are_a_bad_request() {
        let req = ChatRequest {
            messages: vec![Message {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![call("t1", "f", "{not json")],
                tool_call_id: None,
            }],
            ..ChatRequest::default()
        };
        assert_eq!(
            request_body(&ep(), &req, false).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn tool_choice_mapping() {
        let tool = Tool {
            name: "f".into(),
            description: Some("does f".into()),
            parameters: json!({"type": "object"}),
        };
        let with = |choice: Option<ToolChoice>, history: bool| {
            let mut messages = vec![Message::text(Role::User, "hi")];
            if history {
                messages.push(Message {
                    role: Role::Assistant,
                    content: None,
                    tool_calls: vec![call("t1", "f", "{}")],
                    tool_call_id: None,
                });
                messages.push(tool_result("t1", "ok"));
            }
            let req = ChatRequest {
                messages,
                tools: vec![tool.clone()],
                tool_choice: choice,
                ..ChatRequest::default()
            };
            request_body(&ep(), &req, false).unwrap()
        };
        let declared =
            json!([{"name": "f", "description": "does f", "input_schema": {"type": "object"}}]);
        let b = with(Some(ToolChoice::Auto), false);
        assert_eq!(
            (&b["tools"], &b["tool_choice"]),
            (&declared, &json!({"type": "auto"}))
        );
        let b = with(Some(ToolChoice::Required), false);
        assert_eq!(b["tool_choice"], json!({"type": "any"}));
        let b = with(Some(ToolChoice::Tool("f".into())), false);
        assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "f"}));
        let b = with(None, false);
        assert_eq!(b["tools"], declared);
        assert!(b.get("tool_choice").is_none());
        let b = with(Some(ToolChoice::None), false);
        assert!(b.get("tools").is_none() && b.get("tool_choice").is_none());
        let b = with(Some(ToolChoice::None), true);
        assert_eq!(
            (&b["tools"], &b["tool_choice"]),
            (&declared, &json!({"type": "none"}))
        );
    }

    #[test]
    fn structured_output_forces_a_tool_and_reads_it_back() {
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "weather?")],
            response_format: Some(JsonSchema {
                name: "weather".into(),
                schema: json!({"type": "object", "properties": {"temp": {"type": "number"}}}),
                strict: true,
            }),
            seed: Some(1),
            ..ChatRequest::default()
        };
        let body = request_body(&ep(), &req, false).unwrap();
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "weather"})
        );
        assert_eq!(body["tools"][0]["name"], json!("weather"));
        assert_eq!(
            body["tools"][0]["input_schema"],
            req.response_format.as_ref().unwrap().schema
        );
        assert!(body.get("seed").is_none());

        let answer = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"toolu_1","name":"weather","input":{"temp":21.5}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":5}}"#;
        let r = parse_response(answer, &ep(), &req).unwrap();
        assert_eq!(r.content.as_deref(), Some(r#"{"temp":21.5}"#));
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason(Some("end_turn"), false), FinishReason::Stop);
        assert_eq!(
            finish_reason(Some("stop_sequence"), false),
            FinishReason::Stop
        );
        assert_eq!(
            finish_reason(Some("max_tokens"), true),
            FinishReason::Length
        );
        assert_eq!(
            finish_reason(Some("tool_use"), false),
            FinishReason::ToolCalls
        );
        assert_eq!(finish_reason(Some("tool_use"), true), FinishReason::Stop);
        assert_eq!(
            finish_reason(Some("refusal"), false),
            FinishReason::ContentFilter
        );
    }

    #[test]
    fn usage_counts_cached_input() {
        let u = usage_of(
            &json!({"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 7}),
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: 1105,
                output_tokens: 7
            }
        );
    }

    #[test]
    fn error_types_classify() {
        let e = |t: &str| {
            error_from_event(&json!({"type": "error", "error": {"type": t, "message": "m"}}))
        };
        assert_eq!(e("overloaded_error").kind, ErrorKind::ServerError);
        assert_eq!(e("overloaded_error").status, Some(529));
        assert_eq!(e("rate_limit_error").kind, ErrorKind::RateLimit);
        assert_eq!(e("api_error").kind, ErrorKind::ServerError);
        assert_eq!(e("authentication_error").kind, ErrorKind::Auth);
        assert_eq!(e("invalid_request_error").kind, ErrorKind::BadRequest);
        assert_eq!(e("something_new").kind, ErrorKind::ServerError);
        let long = error_from_event(
            &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}),
        );
        assert_eq!(long.kind, ErrorKind::ContextLength);
    }
}
