//! The GitHub side of Atlasia: a REST client (App installation tokens or a PAT; GitHub's
//! headers; rate limits honoured; 5xx retried with full-jitter backoff; a circuit breaker;
//! metrics), the operations a bolt needs (issues, comments, pull requests, check runs, job
//! logs, git credentials), a check-runs waiter, and webhook signature verification.

pub mod api;
pub mod auth;
pub mod checks;
pub mod client;
pub mod error;
pub mod metrics;
pub mod webhook;

pub use api::{
    CheckRun, Comment, GitAuth, Issue, IssueContext, NewPullRequest, PrAction, PullRequest,
    RepoName, Repository,
};
pub use auth::{AppKey, Credentials};
pub use checks::{CheckOutcome, CheckWait, FailedCheck};
pub use client::{GithubClient, GithubConfig};
pub use error::GithubError;
pub use webhook::{sign, verify_signature};
