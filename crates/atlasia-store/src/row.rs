//! Rows as the database returns them, and their conversion into domain types. A value that a
//! hand edit made unreadable becomes `StoreError::Corrupt`, never a panic.

use crate::StoreError;
use atlasia_core::{Run, RunEvent, RunId, Timestamp};
use sqlx::types::Json;

/// Every column of `workflow_runs`, in one struct both backends decode into.
#[derive(sqlx::FromRow)]
pub(crate) struct RunRow {
    pub(crate) id: String,
    pub(crate) repo: String,
    pub(crate) issue_number: Option<i64>,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) status: String,
    pub(crate) priority: i32,
    pub(crate) autonomy: String,
    pub(crate) current_step: Option<String>,
    pub(crate) review_loops: i32,
    pub(crate) fix_loops: i32,
    pub(crate) budget_usd: Option<f64>,
    pub(crate) cost_usd: f64,
    pub(crate) tokens_in: i64,
    pub(crate) tokens_out: i64,
    pub(crate) lease_owner: Option<String>,
    pub(crate) lease_expires_at: Option<i64>,
    pub(crate) last_event_seq: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) error: Option<String>,
}

pub(crate) fn parse_id(s: &str) -> Result<RunId, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("run id '{s}' is not a UUID")))
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    fn try_from(r: RunRow) -> Result<Self, StoreError> {
        Ok(Run {
            id: parse_id(&r.id)?,
            status: r.status.parse().map_err(StoreError::Corrupt)?,
            autonomy: r.autonomy.parse().map_err(StoreError::Corrupt)?,
            repo: r.repo,
            issue_number: r.issue_number,
            title: r.title,
            body: r.body,
            priority: r.priority,
            current_step: r.current_step,
            review_loops: r.review_loops,
            fix_loops: r.fix_loops,
            budget_usd: r.budget_usd,
            cost_usd: r.cost_usd,
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at.map(Timestamp),
            last_event_seq: r.last_event_seq,
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
            started_at: r.started_at.map(Timestamp),
            finished_at: r.finished_at.map(Timestamp),
            error: r.error,
        })
    }
}

/// One `run_events` row.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub(crate) run_id: String,
    pub(crate) seq: i64,
    pub(crate) kind: String,
    pub(crate) data: Json<serde_json::Value>,
    pub(crate) created_at: i64,
}

impl TryFrom<EventRow> for RunEvent {
    type Error = StoreError;

    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        Ok(RunEvent {
            run_id: parse_id(&r.run_id)?,
            seq: r.seq,
            kind: r.kind,
            data: r.data.0,
            created_at: Timestamp(r.created_at),
        })
    }
}
