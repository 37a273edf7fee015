//! The HTTP/1 accept loop with the limits `axum::serve` does not offer: at most
//! `server.max_connections` connections at once (further ones wait in the kernel's backlog), and
//! `server.header_read_timeout_ms` for a request head — hyper starts that timer whenever it
//! waits for a head, so it also closes idle keep-alive connections and slowloris clients that
//! trickle a header byte by byte. On shutdown it stops accepting, asks every connection to
//! finish its in-flight request and close, and returns once they have (the caller bounds that
//! wait).

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for a complete request head (also the idle keep-alive limit).
    pub header_read_timeout: Duration,
}

/// Counts a connection in `http_server_connections` (open now; at `server.max_connections`
/// new clients wait) for as long as it lives.
struct OpenConnection;

impl OpenConnection {
    fn count() -> Self {
        metrics::gauge!("http_server_connections").increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_server_connections").decrement(1.0);
    }
}

/// Serves `app` on `listener` until `shutdown`, then drains the open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends pass; do not spin on them.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: hyper::Request<Incoming>| req.map(axum::body::Body::new)),
        );
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::count();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            // Upgrades: the live view's WebSockets (`/ws/runs/{id}`) leave HTTP here.
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}
