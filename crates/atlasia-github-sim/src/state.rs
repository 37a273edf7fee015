//! The fake's memory: repositories with their issues, comments, pull requests and scripted
//! check runs; issued installation tokens; fault switches; and the log of every request.

use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// How the fake authenticates and where it keeps git repositories.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The App id the JWT's `iss` must name.
    pub app_id: String,
    /// The installation that may mint tokens.
    pub installation_id: u64,
    /// The App's public key (PEM, SPKI or PKCS#1); `None` disables App auth.
    pub public_key_pem: Option<Vec<u8>>,
    /// A personal access token accepted as is; `None` accepts none.
    pub pat: Option<String>,
    /// Lifetime of issued installation tokens (GitHub: one hour).
    pub token_ttl: Duration,
    /// Where bare repositories live (`<root>/<owner>/<name>.git`).
    pub git_root: PathBuf,
}

/// One request as the fake saw it. The `authorization` header is replaced by the kind of
/// credential it carried (`installation-token`, `pat`, `app-jwt`, `revoked-token`, `unknown`),
/// so recordings never hold a secret of ours, yet show which one was used.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// The credential kind, `none` without `Authorization`.
    pub auth: String,
    /// The request body (API routes only; at most 64 KiB), lossy UTF-8.
    pub body: String,
    /// The status answered.
    pub status: u16,
}

/// A scripted check run: each listing of its commit shows the next state (the last repeats).
#[derive(Debug, Clone)]
pub struct SimCheck {
    pub name: String,
    /// `(status, conclusion)`, e.g. `("in_progress", None)`, `("completed", Some("failure"))`.
    pub states: Vec<(String, Option<String>)>,
    /// The job log served for it (`GET …/actions/jobs/{id}/logs`).
    pub log: String,
}

impl SimCheck {
    /// A check that completes with `conclusion` after `pending_polls` listings in progress.
    pub fn after(name: &str, pending_polls: usize, conclusion: &str, log: &str) -> Self {
        let mut states = vec![("in_progress".to_owned(), None); pending_polls];
        states.push(("completed".to_owned(), Some(conclusion.to_owned())));
        Self {
            name: name.into(),
            states,
            log: log.into(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct CheckData {
    pub id: u64,
    pub check: SimCheck,
    pub polls: usize,
    pub started_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct IssueData {
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimComment {
    pub id: u64,
    pub issue: u64,
    pub user: String,
    pub body: String,
    pub created_at: String,
    /// Equals `created_at` until the comment is edited.
    pub updated_at: String,
    /// How many times `PATCH …/issues/comments/{id}` changed it.
    pub edits: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimPull {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub head: String,
    pub base: String,
    pub state: String,
}

#[derive(Debug, Default)]
pub(crate) struct RepoData {
    pub default_branch: String,
    pub private: bool,
    pub issues: BTreeMap<u64, IssueData>,
    pub comments: Vec<SimComment>,
    pub pulls: Vec<SimPull>,
    /// Scripted check runs by ref (a literal sha or name, or a full sha resolved from
    /// `branch_checks`).
    pub checks: HashMap<String, Vec<CheckData>>,
    /// Check runs that follow pushes to a branch.
    pub branch_checks: BTreeMap<String, BranchChecks>,
}

/// Check runs scripted per pushed head of a branch: the k-th distinct head SHA gets `lists[k]`
/// (the last list repeats).
#[derive(Debug, Default)]
pub(crate) struct BranchChecks {
    pub lists: Vec<Vec<SimCheck>>,
    /// The distinct head SHAs the branch has had, oldest first (kept when the branch moves on
    /// or is deleted).
    pub heads: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Token {
    pub value: String,
    pub expires_at: SystemTime,
    pub revoked: bool,
}

/// Faults armed for the next requests to the REST API.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Next N API requests: 403 secondary rate limit with `retry-after`.
    pub secondary: u32,
    pub secondary_retry_after: u64,
    /// Next N API requests: 403 with `x-ratelimit-remaining: 0` and a reset this far ahead.
    pub primary: u32,
    pub primary_reset_in: u64,
    /// Next N API requests: this 5xx status.
    pub server_errors: u32,
    pub server_status: u16,
    /// Next N check-run listings: 500.
    pub check_run_errors: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Data {
    pub repos: BTreeMap<String, RepoData>,
    pub tokens: Vec<Token>,
    pub requests: Vec<Recorded>,
    pub faults: Faults,
    pub job_logs: HashMap<u64, String>,
    pub next_id: u64,
    /// Core rate-limit budget used in this window.
    pub used: u64,
}

impl Data {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub data: Mutex<Data>,
    pub started: SystemTime,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// RFC 3339 in UTC, seconds precision, as GitHub writes timestamps.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dt = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&fmt).unwrap_or_default()
}

/// A JSON value for a label name.
pub(crate) fn label_json(name: &str) -> Value {
    serde_json::json!({"name": name, "color": "ededed"})
}
