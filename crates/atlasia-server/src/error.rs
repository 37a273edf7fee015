//! The API's errors and their one mapping to HTTP: every error leaves as
//! `{"error": {"code", "message"}}` with the right status. A 5xx says little to the client and
//! everything to the log.

use atlasia_core::{Redactor, Role, RunStatus, ValidationError};
use atlasia_engine::forge::RepoRefused;
use atlasia_store::{DbFault, StoreError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::OnceLock;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    BadRequest(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("this needs the {needed} role; the token has {has}")]
    Forbidden { needed: Role, has: Role },
    #[error("{message}")]
    InvalidTransition { message: String, current: RunStatus },
    #[error("{0}")]
    Conflict(String),
    /// A local repository the server may not use (outside `server.repo_roots`, the data
    /// directory, missing, not a directory).
    #[error("repo: {0}")]
    RepoNotAllowed(String),
    /// Another run of the same repository and issue is active; carries its id.
    #[error("run {0} of this repository and issue is still active; no second run was started")]
    RunActive(String),
    #[error("the database connection pool is exhausted; retry shortly")]
    PoolTimeout,
    /// A named database fault (unreachable, credentials refused, too many clients, read-only).
    #[error("{fault}; retry shortly")]
    Database { fault: DbFault, detail: String },
    /// New work refused (disk below `storage.min_free_disk_mb`) or a write that hit a full
    /// disk: nothing was stored.
    #[error("{0}; nothing was stored, retry later")]
    InsufficientStorage(String),
    #[error("the request took longer than {0} ms")]
    Timeout(u64),
    #[error("internal error")]
    Internal(String),
    /// A webhook delivery without a valid `X-Hub-Signature-256`.
    #[error("{0}")]
    WebhookSignature(&'static str),
    /// GitHub failed or refused a call made on the client's behalf.
    #[error("GitHub: {0}")]
    Github(#[from] atlasia_github::GithubError),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::InvalidTransition { .. } | Self::Conflict(_) | Self::RunActive(_) => {
                StatusCode::CONFLICT
            }
            Self::RepoNotAllowed(_) => StatusCode::BAD_REQUEST,
            Self::PoolTimeout | Self::Timeout(_) | Self::Database { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::WebhookSignature(_) => StatusCode::UNAUTHORIZED,
            Self::Github(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadRequest(_) => "bad_request",
            Self::Invalid { .. } => "invalid_field",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::Conflict(_) => "conflict",
            Self::RepoNotAllowed(_) => "repo_not_allowed",
            Self::RunActive(_) => "run_active",
            Self::PoolTimeout => "db_pool_timeout",
            Self::Database { fault, .. } => match fault {
                DbFault::Unavailable => "database_unavailable",
                DbFault::HostUnknown => "database_host_unknown",
                DbFault::AuthFailed => "database_auth_failed",
                DbFault::TooManyConnections => "database_too_many_connections",
                DbFault::ReadOnly => "database_read_only",
                DbFault::DiskFull => "insufficient_storage",
            },
            Self::InsufficientStorage(_) => "insufficient_storage",
            Self::Timeout(_) => "request_timeout",
            Self::Internal(_) => "internal",
            Self::WebhookSignature(_) => "invalid_signature",
            Self::Github(_) => "github_error",
        }
    }
}

/// The redactor error messages pass through before they leave (installed once at start by
/// `Application::build`): a message built from an upstream answer may echo a secret.
static REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// Installs the redactor for every error answer of this process (the first install wins).
pub fn install_redactor(redactor: Redactor) {
    let _ = REDACTOR.set(redactor);
}

/// `message` as an error answer may carry it: known secrets redacted. Also used by the
/// OpenAI-shaped errors of the proxy, the one other error shape the server answers with.
pub fn redacted(message: String) -> String {
    match REDACTOR.get() {
        Some(r) => r.clean(&message).into_owned(),
        None => message,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            Self::PoolTimeout => {
                metrics::counter!("db_pool_timeouts_total").increment(1);
                tracing::warn!("database pool exhausted; answered 503");
            }
            Self::Database { fault, detail } => {
                tracing::warn!(kind = fault.kind(), error = %detail, "{fault}; answered 503");
            }
            Self::InsufficientStorage(why) => {
                tracing::warn!(reason = %why, "insufficient storage; answered 507");
            }
            _ => {}
        }
        let message = redacted(self.to_string());
        let mut body = json!({"error": {"code": self.code(), "message": message}});
        match &self {
            Self::InvalidTransition { current, .. } => {
                body["error"]["current_status"] = json!(current);
            }
            Self::Invalid { field, .. } => body["error"]["field"] = json!(field),
            Self::RepoNotAllowed(_) => body["error"]["field"] = json!("repo"),
            Self::RunActive(id) => body["error"]["run_id"] = json!(id),
            _ => {}
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(
            self,
            Self::PoolTimeout | Self::Timeout(_) | Self::Database { .. }
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::InsufficientStorage(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        if matches!(self, Self::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PoolTimeout(_) => Self::PoolTimeout,
            StoreError::Fault {
                fault: DbFault::DiskFull,
                detail,
            } => {
                // The driver's words go to the log; the client learns what happened.
                tracing::warn!(error = %detail, "a write hit a full disk; nothing was stored");
                Self::InsufficientStorage("the disk under the database is full".to_owned())
            }
            StoreError::Fault { fault, detail } => Self::Database { fault, detail },
            StoreError::NotFound(what) => Self::NotFound(what.to_owned()),
            StoreError::Transition(t) => Self::InvalidTransition {
                message: t.to_string(),
                current: t.from,
            },
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::RunActive(id) => {
                Self::RunActive(id.unwrap_or_else(|| "(finished meanwhile)".to_owned()))
            }
            StoreError::BadCursor => Self::Invalid {
                field: "cursor".into(),
                message: "is not a cursor this server issued".into(),
            },
            other @ (StoreError::Corrupt(_)
            | StoreError::Config(_)
            | StoreError::Migrate(_)
            | StoreError::Db(_)) => Self::Internal(other.to_string()),
        }
    }
}

impl From<RepoRefused> for ApiError {
    fn from(e: RepoRefused) -> Self {
        let message = e.to_string();
        if message.contains(atlasia_engine::forge::access::ROOTS_SETTING) {
            Self::RepoNotAllowed(message)
        } else {
            Self::RepoNotAllowed(format!(
                "{message} (local repositories must be directories under {})",
                atlasia_engine::forge::access::ROOTS_SETTING
            ))
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Invalid {
            field: e.field.to_owned(),
            message: e.message,
        }
    }
}
