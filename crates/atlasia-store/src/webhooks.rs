//! Webhook deliveries: each `X-GitHub-Delivery` id is recorded once, with what it caused. A
//! delivery that starts a run stores the run, its `run_created` event and the delivery in one
//! transaction, so a redelivery (GitHub retries, or a replay) can never start a second run.

use crate::pool::{acquire, on_pool};
use crate::row::RunRow;
use crate::runs::{ACTIVE_RUN_OF_ISSUE, insert_event, insert_run};
use crate::{Store, StoreError};
use atlasia_core::{EventKind, NewRun, Run, RunId, Timestamp};
use serde_json::json;

/// What recording a delivery did.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// First time seen: recorded, and the run created when one was asked for.
    Recorded { run: Option<Box<Run>> },
    /// First time seen and recorded (outcome `active`), but no run started: a run of the same
    /// repository and issue is still active.
    Active { run_id: String },
    /// Seen before: nothing done; what the first delivery recorded.
    Duplicate {
        outcome: String,
        run_id: Option<String>,
    },
}

impl Store {
    /// Records delivery `delivery_id` of `event` with `outcome` (`accepted`, `ignored`, …);
    /// when `new` is given, also creates that run (PENDING, with its `run_created` event) in
    /// the same transaction — unless a run of the same repository and issue is still active:
    /// then the delivery is recorded with outcome `active` and that run's id, and nothing starts.
    /// A delivery id already recorded changes nothing.
    pub async fn record_webhook_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        outcome: &str,
        new: Option<&NewRun>,
    ) -> Result<Delivery, StoreError> {
        match self.record_once(delivery_id, event, outcome, new).await {
            // A concurrent trigger for the same issue won the insert: the transaction rolled
            // back whole, so recording again finds that run active.
            Err(StoreError::RunActive(None)) => {
                self.record_once(delivery_id, event, outcome, new).await
            }
            other => other,
        }
    }

    async fn record_once(
        &self,
        delivery_id: &str,
        event: &str,
        outcome: &str,
        new: Option<&NewRun>,
    ) -> Result<Delivery, StoreError> {
        let id = new.map(|_| RunId::new().to_string());
        let now = Timestamp::now().0;
        let created: Option<Result<Option<RunRow>, String>> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut tx = acquire!(self, p, tx);
            // The delivery row first: a concurrent twin waits here, then inserts nothing.
            let inserted = sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, event, outcome, run_id, received_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (delivery_id) DO NOTHING",
            )
            .bind(self.clean(delivery_id).into_owned())
            .bind(self.clean(event).into_owned())
            .bind(self.clean(outcome).into_owned())
            .bind(id.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                tx.rollback().await?;
                None
            } else {
                let active: Option<String> = match new.and_then(|n| n.issue_number) {
                    Some(number) => {
                        sqlx::query_scalar(ACTIVE_RUN_OF_ISSUE)
                            .bind(new.map(|n| n.repo.as_str()))
                            .bind(number)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                    None => None,
                };
                let row = match (new, &id, active) {
                    (_, _, Some(active)) => {
                        sqlx::query(
                            "UPDATE webhook_deliveries SET outcome = 'active', run_id = $1 \
                             WHERE delivery_id = $2",
                        )
                        .bind(&active)
                        .bind(delivery_id)
                        .execute(&mut *tx)
                        .await?;
                        Err(active)
                    }
                    (Some(new), Some(id), None) => {
                        let row: RunRow = insert_run!(self, &mut *tx, id, new, now);
                        let data = json!({
                            "status": "PENDING",
                            "priority": new.priority,
                            "source": "github_webhook",
                            "delivery_id": delivery_id,
                        });
                        insert_event!(self, &mut *tx, id, 1_i64, EventKind::RunCreated, data, now);
                        Ok(Some(row))
                    }
                    _ => Ok(None),
                };
                tx.commit().await?;
                Some(row)
            }
        });
        match created {
            Some(Err(run_id)) => Ok(Delivery::Active { run_id }),
            Some(Ok(row)) => {
                if row.is_some() {
                    self.wake_workers();
                    self.announce_queued().await;
                }
                Ok(Delivery::Recorded {
                    run: row.map(Run::try_from).transpose()?.map(Box::new),
                })
            }
            None => {
                let (outcome, run_id): (String, Option<String>) = on_pool!(self, |p| {
                    let mut conn = acquire!(self, p);
                    sqlx::query_as(
                        "SELECT outcome, run_id FROM webhook_deliveries WHERE delivery_id = $1",
                    )
                    .bind(delivery_id)
                    .fetch_one(&mut *conn)
                    .await?
                });
                Ok(Delivery::Duplicate { outcome, run_id })
            }
        }
    }

    /// How many deliveries are recorded (diagnostics and tests).
    pub async fn webhook_delivery_count(&self) -> Result<i64, StoreError> {
        let n: i64 = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries")
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(n)
    }
}
