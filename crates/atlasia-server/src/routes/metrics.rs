//! `GET /api/metrics/prometheus`: gauges that are cheaper to read on demand (pool, queue, disk,
//! process) are refreshed at scrape time, then everything is rendered in the text format.

use crate::routes::health::free_bytes;
use crate::state::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::time::Duration;

/// Renders every metric; never fails (a gauge that cannot be read keeps its last value).
pub async fn prometheus(State(st): State<AppState>) -> impl IntoResponse {
    let pool = st.store.pool_stats();
    metrics::gauge!("db_pool_connections_active").set(f64::from(pool.active));
    metrics::gauge!("db_pool_connections_idle").set(f64::from(pool.idle));
    metrics::gauge!("db_pool_connections_pending").set(f64::from(pool.pending));
    metrics::gauge!("db_pool_connections_max").set(f64::from(pool.max));
    metrics::gauge!("db_up").set(if st.store.db_up() { 1.0 } else { 0.0 });
    // A scrape must not hang on an exhausted pool: the status counts are best effort.
    if let Ok(Ok(counts)) =
        tokio::time::timeout(Duration::from_millis(500), st.store.count_by_status()).await
    {
        for (status, n) in counts {
            metrics::gauge!("workflow_runs", "status" => status.as_str()).set(n as f64);
            if status == atlasia_core::RunStatus::Pending {
                metrics::gauge!("workflow_queue_depth").set(n as f64);
            }
        }
    }
    if let Ok(free) = free_bytes(&st.settings.storage.data_dir) {
        metrics::gauge!("disk_free_bytes").set(free as f64);
    }
    // The thresholds the alerts compare with, so the rules carry no host-specific numbers.
    metrics::gauge!("disk_min_free_bytes")
        .set(st.settings.storage.min_free_disk_mb as f64 * 1024.0 * 1024.0);
    if let Some(limit) = crate::telemetry::cgroup_memory_limit() {
        metrics::gauge!("process_memory_limit_bytes").set(limit);
    }
    st.gateway.refresh_gauges();
    metrics_process::Collector::default().collect();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
}
