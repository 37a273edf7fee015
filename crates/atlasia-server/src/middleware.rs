//! Cross-cutting request handling: the correlation id (honoured or generated, echoed, carried in
//! the log span), one log line per request, and the HTTP latency histogram by route template.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

/// The header that ties a request to its log lines.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// A client-supplied id is kept when it is short, printable ASCII; otherwise a new one is made.
fn correlation_id(req: &Request) -> String {
    req.headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The metric's `method` label: the standard methods, anything else `OTHER`, so invented
/// methods (any token is a valid HTTP method) cannot add series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Wraps every request: id, span, log line, metric.
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = correlation_id(&req);
    let method = req.method().clone();
    let method_label = method_label(&method);
    let span = tracing::info_span!("request", correlation_id = %id);
    let mut resp = next.run(req).instrument(span.clone()).await;
    // Route templates keep the metric's cardinality bounded; unmatched paths share one label.
    let route = resp
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(CORRELATION_HEADER, v);
    }
    metrics::histogram!(
        "http_server_requests_seconds",
        "method" => method_label,
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        // The id is repeated as a top-level field so log collectors need not unpack spans.
        tracing::info!(
            correlation_id = %id,
            method = %method,
            route = %route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    resp
}

/// Runs inside routing (a route layer), where the matched template is known, and hands it to
/// [`observe`] through the response: `observe` runs outside routing so it also sees 404s.
pub async fn tag_route(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut().insert(m);
    }
    resp
}
