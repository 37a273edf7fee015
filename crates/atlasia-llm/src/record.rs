//! What the gateway reports about each provider attempt. The caller supplies the sink (the
//! server writes `llm_calls` rows); the gateway never imports the store.

use futures::future::BoxFuture;

/// One provider attempt (or one cache hit), as stored in `llm_calls`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub run_id: Option<String>,
    /// The bolt's step, when the call belongs to one.
    pub step: Option<String>,
    pub agent: String,
    /// Endpoint name (`cache` for a cache hit).
    pub provider: String,
    /// The provider's model id.
    pub model: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    pub latency_ms: u64,
    /// `ok`, or the runbook error type (`RATE_LIMIT`, `SERVER_ERROR`, …).
    pub outcome: String,
    pub cached: bool,
    /// Cache key of the request: lets a crashed step find the answers it already paid for.
    pub request_key: Option<String>,
    /// The answer, journaled for replay (successful attempts only).
    pub response: Option<serde_json::Value>,
}

/// Where call records go. Implementations should apply backpressure rather than drop records:
/// they are the cost ledger.
pub trait CallRecorder: Send + Sync {
    fn record(&self, rec: CallRecord) -> BoxFuture<'static, ()>;

    /// Resolves once every record handed over before the call is stored (a bolt's end reads
    /// its cost from the store). The default has nothing to wait for.
    fn flush(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A recorder that keeps nothing (tests of the gateway alone, `sim-llm`).
pub struct NoRecorder;

impl CallRecorder for NoRecorder {
    fn record(&self, _rec: CallRecord) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
