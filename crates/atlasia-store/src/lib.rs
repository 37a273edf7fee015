//! Atlasia persistence. One [`Store`] over SQLite (the embedded default) or PostgreSQL, with the
//! same queries on both where the SQL allows it: runs and their event log, steps and versioned artifacts, the durable run queue
//! (claim with lease, heartbeat, reclaim), and API tokens. Migrations live per backend under
//! `migrations/` and run at start.

mod backup;
mod decisions;
mod diag;
mod error;
mod finished;
mod health;
mod llm_calls;
mod options;
mod pool;
mod progress;
mod pull_requests;
mod queue;
mod row;
mod runs;
mod steps;
mod tokens;
mod webhooks;

pub use backup::{BackupError, TableCounts};
pub use decisions::{Decision, HUMAN_STEP};
pub use diag::{Activity, Diagnostics, LockWait};
pub use error::{DbFault, StoreError};
pub use finished::{TERMINAL, describe_outcomes};
pub use llm_calls::{LlmCallRow, LlmTotals};
pub use options::{Backend, DbOptions};
pub use pool::{DEFAULT_MAX_ATTEMPTS, POOL_EXHAUSTED, PoolStats, Store};
pub use progress::StepEnd;
pub use pull_requests::{PullRequest, PullRequestDraft};
pub use queue::Claim;
pub use runs::{Cursor, Page, RunFilter};
pub use steps::Artifact;
pub use tokens::ApiToken;
pub use webhooks::Delivery;
