//! Writes the gateway's call records to `llm_calls` from one background task, in batches. The
//! gateway waits only for room in a bounded channel: a slow database slows callers down
//! (backpressure) instead of growing memory or dropping cost records.

use atlasia_llm::{CallRecord, CallRecorder};
use atlasia_store::{LlmCallRow, Store};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Records waiting to be written, at most.
const QUEUE: usize = 1024;
/// Rows per insert, at most.
const BATCH: usize = 200;

/// The recorder handed to the gateway.
pub struct StoreRecorder {
    tx: mpsc::Sender<Msg>,
}

/// What the writer task receives, in order.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is a record; boxing would allocate once per call"
)]
enum Msg {
    Record(CallRecord),
    /// Answered once everything received before it is written.
    Flush(oneshot::Sender<()>),
}

impl StoreRecorder {
    /// Starts the writer task on `tracker`; it drains what is queued and stops on `shutdown`.
    pub fn spawn(store: Store, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        tracker.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut waiting = Vec::new();
            loop {
                let first = tokio::select! {
                    r = rx.recv() => r,
                    () = shutdown.cancelled() => None,
                };
                match first {
                    Some(m) => take(m, &mut batch, &mut waiting),
                    None => {
                        while let Ok(m) = rx.try_recv() {
                            take(m, &mut batch, &mut waiting);
                        }
                    }
                }
                // A flush ends the batch: what came after it need not be written for it.
                while batch.len() < BATCH && waiting.is_empty() {
                    match rx.try_recv() {
                        Ok(m) => take(m, &mut batch, &mut waiting),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    if let Err(e) = store.insert_llm_calls(&batch).await {
                        metrics::counter!("llm_call_records_failed_total").increment(batch.len() as u64);
                        tracing::error!(error = %e, rows = batch.len(), "could not write llm_calls");
                    }
                    batch.clear();
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
                if shutdown.is_cancelled() && rx.is_empty() {
                    break;
                }
            }
        });
        Self { tx }
    }
}

/// Sorts one message into the batch or the flushes waiting for it.
fn take(m: Msg, batch: &mut Vec<LlmCallRow>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Msg::Record(r) => batch.push(row(r)),
        Msg::Flush(done) => waiting.push(done),
    }
}

fn row(r: CallRecord) -> LlmCallRow {
    LlmCallRow {
        run_id: r.run_id,
        step: r.step,
        agent: r.agent,
        provider: r.provider,
        model: r.model,
        request_key: r.request_key,
        tokens_in: i64::try_from(r.tokens_in).unwrap_or(i64::MAX),
        tokens_out: i64::try_from(r.tokens_out).unwrap_or(i64::MAX),
        cost_usd: r.cost_usd,
        latency_ms: i64::try_from(r.latency_ms).unwrap_or(i64::MAX),
        outcome: r.outcome,
        cached: r.cached,
        response: r.response,
        created_at: atlasia_core::Timestamp::now().0,
    }
}

impl CallRecorder for StoreRecorder {
    fn record(&self, rec: CallRecord) -> BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        Box::pin(async move {
            if tx.send(Msg::Record(rec)).await.is_err() {
                tracing::warn!("llm_calls writer has stopped; a call record was not stored");
            }
        })
    }

    fn flush(&self) -> BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (done, written) = oneshot::channel();
            // A stopped writer answers nothing: there is nothing left to wait for.
            if tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        })
    }
}

/// Restores today's spend (since UTC midnight) from the `llm_calls` ledger into `budgets`, so a
/// restart does not reset the day cap. A read failure is returned; the caller decides.
pub async fn seed_today(
    store: &Store,
    budgets: &atlasia_llm::budget::Budgets,
) -> Result<f64, atlasia_store::StoreError> {
    let spent = store.llm_cost_since(budgets.day_start_ms()).await?;
    budgets.seed_today(spent);
    Ok(spent)
}
