//! Check runs that follow pushes: `set_branch_checks(repo, branch, lists)` gives the k-th
//! distinct head SHA a branch has had the k-th list of checks (the last list repeats). The
//! branch's history comes from the bare repository itself — its reflog (enabled for every
//! repository the fake creates) plus its current head — read after each `git-receive-pack`
//! and again, lazily, when a commit's check runs are listed; what was seen is remembered, so a
//! commit keeps its checks after the branch moves on or is deleted.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::SystemTime;

use crate::state::{CheckData, Data, Shared, rfc3339};

fn git(git_dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The full SHA of the commit `git_ref` names (a SHA, an abbreviation, a branch or tag), as
/// GitHub resolves the `{ref}` of `/commits/{ref}/…`.
pub(crate) fn resolve_commit(git_dir: &Path, git_ref: &str) -> Option<String> {
    if git_ref.is_empty() || git_ref.starts_with('-') {
        return None;
    }
    git(
        git_dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{git_ref}^{{commit}}"),
        ],
    )
    .filter(|s| !s.is_empty())
}

/// The distinct head SHAs `branch` has had, oldest first: its reflog, then its current head.
pub(crate) fn branch_history(git_dir: &Path, branch: &str) -> Vec<String> {
    let name = format!("refs/heads/{branch}");
    let mut heads: Vec<String> = Vec::new();
    if let Some(log) = git(git_dir, &["log", "-g", "--format=%H", &name, "--"]) {
        for sha in log.lines().rev() {
            push_distinct(&mut heads, sha.trim());
        }
    }
    if let Some(head) = git(
        git_dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{name}^{{commit}}"),
        ],
    ) {
        push_distinct(&mut heads, head.trim());
    }
    heads
}

fn push_distinct(heads: &mut Vec<String>, sha: &str) {
    if !sha.is_empty() && !heads.iter().any(|h| h == sha) {
        heads.push(sha.to_owned());
    }
}

/// Adds what the repository shows now to what was seen before, keeping first-seen order.
pub(crate) fn merge_histories(d: &mut Data, repo: &str, histories: Vec<(String, Vec<String>)>) {
    let Some(r) = d.repos.get_mut(repo) else {
        return;
    };
    for (branch, history) in histories {
        if let Some(b) = r.branch_checks.get_mut(&branch) {
            for sha in history {
                push_distinct(&mut b.heads, &sha);
            }
        }
    }
}

/// Reads the heads of `repo`'s branches that have checks scripted (after a push).
pub(crate) async fn note_push(shared: Arc<Shared>, repo: String) {
    let branches: Vec<String> = shared
        .lock()
        .repos
        .get(&repo)
        .map(|r| r.branch_checks.keys().cloned().collect())
        .unwrap_or_default();
    if branches.is_empty() {
        return;
    }
    let git_dir = shared.cfg.git_root.join(format!("{repo}.git"));
    let histories = tokio::task::spawn_blocking(move || {
        branches
            .into_iter()
            .map(|b| {
                let h = branch_history(&git_dir, &b);
                (b, h)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    merge_histories(&mut shared.lock(), &repo, histories);
}

/// Gives commit `sha` of `repo` its check runs, when a branch with scripted checks has had it
/// as a head and it has none yet: fresh ids (also job ids, with their logs).
pub(crate) fn instantiate(d: &mut Data, repo: &str, sha: &str) {
    let Some(r) = d.repos.get(repo) else {
        return;
    };
    if r.checks.contains_key(sha) {
        return;
    }
    let Some(list) = r.branch_checks.values().find_map(|b| {
        let k = b.heads.iter().position(|h| h == sha)?;
        let last = b.lists.len().checked_sub(1)?;
        b.lists.get(k.min(last)).cloned()
    }) else {
        return;
    };
    let started_at = rfc3339(SystemTime::now());
    let mut data = Vec::with_capacity(list.len());
    for check in list {
        let id = d.next_id();
        d.job_logs.insert(id, check.log.clone());
        data.push(CheckData {
            id,
            check,
            polls: 0,
            started_at: started_at.clone(),
        });
    }
    if let Some(r) = d.repos.get_mut(repo) {
        r.checks.insert(sha.to_owned(), data);
    }
}
