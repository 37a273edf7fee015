//! Gateway errors. Retry and fallback decisions live on the error (`is_retryable`,
//! `tries_next_endpoint`); the metric label (`error_type`) and the HTTP status the proxy
//! answers with are derived here too, so every caller classifies alike.

use std::time::Duration;

/// What kind of failure, in the runbook's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429 (or a local limiter timeout).
    RateLimit,
    /// The call took too long (connect, first byte, or total).
    Timeout,
    /// 500, 502, 503, 504, 529.
    ServerError,
    /// 401, 403.
    Auth,
    /// 400, 404, 422: the request itself is wrong.
    BadRequest,
    /// The prompt does not fit the model's context.
    ContextLength,
    /// Connect, reset, DNS: the request may never have arrived.
    Network,
    /// Nothing listens there: the connection was refused. Not a passing outage (a wrong port,
    /// a server that is not running): tried on the next endpoint, never again on this one.
    Unreachable,
    /// The endpoint's circuit breaker is open.
    CircuitOpen,
    /// A budget cap refused the call.
    Budget,
    /// The provider answered something that is not its documented format.
    Malformed,
    /// A stream broke after some of it was delivered.
    StreamCut,
}

/// Every value [`ErrorKind::error_type`] can take: the closed label set of
/// `llm_api_errors_total{error_type}`, exposed at 0 from start.
pub const ERROR_TYPES: &[&str] = &[
    "RATE_LIMIT",
    "TIMEOUT",
    "SERVER_ERROR",
    "AUTH",
    "BAD_REQUEST",
    "NETWORK",
    "CIRCUIT_OPEN",
    "BUDGET",
];

impl ErrorKind {
    /// The `error_type` label of `llm_api_errors_total` (runbook names).
    pub fn error_type(self) -> &'static str {
        match self {
            Self::RateLimit => "RATE_LIMIT",
            Self::Timeout => "TIMEOUT",
            Self::ServerError | Self::Malformed | Self::StreamCut => "SERVER_ERROR",
            Self::Auth => "AUTH",
            Self::BadRequest | Self::ContextLength => "BAD_REQUEST",
            Self::Network | Self::Unreachable => "NETWORK",
            Self::CircuitOpen => "CIRCUIT_OPEN",
            Self::Budget => "BUDGET",
        }
    }
}

/// One failure, with what the provider told us about when to come back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind:?}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct LlmError {
    pub kind: ErrorKind,
    /// Human-readable cause (never contains credentials).
    pub message: String,
    /// The upstream HTTP status, when there was one.
    pub status: Option<u16>,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
}

impl LlmError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// Classifies an upstream HTTP status.
    pub fn from_status(
        status: u16,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let message = message.into();
        let kind = match status {
            429 => ErrorKind::RateLimit,
            // llama-server answers some invalid requests (a `tool_choice` object) with a 500:
            // repeating them cannot help and says nothing about the endpoint's health.
            500 if blames_the_request(&message) => ErrorKind::BadRequest,
            500 | 502 | 503 | 504 | 529 => ErrorKind::ServerError,
            401 | 403 => ErrorKind::Auth,
            408 => ErrorKind::Timeout,
            400 | 413 if mentions_context_length(&message) => ErrorKind::ContextLength,
            s if s >= 500 => ErrorKind::ServerError,
            _ => ErrorKind::BadRequest,
        };
        Self {
            kind,
            message,
            status: Some(status),
            retry_after,
        }
    }

    /// Worth trying again on the same endpoint after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimit | ErrorKind::Timeout | ErrorKind::ServerError | ErrorKind::Network
        )
    }

    /// Worth trying the next endpoint of the model: anything the endpoint (not the request)
    /// is to blame for. A bad request or a budget refusal would fail everywhere; a prompt too
    /// long for this endpoint's context may fit the next one's.
    pub fn tries_next_endpoint(&self) -> bool {
        !matches!(self.kind, ErrorKind::BadRequest | ErrorKind::Budget)
    }

    /// Whether the endpoint is to blame (the breaker counts it as a failure). The request's
    /// own faults (invalid, too long for the context) say nothing about the endpoint's health.
    pub fn counts_against_endpoint(&self) -> bool {
        !matches!(
            self.kind,
            ErrorKind::BadRequest | ErrorKind::ContextLength | ErrorKind::Budget
        )
    }

    /// The status the OpenAI-compatible proxy answers with.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::RateLimit => 429,
            ErrorKind::Timeout => 504,
            ErrorKind::ServerError | ErrorKind::Malformed | ErrorKind::StreamCut => 502,
            ErrorKind::Network | ErrorKind::Unreachable | ErrorKind::CircuitOpen => 503,
            ErrorKind::Auth => 502,
            ErrorKind::ContextLength => 400,
            // The provider's own 4xx (404, 413, 422, …) tells the client more than a 400.
            ErrorKind::BadRequest => self
                .status
                .filter(|s| (400..500).contains(s))
                .unwrap_or(400),
            ErrorKind::Budget => 402,
        }
    }
}

/// OpenAI's `context_length_exceeded`, llama-server's `exceed_context_size_error` ("the
/// request exceeds the available context size"), Anthropic's "prompt is too long", vLLM's
/// "maximum context length".
pub(crate) fn mentions_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("context_length")
        || m.contains("context length")
        || m.contains("exceed_context_size")
        || m.contains("exceeds the available context")
        || m.contains("context size")
        || m.contains("too many tokens")
        || m.contains("prompt is too long")
}

/// A 500 whose message says the request is at fault (llama-server reports its parse and
/// validation errors so: "Invalid tool_choice: …", "[json.exception…]", "… is not supported").
fn blames_the_request(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "invalid",
        "unsupported",
        "not supported",
        "json.exception",
        "parse error",
        "must be",
        "must not",
        "unknown field",
        "missing field",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_the_runbook_names_them() {
        let t = |s: u16| LlmError::from_status(s, "x", None).kind.error_type();
        assert_eq!(t(429), "RATE_LIMIT");
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(t(s), "SERVER_ERROR");
            assert!(LlmError::from_status(s, "x", None).is_retryable());
        }
        assert_eq!(t(401), "AUTH");
        assert_eq!(t(404), "BAD_REQUEST");
        let ctx = LlmError::from_status(400, "This model's maximum context length is 8192", None);
        assert_eq!(ctx.kind, ErrorKind::ContextLength);
        assert!(!ctx.is_retryable() && ctx.tries_next_endpoint());
        assert!(!ctx.counts_against_endpoint());
        assert!(!LlmError::from_status(400, "bad", None).is_retryable());
        let llama = LlmError::from_status(
            400,
            "exceed_context_size_error: the request exceeds the available context size, try increasing it",
            None,
        );
        assert_eq!(llama.kind, ErrorKind::ContextLength);
        let anthropic = LlmError::from_status(
            400,
            "invalid_request_error: prompt is too long: 210000 tokens > 200000 maximum",
            None,
        );
        assert_eq!(anthropic.kind, ErrorKind::ContextLength);
    }

    #[test]
    fn a_500_blaming_the_request_is_not_retried_and_keeps_its_status() {
        let e = LlmError::from_status(
            500,
            "server_error: Invalid tool_choice: {\"type\":\"function\"}",
            None,
        );
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(!e.is_retryable() && !e.tries_next_endpoint() && !e.counts_against_endpoint());
        let busy = LlmError::from_status(500, "server_error: Internal error", None);
        assert!(busy.is_retryable() && busy.counts_against_endpoint());
        assert_eq!(
            LlmError::from_status(404, "no such model", None).http_status(),
            404
        );
        assert_eq!(LlmError::from_status(422, "x", None).http_status(), 422);
        assert_eq!(
            e.http_status(),
            400,
            "a 5xx the request caused is the client's 400"
        );
    }

    #[test]
    fn every_error_type_is_in_the_closed_set_exposed_at_zero() {
        use ErrorKind::*;
        let kinds = [
            RateLimit,
            Timeout,
            ServerError,
            Auth,
            BadRequest,
            ContextLength,
            Network,
            Unreachable,
            CircuitOpen,
            Budget,
            Malformed,
            StreamCut,
        ];
        for k in kinds {
            assert!(ERROR_TYPES.contains(&k.error_type()), "{k:?}");
        }
        for t in ERROR_TYPES {
            assert!(
                kinds.iter().any(|k| k.error_type() == *t),
                "{t} is never used"
            );
        }
    }
}
