//! Read-only figures for `atlasia doctor`: what an on-call engineer would otherwise collect with
//! several hand-written queries (queue age, stuck leases, and on PostgreSQL the connection
//! states and long-running queries of the runbook's incident 1).

use crate::pool::{DbPool, acquire, on_pool};
use crate::{Store, StoreError};
use atlasia_core::Timestamp;

/// What the database says about the queue and its own load.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    /// Age in milliseconds of the oldest PENDING run, if any.
    pub oldest_pending_ms: Option<i64>,
    /// RUNNING runs whose lease has expired (a worker died; they await reclaim).
    pub expired_leases: i64,
    /// PostgreSQL only: server connections to this database by state (`active`, `idle`, …).
    pub connections_by_state: Vec<(String, i64)>,
    /// PostgreSQL only: the server's `max_connections`.
    pub server_max_connections: Option<i64>,
    /// PostgreSQL only: non-idle queries running for more than 5 minutes (pid, seconds, query).
    pub long_queries: Vec<(i32, f64, String)>,
}

impl Store {
    /// Collects [`Diagnostics`]; every query is read-only.
    pub async fn diagnostics(&self) -> Result<Diagnostics, StoreError> {
        let now = Timestamp::now().0;
        let mut d = Diagnostics::default();
        let (oldest, expired): (Option<i64>, i64) = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(created_at) FROM workflow_runs WHERE status = 'PENDING'",
            )
            .fetch_one(&mut *conn)
            .await?;
            let expired: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM workflow_runs WHERE status = 'RUNNING' AND lease_expires_at < $1",
            )
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            (oldest, expired)
        });
        d.oldest_pending_ms = oldest.map(|t| now - t);
        d.expired_leases = expired;
        if let DbPool::Postgres(p) = &self.pool {
            let mut conn = acquire!(self, p);
            d.connections_by_state = sqlx::query_as(
                "SELECT COALESCE(state, 'unknown'), COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() GROUP BY 1 ORDER BY 2 DESC",
            )
            .fetch_all(&mut *conn)
            .await?;
            d.server_max_connections = sqlx::query_scalar(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'",
            )
            .fetch_optional(&mut *conn)
            .await?;
            d.long_queries = sqlx::query_as(
                "SELECT pid, EXTRACT(EPOCH FROM now() - query_start)::float8, LEFT(query, 200) \
                 FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' \
                 AND now() - query_start > interval '5 minutes' ORDER BY 2 DESC LIMIT 10",
            )
            .fetch_all(&mut *conn)
            .await?;
        }
        Ok(d)
    }
}
