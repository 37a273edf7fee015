//! Webhook deliveries: each `X-GitHub-Delivery` id is recorded once, with what it caused. A
//! delivery that starts a run stores the run, its `run_created` event and the delivery in one
//! transaction, so a redelivery (GitHub retries, or a replay) can never start a second run.

use crate::pool::{acquire, on_pool};
use crate::row::RunRow;
use crate::runs::{insert_event, insert_run};
use crate::{Store, StoreError};
use atlasia_core::{EventKind, NewRun, Run, RunId, Timestamp};
use serde_json::json;

/// What recording a delivery did.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// First time seen: recorded, and the run created when one was asked for.
    Recorded { run: Option<Box<Run>> },
    /// Seen before: nothing done; what the first delivery recorded.
    Duplicate {
        outcome: String,
        run_id: Option<String>,
    },
}

impl Store {
    /// Records delivery `delivery_id` of `event` with `outcome` (`accepted`, `ignored`, …);
    /// when `new` is given, also creates that run (PENDING, with its `run_created` event) in
    /// the same transaction. A delivery id already recorded changes nothing.
    pub async fn record_webhook_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        outcome: &str,
        new: Option<&NewRun>,
    ) -> Result<Delivery, StoreError> {
        let id = new.map(|_| RunId::new().to_string());
        let now = Timestamp::now().0;
        let created: Option<Option<crate::row::RunRow>> = on_pool!(self, |p| {
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
                let row = match (new, &id) {
                    (Some(new), Some(id)) => {
                        let row: RunRow = insert_run!(self, &mut *tx, id, new, now);
                        let data = json!({
                            "status": "PENDING",
                            "priority": new.priority,
                            "source": "github_webhook",
                            "delivery_id": delivery_id,
                        });
                        insert_event!(self, &mut *tx, id, 1_i64, EventKind::RunCreated, data, now);
                        Some(row)
                    }
                    _ => None,
                };
                tx.commit().await?;
                Some(row)
            }
        });
        match created {
            Some(row) => {
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
