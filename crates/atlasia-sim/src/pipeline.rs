//! The path of every model request, the same on both wires: auth → rate limit → parse →
//! fault decision → delay → answer (or the injected failure). What differs per provider (auth
//! headers, the body formats, error bodies, rate-limit headers) sits behind the `Wire` trait.

use crate::app::SimState;
use crate::error::SimError;
use crate::faults::{self, Fault, FaultSpec};
use crate::ratelimit::{RateSnapshot, ceil_secs};
use crate::reply::{self, Chat, Reply};
use crate::stats::Route;
use crate::stream;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The largest request body accepted (long agent conversations are big).
pub(crate) const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// One provider's wire format.
pub(crate) trait Wire {
    /// The route, for the stats.
    const ROUTE: Route;
    /// The response header that carries the request id.
    const REQUEST_ID_HEADER: &'static str;

    /// Checks the credentials (and anything else this provider requires in the headers).
    fn check_auth(headers: &HeaderMap, key: &str) -> Result<(), SimError>;
    /// The request, in provider-neutral form.
    fn parse(body: &[u8]) -> Result<Chat, SimError>;
    /// The provider's error body.
    fn error_body(err: &SimError, request_id: Option<&str>) -> Value;
    /// The provider's rate-limit headers.
    fn rate_headers(snap: &RateSnapshot, headers: &mut HeaderMap);
    /// The complete (non-streamed) answer.
    fn render(chat: &Chat, reply: &Reply) -> Value;
    /// The streamed answer, one SSE event per frame, terminal event last.
    fn frames(chat: &Chat, reply: &Reply) -> Vec<Bytes>;
    /// A stream whose events include one with broken JSON.
    fn malformed_frames(chat: &Chat, reply: &Reply) -> Vec<Bytes>;
    /// The body of `GET /v1/models`.
    fn models() -> Value;
}

/// Compares secrets without leaking, through timing, how much of them matched.
pub(crate) fn same_secret(given: &str, key: &str) -> bool {
    given.as_bytes().ct_eq(key.as_bytes()).into()
}

/// The handler of a model route.
pub(crate) async fn handle<W: Wire>(
    State(s): State<SimState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    s.stats.request(W::ROUTE);
    let request_id = next_request_id(&s);
    let mut resp = match exchange::<W>(&s, &headers, body).await {
        Ok(resp) => resp,
        Err(err) => error_response::<W>(&err, &request_id),
    };
    decorate::<W>(&s, &mut resp, &request_id);
    resp
}

/// `GET /v1/models` in `W`'s format.
pub(crate) fn models<W: Wire>(s: &SimState, headers: &HeaderMap) -> Response {
    let request_id = next_request_id(s);
    let mut resp = match s.cfg.api_key.as_deref().map(|k| W::check_auth(headers, k)) {
        Some(Err(err)) => error_response::<W>(&err, &request_id),
        _ => {
            let mut list = W::models();
            // A server-wide `context=<n>` fault is a server with that context: say so as
            // llama-server does (`meta.n_ctx`), so clients can learn it.
            if let Some(Fault::Context(Some(n))) = s.cfg.fault.and_then(|f| f.fault)
                && let Some(models) = list.get_mut("data").and_then(Value::as_array_mut)
            {
                for m in models {
                    m["meta"] = serde_json::json!({ "n_ctx": n });
                }
            }
            axum::Json(list).into_response()
        }
    };
    decorate::<W>(s, &mut resp, &request_id);
    resp
}

fn next_request_id(s: &SimState) -> String {
    let n = s.requests.fetch_add(1, Ordering::Relaxed) + 1;
    format!("req_sim{n:016x}")
}

/// Headers every provider response carries: rate limits, request id, and the simulator's
/// own mark.
fn decorate<W: Wire>(s: &SimState, resp: &mut Response, request_id: &str) {
    let h = resp.headers_mut();
    W::rate_headers(&s.window.snapshot(), h);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static(W::REQUEST_ID_HEADER), v);
    }
    h.insert("x-simulator", HeaderValue::from_static("sim-llm"));
}

/// The error in `W`'s format, with `Retry-After` (seconds) and `retry-after-ms` when the
/// error says when to come back.
fn error_response<W: Wire>(err: &SimError, request_id: &str) -> Response {
    if matches!(err, SimError::Injected(s) if *s >= 500) || matches!(err, SimError::Overloaded) {
        tracing::debug!(status = err.status().as_u16(), "sim-llm: injected failure");
    }
    let mut resp = (
        err.status(),
        axum::Json(W::error_body(err, Some(request_id))),
    )
        .into_response();
    if let Some(wait) = err.retry_after() {
        let h = resp.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        h.insert("retry-after-ms", HeaderValue::from(ms));
    }
    resp
}

async fn exchange<W: Wire>(
    s: &SimState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, SimError> {
    if let Some(key) = &s.cfg.api_key {
        W::check_auth(headers, key)?;
    }
    s.window.admit().map_err(|wait| {
        s.stats.rate_limited();
        SimError::RateLimited { retry_after: wait }
    })?;
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| SimError::TooLarge(BODY_LIMIT))?;
    s.log.push(W::ROUTE.name(), &bytes);
    let chat = W::parse(&bytes)?;
    let spec = header_spec(headers)?;
    let retry_after = header_retry_after(headers)?.unwrap_or(s.cfg.retry_after);
    let seq = s.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let plan = faults::plan(&s.cfg, spec, seq);
    if plan.injected_latency {
        s.stats.fault("latency");
    }
    if let Some(f) = plan.fault {
        s.stats.fault(&stat_name(f));
    }
    if !stream::pause(&s.stop, plan.delay).await {
        return Err(SimError::StallEnded);
    }
    match plan.fault {
        Some(Fault::Status(code)) => return Err(SimError::injected(code, retry_after)),
        Some(Fault::Stall) if chat.stream => {
            return Ok(sse_response(stream::stalled_body(
                s.stop.clone(),
                s.cfg.stall_max,
            )));
        }
        Some(Fault::Stall) => {
            stream::pause(&s.stop, s.cfg.stall_max).await;
            return Err(SimError::StallEnded);
        }
        Some(
            Fault::Cut(_) | Fault::Malformed | Fault::Length(_) | Fault::Context(_) | Fault::Prose,
        )
        | None => {}
    }
    let reply = reply::reply(&chat);
    let reply = match plan.fault {
        Some(Fault::Context(limit)) => {
            let n_ctx = limit.map_or(0, u64::from);
            if limit.is_none() || reply.input_tokens > n_ctx {
                return Err(SimError::ContextExceeded {
                    n_prompt: reply.input_tokens,
                    n_ctx: if limit.is_none() {
                        reply.input_tokens.saturating_sub(1)
                    } else {
                        n_ctx
                    },
                });
            }
            reply
        }
        Some(Fault::Length(n)) => reply::cut_short(&chat, reply, n.map(u64::from)),
        Some(Fault::Prose) => reply::prose(&chat),
        _ => reply,
    };
    s.stats.answered();
    s.window
        .add_tokens(reply.input_tokens.saturating_add(reply.output_tokens));
    Ok(match (plan.fault, chat.stream) {
        (Some(Fault::Cut(n)), true) => sse_response(stream::cut_body(W::frames(&chat, &reply), n)),
        (Some(Fault::Cut(n)), false) => {
            json_bytes_response(stream::cut_bytes(&json_bytes(&W::render(&chat, &reply)), n))
        }
        (Some(Fault::Malformed), true) => {
            sse_response(stream::frames_body(W::malformed_frames(&chat, &reply)))
        }
        (Some(Fault::Malformed), false) => {
            // Half a JSON object is never valid JSON.
            let full = json_bytes(&W::render(&chat, &reply));
            json_bytes_response(Body::from(full[..full.len() / 2].to_vec()))
        }
        (_, true) => sse_response(stream::frames_body(W::frames(&chat, &reply))),
        (_, false) => json_bytes_response(Body::from(json_bytes(&W::render(&chat, &reply)))),
    })
}

/// The fault the request asks for in `X-Sim-Fault`, if any.
fn header_spec(headers: &HeaderMap) -> Result<Option<FaultSpec>, SimError> {
    let Some(v) = headers.get("x-sim-fault") else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| SimError::invalid("X-Sim-Fault", "not ASCII"))?;
    text.parse()
        .map(Some)
        .map_err(|e: faults::BadFaultSpec| SimError::invalid("X-Sim-Fault", e.to_string()))
}

/// `X-Sim-Retry-After: <seconds>` for injected 429s.
fn header_retry_after(headers: &HeaderMap) -> Result<Option<Duration>, SimError> {
    let Some(v) = headers.get("x-sim-retry-after") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(|secs| Some(Duration::from_secs(secs)))
        .ok_or_else(|| SimError::invalid("X-Sim-Retry-After", "expected whole seconds"))
}

/// Stats key of a fault: its spec, except cuts are counted together.
fn stat_name(f: Fault) -> String {
    match f {
        Fault::Cut(_) => "cut".into(),
        other => other.to_string(),
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its keys are strings already.
    serde_json::to_vec(v).unwrap_or_default()
}

fn json_bytes_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn sse_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
