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
