//! A faithful local fake of the parts of GitHub Atlasia uses, for tests: the REST API (App
//! JWT → installation tokens, repositories, issues, comments (edits counted), pull requests,
//! check runs scripted per ref or following the heads pushed to a branch, job logs behind a
//! redirect) with GitHub's status codes, error bodies and rate-limit headers;
//! fault switches (secondary and primary rate limits, 5xx, failing check-run listings, early
//! token expiry); real git over smart HTTP through `git http-backend`; and a log of every
//! request with credentials reduced to their kind.

mod checks;
mod git;
mod rest;
mod state;

pub use state::{Recorded, SimCheck, SimComment, SimConfig, SimPull};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, patch, post};
use state::{BranchChecks, CheckData, Data, IssueData, RepoData, Shared};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// A running fake. Dropping it stops the server.
pub struct SimGithub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for SimGithub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The fake's routes over `shared`.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/app/installations/{id}/access_tokens",
            post(rest::access_tokens),
        )
        .route("/repos/{owner}/{repo}", get(rest::get_repo))
        .route(
            "/repos/{owner}/{repo}/issues/{number}",
            get(rest::get_issue),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{number}/comments",
            get(rest::list_comments).post(rest::create_comment),
        )
        .route(
            "/repos/{owner}/{repo}/issues/comments/{id}",
            patch(rest::update_comment),
        )
        .route(
            "/repos/{owner}/{repo}/pulls",
            get(rest::list_pulls).post(rest::create_pull),
        )
        .route(
            "/repos/{owner}/{repo}/pulls/{number}",
            patch(rest::update_pull),
        )
        .route("/repos/{owner}/{repo}/commits/{*rest}", get(rest::commits))
        .route(
            "/repos/{owner}/{repo}/actions/jobs/{id}/logs",
            get(rest::job_logs),
        )
        .route("/_sim/blobs/job-logs/{id}", get(rest::blob))
        .fallback(git::serve)
        .layer(from_fn_with_state(shared.clone(), rest::gate))
        .with_state(shared)
}

impl SimGithub {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Self> {
        Self::start_on(cfg, "127.0.0.1:0").await
    }

    /// Starts on `bind` (the `sim-github` command uses it).
    pub async fn start_on(cfg: SimConfig, bind: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.git_root)?;
        let shared = Arc::new(Shared {
            cfg,
            data: Mutex::new(Data::default()),
            started: SystemTime::now(),
        });
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = router(shared.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(Self { shared, addr, stop })
    }

    /// `http://127.0.0.1:PORT` — both the API base and the git base.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a repository with a bare git repository whose `default_branch` has one commit
    /// (a README); on failure returns what git said.
    pub fn add_repo(&self, full_name: &str, default_branch: &str) -> Result<(), String> {
        let bare = self.shared.cfg.git_root.join(format!("{full_name}.git"));
        if let Some(parent) = bare.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        run_git(
            None,
            &[
                "init",
                "--bare",
                "-q",
                "-b",
                default_branch,
                &path_str(&bare)?,
            ],
        )?;
        // A reflog even though the repository is bare: check runs follow a branch's heads.
        run_git(
            None,
            &[
                "--git-dir",
                &path_str(&bare)?,
                "config",
                "core.logAllRefUpdates",
                "always",
            ],
        )?;
        let seed = self
            .shared
            .cfg
            .git_root
            .join(format!(".seed-{}", rest::random_hex(6)));
        std::fs::create_dir_all(&seed).map_err(|e| e.to_string())?;
        std::fs::write(seed.join("README.md"), format!("# {full_name}\n"))
            .map_err(|e| e.to_string())?;
        run_git(Some(&seed), &["init", "-q", "-b", default_branch])?;
        run_git(Some(&seed), &["add", "README.md"])?;
        run_git(
            Some(&seed),
            &[
                "-c",
                "user.name=sim",
                "-c",
                "user.email=sim@example.invalid",
                "commit",
                "-q",
                "-m",
                "initial",
            ],
        )?;
        run_git(
            Some(&seed),
            &["push", "-q", &path_str(&bare)?, default_branch],
        )?;
        let _ = std::fs::remove_dir_all(&seed);
        self.shared.lock().repos.insert(
            full_name.to_owned(),
            RepoData {
                default_branch: default_branch.to_owned(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Adds (or replaces) an open issue.
    pub fn add_issue(&self, repo: &str, number: u64, title: &str, body: &str, labels: &[&str]) {
        if let Some(r) = self.shared.lock().repos.get_mut(repo) {
            r.issues.insert(
                number,
                IssueData {
                    title: title.into(),
                    body: body.into(),
                    labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                    state: "open".into(),
                },
            );
        }
    }

    /// Adds a comment by `user` to an issue; returns its id.
    pub fn add_comment(&self, repo: &str, issue: u64, user: &str, body: &str) -> u64 {
        let mut d = self.shared.lock();
        let id = d.next_id();
        let now = state::rfc3339(SystemTime::now());
        if let Some(r) = d.repos.get_mut(repo) {
            r.comments.push(SimComment {
                id,
                issue,
                user: user.into(),
                body: body.into(),
                created_at: now.clone(),
                updated_at: now,
                edits: 0,
            });
        }
        id
    }

    /// Scripts the check runs of `git_ref` (a sha or branch name, matched literally); returns
    /// their ids (which are also their job ids).
    pub fn set_checks(&self, repo: &str, git_ref: &str, checks: Vec<SimCheck>) -> Vec<u64> {
        let mut d = self.shared.lock();
        let mut ids = Vec::new();
        let mut data = Vec::new();
        let started_at = state::rfc3339(SystemTime::now());
        for check in checks {
            let id = d.next_id();
            d.job_logs.insert(id, check.log.clone());
            ids.push(id);
            data.push(CheckData {
                id,
                check,
                polls: 0,
                started_at: started_at.clone(),
            });
        }
        if let Some(r) = d.repos.get_mut(repo) {
            r.checks.insert(git_ref.to_owned(), data);
        }
        ids
    }

    /// Scripts check runs that follow pushes to `branch`: the k-th distinct head SHA the branch
    /// has (counting from its creation, pushes over HTTP or on disk alike) gets `lists[k]`, and
    /// every head after the last list gets the last one. Each commit gets its own check runs
    /// (fresh ids, which are also job ids with their logs) the first time its check runs are
    /// listed, and keeps them after the branch moves on. An empty `lists` means no checks.
    pub fn set_branch_checks(&self, repo: &str, branch: &str, lists: Vec<Vec<SimCheck>>) {
        if let Some(r) = self.shared.lock().repos.get_mut(repo) {
            let b = r
                .branch_checks
                .entry(branch.to_owned())
                .or_insert_with(|| BranchChecks {
                    lists: Vec::new(),
                    heads: Vec::new(),
                });
            b.lists = lists;
        }
    }

    /// The distinct head SHAs `branch` of `repo` has had, oldest first (read from the bare
    /// repository's reflog and current head; empty when the branch never existed).
    pub fn branch_heads(&self, repo: &str, branch: &str) -> Vec<String> {
        checks::branch_history(&self.git_dir(repo), branch)
    }

    /// The check runs listed so far for commit `sha` as `(id, name, polls)`.
    pub fn check_runs_of(&self, repo: &str, sha: &str) -> Vec<(u64, String, usize)> {
        self.shared
            .lock()
            .repos
            .get(repo)
            .and_then(|r| r.checks.get(sha))
            .map(|c| {
                c.iter()
                    .map(|c| (c.id, c.check.name.clone(), c.polls))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next `n` API requests answer 403 "secondary rate limit" with `retry-after: secs`.
    pub fn secondary_rate_limit(&self, n: u32, secs: u64) {
        let mut d = self.shared.lock();
        d.faults.secondary = n;
        d.faults.secondary_retry_after = secs;
    }

    /// The next `n` API requests answer 403 with `x-ratelimit-remaining: 0`, reset in `secs`.
    pub fn primary_rate_limit(&self, n: u32, secs: u64) {
        let mut d = self.shared.lock();
        d.faults.primary = n;
        d.faults.primary_reset_in = secs;
    }

    /// The next `n` API requests answer `status` (a 5xx).
    pub fn fail_requests(&self, n: u32, status: u16) {
        let mut d = self.shared.lock();
        d.faults.server_errors = n;
        d.faults.server_status = status;
    }

    /// The next `n` check-run listings answer 500.
    pub fn fail_check_runs(&self, n: u32) {
        self.shared.lock().faults.check_run_errors = n;
    }

    /// Every installation token issued so far stops working now (before its `expires_at`),
    /// as when GitHub revokes it: the next call with it gets 401.
    pub fn expire_tokens(&self) {
        for t in &mut self.shared.lock().tokens {
            t.revoked = true;
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Every installation token issued so far (to check they leak nowhere).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .lock()
            .tokens
            .iter()
            .map(|t| t.value.clone())
            .collect()
    }

    /// The pull requests of `repo`.
    pub fn pulls(&self, repo: &str) -> Vec<SimPull> {
        self.shared
            .lock()
            .repos
            .get(repo)
            .map(|r| r.pulls.clone())
            .unwrap_or_default()
    }

    /// The comments on an issue, oldest first.
    pub fn comments(&self, repo: &str, issue: u64) -> Vec<SimComment> {
        self.shared
            .lock()
            .repos
            .get(repo)
            .map(|r| {
                r.comments
                    .iter()
                    .filter(|c| c.issue == issue)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bare repository of `repo` on disk.
    pub fn git_dir(&self, repo: &str) -> std::path::PathBuf {
        self.shared.cfg.git_root.join(format!("{repo}.git"))
    }
}

fn path_str(p: &Path) -> Result<String, String> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()))
}

fn run_git(dir: Option<&Path>, args: &[&str]) -> Result<(), String> {
    let mut cmd = std::process::Command::new("git");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
