//! Watching a run live: the WebSocket `GET /ws/runs/{id}?after=N` and the Server-Sent Events
//! stream `GET /api/runs/{id}/events/stream` (`Last-Event-ID` or `?after=N`). Both send every
//! stored event with `seq > N` (the replay), then each new one as it is committed, each exactly
//! as an item of `GET /api/runs/{id}/events`.
//!
//! The stream's only cursor is `seq`: the follower re-reads the rows after its cursor, so the
//! order is the log's, with no gap and no duplicate — also for an event committed while the
//! replay is read, and for events committed by a worker in another replica (the database is the
//! only channel, so two servers on one PostgreSQL see the same stream). A follower that has
//! caught up looks again every [`FOLLOW_EVERY`]. Nothing is buffered beyond one page: a
//! WebSocket peer that does not take a frame within [`SEND_DEADLINE`] is closed with 1013 and
//! the seq to resume from.

use crate::auth::AsViewer;
use crate::error::ApiError;
use crate::routes::runs::run_id;
use crate::state::AppState;
use atlasia_core::{RunEvent, RunId};
use atlasia_store::Store;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::Instant;

/// How often a caught-up follower looks for new rows.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Rows read per look.
const PAGE: u32 = 200;
/// WebSocket ping period; a peer that answered none of the last two pings is closed.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// The longest a WebSocket frame may wait for a slow peer before the connection is closed.
pub const SEND_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stream stays open after the run finished, for late events, before closing 1000.
pub const FINISHED_GRACE: Duration = Duration::from_secs(30);

/// Every `reason` of `websocket_disconnects_total`.
pub const DISCONNECT_REASONS: &[&str] = &[
    "client_closed",
    "finished",
    "slow_consumer",
    "ping_timeout",
    "error",
];

/// The live routes (outside the request deadline: they are long-lived by design).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/runs/{id}", get(websocket))
        .route("/api/runs/{id}/events/stream", get(sse))
}

/// Where a stream starts: `?after=N` (both) or `Last-Event-ID` (SSE reconnects), 0 otherwise.
#[derive(Debug, serde::Deserialize)]
pub struct After {
    after: Option<i64>,
}

fn start_after(q: Option<i64>, headers: &HeaderMap) -> Result<i64, ApiError> {
    let from_header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::Invalid {
                    field: "Last-Event-ID".into(),
                    message: "must be an event seq (a whole number)".into(),
                })
        })
        .transpose()?;
    let after = from_header.or(q).unwrap_or(0);
    if after < 0 {
        return Err(ApiError::Invalid {
            field: "after".into(),
            message: "must be 0 or more".into(),
        });
    }
    Ok(after)
}

/// The run, or 404: a stream of a run that does not exist would wait forever.
async fn existing(store: &Store, raw: &str) -> Result<RunId, ApiError> {
    let id = run_id(raw)?;
    store.get_run(id).await?;
    Ok(id)
}

/// The next events after `after`, waiting until there are some; `None` once the run has been
/// finished for [`FINISHED_GRACE`] with nothing new.
struct Follower {
    store: Store,
    id: RunId,
    after: i64,
    finished_since: Option<Instant>,
}

impl Follower {
    async fn next_page(&mut self) -> Result<Option<Vec<RunEvent>>, ApiError> {
        loop {
            let page = self.store.events(self.id, self.after, PAGE).await?;
            if let Some(last) = page.last() {
                self.after = last.seq;
                return Ok(Some(page));
            }
            let run = self.store.get_run(self.id).await?;
            if run.status.is_terminal() {
                let since = *self.finished_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= FINISHED_GRACE {
                    return Ok(None);
                }
            } else {
                self.finished_since = None;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

/// An upgrade request, or the reason it is not one (a JSON 400 instead of axum's text).
pub struct Upgrade(WebSocketUpgrade);

impl FromRequestParts<AppState> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map(Upgrade)
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "this is a WebSocket endpoint: {e} (send `Connection: Upgrade`, \
                     `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a \
                     `Sec-WebSocket-Key`); for plain HTTP use /api/runs/{{id}}/events/stream"
                ))
            })
    }
}

/// `GET /ws/runs/{id}?after=N`. Each refusal is a JSON error with its status, in this order:
/// a malformed id or cursor (400, also for the runbook's token-less `curl` probe), a request
/// that is no WebSocket upgrade (400), a missing or unknown token (401), an unknown run (404,
/// only to a caller who may read runs).
pub async fn websocket(
    State(st): State<AppState>,
    auth: Result<AsViewer, ApiError>,
    Path(raw): Path<String>,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<After>,
    headers: HeaderMap,
    upgrade: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    // A malformed id is the request's fault whatever else it carries: 400, before the token.
    run_id(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let after = start_after(q.after, &headers)?;
    let Upgrade(upgrade) = upgrade?;
    auth?;
    let id = existing(&st.store, &raw).await?;
    let follower = Follower {
        store: st.store.clone(),
        id,
        after,
        finished_since: None,
    };
    Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, follower)))
}

async fn serve_socket(mut socket: WebSocket, mut follower: Follower) {
    let active = metrics::gauge!("websocket_connections_active");
    active.increment(1.0);
    let reason = pump(&mut socket, &mut follower).await;
    metrics::counter!("websocket_disconnects_total", "reason" => reason).increment(1);
    active.decrement(1.0);
}

/// Sends pages as they come, pings, and reads the peer's frames; returns why it ended.
async fn pump(socket: &mut WebSocket, follower: &mut Follower) -> &'static str {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut unanswered = 0u32;
    loop {
        tokio::select! {
            page = follower.next_page() => {
                let page = match page {
                    Ok(Some(page)) => page,
                    Ok(None) => {
                        close(socket, 1000, "the run finished".into()).await;
                        return "finished";
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live stream: reading events failed");
                        close(socket, 1011, "reading the events failed; reconnect".into()).await;
                        return "error";
                    }
                };
                for event in page {
                    let seq = event.seq;
                    let text = serde_json::to_string(&event).unwrap_or_default();
                    match tokio::time::timeout(SEND_DEADLINE, socket.send(Message::Text(text.into()))).await {
                        Ok(Ok(())) => metrics::counter!("websocket_messages_sent_total").increment(1),
                        Ok(Err(_)) => return "client_closed",
                        Err(_) => {
                            let resume = seq - 1;
                            close(socket, 1013, format!("too slow: reconnect with after={resume}")).await;
                            return "slow_consumer";
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if unanswered >= 2 {
                    return "ping_timeout";
                }
                unanswered += 1;
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return "client_closed";
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Pong(_))) => unanswered = 0,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return "client_closed",
                // Anything else a client sends is ignored: the stream is one-way.
                Some(Ok(_)) => unanswered = 0,
            },
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(SEND_DEADLINE, socket.send(Message::Close(Some(frame)))).await;
}

/// `GET /api/runs/{id}/events/stream`: `text/event-stream`, one `data:` per event with its
/// `id:` (the seq, so a reconnecting client's `Last-Event-ID` resumes exactly) and its kind as
/// `event:`; a comment line every 15 s keeps proxies from closing an idle stream.
pub async fn sse(
    State(st): State<AppState>,
    _: AsViewer,
    Path(raw): Path<String>,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<After>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let after = start_after(q.after, &headers)?;
    let id = existing(&st.store, &raw).await?;
    let follower = Follower {
        store: st.store.clone(),
        id,
        after,
        finished_since: None,
    };
    Ok(Sse::new(events(follower)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Counts an SSE connection for as long as its stream lives.
struct SseGuard;

impl SseGuard {
    fn new() -> Self {
        metrics::gauge!("sse_connections_active").increment(1.0);
        Self
    }
}

impl Drop for SseGuard {
    fn drop(&mut self) {
        metrics::gauge!("sse_connections_active").decrement(1.0);
    }
}

fn events(follower: Follower) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = SseGuard::new();
    futures::stream::unfold(
        (follower, guard, Vec::<RunEvent>::new()),
        |(mut follower, guard, mut queued)| async move {
            if queued.is_empty() {
                match follower.next_page().await {
                    Ok(Some(page)) => queued = page.into_iter().rev().collect(),
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "live stream: reading events failed");
                        return None;
                    }
                }
            }
            let event = queued.pop()?;
            let frame = Event::default()
                .id(event.seq.to_string())
                .event(event.kind.clone())
                .data(serde_json::to_string(&event).unwrap_or_default());
            Some((Ok(frame), (follower, guard, queued)))
        },
    )
}
