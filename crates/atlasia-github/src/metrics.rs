//! The client's Prometheus series. Labels are bounded: `route` is a template such as
//! `GET /repos/{owner}/{repo}/issues/{number}`, never a raw path.

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use std::time::Duration;

/// Registers HELP/TYPE lines; call once at start (the server's telemetry does).
pub fn describe() {
    describe_counter!(
        "github_api_calls_total",
        "GitHub API attempts by route template and outcome."
    );
    describe_counter!(
        "github_api_errors_total",
        "Failed GitHub API attempts (and breaker refusals) by error type."
    );
    describe_histogram!(
        "github_api_duration_seconds",
        Unit::Seconds,
        "GitHub API attempt latency by route template."
    );
    describe_counter!(
        "github_webhook_rejected_total",
        "Webhook deliveries refused before any processing, by reason."
    );
    describe_counter!(
        "github_webhook_deliveries_total",
        "Verified webhook deliveries by event and outcome."
    );
}

/// One HTTP attempt; `outcome` is `success` or an error type in lower case.
pub fn attempt(route: &'static str, outcome: &'static str, took: Duration) {
    counter!("github_api_calls_total", "route" => route, "outcome" => outcome).increment(1);
    histogram!("github_api_duration_seconds", "route" => route).record(took.as_secs_f64());
}

/// A failure (or a refusal before any attempt, e.g. an open breaker).
pub fn error(error_type: &'static str) {
    counter!("github_api_errors_total", "error_type" => error_type).increment(1);
}

/// Every `error_type` of `github_api_errors_total` (see `GithubError::error_type`).
pub const ERROR_TYPES: &[&str] = &[
    "RATE_LIMIT",
    "SERVER_ERROR",
    "AUTH",
    "NOT_FOUND",
    "VALIDATION",
    "NETWORK",
    "TIMEOUT",
    "CIRCUIT_OPEN",
];

/// Exposes `github_api_errors_total` at 0 for every error type, so `increase()` sees the
/// first failure of a fresh process.
pub fn zero() {
    for &t in ERROR_TYPES {
        counter!("github_api_errors_total", "error_type" => t).increment(0);
    }
}
