//! Everything a simulated request can fail with, independent of the wire. Each wire turns a
//! `SimError` into its provider's error body in one exhaustive match (`openai::error_body`,
//! `anthropic::error_body`); the status and retry headers are decided here, once.

use axum::http::StatusCode;
use std::time::Duration;

/// A failed request, real (bad input, bad key) or injected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// The body is not JSON, or a field is missing or of the wrong shape. `param` names the
    /// field (`messages`, `messages[2].role`, `max_tokens`, …).
    #[error("{message}")]
    BadRequest {
        param: Option<String>,
        message: String,
        /// OpenAI's machine code (`missing_required_parameter`, `invalid_type`, …).
        code: Option<&'static str>,
    },
    /// The body is larger than the simulator accepts.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// Missing or wrong API key (or the `auth` fault).
    #[error("{0}")]
    Unauthorized(String),
    /// No such route.
    #[error("unknown route {0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Too many requests: injected, or beyond `--rate-limit-rpm` / `--rate-limit-tpm`.
    #[error("rate limit reached; retry after {} ms", retry_after.as_millis())]
    RateLimited { retry_after: Duration },
    /// An injected 529 (Anthropic's "overloaded").
    #[error("overloaded")]
    Overloaded,
    /// Any other injected status (5xx, or a 4xx such as 403).
    #[error("injected failure with status {0}")]
    Injected(u16),
    /// A `stall` fault reached its bound (`stall_max`) or the server is stopping.
    #[error("the simulated provider stalled and gave up")]
    StallEnded,
    /// The prompt does not fit the context (the `context` fault); llama-server's words.
    #[error(
        "request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
    )]
    ContextExceeded { n_prompt: u64, n_ctx: u64 },
}

impl SimError {
    /// A missing required field.
    pub(crate) fn missing(field: &str) -> Self {
        Self::BadRequest {
            param: Some(field.to_owned()),
            message: format!("Missing required parameter: '{field}'."),
            code: Some("missing_required_parameter"),
        }
    }

    /// A field of the wrong type or value.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            param: Some(field.to_owned()),
            message: format!("Invalid value for '{field}': {}", message.into()),
            code: Some("invalid_value"),
        }
    }

    /// A body that is not JSON (or not a JSON object).
    pub(crate) fn not_json(detail: impl std::fmt::Display) -> Self {
        Self::BadRequest {
            param: None,
            message: format!("We could not parse the JSON body of your request ({detail})."),
            code: None,
        }
    }

    /// The error an injected status stands for.
    pub(crate) fn injected(status: u16, retry_after: Duration) -> Self {
        match status {
            401 => Self::Unauthorized("invalid API key (injected auth fault)".into()),
            429 => Self::RateLimited { retry_after },
            529 => Self::Overloaded,
            other => Self::Injected(other),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::ContextExceeded { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => status_or_500(529),
            Self::Injected(code) => status_or_500(*code),
            Self::StallEnded => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// How long a client should wait, for the `Retry-After` headers.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
