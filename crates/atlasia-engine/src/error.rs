//! The one error type of a step. Every failure keeps its cause typed (a store error, a git
//! failure, a GitHub error, the gateway's verdict) so the driver can tell what a retry may fix
//! from what it cannot, and so a cancellation is never mistaken for a failure.

use crate::forge::ForgeError;
use crate::forge::github::RemoteError;
use atlasia_store::StoreError;

/// Why a step produced no outcome.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The lease was lost, or the run paused, cancelled or the process is stopping: nothing
    /// is written and whoever holds the run next resumes the step.
    #[error("cancelled")]
    Cancelled,
    /// The database refused or could not take a read or write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local git (the worktree, a commit, a diff) failed.
    #[error("{context}: {source}")]
    Git {
        context: String,
        #[source]
        source: ForgeError,
    },
    /// GitHub (the REST API or git against it) failed.
    #[error("{context}: {source}")]
    Github {
        context: String,
        #[source]
        source: RemoteError,
    },
    /// The LLM gateway gave up on a call (after waiting out passing failures); the message
    /// names the agent and every endpoint's cause.
    #[error("{0}")]
    Llm(String),
    /// The bolt's (or the day's) LLM budget is spent: a human decides whether to go on.
    #[error("{0}")]
    Budget(String),
    /// An agent's answers stayed invalid (or were cut by the output bound) after the re-asks;
    /// the message names the agent, the last validation errors and any truncation.
    #[error("{0}")]
    Invalid(String),
    /// The step cannot succeed for a reason of its own (a missing contract, a repository that
    /// cannot be prepared).
    #[error("{0}")]
    Step(String),
}

impl EngineError {
    /// A local git failure, said with what was being done.
    pub fn git(context: impl Into<String>, source: ForgeError) -> Self {
        Self::Git {
            context: context.into(),
            source,
        }
    }

    /// A GitHub failure, said with what was being done.
    pub fn github(context: impl Into<String>, source: impl Into<RemoteError>) -> Self {
        Self::Github {
            context: context.into(),
            source: source.into(),
        }
    }

    /// True when the same work may succeed later with no change on our side (a passing
    /// database or GitHub fault). Nothing else is retried: a refused credential, an invalid
    /// answer or a spent budget would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Github { source, .. } => source.is_retryable(),
            Self::Cancelled
            | Self::Git { .. }
            | Self::Llm(_)
            | Self::Budget(_)
            | Self::Invalid(_)
            | Self::Step(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlasia_github::GithubError;

    #[test]
    fn only_passing_faults_are_retryable() {
        let server = GithubError::Server {
            route: "POST /repos/{owner}/{repo}/pulls".into(),
            status: 502,
            message: "bad gateway".into(),
        };
        let auth = GithubError::Auth {
            route: "POST /repos/{owner}/{repo}/pulls".into(),
            status: 401,
            message: "Bad credentials".into(),
        };
        assert!(EngineError::github("opening the pull request", server).is_retryable());
        assert!(!EngineError::github("opening the pull request", auth).is_retryable());
        assert!(
            EngineError::github(
                "pushing",
                RemoteError::Git("fatal: unable to access: Could not resolve host".into())
            )
            .is_retryable()
        );
        assert!(
            !EngineError::github(
                "pushing",
                RemoteError::Git("fatal: Authentication failed for 'http://…'".into())
            )
            .is_retryable()
        );
        assert!(!EngineError::Llm("developer: LLM call failed".into()).is_retryable());
        assert!(!EngineError::Budget("spent".into()).is_retryable());
        assert!(!EngineError::Cancelled.is_retryable());
        assert!(
            EngineError::Store(StoreError::PoolTimeout(std::time::Duration::from_secs(1)))
                .is_retryable()
        );
    }
}
