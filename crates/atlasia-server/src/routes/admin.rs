//! `/api/admin`: bulk pause/resume by priority (the runbook's workload shedding, with events)
//! and API token management. Admin role only.

use crate::auth::{AsAdmin, generate_token, hash_token};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;
use atlasia_core::{Role, RunStatus};
use atlasia_store::ApiToken;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Body of the bulk endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    /// Runs with a priority strictly below this are affected.
    priority_below: i32,
}

fn check_bulk(b: &Bulk) -> Result<(), ApiError> {
    if !(0..=11).contains(&b.priority_below) {
        return Err(ApiError::Invalid {
            field: "priority_below".into(),
            message: "must be between 0 and 11".into(),
        });
    }
    Ok(())
}

/// `POST /api/admin/runs/pause`: PENDING runs below the priority become PAUSED.
pub async fn pause_runs(
    State(st): State<AppState>,
    AsAdmin(caller): AsAdmin,
    ApiJson(b): ApiJson<Bulk>,
) -> Result<Json<Value>, ApiError> {
    check_bulk(&b)?;
    let reason = format!(
        "bulk pause below priority {} by {}",
        b.priority_below, caller.name
    );
    let n = st
        .store
        .bulk_transition(
            RunStatus::Pending,
            RunStatus::Paused,
            b.priority_below,
            &reason,
        )
        .await?;
    tracing::warn!(count = n, priority_below = b.priority_below, by = %caller.name, "bulk pause");
    Ok(Json(json!({"paused": n})))
}

/// `POST /api/admin/runs/resume`: PAUSED runs below the priority go back to PENDING.
pub async fn resume_runs(
    State(st): State<AppState>,
    AsAdmin(caller): AsAdmin,
    ApiJson(b): ApiJson<Bulk>,
) -> Result<Json<Value>, ApiError> {
    check_bulk(&b)?;
    let reason = format!(
        "bulk resume below priority {} by {}",
        b.priority_below, caller.name
    );
    let n = st
        .store
        .bulk_transition(
            RunStatus::Paused,
            RunStatus::Pending,
            b.priority_below,
            &reason,
        )
        .await?;
    tracing::warn!(count = n, priority_below = b.priority_below, by = %caller.name, "bulk resume");
    Ok(Json(json!({"resumed": n})))
}

/// Body of token creation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: Role,
}

/// A token as shown once at creation.
#[derive(Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    info: ApiToken,
    /// The secret; never shown again.
    token: String,
}

/// Checks a token name: 1–64 of letters, digits, `-`, `_`, `.`.
pub fn validate_token_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            field: "name".into(),
            message: "must be 1-64 letters, digits, '-', '_' or '.'".into(),
        })
    }
}

/// Creates a token and returns its secret once. Shared by the API and the CLI.
pub async fn issue_token(
    st: &atlasia_store::Store,
    name: &str,
    role: Role,
) -> Result<(ApiToken, String), ApiError> {
    validate_token_name(name)?;
    let token = generate_token();
    let info = st.create_token(name, role, &hash_token(&token)).await?;
    Ok((info, token))
}

/// `POST /api/admin/tokens` → 201 with the token.
pub async fn create_token(
    State(st): State<AppState>,
    AsAdmin(caller): AsAdmin,
    ApiJson(b): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let (info, token) = issue_token(&st.store, &b.name, b.role).await?;
    tracing::info!(token_name = %info.name, role = %info.role, by = %caller.name, "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })))
}

/// `GET /api/admin/tokens`: every token without secrets.
pub async fn list_tokens(State(st): State<AppState>, _: AsAdmin) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": st.store.list_tokens().await?})))
}

/// `DELETE /api/admin/tokens/{id_or_name}`.
pub async fn revoke_token(
    State(st): State<AppState>,
    AsAdmin(caller): AsAdmin,
    Path(id): Path<String>,
) -> Result<Json<ApiToken>, ApiError> {
    // No token id or name contains NUL, and PostgreSQL cannot compare with it.
    if id.contains('\0') {
        return Err(ApiError::NotFound("token".into()));
    }
    let t = st.store.revoke_token(&id).await?;
    tracing::info!(token_name = %t.name, by = %caller.name, "token revoked");
    Ok(Json(t))
}
