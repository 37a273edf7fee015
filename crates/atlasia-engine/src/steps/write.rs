//! WRITER: the changelog and README sections ([`crate::docs`]) committed on the branch, then
//! the pull request — local (recorded) or on GitHub — whose body states the evidence exactly:
//! the commands that ran and their results, the judges' score, the cost.

use super::agent::{inputs, run_agent};
use super::test::{evidence, test_status};
use super::worktree::{blocking, cap, context, on_github, push, reports, workspace};
use super::{Env, StepOutput, the_agent};
use crate::ctx::StepCtx;
use crate::error::EngineError;
use atlasia_core::{EventKind, Outcome};
use atlasia_github::NewPullRequest;
use atlasia_store::{PullRequestDraft, StoreError};
use serde_json::{Value, json};

/// The diff kept with the pull request record.
const PR_DIFF_MAX_BYTES: usize = 1024 * 1024;

pub(super) async fn run(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    let contract = the_agent(ctx)?;
    let ws = workspace(ctx, env).await?;
    let n = reports(ctx).await?;
    let c = context(env, Some(&ws), contract, n).await;
    let user = inputs(ctx.store, ctx.run, contract, &c).await?;
    let docs = run_agent(ctx, contract, user).await?;
    let mut events = Vec::new();
    for (file, result) in crate::docs::apply(&ws.path, &env.policy, &docs).await {
        events.push((
            EventKind::ToolCalled,
            json!({"step": ctx.step, "tool": "write_file", "target": file,
                   "ok": result.is_ok(), "detail": result.err()}),
        ));
    }
    let message = format!(
        "docs: changelog for {}\n\nAtlasia-Run: {}\nAtlasia-Step: WRITER",
        ctx.run.title, ctx.run.id
    );
    let (forge, w) = (env.forge.clone(), ws.clone());
    if let Some(sha) = blocking("committing docs", move || forge.commit(&w, &message)).await? {
        events.push((
            EventKind::Committed,
            json!({"step": ctx.step, "commit": sha, "branch": ws.branch}),
        ));
    }
    push(ctx, env, &ws).await?;
    let (forge, w) = (env.forge.clone(), ws.clone());
    let (stat, diff) = blocking("diffing the branch", move || {
        Ok((forge.diff_stat(&w)?, forge.unified_diff(&w)?))
    })
    .await?;
    // The issue's title, as the original did: reviewers find the PR from the issue.
    let title: String = format!("[AI] {}", ctx.run.title)
        .chars()
        .take(256)
        .collect();
    let body = pr_body(ctx, &docs, &stat).await?;
    let mut draft = PullRequestDraft {
        run_id: ctx.run.id.to_string(),
        forge: "local".into(),
        number: None,
        url: None,
        title: title.clone(),
        body,
        base: ws.base_branch_name.clone(),
        head: ws.branch.clone(),
        diff_stat: stat,
        state: "open".into(),
    };
    if let Some((gh, name)) = on_github(ctx, env) {
        let new = NewPullRequest {
            title: draft.title.clone(),
            body: draft.body.clone(),
            head: draft.head.clone(),
            base: draft.base.clone(),
        };
        let (pr, action) = gh
            .pull_request(&name, &new)
            .await
            .map_err(|e| EngineError::github(format!("pull request on {name}"), e))?;
        draft.forge = "github".into();
        draft.number = i64::try_from(pr.number).ok();
        draft.url = Some(pr.html_url);
        draft.state = pr.state;
        tracing::info!(run = %ctx.run.id, number = pr.number, ?action, "pull request");
    }
    ctx.store.upsert_pull_request(&draft).await?;
    events.push((
        EventKind::PullRequestUpdated,
        json!({"forge": draft.forge, "head": ws.branch, "base": ws.base_branch_name,
               "title": title, "number": draft.number, "url": draft.url,
               "repository": ws.repo.display().to_string()}),
    ));
    Ok(StepOutput {
        outcome: Outcome::Published,
        artifacts: vec![
            ("docs_update".into(), docs),
            (
                "pull_request_diff".into(),
                json!({"diff": cap(diff, PR_DIFF_MAX_BYTES), "base_commit": ws.base_commit}),
            ),
        ],
        events,
        note: String::new(),
    })
}

/// The writer's description plus the facts a reviewer wants: tests, judge score, cost, diff stat.
async fn pr_body(ctx: &StepCtx<'_>, docs: &Value, stat: &str) -> Result<String, StoreError> {
    let mut body = docs
        .get("pr_body")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(n) = ctx.run.issue_number
        && !body.contains(&format!("#{n}"))
    {
        body.push_str(&format!("\n\nCloses #{n}"));
    }
    let tests = ctx.store.latest_artifact(ctx.run.id, "test_report").await?;
    let judged = ctx
        .store
        .latest_artifact(ctx.run.id, "judge_decision")
        .await?;
    let totals = ctx.store.llm_totals(Some(&ctx.run.id.to_string())).await?;
    body.push_str("\n\n---\n");
    match tests {
        Some(t) => {
            let status = test_status(&t.payload);
            let label = if status == "not_run" {
                "untested"
            } else {
                status
            };
            body.push_str(&format!("**Tests:** {label}\n\n"));
            for line in evidence(&t.payload) {
                body.push_str(&format!("- {line}\n"));
            }
            body.push('\n');
        }
        None => body.push_str("**Tests:** untested (no test report)\n\n"),
    }
    if let Some(j) = judged {
        body.push_str(&format!(
            "**Judge:** {} (weighted {:.2})\n\n",
            j.payload["outcome"].as_str().unwrap_or("?"),
            j.payload["weighted"].as_f64().unwrap_or(0.0)
        ));
    }
    body.push_str(&format!(
        "**Cost:** ${:.4} over {} LLM call(s)\n\n```\n{}\n```\n\n_Opened by Atlasia, run {}._",
        totals.cost_usd,
        totals.calls,
        stat.trim(),
        ctx.run.id
    ));
    Ok(body)
}
