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
