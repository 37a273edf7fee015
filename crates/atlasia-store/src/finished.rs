//! What a bolt cost and how it ended, observed once when its run reaches a terminal status
//! (DONE, FAILED, CANCELLED), whoever moved it there: the engine (done, a failed step, a
//! refused write), the API (cancel), a human (ABORT) or the queue (a poison run). Every one of
//! those writes happens in this crate, so this is the one place that sees them all.
//!
//! ESCALATED and WAITING_GATE are not terminal: the run waits for a human and may go on; it is
//! observed when it does end (ABORT → FAILED, or DONE/FAILED after PROCEED).

use atlasia_core::RunStatus;

/// The statuses a run never leaves.
pub const TERMINAL: [RunStatus; 3] = [RunStatus::Done, RunStatus::Failed, RunStatus::Cancelled];

/// Records `llm_cost_per_bolt` (USD, the run record's ledger total) and
/// `workflow_runs_finished_total{status}` for a run that just reached `status`; nothing for a
/// status that is not terminal.
pub(crate) fn observe(status: RunStatus, cost_usd: f64) {
    if !TERMINAL.contains(&status) {
        return;
    }
    metrics::histogram!("llm_cost_per_bolt").record(cost_usd.max(0.0));
    metrics::counter!("workflow_runs_finished_total", "status" => status.as_str()).increment(1);
}

/// Registers `workflow_runs_finished_total` with HELP and every terminal status at 0, so
/// `increase()` sees the first failure of a fresh process.
pub fn describe_outcomes() {
    metrics::describe_counter!(
        "workflow_runs_finished_total",
        "Runs that reached a terminal status (DONE, FAILED, CANCELLED), by status."
    );
    for s in TERMINAL {
        metrics::counter!("workflow_runs_finished_total", "status" => s.as_str()).increment(0);
    }
}
