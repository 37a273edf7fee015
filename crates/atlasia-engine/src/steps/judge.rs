//! JUDGE: the evidence rule first — failing, missing or `not_run` tests are a veto by rule,
//! and no voter is asked — then three voters score the change and [`crate::judge::aggregate`]
//! decides. A veto stops the bolt for a human.

use super::agent::{inputs, run_agent};
use super::worktree::{allows_untested, context, repo_config, reports, workspace};
use super::{Env, StepOutput, VOTERS, the_agent};
use crate::ctx::StepCtx;
use crate::error::EngineError;
use crate::judge::{self, JudgeVote, Outcome as Vote};
use atlasia_core::{EscalationReason, Outcome};
use serde_json::json;

pub(super) async fn run(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    let contract = the_agent(ctx)?;
    let ws = workspace(ctx, env).await.ok();
    let n = reports(ctx).await?;
    // The evidence rule comes before any vote: failing or missing tests are a veto by rule.
    let report = ctx.store.latest_artifact(ctx.run.id, "test_report").await?;
    let config = match &ws {
        Some(ws) => repo_config(env, ws).await,
        None => None,
    };
    let allow_untested = allows_untested(config.as_ref());
    if let Some(veto) = judge::evidence_veto(report.as_ref().map(|a| &a.payload), allow_untested) {
        let mut blocker = veto.blocker;
        if veto.code == EscalationReason::TestsFailed {
            blocker.push_str(&format!(
                "; the tester_to_developer loop-back bound ({}) is used up",
                env.limits.fix_loops
            ));
        }
        let record = json!({
            "outcome": "veto",
            "weighted": 0.0,
            "rule": veto.code.as_str(),
            "reason": blocker,
            "iteration": n,
            "votes": 0,
        });
        return Ok(StepOutput::blocked(
            veto.code,
            blocker,
            vec![("judge_decision".into(), record)],
        ));
    }
    let mut calls = Vec::new();
    let shared = context(env, ws.as_ref(), contract, n).await;
    for voter in 1..=VOTERS {
        let mut c = shared.clone();
        // The voter number makes the three requests distinct (and their journal entries too).
        c.extra.insert("voter".into(), json!(voter));
        let user = inputs(ctx.store, ctx.run, contract, &c).await?;
        calls.push(run_agent(ctx, contract, user));
    }
    let mut artifacts = Vec::new();
    let mut votes = Vec::new();
    for answer in futures::future::join_all(calls).await {
        let v = answer?;
        let vote = serde_json::from_value::<JudgeVote>(v.clone())
            .map_err(|e| EngineError::Step(format!("judge vote unreadable: {e}")))?;
        votes.push(vote);
        artifacts.push(("judge_verdict".to_owned(), v));
    }
    let decision = judge::aggregate(&votes);
    let mut record = serde_json::to_value(&decision).unwrap_or_default();
    if let Some(o) = record.as_object_mut() {
        o.insert("iteration".into(), json!(n));
        o.insert("votes".into(), json!(votes.len()));
    }
    artifacts.push(("judge_decision".into(), record));
    if decision.outcome == Vote::Veto {
        let blocker = format!(
            "the judges vetoed the change (weighted score {:.2})",
            decision.weighted
        );
        return Ok(StepOutput::blocked(
            EscalationReason::JudgeVeto,
            blocker,
            artifacts,
        ));
    }
    Ok(StepOutput {
        outcome: Outcome::Accepted,
        artifacts,
        events: Vec::new(),
        note: String::new(),
    })
}
