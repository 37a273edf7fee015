//! Waiting for a commit's check runs: poll with backoff and jitter until every run completed,
//! up to a total wait. A repository without CI answers `NoChecks` once a short grace period
//! shows that nothing gets queued; failures come with the tail of their job logs.

use std::time::Duration;

use atlasia_resilience::RetryPolicy;
use serde::Serialize;
use tokio::time::Instant;

use crate::api::{CheckRun, RepoName};
use crate::{GithubClient, GithubError};

/// How long and how often to look.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckWait {
    /// The longest wait for all runs to complete.
    pub total: Duration,
    /// No check run by then means the repository has none.
    pub grace: Duration,
    /// The first poll interval's ceiling; doubles up to `poll_max`.
    pub poll: Duration,
    pub poll_max: Duration,
    /// How much of each failed job's log to keep (the end).
    pub log_tail_bytes: usize,
    /// Logs are fetched for at most this many failed runs.
    pub max_logs: usize,
}

impl Default for CheckWait {
    fn default() -> Self {
        Self {
            total: Duration::from_secs(30 * 60),
            grace: Duration::from_secs(60),
            poll: Duration::from_secs(10),
            poll_max: Duration::from_secs(60),
            log_tail_bytes: 16 * 1024,
            max_logs: 5,
        }
    }
}

/// A failed run and the end of its log, when GitHub has one (Actions jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedCheck {
    pub run: CheckRun,
    pub log_tail: Option<String>,
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// No check run appeared within the grace period.
    NoChecks,
    /// Every run completed with success, neutral or skipped.
    AllPassed { runs: Vec<CheckRun> },
    /// At least one run completed otherwise.
    Failed { failed: Vec<FailedCheck> },
    /// Runs were still pending at the deadline.
    TimedOut { pending: Vec<CheckRun> },
}

impl GithubClient {
    /// Polls the check runs of `git_ref` until they settle or `wait.total` passes. Transient
    /// errors (after the client's own retries) only cost a poll; others end the wait.
    pub async fn wait_for_checks(
        &self,
        repo: &RepoName,
        git_ref: &str,
        wait: &CheckWait,
    ) -> Result<CheckOutcome, GithubError> {
        let started = Instant::now();
        let deadline = started + wait.total;
        let policy = RetryPolicy {
            attempts: u32::MAX,
            base: wait.poll,
            cap: wait.poll_max.max(wait.poll),
        };
        let mut polls = 0u32;
        loop {
            let pending = match self.check_runs(repo, git_ref).await {
                Ok(runs) if runs.is_empty() => {
                    if started.elapsed() >= wait.grace {
                        return Ok(CheckOutcome::NoChecks);
                    }
                    Vec::new()
                }
                Ok(runs) if runs.iter().all(CheckRun::is_completed) => {
                    return Ok(self.settle(repo, runs, wait).await);
                }
                Ok(runs) => runs.into_iter().filter(|r| !r.is_completed()).collect(),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "polling check runs failed; polling again");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(CheckOutcome::TimedOut { pending });
            }
            // Full jitter, but never a busy loop: at least half the base interval.
            let delay = policy.backoff(polls).max(wait.poll / 2);
            polls = polls.saturating_add(1);
            let mut until = now + delay;
            // Look again right when the grace period ends, and never sleep past the deadline.
            let grace_end = started + wait.grace;
            if now < grace_end && until > grace_end {
                until = grace_end;
            }
            tokio::time::sleep_until(until.min(deadline)).await;
        }
    }

    async fn settle(&self, repo: &RepoName, runs: Vec<CheckRun>, wait: &CheckWait) -> CheckOutcome {
        if runs.iter().all(CheckRun::passed) {
            return CheckOutcome::AllPassed { runs };
        }
        let mut failed = Vec::new();
        for run in runs.into_iter().filter(|r| !r.passed()) {
            let log_tail = if failed.len() < wait.max_logs {
                match self.job_log_tail(repo, run.id, wait.log_tail_bytes).await {
                    Ok((tail, _)) => Some(tail),
                    Err(e) => {
                        tracing::info!(check = %run.name, error = %e, "no log for the failed check");
                        None
                    }
                }
            } else {
                None
            };
            failed.push(FailedCheck { run, log_tail });
        }
        CheckOutcome::Failed { failed }
    }
}
