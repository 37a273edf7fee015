//! Run events: the append-only, per-run numbered log that drives replay for watchers.

use crate::{RunId, Timestamp};
use serde::Serialize;

/// What happened. Stored as text; the payload carries the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The run was accepted.
    RunCreated,
    /// The status changed; payload `{from, to, reason}`.
    StatusChanged,
    /// A worker took the lease; payload `{owner, reclaimed}`.
    LeaseClaimed,
    /// A worker began a step; payload `{step, attempt}`.
    StepStarted,
    /// A step finished and stored its artifact; payload `{step, artifact, version, next_step}`.
    StepCompleted,
    /// An LLM call began; payload `{step, agent, turn}`.
    LlmCallStarted,
    /// An LLM call answered; payload `{step, agent, model, tokens_in, tokens_out, cost_usd,
    /// latency_ms, replayed}` (`replayed`: taken from the journal of a crashed attempt, unpaid).
    LlmCallCompleted,
    /// An LLM call failed for good; payload `{step, agent, error}`.
    LlmCallFailed,
    /// The developer used a tool; payload `{step, tool, target, ok, detail}`.
    ToolCalled,
    /// A commit landed on the bolt's branch; payload `{step, commit, branch, message}`.
    Committed,
    /// The bolt went back to an earlier step; payload `{edge, from, to, count, max, reason}`.
    LoopBack,
    /// The bolt stopped at a human gate; payload `{gate, step}`.
    GateOpened,
    /// The bolt escalated to a human; payload `{step, reason, blocker}`.
    Escalated,
    /// The pull request record was opened or updated; payload `{forge, head, base, title, number, url}`.
    PullRequestUpdated,
}

impl EventKind {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunCreated => "run_created",
            Self::StatusChanged => "status_changed",
            Self::LeaseClaimed => "lease_claimed",
            Self::StepStarted => "step_started",
            Self::StepCompleted => "step_completed",
            Self::LlmCallStarted => "llm_call_started",
            Self::LlmCallCompleted => "llm_call_completed",
            Self::LlmCallFailed => "llm_call_failed",
            Self::ToolCalled => "tool_called",
            Self::Committed => "committed",
            Self::LoopBack => "loop_back",
            Self::GateOpened => "gate_opened",
            Self::Escalated => "escalated",
            Self::PullRequestUpdated => "pull_request_updated",
        }
    }
}

/// One entry of a run's event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvent {
    /// The run it belongs to.
    pub run_id: RunId,
    /// 1, 2, 3… per run, without gaps: a watcher resumes with `after=<seq>`.
    pub seq: i64,
    /// Stored kind text (see [`EventKind`]); kept as text so later kinds read back unchanged.
    pub kind: String,
    /// Details, as JSON.
    pub data: serde_json::Value,
    /// When it was appended.
    pub created_at: Timestamp,
}
