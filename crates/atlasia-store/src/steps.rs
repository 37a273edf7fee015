//! Steps and artifacts of a run. A worker holding the run's lease starts a step, then completes
//! it: the step row, the versioned artifact, the event and the run's `current_step` are written
//! in one transaction guarded by the lease, so a worker that lost its lease writes nothing and a
//! crash leaves either the whole step or none of it.

use crate::pool::{acquire, on_pool};
use crate::row::RunRow;
use crate::runs::insert_event;
use crate::{Store, StoreError};
use atlasia_core::{EventKind, Run, RunId, RunStatus, Timestamp};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;

/// One stored artifact version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artifact {
    /// The artifact kind (`ticket_plan`, `work_plan`, …), named after its schema.
    pub kind: String,
    /// 1, 2, 3… per run and kind; a loop-back writes a new version, never overwrites.
    pub version: i64,
    /// The step that produced it (`PM`, `QUALIFIER`, …).
    pub step: String,
    /// The validated JSON.
    pub payload: Value,
    /// When it was stored.
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ArtifactRow {
    kind: String,
    version: i64,
    step: String,
    payload: Json<Value>,
    created_at: i64,
}

impl From<ArtifactRow> for Artifact {
    fn from(r: ArtifactRow) -> Self {
        Self {
            kind: r.kind,
            version: r.version,
            step: r.step,
            payload: r.payload.0,
            created_at: Timestamp(r.created_at),
        }
    }
}

/// Bumps the event sequence (and optionally moves `current_step`) only while `owner` holds the
/// lease on a RUNNING run: every write below depends on this row coming back. Moving to another
/// step resets the count of worker deaths (poison runs are counted per step).
pub(crate) const TOUCH_HELD: &str = "UPDATE workflow_runs SET last_event_seq = last_event_seq + 1, \
    step_deaths = CASE WHEN current_step = $1 THEN step_deaths ELSE 0 END, \
    current_step = $1, updated_at = $2 \
    WHERE id = $3 AND status = 'RUNNING' AND lease_owner = $4 RETURNING *";

/// A new step row; `seq` and `attempt` are computed in the statement so both backends agree.
pub(crate) const INSERT_STEP: &str = "INSERT INTO run_steps (run_id, seq, step, attempt, status, started_at, \
    finished_at) SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, \
    (SELECT COUNT(*) FROM run_steps WHERE run_id = $1 AND step = $2) + 1, $3, $4, $5 \
    FROM run_steps WHERE run_id = $1";

/// The step row a `start_step` opened, closed as DONE.
pub(crate) const CLOSE_STEP: &str = "UPDATE run_steps SET status = $1, finished_at = $2, error = $3 \
    WHERE run_id = $4 AND seq = (SELECT MAX(seq) FROM run_steps \
    WHERE run_id = $4 AND step = $5 AND status = 'RUNNING')";

pub(crate) const INSERT_ARTIFACT: &str = "INSERT INTO run_artifacts (run_id, kind, version, step, payload, \
    created_at) SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5 \
    FROM run_artifacts WHERE run_id = $1 AND kind = $2 RETURNING CAST(version AS BIGINT)";

const FAIL_HELD: &str = "UPDATE workflow_runs SET status = 'FAILED', error = $1, updated_at = $2, \
    last_event_seq = last_event_seq + 1, lease_owner = NULL, lease_expires_at = NULL, \
    finished_at = $2 WHERE id = $3 AND status = 'RUNNING' AND lease_owner = $4 RETURNING *";

impl Store {
    /// Records that `owner` begins `step` (a RUNNING step row and a `step_started` event) and
    /// sets `current_step`. `None` when the lease is lost; nothing is written then.
    pub async fn start_step(
        &self,
        run_id: RunId,
        owner: &str,
        step: &str,
    ) -> Result<Option<Run>, StoreError> {
        let now = Timestamp::now().0;
        let id = run_id.to_string();
        let row: Option<RunRow> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let row: Option<RunRow> = sqlx::query_as(TOUCH_HELD)
                .bind(step)
                .bind(now)
                .bind(&id)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = &row {
                sqlx::query(INSERT_STEP)
                    .bind(&id)
                    .bind(step)
                    .bind("RUNNING")
                    .bind(now)
                    .bind(None::<i64>)
                    .execute(&mut *tx)
                    .await?;
                let attempt: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM run_steps WHERE run_id = $1 AND step = $2",
                )
                .bind(&id)
                .bind(step)
                .fetch_one(&mut *tx)
                .await?;
                let data = json!({"step": step, "attempt": attempt});
                insert_event!(
                    self,
                    &mut *tx,
                    &id,
                    r.seq(),
                    EventKind::StepStarted,
                    data,
                    now
                );
                tx.commit().await?;
            }
            row
        });
        row.map(Run::try_from).transpose()
    }

    /// Completes `step` in one transaction: closes (or inserts) its DONE step row, stores the
    /// artifact as the next version of `artifact_kind`, appends `step_completed` and moves
    /// `current_step` to `next_step` (the simple case of [`Store::end_step`]). `None` when
    /// `owner` no longer holds the lease of a RUNNING run; nothing is written then.
    pub async fn complete_step(
        &self,
        run_id: RunId,
        owner: &str,
        step: &str,
        artifact_kind: &str,
        payload: &Value,
        next_step: Option<&str>,
    ) -> Result<Option<Run>, StoreError> {
        let end = crate::StepEnd::done(step, (artifact_kind, payload), next_step);
        self.end_step(run_id, owner, &end).await
    }

    /// Moves `owner`'s RUNNING run to FAILED with `error` (the open step row fails with it),
    /// stores a `step_error` artifact `{step, error}` and logs the status change. `None` when
    /// the lease is lost.
    pub async fn fail_run(
        &self,
        run_id: RunId,
        owner: &str,
        error: &str,
    ) -> Result<Option<Run>, StoreError> {
        let now = Timestamp::now().0;
        let id = run_id.to_string();
        let error: &str = &self.clean(error);
        let row: Option<RunRow> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let row: Option<RunRow> = sqlx::query_as(FAIL_HELD)
                .bind(error)
                .bind(now)
                .bind(&id)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = &row {
                if let Some(step) = &r.current_step {
                    sqlx::query(CLOSE_STEP)
                        .bind("FAILED")
                        .bind(now)
                        .bind(error)
                        .bind(&id)
                        .bind(step)
                        .execute(&mut *tx)
                        .await?;
                }
                // The failure as an artifact too, next to the outputs it replaces.
                let step = r.current_step.as_deref().unwrap_or("ENGINE");
                sqlx::query(INSERT_ARTIFACT)
                    .bind(&id)
                    .bind("step_error")
                    .bind(step)
                    .bind(Json(json!({"step": step, "error": error})))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                let data = json!({"from": RunStatus::Running, "to": RunStatus::Failed,
                                  "reason": error, "owner": owner});
                insert_event!(
                    self,
                    &mut *tx,
                    &id,
                    r.seq(),
                    EventKind::StatusChanged,
                    data,
                    now
                );
                tx.commit().await?;
            }
            row
        });
        if let Some(r) = &row {
            crate::finished::observe(RunStatus::Failed, r.cost_usd);
        }
        row.map(Run::try_from).transpose()
    }

    /// Every artifact version of the run, by kind then version.
    pub async fn artifacts(&self, run_id: RunId) -> Result<Vec<Artifact>, StoreError> {
        let rows: Vec<ArtifactRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as(
                "SELECT kind, CAST(version AS BIGINT) AS version, step, payload, created_at \
                 FROM run_artifacts WHERE run_id = $1 ORDER BY created_at, kind, version",
            )
            .bind(run_id.to_string())
            .fetch_all(&mut *conn)
            .await?
        });
        if rows.is_empty() {
            // Distinguish "no artifacts yet" from "no such run".
            self.get_run(run_id).await?;
        }
        Ok(rows.into_iter().map(Artifact::from).collect())
    }

    /// The newest version of `kind`, if any.
    pub async fn latest_artifact(
        &self,
        run_id: RunId,
        kind: &str,
    ) -> Result<Option<Artifact>, StoreError> {
        let row: Option<ArtifactRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as(
                "SELECT kind, CAST(version AS BIGINT) AS version, step, payload, created_at \
                 FROM run_artifacts WHERE run_id = $1 AND kind = $2 \
                 ORDER BY version DESC LIMIT 1",
            )
            .bind(run_id.to_string())
            .bind(kind)
            .fetch_optional(&mut *conn)
            .await?
        });
        Ok(row.map(Artifact::from))
    }
}
