//! The HTTP core every operation goes through: GitHub's headers, credentials (App installation
//! token minted on demand and cached, refreshed once on a 401), rate limits (wait for
//! `retry-after` or `x-ratelimit-reset` up to a cap, then give up), retries of 5xx and
//! transport failures with full-jitter backoff, the circuit breaker, and metrics.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atlasia_resilience::RetryPolicy;
use atlasia_resilience::{BreakerConfig, CircuitBreaker};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::auth::{AppKey, CachedToken, Credentials, parse_expires_at};
use crate::{GithubError, metrics};

/// Largest JSON answer read (a page of 100 check runs or comments fits easily).
pub const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;
/// Largest error body read; only its `message` and `errors` are kept.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// The wait assumed for a secondary rate limit that names none (GitHub: "at least one minute").
const SECONDARY_DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Everything the client needs.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` on GitHub Enterprise Server.
    pub api_url: String,
    /// Where git clones from; `None` derives it from `api_url` (`api.github.com` →
    /// `https://github.com`, `…/api/v3` → the host, anything else → `api_url` itself).
    pub git_url: Option<String>,
    pub credentials: Credentials,
    /// Per attempt, connect to last byte of the headers.
    pub timeout: Duration,
    /// Retries of 5xx answers and transport failures.
    pub retry: RetryPolicy,
    /// The longest rate-limit wait honoured; a longer one fails with `RateLimited` at once.
    pub max_rate_limit_wait: Duration,
    /// How many rate-limit waits one call may sit through.
    pub rate_limit_retries: u32,
    pub breaker: BreakerConfig,
    /// Sent as `User-Agent` (GitHub refuses requests without one).
    pub user_agent: String,
}

impl GithubConfig {
    /// Defaults around `credentials`: api.github.com, 30 s timeout, 3 attempts from 1 s,
    /// rate-limit waits up to 60 s (3 of them), a breaker opening at half of 20 attempts failed.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            git_url: None,
            credentials,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_rate_limit_wait: Duration::from_secs(60),
            rate_limit_retries: 3,
            // Counted per attempt, so a window wide enough that one call's retries cannot open it.
            breaker: BreakerConfig {
                window: 20,
                min_calls: 10,
                failure_rate: 0.5,
                open_for: Duration::from_secs(30),
                half_open_probes: 2,
            },
            user_agent: concat!("atlasia/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// A GitHub REST client. Cheap to clone; clones share the token cache and the breaker.
#[derive(Debug, Clone)]
pub struct GithubClient {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    http: reqwest::Client,
    /// The API base without a trailing slash.
    base: String,
    pub(crate) git_base: String,
    auth: Auth,
    cfg: GithubConfig,
    breaker: CircuitBreaker,
}

enum Auth {
    Token(SecretString),
    App {
        app_id: String,
        key: AppKey,
        installation_id: u64,
        /// One refresh at a time: callers queue behind the one minting a token.
        cache: Mutex<Option<CachedToken>>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token([REDACTED])"),
            Self::App { app_id, .. } => write!(f, "App({app_id})"),
        }
    }
}

/// Which credential a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cred {
    /// The installation token or the PAT.
    Normal,
    /// The App JWT (only for minting installation tokens).
    AppJwt,
}

/// One request to make.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// The route template, the `route` label.
    pub route: &'static str,
    pub method: Method,
    /// Below the API base, starting with `/`, segments already escaped.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    pub cred: Cred,
}

impl Call {
    pub fn new(route: &'static str, method: Method, path: String) -> Self {
        Self {
            route,
            method,
            path,
            query: Vec::new(),
            body: None,
            cred: Cred::Normal,
        }
    }

    pub fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// GitHub's error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<Value>,
}

impl GithubClient {
    /// Builds the client (and its HTTP client, TLS through ring). For an App, the key was
    /// checked when it was loaded; no request is made here.
    pub fn new(cfg: GithubConfig) -> Result<Self, GithubError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        let http = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .default_headers(headers)
            // Job logs redirect to blob storage; reqwest drops Authorization when the host
            // changes, so the token never follows.
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| GithubError::Config(format!("cannot build the HTTP client: {e}")))?;
        let base = cfg.api_url.trim().trim_end_matches('/').to_owned();
        let url = Url::parse(&base)
            .map_err(|e| GithubError::Config(format!("api_url '{base}' is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(GithubError::Config(format!(
                "api_url '{base}' must be http or https"
            )));
        }
        let git_base = match &cfg.git_url {
            Some(g) => g.trim().trim_end_matches('/').to_owned(),
            None => derive_git_base(&url),
        };
        let auth = match cfg.credentials.clone() {
            Credentials::Token(t) => Auth::Token(t),
            Credentials::App {
                app_id,
                key,
                installation_id,
            } => Auth::App {
                app_id,
                key,
                installation_id,
                cache: Mutex::new(None),
            },
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                git_base,
                auth,
                breaker: CircuitBreaker::new(cfg.breaker.clone()),
                cfg,
            }),
        })
    }

    /// The configuration it was built with (credentials redacted in `Debug`).
    pub fn config(&self) -> &GithubConfig {
        &self.inner.cfg
    }

    /// The token git should present: the installation token (fresh for at least five minutes)
    /// or the PAT.
    pub async fn git_token(&self) -> Result<SecretString, GithubError> {
        self.token(false).await
    }

    /// The current token, minting an installation token when none is fresh (or when `force`).
    async fn token(&self, force: bool) -> Result<SecretString, GithubError> {
        let (installation_id, cache) = match &self.inner.auth {
            Auth::Token(t) => return Ok(t.clone()),
            Auth::App {
                installation_id,
                cache,
                ..
            } => (*installation_id, cache),
        };
        let mut cached = cache.lock().await;
        if !force
            && let Some(c) = cached.as_ref()
            && c.is_fresh(SystemTime::now())
        {
            return Ok(c.token.clone());
        }
        let mut call = Call::new(
            "POST /app/installations/{installation_id}/access_tokens",
            Method::POST,
            format!("/app/installations/{installation_id}/access_tokens"),
        );
        call.cred = Cred::AppJwt;
        // The mint goes through the same retry and rate-limit path, with the JWT.
        let resp = Box::pin(self.execute(&call)).await?;
        #[derive(Deserialize)]
        struct Minted {
            token: String,
            expires_at: String,
        }
        let minted: Minted = read_json(resp, call.route).await?;
        let expires_at =
            parse_expires_at(&minted.expires_at).ok_or_else(|| GithubError::Decode {
                route: call.route.into(),
                message: format!("expires_at '{}' is not RFC 3339", minted.expires_at),
            })?;
        let token = SecretString::from(minted.token);
        *cached = Some(CachedToken {
            token: token.clone(),
            expires_at,
        });
        tracing::debug!(installation_id, "minted a GitHub installation token");
        Ok(token)
    }

    /// The `Authorization` value for `cred`.
    async fn authorization(&self, cred: Cred, force: bool) -> Result<HeaderValue, GithubError> {
        let secret = match (cred, &self.inner.auth) {
            (Cred::AppJwt, Auth::App { app_id, key, .. }) => key.jwt(app_id, SystemTime::now())?,
            (Cred::AppJwt, Auth::Token(_)) => {
                return Err(GithubError::Config(
                    "an App JWT was needed but only a token is configured".into(),
                ));
            }
            (Cred::Normal, _) => self.token(force).await?,
        };
        let mut v = HeaderValue::from_str(&format!("Bearer {}", secret.expose_secret()))
            .map_err(|_| GithubError::Config("the token contains invalid characters".into()))?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Sends `call` until it succeeds, fails for good, or the retries run out. Success means a
    /// 2xx (redirects are followed); the body is left for the caller to read, bounded.
    pub(crate) async fn execute(&self, call: &Call) -> Result<reqwest::Response, GithubError> {
        let inner = &self.inner;
        let mut url = Url::parse(&format!("{}{}", inner.base, call.path)).map_err(|e| {
            GithubError::Config(format!("cannot build the URL of {}: {e}", call.route))
        })?;
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let mut retries = 0u32;
        let mut waits = 0u32;
        let mut refreshed = false;
        let mut force = false;
        loop {
            let permit = match inner.breaker.try_acquire() {
                Ok(p) => p,
                Err(open) => {
                    metrics::error("CIRCUIT_OPEN");
                    return Err(GithubError::CircuitOpen {
                        retry_in: open.retry_in,
                    });
                }
            };
            let auth = self.authorization(call.cred, force).await?;
            force = false;
            let mut req = inner
                .http
                .request(call.method.clone(), url.clone())
                .header(AUTHORIZATION, auth)
                .timeout(inner.cfg.timeout);
            if let Some(b) = &call.body {
                req = req.json(b);
            }
            let started = tokio::time::Instant::now();
            let err = match req.send().await {
                Err(e) => {
                    permit.failure();
                    transport_error(&e, call.route, inner.cfg.timeout)
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        permit.success();
                        metrics::attempt(call.route, "success", started.elapsed());
                        return Ok(resp);
                    }
                    if let Some(wait) = rate_limit_wait(status, resp.headers(), SystemTime::now()) {
                        // Not the endpoint's fault: no verdict for the breaker.
                        drop(permit);
                        let body = read_error(resp).await;
                        let limited = wait.or_else(|| {
                            body.message
                                .to_ascii_lowercase()
                                .contains("rate limit")
                                .then_some(SECONDARY_DEFAULT_WAIT)
                        });
                        if let Some(wait) = limited {
                            metrics::attempt(call.route, "rate_limit", started.elapsed());
                            metrics::error("RATE_LIMIT");
                            if wait <= inner.cfg.max_rate_limit_wait
                                && waits < inner.cfg.rate_limit_retries
                            {
                                waits += 1;
                                tracing::warn!(
                                    route = call.route,
                                    wait_ms = wait.as_millis() as u64,
                                    "GitHub rate limit; waiting"
                                );
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                            return Err(GithubError::RateLimited {
                                route: call.route.into(),
                                retry_in: wait,
                            });
                        }
                        classify(status, body, call.route)
                    } else if status == StatusCode::UNAUTHORIZED
                        && call.cred == Cred::Normal
                        && matches!(inner.auth, Auth::App { .. })
                        && !refreshed
                    {
                        // The installation token was revoked or expired early: mint a new
                        // one and try again, once.
                        drop(permit);
                        let _ = read_error(resp).await;
                        metrics::attempt(call.route, "auth", started.elapsed());
                        refreshed = true;
                        force = true;
                        tracing::info!(
                            route = call.route,
                            "GitHub refused the installation token; refreshing it once"
                        );
                        continue;
                    } else {
                        if status.is_server_error() {
                            permit.failure();
                        } else {
                            permit.success();
                        }
                        classify(status, read_error(resp).await, call.route)
                    }
                }
            };
            let kind = err.error_type();
            metrics::attempt(call.route, lower(kind), started.elapsed());
            metrics::error(kind);
            let transient = matches!(
                err,
                GithubError::Server { .. }
                    | GithubError::Network { .. }
                    | GithubError::Timeout { .. }
            );
            if transient && inner.cfg.retry.allows(retries) {
                let delay = inner.cfg.retry.backoff(retries);
                retries += 1;
                tracing::warn!(route = call.route, error = %err, delay_ms = delay.as_millis() as u64, "GitHub call failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(err);
        }
    }

    /// Sends `call` and reads a JSON answer of at most [`MAX_JSON_BYTES`].
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: &Call) -> Result<T, GithubError> {
        let resp = self.execute(call).await?;
        read_json(resp, call.route).await
    }
}

fn lower(kind: &'static str) -> &'static str {
    match kind {
        "RATE_LIMIT" => "rate_limit",
        "SERVER_ERROR" => "server_error",
        "AUTH" => "auth",
        "NOT_FOUND" => "not_found",
        "VALIDATION" => "validation",
        "NETWORK" => "network",
        "TIMEOUT" => "timeout",
        "CIRCUIT_OPEN" => "circuit_open",
        _ => "error",
    }
}

/// `https://api.github.com` → `https://github.com`; `https://h/api/v3` → `https://h`;
/// anything else (a fake, a proxy) serves git itself.
fn derive_git_base(api: &Url) -> String {
    let mut u = api.clone();
    if u.host_str() == Some("api.github.com") {
        return "https://github.com".into();
    }
    let path = u.path().trim_end_matches('/').to_owned();
    if let Some(stripped) = path.strip_suffix("/api/v3") {
        u.set_path(stripped);
    }
    u.set_query(None);
    u.as_str().trim_end_matches('/').to_owned()
}

/// How long a 403/429 asks us to wait: `Some(Some(d))` for an explicit `retry-after` or an
/// exhausted primary limit, `Some(None)` for a 403/429 that may be a secondary limit without
/// a hint (decided from the body), `None` when it is not a rate-limit status.
pub(crate) fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Option<Duration>> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ra) = header(RETRY_AFTER.as_str()) {
        if let Ok(secs) = ra.parse::<u64>() {
            return Some(Some(Duration::from_secs(secs)));
        }
        if let Ok(at) = httpdate::parse_http_date(ra) {
            return Some(Some(at.duration_since(now).unwrap_or_default()));
        }
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|r| r.parse::<u64>().ok())
    {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
        // The reset has second resolution: never retry within the same second.
        let wait = at.duration_since(now).unwrap_or_default();
        return Some(Some(wait.max(Duration::from_secs(1))));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Some(Some(SECONDARY_DEFAULT_WAIT));
    }
    Some(None)
}

fn transport_error(e: &reqwest::Error, route: &str, timeout: Duration) -> GithubError {
    if e.is_timeout() {
        return GithubError::Timeout {
            route: route.into(),
            after: timeout,
        };
    }
    // The URL and its query never hold a credential here; drop it anyway to keep messages short.
    let mut message = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    GithubError::Network {
        route: route.into(),
        message,
    }
}

fn classify(status: StatusCode, body: ErrorBody, route: &str) -> GithubError {
    let route = route.to_owned();
    let code = status.as_u16();
    let message = if body.message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        body.message
    };
    match code {
        401 | 403 => GithubError::Auth {
            route,
            status: code,
            message,
        },
        404 | 410 => GithubError::NotFound { route },
        500..=599 => GithubError::Server {
            route,
            status: code,
            message,
        },
        _ => GithubError::Validation {
            route,
            status: code,
            message,
            errors: body
                .errors
                .iter()
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    other => other
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| other.to_string()),
                })
                .collect(),
        },
    }
}

async fn read_error(resp: reqwest::Response) -> ErrorBody {
    match read_limited(resp, MAX_ERROR_BYTES).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => ErrorBody::default(),
    }
}

/// Reads at most `max` bytes; more is an error (the answer is not what GitHub documents).
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads the whole answer but keeps only its last `max` bytes (a log's tail is what explains
/// a failure), starting at a UTF-8 boundary. Returns the text and whether anything was cut.
pub(crate) async fn read_tail(
    mut resp: reqwest::Response,
    max: usize,
    route: &str,
) -> Result<(String, bool), GithubError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Some(chunk) = resp.chunk().await.map_err(|e| GithubError::Network {
        route: route.into(),
        message: e.to_string(),
    })? {
        buf.extend_from_slice(&chunk);
        if buf.len() > max.saturating_mul(2).max(64 * 1024) {
            let drop_n = buf.len() - max;
            buf.drain(..drop_n);
            cut = true;
        }
    }
    if buf.len() > max {
        buf.drain(..buf.len() - max);
        cut = true;
    }
    // Skip continuation bytes of a character cut in half.
    let start = buf
        .iter()
        .position(|b| (*b as i8) >= -0x40)
        .unwrap_or(buf.len());
    Ok((String::from_utf8_lossy(&buf[start..]).into_owned(), cut))
}

async fn read_json<T: DeserializeOwned>(
    resp: reqwest::Response,
    route: &str,
) -> Result<T, GithubError> {
    let decode = |message: String| GithubError::Decode {
        route: route.into(),
        message,
    };
    let bytes = read_limited(resp, MAX_JSON_BYTES).await.map_err(decode)?;
    serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(*k, v);
            }
        }
        h
    }

    #[test]
    fn rate_limits_are_read_from_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let f = StatusCode::FORBIDDEN;
        assert_eq!(
            rate_limit_wait(f, &headers(&[("retry-after", "7")]), now),
            Some(Some(Duration::from_secs(7)))
        );
        let primary = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1030"),
        ]);
        assert_eq!(
            rate_limit_wait(f, &primary, now),
            Some(Some(Duration::from_secs(30)))
        );
        let past = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "900")]);
        assert_eq!(
            rate_limit_wait(f, &past, now),
            Some(Some(Duration::from_secs(1)))
        );
        // A plain 403 (missing permission) is not a rate limit by its headers.
        let plain = headers(&[("x-ratelimit-remaining", "4999")]);
        assert_eq!(rate_limit_wait(f, &plain, now), Some(None));
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &plain, now),
            Some(Some(SECONDARY_DEFAULT_WAIT))
        );
        assert_eq!(rate_limit_wait(StatusCode::NOT_FOUND, &primary, now), None);
    }

    #[test]
    fn git_base_follows_the_api_host() {
        let g = |u: &str| derive_git_base(&Url::parse(u).unwrap_or_else(|_| unreachable!()));
        assert_eq!(g("https://api.github.com"), "https://github.com");
        assert_eq!(
            g("https://ghe.example.com/api/v3"),
            "https://ghe.example.com"
        );
        assert_eq!(g("http://127.0.0.1:4000"), "http://127.0.0.1:4000");
    }
}
