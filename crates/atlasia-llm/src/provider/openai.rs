//! The OpenAI Chat Completions wire, spoken by OpenAI and by most other servers (Groq,
//! Together, vLLM, Ollama, OpenRouter, `sim-llm`): request mapping, response mapping, and the
//! streaming translation of `chat.completion.chunk`s. The canonical types already follow this
//! shape, so the mapping is mostly field for field; the care goes into what servers omit.

use std::collections::VecDeque;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::sse::SseEvent;
use super::{Endpoint, Translator, cut, describe_error_value, secret_header};
use crate::{
    ChatRequest, ChatResponse, ErrorKind, FinishReason, LlmError, Message, Role, StreamEvent,
    ToolCall, ToolChoice, Usage,
};

pub(crate) fn headers(ep: &Endpoint) -> Result<HeaderMap, LlmError> {
    let mut headers = HeaderMap::new();
    // Local servers (Ollama, vLLM, sim-llm) often need no key at all.
    if let Some(key) = &ep.api_key {
        headers.insert(
            AUTHORIZATION,
            secret_header(&format!("Bearer {}", key.expose_secret()))?,
        );
    }
    Ok(headers)
}

pub(crate) fn request_body(ep: &Endpoint, req: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(ep.model));
    body.insert(
        "messages".into(),
        Value::Array(req.messages.iter().map(message).collect()),
    );
    // A `tool_choice` without `tools` is an error on OpenAI, so the choice goes only with them.
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|tool| {
                let mut function = Map::new();
                function.insert("name".into(), json!(tool.name));
                if let Some(description) = &tool.description {
                    function.insert("description".into(), json!(description));
                }
                function.insert("parameters".into(), tool.parameters.clone());
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = &req.tool_choice {
            let choice = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            };
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(format) = &req.response_format {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": {"name": format.name, "schema": format.schema, "strict": format.strict},
            }),
        );
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    // `max_tokens`, not `max_completion_tokens`: every OpenAI-compatible server accepts it.
    if let Some(n) = req.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if let Some(seed) = req.seed {
        body.insert("seed".into(), json!(seed));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        // Without it a stream carries no token counts, and the budget could not be charged.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message(m: &Message) -> Value {
    match m.role {
        Role::System => json!({"role": "system", "content": m.content.as_deref().unwrap_or("")}),
        Role::User => json!({"role": "user", "content": m.content.as_deref().unwrap_or("")}),
        Role::Assistant => {
            let mut out = Map::new();
            out.insert("role".into(), json!("assistant"));
            // `null` content is how OpenAI writes a message that only calls tools.
            let content = match (&m.content, m.tool_calls.is_empty()) {
                (Some(text), _) => json!(text),
                (None, false) => Value::Null,
                (None, true) => json!(""),
            };
            out.insert("content".into(), content);
            if !m.tool_calls.is_empty() {
                let calls = m
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        })
                    })
                    .collect();
                out.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(out)
        }
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or(""),
            "content": m.content.as_deref().unwrap_or(""),
        }),
    }
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

pub(crate) fn parse_response(body: &[u8], ep: &Endpoint) -> Result<ChatResponse, LlmError> {
    let value: Value = serde_json::from_slice(body).map_err(malformed)?;
    // Some proxies answer an upstream failure with a 200 and an error object.
    if value.get("choices").is_none() && value.get("error").is_some_and(|e| !e.is_null()) {
        return Err(error_from_body(&value));
    }
    let completion: Completion = serde_json::from_value(value).map_err(malformed)?;
    let choice =
        completion.choices.into_iter().next().ok_or_else(|| {
            LlmError::new(ErrorKind::Malformed, "the chat completion has no choices")
        })?;
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        })
        .collect();
    // A refusal replaces the content; the finish reason tells the caller not to parse it.
    let refused = choice.message.content.is_none() && choice.message.refusal.is_some();
    let finish_reason = if refused {
        FinishReason::ContentFilter
    } else {
        finish_reason(choice.finish_reason.as_deref(), !tool_calls.is_empty())
    };
    Ok(ChatResponse {
        id: completion.id,
        model: if completion.model.is_empty() {
            ep.model.clone()
        } else {
            completion.model
        },
        content: choice.message.content.or(choice.message.refusal),
        tool_calls,
        finish_reason,
        usage: completion.usage.map(Usage::from).unwrap_or_default(),
    })
}

/// Unknown or missing reasons (some servers send `null`, or their own words) read as a normal
/// stop, or as tool calls when the answer holds some.
fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn malformed(e: serde_json::Error) -> LlmError {
    LlmError::new(
        ErrorKind::Malformed,
        format!("the answer is not an OpenAI chat completion: {e}"),
    )
}

/// An error object inside a 200 (streamed or not). Its code or type stands in for the status
/// it would have had, so it classifies like the HTTP error it reports.
pub(crate) fn error_from_body(value: &Value) -> LlmError {
    let error = value.get("error").unwrap_or(value);
    let numeric = ["code", "status"]
        .iter()
        .filter_map(|k| error.get(*k).and_then(Value::as_u64))
        .find(|s| (400..600).contains(s))
        .and_then(|s| u16::try_from(s).ok());
    let words = ["code", "type"]
        .iter()
        .filter_map(|k| error.get(*k).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let status = numeric.unwrap_or_else(|| {
        if words.contains("rate_limit") || words.contains("insufficient_quota") {
            429
        } else if words.contains("context_length") || words.contains("invalid_request") {
            400
        } else if words.contains("invalid_api_key") || words.contains("authentication") {
            401
        } else if words.contains("permission") {
            403
        } else if words.contains("not_found") {
            404
        } else if words.contains("overloaded") {
            503
        } else {
            500
        }
    });
    let message = describe_error_value(value).unwrap_or_else(|| "unspecified error".to_owned());
    LlmError::from_status(status, message, None)
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<DeltaToolCall>>,
}

#[derive(Deserialize)]
struct DeltaToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
struct DeltaFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Translates `chat.completion.chunk`s. The finish reason arrives before the usage chunk, so
/// `Done` waits for `[DONE]` (or the end of the body, once the finish reason was seen).
#[derive(Default)]
pub(crate) struct StreamState {
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    saw_tool_calls: bool,
    refused: bool,
}

impl StreamState {
    fn done(&self) -> StreamEvent {
        let finish_reason = match self.finish {
            _ if self.refused => FinishReason::ContentFilter,
            Some(reason) => reason,
            None => finish_reason(None, self.saw_tool_calls),
        };
        StreamEvent::Done {
            finish_reason,
            usage: self.usage,
        }
    }
}

impl Translator for StreamState {
    fn event(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<Result<StreamEvent, LlmError>>,
    ) -> bool {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.push_back(Ok(self.done()));
            return true;
        }
        if data.is_empty() {
            return false;
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(e) => {
                out.push_back(Err(malformed(e)));
                return true;
            }
        };
        if value.get("error").is_some_and(|e| !e.is_null()) {
            out.push_back(Err(error_from_body(&value)));
            return true;
        }
        let chunk: Chunk = match serde_json::from_value(value) {
            Ok(chunk) => chunk,
            Err(e) => {
                out.push_back(Err(malformed(e)));
                return true;
            }
        };
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        // The gateway never asks for n > 1, so only the first choice matters.
        for choice in chunk
            .choices
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.index == 0)
        {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push_back(Ok(StreamEvent::Text { text }));
                }
                if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
                    self.refused = true;
                    out.push_back(Ok(StreamEvent::Text { text }));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate()
                {
                    self.saw_tool_calls = true;
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, f.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    out.push_back(Ok(StreamEvent::ToolCallDelta {
                        // Servers that omit the index send one call per delta, in order.
                        index: call
                            .index
                            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX)),
                        id: call.id,
                        name,
                        arguments,
                    }));
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(finish_reason(Some(&reason), self.saw_tool_calls));
            }
        }
        false
    }

    fn end(&mut self, cause: Option<LlmError>) -> Result<StreamEvent, LlmError> {
        // The answer is whole once the finish reason came; only the usage chunk or the
        // `[DONE]` marker went missing.
        if self.finish.is_some() {
            Ok(self.done())
        } else {
            Err(cut(cause, "its finish_reason"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "a test fails loudly")]

    use super::*;
    use crate::{JsonSchema, Tool};
    use std::time::Duration;

    fn ep() -> Endpoint {
        Endpoint {
            name: "openai".into(),
            wire: super::super::Wire::OpenAi,
            base_url: "http://h".into(),
            api_key: None,
            model: "gpt-4o-mini".into(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn request_carries_every_option() {
        let req = ChatRequest {
            model: "smart".into(),
            messages: vec![Message::text(Role::User, "hi")],
            tools: vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Required),
            response_format: Some(JsonSchema {
                name: "answer".into(),
                schema: json!({"type": "object"}),
                strict: true,
            }),
            temperature: Some(0.5),
            top_p: Some(0.9),
            max_tokens: Some(100),
            stop: vec!["END".into()],
            seed: Some(7),
        };
        assert_eq!(
            request_body(&ep(), &req, true),
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
                "temperature": 0.5,
                "top_p": 0.9,
                "max_tokens": 100,
                "stop": ["END"],
                "seed": 7,
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn tool_choice_is_dropped_without_tools() {
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "hi")],
            tool_choice: Some(ToolChoice::Auto),
            ..ChatRequest::default()
        };
        let body = request_body(&ep(), &req, false);
        assert!(body.get("tool_choice").is_none() && body.get("tools").is_none());
        assert!(body.get("stream").is_none());
    }

    #[test]
    fn in_body_errors_classify_by_code_and_type() {
        let kind = |v: Value| error_from_body(&v).kind;
        assert_eq!(
            kind(
                json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})
            ),
            ErrorKind::RateLimit
        );
        assert_eq!(
            kind(
                json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "code": "context_length_exceeded"}})
            ),
            ErrorKind::ContextLength
        );
        assert_eq!(
            kind(json!({"error": {"message": "The server had an error", "type": "server_error"}})),
            ErrorKind::ServerError
        );
        assert_eq!(
            kind(json!({"error": {"message": "slow down", "code": 429}})),
            ErrorKind::RateLimit
        );
        assert_eq!(kind(json!({"error": "boom"})), ErrorKind::ServerError);
    }

    #[test]
    fn refusal_becomes_content_filter() {
        let body = br#"{"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
        let r = parse_response(body, &ep()).unwrap();
        assert_eq!(r.finish_reason, FinishReason::ContentFilter);
        assert_eq!(r.content.as_deref(), Some("I can't help with that."));
        assert_eq!(r.usage, Usage::default());
    }
}
