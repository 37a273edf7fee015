//! The run status machine. Every status change anywhere (API, engine, admin bulk actions) goes
//! through [`RunStatus::apply`], so an illegal transition is impossible to write by accident.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a run is in its life. Stored as the upper-case text the runbook's SQL uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Waiting in the queue; the only status a worker claims.
    Pending,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Held by an operator; never claimed until resumed.
    Paused,
    /// Stopped at a human-in-the-loop gate.
    WaitingGate,
    /// Stopped because the pipeline could not go on alone; waits for PROCEED or ABORT.
    Escalated,
    /// Finished with a pull request.
    Done,
    /// Finished without one.
    Failed,
    /// Stopped by an operator.
    Cancelled,
}

/// What an operator can ask of a run through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    Pause,
    Resume,
    Cancel,
    /// Approve the gate a WAITING_GATE run stops at.
    GateApprove,
    /// Reject the gate a WAITING_GATE run stops at.
    GateReject,
    /// Let an ESCALATED run go on (with the operator's guidance).
    Proceed,
    /// End an ESCALATED run.
    Abort,
}

/// An action that the run's current status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a run that is {from}")]
pub struct TransitionError {
    /// The status the run had.
    pub from: RunStatus,
    /// What was asked.
    pub action: RunAction,
}

impl RunStatus {
    /// Every status, in the order dashboards list them.
    pub const ALL: [RunStatus; 8] = [
        Self::Pending,
        Self::Running,
        Self::Paused,
        Self::WaitingGate,
        Self::Escalated,
        Self::Done,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::WaitingGate => "WAITING_GATE",
            Self::Escalated => "ESCALATED",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// A run in a terminal status never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    /// The status an operator action leads to from this one, or why it is refused.
    ///
    /// Pause holds a queued or running run; a running run stops between steps. A run waiting
    /// for a human (gate, escalation) is already held, and pausing it would let resume skip the
    /// human's decision, so that is refused. Resume puts a paused run back in the queue (it continues from its last
    /// completed step). Cancel ends anything not yet finished. The human decisions only apply
    /// where the run waits for them: approving a gate or PROCEEDing after an escalation requeues
    /// the run (the engine continues from `current_step`); rejecting or ABORTing fails it.
    pub fn apply(self, action: RunAction) -> Result<RunStatus, TransitionError> {
        let next = match (self, action) {
            (Self::Pending | Self::Running, RunAction::Pause) => Some(Self::Paused),
            (Self::Paused, RunAction::Resume) => Some(Self::Pending),
            (s, RunAction::Cancel) if !s.is_terminal() => Some(Self::Cancelled),
            (Self::WaitingGate, RunAction::GateApprove) => Some(Self::Pending),
            (Self::WaitingGate, RunAction::GateReject) => Some(Self::Failed),
            (Self::Escalated, RunAction::Proceed) => Some(Self::Pending),
            (Self::Escalated, RunAction::Abort) => Some(Self::Failed),
            _ => None,
        };
        next.ok_or(TransitionError { from: self, action })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown status '{s}'"))
    }
}

impl RunAction {
    /// The verb as used in messages ("cannot … a run that is …"); pause, resume and cancel
    /// are also the URL segments.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::GateApprove => "approve the gate of",
            Self::GateReject => "reject the gate of",
            Self::Proceed => "proceed with",
            Self::Abort => "abort",
        }
    }
}

impl fmt::Display for RunAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_round_trips() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(s));
        }
        assert!("WAITING".parse::<RunStatus>().is_err());
    }

    #[test]
    fn pause_resume_cancel_follow_the_table() {
        use RunAction::*;
        use RunStatus::*;
        assert_eq!(Pending.apply(Pause), Ok(Paused));
        assert_eq!(Running.apply(Pause), Ok(Paused));
        assert_eq!(Paused.apply(Resume), Ok(Pending));
        assert_eq!(Paused.apply(Cancel), Ok(Cancelled));
        assert!(Paused.apply(Pause).is_err());
        assert!(Pending.apply(Resume).is_err());
        // Waiting for a human: pausing would let resume skip the decision.
        assert!(WaitingGate.apply(Pause).is_err());
        assert!(Escalated.apply(Pause).is_err());
        assert_eq!(WaitingGate.apply(Cancel), Ok(Cancelled));
        for t in [Done, Failed, Cancelled] {
            for a in [Pause, Resume, Cancel] {
                assert_eq!(t.apply(a), Err(TransitionError { from: t, action: a }));
            }
        }
    }

    #[test]
    fn human_decisions_apply_only_where_the_run_waits_for_them() {
        use RunAction::*;
        use RunStatus::*;
        assert_eq!(WaitingGate.apply(GateApprove), Ok(Pending));
        assert_eq!(WaitingGate.apply(GateReject), Ok(Failed));
        assert_eq!(Escalated.apply(Proceed), Ok(Pending));
        assert_eq!(Escalated.apply(Abort), Ok(Failed));
        for s in RunStatus::ALL {
            for (a, at) in [
                (GateApprove, WaitingGate),
                (GateReject, WaitingGate),
                (Proceed, Escalated),
                (Abort, Escalated),
            ] {
                if s != at {
                    assert_eq!(s.apply(a), Err(TransitionError { from: s, action: a }));
                }
            }
        }
        assert_eq!(
            Pending
                .apply(GateApprove)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("cannot approve the gate of a run that is PENDING")
        );
    }
}
