//! One structured-output agent conversation, shared by the steps: the contract's prompt as the
//! system message, the run's issue, earlier artifacts and any operator guidance as the user
//! message, the artifact's schema as `response_format`; the answer is parsed and validated, and
//! re-asked with the validation errors at most [`MAX_REASKS`] times.

use crate::contracts::{AgentContract, ValidationIssue, reask_message};
use crate::ctx::{CallError, StepCtx};
use crate::error::EngineError;
use atlasia_core::Run;
use atlasia_llm::{ChatRequest, FinishReason, JsonSchema, Message, Role};
use atlasia_store::{Store, StoreError};
use serde_json::{Map, Value, json};

/// How many times an invalid answer is sent back with its validation errors before the step
/// fails (the issue asks for "once or twice").
pub const MAX_REASKS: usize = 2;

/// Context that is not an artifact, gathered by the caller from the bolt's worktree (each
/// optional: a run whose repository cannot be prepared still plans).
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// The developer iteration being worked on or judged (1 for the planning steps).
    pub iteration: i64,
    /// Tracked files of the repository.
    pub repo_tree: Option<Vec<String>>,
    /// README and manifest excerpts.
    pub repo_docs: Option<Value>,
    /// The branch's diff against its base (capped).
    pub diff: Option<String>,
    /// Verify command results, for the tester.
    pub test_log: Option<Value>,
    /// Fields read from the forge's issue (labels, recent comments), merged into `issue`.
    pub issue_extra: Map<String, Value>,
    /// Extra top-level fields (a reviewer's `persona`, a judge's `voter`).
    pub extra: Map<String, Value>,
}

/// Artifacts an input name reads, when it is not the artifact of the same name: agents that
/// ask for `persona_review` or `judge_verdict` get the merged review and the judges' decision.
fn stored_kind(input: &str) -> &str {
    match input {
        "persona_review" => "review",
        "judge_verdict" => "judge_decision",
        other => other,
    }
}

/// The user message: `iteration`, the extra fields, the issue, each input artifact the contract
/// names (latest version), the context inputs, and any operator guidance.
pub async fn inputs(
    store: &Store,
    run: &Run,
    contract: &AgentContract,
    ctx: &Context,
) -> Result<String, StoreError> {
    let mut doc = Map::new();
    doc.insert("iteration".into(), json!(ctx.iteration.max(1)));
    doc.extend(ctx.extra.clone());
    for input in &contract.inputs {
        let value = match input.as_str() {
            "issue" => {
                let mut issue = json!({"repo": run.repo, "number": run.issue_number,
                                       "title": run.title, "body": run.body});
                if let Some(o) = issue.as_object_mut() {
                    o.extend(ctx.issue_extra.clone());
                }
                Some(issue)
            }
            "repo_tree" => ctx.repo_tree.as_ref().map(|t| json!(t)),
            "repo_docs" => ctx.repo_docs.clone(),
            "diff" => ctx.diff.as_ref().map(|d| json!(d)),
            "test_log" => ctx.test_log.clone(),
            "guidance" => None, // see operator_guidance below
            kind => store
                .latest_artifact(run.id, stored_kind(kind))
                .await?
                .map(|a| a.payload),
        };
        if let Some(v) = value {
            doc.insert(input.clone(), v);
        }
    }
    // A human's word on this run (a gate comment, escalation guidance) reaches every agent
    // after it, so a PROCEED "with guidance" actually changes what the next agent does.
    let mut guidance = Vec::new();
    for (kind, field) in [
        ("gate_decision", "comment"),
        ("escalation_decision", "guidance"),
    ] {
        let latest = store.latest_artifact(run.id, kind).await?;
        if let Some((a, text)) = latest.as_ref().and_then(|a| {
            let text = a.payload.get(field).and_then(Value::as_str)?;
            Some((a, text))
        }) {
            guidance.push(json!({"from": kind, "by": a.payload.get("by"), "text": text}));
        }
    }
    if !guidance.is_empty() {
        doc.insert("operator_guidance".into(), Value::Array(guidance));
    }
    // Pretty JSON reads better for models and in journals; the size difference is small.
    Ok(serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default())
}

/// Parses a model's answer as JSON, tolerating a Markdown fence some models add anyway.
fn parse_answer(text: &str) -> Result<Value, Vec<ValidationIssue>> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str(t.trim())
        .map_err(|e| vec![ValidationIssue::new("", format!("is not valid JSON: {e}"))])
}

impl From<CallError> for EngineError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Cancelled => Self::Cancelled,
            CallError::Failed(e) => Self::Llm(e),
            CallError::Budget(e) => Self::Budget(e),
        }
    }
}

/// The largest output bound a truncated answer is re-asked with.
pub const MAX_OUTPUT_TOKENS: u32 = 16_384;

/// What a re-ask after a cut answer says instead of echoing the cut text.
fn cut_message(at: u64) -> String {
    format!(
        "Your previous answer was cut at {at} tokens (the output limit) before it was complete, \
         so it was discarded. Answer again with the same JSON object, more briefly: shorter \
         strings, fewer list items, no repetition."
    )
}

/// A re-ask numbered: the model knows how many chances are left, and two re-asks with the
/// same errors are distinct requests (an identical one would be answered from the journal).
fn attempt_note(attempt: usize, text: &str) -> String {
    format!("Attempt {} of {}. {text}", attempt + 2, MAX_REASKS + 1)
}

/// The output bound of `contract`'s answers: the operator's `[agents.<name>] max_tokens`, else
/// the contract's.
pub fn output_bound(ctx: &StepCtx<'_>, contract: &AgentContract) -> u32 {
    ctx.limits
        .output_tokens
        .get(&contract.name)
        .copied()
        .unwrap_or(contract.max_tokens)
}

/// The share of the model's context a request may fill; the token estimate is rough.
const CONTEXT_SHARE: f64 = 0.8;

/// What a string cut to fit the context ends with.
const CUT_MARK: &str = "\n[cut to fit the model's context]";

/// The user document, shrunk to fit the model's context when the model's size is known: the
/// longest text in it (a diff, a test log, a file tree) is halved, with a mark, until the
/// request fits (the prompt, the schema, the output bound and a margin included).
fn fit_to_context(
    ctx: &StepCtx<'_>,
    contract: &AgentContract,
    kind: &str,
    schema: &Value,
    user: String,
    bound: u32,
) -> String {
    let Some(context) = ctx.gateway.context_tokens(&ctx.meta(contract), "") else {
        return user;
    };
    let fixed = atlasia_llm::estimate_tokens(&ChatRequest {
        messages: vec![Message::text(Role::System, contract.prompt.clone())],
        response_format: Some(JsonSchema {
            name: kind.to_owned(),
            schema: schema.clone(),
            strict: true,
        }),
        ..ChatRequest::default()
    });
    let budget = ((f64::from(context) * CONTEXT_SHARE) as u32)
        .saturating_sub(bound)
        .saturating_sub(fixed);
    let measure = |text: &str| {
        atlasia_llm::estimate_tokens(&ChatRequest {
            messages: vec![Message::text(Role::User, text)],
            ..ChatRequest::default()
        })
    };
    if measure(&user) <= budget {
        return user;
    }
    let Ok(mut doc) = serde_json::from_str::<Value>(&user) else {
        return user;
    };
    let fitted = fit_document(&mut doc, |d| {
        measure(&serde_json::to_string_pretty(d).unwrap_or_default()) <= budget
    });
    tracing::info!(run = %ctx.run.id, agent = %contract.name, context, fitted,
        "input cut to fit the model's context");
    serde_json::to_string_pretty(&doc).unwrap_or(user)
}

/// Halves the longest string of `doc` (marking the cut) until `fits` says so or nothing long
/// is left; whether it fits in the end.
pub fn fit_document(doc: &mut Value, fits: impl Fn(&Value) -> bool) -> bool {
    fn longest(v: &mut Value) -> Option<&mut String> {
        match v {
            Value::String(s) => Some(s),
            Value::Array(items) => items.iter_mut().filter_map(longest).max_by_key(|s| s.len()),
            Value::Object(map) => map.values_mut().filter_map(longest).max_by_key(|s| s.len()),
            _ => None,
        }
    }
    while !fits(doc) {
        let Some(text) = longest(doc) else {
            return false;
        };
        if text.len() < 256 {
            return false;
        }
        let body = text.strip_suffix(CUT_MARK).unwrap_or(text).to_owned();
        let mut keep = body.len() / 2;
        while !body.is_char_boundary(keep) {
            keep -= 1;
        }
        *text = format!("{}{CUT_MARK}", &body[..keep]);
    }
    true
}

/// Runs `contract` in `ctx`: one call, then up to [`MAX_REASKS`] corrections; the valid
/// artifact. Every call is bounded ([`output_bound`]); an answer cut by the bound
/// (`finish_reason: length`) is discarded and asked again with twice the bound and a request
/// to be brief. A re-ask carries only the last answer and its errors, so the prompt never
/// grows with the attempts. Answers that stay invalid are [`EngineError::Invalid`]: the bolt
/// escalates rather than fails.
pub async fn run_agent(
    ctx: &StepCtx<'_>,
    contract: &AgentContract,
    user: String,
) -> Result<Value, EngineError> {
    let contracts = ctx.contracts;
    let (Some(kind), Some(schema)) = (
        contract.output.as_deref(),
        contract.output.as_deref().and_then(|k| contracts.schema(k)),
    ) else {
        return Err(EngineError::Step(format!(
            "agent {} has no output schema; it cannot run as a structured step",
            contract.name
        )));
    };
    let mut bound = output_bound(ctx, contract);
    let user = fit_to_context(ctx, contract, kind, schema, user, bound);
    let base = [
        Message::text(Role::System, contract.prompt.clone()),
        Message::text(Role::User, user),
    ];
    let mut followup: Vec<Message> = Vec::new();
    let mut last_problem = String::new();
    for attempt in 0..=MAX_REASKS {
        let req = ChatRequest {
            messages: base.iter().chain(&followup).cloned().collect(),
            response_format: Some(JsonSchema {
                name: kind.to_owned(),
                schema: schema.clone(),
                strict: true,
            }),
            max_tokens: Some(bound),
            ..ChatRequest::default()
        };
        let answer = ctx.chat(contract, req).await?;
        if answer.finish_reason == FinishReason::Length {
            let at = match answer.usage.output_tokens {
                0 => u64::from(bound),
                n => n,
            };
            tracing::info!(run = %ctx.run.id, agent = %contract.name, at,
                "{kind} cut by the output bound; asking again, briefly");
            last_problem = format!("the answer was cut at {at} tokens (max_tokens {bound})");
            followup = vec![Message::text(
                Role::User,
                attempt_note(attempt, &cut_message(at)),
            )];
            bound = bound.saturating_mul(2).min(MAX_OUTPUT_TOKENS.max(bound));
            continue;
        }
        let text = answer.content.unwrap_or_default();
        let issues = match parse_answer(&text).and_then(|v| {
            contracts.validate(kind, &v)?;
            Ok(v)
        }) {
            Ok(v) => return Ok(v),
            Err(issues) => issues,
        };
        tracing::info!(run = %ctx.run.id, agent = %contract.name, problems = issues.len(),
            "invalid {kind}; asking again");
        let detail: Vec<String> = issues.iter().map(ToString::to_string).collect();
        last_problem = detail.join("; ");
        followup = vec![
            Message::text(Role::Assistant, text),
            Message::text(Role::User, attempt_note(attempt, &reask_message(&issues))),
        ];
    }
    Err(EngineError::Invalid(format!(
        "{}: no valid {kind} after {MAX_REASKS} re-asks; last: {last_problem}",
        contract.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_or_without_fences() {
        assert_eq!(parse_answer(" {\"a\":1} ").ok(), Some(json!({"a": 1})));
        assert_eq!(
            parse_answer("```json\n{\"a\":1}\n```").ok(),
            Some(json!({"a": 1}))
        );
        assert!(parse_answer("sure! here it is").is_err());
    }

    #[test]
    fn documents_shrink_at_their_longest_text_until_they_fit() {
        let mut doc = json!({"issue": {"title": "t", "body": "b"},
                             "diff": "d".repeat(40_000), "test_log": ["x".repeat(9_000)]});
        let size = |d: &Value| d.to_string().len();
        assert!(fit_document(&mut doc, |d| size(d) < 12_000));
        assert!(size(&doc) < 12_000);
        let diff = doc["diff"].as_str().unwrap_or_default();
        assert!(
            diff.ends_with(CUT_MARK) && diff.starts_with("ddd"),
            "{}",
            diff.len()
        );
        assert_eq!(doc["issue"]["title"], "t", "short fields are untouched");
        // Nothing long left to cut: it says so instead of looping.
        let mut small = json!({"a": "short"});
        assert!(!fit_document(&mut small, |_| false));
    }
}
