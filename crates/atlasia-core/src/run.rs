//! A run (a *bolt*): what a user asks for ([`RunRequest`] → [`NewRun`]) and what is stored ([`Run`]).

use crate::{RunStatus, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Lowest and highest priority; higher runs first.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = 0..=10;
/// Priority when none is given.
pub const DEFAULT_PRIORITY: i32 = 5;
/// Longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 500;
/// Longest body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A run id: a UUID v7, so ids sort by creation time (keyset pagination relies on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// How much a human stays in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Autonomy {
    /// No gates.
    #[default]
    Autonomous,
    /// A gate after the Architect.
    Confirm,
    /// A gate before every write to the forge.
    Observe,
}

impl Autonomy {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Autonomous => "autonomous",
            Self::Confirm => "confirm",
            Self::Observe => "observe",
        }
    }
}

impl FromStr for Autonomy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "autonomous" => Ok(Self::Autonomous),
            "confirm" => Ok(Self::Confirm),
            "observe" => Ok(Self::Observe),
            other => Err(format!("unknown autonomy '{other}'")),
        }
    }
}

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The request field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// What a client sends to start a bolt. Unknown fields are refused so typos are not ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `owner/name` on the forge, or a local repository path.
    pub repo: String,
    /// The issue on the forge; optional for local repositories when a title is given.
    pub issue_number: Option<i64>,
    /// The issue title when there is no issue number (or to override it).
    pub title: Option<String>,
    /// The issue body.
    pub body: Option<String>,
    /// 0–10, higher first; default 5.
    pub priority: Option<i32>,
    /// Default `autonomous`.
    pub autonomy: Option<Autonomy>,
    /// Hard spending cap for this bolt, in USD.
    pub budget_usd: Option<f64>,
}

/// A validated request, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub repo: String,
    pub issue_number: Option<i64>,
    pub title: String,
    pub body: String,
    pub priority: i32,
    pub autonomy: Autonomy,
    pub budget_usd: Option<f64>,
}

/// True for `owner/name` with GitHub's allowed characters.
pub fn is_forge_repo(repo: &str) -> bool {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((owner, name)) => ok_part(owner) && ok_part(name),
        None => false,
    }
}

/// True for something that reads as a filesystem path rather than `owner/name`.
pub fn is_local_path(repo: &str) -> bool {
    repo.starts_with('/') || repo.starts_with("./") || repo.starts_with("../") || repo == "."
}

impl RunRequest {
    /// Checks every field and applies defaults.
    pub fn validate(self) -> Result<NewRun, ValidationError> {
        let repo = self.repo.trim().to_owned();
        if repo.is_empty() {
            return Err(ValidationError::new("repo", "must not be empty"));
        }
        if repo.len() > 4096 || repo.contains('\0') {
            return Err(ValidationError::new("repo", "is too long or contains NUL"));
        }
        let local = is_local_path(&repo);
        if !local && !is_forge_repo(&repo) {
            return Err(ValidationError::new(
                "repo",
                "must be 'owner/name' or a local path starting with '/' or './'",
            ));
        }
        if self.issue_number.is_some_and(|n| n < 1) {
            return Err(ValidationError::new("issue_number", "must be 1 or more"));
        }
        let title = self.title.map(|t| t.trim().to_owned()).unwrap_or_default();
        // PostgreSQL text cannot hold NUL; refuse it on both backends alike.
        if title.contains('\0') {
            return Err(ValidationError::new("title", "must not contain NUL"));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(ValidationError::new(
                "title",
                format!("must be at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        if title.is_empty() && (self.issue_number.is_none() || local) {
            return Err(ValidationError::new(
                "title",
                if local {
                    "is required for a local repository"
                } else {
                    "is required when issue_number is absent"
                },
            ));
        }
        let body = self.body.unwrap_or_default();
        if body.contains('\0') {
            return Err(ValidationError::new("body", "must not contain NUL"));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(ValidationError::new(
                "body",
                format!("must be at most {MAX_BODY_BYTES} bytes"),
            ));
        }
        let priority = self.priority.unwrap_or(DEFAULT_PRIORITY);
        if !PRIORITY_RANGE.contains(&priority) {
            return Err(ValidationError::new("priority", "must be between 0 and 10"));
        }
        if self
            .budget_usd
            .is_some_and(|b| !b.is_finite() || b <= 0.0 || b > 100_000.0)
        {
            return Err(ValidationError::new(
                "budget_usd",
                "must be a positive number of at most 100000",
            ));
        }
        Ok(NewRun {
            repo,
            issue_number: self.issue_number,
            title,
            body,
            priority,
            autonomy: self.autonomy.unwrap_or_default(),
            budget_usd: self.budget_usd,
        })
    }
}

/// A stored run, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: RunId,
    pub repo: String,
    pub issue_number: Option<i64>,
    pub title: String,
    pub body: String,
    pub status: RunStatus,
    pub priority: i32,
    pub autonomy: Autonomy,
    /// The step being executed or last completed (`PM`, `DEVELOPER`, …).
    pub current_step: Option<String>,
    /// Review → Developer loop-backs so far.
    pub review_loops: i32,
    /// Tester → Developer fix loops so far.
    pub fix_loops: i32,
    pub budget_usd: Option<f64>,
    pub cost_usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// The worker holding the lease while RUNNING.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    /// Sequence number of the run's latest event.
    pub last_event_seq: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(repo: &str) -> RunRequest {
        RunRequest {
            repo: repo.into(),
            title: Some("Fix it".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let r = req("acme/widgets").validate();
        let r = r.as_ref().map(|n| (n.priority, n.autonomy));
        assert_eq!(r, Ok((5, Autonomy::Autonomous)));
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |r: RunRequest| r.validate().err().map(|e| e.field);
        assert_eq!(field(req("no-slash")), Some("repo"));
        assert_eq!(field(req("a/b/c")), Some("repo"));
        assert_eq!(
            field(RunRequest {
                priority: Some(11),
                ..req("a/b")
            }),
            Some("priority")
        );
        assert_eq!(
            field(RunRequest {
                issue_number: Some(0),
                ..req("a/b")
            }),
            Some("issue_number")
        );
        assert_eq!(
            field(RunRequest {
                budget_usd: Some(f64::NAN),
                ..req("a/b")
            }),
            Some("budget_usd")
        );
        assert_eq!(
            field(RunRequest {
                title: None,
                ..req("a/b")
            }),
            Some("title")
        );
        assert_eq!(
            field(RunRequest {
                title: None,
                issue_number: Some(3),
                ..req("./repo")
            }),
            Some("title")
        );
        assert_eq!(
            field(RunRequest {
                title: None,
                issue_number: Some(3),
                ..req("a/b")
            }),
            None
        );
        assert_eq!(field(req("/srv/repo")), None);
    }
}
