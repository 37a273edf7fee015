//! The operations Atlasia needs, typed and bounded: repository, issue with recent comments,
//! comments, pull requests (create-or-update is idempotent), check runs and job logs, and the
//! credentials git needs to clone and push without writing a token to disk.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::GithubError;
use crate::client::{Call, GithubClient, read_tail};

/// An issue body is cut to this many bytes.
pub const MAX_ISSUE_BODY: usize = 64 * 1024;
/// An issue title is cut to this many bytes (GitHub allows 256 characters).
pub const MAX_TITLE: usize = 1024;
/// Each comment body is cut to this many bytes.
pub const MAX_COMMENT_BODY: usize = 8 * 1024;
/// At most this many recent comments are read.
pub const MAX_COMMENTS: usize = 100;
/// A pull request or comment body we send is cut to this many bytes (GitHub's limit is 65536
/// characters).
pub const MAX_OUTGOING_BODY: usize = 60 * 1024;

/// `owner/name`, checked against GitHub's allowed characters, so it is safe in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl RepoName {
    /// Parses `owner/name`; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let (owner, name) = s.trim().split_once('/')?;
        let name = name.strip_suffix(".git").unwrap_or(name);
        (ok(owner) && ok(name)).then(|| Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    fn path(&self) -> String {
        format!("/repos/{}/{}", self.owner, self.name)
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// The parts of a repository Atlasia reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub full_name: String,
    pub default_branch: String,
    #[serde(default)]
    pub private: bool,
}

/// An issue, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    /// At most [`MAX_ISSUE_BODY`] bytes.
    pub body: String,
    /// True when `body` was cut.
    pub body_truncated: bool,
    pub labels: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
    /// How many comments the issue has.
    pub comments: u64,
    pub html_url: String,
}

#[derive(Deserialize)]
struct IssueWire {
    number: u64,
    title: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    labels: Vec<LabelWire>,
    state: String,
    #[serde(default)]
    comments: u64,
    #[serde(default)]
    html_url: String,
}

/// Labels come as objects, or as plain names in some payloads.
#[derive(Deserialize)]
#[serde(untagged)]
enum LabelWire {
    Object { name: String },
    Name(String),
}

impl LabelWire {
    fn name(self) -> String {
        match self {
            Self::Object { name } | Self::Name(name) => name,
        }
    }
}

/// A comment, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comment {
    pub id: u64,
    /// The author's login (empty for a deleted user).
    pub author: String,
    /// At most [`MAX_COMMENT_BODY`] bytes.
    pub body: String,
    pub created_at: String,
}

#[derive(Deserialize)]
struct CommentWire {
    id: u64,
    #[serde(default)]
    user: Option<UserWire>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    created_at: String,
}

#[derive(Deserialize)]
struct UserWire {
    login: String,
}

impl From<CommentWire> for Comment {
    fn from(c: CommentWire) -> Self {
        Comment {
            id: c.id,
            author: c.user.map(|u| u.login).unwrap_or_default(),
            body: truncate(c.body.unwrap_or_default(), MAX_COMMENT_BODY).0,
            created_at: c.created_at,
        }
    }
}

/// An issue and its latest comments, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueContext {
    pub issue: Issue,
    pub comments: Vec<Comment>,
}

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    pub number: u64,
    pub html_url: String,
    pub title: String,
    pub body: String,
    /// The head branch name.
    pub head: String,
    /// The base branch name.
    pub base: String,
    pub state: String,
}

#[derive(Deserialize)]
struct PullWire {
    number: u64,
    #[serde(default)]
    html_url: String,
    title: String,
    #[serde(default)]
    body: Option<String>,
    head: RefWire,
    base: RefWire,
    state: String,
}

#[derive(Deserialize)]
struct RefWire {
    #[serde(rename = "ref")]
    name: String,
}

impl From<PullWire> for PullRequest {
    fn from(p: PullWire) -> Self {
        PullRequest {
            number: p.number,
            html_url: p.html_url,
            title: p.title,
            body: truncate(p.body.unwrap_or_default(), MAX_ISSUE_BODY).0,
            head: p.head.name,
            base: p.base.name,
            state: p.state,
        }
    }
}

/// What to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPullRequest {
    pub title: String,
    pub body: String,
    /// The branch with the changes, in the same repository.
    pub head: String,
    /// The branch to merge into.
    pub base: String,
}

/// What create-or-update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrAction {
    Created,
    Updated,
}

/// A check run on a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    /// For GitHub Actions, also the job id whose logs explain it.
    pub id: u64,
    pub name: String,
    /// `queued`, `in_progress`, `completed` (also `waiting`, `requested`, `pending`).
    pub status: String,
    /// When completed: `success`, `failure`, `neutral`, `cancelled`, `skipped`, `timed_out`,
    /// `action_required`, `stale`, `startup_failure`.
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

impl CheckRun {
    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }

    /// Completed with a conclusion that does not block a merge.
    pub fn passed(&self) -> bool {
        self.is_completed()
            && matches!(
                self.conclusion.as_deref(),
                Some("success" | "neutral" | "skipped")
            )
    }
}

#[derive(Deserialize)]
struct CheckRunsWire {
    #[serde(default)]
    check_runs: Vec<CheckRun>,
}

/// Where git clones from and the header that authenticates it. The URL carries no credential,
/// so nothing secret lands in `.git/config`; the header goes to git through the environment
/// (`GIT_CONFIG_COUNT`/`KEY`/`VALUE`), which other users cannot read (unlike argv).
#[derive(Clone)]
pub struct GitAuth {
    /// `https://github.com/owner/name.git`, without userinfo.
    pub url: String,
    /// `Authorization: Basic base64(x-access-token:TOKEN)`.
    header: SecretString,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAuth")
            .field("url", &self.url)
            .field("header", &"[REDACTED]")
            .finish()
    }
}

impl GitAuth {
    /// Builds the header for `token`.
    pub fn new(url: String, token: &SecretString) -> Self {
        let basic = STANDARD.encode(format!("x-access-token:{}", token.expose_secret()));
        Self {
            url,
            header: SecretString::from(format!("Authorization: Basic {basic}")),
        }
    }

    /// The `http.extraHeader` value (`Authorization: Basic …`). Handle with care.
    pub fn expose_header(&self) -> &str {
        self.header.expose_secret()
    }

    /// Environment variables that make one git invocation send the header, and never prompt.
    pub fn expose_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GIT_CONFIG_COUNT", "1".into()),
            ("GIT_CONFIG_KEY_0", "http.extraHeader".into()),
            ("GIT_CONFIG_VALUE_0", self.header.expose_secret().to_owned()),
            ("GIT_TERMINAL_PROMPT", "0".into()),
        ]
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary; says whether it cut.
pub fn truncate(mut s: String, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    (s, true)
}

/// Percent-encodes a git ref for a URL path, keeping `/` (GitHub accepts `heads/x` refs).
fn encode_ref(r: &str) -> String {
    let mut out = String::with_capacity(r.len());
    for b in r.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl GithubClient {
    /// `GET /repos/{owner}/{repo}`.
    pub async fn repository(&self, repo: &RepoName) -> Result<Repository, GithubError> {
        self.json(&Call::new(
            "GET /repos/{owner}/{repo}",
            Method::GET,
            repo.path(),
        ))
        .await
    }

    /// `GET /repos/{owner}/{repo}/issues/{number}`, body cut to [`MAX_ISSUE_BODY`].
    pub async fn issue(&self, repo: &RepoName, number: u64) -> Result<Issue, GithubError> {
        let w: IssueWire = self
            .json(&Call::new(
                "GET /repos/{owner}/{repo}/issues/{number}",
                Method::GET,
                format!("{}/issues/{number}", repo.path()),
            ))
            .await?;
        let (body, body_truncated) = truncate(w.body.unwrap_or_default(), MAX_ISSUE_BODY);
        Ok(Issue {
            number: w.number,
            title: truncate(w.title, MAX_TITLE).0,
            body,
            body_truncated,
            labels: w.labels.into_iter().map(LabelWire::name).collect(),
            state: w.state,
            comments: w.comments,
            html_url: w.html_url,
        })
    }

    /// The last `n` (≤ [`MAX_COMMENTS`]) of an issue's `total` comments, oldest first: reads
    /// the last page of 100 and, when needed, the one before it.
    pub async fn recent_comments(
        &self,
        repo: &RepoName,
        number: u64,
        total: u64,
        n: usize,
    ) -> Result<Vec<Comment>, GithubError> {
        let n = n.min(MAX_COMMENTS);
        if n == 0 || total == 0 {
            return Ok(Vec::new());
        }
        let last = total.div_ceil(100);
        let mut pages = vec![last];
        if last > 1 && ((total - 1) % 100 + 1) < n as u64 {
            pages.insert(0, last - 1);
        }
        let mut out: Vec<Comment> = Vec::new();
        for page in pages {
            let call = Call::new(
                "GET /repos/{owner}/{repo}/issues/{number}/comments",
                Method::GET,
                format!("{}/issues/{number}/comments", repo.path()),
            )
            .query("per_page", "100")
            .query("page", page.to_string());
            let wire: Vec<CommentWire> = self.json(&call).await?;
            out.extend(wire.into_iter().map(Comment::from));
        }
        let skip = out.len().saturating_sub(n);
        Ok(out.split_off(skip))
    }

    /// An issue and its last `n` comments.
    pub async fn issue_context(
        &self,
        repo: &RepoName,
        number: u64,
        n: usize,
    ) -> Result<IssueContext, GithubError> {
        let issue = self.issue(repo, number).await?;
        let comments = self
            .recent_comments(repo, number, issue.comments, n)
            .await?;
        Ok(IssueContext { issue, comments })
    }

    /// `POST /repos/{owner}/{repo}/issues/{number}/comments`.
    pub async fn create_comment(
        &self,
        repo: &RepoName,
        number: u64,
        body: &str,
    ) -> Result<Comment, GithubError> {
        let call = Call::new(
            "POST /repos/{owner}/{repo}/issues/{number}/comments",
            Method::POST,
            format!("{}/issues/{number}/comments", repo.path()),
        );
        self.send_comment(call, body).await
    }

    /// `PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}`.
    pub async fn update_comment(
        &self,
        repo: &RepoName,
        comment_id: u64,
        body: &str,
    ) -> Result<Comment, GithubError> {
        let call = Call::new(
            "PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}",
            Method::PATCH,
            format!("{}/issues/comments/{comment_id}", repo.path()),
        );
        self.send_comment(call, body).await
    }

    /// Sends a comment body (cut to GitHub's limit) with `call`; the comment as GitHub stored it.
    async fn send_comment(&self, call: Call, body: &str) -> Result<Comment, GithubError> {
        let body = truncate(body.to_owned(), MAX_OUTGOING_BODY).0;
        let w: CommentWire = self.json(&call.json(json!({ "body": body }))).await?;
        Ok(w.into())
    }

    /// The open pull request from `head` (a branch of this repository), if any.
    pub async fn find_open_pull_request(
        &self,
        repo: &RepoName,
        head: &str,
    ) -> Result<Option<PullRequest>, GithubError> {
        let call = Call::new(
            "GET /repos/{owner}/{repo}/pulls",
            Method::GET,
            format!("{}/pulls", repo.path()),
        )
        .query("head", format!("{}:{head}", repo.owner))
        .query("state", "open")
        .query("per_page", "10");
        let list: Vec<PullWire> = self.json(&call).await?;
        Ok(list
            .into_iter()
            .map(PullRequest::from)
            .find(|p| p.head == head))
    }

    /// `POST /repos/{owner}/{repo}/pulls`.
    pub async fn create_pull_request(
        &self,
        repo: &RepoName,
        new: &NewPullRequest,
    ) -> Result<PullRequest, GithubError> {
        let w: PullWire = self
            .json(
                &Call::new(
                    "POST /repos/{owner}/{repo}/pulls",
                    Method::POST,
                    format!("{}/pulls", repo.path()),
                )
                .json(json!({
                    "title": truncate(new.title.clone(), MAX_TITLE).0,
                    "body": truncate(new.body.clone(), MAX_OUTGOING_BODY).0,
                    "head": new.head,
                    "base": new.base,
                })),
            )
            .await?;
        Ok(w.into())
    }

    /// `PATCH /repos/{owner}/{repo}/pulls/{number}` (title and body).
    pub async fn update_pull_request(
        &self,
        repo: &RepoName,
        number: u64,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, GithubError> {
        let w: PullWire = self
            .json(
                &Call::new(
                    "PATCH /repos/{owner}/{repo}/pulls/{number}",
                    Method::PATCH,
                    format!("{}/pulls/{number}", repo.path()),
                )
                .json(json!({
                    "title": truncate(title.to_owned(), MAX_TITLE).0,
                    "body": truncate(body.to_owned(), MAX_OUTGOING_BODY).0,
                })),
            )
            .await?;
        Ok(w.into())
    }

    /// Opens the pull request, or updates the open one from the same head: safe to call again
    /// after a loop-back (the original answered 422 there). A 422 "A pull request already
    /// exists" from a race is turned into an update too.
    pub async fn create_or_update_pull_request(
        &self,
        repo: &RepoName,
        new: &NewPullRequest,
    ) -> Result<(PullRequest, PrAction), GithubError> {
        if let Some(pr) = self.find_open_pull_request(repo, &new.head).await? {
            let pr = self
                .update_pull_request(repo, pr.number, &new.title, &new.body)
                .await?;
            return Ok((pr, PrAction::Updated));
        }
        match self.create_pull_request(repo, new).await {
            Ok(pr) => Ok((pr, PrAction::Created)),
            Err(e) if e.is_pull_request_exists() => {
                let Some(pr) = self.find_open_pull_request(repo, &new.head).await? else {
                    return Err(e);
                };
                let pr = self
                    .update_pull_request(repo, pr.number, &new.title, &new.body)
                    .await?;
                Ok((pr, PrAction::Updated))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /repos/{owner}/{repo}/commits/{ref}/check-runs` (the first 100).
    pub async fn check_runs(
        &self,
        repo: &RepoName,
        git_ref: &str,
    ) -> Result<Vec<CheckRun>, GithubError> {
        let call = Call::new(
            "GET /repos/{owner}/{repo}/commits/{ref}/check-runs",
            Method::GET,
            format!("{}/commits/{}/check-runs", repo.path(), encode_ref(git_ref)),
        )
        .query("per_page", "100");
        let w: CheckRunsWire = self.json(&call).await?;
        Ok(w.check_runs)
    }

    /// The last `max_bytes` of a GitHub Actions job's log (`GET …/actions/jobs/{id}/logs`,
    /// which redirects to storage). Returns the tail and whether earlier output was cut.
    pub async fn job_log_tail(
        &self,
        repo: &RepoName,
        job_id: u64,
        max_bytes: usize,
    ) -> Result<(String, bool), GithubError> {
        let call = Call::new(
            "GET /repos/{owner}/{repo}/actions/jobs/{job_id}/logs",
            Method::GET,
            format!("{}/actions/jobs/{job_id}/logs", repo.path()),
        );
        let resp = self.execute(&call).await?;
        read_tail(resp, max_bytes, call.route).await
    }

    /// Where git reaches `repo` and the header that authenticates it (a fresh installation
    /// token or the PAT).
    pub async fn clone_url_and_auth(&self, repo: &RepoName) -> Result<GitAuth, GithubError> {
        let token = self.git_token().await?;
        let url = format!("{}/{}/{}.git", self.inner.git_base, repo.owner, repo.name);
        Ok(GitAuth::new(url, &token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        assert_eq!(
            RepoName::parse("acme/widgets.git").map(|r| r.to_string()),
            Some("acme/widgets".into())
        );
        assert_eq!(RepoName::parse("acme"), None);
        assert_eq!(RepoName::parse("acme/../x"), None);
        assert_eq!(RepoName::parse("a b/c"), None);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo".into(), 2), ("h".into(), true));
        assert_eq!(truncate("abc".into(), 3), ("abc".into(), false));
    }

    #[test]
    fn git_auth_never_prints_the_token() {
        let a = GitAuth::new(
            "https://github.com/a/b.git".into(),
            &SecretString::from("ghs_secret"),
        );
        assert!(!format!("{a:?}").contains("ghs_secret"));
        assert!(!a.url.contains('@'));
        let expected = format!(
            "Authorization: Basic {}",
            STANDARD.encode("x-access-token:ghs_secret")
        );
        assert_eq!(a.expose_header(), expected);
    }

    #[test]
    fn refs_are_escaped_but_keep_slashes() {
        assert_eq!(encode_ref("ai/issue-1"), "ai/issue-1");
        assert_eq!(encode_ref("a b#c"), "a%20b%23c");
    }
}
