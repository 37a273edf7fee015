//! REVIEW: four personas read the same diff in parallel; their findings are merged by the
//! verdict rule ([`crate::review`]). High or critical findings ask for another DEVELOPER
//! iteration — whether that loop-back happens is the state machine's call (its bound).

use super::agent::{inputs, run_agent};
use super::worktree::{context, reports, workspace};
use super::{Env, PERSONAS, StepOutput, contract};
use crate::ctx::StepCtx;
use crate::error::EngineError;
use crate::review::{self, PersonaReview};
use atlasia_core::Outcome;
use serde_json::json;

pub(super) async fn run(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    let ws = workspace(ctx, env).await?;
    let n = reports(ctx).await?;
    // The reviewers share one reading of the worktree (the same diff for all four).
    let shared = context(env, Some(&ws), contract(ctx, PERSONAS[0].1)?, n).await;
    let mut calls = Vec::new();
    for (persona, agent) in PERSONAS {
        let contract = contract(ctx, agent)?;
        let mut c = shared.clone();
        c.extra.insert("persona".into(), json!(persona));
        let user = inputs(ctx.store, ctx.run, contract, &c).await?;
        calls.push(run_agent(ctx, contract, user));
    }
    // The four personas run in parallel: the gateway's limiter orders them.
    let answers = futures::future::join_all(calls).await;
    let mut artifacts = Vec::new();
    let mut reviews = Vec::new();
    for ((persona, _), answer) in PERSONAS.iter().zip(answers) {
        let v = answer?;
        let r = serde_json::from_value::<PersonaReview>(v.clone())
            .map_err(|e| EngineError::Step(format!("{persona} review cannot be read: {e}")))?;
        reviews.push(r);
        artifacts.push(("persona_review".to_owned(), v));
    }
    let merged = review::merge(&reviews);
    let mut summary = serde_json::to_value(&merged).unwrap_or_default();
    if let Some(o) = summary.as_object_mut() {
        o.insert("iteration".into(), json!(n));
    }
    artifacts.push(("review".into(), summary));
    let (outcome, note) = if merged.needs_loop_back() {
        (
            Outcome::ChangesRequested,
            format!(
                "review verdict {} with {} finding(s)",
                merged.verdict.as_str(),
                merged.findings.len()
            ),
        )
    } else {
        (Outcome::Approved, String::new())
    };
    Ok(StepOutput {
        outcome,
        artifacts,
        events: Vec::new(),
        note,
    })
}
