//! The pipeline's order and one structured-output agent step: the contract's prompt as the
//! system message, the run's issue, earlier artifacts and any operator guidance as the user
//! message, the artifact's schema as `response_format`; the answer is parsed and validated, and
//! re-asked with the validation errors at most [`MAX_REASKS`] times.

use crate::contracts::{AgentContract, Contracts, ValidationIssue, reask_message};
use atlasia_core::Run;
use atlasia_llm::{CallMeta, ChatRequest, Gateway, JsonSchema, Message, Role};
use atlasia_store::{Store, StoreError};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// How many times an invalid answer is sent back with its validation errors before the step
/// fails (the issue asks for "once or twice").
pub const MAX_REASKS: usize = 2;

/// The first step of every run.
pub const FIRST_STEP: &str = "PM";

/// The steps implemented so far, in order: (step, agent contract name). Every one of them is a
/// single structured-output conversation.
pub const AGENT_STEPS: [(&str, &str); 3] = [
    ("PM", "pm"),
    ("QUALIFIER", "qualifier"),
    ("ARCHITECT", "architect"),
];

/// The step that follows the last implemented one; reaching it ends the partial pipeline.
pub const NOT_IMPLEMENTED: &str = "DEVELOPER";

/// The step after `step`, as stored in `current_step`.
pub fn next_step(step: &str) -> Option<&'static str> {
    let at = AGENT_STEPS.iter().position(|(s, _)| *s == step)?;
    Some(AGENT_STEPS.get(at + 1).map_or(NOT_IMPLEMENTED, |(s, _)| *s))
}

/// How an agent step ended, short of an infrastructure error.
#[derive(Debug)]
pub enum AgentOutcome {
    /// A valid artifact.
    Artifact(Value),
    /// The step cannot succeed (invalid output after the re-asks, a refused or failed LLM
    /// call); the message says why, for the run's `error`.
    Failed(String),
    /// Cancelled (lease lost, pause, cancel or shutdown): nothing is written.
    Cancelled,
}

/// What an agent step may fail with that is not the step's own fault.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The user message: the issue, then each input artifact the contract names (latest version).
pub async fn inputs(
    store: &Store,
    run: &Run,
    contract: &AgentContract,
) -> Result<String, StepError> {
    let mut doc = Map::new();
    for input in &contract.inputs {
        if input == "issue" {
            doc.insert(
                "issue".into(),
                json!({"repo": run.repo, "number": run.issue_number,
                       "title": run.title, "body": run.body}),
            );
        } else if let Some(a) = store.latest_artifact(run.id, input).await? {
            doc.insert(input.clone(), a.payload);
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

/// Runs `contract` for `run`: one call, then up to [`MAX_REASKS`] corrections.
pub async fn run_agent(
    gateway: &Gateway,
    contracts: &Contracts,
    run: &Run,
    contract: &AgentContract,
    user: String,
    cancel: &CancellationToken,
) -> AgentOutcome {
    let (Some(kind), Some(schema)) = (
        contract.output.as_deref(),
        contract.output.as_deref().and_then(|k| contracts.schema(k)),
    ) else {
        return AgentOutcome::Failed(format!(
            "agent {} has no output schema; it cannot run as a structured step",
            contract.name
        ));
    };
    let meta = CallMeta {
        agent: contract.name.clone(),
        run_id: Some(run.id.to_string()),
        priority: u8::try_from(run.priority.clamp(0, 10)).unwrap_or(5),
        run_budget_usd: run.budget_usd,
        cache_opt_in: false,
    };
    let mut messages = vec![
        Message::text(Role::System, contract.prompt.clone()),
        Message::text(Role::User, user),
    ];
    let mut last_issues = Vec::new();
    for _attempt in 0..=MAX_REASKS {
        let req = ChatRequest {
            messages: messages.clone(),
            response_format: Some(JsonSchema {
                name: kind.to_owned(),
                schema: schema.clone(),
                strict: true,
            }),
            ..ChatRequest::default()
        };
        let answer = tokio::select! {
            r = gateway.chat(&meta, req) => r,
            () = cancel.cancelled() => return AgentOutcome::Cancelled,
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                return AgentOutcome::Failed(format!("{}: LLM call failed: {e}", contract.name));
            }
        };
        let text = answer.content.unwrap_or_default();
        let issues = match parse_answer(&text).and_then(|v| {
            contracts.validate(kind, &v)?;
            Ok(v)
        }) {
            Ok(v) => return AgentOutcome::Artifact(v),
            Err(issues) => issues,
        };
        tracing::info!(run = %run.id, agent = %contract.name, problems = issues.len(),
            "invalid {kind}; asking again");
        messages.push(Message::text(Role::Assistant, text));
        messages.push(Message::text(Role::User, reask_message(&issues)));
        last_issues = issues;
    }
    let detail: Vec<String> = last_issues.iter().map(ToString::to_string).collect();
    AgentOutcome::Failed(format!(
        "{}: output is not a valid {kind} after {MAX_REASKS} re-asks: {}",
        contract.name,
        detail.join("; ")
    ))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn order_ends_at_the_first_missing_step() {
        assert_eq!(next_step("PM"), Some("QUALIFIER"));
        assert_eq!(next_step("QUALIFIER"), Some("ARCHITECT"));
        assert_eq!(next_step("ARCHITECT"), Some(NOT_IMPLEMENTED));
        assert_eq!(next_step("DEVELOPER"), None);
    }

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
    fn every_implemented_step_has_a_contract_with_a_schema() {
        let c = Contracts::embedded().unwrap();
        for (_, agent) in AGENT_STEPS {
            let a = c.agent(agent).unwrap();
            assert!(c.schema(a.output.as_deref().unwrap()).is_some(), "{agent}");
        }
    }
}
