//! The GitHub forge: the bolt's repository is `owner/name` on GitHub (or a GitHub Enterprise /
//! test server). A clone per repository lives under `<data_dir>/github/<owner>/<name>`, fetched
//! before each bolt prepares its worktree; the bolt then works exactly as on the local forge
//! (its own worktree on `ai/issue-<n>`), pushes its branch after each commit, and the pull
//! request, check runs and the progress comment go through the REST client.
//!
//! Credentials: the installation token (or PAT) reaches git only through `GIT_CONFIG_*`
//! environment variables of the one git process that needs it — never a remote URL, a file or
//! an argument — and git's error output is scrubbed of it before it is shown anywhere.

use super::local::{LocalForge, Workspace};
use atlasia_github::{
    CheckOutcome, CheckWait, GitAuth, GithubClient, GithubError, NewPullRequest, PrAction,
    PullRequest, RepoName,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What talking to GitHub can fail with: its REST API (typed, with its own retry verdict) or
/// git against it (the scrubbed stderr of clone, fetch or push).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Api(#[from] GithubError),
    #[error("{0}")]
    Git(String),
}

/// What git prints when the network or the server failed, not the request: the same push
/// may work in a moment. Anything else (refused credentials, a rejected non-fast-forward, a
/// missing repository) would fail the same way again.
const PASSING_GIT_FAULTS: [&str; 10] = [
    "could not resolve host",
    "connection refused",
    "connection timed out",
    "operation timed out",
    "connection reset",
    "early eof",
    "rpc failed",
    "the remote end hung up unexpectedly",
    "502",
    "503",
];

impl RemoteError {
    /// True when the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api(e) => e.is_retryable(),
            Self::Git(stderr) => {
                let s = stderr.to_lowercase();
                !s.contains("authentication failed")
                    && PASSING_GIT_FAULTS.iter().any(|f| s.contains(f))
            }
        }
    }
}

/// The marker that identifies a run's progress comment on its issue.
pub fn comment_marker(run_id: &str) -> String {
    format!("<!-- atlasia:run:{run_id} -->")
}

/// GitHub as a forge.
pub struct GithubForge {
    client: GithubClient,
    checks: CheckWait,
    clones: PathBuf,
    /// One clone/fetch at a time per process: concurrent bolts on one repository share it.
    lock: tokio::sync::Mutex<()>,
    /// Progress comment ids by run id (a resumed run in another process finds its comment by
    /// the marker instead).
    comments: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl GithubForge {
    /// A forge keeping its clones under `data_dir/github`.
    pub fn new(client: GithubClient, checks: CheckWait, data_dir: &Path) -> Self {
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Self {
            client,
            checks,
            clones: data_dir.join("github"),
            lock: tokio::sync::Mutex::new(()),
            comments: std::sync::Mutex::default(),
        }
    }

    /// The REST client.
    pub fn client(&self) -> &GithubClient {
        &self.client
    }

    /// `owner/name` when `repo` names a GitHub repository rather than a local path.
    pub fn repo_name(repo: &str) -> Option<RepoName> {
        if repo.starts_with('/') || repo.starts_with('.') {
            return None;
        }
        RepoName::parse(repo)
    }

    /// Clones or fetches `repo`, then prepares the bolt's worktree on `branch` from the default
    /// branch — or from the remote `branch` when a previous bolt already pushed it, so a re-run
    /// continues that branch (and its pull request) instead of failing on "already exists".
    pub async fn prepare(
        &self,
        local: &std::sync::Arc<LocalForge>,
        repo: &RepoName,
        run_id: &str,
        branch: &str,
    ) -> Result<Workspace, RemoteError> {
        if let Some(ws) = local.existing(run_id).filter(|ws| ws.branch == branch) {
            return Ok(ws);
        }
        let info = self.client.repository(repo).await?;
        let auth = self.client.clone_url_and_auth(repo).await?;
        let _guard = self.lock.lock().await;
        let dir = self.clones.join(&repo.owner).join(&repo.name);
        let default = info.default_branch.clone();
        let (branch_owned, run_owned) = (branch.to_owned(), run_id.to_owned());
        let local = local.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _in_run = span.enter();
            sync_clone(&dir, &auth, &default, &branch_owned).map_err(RemoteError::Git)?;
            local
                .prepare_clone(&dir, &run_owned, &branch_owned)
                .map_err(|e| RemoteError::Git(e.to_string()))
        })
        .await
        .map_err(|e| RemoteError::Git(format!("preparing {repo}: {e}")))?
    }

    /// Pushes the worktree's HEAD to `branch` on GitHub (fast-forward only: the bot never
    /// rewrites a branch someone else may have pushed to).
    pub async fn push(&self, repo: &RepoName, ws: &Workspace) -> Result<(), RemoteError> {
        let auth = self.client.clone_url_and_auth(repo).await?;
        let (path, branch) = (ws.path.clone(), ws.branch.clone());
        tokio::task::spawn_blocking(move || {
            let refspec = format!("HEAD:refs/heads/{branch}");
            git_auth(&path, &auth, &["push", "--quiet", "origin", &refspec]).map(|_| ())
        })
        .await
        .map_err(|e| RemoteError::Git(format!("pushing: {e}")))?
        .map_err(RemoteError::Git)
    }

    /// Opens the pull request or updates the open one for the same head.
    pub async fn pull_request(
        &self,
        repo: &RepoName,
        new: &NewPullRequest,
    ) -> Result<(PullRequest, PrAction), GithubError> {
        self.client.create_or_update_pull_request(repo, new).await
    }

    /// Waits for the check runs of `sha` (bounded by the settings).
    pub async fn checks(&self, repo: &RepoName, sha: &str) -> Result<CheckOutcome, GithubError> {
        self.client.wait_for_checks(repo, sha, &self.checks).await
    }

    /// Creates or edits the run's progress comment on `issue` (found by its marker): one
    /// comment per run, edited as the bolt moves.
    pub async fn progress(
        &self,
        repo: &RepoName,
        issue: u64,
        run_id: &str,
        body: &str,
    ) -> Result<u64, String> {
        let marker = comment_marker(run_id);
        let text = format!("{marker}\n{body}");
        let known = self
            .comments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(run_id)
            .copied();
        let existing = match known {
            Some(id) => Some(id),
            None => {
                let issue_info = self
                    .client
                    .issue(repo, issue)
                    .await
                    .map_err(|e| e.to_string())?;
                self.client
                    .recent_comments(repo, issue, issue_info.comments, 100)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|c| c.body.contains(&marker))
                    .map(|c| c.id)
            }
        };
        let comment = match existing {
            Some(id) => self.client.update_comment(repo, id, &text).await,
            None => self.client.create_comment(repo, issue, &text).await,
        };
        let id = comment.map(|c| c.id).map_err(|e| e.to_string())?;
        self.comments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(run_id.to_owned(), id);
        Ok(id)
    }
}

/// Clones `auth.url` into `dir` or fetches it, checks the default branch out at the remote's
/// tip, and makes a local `branch` follow the remote one when it exists there.
fn sync_clone(dir: &Path, auth: &GitAuth, default: &str, branch: &str) -> Result<(), String> {
    if !dir.join(".git").exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("creating {parent:?}: {e}"))?;
        }
        let target = dir.to_string_lossy().into_owned();
        let parent = dir.parent().unwrap_or(dir);
        git_auth(
            parent,
            auth,
            &["clone", "--quiet", "--no-checkout", &auth.url, &target],
        )?;
    } else {
        git_auth(dir, auth, &["fetch", "--quiet", "--prune", "origin"])?;
    }
    let remote_default = format!("origin/{default}");
    git_plain(
        dir,
        &[
            "checkout",
            "--quiet",
            "--force",
            "-B",
            default,
            &remote_default,
        ],
    )?;
    let remote_branch = format!("refs/remotes/origin/{branch}");
    let local_branch = format!("refs/heads/{branch}");
    let remote_has = git_plain(dir, &["rev-parse", "--verify", "--quiet", &remote_branch]).is_ok();
    let local_has = git_plain(dir, &["rev-parse", "--verify", "--quiet", &local_branch]).is_ok();
    if remote_has && !local_has {
        git_plain(dir, &["branch", "--quiet", branch, &remote_branch])?;
    } else if remote_has {
        // Follow what was pushed since (by an earlier bolt or a human); refused while another
        // worktree has the branch checked out, which then keeps its own state.
        let _ = git_plain(
            dir,
            &["branch", "--quiet", "--force", branch, &remote_branch],
        );
    }
    Ok(())
}

/// `git` in `dir` with the bot identity, no prompts, and no credentials.
fn git_plain(dir: &Path, args: &[&str]) -> Result<String, String> {
    run_git(dir, args, &[])
}

/// `git` in `dir` with `auth`'s header in its environment.
fn git_auth(dir: &Path, auth: &GitAuth, args: &[&str]) -> Result<String, String> {
    let env = auth.expose_env();
    let secret = auth.expose_header().to_owned();
    run_git(dir, args, &env).map_err(|e| e.replace(&secret, "[REDACTED]"))
}

fn run_git(dir: &Path, args: &[&str], env: &[(&'static str, String)]) -> Result<String, String> {
    // Worktrees may be owned by the sandbox's uid (see `LocalForge`'s git): trust this one.
    let safe = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let out = Command::new("git")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("safe.directory={}", safe.display()))
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_name_is_a_github_repository() {
        assert!(GithubForge::repo_name("acme/widgets").is_some());
        assert!(GithubForge::repo_name("/srv/repos/widgets").is_none());
        assert!(GithubForge::repo_name("./widgets").is_none());
        assert!(GithubForge::repo_name("widgets").is_none());
    }
}
