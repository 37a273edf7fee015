//! The REST endpoints, shaped as GitHub documents them: status codes, `{"message",
//! "documentation_url"}` errors, 422 with `errors` for a duplicate pull request, rate-limit
//! headers on every answer; plus the middleware that records requests, injects faults and
//! checks credentials.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::checks;
use crate::state::{
    CheckData, Data, Recorded, Shared, SimComment, SimPull, Token, label_json, rfc3339,
};

pub(crate) type St = State<Arc<Shared>>;

const DOCS: &str = "https://docs.github.com/rest";
const RATE_LIMIT: u64 = 5000;

/// `{"message", "documentation_url"}` with `status`.
pub(crate) fn gh_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "documentation_url": DOCS, "status": status.as_u16().to_string()})),
    )
        .into_response()
}

fn not_found() -> Response {
    gh_error(StatusCode::NOT_FOUND, "Not Found")
}

/// What the `Authorization` header carried.
pub(crate) fn credential_kind(shared: &Shared, data: &Data, headers: &HeaderMap) -> String {
    let Some(raw) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "none".into();
    };
    let secret = if let Some(b) = raw.strip_prefix("Basic ") {
        STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_owned()))
            .unwrap_or_default()
    } else {
        raw.strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("token "))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    if secret.is_empty() {
        return "unknown".into();
    }
    if shared.cfg.pat.as_deref() == Some(secret.as_str()) {
        return "pat".into();
    }
    if let Some(t) = data.tokens.iter().find(|t| t.value == secret) {
        return if t.revoked || t.expires_at <= SystemTime::now() {
            "revoked-token".into()
        } else {
            "installation-token".into()
        };
    }
    if secret.split('.').count() == 3 {
        return "app-jwt".into();
    }
    "unknown".into()
}

/// The secret inside `Authorization` (Bearer, token or Basic password).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    raw.strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("token "))
        .map(|s| s.trim().to_owned())
}

/// Is `path` a git smart-HTTP path (`/owner/name.git/...`)?
pub(crate) fn is_git_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (_, name) = (parts.next(), parts.next());
    name.is_some_and(|n| n.ends_with(".git")) && parts.next().is_some()
}

/// Records every request; on API routes also injects faults, checks credentials and adds the
/// rate-limit headers.
pub(crate) async fn gate(State(shared): St, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let git = is_git_path(&path);
    let (body_text, req) = if git {
        (String::new(), Request::from_parts(parts, body))
    } else {
        let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]).into_owned();
        (text, Request::from_parts(parts, Body::from(bytes)))
    };
    let mut record = {
        let data = shared.lock();
        Recorded {
            method: req.method().to_string(),
            path: path.clone(),
            query: req.uri().query().unwrap_or_default().to_owned(),
            headers: req
                .headers()
                .iter()
                .filter(|(k, _)| *k != header::AUTHORIZATION && *k != header::COOKIE)
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            auth: credential_kind(&shared, &data, req.headers()),
            body: body_text,
            status: 0,
        }
    };
    let resp = if git || path.starts_with("/_sim/") {
        next.run(req).await
    } else {
        api_gate(&shared, &record.auth, req, next).await
    };
    record.status = resp.status().as_u16();
    shared.lock().requests.push(record);
    resp
}

async fn api_gate(shared: &Arc<Shared>, auth: &str, req: Request, next: Next) -> Response {
    let now = SystemTime::now();
    let reset = shared.started + Duration::from_secs(3600);
    let reset_epoch = reset
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Faults first, in GitHub's order: a server error, then rate limits.
    let fault = {
        let mut d = shared.lock();
        let f = &mut d.faults;
        if f.server_errors > 0 {
            f.server_errors -= 1;
            let status = StatusCode::from_u16(f.server_status).unwrap_or(StatusCode::BAD_GATEWAY);
            Some(gh_error(status, "Server Error"))
        } else if f.secondary > 0 {
            f.secondary -= 1;
            let mut r = gh_error(
                StatusCode::FORBIDDEN,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(f.secondary_retry_after),
            );
            Some(r)
        } else if f.primary > 0 {
            f.primary -= 1;
            let at = now + Duration::from_secs(f.primary_reset_in);
            let at = at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut r = gh_error(
                StatusCode::FORBIDDEN,
                "API rate limit exceeded for installation.",
            );
            let h = r.headers_mut();
            h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
            h.insert("x-ratelimit-remaining", HeaderValue::from(0));
            h.insert("x-ratelimit-used", HeaderValue::from(RATE_LIMIT));
            h.insert("x-ratelimit-reset", HeaderValue::from(at));
            h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
            return r;
        } else {
            None
        }
    };
    if let Some(r) = fault {
        return r;
    }
    let path = req.uri().path().to_owned();
    if path.starts_with("/app/") {
        if let Err(message) = verify_jwt(shared, req.headers()) {
            return gh_error(StatusCode::UNAUTHORIZED, message);
        }
    } else if !matches!(auth, "installation-token" | "pat") {
        return gh_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    let used = {
        let mut d = shared.lock();
        d.used += 1;
        d.used
    };
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(RATE_LIMIT.saturating_sub(used)),
    );
    h.insert("x-ratelimit-used", HeaderValue::from(used));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset_epoch));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    h.insert(
        "x-github-media-type",
        HeaderValue::from_static("github.v3; format=json"),
    );
    resp
}

#[derive(Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: Value,
}

/// GitHub's App JWT rules: RS256 signed by the App's key, `iss` the App, `exp` at most ten
/// minutes after `iat`, not expired, `iat` not in the future.
fn verify_jwt(shared: &Shared, headers: &HeaderMap) -> Result<(), &'static str> {
    let bad = |m: &'static str| Err(m);
    let Some(pem) = &shared.cfg.public_key_pem else {
        return bad("A JSON web token could not be decoded");
    };
    let Some(token) = bearer(headers) else {
        return bad("A JSON web token could not be decoded");
    };
    let Ok(key) = DecodingKey::from_rsa_pem(pem) else {
        return bad("A JSON web token could not be decoded");
    };
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = 0;
    v.validate_exp = true;
    v.required_spec_claims = ["exp", "iat", "iss"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let Ok(data) = jsonwebtoken::decode::<Claims>(&token, &key, &v) else {
        return bad("A JSON web token could not be decoded");
    };
    let c = data.claims;
    let iss = match &c.iss {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    if iss != shared.cfg.app_id {
        return bad("'Issuer' claim ('iss') must be an Integer");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if c.exp.saturating_sub(c.iat) > 600 || c.exp > now + 600 {
        return bad("'Expiration time' claim ('exp') is too far in the future");
    }
    if c.iat > now + 60 {
        return bad("'Issued at' claim ('iat') must be an Integer representing a time in the past");
    }
    Ok(())
}

/// `POST /app/installations/{id}/access_tokens`.
pub(crate) async fn access_tokens(State(shared): St, Path(id): Path<u64>) -> Response {
    if id != shared.cfg.installation_id {
        return not_found();
    }
    let value = format!("ghs_{}", random_hex(18));
    let expires_at = SystemTime::now() + shared.cfg.token_ttl;
    shared.lock().tokens.push(Token {
        value: value.clone(),
        expires_at,
        revoked: false,
    });
    (
        StatusCode::CREATED,
        Json(json!({
            "token": value,
            "expires_at": rfc3339(expires_at),
            "permissions": {"contents": "write", "issues": "write", "pull_requests": "write", "checks": "read", "metadata": "read"},
            "repository_selection": "all",
        })),
    )
        .into_response()
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

fn repo_json(full: &str, branch: &str, private: bool, base: &str) -> Value {
    let (owner, name) = full.split_once('/').unwrap_or((full, ""));
    json!({
        "id": 1, "name": name, "full_name": full, "private": private,
        "owner": {"login": owner, "type": "Organization"},
        "default_branch": branch,
        "html_url": format!("{base}/{full}"),
        "clone_url": format!("{base}/{full}.git"),
    })
}

/// `GET /repos/{owner}/{repo}`.
pub(crate) async fn get_repo(
    State(shared): St,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let full = format!("{owner}/{repo}");
    let d = shared.lock();
    match d.repos.get(&full) {
        Some(r) => Json(repo_json(
            &full,
            &r.default_branch,
            r.private,
            &host(&headers),
        ))
        .into_response(),
        None => not_found(),
    }
}

fn host(headers: &HeaderMap) -> String {
    let h = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{h}")
}

fn issue_json(
    full: &str,
    number: u64,
    i: &crate::state::IssueData,
    comments: usize,
    base: &str,
) -> Value {
    json!({
        "number": number, "title": i.title, "body": i.body, "state": i.state,
        "labels": i.labels.iter().map(|l| label_json(l)).collect::<Vec<_>>(),
        "comments": comments,
        "user": {"login": "octocat"},
        "html_url": format!("{base}/{full}/issues/{number}"),
    })
}

/// `GET /repos/{owner}/{repo}/issues/{number}`.
pub(crate) async fn get_issue(
    State(shared): St,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let full = format!("{owner}/{repo}");
    let d = shared.lock();
    let Some(r) = d.repos.get(&full) else {
        return not_found();
    };
    let Some(i) = r.issues.get(&number) else {
        return not_found();
    };
    let n = r.comments.iter().filter(|c| c.issue == number).count();
    Json(issue_json(&full, number, i, n, &host(&headers))).into_response()
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    per_page: Option<usize>,
    page: Option<usize>,
}

fn comment_json(c: &SimComment) -> Value {
    json!({"id": c.id, "user": {"login": c.user}, "body": c.body, "created_at": c.created_at, "updated_at": c.updated_at})
}

/// `GET /repos/{owner}/{repo}/issues/{number}/comments?per_page&page`, oldest first, with a
/// `Link` header.
pub(crate) async fn list_comments(
    State(shared): St,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let full = format!("{owner}/{repo}");
    let d = shared.lock();
    let Some(r) = d.repos.get(&full) else {
        return not_found();
    };
    if !r.issues.contains_key(&number) {
        return not_found();
    }
    let all: Vec<&SimComment> = r.comments.iter().filter(|c| c.issue == number).collect();
    let per = q.per_page.unwrap_or(30).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let last = all.len().div_ceil(per).max(1);
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|c| comment_json(c))
        .collect();
    let url = format!("{}/repos/{full}/issues/{number}/comments", host(&headers));
    let mut links = Vec::new();
    if page < last {
        links.push(format!(
            "<{url}?per_page={per}&page={}>; rel=\"next\"",
            page + 1
        ));
        links.push(format!("<{url}?per_page={per}&page={last}>; rel=\"last\""));
    }
    let mut resp = Json(items).into_response();
    if let Ok(v) = HeaderValue::from_str(&links.join(", "))
        && !links.is_empty()
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

#[derive(Deserialize)]
pub(crate) struct BodyOnly {
    body: Option<String>,
}

fn parse<T: for<'a> Deserialize<'a>>(bytes: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes)
        .map_err(|_| Box::new(gh_error(StatusCode::BAD_REQUEST, "Problems parsing JSON")))
}

/// `POST /repos/{owner}/{repo}/issues/{number}/comments` → 201.
pub(crate) async fn create_comment(
    State(shared): St,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let b: BodyOnly = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(text) = b.body.filter(|t| !t.is_empty()) else {
        return validation("IssueComment", "body", "missing_field");
    };
    let full = format!("{owner}/{repo}");
    let mut d = shared.lock();
    let id = d.next_id();
    let Some(r) = d.repos.get_mut(&full) else {
        return not_found();
    };
    if !r.issues.contains_key(&number) {
        return not_found();
    }
    let now = rfc3339(SystemTime::now());
    let c = SimComment {
        id,
        issue: number,
        user: "atlasia[bot]".into(),
        body: text,
        created_at: now.clone(),
        updated_at: now,
        edits: 0,
    };
    r.comments.push(c.clone());
    (StatusCode::CREATED, Json(comment_json(&c))).into_response()
}

/// `PATCH /repos/{owner}/{repo}/issues/comments/{id}`.
pub(crate) async fn update_comment(
    State(shared): St,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let b: BodyOnly = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(text) = b.body else {
        return validation("IssueComment", "body", "missing_field");
    };
    let full = format!("{owner}/{repo}");
    let mut d = shared.lock();
    let Some(c) = d
        .repos
        .get_mut(&full)
        .and_then(|r| r.comments.iter_mut().find(|c| c.id == id))
    else {
        return not_found();
    };
    c.body = text;
    c.updated_at = rfc3339(SystemTime::now());
    c.edits += 1;
    Json(comment_json(c)).into_response()
}

fn validation(resource: &str, field: &str, code: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "message": "Validation Failed",
            "errors": [{"resource": resource, "field": field, "code": code}],
            "documentation_url": DOCS, "status": "422",
        })),
    )
        .into_response()
}

fn pull_json(full: &str, p: &SimPull, base: &str) -> Value {
    let owner = full.split_once('/').map_or(full, |(o, _)| o);
    json!({
        "number": p.number, "title": p.title, "body": p.body, "state": p.state,
        "html_url": format!("{base}/{full}/pull/{}", p.number),
        "head": {"ref": p.head, "label": format!("{owner}:{}", p.head)},
        "base": {"ref": p.base, "label": format!("{owner}:{}", p.base)},
    })
}

#[derive(Deserialize)]
pub(crate) struct PullsQuery {
    head: Option<String>,
    state: Option<String>,
}

/// `GET /repos/{owner}/{repo}/pulls?head=owner:branch&state=open`.
pub(crate) async fn list_pulls(
    State(shared): St,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<PullsQuery>,
    headers: HeaderMap,
) -> Response {
    let full = format!("{owner}/{repo}");
    let d = shared.lock();
    let Some(r) = d.repos.get(&full) else {
        return not_found();
    };
    let state = q.state.unwrap_or_else(|| "open".into());
    let items: Vec<Value> = r
        .pulls
        .iter()
        .filter(|p| state == "all" || p.state == state)
        .filter(|p| {
            q.head
                .as_deref()
                .is_none_or(|h| h == format!("{owner}:{}", p.head))
        })
        .map(|p| pull_json(&full, p, &host(&headers)))
        .collect();
    Json(items).into_response()
}

#[derive(Deserialize)]
pub(crate) struct NewPull {
    title: Option<String>,
    body: Option<String>,
    head: Option<String>,
    base: Option<String>,
}

/// `POST /repos/{owner}/{repo}/pulls` → 201, or 422 when an open one exists for the head.
pub(crate) async fn create_pull(
    State(shared): St,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n: NewPull = match parse(&body) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let (Some(title), Some(head), Some(base)) = (n.title, n.head, n.base) else {
        return validation("PullRequest", "head", "missing_field");
    };
    let head = head
        .split_once(':')
        .map_or(head.clone(), |(_, b)| b.to_owned());
    let full = format!("{owner}/{repo}");
    let git_dir = shared.cfg.git_root.join(format!("{full}.git"));
    if !branch_exists(&git_dir, &head).await {
        return validation("PullRequest", "head", "invalid");
    }
    let mut d = shared.lock();
    let Some(r) = d.repos.get_mut(&full) else {
        return not_found();
    };
    if r.pulls
        .iter()
        .any(|p| p.head == head && p.base == base && p.state == "open")
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "custom",
                            "message": format!("A pull request already exists for {owner}:{head}.")}],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                "status": "422",
            })),
        )
            .into_response();
    }
    let number = r
        .issues
        .keys()
        .copied()
        .chain(r.pulls.iter().map(|p| p.number))
        .max()
        .unwrap_or(0)
        + 1;
    let p = SimPull {
        number,
        title,
        body: n.body.unwrap_or_default(),
        head,
        base,
        state: "open".into(),
    };
    r.pulls.push(p.clone());
    (
        StatusCode::CREATED,
        Json(pull_json(&full, &p, &host(&headers))),
    )
        .into_response()
}

async fn branch_exists(git_dir: &std::path::Path, branch: &str) -> bool {
    tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"))
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

#[derive(Deserialize)]
pub(crate) struct PullPatch {
    title: Option<String>,
    body: Option<String>,
    state: Option<String>,
}

/// `PATCH /repos/{owner}/{repo}/pulls/{number}`.
pub(crate) async fn update_pull(
    State(shared): St,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let u: PullPatch = match parse(&body) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let full = format!("{owner}/{repo}");
    let mut d = shared.lock();
    let Some(p) = d
        .repos
        .get_mut(&full)
        .and_then(|r| r.pulls.iter_mut().find(|p| p.number == number))
    else {
        return not_found();
    };
    if let Some(t) = u.title {
        p.title = t;
    }
    if let Some(b) = u.body {
        p.body = b;
    }
    if let Some(s) = u.state {
        p.state = s;
    }
    let p = p.clone();
    Json(pull_json(&full, &p, &host(&headers))).into_response()
}

/// `GET /repos/{owner}/{repo}/commits/{ref}/check-runs` (the ref may contain slashes, hence
/// the catch-all) — each listing advances the scripted checks by one state. A ref scripted
/// literally (`set_checks`) answers as scripted; otherwise the ref is resolved to a commit and,
/// when a branch with `set_branch_checks` has (or had) that commit as its head, the commit gets
/// the list of its position among the branch's distinct heads.
pub(crate) async fn commits(
    State(shared): St,
    Path((owner, repo, rest)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(git_ref) = rest.strip_suffix("/check-runs") else {
        return not_found();
    };
    let full = format!("{owner}/{repo}");
    let base = host(&headers);
    let branches: Vec<String> = {
        let mut d = shared.lock();
        if d.faults.check_run_errors > 0 {
            d.faults.check_run_errors -= 1;
            return gh_error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error");
        }
        let Some(r) = d.repos.get_mut(&full) else {
            return not_found();
        };
        if let Some(checks) = r.checks.get_mut(git_ref) {
            return listing(&full, &base, git_ref, checks);
        }
        r.branch_checks.keys().cloned().collect()
    };
    if branches.is_empty() {
        return listing(&full, &base, git_ref, &mut []);
    }
    let git_dir = shared.cfg.git_root.join(format!("{full}.git"));
    let wanted = git_ref.to_owned();
    let resolved = tokio::task::spawn_blocking(move || {
        let sha = checks::resolve_commit(&git_dir, &wanted);
        let histories: Vec<(String, Vec<String>)> = branches
            .into_iter()
            .map(|b| {
                let h = checks::branch_history(&git_dir, &b);
                (b, h)
            })
            .collect();
        (sha, histories)
    })
    .await;
    let Ok((sha, histories)) = resolved else {
        return gh_error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error");
    };
    let mut d = shared.lock();
    checks::merge_histories(&mut d, &full, histories);
    let Some(sha) = sha else {
        return gh_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("No commit found for SHA: {git_ref}"),
        );
    };
    checks::instantiate(&mut d, &full, &sha);
    match d.repos.get_mut(&full).and_then(|r| r.checks.get_mut(&sha)) {
        Some(checks) => listing(&full, &base, &sha, checks),
        None => listing(&full, &base, &sha, &mut []),
    }
}

/// The check-runs answer for `checks` of commit `head_sha`, advancing each by one state.
fn listing(full: &str, base: &str, head_sha: &str, checks: &mut [CheckData]) -> Response {
    let now = rfc3339(SystemTime::now());
    let runs: Vec<Value> = checks
        .iter_mut()
        .map(|c| {
            let i = c.polls.min(c.check.states.len().saturating_sub(1));
            c.polls += 1;
            let (status, conclusion) = c
                .check
                .states
                .get(i)
                .cloned()
                .unwrap_or(("queued".into(), None));
            let completed_at = (status == "completed").then(|| now.clone());
            json!({
                "id": c.id, "name": c.check.name, "head_sha": head_sha,
                "node_id": format!("CR_sim{}", c.id),
                "external_id": "",
                "url": format!("{base}/repos/{full}/check-runs/{}", c.id),
                "status": status, "conclusion": conclusion,
                "started_at": c.started_at, "completed_at": completed_at,
                "output": {"title": Value::Null, "summary": Value::Null, "text": Value::Null,
                           "annotations_count": 0},
                "check_suite": {"id": c.id},
                "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
                "details_url": format!("https://github.com/{full}/actions/runs/1/job/{}", c.id),
                "html_url": format!("https://github.com/{full}/actions/runs/1/job/{}", c.id),
                "pull_requests": [],
            })
        })
        .collect();
    Json(json!({"total_count": runs.len(), "check_runs": runs})).into_response()
}

/// `GET /repos/{owner}/{repo}/actions/jobs/{id}/logs` → 302 to a short-lived storage URL.
pub(crate) async fn job_logs(
    State(shared): St,
    Path((_owner, _repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    if !shared.lock().job_logs.contains_key(&id) {
        return not_found();
    }
    let location = format!(
        "{}/_sim/blobs/job-logs/{id}?sig={}",
        host(&headers),
        random_hex(8)
    );
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The storage side of a log redirect: plain text, no GitHub credentials needed.
pub(crate) async fn blob(
    State(shared): St,
    Path(id): Path<u64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !q.contains_key("sig") {
        return StatusCode::FORBIDDEN.into_response();
    }
    match shared.lock().job_logs.get(&id) {
        Some(log) => ([(header::CONTENT_TYPE, "text/plain")], log.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
