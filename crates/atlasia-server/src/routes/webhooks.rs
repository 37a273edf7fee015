//! `POST /api/webhooks/github`: GitHub deliveries, verified by `X-Hub-Signature-256` over the
//! raw body before anything else happens. A refused delivery stores nothing (it only bumps
//! `github_webhook_rejected_total{reason}`); a verified one is recorded once by its
//! `X-GitHub-Delivery` id, so a redelivery never starts a second run. `issues` `labeled` with
//! `ai:run` starts a run; everything else is acknowledged and ignored.

use crate::error::ApiError;
use crate::github::{RUN_LABEL, clip_title, label_priority};
use crate::middleware::tag_route;
use crate::state::AppState;
use atlasia_core::RunRequest;
use atlasia_core::run::MAX_BODY_BYTES;
use atlasia_github::api::truncate;
use atlasia_github::verify_signature;
use atlasia_store::Delivery;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
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

/// `POST /api/webhooks/github`.
pub async fn github(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(secret) = st.settings.github.webhook_secret.as_ref() else {
        return Err(reject(
            "no_secret",
            "webhooks are not configured (no webhook secret)",
        ));
    };
    let Some(signature) = header(&headers, "x-hub-signature-256") else {
        return Err(reject(
            "missing_signature",
            "X-Hub-Signature-256 is missing",
        ));
    };
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
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
    let recorded = st
        .store
        .record_webhook_delivery(&delivery, &event, outcome, new.as_ref())
        .await?;
    metrics::counter!("github_webhook_deliveries_total", "event" => event_label(&event), "outcome" => match &recorded {
        Delivery::Duplicate { .. } => "duplicate",
        Delivery::Recorded { .. } => outcome,
    })
    .increment(1);
    let body = match recorded {
        Delivery::Duplicate { outcome, run_id } => {
            tracing::info!(delivery, "webhook redelivery ignored");
            json!({"status": "duplicate", "delivery_id": delivery, "outcome": outcome, "run_id": run_id})
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
