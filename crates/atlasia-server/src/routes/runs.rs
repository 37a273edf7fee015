//! `/api/runs`: create, list (keyset pagination), read, pause/resume/cancel, events.

use crate::auth::{AsOperator, AsViewer, Caller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use atlasia_core::{Run, RunAction, RunEvent, RunId, RunRequest, RunStatus};
use atlasia_store::{Artifact, Cursor, RunFilter};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// Parses a run id from the path; a malformed id cannot name a run.
pub fn run_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse().map_err(|_| ApiError::Invalid {
        field: "id".into(),
        message: format!("'{raw}' is not a run id (a UUID)"),
    })
}

/// `POST /api/runs` → 202 with the stored run.
pub async fn create(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let priority_given = req.priority.is_some();
    let mut new = req.validate()?;
    crate::routes::health::require_headroom(&st)?;
    if atlasia_core::run::is_local_path(&new.repo) {
        new.repo = admit_local(&st, &new.repo).await?;
    }
    // A second trigger for an issue with an active run costs no GitHub call; the insert below
    // settles races.
    if let Some(active) = st.store.active_run_of_issue(&new).await? {
        return Err(ApiError::RunActive(active));
    }
    // `owner/name` + issue number without title or body: read the issue from GitHub.
    if let Some(gh) = &st.github {
        crate::github::fill_from_issue(gh, &st.settings.github, &mut new, priority_given).await?;
    }
    let run = st.store.create_run(&new).await?;
    tracing::info!(run_id = %run.id, by = %caller.name, "run created");
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// The canonical path of a local repository the server may use (under `server.repo_roots`,
/// not the data directory); the run stores it, so a later symlink swap cannot redirect it.
async fn admit_local(st: &AppState, repo: &str) -> Result<String, ApiError> {
    let access = st.settings.repo_access();
    let data_dir = st.settings.storage.data_dir.clone();
    let repo = std::path::PathBuf::from(repo);
    let path = tokio::task::spawn_blocking(move || access.admit(&repo, &data_dir))
        .await
        .map_err(|e| ApiError::Internal(format!("repository check: {e}")))??;
    // `admit` refuses paths that are not UTF-8.
    Ok(path.to_string_lossy().into_owned())
}

/// Query of `GET /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    repo: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page of runs.
#[derive(Serialize)]
pub struct RunPage {
    items: Vec<Run>,
    next_cursor: Option<String>,
}

/// `GET /api/runs`: newest first, `limit` 1–200 (default 50), `cursor` from the last page.
pub async fn list(
    State(st): State<AppState>,
    _: AsViewer,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let status = q
        .status
        .map(|s| s.parse::<RunStatus>())
        .transpose()
        .map_err(|m| ApiError::Invalid {
            field: "status".into(),
            message: m,
        })?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Invalid {
            field: "limit".into(),
            message: "must be between 1 and 200".into(),
        });
    }
    // No stored repo contains NUL (create refuses it), and PostgreSQL cannot compare with it.
    if q.repo.as_deref().is_some_and(|r| r.contains('\0')) {
        return Err(ApiError::Invalid {
            field: "repo".into(),
            message: "must not contain NUL".into(),
        });
    }
    let cursor = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    let filter = RunFilter {
        status,
        repo: q.repo,
    };
    let page = st.store.list_runs(&filter, limit, cursor).await?;
    Ok(Json(RunPage {
        items: page.items,
        next_cursor: page.next_cursor.map(Cursor::encode),
    }))
}

/// `GET /api/runs/{id}`.
pub async fn get(
    State(st): State<AppState>,
    _: AsViewer,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(st.store.get_run(run_id(&id)?).await?))
}

/// The artifacts of a run, every version, oldest first.
#[derive(Debug, Serialize)]
pub struct ArtifactList {
    pub items: Vec<Artifact>,
}

/// `GET /api/runs/{id}/artifacts`.
pub async fn artifacts(
    State(st): State<AppState>,
    _: AsViewer,
    Path(id): Path<String>,
) -> Result<Json<ArtifactList>, ApiError> {
    let items = st.store.artifacts(run_id(&id)?).await?;
    Ok(Json(ArtifactList { items }))
}

async fn act(
    st: AppState,
    caller: Caller,
    id: &str,
    action: RunAction,
) -> Result<Json<Run>, ApiError> {
    let reason = format!("{action} by {}", caller.name);
    let run = st.store.apply_action(run_id(id)?, action, &reason).await?;
    tracing::info!(run_id = %run.id, status = %run.status, by = %caller.name, "run {action}");
    Ok(Json(run))
}

/// `POST /api/runs/{id}/pause`: 409 with the current status when not pausable.
pub async fn pause(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    act(st, caller, &id, RunAction::Pause).await
}

/// `POST /api/runs/{id}/resume`.
pub async fn resume(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    act(st, caller, &id, RunAction::Resume).await
}

/// `POST /api/runs/{id}/cancel`.
pub async fn cancel(
    State(st): State<AppState>,
    AsOperator(caller): AsOperator,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    act(st, caller, &id, RunAction::Cancel).await
}

/// Query of the events endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// A page of events; poll again with `after = next_after`.
#[derive(Serialize)]
pub struct EventPage {
    items: Vec<RunEvent>,
    next_after: i64,
}

/// `GET /api/runs/{id}/events?after=N`: events with seq > N in order (at most `limit`, ≤ 1000).
pub async fn events(
    State(st): State<AppState>,
    _: AsViewer,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::Invalid {
            field: "after".into(),
            message: "must be 0 or more".into(),
        });
    }
    let limit = q.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid {
            field: "limit".into(),
            message: "must be between 1 and 1000".into(),
        });
    }
    let items = st.store.events(run_id(&id)?, after, limit).await?;
    let next_after = items.last().map_or(after, |e| e.seq);
    Ok(Json(EventPage { items, next_after }))
}
