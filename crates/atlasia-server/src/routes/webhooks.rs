//! `POST /api/webhooks/github`: GitHub deliveries, verified by `X-Hub-Signature-256` over the
//! raw body before anything else happens — and the body is only read once the secret, the
//! signature header and a declared length within GitHub's cap are there. A refused delivery
//! stores nothing (it only bumps `github_webhook_rejected_total{reason}`); a verified one is
//! recorded once by its `X-GitHub-Delivery` id, so a redelivery never starts a second run.
//! `issues` `labeled` with `ai:run` on a GitHub `owner/name` starts a run, unless a run of that
//! repository and issue is still active (then the delivery is recorded as `active`); everything
//! else is acknowledged and ignored.

use crate::error::ApiError;
use crate::github::{RUN_LABEL, clip_title, label_priority};
use crate::middleware::tag_route;
use crate::state::AppState;
use atlasia_core::RunRequest;
use atlasia_core::run::MAX_BODY_BYTES;
use atlasia_core::run::is_forge_repo;
use atlasia_github::api::truncate;
use atlasia_github::verify_signature;
use atlasia_store::Delivery;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn;
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// GitHub caps webhook payloads at 25 MB.
pub const WEBHOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// The webhook route with its own body limit (merged beside the API's 1 MiB one).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webhooks/github", post(github))
        .route_layer(from_fn(tag_route))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
}

/// Every `reason` of `github_webhook_rejected_total`.
pub const REJECT_REASONS: &[&str] = &[
    "no_secret",
    "missing_signature",
    "too_large",
    "bad_signature",
];

/// Every `outcome` of `github_webhook_deliveries_total`.
pub const OUTCOMES: &[&str] = &["accepted", "invalid", "ignored", "duplicate", "active"];

/// Exposes the webhook counters at 0 for every reason, and for every outcome of `issues`
/// deliveries (the event that starts bolts), so `increase()` sees the first one.
pub fn zero_metrics() {
    for &reason in REJECT_REASONS {
        metrics::counter!("github_webhook_rejected_total", "reason" => reason).increment(0);
    }
    for &outcome in OUTCOMES {
        metrics::counter!("github_webhook_deliveries_total", "event" => "issues", "outcome" => outcome)
            .increment(0);
    }
}

fn reject(reason: &'static str, message: &'static str) -> ApiError {
    metrics::counter!("github_webhook_rejected_total", "reason" => reason).increment(1);
    tracing::warn!(reason, "webhook delivery refused");
    ApiError::WebhookSignature(message)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Event names are GitHub's, but keep the label set bounded anyway.
fn event_label(event: &str) -> &'static str {
    match event {
        "issues" => "issues",
        "issue_comment" => "issue_comment",
        "pull_request" => "pull_request",
        "push" => "push",
        "check_run" => "check_run",
        "check_suite" => "check_suite",
        "ping" => "ping",
        _ => "other",
    }
}

/// Bodies read at once: a forged delivery is only refused after its body is read (the signature
/// covers it), so concurrent reads are what bounds the memory forged posts can take.
const CONCURRENT_READS: usize = 4;
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_READS);
/// Longest wait for a read slot before answering 503.
const READ_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /api/webhooks/github`. Everything that can be refused without the body is refused
/// before a byte of it is read: no secret configured, no signature, a declared length over
/// GitHub's cap. A body without a declared length is cut at the cap while it streams.
pub async fn github(
    State(st): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(secret) = st.settings.github.webhook_secret.as_ref() else {
        return Err(reject(
            "no_secret",
            "webhooks are not configured (no webhook secret)",
        ));
    };
    let headers = req.headers().clone();
    let Some(signature) = header(&headers, "x-hub-signature-256") else {
        return Err(reject(
            "missing_signature",
            "X-Hub-Signature-256 is missing",
        ));
    };
    let declared = header(&headers, "content-length").map(str::parse::<u64>);
    match declared {
        Some(Ok(n)) if n > WEBHOOK_BODY_LIMIT as u64 => {
            metrics::counter!("github_webhook_rejected_total", "reason" => "too_large")
                .increment(1);
            return Err(ApiError::PayloadTooLarge(WEBHOOK_BODY_LIMIT));
        }
        Some(Err(_)) => {
            return Err(ApiError::BadRequest(
                "Content-Length is not a number".into(),
            ));
        }
        _ => {}
    }
    let slot = tokio::time::timeout(READ_SLOT_WAIT, READS.acquire())
        .await
        .map_err(|_| ApiError::Timeout(READ_SLOT_WAIT.as_millis() as u64))?
        .map_err(|_| ApiError::Internal("webhook read slots closed".into()))?;
    // The route's `DefaultBodyLimit` (GitHub's cap) applies: reading stops past it. A body that
    // trickles in must not hold a read slot for longer than a request may take.
    let limit_ms = st.settings.server.request_timeout_ms;
    let read = tokio::time::timeout(
        std::time::Duration::from_millis(limit_ms),
        Bytes::from_request(req, &st),
    )
    .await
    .map_err(|_| ApiError::Timeout(limit_ms))?;
    let body = read.map_err(|r: BytesRejection| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            metrics::counter!("github_webhook_rejected_total", "reason" => "too_large")
                .increment(1);
            ApiError::PayloadTooLarge(WEBHOOK_BODY_LIMIT)
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    if !verify_signature(secret.expose_secret().as_bytes(), &body, signature) {
        return Err(reject(
            "bad_signature",
            "X-Hub-Signature-256 does not match the payload",
        ));
    }
    drop(slot);
    let event = header(&headers, "x-github-event")
        .unwrap_or_default()
        .to_owned();
    if event == "ping" {
        return Ok((StatusCode::OK, Json(json!({"status": "pong"}))));
    }
    let Some(delivery) =
        header(&headers, "x-github-delivery").filter(|d| !d.is_empty() && d.len() <= 200)
    else {
        return Err(ApiError::BadRequest("X-GitHub-Delivery is missing".into()));
    };
    let delivery = delivery.to_owned();
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the payload is not JSON: {e}")))?;
    let decision = decide(&event, &payload);
    let (outcome, new) = match &decision {
        Ok(req) => match req.clone().validate() {
            Ok(new) => ("accepted", Some(new)),
            Err(e) => ("invalid", {
                tracing::warn!(delivery, error = %e.message, field = e.field, "labeled issue cannot become a run");
                None
            }),
        },
        Err(_) => ("ignored", None),
    };
    if new.is_some() {
        crate::routes::health::require_headroom(&st)?;
    }
    let recorded = st
        .store
        .record_webhook_delivery(&delivery, &event, outcome, new.as_ref())
        .await?;
    metrics::counter!("github_webhook_deliveries_total", "event" => event_label(&event), "outcome" => match &recorded {
        Delivery::Duplicate { .. } => "duplicate",
        Delivery::Active { .. } => "active",
        Delivery::Recorded { .. } => outcome,
    })
    .increment(1);
    let body = match recorded {
        Delivery::Duplicate { outcome, run_id } => {
            tracing::info!(delivery, "webhook redelivery ignored");
            json!({"status": "duplicate", "delivery_id": delivery, "outcome": outcome, "run_id": run_id})
        }
        Delivery::Active { run_id } => {
            tracing::info!(delivery, %run_id, "a run of this issue is already active; none started");
            json!({"status": "active", "delivery_id": delivery, "run_id": run_id,
                   "reason": "a run of this repository and issue is still active"})
        }
        Delivery::Recorded { run: Some(run) } => {
            tracing::info!(run_id = %run.id, delivery, repo = %run.repo, "run created from a webhook");
            json!({"status": "accepted", "run_id": run.id, "repo": run.repo, "issue_number": run.issue_number, "priority": run.priority})
        }
        Delivery::Recorded { run: None } => {
            let reason = match (&decision, outcome) {
                (Err(reason), _) => reason.clone(),
                (Ok(_), _) => "the labeled issue cannot become a run".to_owned(),
            };
            json!({"status": "ignored", "reason": reason})
        }
    };
    Ok((StatusCode::OK, Json(body)))
}

/// The run a delivery asks for, or why it asks for none.
fn decide(event: &str, p: &Value) -> Result<RunRequest, String> {
    if event != "issues" {
        return Err(format!("event '{event}' is not handled"));
    }
    let action = p["action"].as_str().unwrap_or_default();
    if action != "labeled" {
        return Err(format!("issues action '{action}' is not 'labeled'"));
    }
    let label = p["label"]["name"].as_str().unwrap_or_default();
    if label != RUN_LABEL {
        return Err(format!("label '{label}' is not '{RUN_LABEL}'"));
    }
    let issue = &p["issue"];
    if issue.get("pull_request").is_some() {
        return Err("the labeled item is a pull request".into());
    }
    let repo = p["repository"]["full_name"]
        .as_str()
        .ok_or("the payload has no repository.full_name")?;
    // A delivery names a GitHub repository, never a path on this host.
    if !is_forge_repo(repo) {
        let shown: String = repo.chars().take(120).collect();
        return Err(format!(
            "repository.full_name '{shown}' is not a GitHub owner/name"
        ));
    }
    let number = issue["number"]
        .as_i64()
        .ok_or("the payload has no issue.number")?;
    let labels: Vec<&str> = issue["labels"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["name"].as_str()).collect())
        .unwrap_or_default();
    Ok(RunRequest {
        repo: repo.to_owned(),
        issue_number: Some(number),
        title: Some(clip_title(issue["title"].as_str().unwrap_or_default())),
        body: Some(
            truncate(
                issue["body"].as_str().unwrap_or_default().replace('\0', ""),
                MAX_BODY_BYTES,
            )
            .0,
        ),
        priority: label_priority(labels),
        ..RunRequest::default()
    })
}
