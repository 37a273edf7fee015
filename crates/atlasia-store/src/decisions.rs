//! Human decisions on a waiting run (a gate answer, an escalation decision): the decision is
//! stored as an artifact, the status changes and the event is appended in one transaction, so
//! the engine never resumes a run whose decision was not recorded, and no decision is recorded
//! for a run that did not move.

use crate::pool::{acquire, on_pool};
use crate::row::RunRow;
use crate::runs::insert_event;
use crate::{Store, StoreError};
use atlasia_core::{EventKind, Run, RunAction, RunId, Timestamp};
use serde_json::{Value, json};
use sqlx::types::Json;

/// The `step` recorded on decision artifacts: a person produced them, not an agent.
pub const HUMAN_STEP: &str = "HUMAN";

/// Like the guarded status update of `runs.rs`, and also sets `error` when one is given (an
/// ABORT says why the run failed). Waiting runs hold no lease; it is cleared anyway.
const DECIDE: &str = "UPDATE workflow_runs SET status = $1, updated_at = $2, \
    last_event_seq = last_event_seq + 1, lease_owner = NULL, lease_expires_at = NULL, \
    error = COALESCE($5, error), \
    finished_at = CASE WHEN $1 IN ('DONE','FAILED','CANCELLED') THEN $2 ELSE finished_at END \
    WHERE id = $3 AND status = $4 RETURNING *";

const INSERT_ARTIFACT: &str = "INSERT INTO run_artifacts (run_id, kind, version, step, payload, \
    created_at) SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5 \
    FROM run_artifacts WHERE run_id = $1 AND kind = $2";

/// One human decision to record.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    /// Which decision; its legality is `RunStatus::apply`'s.
    pub action: RunAction,
    /// The artifact kind the decision is stored as (`gate_decision`, `escalation_decision`).
    pub artifact_kind: &'a str,
    /// The artifact.
    pub payload: Value,
    /// The status event's reason.
    pub reason: &'a str,
    /// Merged into the status event's data (gate, decision, by).
    pub extra: Value,
    /// Set as the run's error (a failing decision).
    pub error: Option<&'a str>,
}

impl Store {
    /// Records `d` on run `id` if its status allows the action: the artifact (next version of
    /// its kind), the status change and a `status_changed` event, in one transaction.
    /// `Transition` when the status does not allow it, `NotFound` when there is no such run.
    pub async fn decide(&self, id: RunId, d: &Decision<'_>) -> Result<Run, StoreError> {
        let id_text = id.to_string();
        // The status may change between the read and the guarded update (a cancel, another
        // operator); decide again a few times before giving up, as `apply_action` does.
        for _ in 0..5 {
            let current = self.get_run(id).await?;
            let to = current.status.apply(d.action)?;
            let from = current.status;
            let now = Timestamp::now().0;
            let row: Option<RunRow> = on_pool!(self, |p| {
                let _permit = self.write_permit().await?;
                let mut tx = acquire!(self, p, tx);
                let row: Option<RunRow> = sqlx::query_as(DECIDE)
                    .bind(to.as_str())
                    .bind(now)
                    .bind(&id_text)
                    .bind(from.as_str())
                    .bind(d.error.map(|e| self.clean(e).into_owned()))
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(r) = &row {
                    sqlx::query(INSERT_ARTIFACT)
                        .bind(&id_text)
                        .bind(d.artifact_kind)
                        .bind(HUMAN_STEP)
                        .bind(Json(self.clean_json(&d.payload)))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let mut data = json!({"from": from, "to": to, "reason": d.reason,
                                          "artifact": d.artifact_kind});
                    if let (Some(m), Value::Object(x)) = (data.as_object_mut(), &d.extra) {
                        m.extend(x.clone());
                    }
                    insert_event!(
                        self,
                        &mut *tx,
                        &id_text,
                        r.seq(),
                        EventKind::StatusChanged,
                        data,
                        now
                    );
                    tx.commit().await?;
                }
                row
            });
            if let Some(r) = row {
                crate::finished::observe(to, r.cost_usd);
                if to == atlasia_core::RunStatus::Pending {
                    self.wake_workers();
                    self.announce_queued().await;
                }
                return r.try_into();
            }
        }
        Err(StoreError::Conflict(format!(
            "run {id} kept changing status; try again"
        )))
    }
}
