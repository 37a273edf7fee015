//! Metrics registration and log setup. Each metric is described once here so the exposition
//! carries HELP and TYPE lines (promtool checks them) and labels stay bounded.

use crate::settings::LogFormat;
use atlasia_core::Redactor;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets (seconds) for the HTTP histogram: fine below 10 ms where the API lives.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Provider latency buckets (seconds): LLM calls take from tens of milliseconds to minutes.
const LLM_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Cost of a bolt, USD.
const COST_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
];

/// Step durations (seconds): a planning step takes seconds, a developer or tester step minutes.
const STEP_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Installs the global metrics recorder once per process and returns its handle.
pub fn metrics_handle() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_server_requests_seconds".into()),
            HTTP_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full("llm_api_duration_seconds".into()),
            LLM_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(Matcher::Full("llm_cost_per_bolt".into()), COST_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full("workflow_step_duration_seconds".into()),
            STEP_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    // A second caller (tests) keeps the first recorder.
    if metrics::set_global_recorder(recorder).is_ok() {
        describe();
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    atlasia_github::metrics::describe();
    describe_histogram!(
        "http_server_requests_seconds",
        Unit::Seconds,
        "HTTP request latency by method, route template and status."
    );
    describe_gauge!(
        "http_server_connections",
        "HTTP connections open now; at server.max_connections new clients wait."
    );
    describe_gauge!(
        "db_pool_connections_active",
        "Database connections lent out."
    );
    describe_gauge!(
        "db_pool_connections_idle",
        "Database connections open and free."
    );
    describe_gauge!(
        "db_pool_connections_pending",
        "Callers waiting for a database connection."
    );
    describe_gauge!("db_pool_connections_max", "Configured maximum pool size.");
    describe_counter!(
        "db_pool_timeouts_total",
        "Requests refused because no database connection became free in time."
    );
    // At 0 from start, so `increase()` sees the first timeout.
    metrics::counter!("db_pool_timeouts_total").absolute(0);
    describe_gauge!(
        "db_up",
        "1 while the database can be reached, 0 since a call found it unavailable."
    );
    describe_counter!(
        "db_errors_total",
        "Database faults by kind: unavailable, host_unknown, auth_failed, too_many_connections, read_only, disk_full, pool_exhausted."
    );
    for fault in atlasia_store::DbFault::ALL {
        metrics::counter!("db_errors_total", "kind" => fault.kind()).increment(0);
    }
    metrics::counter!("db_errors_total", "kind" => atlasia_store::POOL_EXHAUSTED).increment(0);
    metrics::gauge!("db_up").set(1.0);
    describe_counter!(
        "storage_refusals_total",
        "Requests for new work refused with 507 because the data directory's disk is below storage.min_free_disk_mb."
    );
    metrics::counter!("storage_refusals_total").increment(0);
    describe_gauge!("workflow_runs", "Runs by status.");
    describe_gauge!(
        "workflow_queue_depth",
        "Runs waiting to be claimed (PENDING)."
    );
    describe_gauge!(
        "disk_free_bytes",
        Unit::Bytes,
        "Free space on the data directory's disk."
    );
    describe_counter!(
        "llm_call_records_failed_total",
        "LLM call records that could not be written to llm_calls."
    );
    describe_counter!(
        "workflow_runs_poisoned_total",
        "Runs failed because their worker died engine.max_attempts times at the same step."
    );
    metrics::counter!("workflow_runs_poisoned_total").absolute(0);
    describe_histogram!(
        "workflow_step_duration_seconds",
        Unit::Seconds,
        "Time a bolt step took, by step (label agent, the runbook's name)."
    );
    describe_gauge!(
        "sandbox_enabled",
        "1 when the commands of bolts run isolated in the sandbox, 0 otherwise."
    );
    describe_gauge!(
        "sandbox_mode",
        "1 for the sandbox mode in effect: bwrap, inprocess, none (operator opt-out) or unavailable."
    );
    describe_gauge!(
        "disk_min_free_bytes",
        Unit::Bytes,
        "The floor storage.min_free_disk_mb: below it new work is refused (507)."
    );
    describe_gauge!(
        "process_memory_limit_bytes",
        Unit::Bytes,
        "The memory limit of the server's cgroup (absent when unlimited)."
    );
    describe_gauge!(
        "websocket_connections_active",
        "Open WebSocket streams of run events (/ws/runs/{id})."
    );
    describe_counter!(
        "websocket_messages_sent_total",
        "Run events sent over WebSocket streams."
    );
    describe_counter!(
        "websocket_disconnects_total",
        "WebSocket streams ended, by reason: client_closed, finished, slow_consumer, ping_timeout, error."
    );
    describe_gauge!(
        "sse_connections_active",
        "Open Server-Sent Events streams of run events (/api/runs/{id}/events/stream)."
    );
    metrics::gauge!("websocket_connections_active").set(0.0);
    metrics::gauge!("sse_connections_active").set(0.0);
    metrics::counter!("websocket_messages_sent_total").absolute(0);
    for reason in crate::routes::live::DISCONNECT_REASONS {
        metrics::counter!("websocket_disconnects_total", "reason" => *reason).absolute(0);
    }
    atlasia_store::describe_outcomes();
    atlasia_github::metrics::zero();
    crate::routes::webhooks::zero_metrics();
    atlasia_llm::metrics::describe();
    metrics_process::Collector::default().describe();
}

/// The memory limit of this process's cgroup (v2, then v1), `None` when unlimited.
pub fn cgroup_memory_limit() -> Option<f64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let raw = v2.or_else(v1)?;
    let limit: f64 = raw.trim().parse().ok()?;
    // v1 reports "unlimited" as a number near 2^63.
    (limit < 1e18).then_some(limit)
}

/// Sets up logs on stderr: `text` for people, `json` for collectors. `RUST_LOG` refines.
pub fn init_logs(format: LogFormat) {
    init_logs_with(format, "info,sqlx=warn,tower_http=warn");
}

/// [`init_logs`] with another default filter (`RUST_LOG` still wins): `atlasia run` shows its
/// own progress and only wants warnings in between.
pub fn init_logs_with(format: LogFormat, default_filter: &str) {
    init_logs_redacting(format, default_filter, Redactor::default());
}

/// [`init_logs_with`], every formatted line passing through `redactor` before it reaches
/// stderr: a secret that slips into a log field (an upstream error echoing a key, an issue
/// quoting a token) is replaced, whatever code logged it.
pub fn init_logs_redacting(format: LogFormat, default_filter: &str, redactor: Redactor) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(RedactingStderr(Arc::new(redactor)));
    // Ignore "already set": tests may build several servers in one process.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Makes stderr writers that redact what they are given. The formatter hands each event to
/// the writer in one `write_all` of the whole line, so a secret is never split across calls.
#[derive(Clone)]
struct RedactingStderr(Arc<Redactor>);

/// One event's writer: cleans the line, then writes it to stderr.
struct RedactedLine(Arc<Redactor>);

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactedLine;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedLine(self.0.clone())
    }
}

impl Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let clean = self.0.clean(&text);
        let mut err = std::io::stderr().lock();
        if matches!(clean, std::borrow::Cow::Borrowed(_))
            && matches!(text, std::borrow::Cow::Borrowed(_))
        {
            err.write_all(buf)?;
        } else {
            err.write_all(clean.as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
