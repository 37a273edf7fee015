//! The logical form of Atlasia's tables for backups: one JSON line per row,
//! `{"table":"…","row":{column: value}}`, tables parents first and rows in primary-key order.
//!
//! One format for both backends, so a backup of either restores into either (and `verify`
//! can always restore into a scratch SQLite file). The export reads in one snapshot (a
//! `REPEATABLE READ READ ONLY` transaction on PostgreSQL, one read transaction in WAL mode on
//! SQLite), so it is consistent while a server keeps writing. The file around the rows
//! (compression, manifest, checksum) is the command line's business.

use crate::pool::{acquire, on_pool};
use crate::{Backend, Store, StoreError};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::types::Json;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

/// How a column's value is read, written and shown in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// INTEGER or BIGINT: read as BIGINT on both backends.
    Int,
    Real,
    Bool,
    /// JSONB on PostgreSQL, JSON text on SQLite; inlined as JSON in the backup.
    Json,
}

/// A table in the backup: its columns and the order its rows are written in.
struct Table {
    name: &'static str,
    order_by: &'static str,
    columns: &'static [(&'static str, Kind)],
}

use Kind::{Bool, Int, Json as J, Real, Text};

/// Every table of Atlasia, parents before children (the restore inserts in this order).
/// A migration that adds a table or column must add it here; the unit test below fails
/// until it does.
const TABLES: &[Table] = &[
    Table {
        name: "workflow_runs",
        order_by: "id",
        columns: &[
            ("id", Text),
            ("repo", Text),
            ("issue_number", Int),
            ("title", Text),
            ("body", Text),
            ("status", Text),
            ("priority", Int),
            ("autonomy", Text),
            ("current_step", Text),
            ("review_loops", Int),
            ("fix_loops", Int),
            ("budget_usd", Real),
            ("cost_usd", Real),
            ("tokens_in", Int),
            ("tokens_out", Int),
            ("lease_owner", Text),
            ("lease_expires_at", Int),
            ("last_event_seq", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("started_at", Int),
            ("finished_at", Int),
            ("error", Text),
            ("step_deaths", Int),
        ],
    },
    Table {
        name: "run_events",
        order_by: "run_id, seq",
        columns: &[
            ("run_id", Text),
            ("seq", Int),
            ("kind", Text),
            ("data", J),
            ("created_at", Int),
        ],
    },
    Table {
        name: "run_steps",
        order_by: "run_id, seq",
        columns: &[
            ("run_id", Text),
            ("seq", Int),
            ("step", Text),
            ("attempt", Int),
            ("status", Text),
            ("started_at", Int),
            ("finished_at", Int),
            ("error", Text),
        ],
    },
    Table {
        name: "run_artifacts",
        order_by: "run_id, kind, version",
        columns: &[
            ("run_id", Text),
            ("kind", Text),
            ("version", Int),
            ("step", Text),
            ("payload", J),
            ("created_at", Int),
        ],
    },
    Table {
        name: "llm_calls",
        order_by: "id",
        columns: &[
            ("id", Int),
            ("run_id", Text),
            ("step", Text),
            ("agent", Text),
            ("provider", Text),
            ("model", Text),
            ("request_key", Text),
            ("tokens_in", Int),
            ("tokens_out", Int),
            ("cost_usd", Real),
            ("latency_ms", Int),
            ("outcome", Text),
            ("cached", Bool),
            ("response", J),
            ("created_at", Int),
        ],
    },
    Table {
        name: "pull_requests",
        order_by: "run_id",
        columns: &[
            ("run_id", Text),
            ("forge", Text),
            ("number", Int),
            ("url", Text),
            ("title", Text),
            ("body", Text),
            ("base", Text),
            ("head", Text),
            ("diff_stat", Text),
            ("state", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        name: "api_tokens",
        order_by: "id",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("role", Text),
            ("token_hash", Text),
            ("created_at", Int),
            ("last_used_at", Int),
            ("revoked_at", Int),
        ],
    },
    Table {
        name: "webhook_deliveries",
        order_by: "delivery_id",
        columns: &[
            ("delivery_id", Text),
            ("event", Text),
            ("outcome", Text),
            ("run_id", Text),
            ("received_at", Int),
        ],
    },
];

/// Rows per table, by table name.
pub type TableCounts = BTreeMap<String, u64>;

/// Why a backup could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the rows out (or reading them in) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line of the payload is not a row of a known table (a damaged or foreign file).
    #[error("line {line}: {reason}")]
    Format { line: u64, reason: String },
}

/// One line of the payload.
#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    table: String,
    row: Map<String, Value>,
}

fn select_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|(c, k)| match k {
            // INTEGER is 4 bytes on PostgreSQL; one width on both sides keeps decoding simple.
            Int => format!("CAST({c} AS BIGINT) AS {c}"),
            _ => (*c).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A column's value as JSON; generic over the backend's row type.
macro_rules! column_json {
    ($row:expr, $col:expr, $kind:expr) => {{
        let r = &$row;
        let c: &str = $col;
        match $kind {
            Text => r.try_get::<Option<String>, _>(c)?.map(Value::String),
            Int => r.try_get::<Option<i64>, _>(c)?.map(Value::from),
            Real => r.try_get::<Option<f64>, _>(c)?.map(Value::from),
            Bool => r.try_get::<Option<bool>, _>(c)?.map(Value::Bool),
            J => r.try_get::<Option<Json<Value>>, _>(c)?.map(|j| j.0),
        }
        .unwrap_or(Value::Null)
    }};
}

/// Binds one JSON value as its column's kind; a value of the wrong JSON type is a format error.
macro_rules! push_value {
    ($q:expr, $v:expr, $kind:expr, $col:expr) => {{
        let v: &Value = $v;
        let bad = || format!("column {} holds {v}, not a {:?} value", $col, $kind);
        match ($kind, v) {
            (Text, Value::Null) => $q.push_bind(None::<String>),
            (Text, Value::String(s)) => $q.push_bind(Some(s.clone())),
            (Int, Value::Null) => $q.push_bind(None::<i64>),
            (Int, Value::Number(n)) => $q.push_bind(Some(n.as_i64().ok_or_else(bad)?)),
            (Real, Value::Null) => $q.push_bind(None::<f64>),
            (Real, Value::Number(n)) => $q.push_bind(Some(n.as_f64().ok_or_else(bad)?)),
            (Bool, Value::Null) => $q.push_bind(None::<bool>),
            (Bool, Value::Bool(b)) => $q.push_bind(Some(*b)),
            (J, Value::Null) => $q.push_bind(None::<Json<Value>>),
            (J, other) => $q.push_bind(Some(Json(other.clone()))),
            _ => return Err(bad()),
        };
    }};
}

impl Store {
    /// The newest migration applied to this database (0 before any).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.map_err(e))?
        });
        Ok(v.unwrap_or(0))
    }

    /// Rows per table now (every table a backup holds).
    pub async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        let mut counts = TableCounts::new();
        for t in TABLES {
            let sql = format!("SELECT COUNT(*) FROM {}", t.name);
            let n: i64 = on_pool!(self, |p| {
                let mut conn = acquire!(self, p);
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.map_err(e))?
            });
            counts.insert(t.name.to_owned(), u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    /// Writes every row of every table to `out` as JSON lines, from one consistent snapshot.
    /// Returns the rows written per table.
    pub async fn export_rows(&self, out: &mut impl Write) -> Result<TableCounts, BackupError> {
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        let mut counts = TableCounts::new();
        on_pool!(self, |p| {
            let mut tx = acquire!(self, p, tx_with begin);
            for t in TABLES {
                let sql = format!(
                    "SELECT {} FROM {} ORDER BY {}",
                    select_list(t),
                    t.name,
                    t.order_by
                );
                let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
                let mut n = 0u64;
                while let Some(r) = rows.try_next().await.map_err(|e| self.map_err(e))? {
                    let mut row = Map::new();
                    for (c, k) in t.columns {
                        let v = (|| -> Result<Value, sqlx::Error> { Ok(column_json!(r, c, *k)) })()
                            .map_err(|e| self.map_err(e))?;
                        row.insert((*c).to_owned(), v);
                    }
                    let line = Line {
                        table: t.name.to_owned(),
                        row,
                    };
                    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                    n += 1;
                }
                drop(rows);
                counts.insert(t.name.to_owned(), n);
            }
            tx.rollback().await.map_err(|e| self.map_err(e))?;
        });
        Ok(counts)
    }

    /// Inserts the rows of a payload written by [`Store::export_rows`], all in one transaction
    /// (a failure leaves the database as it was). With `replace`, every table is emptied
    /// first. Columns the payload lacks (a backup from an older schema) take their defaults.
    pub async fn import_rows(
        &self,
        input: impl BufRead,
        replace: bool,
    ) -> Result<TableCounts, BackupError> {
        let mut counts: TableCounts = TABLES.iter().map(|t| (t.name.to_owned(), 0)).collect();
        on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            if replace {
                for t in TABLES.iter().rev() {
                    let sql = format!("DELETE FROM {}", t.name);
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.map_err(e))?;
                }
            }
            for (i, text) in input.lines().enumerate() {
                let line_no = i as u64 + 1;
                let format = |reason: String| BackupError::Format {
                    line: line_no,
                    reason,
                };
                let text = text?;
                if text.is_empty() {
                    continue;
                }
                let line: Line = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
                let t = TABLES
                    .iter()
                    .find(|t| t.name == line.table)
                    .ok_or_else(|| format(format!("unknown table {:?}", line.table)))?;
                if let Some(c) = line
                    .row
                    .keys()
                    .find(|c| !t.columns.iter().any(|(k, _)| k == c))
                {
                    return Err(format(format!("unknown column {}.{c}", t.name)));
                }
                let present: Vec<_> = t
                    .columns
                    .iter()
                    .filter_map(|(c, k)| line.row.get(*c).map(|v| (*c, *k, v)))
                    .collect();
                let mut q = sqlx::QueryBuilder::new(format!("INSERT INTO {} (", t.name));
                q.push(
                    present
                        .iter()
                        .map(|(c, _, _)| *c)
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                q.push(") VALUES (");
                let bound = (|| -> Result<(), String> {
                    for (i, (c, k, v)) in present.iter().enumerate() {
                        if i > 0 {
                            q.push(", ");
                        }
                        push_value!(q, v, *k, c);
                    }
                    Ok(())
                })();
                bound.map_err(format)?;
                q.push(")");
                q.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.map_err(e))?;
                *counts.entry(t.name.to_owned()).or_default() += 1;
            }
            if self.backend() == Backend::Postgres {
                // Explicit ids do not move the sequence; the next call must not reuse one.
                sqlx::query(
                    "SELECT setval(pg_get_serial_sequence('llm_calls', 'id'), \
                     COALESCE(MAX(id), 0) + 1, false) FROM llm_calls",
                )
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map_err(e))?;
            }
            tx.commit().await.map_err(|e| self.map_err(e))?;
        });
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The table list above must match the migrated SQLite schema exactly (the PostgreSQL
    /// migrations mirror it), so a new column cannot silently miss the backups.
    #[tokio::test]
    async fn tables_match_the_schema() {
        let dir = std::env::temp_dir().join(format!("atlasia-backup-{}", uuid::Uuid::now_v7()));
        let opts = crate::DbOptions {
            url: format!("sqlite://{}/t.db", dir.display()),
            max_connections: 1,
            min_idle: 0,
            ..Default::default()
        };
        let store = Store::connect(&opts).await.unwrap();
        store.migrate().await.unwrap();
        let crate::pool::DbPool::Sqlite(p) = &store.pool else {
            unreachable!()
        };
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name != '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(p)
        .await
        .unwrap();
        let mut ours: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        ours.sort_unstable();
        assert_eq!(names, ours);
        for t in TABLES {
            let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_table_info('{}') ORDER BY cid",
                t.name
            )))
            .fetch_all(p)
            .await
            .unwrap();
            let ours: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
            assert_eq!(cols, ours, "columns of {}", t.name);
        }
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
