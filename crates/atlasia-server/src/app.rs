//! Building and running the server: `Application::build(settings)` connects and migrates the
//! store, binds the socket and starts the engine's workers (`[engine] workers`, default 0);
//! `run_until_stopped` serves until the token is cancelled, then drains in-flight requests for
//! at most `server.shutdown_timeout_ms`.

use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::middleware::{observe, tag_route};
use crate::routes::{admin, decisions, health, metrics, openai, runs};
use crate::settings::Settings;
use crate::state::AppState;
use atlasia_engine::worker::WorkerPool;
use atlasia_store::{Store, StoreError};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// The routes, without a socket (tests and benchmarks can drive it directly).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/runs", post(runs::create).get(runs::list))
        .route("/api/runs/{id}", get(runs::get))
        .route("/api/runs/{id}/pause", post(runs::pause))
        .route("/api/runs/{id}/resume", post(runs::resume))
        .route("/api/runs/{id}/cancel", post(runs::cancel))
        .route("/api/runs/{id}/events", get(runs::events))
        .route("/api/runs/{id}/artifacts", get(runs::artifacts))
        .route(
            "/api/runs/{id}/gates/{gate}/respond",
            post(decisions::respond_gate),
        )
        .route(
            "/api/runs/{id}/escalation-decision",
            post(decisions::escalation_decision),
        )
        .route("/api/runs/{id}/pull-request", get(decisions::pull_request))
        .route("/api/admin/runs/pause", post(admin::pause_runs))
        .route("/api/admin/runs/resume", post(admin::resume_runs))
        .route(
            "/api/admin/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            "/api/admin/tokens/{id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route("/api/health/live", get(health::live))
        .route("/api/health/ready", get(health::ready))
        .route("/api/metrics/prometheus", get(metrics::prometheus))
        .route_layer(from_fn(tag_route))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!("route {} {}", req.method(), req.uri().path()))
        });
    let timeout = Duration::from_millis(state.settings.server.request_timeout_ms);
    // LLM calls and streams outlive the API's request timeout and carry whole prompts: the
    // proxy has its own body limit and relies on the gateway's per-attempt timeouts.
    let proxy = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route_layer(from_fn(tag_route))
        .layer(DefaultBodyLimit::max(PROXY_BODY_LIMIT));
    api.layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(timeout, deadline))
        .merge(proxy)
        .merge(crate::routes::webhooks::router())
        .merge(crate::routes::live::router().route_layer(from_fn(tag_route)))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(from_fn(observe))
        .with_state(state)
}

/// Largest body the OpenAI-compatible proxy accepts (prompts with code are large).
const PROXY_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Answers 503 `request_timeout` instead of letting a request hang past the limit.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            ApiError::Timeout(ms).into_response()
        }
    }
}

/// A server ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    tracker: TaskTracker,
    /// Stops background tasks once the listener has drained.
    background: CancellationToken,
}

impl Application {
    /// Connects and migrates the store, then binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let metrics = crate::telemetry::metrics_handle().map_err(StartError::Setup)?;
        // Hygiene before anything is stored or shown: the server's own secrets are redacted
        // by the store's write paths, the error answers and the path policy.
        let redactor = settings
            .redactor()
            .map_err(|e| StartError::Setup(e.to_string()))?;
        crate::error::install_redactor(redactor.clone());
        let store = Store::connect(&settings.db_options())
            .await?
            .with_redactor(redactor.clone())
            .with_max_attempts(settings.engine.max_attempts);
        store.migrate().await?;
        let addr = settings
            .bind_addr()
            .map_err(|e| StartError::Setup(e.to_string()))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        let github = crate::github::client(&settings.github).map_err(StartError::Setup)?;
        let reach = crate::compose::Reach {
            github: github
                .clone()
                .map(|c| (c, crate::github::check_wait(&settings.github))),
            repos: settings.repo_access(),
        };
        let engine =
            crate::compose::engine(&settings, &store, &tracker, background.clone(), reach).await?;
        let sandbox = engine.workers.sandbox.clone();
        let gateway = engine.gateway.clone();
        if settings.engine.workers > 0 {
            WorkerPool::spawn(
                settings.engine.workers,
                store.clone(),
                engine.gateway,
                engine.contracts,
                engine.workers,
                &tracker,
                background.clone(),
            );
            tracing::info!(workers = settings.engine.workers, "engine workers started");
        }
        let state = AppState {
            store,
            settings: Arc::new(settings),
            metrics,
            gateway,
            github,
            sandbox,
        };
        Ok(Self {
            listener,
            state,
            tracker,
            background,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The state handlers see (for background tasks that need the store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets in-flight requests
    /// finish for at most the configured time, stops background tasks and closes the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let grace = Duration::from_millis(self.state.settings.server.shutdown_timeout_ms);
        let app = router(self.state.clone());
        let limits = crate::listener::ConnLimits {
            max_connections: self.state.settings.server.max_connections,
            header_read_timeout: Duration::from_millis(
                self.state.settings.server.header_read_timeout_ms,
            ),
        };
        let server = crate::listener::serve(self.listener, app, limits, shutdown.clone());
        let mut server = std::pin::pin!(server);
        tokio::select! {
            () = &mut server => {},
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight requests did not finish in time; exiting anyway");
            }
        }
        self.background.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
        }
        // Closing the pool waits for lent-out connections; an abandoned request may hold one
        // for as long as the database blocks it, so this wait is bounded too.
        if tokio::time::timeout(grace, self.state.store.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still in use; exiting anyway");
        }
        Ok(())
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}
