//! PM, QUALIFIER and ARCHITECT: one structured answer each (`ticket_plan`, `work_plan`,
//! `architecture_notes`). They work without the repository when it cannot be prepared — the
//! plan just knows less, and DEVELOPER fails with the reason.

use super::agent::{inputs, run_agent};
use super::worktree::{context, on_github, workspace};
use super::{Env, StepOutput, the_agent};
use crate::ctx::StepCtx;
use crate::error::EngineError;
use atlasia_core::{Outcome, Step};
use serde_json::{Map, Value, json};

/// Most issue comments the PM reads.
const ISSUE_COMMENTS: usize = 20;

/// Runs the current planning step's agent.
pub(super) async fn run(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    let contract = the_agent(ctx)?;
    let needs_repo = contract
        .inputs
        .iter()
        .any(|i| matches!(i.as_str(), "repo_tree" | "repo_docs" | "diff"));
    let ws = if needs_repo {
        workspace(ctx, env).await.ok()
    } else {
        None
    };
    let mut c = context(env, ws.as_ref(), contract, 1).await;
    if ctx.step == Step::FIRST {
        c.issue_extra = issue_from_forge(ctx, env).await;
    }
    let user = inputs(ctx.store, ctx.run, contract, &c).await?;
    let artifact = run_agent(ctx, contract, user).await?;
    Ok(StepOutput::with(
        Outcome::Planned,
        contract.output.as_deref().unwrap_or_default(),
        artifact,
    ))
}

/// The issue's labels and recent comments as GitHub has them now (bounded by the client), for
/// the PM: the run stores only the title and body. Best effort.
async fn issue_from_forge(ctx: &StepCtx<'_>, env: &Env) -> Map<String, Value> {
    let mut extra = Map::new();
    let (Some((gh, name)), Some(n)) = (
        on_github(ctx, env),
        ctx.run.issue_number.and_then(|n| u64::try_from(n).ok()),
    ) else {
        return extra;
    };
    match gh.client().issue_context(&name, n, ISSUE_COMMENTS).await {
        Ok(ic) => {
            extra.insert("labels".into(), json!(ic.issue.labels));
            extra.insert("url".into(), json!(ic.issue.html_url));
            extra.insert(
                "comments".into(),
                json!(
                    ic.comments
                        .iter()
                        // Our own progress comments are not the issue's discussion.
                        .filter(|c| !c.body.contains("<!-- atlasia:run:"))
                        .map(|c| json!({"author": c.author, "body": c.body, "at": c.created_at}))
                        .collect::<Vec<_>>()
                ),
            );
        }
        Err(e) => tracing::warn!(run = %ctx.run.id, error = %e, "issue context unavailable"),
    }
    extra
}
