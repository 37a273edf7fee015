//! The DEVELOPER step's tool loop: the contract's prompt and the worker's context go to the
//! model with the tool definitions; every tool call the model makes is executed in order against
//! the bolt's worktree ([`crate::tools`]) and answered; the loop ends when the model calls
//! `finish` with a valid `implementation_report`, when a write needs a human decision
//! (escalation), when the turn or token budget runs out, or on cancellation.
//!
//! Each model answer is one turn (an invalid `finish` too: the validation errors are sent back
//! as its tool result). Every tool call is recorded as a `tool_called` event with its target
//! (a path or a command line — never file contents).

use crate::contracts::{AgentContract, ValidationIssue, reask_message};
use crate::ctx::{CallError, StepCtx};
use crate::tools::{self, Executed, FINISH, ToolResult, Workdir};
use atlasia_core::EventKind;
use atlasia_llm::{ChatRequest, FinishReason, Message, Role, ToolCall, ToolChoice};
use serde_json::{Value, json};

/// Default bound on model turns (the developer contract's `max_turns`).
pub const DEFAULT_MAX_TURNS: u32 = 40;
/// Default bound on input + output tokens over the whole loop.
pub const DEFAULT_MAX_TOKENS: u64 = 400_000;

/// What the model is told after answering with text instead of a tool call.
pub const NUDGE: &str = "Call a tool to continue the work; call finish with the \
    implementation_report when you are done. Plain text answers are not read.";

/// Bounds of one developer loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeveloperLimits {
    /// Model answers at most.
    pub max_turns: u32,
    /// Input + output tokens at most, summed over the answers.
    pub max_tokens: u64,
}

impl Default for DeveloperLimits {
    fn default() -> Self {
        Self {
            max_turns: DEFAULT_MAX_TURNS,
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeveloperOutcome {
    /// `finish` was called with a valid `implementation_report` (this value).
    Report(Value),
    /// A write needs a human decision (a `WORKFLOW_PROTECT` path); nothing was written for it.
    Escalate {
        /// What was refused and why.
        reason: String,
    },
    /// The loop cannot succeed (LLM failure, budgets exhausted).
    Failed(String),
    /// The model keeps answering unusably (prose instead of a tool call, answers cut by the
    /// output bound): a human decides (another model, guidance).
    Invalid(String),
    /// Cancelled (lease lost, pause, cancel, shutdown).
    Cancelled,
}

/// The share of the model's context a request may fill (prompt + output bound): the token
/// estimate is rough (about ±30 %), so the rest is margin.
const CONTEXT_SHARE: f64 = 0.8;

/// What replaces the turns dropped to fit the context.
fn dropped_note(n: usize) -> String {
    format!(
        "[{n} earlier message(s) of this conversation were dropped to fit the model's context. \
         Your changes so far are in the worktree: read the files again (or run git diff) \
         before editing them.]"
    )
}

/// Makes `messages` fit `budget` tokens (as `estimate` counts them): drops the oldest
/// exchanges after the system prompt and the task — an assistant turn always with the tool
/// results that answer it, so the conversation stays well-formed — leaving a note where they
/// were; then, if one turn alone is still too big, cuts the longest tool results with a note.
/// Returns how many messages were dropped.
pub fn fit_context(
    messages: &mut Vec<Message>,
    budget: u32,
    estimate: impl Fn(&[Message]) -> u32,
) -> usize {
    let mut dropped = 0;
    // [system, task, (note)?, exchange…]: exchanges start at an assistant message.
    let head = 2;
    while estimate(messages) > budget {
        let first = messages
            .iter()
            .enumerate()
            .skip(head)
            .find(|(_, m)| m.role == Role::Assistant)
            .map(|(i, _)| i);
        let Some(start) = first else { break };
        let end = messages[start + 1..]
            .iter()
            .position(|m| m.role == Role::Assistant)
            .map_or(messages.len(), |p| start + 1 + p);
        // Keep at least the latest exchange: the model needs what it just did.
        if end >= messages.len() {
            break;
        }
        let removed = messages.drain(start..end).count();
        dropped += removed;
        let note = Message::text(Role::User, dropped_note(dropped));
        if messages.get(head).is_some_and(|m| {
            m.role == Role::User
                && m.content
                    .as_deref()
                    .is_some_and(|c| c.starts_with("[") && c.contains("were dropped to fit"))
        }) {
            messages[head] = note;
        } else {
            messages.insert(head, note);
        }
    }
    // Still too big: shorten the longest tool results, keeping their start.
    while estimate(messages) > budget {
        let Some(longest) = messages
            .iter_mut()
            .filter(|m| m.role == Role::Tool)
            .max_by_key(|m| m.content.as_deref().map_or(0, str::len))
        else {
            break;
        };
        let Some(text) = longest.content.as_mut() else {
            break;
        };
        if text.len() < 512 {
            break;
        }
        let mut keep = text.len() / 2;
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        text.truncate(keep);
        text.push_str("\n[cut to fit the model's context; read a smaller range if you need more]");
    }
    dropped
}

/// Answers cut by the output bound in a row before the loop gives up.
const MAX_CUT_ANSWERS: u32 = 2;

/// What the model is told after a cut answer (the cut text is dropped, not echoed).
fn cut_note(at: u64) -> String {
    format!(
        "Your previous answer was cut at {at} tokens (the output limit), so its tool calls were \
         not run. Work in smaller steps: one tool call at a time, and edit_file with short \
         replacements instead of writing whole files."
    )
}

/// Runs the developer loop for `contract` with `user` as the first user message.
pub async fn develop(
    ctx: &StepCtx<'_>,
    contract: &AgentContract,
    user: String,
    wd: &Workdir,
    limits: DeveloperLimits,
) -> DeveloperOutcome {
    let kind = contract
        .output
        .clone()
        .unwrap_or_else(|| "implementation_report".to_owned());
    let Some(schema) = ctx.contracts.schema(&kind) else {
        return DeveloperOutcome::Failed(format!(
            "{}: no schema for its output `{kind}`",
            contract.name
        ));
    };
    let definitions = tools::definitions(&contract.tools, schema);
    let allowed: Vec<&str> = contract.tools.iter().map(|t| tools::name_of(*t)).collect();
    if !allowed.contains(&FINISH) {
        return DeveloperOutcome::Failed(format!(
            "{}: the contract has no `finish` tool; the loop could never end",
            contract.name
        ));
    }

    let mut messages = vec![
        Message::text(Role::System, contract.prompt.clone()),
        Message::text(Role::User, user),
    ];
    let mut used_tokens: u64 = 0;
    let mut text_answers = 0u32;
    let mut cut_answers = 0u32;
    let mut bound = crate::steps::agent::output_bound(ctx, contract);

    for _turn in 0..limits.max_turns {
        if ctx.cancel.is_cancelled() {
            return DeveloperOutcome::Cancelled;
        }
        // Measured before sending: a conversation that outgrew the model's context loses its
        // oldest turns rather than the whole step.
        if let Some(context) = ctx.gateway.context_tokens(&ctx.meta(contract), "") {
            let budget = (f64::from(context) * CONTEXT_SHARE) as u32;
            let budget = budget.saturating_sub(bound);
            let tools_cost = atlasia_llm::estimate_tokens(&ChatRequest {
                tools: definitions.clone(),
                ..ChatRequest::default()
            });
            let dropped = fit_context(&mut messages, budget.saturating_sub(tools_cost), |m| {
                atlasia_llm::estimate_tokens(&ChatRequest {
                    messages: m.to_vec(),
                    ..ChatRequest::default()
                })
            });
            if dropped > 0 {
                tracing::info!(run = %ctx.run.id, dropped, context, "developer turns dropped to fit the context");
            }
        }
        let req = ChatRequest {
            messages: messages.clone(),
            tools: definitions.clone(),
            tool_choice: Some(ToolChoice::Required),
            max_tokens: Some(bound),
            ..ChatRequest::default()
        };
        let resp = match ctx.chat(contract, req).await {
            Ok(r) => r,
            Err(CallError::Cancelled) => return DeveloperOutcome::Cancelled,
            Err(CallError::Failed(m)) => return DeveloperOutcome::Failed(m),
            Err(CallError::Budget(reason)) => return DeveloperOutcome::Escalate { reason },
        };
        used_tokens = used_tokens
            .saturating_add(resp.usage.input_tokens)
            .saturating_add(resp.usage.output_tokens);

        if resp.finish_reason == FinishReason::Length {
            // A cut tool call has cut arguments (half a file): never executed, never echoed.
            let at = match resp.usage.output_tokens {
                0 => u64::from(bound),
                n => n,
            };
            cut_answers += 1;
            if cut_answers > MAX_CUT_ANSWERS {
                return DeveloperOutcome::Invalid(format!(
                    "{}: the answer was cut at {at} tokens (max_tokens {bound}) {cut_answers} times in a row",
                    contract.name
                ));
            }
            bound = bound
                .saturating_mul(2)
                .min(crate::steps::agent::MAX_OUTPUT_TOKENS.max(bound));
            messages.push(Message::text(Role::User, cut_note(at)));
            continue;
        }
        cut_answers = 0;
        if resp.tool_calls.is_empty() {
            text_answers += 1;
            if text_answers >= 2 {
                return DeveloperOutcome::Invalid(format!(
                    "{}: answered with text instead of calling a tool {text_answers} times in a row",
                    contract.name
                ));
            }
            messages.push(Message::text(
                Role::Assistant,
                resp.content.unwrap_or_default(),
            ));
            messages.push(Message::text(Role::User, NUDGE));
        } else {
            text_answers = 0;
            messages.push(Message {
                role: Role::Assistant,
                content: resp.content.clone(),
                tool_calls: resp.tool_calls.clone(),
                tool_call_id: None,
            });
            for call in &resp.tool_calls {
                if ctx.cancel.is_cancelled() {
                    return DeveloperOutcome::Cancelled;
                }
                let answer = if call.name == FINISH {
                    match check_finish(ctx, &kind, call).await {
                        Ok(report) => return DeveloperOutcome::Report(report),
                        Err(text) => text,
                    }
                } else if !allowed.contains(&call.name.as_str()) {
                    let text = format!(
                        "refused: `{}` is not one of your tools ({})",
                        call.name.chars().take(80).collect::<String>(),
                        allowed.join(", ")
                    );
                    record(ctx, &call.name, "", false, &text).await;
                    text
                } else {
                    let executed = tools::execute_detailed(wd, call, ctx.cancel).await;
                    record_executed(ctx, &call.name, &executed).await;
                    if ctx.cancel.is_cancelled() {
                        return DeveloperOutcome::Cancelled;
                    }
                    if let ToolResult::Escalate(reason) = &executed.result {
                        return DeveloperOutcome::Escalate {
                            reason: format!("{}: {reason}", contract.name),
                        };
                    }
                    executed.result.text()
                };
                messages.push(Message {
                    role: Role::Tool,
                    content: Some(answer),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call.id.clone()),
                });
            }
        }
        if used_tokens > limits.max_tokens {
            return DeveloperOutcome::Failed(format!(
                "{}: token budget exhausted ({used_tokens} tokens used, limit {})",
                contract.name, limits.max_tokens
            ));
        }
    }
    DeveloperOutcome::Failed(format!(
        "{}: no finish after {} turns",
        contract.name, limits.max_turns
    ))
}

/// Parses and validates a `finish` call: the report, or the text telling the model what to fix.
async fn check_finish(ctx: &StepCtx<'_>, kind: &str, call: &ToolCall) -> Result<Value, String> {
    let issues = match tools::parse_object(&call.arguments) {
        Ok(report) => match ctx.contracts.validate(kind, &report) {
            Ok(()) => {
                record(ctx, FINISH, kind, true, "valid report").await;
                return Ok(report);
            }
            Err(issues) => issues,
        },
        Err(e) => vec![ValidationIssue::new(
            "",
            format!("the arguments are not a JSON object: {e}"),
        )],
    };
    let detail = format!(
        "{} validation problem{}",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    record(ctx, FINISH, kind, false, &detail).await;
    Err(format!(
        "refused: finish was not accepted. {}\nCall finish again with the corrected \
         {kind} as its arguments.",
        reask_message(&issues)
    ))
}

async fn record_executed(ctx: &StepCtx<'_>, tool: &str, e: &Executed) {
    record(ctx, tool, &e.target, e.ok, &e.detail).await;
}

async fn record(ctx: &StepCtx<'_>, tool: &str, target: &str, ok: bool, detail: &str) {
    let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    ctx.emit(
        EventKind::ToolCalled,
        json!({"step": ctx.step, "tool": short(tool, 80), "target": short(target, 200),
               "ok": ok, "detail": short(detail, 200)}),
    )
    .await;
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod context_tests {
    use super::*;

    fn chars(m: &[Message]) -> u32 {
        m.iter()
            .map(|m| m.content.as_deref().map_or(0, str::len) as u32 + 10)
            .sum()
    }

    fn exchange(i: usize, result: usize) -> Vec<Message> {
        vec![
            Message {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![ToolCall {
                    id: format!("c{i}"),
                    name: "read_file".into(),
                    arguments: "{}".into(),
                }],
                tool_call_id: None,
            },
            Message {
                role: Role::Tool,
                content: Some("x".repeat(result)),
                tool_calls: Vec::new(),
                tool_call_id: Some(format!("c{i}")),
            },
        ]
    }

    fn conversation(turns: usize, result: usize) -> Vec<Message> {
        let mut m = vec![
            Message::text(Role::System, "prompt"),
            Message::text(Role::User, "task"),
        ];
        for i in 0..turns {
            m.extend(exchange(i, result));
        }
        m
    }

    #[test]
    fn a_conversation_that_fits_is_untouched() {
        let mut m = conversation(3, 100);
        let before = m.clone();
        assert_eq!(fit_context(&mut m, 10_000, chars), 0);
        assert_eq!(m, before);
    }

    #[test]
    fn the_oldest_exchanges_go_whole_and_a_note_says_so() {
        let mut m = conversation(10, 1000);
        let dropped = fit_context(&mut m, 4_000, chars);
        assert!(chars(&m) <= 4_000, "{}", chars(&m));
        assert_eq!(
            dropped % 2,
            0,
            "an assistant turn goes with its tool result"
        );
        assert_eq!(m[0].content.as_deref(), Some("prompt"));
        assert_eq!(m[1].content.as_deref(), Some("task"));
        assert!(
            m[2].content
                .as_deref()
                .unwrap_or("")
                .contains(&format!("{dropped} earlier"))
        );
        // Every tool result still answers the assistant call right before it.
        for w in m[3..].windows(2) {
            if w[1].role == Role::Tool {
                assert_eq!(w[0].tool_calls[0].id, w[1].tool_call_id.clone().unwrap());
            }
        }
        // The latest exchange is kept.
        assert_eq!(m.last().unwrap().tool_call_id.as_deref(), Some("c9"));
        // One note, however many rounds of dropping.
        let notes = m
            .iter()
            .filter(|x| {
                x.content
                    .as_deref()
                    .is_some_and(|c| c.contains("were dropped"))
            })
            .count();
        assert_eq!(notes, 1);
    }

    #[test]
    fn one_huge_result_is_cut_with_a_note() {
        let mut m = conversation(1, 50_000);
        fit_context(&mut m, 5_000, chars);
        assert!(chars(&m) <= 5_000, "{}", chars(&m));
        let tool = m.last().unwrap().content.clone().unwrap();
        assert!(
            tool.ends_with("read a smaller range if you need more]"),
            "{}",
            &tool[tool.len() - 80..]
        );
    }
}
