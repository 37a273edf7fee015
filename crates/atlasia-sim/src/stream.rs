//! Response bodies that go wrong on purpose, and SSE framing. A body "cut" sends what it has
//! and then fails, which makes hyper drop the connection without the end of the chunked
//! encoding: the client sees the stream end abruptly, exactly like a provider connection
//! that died mid-answer.

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One server-sent event: `event: <name>` (when named) and one `data:` line.
pub(crate) fn sse(event: Option<&str>, data: &str) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// The frames as a streamed body (each frame its own chunk on the wire).
pub(crate) fn frames_body(frames: Vec<Bytes>) -> Body {
    let items = frames.into_iter().map(Ok::<_, std::io::Error>);
    Body::from_stream(futures::stream::iter(items))
}

/// The first `n` parts (never all of them: the last one is what a cut withholds), then an
/// abrupt end of the connection.
pub(crate) fn cut_body(mut parts: Vec<Bytes>, n: usize) -> Body {
    let keep = n.min(parts.len().saturating_sub(1));
    parts.truncate(keep);
    let sent = futures::stream::iter(parts.into_iter().map(Ok));
    // The pause lets hyper flush what was sent before the error tears the connection down.
    let abort = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::other("sim-llm: connection cut on purpose"))
    });
    Body::from_stream(sent.chain(abort))
}

/// A body that sends nothing until `max` passes or the server stops, then ends abruptly.
pub(crate) fn stalled_body(stop: CancellationToken, max: Duration) -> Body {
    let stalled = futures::stream::once(async move {
        tokio::select! {
            () = tokio::time::sleep(max) => {}
            () = stop.cancelled() => {}
        }
        Err::<Bytes, _>(std::io::Error::other("sim-llm: stall ended"))
    });
    Body::from_stream(stalled)
}

/// A plain body cut into the first `n` bytes (at most all but one) and an abrupt end.
pub(crate) fn cut_bytes(body: &[u8], n: usize) -> Body {
    let keep = n.min(body.len().saturating_sub(1));
    cut_body(
        vec![
            Bytes::copy_from_slice(&body[..keep]),
            Bytes::copy_from_slice(&body[keep..]),
        ],
        1,
    )
}

/// Waits `d`, unless the server stops first (then `false`).
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}
