//! Human decisions on a run and what they lead to: answering a gate, deciding an escalation,
//! and reading the pull request a run opened. Legality is `RunStatus::apply`'s; the decision
//! is stored as an artifact together with the status change (`Store::decide`), so the next
//! agent can read it.

use crate::auth::{AsOperator, AsViewer};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::routes::runs::run_id;
use crate::state::AppState;
use atlasia_core::{Run, RunAction};
use atlasia_store::{Decision, PullRequest};
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The gates the engine can stop at; a run waits at most at one of them.
pub const GATES: [&str; 2] = [
    atlasia_core::Gate::ArchitectureApproval.as_str(),
    atlasia_core::Gate::PublishApproval.as_str(),
];

/// Longest gate comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 4000;

/// Longest escalation guidance, in characters.
pub const MAX_GUIDANCE_CHARS: usize = 8000;

/// A gate answer.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateDecision {
    Approve,
    Reject,
}

/// Body of `POST /api/runs/{id}/gates/{gate}/respond`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateResponse {
    decision: GateDecision,
    comment: Option<String>,
}

/// An escalation decision; upper case as the design writes it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EscalationChoice {
    Proceed,
    Abort,
}

impl EscalationChoice {
    fn as_str(self) -> &'static str {
        match self {
            Self::Proceed => "PROCEED",
            Self::Abort => "ABORT",
        }
    }
}

/// Body of `POST /api/runs/{id}/escalation-decision`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationDecision {
    decision: EscalationChoice,
    guidance: Option<String>,
}

/// Checks an optional free text: at most `max` characters, and no NUL (PostgreSQL's JSONB
/// cannot store it, so it would otherwise surface as a 500).
fn free_text(field: &str, text: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    let Some(t) = text else { return Ok(None) };
    let invalid = |message: String| ApiError::Invalid {
        field: field.into(),
        message,
    };
    if t.chars().count() > max {
        return Err(invalid(format!("must be at most {max} characters")));
    }
    if t.contains('\0') {
        return Err(invalid("must not contain NUL".into()));
    }
    Ok(Some(t))
}

/// `POST /api/runs/{id}/gates/{gate}/respond`: approve requeues the run (the engine continues
/// from its `current_step`), reject fails it. 422 `gate` for a gate the engine does not have,
/// 409 with `current_status` when the run is not waiting at a gate, 409 `conflict` when it
/// waits at another gate.
pub async fn respond_gate(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    Path((id, gate)): Path<(String, String)>,
    ApiJson(body): ApiJson<GateResponse>,
) -> Result<Json<Run>, ApiError> {
    let id = run_id(&id)?;
    if !GATES.contains(&gate.as_str()) {
        return Err(ApiError::Invalid {
            field: "gate".into(),
            message: format!("unknown gate '{gate}'; known: {}", GATES.join(", ")),
        });
    }
    // The answer must name the gate the engine opened (runs parked some other way have none).
    let opened = st
        .store
        .latest_event(id, atlasia_core::EventKind::GateOpened)
        .await?;
    if let Some(waiting) = opened
        .as_ref()
        .and_then(|e| e.data.get("gate"))
        .and_then(|g| g.as_str())
        .filter(|g| *g != gate)
    {
        let run = st.store.get_run(id).await?;
        if run.status == atlasia_core::RunStatus::WaitingGate {
            return Err(ApiError::Conflict(format!(
                "run {id} waits at gate '{waiting}', not '{gate}'"
            )));
        }
    }
    let comment = free_text("comment", body.comment, MAX_COMMENT_CHARS)?;
    let (action, error) = match body.decision {
        GateDecision::Approve => (RunAction::GateApprove, None),
        GateDecision::Reject => (
            RunAction::GateReject,
            Some(match &comment {
                Some(c) => format!("gate {gate} rejected by {}: {c}", caller.name),
                None => format!("gate {gate} rejected by {}", caller.name),
            }),
        ),
    };
    let reason = format!(
        "gate {gate} {} by {}",
        action_word(body.decision),
        caller.name
    );
    let decision = Decision {
        action,
        artifact_kind: "gate_decision",
        payload: json!({"gate": gate, "decision": body.decision, "comment": comment,
                        "by": caller.name}),
        reason: &reason,
        extra: json!({"gate": gate, "decision": body.decision, "by": caller.name}),
        error: error.as_deref(),
    };
    let run = st.store.decide(id, &decision).await?;
    tracing::info!(run_id = %run.id, %gate, decision = ?body.decision, by = %caller.name,
        status = %run.status, "gate answered");
    Ok(Json(run))
}

fn action_word(d: GateDecision) -> &'static str {
    match d {
        GateDecision::Approve => "approved",
        GateDecision::Reject => "rejected",
    }
}

/// `POST /api/runs/{id}/escalation-decision`: PROCEED requeues the run with the guidance
/// stored for the next agent, ABORT fails it. 409 with `current_status` unless ESCALATED.
pub async fn escalation_decision(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EscalationDecision>,
) -> Result<Json<Run>, ApiError> {
    let id = run_id(&id)?;
    let guidance = free_text("guidance", body.guidance, MAX_GUIDANCE_CHARS)?;
    let (action, error) = match body.decision {
        EscalationChoice::Proceed => (RunAction::Proceed, None),
        EscalationChoice::Abort => (
            RunAction::Abort,
            Some(match &guidance {
                Some(g) => format!("aborted by {}: {g}", caller.name),
                None => format!("aborted by {}", caller.name),
            }),
        ),
    };
    let reason = format!("escalation {} by {}", body.decision.as_str(), caller.name);
    let decision = Decision {
        action,
        artifact_kind: "escalation_decision",
        payload: json!({"decision": body.decision, "guidance": guidance, "by": caller.name}),
        reason: &reason,
        extra: json!({"decision": body.decision, "by": caller.name}),
        error: error.as_deref(),
    };
    let run = st.store.decide(id, &decision).await?;
    tracing::info!(run_id = %run.id, decision = body.decision.as_str(), by = %caller.name,
        status = %run.status, "escalation decided");
    Ok(Json(run))
}

/// A run's pull request with its unified diff.
#[derive(Debug, Serialize)]
pub struct PullRequestView {
    #[serde(flatten)]
    pr: PullRequest,
    /// The unified diff of base..head; `null` until the forge can produce it for the record.
    diff: Option<String>,
}

/// `GET /api/runs/{id}/pull-request`: 404 when the run does not exist or opened none.
pub async fn pull_request(
    State(st): State<AppState>,
    _: AsViewer,
    Path(id): Path<String>,
) -> Result<Json<PullRequestView>, ApiError> {
    let id = run_id(&id)?;
    let pr = st.store.get_pull_request(&id.to_string()).await?;
    let Some(pr) = pr else {
        // Tell "no such run" from "no pull request yet"; both are 404.
        st.store.get_run(id).await?;
        return Err(ApiError::NotFound("pull request".into()));
    };
    // The writer stores the diff with the record, so it outlives the bolt's worktree.
    let diff = st
        .store
        .latest_artifact(id, "pull_request_diff")
        .await?
        .and_then(|a| {
            a.payload
                .get("diff")
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        });
    Ok(Json(PullRequestView { pr, diff }))
}
