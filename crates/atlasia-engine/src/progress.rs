//! The bolt's progress as GitHub watchers see it: one comment on the issue, created when the
//! bolt starts and edited after every step (step, iteration, loop-backs, the pull request, an
//! escalation with its options), so nobody needs the dashboard to follow it. Best effort: a
//! GitHub problem is logged and never stops the bolt.

use crate::forge::github::GithubForge;
use atlasia_core::{Run, RunId, RunStatus};
use atlasia_store::Store;
use std::time::Duration;

/// The longest a progress update may hold the bolt up.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(15);

/// Updates the progress comment of run `id`, when it is on GitHub with an issue.
pub async fn report(store: &Store, gh: &GithubForge, id: RunId) {
    let Ok(run) = store.get_run(id).await else {
        return;
    };
    let (Some(repo), Some(issue)) = (
        GithubForge::repo_name(&run.repo),
        run.issue_number.and_then(|n| u64::try_from(n).ok()),
    ) else {
        return;
    };
    let body = match body(store, &run).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(run = %id, error = %e, "progress comment: cannot read the run");
            return;
        }
    };
    let run_id = id.to_string();
    let update = gh.progress(&repo, issue, &run_id, &body);
    match tokio::time::timeout(UPDATE_TIMEOUT, update).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(run = %id, error = %e, "progress comment not updated"),
        Err(_) => tracing::warn!(run = %id, "progress comment: GitHub too slow; skipped"),
    }
}

/// The comment's Markdown.
async fn body(store: &Store, run: &Run) -> Result<String, atlasia_store::StoreError> {
    let iteration = store
        .latest_artifact(run.id, "implementation_report")
        .await?
        .map_or(0, |a| a.version);
    let mut out = format!(
        "**Atlasia** is working on this issue (run `{}`).\n\n| | |\n|---|---|\n\
         | status | `{}` |\n| step | {} |\n| developer iterations | {iteration} |\n\
         | loop-backs | review {}, fix {} |\n",
        run.id,
        run.status.as_str(),
        run.current_step.as_deref().unwrap_or("—"),
        run.review_loops,
        run.fix_loops,
    );
    if let Some(pr) = store.get_pull_request(&run.id.to_string()).await? {
        let link = pr.url.clone().unwrap_or_else(|| pr.head.clone());
        out.push_str(&format!("| pull request | [{}]({link}) |\n", pr.title));
    }
    match run.status {
        RunStatus::Escalated => {
            if let Some(e) = store.latest_artifact(run.id, "escalation").await? {
                let p = &e.payload;
                out.push_str(&format!(
                    "\n**Needs a human:** {}\n\n",
                    p["blocker"].as_str().unwrap_or("?")
                ));
                for o in p["options"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "- `{}`: {}\n",
                        o["id"].as_str().unwrap_or("?"),
                        o["description"].as_str().unwrap_or("")
                    ));
                }
                out.push_str(&format!(
                    "\nRecommended: `{}`. Decide with `POST /api/runs/{}/escalation-decision` \
                     `{{\"decision\":\"PROCEED|ABORT\",\"guidance\":\"…\"}}`.\n",
                    p["recommendation"].as_str().unwrap_or("?"),
                    run.id
                ));
            }
        }
        RunStatus::WaitingGate => {
            let (what, gate) = if run.current_step.as_deref() == Some("WRITER") {
                ("publishing the pull request", "publish_approval")
            } else {
                ("the architecture", "architecture_approval")
            };
            out.push_str(&format!(
                "\n**Waiting for approval** of {what}: `POST /api/runs/{}/gates/{gate}/respond` \
                 `{{\"decision\":\"approve|reject\"}}`.\n",
                run.id
            ));
        }
        RunStatus::Failed => out.push_str(&format!(
            "\n**Failed:** {}\n",
            run.error.as_deref().unwrap_or("see the run's events")
        )),
        RunStatus::Done => out.push_str("\nDone: the pull request is ready for review.\n"),
        _ => {}
    }
    Ok(out)
}
