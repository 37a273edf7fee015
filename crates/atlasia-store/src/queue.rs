//! The durable run queue. A worker claims the highest-priority, oldest PENDING run and holds it
//! with a lease that it heartbeats; a lease that expires (the worker died) is reclaimed by any
//! worker. PAUSED runs are never claimed, so the runbook's hand-written
//! `UPDATE workflow_runs SET status = 'PAUSED' WHERE status = 'PENDING' AND priority < 5;`
//! holds them back. PostgreSQL uses `FOR UPDATE SKIP LOCKED` so claimers never wait on each
//! other; SQLite takes the single write lock up front (`BEGIN IMMEDIATE`).

use crate::pool::{DbPool, acquire};
use crate::row::RunRow;
use crate::runs::insert_event;
use crate::{Store, StoreError};
use atlasia_core::{EventKind, Run, RunId, RunStatus, Timestamp};
use serde_json::json;
use sqlx::types::Json;
use std::time::Duration;

/// A run handed to a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The run, now RUNNING under the caller's lease.
    pub run: Run,
    /// True when the run was taken over from a worker whose lease expired.
    pub reclaimed: bool,
}

const EXPIRED_PG: &str = "SELECT id, lease_owner FROM workflow_runs WHERE status = 'RUNNING' \
    AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT 1 FOR UPDATE SKIP LOCKED";
const EXPIRED_SQLITE: &str = "SELECT id, lease_owner FROM workflow_runs WHERE status = 'RUNNING' \
    AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT 1";
const NEXT_PG: &str = "SELECT id, lease_owner FROM workflow_runs WHERE status = 'PENDING' \
    ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED";
const NEXT_SQLITE: &str = "SELECT id, lease_owner FROM workflow_runs WHERE status = 'PENDING' \
    ORDER BY priority DESC, created_at, id LIMIT 1";
const TAKE: &str = "UPDATE workflow_runs SET status = 'RUNNING', lease_owner = $1, \
    lease_expires_at = $2, started_at = COALESCE(started_at, $3), updated_at = $3, \
    last_event_seq = last_event_seq + 1 WHERE id = $4 RETURNING *";

/// [`TAKE`], only while the run is still claimable: the update re-checks the row under its lock,
/// so two processes claiming the same run by id cannot both win.
const TAKE_IF_CLAIMABLE: &str = "UPDATE workflow_runs SET status = 'RUNNING', lease_owner = $1, \
    lease_expires_at = $2, started_at = COALESCE(started_at, $3), updated_at = $3, \
    last_event_seq = last_event_seq + 1 WHERE id = $4 AND (status = 'PENDING' OR \
    (status = 'RUNNING' AND lease_expires_at < $3)) RETURNING *";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claims one run inside an open transaction `$tx`, choosing the SQL for the backend.
macro_rules! claim_in {
    ($tx:expr, $owner:expr, $lease:expr, $expired_sql:expr, $next_sql:expr) => {{
        let now = Timestamp::now().0;
        let mut found: Option<(String, Option<String>)> = sqlx::query_as($expired_sql)
            .bind(now)
            .fetch_optional(&mut *$tx)
            .await?;
        // Finish what was started before taking new work.
        let reclaimed = found.is_some();
        if found.is_none() {
            found = sqlx::query_as($next_sql).fetch_optional(&mut *$tx).await?;
        }
        match found {
            None => None,
            Some((id, previous_owner)) => {
                let row: RunRow = sqlx::query_as(TAKE)
                    .bind($owner)
                    .bind(now.saturating_add(millis($lease)))
                    .bind(now)
                    .bind(&id)
                    .fetch_one(&mut *$tx)
                    .await?;
                let (kind, data) = if reclaimed {
                    (
                        EventKind::LeaseClaimed,
                        json!({"owner": $owner, "reclaimed": true, "previous_owner": previous_owner}),
                    )
                } else {
                    (
                        EventKind::StatusChanged,
                        json!({"from": RunStatus::Pending, "to": RunStatus::Running,
                               "reason": "claimed", "owner": $owner}),
                    )
                };
                insert_event!(&mut *$tx, &id, row.last_event_seq, kind, data, now);
                Some((row, reclaimed))
            }
        }
    }};
}

impl Store {
    /// Takes the next run for `owner` with a lease of `lease`, or `None` when nothing is
    /// claimable. Each run is handed to exactly one claimer.
    pub async fn claim(&self, owner: &str, lease: Duration) -> Result<Option<Claim>, StoreError> {
        let claimed = match &self.pool {
            DbPool::Postgres(p) => {
                let mut tx = acquire!(self, p, tx);
                let c = claim_in!(tx, owner, lease, EXPIRED_PG, NEXT_PG);
                tx.commit().await?;
                c
            }
            DbPool::Sqlite(p) => {
                let _permit = self.write_permit().await?;
                let mut tx = acquire!(self, p, tx_with "BEGIN IMMEDIATE");
                let c = claim_in!(tx, owner, lease, EXPIRED_SQLITE, NEXT_SQLITE);
                tx.commit().await?;
                c
            }
        };
        claimed
            .map(|(row, reclaimed)| {
                Ok(Claim {
                    run: row.try_into()?,
                    reclaimed,
                })
            })
            .transpose()
    }

    /// Claims run `id` for `owner` when it is PENDING (or RUNNING under an expired lease), like
    /// [`Store::claim`] but for one chosen run: `atlasia run` drives its own bolt and leaves the
    /// rest of the queue to the servers.
    pub async fn claim_run(
        &self,
        id: RunId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let now = Timestamp::now().0;
        let id_text = id.to_string();
        let claimed: Option<(RunRow, bool)> = crate::pool::on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let found: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT status, lease_owner FROM workflow_runs WHERE id = $1 AND \
                 (status = 'PENDING' OR (status = 'RUNNING' AND lease_expires_at < $2))",
            )
            .bind(&id_text)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let taken = match found {
                None => None,
                Some((status, previous_owner)) => {
                    let row: Option<RunRow> = sqlx::query_as(TAKE_IF_CLAIMABLE)
                        .bind(owner)
                        .bind(now.saturating_add(millis(lease)))
                        .bind(now)
                        .bind(&id_text)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(row) = row else {
                        return Ok(None);
                    };
                    let reclaimed = status == "RUNNING";
                    let (kind, data) = if reclaimed {
                        (
                            EventKind::LeaseClaimed,
                            json!({"owner": owner, "reclaimed": true, "previous_owner": previous_owner}),
                        )
                    } else {
                        (
                            EventKind::StatusChanged,
                            json!({"from": RunStatus::Pending, "to": RunStatus::Running,
                                "reason": "claimed", "owner": owner}),
                        )
                    };
                    insert_event!(&mut *tx, &id_text, row.last_event_seq, kind, data, now);
                    Some((row, reclaimed))
                }
            };
            tx.commit().await?;
            taken
        });
        claimed
            .map(|(row, reclaimed)| {
                Ok(Claim {
                    run: row.try_into()?,
                    reclaimed,
                })
            })
            .transpose()
    }

    /// Extends `owner`'s lease on a RUNNING run. `false` means the lease is lost (expired and
    /// reclaimed, or the run was paused or cancelled): the worker must stop working on it.
    pub async fn heartbeat(
        &self,
        id: RunId,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = Timestamp::now().0;
        let done = crate::pool::on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut conn = acquire!(self, p);
            sqlx::query(
                "UPDATE workflow_runs SET lease_expires_at = $1 \
                 WHERE id = $2 AND lease_owner = $3 AND status = 'RUNNING'",
            )
            .bind(now.saturating_add(millis(lease)))
            .bind(id.to_string())
            .bind(owner)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Ends `owner`'s hold on a RUNNING run by moving it to `to` (e.g. DONE, FAILED, PENDING to
    /// requeue). `None` when the caller no longer holds the lease.
    pub async fn release(
        &self,
        id: RunId,
        owner: &str,
        to: RunStatus,
        reason: &str,
    ) -> Result<Option<Run>, StoreError> {
        let run = self.get_run(id).await?;
        if run.status != RunStatus::Running || run.lease_owner.as_deref() != Some(owner) {
            return Ok(None);
        }
        // The lease may be reclaimed between the read above and this update: guard on it there.
        let extra = json!({"owner": owner});
        self.transition_held(id, RunStatus::Running, to, reason, extra, Some(owner))
            .await
    }
}
