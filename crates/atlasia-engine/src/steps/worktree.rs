//! What the steps read from and do to the bolt's worktree: preparing it (local or GitHub), the
//! bounded context agents are shown (tree, docs, diff), the repository's `.atlasia.toml` as
//! committed at the base, the build environment of its commands, and pushing the branch.

use super::Env;
use crate::contracts::AgentContract;
use crate::ctx::StepCtx;
use crate::error::EngineError;
use crate::forge::github::GithubForge;
use crate::forge::{ForgeError, Workspace, branch_name};
use crate::steps::agent::Context;
use atlasia_core::EventKind;
use atlasia_github::RepoName;
use atlasia_resilience::{RetryPolicy, sleep_or_cancel};
use atlasia_store::StoreError;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Caps on what agents are shown: a big repository or diff must not blow the context.
const TREE_MAX_FILES: usize = 500;
const DOC_MAX_BYTES: usize = 4 * 1024;
const DIFF_MAX_BYTES: usize = 64 * 1024;

/// The GitHub forge and repository of the run, when it is on GitHub.
pub fn on_github<'a>(ctx: &StepCtx<'_>, env: &'a Env) -> Option<(&'a GithubForge, RepoName)> {
    let gh = env.github.as_deref()?;
    Some((gh, GithubForge::repo_name(&ctx.run.repo)?))
}

/// The bolt's worktree (created on first use, reused afterwards).
pub async fn workspace(ctx: &StepCtx<'_>, env: &Env) -> Result<Workspace, EngineError> {
    let forge = env.forge.clone();
    let repo = PathBuf::from(&ctx.run.repo);
    let id = ctx.run.id.to_string();
    let branch = branch_name(ctx.run.issue_number, &id);
    // Prepared by an earlier step of this bolt: its record is enough (no git calls).
    if let Some(ws) = forge.existing(&id).filter(|ws| ws.branch == branch) {
        return Ok(ws);
    }
    if let Some((gh, name)) = on_github(ctx, env) {
        return gh
            .prepare(&forge, &name, &id, &branch)
            .await
            .map_err(|e| EngineError::github(format!("preparing GitHub repository {name}"), e));
    }
    if !atlasia_core::run::is_local_path(&ctx.run.repo) {
        // `owner/name` never resolves to a folder on this host.
        return Err(EngineError::Step(format!(
            "cannot prepare repository '{}': it is a GitHub owner/name, never a local folder, and GitHub is not configured ([github])",
            ctx.run.repo
        )));
    }
    let what = format!("cannot prepare repository '{}'", ctx.run.repo);
    blocking(what, move || forge.prepare(&repo, &id, &branch)).await
}

/// Runs a blocking forge operation off the async threads; `what` says what it was for.
pub(super) async fn blocking<T: Send + 'static>(
    what: impl Into<String>,
    f: impl FnOnce() -> Result<T, ForgeError> + Send + 'static,
) -> Result<T, EngineError> {
    // Blocking threads do not inherit the span: carry it, so git's log lines name the run.
    let span = tracing::Span::current();
    let what = what.into();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(r) => r.map_err(|e| EngineError::git(what, e)),
        Err(e) => Err(EngineError::Step(format!(
            "{what}: the git task failed: {e}"
        ))),
    }
}

/// The developer iteration the run is at: implementation reports stored so far.
pub(super) async fn reports(ctx: &StepCtx<'_>) -> Result<i64, StoreError> {
    Ok(ctx
        .store
        .latest_artifact(ctx.run.id, "implementation_report")
        .await?
        .map_or(0, |a| a.version))
}

/// Context from the worktree for `contract`'s inputs (best effort when `ws` is missing).
pub(super) async fn context(
    env: &Env,
    ws: Option<&Workspace>,
    contract: &AgentContract,
    iteration: i64,
) -> Context {
    let mut c = Context {
        iteration,
        ..Context::default()
    };
    let Some(ws) = ws else { return c };
    let wants = |name: &str| contract.inputs.iter().any(|i| i == name);
    if wants("repo_tree") {
        let (forge, w) = (env.forge.clone(), ws.clone());
        c.repo_tree = blocking("listing files", move || forge.files(&w, TREE_MAX_FILES))
            .await
            .ok();
    }
    if wants("repo_docs") {
        c.repo_docs = Some(repo_docs(&ws.path).await);
    }
    if wants("diff") {
        let (forge, w) = (env.forge.clone(), ws.clone());
        c.diff = blocking("diffing", move || forge.unified_diff(&w))
            .await
            .ok()
            .map(|d| cap(d, DIFF_MAX_BYTES));
    }
    c
}

/// README and build manifest excerpts.
async fn repo_docs(root: &Path) -> Value {
    let mut docs = Map::new();
    for name in [
        "README.md",
        "AGENTS.md",
        "Cargo.toml",
        "pyproject.toml",
        "package.json",
        ".atlasia.toml",
    ] {
        if let Ok(text) = tokio::fs::read_to_string(root.join(name)).await {
            docs.insert(name.to_owned(), json!(cap(text, DOC_MAX_BYTES)));
        }
    }
    Value::Object(docs)
}

/// At most `max` bytes of `text`, cut on a character boundary, marked when cut.
pub(super) fn cap(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push_str("\n[truncated]");
    text
}

/// Variables for every command a bolt runs: build output goes to a shared cache outside the
/// worktree (never into the change, and reused across bolts), and Python writes no bytecode
/// there (a stale `.pyc` with the same size and second as its edited source would be used).
pub(super) fn build_env(env: &Env) -> Vec<(String, String)> {
    vec![
        (
            "CARGO_TARGET_DIR".into(),
            env.cache_dir.join("cargo-target").display().to_string(),
        ),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ]
}

/// Directories commands may write besides the worktree: the shared build cache.
pub(super) fn build_writable(env: &Env) -> Vec<PathBuf> {
    vec![env.cache_dir.join("cargo-target")]
}

/// `.atlasia.toml` as committed at the bolt's base: the repository owner's word (a bolt that
/// edits the file does not change its own verify commands, network or `allow_untested`).
pub(super) async fn repo_config(env: &Env, ws: &Workspace) -> Option<toml::Table> {
    let (forge, w) = (env.forge.clone(), ws.clone());
    let text = tokio::task::spawn_blocking(move || forge.file_at_base(&w, ".atlasia.toml"))
        .await
        .ok()
        .flatten();
    text.and_then(|t| t.parse::<toml::Table>().ok())
}

/// The repository's network opt-in for its commands: `[sandbox] network = true` in
/// `.atlasia.toml` (see [`repo_config`]).
pub(super) async fn repo_network(env: &Env, ws: &Workspace) -> bool {
    repo_config(env, ws)
        .await
        .and_then(|doc| {
            doc.get("sandbox")
                .and_then(|s| s.get("network"))
                .and_then(toml::Value::as_bool)
        })
        .unwrap_or(false)
}

/// The repository's opt-in to changes no test checked: `allow_untested = true`.
pub(super) fn allows_untested(config: Option<&toml::Table>) -> bool {
    config
        .and_then(|doc| doc.get("allow_untested"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false)
}

/// How a push is retried: git is not behind the REST client's policy, so it gets its own
/// (short: a push that fails three times is a fault for a human).
const PUSH_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    base: Duration::from_millis(500),
    cap: Duration::from_secs(5),
};

/// Pushes the branch when the run is on GitHub. Only a passing fault (network, a 5xx) is
/// tried again, and a cancellation ends the wait at once.
pub(super) async fn push(ctx: &StepCtx<'_>, env: &Env, ws: &Workspace) -> Result<(), EngineError> {
    let Some((gh, name)) = on_github(ctx, env) else {
        return Ok(());
    };
    let mut attempt = 0u32;
    loop {
        let pushed = tokio::select! {
            r = gh.push(&name, ws) => r,
            () = ctx.cancel.cancelled() => return Err(EngineError::Cancelled),
        };
        let err = match pushed {
            Ok(()) => {
                ctx.emit(
                    EventKind::ToolCalled,
                    json!({"step": ctx.step, "tool": "git_push", "target": ws.branch, "ok": true}),
                )
                .await;
                return Ok(());
            }
            Err(e) => EngineError::github(format!("pushing {} to {name}", ws.branch), e),
        };
        if !(err.is_retryable() && PUSH_RETRY.allows(attempt)) {
            return Err(err);
        }
        let delay = PUSH_RETRY.backoff(attempt);
        tracing::warn!(run = %ctx.run.id, error = %err, delay_ms = delay.as_millis() as u64,
            "push failed for a passing reason; retrying");
        if !sleep_or_cancel(delay, ctx.cancel).await {
            return Err(EngineError::Cancelled);
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_cut_on_char_boundaries() {
        let s = cap("ééé".to_owned(), 3);
        assert!(s.starts_with('é') && s.ends_with("[truncated]"), "{s}");
        assert_eq!(cap("abc".to_owned(), 3), "abc");
    }

    #[test]
    fn untested_needs_an_explicit_opt_in() {
        let parse = |t: &str| t.parse::<toml::Table>().ok();
        assert!(allows_untested(parse("allow_untested = true").as_ref()));
        assert!(!allows_untested(parse("allow_untested = \"yes\"").as_ref()));
        assert!(!allows_untested(parse("verify = []").as_ref()));
        assert!(!allows_untested(None));
    }
}
