//! What each step of a bolt does: one module per step, each a function from the run's stored
//! state to a [`StepOutput`] — an [`Outcome`] for the pipeline's state machine
//! ([`atlasia_core::pipeline::next`]) plus the artifacts and events to store with it. Steps
//! never route: the driver ([`crate::bolt`]) asks `next` where the bolt goes and writes the
//! step's end in one transaction.

pub mod agent;
mod develop;
mod judge;
mod plan;
mod review;
mod test;
mod worktree;
mod write;

pub use test::{evidence, test_status};
pub use worktree::{on_github, workspace};

use crate::ctx::StepCtx;
use crate::error::EngineError;
use crate::forge::LocalForge;
use crate::forge::github::GithubForge;
use crate::policy::PathPolicy;
use crate::sandbox::Sandbox;
use atlasia_core::{EscalationReason, EventKind, Outcome, Step};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The reviewer personas and their contracts, in report order.
pub const PERSONAS: [(&str, &str); 4] = [
    ("security", "reviewer-security"),
    ("code_quality", "reviewer-code-quality"),
    ("sre", "reviewer-sre"),
    ("frontend_ux", "reviewer-frontend-ux"),
];

/// Judge voters per decision.
pub const VOTERS: usize = 3;

/// Bounds of a bolt.
#[derive(Debug, Clone)]
pub struct BoltLimits {
    /// Loop-backs allowed from REVIEW to DEVELOPER before escalating.
    pub review_loops: u32,
    /// Loop-backs allowed from TESTER to DEVELOPER (the fix loop).
    pub fix_loops: u32,
    /// Per verify command.
    pub verify_timeout: Duration,
    /// Output tail kept per command.
    pub output_cap: usize,
    /// Tokens (in + out) the developer may spend per iteration.
    pub developer_max_tokens: u64,
    /// How long a step retries LLM calls failing for a passing reason (429s, outages).
    pub llm_patience: Duration,
    /// Output bounds per agent (`[agents.<name>] max_tokens`), over the contracts' own.
    pub output_tokens: std::collections::BTreeMap<String, u32>,
}

impl Default for BoltLimits {
    fn default() -> Self {
        Self {
            review_loops: 2,
            fix_loops: 3,
            verify_timeout: Duration::from_secs(600),
            output_cap: 16 * 1024,
            developer_max_tokens: 400_000,
            llm_patience: crate::ctx::LLM_PATIENCE,
            output_tokens: std::collections::BTreeMap::new(),
        }
    }
}

impl BoltLimits {
    /// The loop-back bounds the state machine applies.
    pub fn bounds(&self) -> atlasia_core::Bounds {
        atlasia_core::Bounds {
            review: self.review_loops,
            fix: self.fix_loops,
        }
    }
}

/// What the steps share: the forges, the write policy and the limits.
pub struct Env {
    pub forge: Arc<LocalForge>,
    /// Set when GitHub is configured: runs on `owner/name` go there.
    pub github: Option<Arc<GithubForge>>,
    pub policy: PathPolicy,
    pub limits: BoltLimits,
    /// Shared build caches (`CARGO_TARGET_DIR`) for verify commands.
    pub cache_dir: PathBuf,
    /// Where every command runs.
    pub sandbox: Sandbox,
    /// The LLM is the built-in simulator: issue bodies keep their `atlasia-sim` scripts (any
    /// other model never sees them).
    pub simulator: bool,
}

/// What a step reports: the outcome that routes the bolt, and what is stored with it.
#[derive(Debug)]
pub struct StepOutput {
    pub outcome: Outcome,
    /// Stored in order, before any escalation the driver adds.
    pub artifacts: Vec<(String, Value)>,
    pub events: Vec<(EventKind, Value)>,
    /// Why, in a sentence for humans: the blocker of an escalation, the reason of a loop-back.
    pub note: String,
}

impl StepOutput {
    /// `outcome` with one artifact.
    fn with(outcome: Outcome, kind: &str, payload: Value) -> Self {
        Self {
            outcome,
            artifacts: vec![(kind.to_owned(), payload)],
            events: Vec::new(),
            note: String::new(),
        }
    }

    /// A stop for a human, for `reason`, said by `note`; `artifacts` go first.
    fn blocked(
        reason: EscalationReason,
        note: impl Into<String>,
        artifacts: Vec<(String, Value)>,
    ) -> Self {
        Self {
            outcome: Outcome::Blocked(reason),
            artifacts,
            events: Vec::new(),
            note: note.into(),
        }
    }
}

/// Runs `step` for the run in `ctx`.
pub async fn execute(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    match ctx.step {
        Step::Pm | Step::Qualifier | Step::Architect => plan::run(ctx, env).await,
        Step::Developer => develop::run(ctx, env).await,
        Step::Review => review::run(ctx, env).await,
        Step::Tester => test::run(ctx, env).await,
        Step::Judge => judge::run(ctx, env).await,
        Step::Writer => write::run(ctx, env).await,
    }
}

/// The one agent contract of the current step (every step but REVIEW has exactly one).
fn the_agent<'a>(ctx: &StepCtx<'a>) -> Result<&'a crate::contracts::AgentContract, EngineError> {
    match ctx.contracts.agents_for(ctx.step).as_slice() {
        [one] => Ok(one),
        found => Err(EngineError::Step(format!(
            "step {} needs exactly one agent contract (ai/agents/*.yaml with step: {}); found {}",
            ctx.step,
            ctx.step,
            found.len()
        ))),
    }
}

/// The contract named `name`.
fn contract<'a>(
    ctx: &StepCtx<'a>,
    name: &str,
) -> Result<&'a crate::contracts::AgentContract, EngineError> {
    ctx.contracts.agent(name).ok_or_else(|| {
        EngineError::Step(format!("no agent contract '{name}' for step {}", ctx.step))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::Contracts;

    #[test]
    fn every_step_has_its_contracts_with_a_schema() {
        let c = Contracts::embedded().unwrap_or_else(|e| panic!("{e}"));
        for step in Step::ALL {
            let agents = c.agents_for(step);
            let expected = if step == Step::Review {
                PERSONAS.len()
            } else {
                1
            };
            assert_eq!(agents.len(), expected, "{step}");
            for a in agents {
                assert!(
                    c.schema(a.output.as_deref().unwrap_or("")).is_some(),
                    "{}",
                    a.name
                );
            }
        }
        for (_, agent) in PERSONAS {
            assert_eq!(
                c.agent(agent).map(|a| a.step),
                Some(Step::Review),
                "{agent}"
            );
        }
    }
}
