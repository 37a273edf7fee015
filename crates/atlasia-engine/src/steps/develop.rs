//! DEVELOPER: the tool loop on the bolt's worktree ([`crate::developer`]), then the outcome
//! invariants the model cannot talk its way past — no change outside the Writer's files is no
//! change (asked once more, then `no_change`), and the whole change passes the path policy —
//! then one commit per iteration, pushed when the run is on GitHub.

use super::agent::inputs;
use super::worktree::{
    blocking, build_env, build_writable, context, push, repo_network, reports, workspace,
};
use super::{Env, StepOutput, the_agent};
use crate::ctx::StepCtx;
use crate::developer::{self, DeveloperLimits, DeveloperOutcome};
use crate::error::EngineError;
use crate::forge::Workspace;
use crate::tools::{RunLimits, Workdir};
use atlasia_core::{EscalationReason, EventKind, Outcome};
use serde_json::{Value, json};

/// How many times an iteration that changed nothing is asked again before `no_change`.
const NO_CHANGE_REASKS: usize = 1;

/// What the developer is told when its iteration changed nothing.
const NO_CHANGE_NOTE: &str = "Your previous attempt at this iteration changed no file outside \
    CHANGELOG.md and README.md (the Writer's files): nothing was changed. Make the change the \
    issue asks for with the edit tools, then finish; if it cannot be done, say why in the report.";

/// The trailer that marks a DEVELOPER commit of iteration `n`.
fn step_marker(n: i64) -> String {
    format!("Atlasia-Step: DEVELOPER/{n}")
}

/// A conventional-commit type from the title's words.
fn commit_type(title: &str) -> &'static str {
    let t = title.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if has(&["fix", "bug", "error", "crash", "wrong"]) {
        "fix"
    } else if has(&["doc", "readme"]) {
        "docs"
    } else if has(&["test"]) {
        "test"
    } else if has(&["refactor", "clean"]) {
        "refactor"
    } else if has(&["perf", "speed", "faster", "slow"]) {
        "perf"
    } else {
        "feat"
    }
}

pub(super) async fn run(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    let contract = the_agent(ctx)?;
    let ws = workspace(ctx, env).await?;
    let n = reports(ctx).await? + 1;
    // Start from the branch as the last completed step left it: drop uncommitted work of a
    // crashed attempt, and its commit when the crash came after committing but before the step
    // was recorded (the journal replays the model's answers, so the work is redone for free).
    let (forge, w, marker) = (env.forge.clone(), ws.clone(), step_marker(n));
    blocking("resetting the worktree", move || {
        forge.discard_changes(&w)?;
        if forge.head_message(&w)?.contains(&marker) {
            forge.drop_head_commit(&w)?;
        }
        Ok(())
    })
    .await?;
    let mut c = context(env, Some(&ws), contract, n).await;
    let wd = Workdir {
        root: ws.path.clone(),
        policy: env.policy.clone(),
        run: RunLimits {
            env_set: build_env(env),
            sandbox: env.sandbox.clone(),
            writable: build_writable(env),
            network: repo_network(env, &ws).await,
            ..RunLimits::default()
        },
    };
    let limits = DeveloperLimits {
        max_turns: contract.max_turns,
        max_tokens: env.limits.developer_max_tokens,
    };
    // No change, no DONE: an iteration that changes nothing outside the Writer's files is asked
    // once more, told so; a second empty iteration escalates `no_change`.
    let mut report = Value::Null;
    for attempt in 0..=NO_CHANGE_REASKS {
        if attempt > 0 {
            c.extra.insert("no_change".into(), json!(NO_CHANGE_NOTE));
            ctx.emit(
                EventKind::ToolCalled,
                json!({"step": ctx.step, "tool": "no_change_reask", "target": format!("iteration {n}"),
                       "ok": false, "detail": NO_CHANGE_NOTE}),
            )
            .await;
        }
        let user = inputs(ctx.store, ctx.run, contract, &c).await?;
        report = match developer::develop(ctx, contract, user, &wd, limits).await {
            DeveloperOutcome::Report(v) => v,
            DeveloperOutcome::Escalate { reason } => {
                return Ok(StepOutput::blocked(
                    EscalationReason::Developer,
                    reason,
                    Vec::new(),
                ));
            }
            DeveloperOutcome::Failed(e) => return Err(EngineError::Step(e)),
            DeveloperOutcome::Invalid(e) => return Err(EngineError::Invalid(e)),
            DeveloperOutcome::Cancelled => return Err(EngineError::Cancelled),
        };
        let (forge, w) = (env.forge.clone(), ws.clone());
        let changed = blocking("listing the changes", move || forge.changed_paths(&w)).await?;
        if changed.iter().any(|p| !crate::docs::writer_owned(p)) {
            break;
        }
        if attempt == NO_CHANGE_REASKS {
            let said = report
                .get("summary")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let blocker = format!(
                "the developer changed nothing outside the Writer's files ({}) in iteration {n}, \
                 also after being asked again; its report says: {said}",
                crate::docs::WRITER_FILES.join(", ")
            );
            return Ok(StepOutput::blocked(
                EscalationReason::NoChange,
                blocker,
                vec![("implementation_report".into(), report)],
            ));
        }
    }
    // The tools check every write, but an allowed command (a build, a script) can write
    // anywhere in the tree: the whole change passes the policy before it is committed.
    if let Some(refused) = policy_violation(env, &ws).await? {
        return Ok(StepOutput::blocked(
            EscalationReason::Policy,
            refused,
            Vec::new(),
        ));
    }
    let message = format!(
        "{}: {} (iteration {n})\n\n{}\n\nAtlasia-Run: {}\n{}",
        commit_type(&ctx.run.title),
        ctx.run.title,
        report
            .get("summary")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        ctx.run.id,
        step_marker(n)
    );
    let (forge, w) = (env.forge.clone(), ws.clone());
    let commit = blocking("committing", move || forge.commit(&w, &message)).await?;
    let mut out = StepOutput::with(Outcome::Committed, "implementation_report", report);
    if let Some(sha) = commit {
        out.events.push((
            EventKind::Committed,
            json!({"step": ctx.step, "commit": sha, "branch": ws.branch, "iteration": n}),
        ));
    }
    push(ctx, env, &ws).await?;
    Ok(out)
}

/// The first changed path the policy refuses, with the reason.
async fn policy_violation(env: &Env, ws: &Workspace) -> Result<Option<String>, EngineError> {
    let (forge, w) = (env.forge.clone(), ws.clone());
    let paths = blocking("listing the changes", move || forge.changed_paths(&w)).await?;
    for path in paths {
        let content = tokio::fs::read(ws.path.join(&path))
            .await
            .unwrap_or_default();
        if let Err(e) = env.policy.check_write(&ws.path, &path, &content) {
            return Ok(Some(format!("the change to {path} is refused: {e}")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_types_follow_the_title() {
        assert_eq!(commit_type("Fix overflow in add"), "fix");
        assert_eq!(commit_type("Add a multiply function"), "feat");
        assert_eq!(commit_type("Document the API in the README"), "docs");
    }
}
