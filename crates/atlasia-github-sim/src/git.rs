//! Real git over smart HTTP: each request runs `git http-backend` as a CGI program against the
//! bare repositories under the git root, streaming the body in and the answer out. Pushes and
//! fetches need the installation token or the PAT as Basic auth (`x-access-token:TOKEN`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use std::process::Stdio;
use std::time::SystemTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::io::ReaderStream;

use crate::rest::{St, gh_error, is_git_path};

/// Serves `/owner/name.git/...`; anything else is a GitHub 404.
pub(crate) async fn serve(State(shared): St, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if !is_git_path(&path) {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .is_some_and(|creds| {
            let Some((_, password)) = creds.split_once(':') else {
                return false;
            };
            let d = shared.lock();
            shared.cfg.pat.as_deref() == Some(password)
                || d.tokens
                    .iter()
                    .any(|t| t.value == password && !t.revoked && t.expires_at > SystemTime::now())
        });
    if !authorized {
        let mut r = (StatusCode::UNAUTHORIZED, "Invalid username or token.\n").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"GitHub\""),
        );
        return r;
    }
    // After a push, note the new heads of branches whose check runs follow pushes.
    let pushed_repo = (req.method() == axum::http::Method::POST
        && path.ends_with("/git-receive-pack"))
    .then(|| repo_of(&path))
    .flatten();
    let after = pushed_repo.map(|repo| {
        let shared = shared.clone();
        move || crate::checks::note_push(shared, repo)
    });
    match cgi(&shared.cfg.git_root, req, after).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "git http-backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
        }
    }
}

/// `owner/name` of a git path `/owner/name.git/...`.
fn repo_of(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let owner = parts.next()?;
    let name = parts.next()?.strip_suffix(".git")?;
    Some(format!("{owner}/{name}"))
}

async fn cgi<F, Fut>(
    root: &std::path::Path,
    req: Request,
    after: Option<F>,
) -> Result<Response, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (parts, body) = req.into_parts();
    let h = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", h(header::CONTENT_TYPE))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_HTTP_MAX_REQUEST_BUFFER", "100M")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let length = h(header::CONTENT_LENGTH);
    if !length.is_empty() {
        cmd.env("CONTENT_LENGTH", length);
    }
    let encoding = h(header::CONTENT_ENCODING);
    if !encoding.is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(p) = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    // Feed the body while the answer streams out (a big push must not deadlock on pipes).
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(stdin);
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            tracing::debug!(target: "sim_github::git", "{l}");
        }
        let _ = child.wait().await;
        if let Some(after) = after {
            after().await;
        }
    });
    let mut out = BufReader::new(stdout);
    let mut status = StatusCode::OK;
    let mut builder = Response::builder();
    loop {
        let mut line = String::new();
        let n = out
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading CGI headers: {e}"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        if n == 0 || line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().and_then(|c| c.parse().ok());
            status = code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            builder = builder.header(k.trim(), v);
        }
    }
    builder
        .status(status)
        .body(Body::from_stream(ReaderStream::new(out)))
        .map_err(|e| format!("building the answer: {e}"))
}
