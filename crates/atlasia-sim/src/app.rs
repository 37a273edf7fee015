//! The simulator as an axum application: shared state, the routes, and `serve`, which runs
//! until a cancellation token fires and then ends stalled requests so shutdown never waits on
//! them.

use crate::anthropic::Anthropic;
use crate::config::SimConfig;
use crate::error::SimError;
use crate::openai::OpenAi;
use crate::pipeline::{self, Wire};
use crate::ratelimit::RateWindow;
use crate::requests::RequestLog;
use crate::stats::{Route, Stats};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every request sees.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub stats: Stats,
    /// The last model requests, verbatim.
    pub log: RequestLog,
    pub window: RateWindow,
    /// Model requests that reached the fault decision (1-based after increment): drives
    /// `--fail-first` and the seeded draws.
    pub seq: AtomicU64,
    /// All provider requests, for request-id headers.
    pub requests: AtomicU64,
    /// Fires on shutdown: stalls and delays end early.
    pub stop: CancellationToken,
}

pub(crate) type SimState = Arc<Shared>;

/// The simulator's routes, without a socket (tests can drive it with `tower::ServiceExt`).
/// `cfg` should have passed [`SimConfig::validate`]; out-of-range values are used as given.
pub fn router(cfg: SimConfig) -> Router {
    build(cfg, CancellationToken::new())
}

fn build(cfg: SimConfig, stop: CancellationToken) -> Router {
    let state = Arc::new(Shared {
        window: RateWindow::new(cfg.rate_limit_rpm, cfg.rate_limit_tpm),
        cfg,
        stats: Stats::default(),
        log: RequestLog::default(),
        seq: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        stop,
    });
    Router::new()
        .route("/v1/chat/completions", post(pipeline::handle::<OpenAi>))
        .route("/v1/messages", post(pipeline::handle::<Anthropic>))
        .route("/v1/models", get(models))
        .route("/sim/stats", get(stats))
        .route("/sim/requests", get(requests))
        .route("/health", get(health))
        .method_not_allowed_fallback(|req: Request| async move {
            wire_error(req.uri().path(), &SimError::MethodNotAllowed)
        })
        .fallback(|State(s): State<SimState>, req: Request| async move {
            s.stats.request(Route::Other);
            let path = req.uri().path().to_owned();
            let err = SimError::NotFound(format!("{} {path}", req.method()));
            wire_error(&path, &err)
        })
        .with_state(state)
}

/// An error in the format of the provider the path belongs to.
fn wire_error(path: &str, err: &SimError) -> Response {
    if path.starts_with("/v1/messages") {
        (err.status(), axum::Json(Anthropic::error_body(err, None))).into_response()
    } else {
        (err.status(), axum::Json(OpenAi::error_body(err, None))).into_response()
    }
}

/// Serves `router(cfg)` on `listener` until `shutdown` is cancelled; then stops accepting,
/// ends stalls and delays at once, and gives other in-flight requests a few seconds.
pub async fn serve(
    cfg: SimConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = build(cfg, shutdown.child_token());
    let stop = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .into_future();
    tokio::select! {
        res = server => res,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("sim-llm: in-flight requests did not finish in time; exiting anyway");
            Ok(())
        }
    }
}

/// `GET /v1/models`: the simulated models, in Anthropic's list format when the request carries
/// Anthropic headers, else OpenAI's.
async fn models(State(s): State<SimState>, headers: HeaderMap) -> Response {
    s.stats.request(Route::Models);
    if headers.contains_key("x-api-key") || headers.contains_key("anthropic-version") {
        pipeline::models::<Anthropic>(&s, &headers)
    } else {
        pipeline::models::<OpenAi>(&s, &headers)
    }
}

async fn stats(State(s): State<SimState>) -> Response {
    axum::Json(s.stats.to_json()).into_response()
}

async fn requests(State(s): State<SimState>) -> Response {
    axum::Json(s.log.to_json()).into_response()
}

async fn health(State(s): State<SimState>) -> Response {
    s.stats.request(Route::Health);
    axum::Json(serde_json::json!({"status": "ok", "simulator": "sim-llm"})).into_response()
}
