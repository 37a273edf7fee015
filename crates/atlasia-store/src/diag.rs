//! Read-only figures for `atlasia doctor`: what an on-call engineer would otherwise collect with
//! several hand-written queries — the queue (age, stuck leases, whether any worker is alive)
//! and, on PostgreSQL, the connection states, long-running queries and lock waits with the
//! session that blocks them (the runbook's incidents 1 and 6). Split in two calls so the doctor
//! can bound each: a table locked for minutes blocks the queue figures, not the activity view.

use crate::pool::{DbPool, acquire, on_pool};
use crate::{Store, StoreError};
use atlasia_core::Timestamp;

/// What the database says about the queue.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    /// PENDING runs.
    pub pending: i64,
    /// Age in milliseconds of the oldest PENDING run, if any.
    pub oldest_pending_ms: Option<i64>,
    /// RUNNING runs whose lease has expired (a worker died; they await reclaim).
    pub expired_leases: i64,
    /// RUNNING runs whose lease is still live: a worker heartbeated within the lease.
    pub live_leases: i64,
}

/// A session waiting for a lock, and who holds it (PostgreSQL).
#[derive(Debug, Clone)]
pub struct LockWait {
    pub pid: i32,
    /// Seconds since the waiting statement started.
    pub waiting_s: f64,
    pub query: String,
    pub blocking_pid: i32,
    /// The blocker's state (`idle in transaction` is the classic culprit) and last statement.
    pub blocking_state: String,
    pub blocking_query: String,
}

/// PostgreSQL's view of its own load on this database.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// Server connections to this database by state (`active`, `idle`, …).
    pub connections_by_state: Vec<(String, i64)>,
    /// The server's `max_connections`.
    pub server_max_connections: Option<i64>,
    /// Non-idle queries running for more than 5 minutes (pid, seconds, query).
    pub long_queries: Vec<(i32, f64, String)>,
    /// Sessions waiting for a lock, longest first.
    pub lock_waits: Vec<LockWait>,
}

impl Store {
    /// Collects the queue's [`Diagnostics`]; every query is read-only.
    pub async fn diagnostics(&self) -> Result<Diagnostics, StoreError> {
        let now = Timestamp::now().0;
        let (pending, oldest, expired, live): (i64, Option<i64>, i64, i64) = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_as(
                "SELECT \
                 (SELECT COUNT(*) FROM workflow_runs WHERE status = 'PENDING'), \
                 (SELECT MIN(created_at) FROM workflow_runs WHERE status = 'PENDING'), \
                 (SELECT COUNT(*) FROM workflow_runs WHERE status = 'RUNNING' AND lease_expires_at < $1), \
                 (SELECT COUNT(*) FROM workflow_runs WHERE status = 'RUNNING' AND lease_expires_at >= $1)",
            )
            .bind(now)
            .fetch_one(&mut *conn)
            .await?
        });
        Ok(Diagnostics {
            pending,
            oldest_pending_ms: oldest.map(|t| now - t),
            expired_leases: expired,
            live_leases: live,
        })
    }

    /// PostgreSQL's [`Activity`] (from `pg_stat_activity`, which no table lock blocks); `None`
    /// on SQLite.
    pub async fn activity(&self) -> Result<Option<Activity>, StoreError> {
        let DbPool::Postgres(p) = &self.pool else {
            return Ok(None);
        };
        let mut conn = acquire!(self, p);
        let mut a = Activity {
            connections_by_state: sqlx::query_as(
                "SELECT COALESCE(state, 'unknown'), COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() GROUP BY 1 ORDER BY 2 DESC",
            )
            .fetch_all(&mut *conn)
            .await?,
            server_max_connections: sqlx::query_scalar(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'",
            )
            .fetch_optional(&mut *conn)
            .await?,
            long_queries: sqlx::query_as(
                "SELECT pid, EXTRACT(EPOCH FROM now() - query_start)::float8, LEFT(query, 200) \
                 FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' \
                 AND now() - query_start > interval '5 minutes' ORDER BY 2 DESC LIMIT 10",
            )
            .fetch_all(&mut *conn)
            .await?,
            lock_waits: Vec::new(),
        };
        let waits: Vec<(i32, f64, String, i32, String, String)> = sqlx::query_as(
            "SELECT w.pid, EXTRACT(EPOCH FROM now() - COALESCE(w.query_start, now()))::float8, \
             LEFT(COALESCE(w.query, ''), 200), b.pid, COALESCE(b.state, 'unknown'), \
             LEFT(COALESCE(b.query, ''), 200) \
             FROM pg_stat_activity w \
             CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid) \
             JOIN pg_stat_activity b ON b.pid = blocker.pid \
             WHERE w.datname = current_database() AND w.wait_event_type = 'Lock' \
             ORDER BY 2 DESC LIMIT 10",
        )
        .fetch_all(&mut *conn)
        .await?;
        a.lock_waits = waits
            .into_iter()
            .map(
                |(pid, waiting_s, query, blocking_pid, blocking_state, blocking_query)| LockWait {
                    pid,
                    waiting_s,
                    query,
                    blocking_pid,
                    blocking_state,
                    blocking_query,
                },
            )
            .collect();
        Ok(Some(a))
    }
}
