//! What a GitHub call can fail with, classified once: the `error_type` label of
//! `github_api_errors_total`, whether a retry may help, and how the caller should read it.
//! Messages never carry a credential: bodies quoted here come from GitHub's error JSON
//! (`message`), never from our request.

use std::time::Duration;

/// A failed GitHub operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubError {
    /// A primary (`x-ratelimit-remaining: 0`) or secondary (`retry-after`) rate limit that
    /// lasts longer than we are willing to wait, or that persisted through our waits.
    #[error("GitHub rate limit on {route}; retry in {retry_in:?}")]
    RateLimited { route: String, retry_in: Duration },
    /// 5xx after the retries ran out.
    #[error("GitHub answered {status} on {route}: {message}")]
    Server {
        route: String,
        status: u16,
        message: String,
    },
    /// 401, or 403 that is not a rate limit: bad credentials or missing permissions.
    #[error("GitHub refused the credentials on {route} ({status}): {message}")]
    Auth {
        route: String,
        status: u16,
        message: String,
    },
    /// 404 (GitHub also answers 404 for repositories the credentials cannot see).
    #[error("not found on GitHub: {route}")]
    NotFound { route: String },
    /// 422, or another 4xx the request itself caused; `errors` holds GitHub's `errors[].message`.
    #[error("GitHub refused the request on {route} ({status}): {message}{}", errors_suffix(.errors))]
    Validation {
        route: String,
        status: u16,
        message: String,
        errors: Vec<String>,
    },
    /// Connection refused or reset, DNS, TLS, or a broken body.
    #[error("cannot reach GitHub on {route}: {message}")]
    Network { route: String, message: String },
    /// The request (connect + answer) took longer than the configured timeout.
    #[error("GitHub did not answer {route} within {after:?}")]
    Timeout { route: String, after: Duration },
    /// The circuit breaker is open after repeated failures.
    #[error("GitHub circuit open; retry in {retry_in:?}")]
    CircuitOpen { retry_in: Duration },
    /// The answer was not what GitHub documents (bad JSON, too large).
    #[error("unexpected answer from GitHub on {route}: {message}")]
    Decode { route: String, message: String },
    /// Missing or unusable credentials or settings (unreadable private key, bad URL).
    #[error("GitHub configuration: {0}")]
    Config(String),
}

fn errors_suffix(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", errors.join("; "))
    }
}

impl GithubError {
    /// The `error_type` label of `github_api_errors_total`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "RATE_LIMIT",
            Self::Server { .. } => "SERVER_ERROR",
            Self::Auth { .. } => "AUTH",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::Validation { .. } | Self::Decode { .. } | Self::Config(_) => "VALIDATION",
            Self::Network { .. } => "NETWORK",
            Self::Timeout { .. } => "TIMEOUT",
            Self::CircuitOpen { .. } => "CIRCUIT_OPEN",
        }
    }

    /// True when the same call may succeed later without any change on our side.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Network { .. }
                | Self::Timeout { .. }
                | Self::CircuitOpen { .. }
        )
    }

    /// True for a 422 whose errors say a pull request for this head already exists.
    pub fn is_pull_request_exists(&self) -> bool {
        match self {
            Self::Validation {
                status: 422,
                message,
                errors,
                ..
            } => std::iter::once(message)
                .chain(errors)
                .any(|m| m.contains("A pull request already exists")),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let v = GithubError::Validation {
            route: "POST /repos/{owner}/{repo}/pulls".into(),
            status: 422,
            message: "Validation Failed".into(),
            errors: vec!["A pull request already exists for acme:ai/issue-1.".into()],
        };
        assert!(v.is_pull_request_exists());
        assert!(!v.is_retryable());
        assert_eq!(v.error_type(), "VALIDATION");
        assert!(v.to_string().contains("already exists"));
        let s = GithubError::Server {
            route: "r".into(),
            status: 502,
            message: "x".into(),
        };
        assert!(s.is_retryable() && !s.is_pull_request_exists());
        assert_eq!(s.error_type(), "SERVER_ERROR");
    }
}
