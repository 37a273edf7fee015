//! How a worker records a bolt's progress beyond plain step completion: ending a step with any
//! combination of artifacts, loop counters, extra events and a status change in one lease-guarded
//! transaction (loop-backs, gates, escalations, the final DONE), appending a single event while
//! holding the lease (LLM calls, tool calls, commits), and finding an answer a crashed attempt
//! already paid for in the `llm_calls` journal.

use crate::pool::{acquire, on_pool};
use crate::row::RunRow;
use crate::runs::insert_event;
use crate::steps::{CLOSE_STEP, INSERT_ARTIFACT, INSERT_STEP, TOUCH_HELD};
use crate::{Store, StoreError};
use atlasia_core::{EventKind, Run, RunId, RunStatus, Timestamp};
use serde_json::{Value, json};
use sqlx::types::Json;

/// Everything that ends one step. Built by the engine; written atomically by [`Store::end_step`].
#[derive(Debug, Clone)]
pub struct StepEnd<'a> {
    /// The step being ended (its open RUNNING row is closed).
    pub step: &'a str,
    /// The step row's final status: `DONE`, or `ESCALATED` when the step handed over to a human.
    pub step_status: &'a str,
    /// Artifacts to store, each as the next version of its kind.
    pub artifacts: Vec<(&'a str, &'a Value)>,
    /// The run's next `current_step` (where a resume continues).
    pub next_step: Option<&'a str>,
    /// New values of the loop counters (`review_loops`, `fix_loops`).
    pub loops: Option<(i64, i64)>,
    /// Events to append after `step_completed` (loop-back, gate, escalation, …).
    pub events: Vec<(EventKind, Value)>,
    /// Leave RUNNING for this status (lease released), with the reason for the status event.
    pub release: Option<(RunStatus, &'a str)>,
}

impl<'a> StepEnd<'a> {
    /// A step that completed with `artifact` and moves on to `next_step`.
    pub fn done(step: &'a str, artifact: (&'a str, &'a Value), next_step: Option<&'a str>) -> Self {
        Self {
            step,
            step_status: "DONE",
            artifacts: vec![artifact],
            next_step,
            loops: None,
            events: Vec::new(),
            release: None,
        }
    }
}

const BUMP_SEQ: &str =
    "UPDATE workflow_runs SET last_event_seq = last_event_seq + $1 WHERE id = $2";

const BUMP_SEQ_HELD: &str = "UPDATE workflow_runs SET last_event_seq = last_event_seq + 1, \
    updated_at = $2 WHERE id = $1 AND status = 'RUNNING' AND lease_owner = $3 \
    RETURNING last_event_seq";

const SET_LOOPS: &str = "UPDATE workflow_runs SET review_loops = $1, fix_loops = $2 WHERE id = $3";

/// The run's cost and tokens as the ledger has them: rolled up at every step's end and again
/// whenever the recorder writes rows of the run, so a run that ends any way at all (failed,
/// cancelled, poisoned) carries every call it paid for.
pub(crate) const ROLL_UP_COST: &str = "UPDATE workflow_runs SET \
    cost_usd = COALESCE((SELECT SUM(cost_usd) FROM llm_calls WHERE run_id = $1), 0), \
    tokens_in = COALESCE((SELECT SUM(tokens_in) FROM llm_calls WHERE run_id = $1), 0), \
    tokens_out = COALESCE((SELECT SUM(tokens_out) FROM llm_calls WHERE run_id = $1), 0) \
    WHERE id = $1";

const RELEASE: &str = "UPDATE workflow_runs SET status = $1, updated_at = $2, \
    lease_owner = NULL, lease_expires_at = NULL, \
    finished_at = CASE WHEN $1 IN ('DONE','FAILED','CANCELLED') THEN $2 ELSE finished_at END \
    WHERE id = $3";

impl Store {
    /// Writes `end` in one transaction while `owner` holds the lease of the RUNNING run:
    /// closes the step row, stores the artifacts (`step_completed` per artifact), sets the loop
    /// counters and `current_step`, rolls up the cost, appends the extra events and, with
    /// `release`, moves the run to that status and frees the lease. `None` (nothing written)
    /// when the lease is lost.
    pub async fn end_step(
        &self,
        run_id: RunId,
        owner: &str,
        end: &StepEnd<'_>,
    ) -> Result<Option<Run>, StoreError> {
        let now = Timestamp::now().0;
        let id = run_id.to_string();
        let row: Option<RunRow> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let touched: Option<RunRow> = sqlx::query_as(TOUCH_HELD)
                .bind(end.next_step)
                .bind(now)
                .bind(&id)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(first) = touched else {
                return Ok(None);
            };
            let closed = sqlx::query(CLOSE_STEP)
                .bind(end.step_status)
                .bind(now)
                .bind(None::<String>)
                .bind(&id)
                .bind(end.step)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if closed == 0 {
                sqlx::query(INSERT_STEP)
                    .bind(&id)
                    .bind(end.step)
                    .bind(end.step_status)
                    .bind(now)
                    .bind(Some(now))
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some((review, fix)) = end.loops {
                sqlx::query(SET_LOOPS)
                    .bind(review)
                    .bind(fix)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(ROLL_UP_COST)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            // The guarded update took the first sequence number; take the rest in one go.
            let events =
                end.artifacts.len().max(1) + end.events.len() + usize::from(end.release.is_some());
            let extra = i64::try_from(events).unwrap_or(i64::MAX) - 1;
            if extra > 0 {
                sqlx::query(BUMP_SEQ)
                    .bind(extra)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut seq = first.seq() - 1;
            let mut next_seq = || {
                seq += 1;
                seq
            };
            if end.artifacts.is_empty() {
                let data = json!({"step": end.step, "status": end.step_status,
                                  "next_step": end.next_step});
                let s = next_seq();
                insert_event!(self, &mut *tx, &id, s, EventKind::StepCompleted, data, now);
            }
            for (kind, payload) in &end.artifacts {
                let version: i64 = sqlx::query_scalar(INSERT_ARTIFACT)
                    .bind(&id)
                    .bind(*kind)
                    .bind(end.step)
                    .bind(Json(self.clean_json(payload)))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                let data = json!({"step": end.step, "artifact": kind, "version": version,
                                  "status": end.step_status, "next_step": end.next_step});
                let s = next_seq();
                insert_event!(self, &mut *tx, &id, s, EventKind::StepCompleted, data, now);
            }
            for (kind, data) in &end.events {
                let s = next_seq();
                insert_event!(self, &mut *tx, &id, s, *kind, data.clone(), now);
            }
            if let Some((to, reason)) = end.release {
                sqlx::query(RELEASE)
                    .bind(to.as_str())
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                let data = json!({"from": RunStatus::Running, "to": to, "reason": reason,
                                  "owner": owner});
                let s = next_seq();
                insert_event!(self, &mut *tx, &id, s, EventKind::StatusChanged, data, now);
            }
            let row: RunRow = sqlx::query_as("SELECT * FROM workflow_runs WHERE id = $1")
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Some(row)
        });
        if let (Some(r), Some((to, _))) = (&row, end.release) {
            crate::finished::observe(to, r.cost_usd);
        }
        row.map(Run::try_from).transpose()
    }

    /// Appends one event while `owner` holds the lease of the RUNNING run; `false` (nothing
    /// written) when the lease is lost.
    pub async fn append_event(
        &self,
        run_id: RunId,
        owner: &str,
        kind: EventKind,
        data: Value,
    ) -> Result<bool, StoreError> {
        let now = Timestamp::now().0;
        let id = run_id.to_string();
        let written = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let seq: Option<i64> = sqlx::query_scalar(BUMP_SEQ_HELD)
                .bind(&id)
                .bind(now)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(s) = seq {
                insert_event!(self, &mut *tx, &id, s, kind, data, now);
                tx.commit().await?;
            }
            seq.is_some()
        });
        Ok(written)
    }

    /// A successful answer journaled for `run_id` under `request_key`, if a earlier attempt
    /// (possibly by a crashed process) already received one.
    pub async fn journaled_response(
        &self,
        run_id: RunId,
        request_key: &str,
    ) -> Result<Option<Value>, StoreError> {
        let found: Option<Json<Value>> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_scalar(
                "SELECT response FROM llm_calls WHERE run_id = $1 AND request_key = $2 \
                 AND outcome = 'ok' AND response IS NOT NULL ORDER BY id LIMIT 1",
            )
            .bind(run_id.to_string())
            .bind(request_key)
            .fetch_optional(&mut *conn)
            .await?
        });
        Ok(found.map(|j| j.0))
    }
}
