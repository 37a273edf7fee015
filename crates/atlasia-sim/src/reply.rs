//! The provider-neutral conversation both wires parse into, and the deterministic answer to it:
//! a forced or requested tool call, a schema-valid JSON document, a note about a tool result,
//! or a short text derived from the last user message. Token counts are characters / 4.

use crate::{schema_gen, script};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a request asks for, whichever wire it came on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chat {
    /// The model as requested.
    pub model: String,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    /// Characters of all message text (system prompt, messages, tool calls and results).
    pub input_chars: usize,
    /// The text of the last user message ("" when there is none).
    pub last_user: String,
    /// The text of the first user message ("" when there is none): the engine's JSON document
    /// (issue, iteration, persona…) that agent-aware answers read.
    pub first_user: String,
    /// How many assistant turns in the conversation carry tool calls.
    pub tool_turns: usize,
    /// The name of the requested structured output (OpenAI `response_format.json_schema.name`).
    pub schema_name: Option<String>,
    /// Set when the conversation ends with a tool result.
    pub tool_result: Option<ToolResult>,
    /// Tools offered, in order.
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub format: Format,
    /// Hash of the request without its streaming options: the seed of every id, so the same
    /// request gets the same ids whether streamed or not.
    pub digest: [u8; 32],
}

/// The tool result a conversation ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolResult {
    /// The tool's name when the call it answers can be found in the conversation.
    pub name: Option<String>,
    /// Its length in characters.
    pub chars: usize,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tool {
    pub name: String,
    /// JSON Schema of the arguments.
    pub schema: Value,
}

/// How the request constrains tool use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    /// The model may call a tool (the simulator does when the user says `call <name>`).
    Auto,
    /// No tool calls.
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`).
    Any,
    /// This tool must be called.
    Named(String),
}

/// The answer's required shape (OpenAI `response_format`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    Text(String),
    ToolCall { name: String, arguments: Value },
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    /// Cut at `max_tokens`.
    Length,
    ToolCall,
}

/// The answer with its accounting.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub output: Output,
    pub finish: Finish,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The deterministic answer to `chat`.
pub(crate) fn reply(chat: &Chat) -> Reply {
    if let Some(output) = scripted(chat) {
        return match output {
            Output::ToolCall { name, arguments } => call_reply(chat, name, arguments),
            Output::Text(text) => text_reply(chat, text),
        };
    }
    let call =
        |tool: &Tool| call_reply(chat, tool.name.clone(), schema_gen::instance(&tool.schema));
    let forced = match &chat.choice {
        ToolChoice::Named(name) => chat.tools.iter().find(|t| &t.name == name),
        ToolChoice::Any => asked_for(chat).or(chat.tools.first()),
        ToolChoice::Auto | ToolChoice::None => None,
    };
    if let Some(tool) = forced {
        return call(tool);
    }
    let text = match (&chat.format, &chat.tool_result) {
        (Format::JsonSchema(schema), _) => schema_gen::instance(schema).to_string(),
        (format, Some(result)) => wrap(format, tool_result_text(result)),
        (format, None) => {
            if chat.choice == ToolChoice::Auto
                && let Some(tool) = asked_for(chat)
            {
                return call(tool);
            }
            wrap(format, answer_text(&chat.last_user))
        }
    };
    text_reply(chat, text)
}

/// A tool call, with its accounting.
fn call_reply(chat: &Chat, name: String, arguments: Value) -> Reply {
    let chars = name.chars().count() + arguments.to_string().chars().count();
    Reply {
        output: Output::ToolCall { name, arguments },
        finish: Finish::ToolCall,
        input_tokens: tokens(chat.input_chars),
        output_tokens: tokens(chars),
    }
}

/// A text answer cut to `max_tokens`, with its accounting.
fn text_reply(chat: &Chat, text: String) -> Reply {
    let (text, finish) = truncate(text, chat.max_tokens);
    let output_tokens = tokens(text.chars().count());
    Reply {
        output: Output::Text(text),
        finish,
        input_tokens: tokens(chat.input_chars),
        output_tokens,
    }
}

/// The answer cut by the output limit (the `length` fault): at `n` tokens, else the request's
/// `max_tokens`, else 16. Text and tool-call arguments alike come back as cut text, with
/// `finish_reason: length`.
pub(crate) fn cut_short(chat: &Chat, reply: Reply, n: Option<u64>) -> Reply {
    let limit = n.or(chat.max_tokens).unwrap_or(16);
    let text = match reply.output {
        Output::Text(text) => text,
        Output::ToolCall { arguments, .. } => arguments.to_string(),
    };
    let cut: String = text
        .chars()
        .take(usize::try_from(limit.saturating_mul(4)).unwrap_or(usize::MAX))
        .collect();
    Reply {
        output_tokens: tokens(cut.chars().count()),
        output: Output::Text(cut),
        finish: Finish::Length,
        input_tokens: reply.input_tokens,
    }
}

/// Prose instead of the tool call or JSON document asked for (the `prose` fault).
pub(crate) fn prose(chat: &Chat) -> Reply {
    text_reply(
        chat,
        "[sim-llm] Sure! I think the best approach is to look at the code carefully and then \
         make the change."
            .to_owned(),
    )
}

/// The agent-aware answer (see [`script`]) when the conversation is an engine agent's: the
/// first user message is the engine's JSON document, and the request is a structured output the
/// simulator knows (forced tool or `json_schema` response format) or the developer's tool loop
/// (a `finish` tool offered, tools allowed). `None` for every other request.
fn scripted(chat: &Chat) -> Option<Output> {
    let ctx = script::Context::parse(&chat.first_user)?;
    if let ToolChoice::Named(name) = &chat.choice {
        let tool = chat.tools.iter().find(|t| &t.name == name)?;
        let arguments = script::structured(&ctx, name, &tool.schema)?;
        return Some(Output::ToolCall {
            name: name.clone(),
            arguments,
        });
    }
    if let (Format::JsonSchema(schema), Some(name)) = (&chat.format, &chat.schema_name) {
        let value = script::structured(&ctx, name, schema)?;
        return Some(Output::Text(value.to_string()));
    }
    if matches!(chat.choice, ToolChoice::Auto | ToolChoice::Any)
        && chat.tools.iter().any(|t| t.name == "finish")
    {
        let (name, arguments) = script::developer(&ctx, chat.tool_turns);
        return Some(Output::ToolCall { name, arguments });
    }
    None
}

/// The tool the last user message asks for with `call <name>` (case-insensitive).
fn asked_for(chat: &Chat) -> Option<&Tool> {
    let said = chat.last_user.to_lowercase();
    chat.tools
        .iter()
        .find(|t| said.contains(&format!("call {}", t.name.to_lowercase())))
}

/// `[sim-llm] ` + the start of the user's message and a short hash of all of it.
fn answer_text(last_user: &str) -> String {
    let flat = last_user.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut snippet: String = flat.chars().take(60).collect();
    if flat.chars().count() > 60 {
        snippet.push('…');
    }
    let hash = hex::encode(&Sha256::digest(last_user.as_bytes())[..4]);
    format!("[sim-llm] Simulated reply to \"{snippet}\" (fingerprint {hash}).")
}

fn tool_result_text(result: &ToolResult) -> String {
    match &result.name {
        Some(name) => format!(
            "[sim-llm] The tool {name} returned {} characters.",
            result.chars
        ),
        None => format!("[sim-llm] The tool returned {} characters.", result.chars),
    }
}

/// Text as the requested format wants it (a JSON object for `json_object`).
fn wrap(format: &Format, text: String) -> String {
    match format {
        Format::JsonObject => serde_json::json!({ "answer": text }).to_string(),
        Format::Text | Format::JsonSchema(_) => text,
    }
}

/// The text cut to what `max_tokens` allows (4 characters a token).
fn truncate(text: String, max_tokens: Option<u64>) -> (String, Finish) {
    let Some(max) = max_tokens else {
        return (text, Finish::Stop);
    };
    let limit = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
    if text.chars().count() <= limit {
        return (text, Finish::Stop);
    }
    (text.chars().take(limit).collect(), Finish::Length)
}

/// Tokens for a number of characters: ceil(chars / 4).
pub(crate) fn tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX)
}

/// The hash of a request body without its streaming switches.
pub(crate) fn digest(body: &Value) -> [u8; 32] {
    let mut canonical = body.clone();
    if let Some(o) = canonical.as_object_mut() {
        o.remove("stream");
        o.remove("stream_options");
    }
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

/// A deterministic id: `prefix` + 24 hex digits of the digest mixed with `purpose`.
pub(crate) fn id(prefix: &str, digest: &[u8; 32], purpose: &str) -> String {
    let mut h = Sha256::new();
    h.update(digest);
    h.update(purpose.as_bytes());
    format!("{prefix}{}", &hex::encode(h.finalize())[..24])
}

/// The `model` every answer carries: it always says it comes from the simulator.
pub(crate) fn model_label(requested: &str) -> String {
    if requested.starts_with("sim-llm/") {
        requested.to_owned()
    } else {
        format!("sim-llm/{requested}")
    }
}

/// Pieces to stream: a word (with its following space) at a time, long words in slices of 16
/// characters, so any answer comes out in several chunks that join back exactly.
pub(crate) fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut after_space = false;
    for c in text.chars() {
        if (after_space && !c.is_whitespace()) || cur.chars().count() >= 16 {
            out.push(std::mem::take(&mut cur));
        }
        after_space = c.is_whitespace();
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(last_user: &str) -> Chat {
        Chat {
            model: "m".into(),
            stream: false,
            include_usage: false,
            max_tokens: None,
            input_chars: last_user.chars().count(),
            last_user: last_user.into(),
            first_user: last_user.into(),
            tool_turns: 0,
            schema_name: None,
            tool_result: None,
            tools: vec![Tool {
                name: "read_file".into(),
                schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
            }],
            choice: ToolChoice::Auto,
            format: Format::Text,
            digest: [0; 32],
        }
    }

    #[test]
    fn text_answers_are_deterministic_and_labelled() {
        let r = reply(&chat("What is   the\ncapital of France?"));
        let Output::Text(t) = &r.output else {
            panic!("{r:?}")
        };
        assert!(t.starts_with("[sim-llm] "), "{t}");
        assert!(t.contains("\"What is the capital of France?\""), "{t}");
        assert_eq!(r, reply(&chat("What is   the\ncapital of France?")));
        assert_eq!(r.input_tokens, 8); // 32 characters
        assert_eq!(r.output_tokens, tokens(t.chars().count()));
        assert_eq!(r.finish, Finish::Stop);
    }

    #[test]
    fn call_in_the_message_calls_the_tool_unless_tools_are_off() {
        let r = reply(&chat("please CALL read_file now"));
        assert_eq!(r.finish, Finish::ToolCall);
        assert_eq!(
            r.output,
            Output::ToolCall {
                name: "read_file".into(),
                arguments: json!({"path": "sim"})
            }
        );
        let off = Chat {
            choice: ToolChoice::None,
            ..chat("call read_file")
        };
        assert_eq!(reply(&off).finish, Finish::Stop);
    }

    #[test]
    fn tool_results_get_a_note_and_max_tokens_cuts() {
        let after = Chat {
            tool_result: Some(ToolResult {
                name: Some("read_file".into()),
                chars: 1234,
            }),
            ..chat("call read_file")
        };
        let r = reply(&after);
        assert_eq!(
            r.output,
            Output::Text("[sim-llm] The tool read_file returned 1234 characters.".into())
        );
        let short = Chat {
            max_tokens: Some(2),
            ..chat("hello")
        };
        let r = reply(&short);
        assert_eq!(r.output, Output::Text("[sim-llm".into()));
        assert_eq!(r.finish, Finish::Length);
        assert_eq!(r.output_tokens, 2);
    }

    #[test]
    fn pieces_join_back() {
        let t = "[sim-llm] Simulated reply to \"abcdefghijklmnopqrstuvwxyz\" ok";
        let p = pieces(t);
        assert!(p.len() > 4);
        assert_eq!(p.concat(), t);
        assert!(p.iter().all(|x| x.chars().count() <= 16));
        assert!(pieces("").is_empty());
    }

    #[test]
    fn labels_and_ids() {
        assert_eq!(model_label("gpt-4o"), "sim-llm/gpt-4o");
        assert_eq!(model_label("sim-llm/fast"), "sim-llm/fast");
        let d = digest(&json!({"model": "m", "stream": true}));
        assert_eq!(d, digest(&json!({"model": "m"})));
        let a = id("chatcmpl-", &d, "message");
        assert_eq!(a.len(), "chatcmpl-".len() + 24);
        assert_ne!(a, id("chatcmpl-", &d, "tool"));
    }
}
