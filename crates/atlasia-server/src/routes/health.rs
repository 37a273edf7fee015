//! Liveness and readiness. Ready means: the database answers within the configured time and the
//! data directory's disk has more free space than the floor. The sandbox check is information
//! only (a degraded sandbox never makes the server unready). Each check reports its latency and,
//! when failing, why — the first thing an on-call engineer reads.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// One check's result.
#[derive(Debug, Serialize)]
pub struct Check {
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// `GET /api/health/live`: the process is up.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /api/health/ready`: 200 when every check passes, else 503; the body lists them all.
pub async fn ready(State(st): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = check_database(&st).await;
    let disk = check_disk(&st);
    let ok = database.ok && disk.ok;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Information, never a reason for 503: a degraded sandbox refuses commands per bolt.
    let sandbox = check_sandbox(&st);
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {"database": database, "disk": disk, "sandbox": sandbox},
    });
    (status, Json(body))
}

async fn check_database(st: &AppState) -> Check {
    let limit = Duration::from_millis(st.settings.database.ready_timeout_ms);
    let started = Instant::now();
    let res = tokio::time::timeout(limit, st.store.ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let reason = match res {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", limit.as_millis())),
    };
    let pool = st.store.pool_stats();
    Check {
        ok: reason.is_none(),
        latency_ms,
        reason,
        detail: Some(json!({
            "backend": st.store.backend().as_str(),
            "pool": {"active": pool.active, "idle": pool.idle, "pending": pool.pending, "max": pool.max},
        })),
    }
}

/// Free bytes on the disk holding `dir` (or its nearest existing ancestor).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut p = dir;
    loop {
        if p.exists() {
            return fs4::available_space(p);
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return fs4::available_space("."),
        }
    }
}

/// Refuses new work up front (507 `insufficient_storage`) while the data directory's disk is
/// at or below `storage.min_free_disk_mb`, so the disk never fills through us (0 turns the
/// guard off). A disk whose free space cannot be read does not refuse work (readiness reports
/// it).
pub fn require_headroom(st: &AppState) -> Result<(), ApiError> {
    let floor_mb = st.settings.storage.min_free_disk_mb;
    let dir = &st.settings.storage.data_dir;
    match free_bytes(dir) {
        Ok(free) if floor_mb > 0 && free <= floor_mb.saturating_mul(1024 * 1024) => {
            metrics::counter!("storage_refusals_total").increment(1);
            Err(ApiError::InsufficientStorage(format!(
                "{} MiB free on the data directory's disk, at or below storage.min_free_disk_mb = {floor_mb}",
                free / (1024 * 1024)
            )))
        }
        _ => Ok(()),
    }
}

fn check_disk(st: &AppState) -> Check {
    let started = Instant::now();
    let floor = st
        .settings
        .storage
        .min_free_disk_mb
        .saturating_mul(1024 * 1024);
    let dir = &st.settings.storage.data_dir;
    let (ok, reason, free) = match free_bytes(dir) {
        Ok(free) if free > floor => (true, None, Some(free)),
        Ok(free) => (
            false,
            Some(format!(
                "{} MiB free on {}, below the floor of {} MiB",
                free / (1024 * 1024),
                dir.display(),
                st.settings.storage.min_free_disk_mb
            )),
            Some(free),
        ),
        Err(e) => (
            false,
            Some(format!("cannot read free space of {}: {e}", dir.display())),
            None,
        ),
    };
    Check {
        ok,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        reason,
        detail: Some(json!({"free_bytes": free, "min_free_bytes": floor})),
    }
}

/// The command sandbox as probed at start: `ok` with a backend (`mode` names it: `bwrap` or
/// `inprocess`), `degraded` with the reason when
/// commands run unisolated (`sandbox.mode = "none"`) or are refused (unavailable).
fn check_sandbox(st: &AppState) -> Check {
    use atlasia_engine::sandbox::Status;
    let status = st.sandbox.status();
    let reason = match status {
        Status::Enabled => None,
        Status::Disabled => {
            Some("sandbox.mode = \"none\": commands of bolts run without isolation".to_owned())
        }
        Status::Unavailable(why) => Some(format!(
            "sandbox unavailable: {why}; bolts refuse to run commands"
        )),
    };
    Check {
        ok: reason.is_none(),
        latency_ms: 0.0,
        detail: Some(json!({
            "mode": st.sandbox.label(),
            "state": if reason.is_none() { "ok" } else { "degraded" },
        })),
        reason,
    }
}
