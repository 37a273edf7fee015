//! The durable run queue. A worker claims the highest-priority, oldest PENDING run and holds it
//! with a lease that it heartbeats; a lease that expires (the worker died) is reclaimed by any
//! worker. PAUSED runs are never claimed, so the runbook's hand-written
//! `UPDATE workflow_runs SET status = 'PAUSED' WHERE status = 'PENDING' AND priority < 5;`
//! holds them back. PostgreSQL uses `FOR UPDATE SKIP LOCKED` so claimers never wait on each
//! other; SQLite takes the single write lock up front (`BEGIN IMMEDIATE`).

use crate::pool::{DbPool, acquire};
use crate::row::RunRow;
use crate::runs::insert_event;
use crate::steps::CLOSE_STEP;
use crate::{Store, StoreError};
use atlasia_core::{EventKind, Run, RunId, RunStatus, Timestamp};
use serde_json::json;
use std::time::Duration;

/// A run handed to a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The run, now RUNNING under the caller's lease.
    pub run: Run,
    /// True when the run was taken over from a worker whose lease expired.
    pub reclaimed: bool,
}

const EXPIRED_PG: &str = "SELECT id, lease_owner, current_step, CAST(step_deaths AS BIGINT) \
    FROM workflow_runs WHERE status = 'RUNNING' AND lease_expires_at < $1 \
    ORDER BY lease_expires_at LIMIT 1 FOR UPDATE SKIP LOCKED";
const EXPIRED_SQLITE: &str = "SELECT id, lease_owner, current_step, CAST(step_deaths AS BIGINT) \
    FROM workflow_runs WHERE status = 'RUNNING' AND lease_expires_at < $1 \
    ORDER BY lease_expires_at LIMIT 1";
const NEXT_PG: &str = "SELECT id, lease_owner, current_step, CAST(step_deaths AS BIGINT) \
    FROM workflow_runs WHERE status = 'PENDING' \
    ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED";
const NEXT_SQLITE: &str = "SELECT id, lease_owner, current_step, CAST(step_deaths AS BIGINT) \
    FROM workflow_runs WHERE status = 'PENDING' \
    ORDER BY priority DESC, created_at, id LIMIT 1";
/// `$5`: 1 when the run is reclaimed from a worker that died (its lease expired), else 0.
const TAKE: &str = "UPDATE workflow_runs SET status = 'RUNNING', lease_owner = $1, \
    lease_expires_at = $2, started_at = COALESCE(started_at, $3), updated_at = $3, \
    last_event_seq = last_event_seq + 1, step_deaths = step_deaths + $5 \
    WHERE id = $4 RETURNING *";

/// [`TAKE`], only while the run is still claimable: the update re-checks the row under its lock,
/// so two processes claiming the same run by id cannot both win.
const TAKE_IF_CLAIMABLE: &str = "UPDATE workflow_runs SET status = 'RUNNING', lease_owner = $1, \
    lease_expires_at = $2, started_at = COALESCE(started_at, $3), updated_at = $3, \
    last_event_seq = last_event_seq + 1, step_deaths = step_deaths + $5 \
    WHERE id = $4 AND (status = 'PENDING' OR \
    (status = 'RUNNING' AND lease_expires_at < $3)) RETURNING *";

/// Ends a poison run: FAILED with the reason, lease cleared, the death counted.
const POISON: &str = "UPDATE workflow_runs SET status = 'FAILED', error = $1, updated_at = $2, \
    finished_at = $2, lease_owner = NULL, lease_expires_at = NULL, \
    last_event_seq = last_event_seq + 1, step_deaths = step_deaths + 1 \
    WHERE id = $3 AND status = 'RUNNING' AND lease_expires_at < $2 RETURNING last_event_seq, cost_usd";

/// A claimable row: id, lease owner, current step, deaths at that step.
type Candidate = (String, Option<String>, Option<String>, i64);

/// What one claim attempt found.
enum Found {
    Nothing,
    Claimed(Box<RunRow>, bool),
    /// A run whose worker died `max_attempts` times at the same step, now FAILED.
    Poisoned(String, String, f64),
}

/// The reason a poison run fails with.
fn poison_reason(deaths: i64, step: Option<&str>) -> String {
    format!(
        "the worker died {deaths} times during {}; the run is not retried \
         (engine.max_attempts)",
        step.unwrap_or("its first step")
    )
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Takes `$found` (a [`Candidate`]) for `$owner` inside `$tx`, or fails it as a poison run when
/// it was reclaimed (`$reclaimed`) and its worker has now died `max_attempts` times at the
/// same step. Evaluates to a [`Found`].
macro_rules! take_in {
    ($store:expr, $tx:expr, $owner:expr, $lease:expr, $now:expr, $found:expr, $reclaimed:expr, $take_sql:expr) => {{
        let (id, previous_owner, step, deaths): Candidate = $found;
        let reclaimed: bool = $reclaimed;
        if reclaimed && deaths + 1 >= i64::from($store.max_attempts()) {
            let reason = poison_reason(deaths + 1, step.as_deref());
            let seq: Option<(i64, f64)> = sqlx::query_as(POISON)
                .bind(&reason)
                .bind($now)
                .bind(&id)
                .fetch_optional(&mut *$tx)
                .await?;
            match seq {
                None => Found::Nothing,
                Some((seq, cost)) => {
                    if let Some(step) = &step {
                        sqlx::query(CLOSE_STEP)
                            .bind("FAILED")
                            .bind($now)
                            .bind(&reason)
                            .bind(&id)
                            .bind(step)
                            .execute(&mut *$tx)
                            .await?;
                    }
                    let data = json!({"from": RunStatus::Running, "to": RunStatus::Failed,
                        "reason": reason, "poisoned": true, "deaths": deaths + 1,
                        "step": step, "previous_owner": previous_owner});
                    insert_event!($store, &mut *$tx, &id, seq, EventKind::StatusChanged, data, $now);
                    Found::Poisoned(id, reason, cost)
                }
            }
        } else {
            let row: Option<RunRow> = sqlx::query_as($take_sql)
                .bind($owner)
                .bind($now.saturating_add(millis($lease)))
                .bind($now)
                .bind(&id)
                .bind(i64::from(reclaimed))
                .fetch_optional(&mut *$tx)
                .await?;
            match row {
                None => Found::Nothing,
                Some(row) => {
                    let (kind, data) = if reclaimed {
                        (
                            EventKind::LeaseClaimed,
                            json!({"owner": $owner, "reclaimed": true,
                                   "previous_owner": previous_owner, "deaths": deaths + 1}),
                        )
                    } else {
                        (
                            EventKind::StatusChanged,
                            json!({"from": RunStatus::Pending, "to": RunStatus::Running,
                                   "reason": "claimed", "owner": $owner}),
                        )
                    };
                    insert_event!($store, &mut *$tx, &id, row.last_event_seq, kind, data, $now);
                    Found::Claimed(Box::new(row), reclaimed)
                }
            }
        }
    }};
}

/// Claims one run inside an open transaction `$tx`, choosing the SQL for the backend.
macro_rules! claim_in {
    ($store:expr, $tx:expr, $owner:expr, $lease:expr, $expired_sql:expr, $next_sql:expr) => {{
        let now = Timestamp::now().0;
        // Finish what was started before taking new work.
        let expired: Option<Candidate> = sqlx::query_as($expired_sql)
            .bind(now)
            .fetch_optional(&mut *$tx)
            .await?;
        match expired {
            Some(c) => take_in!($store, $tx, $owner, $lease, now, c, true, TAKE),
            None => {
                let next: Option<Candidate> =
                    sqlx::query_as($next_sql).fetch_optional(&mut *$tx).await?;
                match next {
                    Some(c) => take_in!($store, $tx, $owner, $lease, now, c, false, TAKE),
                    None => Found::Nothing,
                }
            }
        }
    }};
}

impl Store {
    /// Takes the next run for `owner` with a lease of `lease`, or `None` when nothing is
    /// claimable. Each run is handed to exactly one claimer. A run found under an expired
    /// lease whose worker has died `max_attempts` times at its current step is failed (with
    /// its event, in the same transaction) instead of being handed out, and the search goes on.
    pub async fn claim(&self, owner: &str, lease: Duration) -> Result<Option<Claim>, StoreError> {
        loop {
            let found = match &self.pool {
                DbPool::Postgres(p) => {
                    let mut tx = acquire!(self, p, tx);
                    let c = claim_in!(self, tx, owner, lease, EXPIRED_PG, NEXT_PG);
                    tx.commit().await?;
                    c
                }
                DbPool::Sqlite(p) => {
                    let _permit = self.write_permit().await?;
                    let mut tx = acquire!(self, p, tx_with "BEGIN IMMEDIATE");
                    let c = claim_in!(self, tx, owner, lease, EXPIRED_SQLITE, NEXT_SQLITE);
                    tx.commit().await?;
                    c
                }
            };
            match found {
                Found::Nothing => return Ok(None),
                Found::Claimed(row, reclaimed) => {
                    return Ok(Some(Claim {
                        run: (*row).try_into()?,
                        reclaimed,
                    }));
                }
                Found::Poisoned(id, reason, cost) => self.poisoned(&id, &reason, cost),
            }
        }
    }

    /// Says so, loudly: a poison run is an incident (the step kills its worker).
    fn poisoned(&self, id: &str, reason: &str, cost_usd: f64) {
        metrics::counter!("workflow_runs_poisoned_total").increment(1);
        crate::finished::observe(RunStatus::Failed, cost_usd);
        tracing::error!(run = %id, %reason, "poison run failed");
    }

    /// Claims run `id` for `owner` when it is PENDING (or RUNNING under an expired lease), like
    /// [`Store::claim`] but for one chosen run: `atlasia run` drives its own bolt and leaves the
    /// rest of the queue to the servers. A poison run (see [`Store::claim`]) is failed and
    /// `None` returned.
    pub async fn claim_run(
        &self,
        id: RunId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let now = Timestamp::now().0;
        let id_text = id.to_string();
        let found: Found = crate::pool::on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let candidate: Option<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
                "SELECT status, lease_owner, current_step, CAST(step_deaths AS BIGINT) \
                     FROM workflow_runs WHERE id = $1 AND \
                     (status = 'PENDING' OR (status = 'RUNNING' AND lease_expires_at < $2))",
            )
            .bind(&id_text)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let found = match candidate {
                None => Found::Nothing,
                Some((status, previous_owner, step, deaths)) => {
                    let c = (id_text.clone(), previous_owner, step, deaths);
                    let reclaimed = status == "RUNNING";
                    take_in!(self, tx, owner, lease, now, c, reclaimed, TAKE_IF_CLAIMABLE)
                }
            };
            tx.commit().await?;
            found
        });
        match found {
            Found::Nothing => Ok(None),
            Found::Claimed(row, reclaimed) => Ok(Some(Claim {
                run: (*row).try_into()?,
                reclaimed,
            })),
            Found::Poisoned(id, reason, cost) => {
                self.poisoned(&id, &reason, cost);
                Ok(None)
            }
        }
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
