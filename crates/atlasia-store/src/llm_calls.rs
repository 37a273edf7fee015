//! The `llm_calls` ledger: one row per provider attempt (and per cache hit), written in batches
//! by the server's recorder. A row naming a run that does not exist keeps the call and drops
//! the link, so a proxy client's wrong `X-Atlasia-Run` never loses the cost record.

use crate::pool::{acquire, on_pool};
use crate::{Store, StoreError};
use sqlx::QueryBuilder;
use sqlx::types::Json;

/// One attempt to store.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCallRow {
    pub run_id: Option<String>,
    pub step: Option<String>,
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub request_key: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub outcome: String,
    pub cached: bool,
    pub response: Option<serde_json::Value>,
    pub created_at: i64,
}

/// Totals over the ledger, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LlmTotals {
    pub calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

impl Store {
    /// Appends rows in one statement per 200.
    pub async fn insert_llm_calls(&self, rows: &[LlmCallRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let _permit = self.write_permit().await?;
        on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            for chunk in rows.chunks(200) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO llm_calls (run_id, step, agent, provider, model, request_key, \
                     tokens_in, tokens_out, cost_usd, latency_ms, outcome, cached, response, \
                     created_at) ",
                );
                q.push_values(chunk, |mut b, r| {
                    b.push("(SELECT id FROM workflow_runs WHERE id = ")
                        .push_bind_unseparated(r.run_id.clone())
                        .push_unseparated(")")
                        .push_bind(r.step.clone())
                        .push_bind(r.agent.clone())
                        .push_bind(r.provider.clone())
                        .push_bind(r.model.clone())
                        .push_bind(r.request_key.clone())
                        .push_bind(r.tokens_in)
                        .push_bind(r.tokens_out)
                        .push_bind(r.cost_usd)
                        .push_bind(r.latency_ms)
                        .push_bind(r.outcome.clone())
                        .push_bind(r.cached)
                        .push_bind(
                            r.response
                                .as_ref()
                                .map(|v| Json(self.clean_json(v).into_owned())),
                        )
                        .push_bind(r.created_at);
                });
                q.build().execute(&mut *conn).await?;
            }
            // The run record's tokens and cost follow the ledger, however the run ends.
            let mut runs: Vec<&str> = rows.iter().filter_map(|r| r.run_id.as_deref()).collect();
            runs.sort_unstable();
            runs.dedup();
            for run in runs {
                sqlx::query(crate::progress::ROLL_UP_COST)
                    .bind(run)
                    .execute(&mut *conn)
                    .await?;
            }
        });
        Ok(())
    }

    /// USD of every call recorded at or after `since_ms` (Unix milliseconds): what the day
    /// budget has spent since midnight, read back after a restart.
    pub async fn llm_cost_since(&self, since_ms: i64) -> Result<f64, StoreError> {
        let sum: Option<f64> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_scalar(
                "SELECT CAST(SUM(cost_usd) AS DOUBLE PRECISION) FROM llm_calls \
                 WHERE created_at >= $1",
            )
            .bind(since_ms)
            .fetch_one(&mut *conn)
            .await?
        });
        Ok(sum.unwrap_or(0.0))
    }

    /// Totals of the rows for one run (all runs with `None`).
    pub async fn llm_totals(&self, run_id: Option<&str>) -> Result<LlmTotals, StoreError> {
        let row: (i64, Option<i64>, Option<i64>, Option<f64>) = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            let mut q = QueryBuilder::new(
                "SELECT COUNT(*), CAST(SUM(tokens_in) AS BIGINT), CAST(SUM(tokens_out) AS BIGINT), \
                 CAST(SUM(cost_usd) AS DOUBLE PRECISION) FROM llm_calls",
            );
            if let Some(r) = run_id {
                q.push(" WHERE run_id = ").push_bind(r.to_owned());
            }
            q.build_query_as().fetch_one(&mut *conn).await?
        });
        Ok(LlmTotals {
            calls: row.0,
            tokens_in: row.1.unwrap_or(0),
            tokens_out: row.2.unwrap_or(0),
            cost_usd: row.3.unwrap_or(0.0),
        })
    }
}
