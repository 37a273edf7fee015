//! Provider adapters: one HTTP call to one endpoint, in its wire format (OpenAI Chat
//! Completions or Anthropic Messages), translated to and from the canonical types, with every
//! failure classified as an [`LlmError`] and the provider's rate-limit headers returned as
//! [`RateHints`] — on errors too. Retries, fallback and limits live above this layer.

pub mod anthropic;
pub mod headers;
pub mod openai;
pub mod sse;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ChatRequest, ChatResponse, ErrorKind, LlmError, RateHints, StreamEvent};
use sse::{SseError, SseEvent};

/// A streamed answer: events, ending with `Done` or with one `Err`.
pub type EventStream = BoxStream<'static, Result<StreamEvent, LlmError>>;

/// The wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// OpenAI Chat Completions (also Groq, Together, vLLM, Ollama, OpenRouter, `sim-llm`…).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// One place a model can be called.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The name used in logs, metrics and error reports.
    pub name: String,
    /// The format the endpoint speaks; decides the path, headers and body shapes.
    pub wire: Wire,
    /// `https://api.openai.com`, `https://api.openai.com/v1`, `https://api.groq.com/openai/v1`…
    pub base_url: String,
    /// Sent as `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic); never logged.
    pub api_key: Option<SecretString>,
    /// The provider's model id (the request's `model` is the gateway's logical name).
    pub model: String,
    /// Per attempt: connect + first byte, and the whole answer when not streaming. A stream
    /// that then goes silent for this long is cut with a `Timeout`.
    pub timeout: Duration,
}

impl Endpoint {
    /// The base URL without credentials or query (`scheme://host:port/path`), for messages.
    pub fn display_url(&self) -> String {
        match Url::parse(self.base_url.trim()) {
            Ok(u) => {
                let host = u.host_str().unwrap_or_default();
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                let path = u.path().trim_end_matches('/');
                format!("{}://{host}{port}{path}", u.scheme())
            }
            Err(_) => self.name.clone(),
        }
    }

    /// The URL a chat call is posted to. Each wire follows its own SDK's convention: an
    /// OpenAI base includes the API version (`/v1` is added only to a bare host), an Anthropic
    /// base does not (`/v1/messages` is added unless the base already ends with `/v1`).
    pub fn url(&self) -> Result<Url, LlmError> {
        self.url_to("chat/completions", "messages")
    }

    /// The URL of the model list (`GET`), by the same conventions as [`Endpoint::url`].
    pub fn models_url(&self) -> Result<Url, LlmError> {
        self.url_to("models", "models")
    }

    /// `openai` / `anthropic`: the route under each wire's API version.
    fn url_to(&self, openai: &str, anthropic: &str) -> Result<Url, LlmError> {
        let invalid = |why: &str| {
            LlmError::new(
                ErrorKind::Network,
                format!("endpoint {}: invalid base URL: {why}", self.name),
            )
        };
        let mut url = Url::parse(self.base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let tail = match self.wire {
            Wire::OpenAi if path.is_empty() => format!("/v1/{openai}"),
            Wire::OpenAi => format!("/{openai}"),
            Wire::Anthropic if path.ends_with("/v1") => format!("/{anthropic}"),
            Wire::Anthropic => format!("/v1/{anthropic}"),
        };
        url.set_path(&format!("{path}{tail}"));
        Ok(url)
    }
}

/// The HTTP side of every provider call: one pooled client shared by all endpoints.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
}

impl ProviderClient {
    /// Builds the shared client: pooled keep-alive connections, and redirects followed only
    /// within the same host (a redirect elsewhere could carry the request to a stranger).
    /// A rustls crypto provider must be installed first (the binary does it at start).
    ///
    /// Fails when the TLS verifier finds no CA certificates on the system — a setup error
    /// worth stopping for, not a panic.
    pub fn new() -> Result<Self, LlmError> {
        // TLS uses ring (no aws-lc build); installing the process default twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("atlasia/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(same_host_redirects))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                LlmError::new(
                    ErrorKind::Network,
                    format!("cannot build the HTTP client: {}", describe(&e)),
                )
            })?;
        Ok(Self { http })
    }

    /// Wraps a client built elsewhere (custom TLS roots, proxies).
    pub fn with_client(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// `GET` the endpoint's model list within `timeout`: the body as JSON, or the error
    /// classified as a chat call's would be (`Unreachable`, `Auth`, …).
    pub async fn models(&self, ep: &Endpoint, timeout: Duration) -> Result<Value, LlmError> {
        let key = ep.api_key.as_ref();
        let url = ep.models_url()?;
        let headers = match ep.wire {
            Wire::OpenAi => openai::headers(ep),
            Wire::Anthropic => anthropic::headers(ep),
        }
        .map_err(|e| scrub(e, key))?;
        let attempt = async {
            let response = self
                .http
                .get(url)
                .headers(headers)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| transport_error(e, ep))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| transport_error(e, ep))?;
            if !status.is_success() {
                return Err(status_error(status, &body, &RateHints::default()));
            }
            serde_json::from_slice(&body).map_err(|e| {
                LlmError::new(
                    ErrorKind::Malformed,
                    format!("the model list is not JSON: {e}"),
                )
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result.map_err(|e| scrub(e, key)),
            Err(_) => Err(timeout_error(timeout, "model list")),
        }
    }

    /// One non-streaming call. The hints come back with errors too: a 429's headers say when
    /// to come back.
    pub async fn chat(
        &self,
        ep: &Endpoint,
        req: &ChatRequest,
    ) -> Result<(ChatResponse, RateHints), (LlmError, RateHints)> {
        let request = self
            .request(ep, req, false)
            .map_err(|e| (scrub(e, ep.api_key.as_ref()), RateHints::default()))?;
        let attempt = async {
            let response = request
                .send()
                .await
                .map_err(|e| (transport_error(e, ep), RateHints::default()))?;
            let status = response.status();
            let hints = headers::rate_hints(response.headers());
            let body = response
                .bytes()
                .await
                .map_err(|e| (transport_error(e, ep), hints))?;
            if !status.is_success() {
                return Err((status_error(status, &body, &hints), hints));
            }
            let parsed = match ep.wire {
                Wire::OpenAi => openai::parse_response(&body, ep),
                Wire::Anthropic => anthropic::parse_response(&body, ep, req),
            };
            parsed.map(|r| (r, hints)).map_err(|e| (e, hints))
        };
        match tokio::time::timeout(ep.timeout, attempt).await {
            Ok(result) => result.map_err(|(e, hints)| (scrub(e, ep.api_key.as_ref()), hints)),
            Err(_) => Err((
                timeout_error(ep.timeout, "complete answer"),
                RateHints::default(),
            )),
        }
    }

    /// One streaming call. `Ok` once the provider accepted the request (2xx headers); the
    /// stream then ends with `Done`, or with one `Err` — `StreamCut` when the body ended or
    /// broke before the provider's end marker, never silently.
    pub async fn chat_stream(
        &self,
        ep: &Endpoint,
        req: &ChatRequest,
    ) -> Result<(EventStream, RateHints), (LlmError, RateHints)> {
        let key = ep.api_key.as_ref();
        let request = self
            .request(ep, req, true)
            .map_err(|e| (scrub(e, key), RateHints::default()))?;
        let response = match tokio::time::timeout(ep.timeout, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err((scrub(transport_error(e, ep), key), RateHints::default())),
            Err(_) => {
                return Err((
                    timeout_error(ep.timeout, "response headers"),
                    RateHints::default(),
                ));
            }
        };
        let status = response.status();
        let hints = headers::rate_hints(response.headers());
        if !status.is_success() {
            // The error body is small; if it does not come, the status alone classifies.
            let body = match tokio::time::timeout(ep.timeout, response.bytes()).await {
                Ok(Ok(body)) => body,
                _ => Bytes::new(),
            };
            return Err((scrub(status_error(status, &body, &hints), key), hints));
        }

        let sse = sse::events(body_chunks(response, ep.timeout));
        let events = match ep.wire {
            Wire::OpenAi => translate(sse, openai::StreamState::default()),
            Wire::Anthropic => translate(sse, anthropic::StreamState::new(req)),
        };
        let key = ep.api_key.clone();
        let events = events
            .map(move |item| item.map_err(|e| scrub(e, key.as_ref())))
            .boxed();
        Ok((events, hints))
    }

    fn request(
        &self,
        ep: &Endpoint,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, LlmError> {
        let url = ep.url()?;
        let (body, headers) = match ep.wire {
            Wire::OpenAi => (openai::request_body(ep, req, stream), openai::headers(ep)?),
            Wire::Anthropic => (
                anthropic::request_body(ep, req, stream)?,
                anthropic::headers(ep)?,
            ),
        };
        let body = serde_json::to_vec(&body).map_err(|e| {
            LlmError::new(
                ErrorKind::BadRequest,
                format!("cannot encode the request: {e}"),
            )
        })?;
        Ok(self
            .http
            .post(url)
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(body))
    }
}

/// A wire's streaming translation: provider events in, canonical events out.
pub(crate) trait Translator: Send + 'static {
    /// Handles one SSE event, pushing what it produces. Returns `true` when the stream is
    /// over (the final `Done` or an `Err` was pushed).
    fn event(&mut self, event: SseEvent, out: &mut VecDeque<Result<StreamEvent, LlmError>>)
    -> bool;

    /// The body ended (`None`) or broke (`Some`) before `event` returned `true`: the final
    /// item — `Done` if the wire's rules say the answer was complete, else the error.
    fn end(&mut self, cause: Option<LlmError>) -> Result<StreamEvent, LlmError>;
}

/// Runs a translator over an event stream, guaranteeing nothing follows the final item.
fn translate<S, T>(sse: S, translator: T) -> EventStream
where
    S: Stream<Item = Result<SseEvent, SseError<LlmError>>> + Send + 'static,
    T: Translator,
{
    struct State<S, T> {
        sse: std::pin::Pin<Box<S>>,
        translator: T,
        ready: VecDeque<Result<StreamEvent, LlmError>>,
        over: bool,
    }
    let state = State {
        sse: Box::pin(sse),
        translator,
        ready: VecDeque::new(),
        over: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((item, st));
            }
            if st.over {
                return None;
            }
            match st.sse.next().await {
                Some(Ok(event)) => st.over = st.translator.event(event, &mut st.ready),
                Some(Err(SseError::Transport(e))) => {
                    st.ready.push_back(st.translator.end(Some(e)));
                    st.over = true;
                }
                Some(Err(SseError::EventTooLarge)) => {
                    st.ready.push_back(Err(LlmError::new(
                        ErrorKind::Malformed,
                        "the stream sent an event larger than 16 MiB",
                    )));
                    st.over = true;
                }
                None => {
                    st.ready.push_back(st.translator.end(None));
                    st.over = true;
                }
            }
        }
    })
    // Callers may poll again after the end; that must say "ended", not panic.
    .fuse()
    .boxed()
}

/// The response body as chunks; a transport failure is a `StreamCut`, and a silence longer
/// than `idle` a `Timeout` (a stalled stream would otherwise hold its caller forever).
fn body_chunks(
    response: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, LlmError>> + Send + 'static {
    let chunks = Box::pin(response.bytes_stream());
    futures::stream::unfold(Some(chunks), move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(chunks))),
            Ok(Some(Err(e))) => Some((
                Err(LlmError::new(
                    ErrorKind::StreamCut,
                    format!("the stream broke: {}", describe(&e.without_url())),
                )),
                None,
            )),
            Ok(None) => None,
            Err(_) => Some((
                Err(LlmError::new(
                    ErrorKind::Timeout,
                    format!("the stream stalled: no data for {idle:?}"),
                )),
                None,
            )),
        }
    })
}

/// The error a stream that ended early gets, when the body itself reported nothing.
pub(crate) fn cut(cause: Option<LlmError>, what: &str) -> LlmError {
    cause.unwrap_or_else(|| {
        LlmError::new(
            ErrorKind::StreamCut,
            format!("the stream ended before {what}"),
        )
    })
}

fn timeout_error(timeout: Duration, what: &str) -> LlmError {
    LlmError::new(ErrorKind::Timeout, format!("no {what} within {timeout:?}"))
}

/// Classifies a failure of reqwest: timeouts as `Timeout`, a refused connection as
/// `Unreachable` (naming the endpoint, so a wrong port is obvious), everything else (reset,
/// DNS, TLS) as `Network`. reqwest's URL is left out: a base URL may carry credentials.
pub(crate) fn transport_error(e: reqwest::Error, ep: &Endpoint) -> LlmError {
    let e = e.without_url();
    if e.is_timeout() {
        return LlmError::new(ErrorKind::Timeout, describe(&e));
    }
    if refused(&e) {
        return LlmError::new(
            ErrorKind::Unreachable,
            format!("LLM endpoint {} refused the connection", ep.display_url()),
        );
    }
    LlmError::new(ErrorKind::Network, describe(&e))
}

/// Whether an error's causes include a refused TCP connection.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error with its causes: reqwest's own message ("error sending request") says little.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn status_error(status: StatusCode, body: &[u8], hints: &RateHints) -> LlmError {
    LlmError::from_status(
        status.as_u16(),
        error_message(body, status),
        hints.retry_after,
    )
}

/// The provider's own words from an error body: `error.message` (both wires), prefixed with
/// its code or type, or the common variants of OpenAI-compatible servers; else the text.
pub(crate) fn error_message(body: &[u8], status: StatusCode) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(message) = describe_error_value(&value)
    {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    truncate(text, 500)
}

/// `{"error": {"message", "type", "code"}}`, `{"error": "…"}`, `{"message": "…"}`, `{"detail": "…"}`.
pub(crate) fn describe_error_value(value: &Value) -> Option<String> {
    let error = value.get("error").unwrap_or(value);
    if let Some(text) = error.as_str() {
        return Some(text.to_owned());
    }
    let message = error
        .get("message")
        .or_else(|| value.get("detail"))
        .and_then(Value::as_str)?;
    let label = error
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| error.get("type").and_then(Value::as_str));
    Some(match label {
        Some(label) if !label.is_empty() => format!("{label}: {message}"),
        _ => message.to_owned(),
    })
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Removes the API key from an error message. Providers echo keys back (OpenAI's 401 shows a
/// masked one; proxies are less careful), and errors end up in logs and client answers.
/// A key shorter than the redaction minimum is left alone: replacing it would mangle words
/// (the server refuses such keys at start; a library caller may still pass one).
fn scrub(mut e: LlmError, key: Option<&SecretString>) -> LlmError {
    if let Some(key) = key {
        let key = key.expose_secret();
        if key.chars().count() >= atlasia_core::redact::MIN_SECRET_LEN && e.message.contains(key) {
            e.message = e.message.replace(key, atlasia_core::redact::REDACTED);
        }
    }
    e
}

fn same_host_redirects(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let same_origin = attempt.previous().first().is_some_and(|first| {
        first.host_str() == attempt.url().host_str()
            && first.port_or_known_default() == attempt.url().port_or_known_default()
    });
    if !same_origin {
        attempt.error("refused a redirect to another host")
    } else if attempt.previous().len() > 5 {
        attempt.error("too many redirects")
    } else {
        attempt.follow()
    }
}

/// A header value holding a secret: marked sensitive so it never shows in debug output.
pub(crate) fn secret_header(value: &str) -> Result<reqwest::header::HeaderValue, LlmError> {
    let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        LlmError::new(
            ErrorKind::Auth,
            "the API key holds characters a header cannot carry",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "a test fails loudly")]

    use super::*;

    fn ep(wire: Wire, base: &str) -> Endpoint {
        Endpoint {
            name: "t".into(),
            wire,
            base_url: base.into(),
            api_key: None,
            model: "m".into(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn openai_base_url_forms() {
        for (base, url) in [
            ("http://h", "http://h/v1/chat/completions"),
            ("http://h/", "http://h/v1/chat/completions"),
            ("http://h/v1", "http://h/v1/chat/completions"),
            ("http://h/v1/", "http://h/v1/chat/completions"),
            (
                "http://h:8080/openai/v1",
                "http://h:8080/openai/v1/chat/completions",
            ),
            (
                "https://api.groq.com/openai/v1",
                "https://api.groq.com/openai/v1/chat/completions",
            ),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai/",
                "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            ),
            (
                "http://h/v1?api-version=1",
                "http://h/v1/chat/completions?api-version=1",
            ),
        ] {
            assert_eq!(
                ep(Wire::OpenAi, base).url().unwrap().as_str(),
                url,
                "{base}"
            );
        }
    }

    #[test]
    fn anthropic_base_url_forms() {
        for (base, url) in [
            ("http://h", "http://h/v1/messages"),
            ("http://h/", "http://h/v1/messages"),
            ("http://h/v1", "http://h/v1/messages"),
            ("http://h/v1/", "http://h/v1/messages"),
            (
                "https://openrouter.ai/api",
                "https://openrouter.ai/api/v1/messages",
            ),
            (
                "http://h/proxy/anthropic/v1",
                "http://h/proxy/anthropic/v1/messages",
            ),
        ] {
            assert_eq!(
                ep(Wire::Anthropic, base).url().unwrap().as_str(),
                url,
                "{base}"
            );
        }
    }

    #[test]
    fn invalid_base_urls_are_refused() {
        for base in ["", "api.openai.com", "ftp://h/v1", "http://"] {
            assert!(ep(Wire::OpenAi, base).url().is_err(), "{base}");
        }
    }

    #[test]
    fn error_messages_from_both_wires_and_others() {
        let m = |body: &str| error_message(body.as_bytes(), StatusCode::BAD_REQUEST);
        assert_eq!(
            m(
                r#"{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#
            ),
            "rate_limit_exceeded: Rate limit reached"
        );
        assert_eq!(
            m(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            "overloaded_error: Overloaded"
        );
        assert_eq!(m(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(m(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(m("<html>bad gateway</html>"), "<html>bad gateway</html>");
        assert_eq!(m(""), "Bad Request");
        assert_eq!(m(&"é".repeat(600)).chars().count(), 501);
    }

    #[test]
    fn scrub_removes_the_key() {
        let key = SecretString::from("sk-secret-123");
        let e = LlmError::new(
            ErrorKind::Auth,
            "Incorrect API key provided: sk-secret-123.",
        );
        assert_eq!(
            scrub(e, Some(&key)).message,
            "Incorrect API key provided: [redacted]."
        );
    }
}
