//! Writes the gateway's call records to `llm_calls` from one background task, in batches. The
//! gateway waits only for room in a bounded channel: a slow database slows callers down
//! (backpressure) instead of growing memory or dropping cost records.

use atlasia_llm::{CallRecord, CallRecorder};
use atlasia_store::{LlmCallRow, Store};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Records waiting to be written, at most.
const QUEUE: usize = 1024;
/// Rows per insert, at most.
const BATCH: usize = 200;

/// The recorder handed to the gateway.
pub struct StoreRecorder {
    tx: mpsc::Sender<CallRecord>,
}

impl StoreRecorder {
    /// Starts the writer task on `tracker`; it drains what is queued and stops on `shutdown`.
    pub fn spawn(store: Store, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<CallRecord>(QUEUE);
        tracker.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let first = tokio::select! {
                    r = rx.recv() => r,
                    () = shutdown.cancelled() => None,
                };
                match first {
                    Some(r) => batch.push(row(r)),
                    None => {
                        while let Ok(r) = rx.try_recv() {
                            batch.push(row(r));
                        }
                    }
                }
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(row(r)),
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
                if shutdown.is_cancelled() && rx.is_empty() {
                    break;
                }
            }
        });
        Self { tx }
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
            if tx.send(rec).await.is_err() {
                tracing::warn!("llm_calls writer has stopped; a call record was not stored");
            }
        })
    }
}
