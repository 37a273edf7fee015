//! Runs and their event log: create, read, list with keyset pagination, operator actions, bulk
//! pause/resume by priority. Every status change bumps the run's `last_event_seq` and appends
//! the matching event in the same transaction, so the log never misses or reorders a change.

use crate::pool::{acquire, on_pool};
use crate::row::{EventRow, RunRow};
use crate::{Store, StoreError};
use atlasia_core::{EventKind, NewRun, Run, RunAction, RunEvent, RunId, RunStatus, Timestamp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sqlx::QueryBuilder;
use sqlx::types::Json;

/// Largest page `list_runs` returns.
pub const MAX_PAGE: u32 = 200;

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub repo: Option<String>,
}

/// An opaque position in the newest-first list of runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(RunId);

impl Cursor {
    /// The text handed to clients.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}", self.0))
    }

    /// Reads back a cursor from [`Cursor::encode`].
    pub fn decode(s: &str) -> Result<Self, StoreError> {
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| StoreError::BadCursor)?;
        let text = std::str::from_utf8(&raw).map_err(|_| StoreError::BadCursor)?;
        let id = text.strip_prefix("v1:").ok_or(StoreError::BadCursor)?;
        id.parse().map(Cursor).map_err(|_| StoreError::BadCursor)
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Run>,
    /// Present when more runs may follow.
    pub next_cursor: Option<Cursor>,
}

/// Appends one event row inside an open transaction or connection.
/// The data passes through the store's hygiene (secrets redacted, NUL replaced) first.
macro_rules! insert_event {
    ($store:expr, $conn:expr, $run_id:expr, $seq:expr, $kind:expr, $data:expr, $now:expr) => {{
        let data = $store.clean_json(&$data).into_owned();
        sqlx::query(
            "INSERT INTO run_events (run_id, seq, kind, data, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($run_id)
        .bind($seq)
        .bind($kind.as_str())
        .bind(sqlx::types::Json(data))
        .bind($now)
        .execute($conn)
        .await?
    }};
}
pub(crate) use insert_event;

/// Inserts `$new` as a PENDING run `$id` (its `run_created` event is the caller's, with the
/// details it knows); evaluates to the stored row. Title and body pass through the store's
/// hygiene: an issue may quote a secret.
macro_rules! insert_run {
    ($store:expr, $conn:expr, $id:expr, $new:expr, $now:expr) => {
        sqlx::query_as::<_, RunRow>(
            "INSERT INTO workflow_runs (id, repo, issue_number, title, body, status, priority, \
             autonomy, budget_usd, last_event_seq, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $7, $8, 1, $9, $9) RETURNING *",
        )
        .bind($id)
        .bind(&$new.repo)
        .bind($new.issue_number)
        .bind($store.clean(&$new.title).into_owned())
        .bind($store.clean(&$new.body).into_owned())
        .bind($new.priority)
        .bind($new.autonomy.as_str())
        .bind($new.budget_usd)
        .bind($now)
        .fetch_one($conn)
        .await?
    };
}
pub(crate) use insert_run;

/// The guarded status update: only if the run still has `from` (and, when `$5` names a lease
/// holder, only while that worker still holds the lease); clears the lease when the run leaves
/// RUNNING and stamps `finished_at` on terminal statuses.
const UPDATE_STATUS: &str = "UPDATE workflow_runs SET status = $1, updated_at = $2, \
    last_event_seq = last_event_seq + 1, \
    lease_owner = CASE WHEN $1 = 'RUNNING' THEN lease_owner ELSE NULL END, \
    lease_expires_at = CASE WHEN $1 = 'RUNNING' THEN lease_expires_at ELSE NULL END, \
    finished_at = CASE WHEN $1 IN ('DONE','FAILED','CANCELLED') THEN $2 ELSE finished_at END \
    WHERE id = $3 AND status = $4 AND ($5 IS NULL OR lease_owner = $5) RETURNING *";

/// The active run of a (repository, issue), if any: the statuses of the partial unique index
/// `workflow_runs_one_active` (migration 0002), which settles races between concurrent inserts.
pub(crate) const ACTIVE_RUN_OF_ISSUE: &str = "SELECT id FROM workflow_runs \
    WHERE repo = $1 AND issue_number = $2 \
    AND status IN ('PENDING','RUNNING','PAUSED','WAITING_GATE','ESCALATED') LIMIT 1";

impl Store {
    /// Stores a new PENDING run and its `run_created` event. A run with an issue number is
    /// refused with [`StoreError::RunActive`] (naming the other run) while another run of the
    /// same repository and issue is active.
    pub async fn create_run(&self, new: &NewRun) -> Result<Run, StoreError> {
        match self.insert_new_run(new).await {
            Err(StoreError::RunActive(None)) => {
                // Lost a race to a concurrent insert: name the winner.
                Err(StoreError::RunActive(self.active_run_of_issue(new).await?))
            }
            other => other,
        }
    }

    /// The id of the active run of `new`'s repository and issue, if any.
    pub async fn active_run_of_issue(&self, new: &NewRun) -> Result<Option<String>, StoreError> {
        let Some(number) = new.issue_number else {
            return Ok(None);
        };
        let id: Option<String> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_scalar(ACTIVE_RUN_OF_ISSUE)
                .bind(&new.repo)
                .bind(number)
                .fetch_optional(&mut *conn)
                .await?
        });
        Ok(id)
    }

    async fn insert_new_run(&self, new: &NewRun) -> Result<Run, StoreError> {
        let id = RunId::new().to_string();
        let now = Timestamp::now().0;
        let row: RunRow = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            if let Some(number) = new.issue_number {
                let active: Option<String> = sqlx::query_scalar(ACTIVE_RUN_OF_ISSUE)
                    .bind(&new.repo)
                    .bind(number)
                    .fetch_optional(&mut *tx)
                    .await?;
                if active.is_some() {
                    return Err(StoreError::RunActive(active));
                }
            }
            let row: RunRow = insert_run!(self, &mut *tx, &id, new, now);
            let data = json!({"status": "PENDING", "priority": new.priority});
            insert_event!(self, &mut *tx, &id, 1_i64, EventKind::RunCreated, data, now);
            tx.commit().await?;
            row
        });
        self.wake_workers();
        self.announce_queued().await;
        row.try_into()
    }

    /// One run, or `NotFound`.
    pub async fn get_run(&self, id: RunId) -> Result<Run, StoreError> {
        let row: Option<RunRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as("SELECT * FROM workflow_runs WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or(StoreError::NotFound("run"))?.try_into()
    }

    /// Runs newest first, filtered, at most `limit` (capped at 200) after `cursor`.
    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: u32,
        cursor: Option<Cursor>,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let rows: Vec<RunRow> = on_pool!(self, |p| {
            let mut q = QueryBuilder::new("SELECT * FROM workflow_runs WHERE 1 = 1");
            if let Some(s) = filter.status {
                q.push(" AND status = ").push_bind(s.as_str());
            }
            if let Some(r) = &filter.repo {
                q.push(" AND repo = ").push_bind(r.clone());
            }
            if let Some(c) = cursor {
                q.push(" AND id < ").push_bind(c.0.to_string());
            }
            // One extra row tells whether another page exists.
            q.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(limit) + 1);
            let mut conn = acquire!(self, p);
            q.build_query_as().fetch_all(&mut *conn).await?
        });
        let mut items = rows
            .into_iter()
            .map(Run::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(|r| Cursor(r.id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Applies an operator action (pause, resume, cancel) if the run's status allows it.
    pub async fn apply_action(
        &self,
        id: RunId,
        action: RunAction,
        reason: &str,
    ) -> Result<Run, StoreError> {
        // The status may change between the read and the guarded update (a worker finishing,
        // another operator); re-read and decide again a few times before giving up.
        for _ in 0..5 {
            let current = self.get_run(id).await?;
            let next = current.status.apply(action)?;
            if let Some(run) = self
                .transition(id, current.status, next, reason, json!({}))
                .await?
            {
                return Ok(run);
            }
        }
        Err(StoreError::Conflict(format!(
            "run {id} kept changing status; try again"
        )))
    }

    /// Moves the run from `from` to `to` and logs it, or returns `None` when it no longer has
    /// `from`. Callers decide legality first (see `RunStatus::apply`).
    pub async fn transition(
        &self,
        id: RunId,
        from: RunStatus,
        to: RunStatus,
        reason: &str,
        extra: serde_json::Value,
    ) -> Result<Option<Run>, StoreError> {
        self.transition_held(id, from, to, reason, extra, None)
            .await
    }

    /// [`Store::transition`]; with `holder`, also only while that worker holds the lease,
    /// checked in the same statement so a lease reclaimed meanwhile is not overridden.
    pub(crate) async fn transition_held(
        &self,
        id: RunId,
        from: RunStatus,
        to: RunStatus,
        reason: &str,
        extra: serde_json::Value,
        holder: Option<&str>,
    ) -> Result<Option<Run>, StoreError> {
        let now = Timestamp::now().0;
        let id_text = id.to_string();
        let row: Option<RunRow> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let row: Option<RunRow> = sqlx::query_as(UPDATE_STATUS)
                .bind(to.as_str())
                .bind(now)
                .bind(&id_text)
                .bind(from.as_str())
                .bind(holder)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = &row {
                let mut data = json!({"from": from, "to": to, "reason": reason});
                if let (Some(d), serde_json::Value::Object(x)) = (data.as_object_mut(), extra) {
                    d.extend(x);
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
            }
            tx.commit().await?;
            row
        });
        if let Some(r) = &row {
            crate::finished::observe(to, r.cost_usd);
        }
        if to == RunStatus::Pending && row.is_some() {
            self.wake_workers();
            self.announce_queued().await;
        }
        row.map(Run::try_from).transpose()
    }

    /// Moves every run with status `from` and priority below `priority_below` to `to`, logging
    /// each; returns how many moved. Used by the admin bulk pause/resume.
    pub async fn bulk_transition(
        &self,
        from: RunStatus,
        to: RunStatus,
        priority_below: i32,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let now = Timestamp::now().0;
        let count = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            let moved: Vec<(String, i64)> = sqlx::query_as(
                "UPDATE workflow_runs SET status = $1, updated_at = $2, \
                 last_event_seq = last_event_seq + 1 \
                 WHERE status = $3 AND priority < $4 RETURNING id, last_event_seq",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(from.as_str())
            .bind(priority_below)
            .fetch_all(&mut *tx)
            .await?;
            let data = json!({"from": from, "to": to, "reason": reason});
            let data = self.clean_json(&data).into_owned();
            for chunk in moved.chunks(500) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO run_events (run_id, seq, kind, data, created_at) ",
                );
                q.push_values(chunk, |mut b, (id, seq)| {
                    b.push_bind(id.clone())
                        .push_bind(*seq)
                        .push_bind(EventKind::StatusChanged.as_str())
                        .push_bind(Json(data.clone()))
                        .push_bind(now);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            moved.len()
        });
        if to == RunStatus::Pending && count > 0 {
            self.wake_workers();
            self.announce_queued().await;
        }
        Ok(count as u64)
    }

    /// The run's newest event of `kind`, if any.
    pub async fn latest_event(
        &self,
        id: RunId,
        kind: EventKind,
    ) -> Result<Option<RunEvent>, StoreError> {
        let row: Option<EventRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as(
                "SELECT run_id, seq, kind, data, created_at FROM run_events \
                 WHERE run_id = $1 AND kind = $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(id.to_string())
            .bind(kind.as_str())
            .fetch_optional(&mut *conn)
            .await?
        });
        row.map(RunEvent::try_from).transpose()
    }

    /// The run's events with `seq > after`, oldest first, at most `limit`.
    pub async fn events(
        &self,
        id: RunId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let rows: Vec<EventRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as(
                "SELECT run_id, seq, kind, data, created_at FROM run_events \
                 WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(id.to_string())
            .bind(after)
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(&mut *conn)
            .await?
        });
        if rows.is_empty() {
            // Distinguish "no new events" from "no such run".
            self.get_run(id).await?;
        }
        rows.into_iter().map(RunEvent::try_from).collect()
    }

    /// How many runs have each status (statuses with none are listed with 0).
    pub async fn count_by_status(&self) -> Result<Vec<(RunStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as("SELECT status, COUNT(*) FROM workflow_runs GROUP BY status")
                .fetch_all(&mut *conn)
                .await?
        });
        Ok(RunStatus::ALL
            .into_iter()
            .map(|s| {
                let n = rows
                    .iter()
                    .find(|(t, _)| t == s.as_str())
                    .map_or(0, |(_, n)| *n);
                (s, n)
            })
            .collect())
    }
}

impl RunRow {
    pub(crate) fn seq(&self) -> i64 {
        self.last_event_seq
    }
}
