//! What each step of a bolt does, as a function from the run's stored state to a
//! [`StepResult`]; the worker turns results into one lease-guarded transaction each. Planning
//! steps are single structured conversations; DEVELOPER is the tool loop on the bolt's worktree;
//! REVIEW runs four personas in parallel and merges them; TESTER runs the verify commands in the
//! sandbox; JUDGE runs three voters; WRITER updates the changelog and opens the pull request.
//! Loop-backs are bounded per edge; past the bound, and on a judge veto or a protected write, the
//! bolt escalates with an `escalation` artifact and resumes at DEVELOPER on PROCEED.

use crate::contracts::AgentContract;
use crate::ctx::StepCtx;
use crate::developer::{self, DeveloperLimits, DeveloperOutcome};
use crate::forge::github::GithubForge;
use crate::forge::{LocalForge, Workspace, branch_name};
use crate::judge::{self, JudgeVote, Outcome};
use crate::policy::PathPolicy;
use crate::review::{self, PersonaReview};
use crate::sandbox::{CommandSpec, Sandbox, SandboxError, Status as SandboxStatus};
use crate::steps::{AgentOutcome, Context, inputs, run_agent};
use crate::tools::{RunLimits, Workdir};
use atlasia_core::EventKind;
use atlasia_github::{CheckOutcome, NewPullRequest, RepoName};
use atlasia_store::{PullRequestDraft, StoreError};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The reviewer personas and their contracts, in report order.
pub const PERSONAS: [(&str, &str); 4] = [
    ("security", "reviewer-security"),
    ("code_quality", "reviewer-code-quality"),
    ("sre", "reviewer-sre"),
    ("frontend_ux", "reviewer-frontend-ux"),
];

/// Why a bolt escalated: the `reason` of its `escalation` artifact (and of the `escalated`
/// event), a stable code for scripts and `atlasia run`'s summary.
pub mod reason {
    /// A DEVELOPER iteration changed nothing outside the Writer's files, twice.
    pub const NO_CHANGE: &str = "no_change";
    /// No test command ran (none configured or detected) and `allow_untested` is not set.
    pub const UNTESTED: &str = "untested";
    /// The tests failed and the fix loop is used up: the judges' evidence rule vetoed.
    pub const TESTS_FAILED: &str = "tests_failed";
    /// The judges voted the change down.
    pub const JUDGE_VETO: &str = "judge_veto";
    /// The review loop-back bound is used up.
    pub const LOOP_BOUND: &str = "loop_bound";
    /// The LLM budget is spent.
    pub const BUDGET: &str = "budget";
    /// The path policy refused the change.
    pub const POLICY: &str = "policy";
    /// The developer stopped (a protected write, its token budget).
    pub const DEVELOPER: &str = "developer";
    /// The sandbox cannot run commands.
    pub const SANDBOX: &str = "sandbox";
}

/// Judge voters per decision.
pub const VOTERS: usize = 3;

/// Where a PROCEED after an escalation resumes.
pub const RESUME_STEP: &str = "DEVELOPER";

/// Caps on what agents are shown: a big repository or diff must not blow the context.
const TREE_MAX_FILES: usize = 500;
const DOC_MAX_BYTES: usize = 4 * 1024;
const DIFF_MAX_BYTES: usize = 64 * 1024;
/// The diff kept with the pull request record.
const PR_DIFF_MAX_BYTES: usize = 1024 * 1024;

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
}

/// How a step ended.
#[derive(Debug)]
pub enum StepResult {
    /// Store the artifacts and go on to `next`.
    Next {
        artifacts: Vec<(String, Value)>,
        next: &'static str,
        loops: Option<(i64, i64)>,
        events: Vec<(EventKind, Value)>,
    },
    /// The bolt is complete.
    Done {
        artifacts: Vec<(String, Value)>,
        events: Vec<(EventKind, Value)>,
    },
    /// A human must decide; `artifacts` holds the `escalation`; PROCEED resumes at `resume`.
    Escalate {
        artifacts: Vec<(String, Value)>,
        reason: String,
        resume: &'static str,
    },
    /// The step cannot succeed; the message says why.
    Failed(String),
    /// Cancelled; nothing is written.
    Cancelled,
}

impl StepResult {
    fn next(kind: &str, payload: Value, next: &'static str) -> Self {
        Self::Next {
            artifacts: vec![(kind.to_owned(), payload)],
            next,
            loops: None,
            events: Vec::new(),
        }
    }
}

/// Runs `step` for the run in `ctx`.
pub async fn execute(ctx: &StepCtx<'_>, env: &Env) -> Result<StepResult, StoreError> {
    if let Some((_, agent)) = crate::steps::AGENT_STEPS
        .iter()
        .find(|(step, _)| *step == ctx.step)
    {
        return plan(ctx, env, agent).await;
    }
    match ctx.step {
        "DEVELOPER" => develop(ctx, env).await,
        "REVIEW" => review(ctx, env).await,
        "TESTER" => test(ctx, env).await,
        "JUDGE" => judge(ctx, env).await,
        "WRITER" => write(ctx, env).await,
        other => Ok(StepResult::Failed(format!("unknown step '{other}'"))),
    }
}

fn contract<'a>(ctx: &StepCtx<'a>, name: &str) -> Result<&'a AgentContract, String> {
    ctx.contracts
        .agent(name)
        .ok_or_else(|| format!("no agent contract '{name}' for step {}", ctx.step))
}

/// The GitHub forge and repository of the run, when it is on GitHub.
pub fn on_github<'a>(ctx: &StepCtx<'_>, env: &'a Env) -> Option<(&'a GithubForge, RepoName)> {
    let gh = env.github.as_deref()?;
    Some((gh, GithubForge::repo_name(&ctx.run.repo)?))
}

/// The bolt's worktree (created on first use, reused afterwards).
pub async fn workspace(ctx: &StepCtx<'_>, env: &Env) -> Result<Workspace, String> {
    let forge = env.forge.clone();
    let repo = PathBuf::from(&ctx.run.repo);
    let id = ctx.run.id.to_string();
    let branch = branch_name(ctx.run.issue_number, &id);
    // Prepared by an earlier step of this bolt: its record is enough (no git calls).
    if let Some(ws) = forge.existing(&id).filter(|ws| ws.branch == branch) {
        return Ok(ws);
    }
    if let Some((gh, name)) = on_github(ctx, env) {
        return gh.prepare(&forge, &name, &id, &branch).await;
    }
    if !atlasia_core::run::is_local_path(&ctx.run.repo) {
        // `owner/name` never resolves to a folder on this host.
        return Err(format!(
            "cannot prepare repository '{}': it is a GitHub owner/name, never a local folder, and GitHub is not configured ([github])",
            ctx.run.repo
        ));
    }
    // Blocking threads do not inherit the span: carry it, so git's log lines name the run.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| forge.prepare(&repo, &id, &branch)))
        .await
        .map_err(|e| format!("preparing the repository: {e}"))?
        .map_err(|e| format!("cannot prepare repository '{}': {e}", ctx.run.repo))
}

/// Runs a blocking forge operation off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::forge::ForgeError> + Send + 'static,
) -> Result<T, String> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| format!("git task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// The developer iteration the run is at: implementation reports stored so far.
async fn reports(ctx: &StepCtx<'_>) -> Result<i64, StoreError> {
    Ok(ctx
        .store
        .latest_artifact(ctx.run.id, "implementation_report")
        .await?
        .map_or(0, |a| a.version))
}

/// Context from the worktree for `contract`'s inputs (best effort when `ws` is missing).
async fn context(
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
        c.repo_tree = blocking(move || forge.files(&w, TREE_MAX_FILES)).await.ok();
    }
    if wants("repo_docs") {
        c.repo_docs = Some(repo_docs(&ws.path).await);
    }
    if wants("diff") {
        let (forge, w) = (env.forge.clone(), ws.clone());
        c.diff = blocking(move || forge.unified_diff(&w))
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
fn cap(mut text: String, max: usize) -> String {
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

async fn plan(ctx: &StepCtx<'_>, env: &Env, agent: &str) -> Result<StepResult, StoreError> {
    let contract = match contract(ctx, agent) {
        Ok(c) => c,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let needs_repo = contract
        .inputs
        .iter()
        .any(|i| matches!(i.as_str(), "repo_tree" | "repo_docs" | "diff"));
    // Planning works without the repository (the plan just knows less); DEVELOPER will fail
    // with the reason if it cannot be prepared.
    let ws = if needs_repo {
        workspace(ctx, env).await.ok()
    } else {
        None
    };
    let mut c = context(env, ws.as_ref(), contract, 1).await;
    if ctx.step == crate::steps::FIRST_STEP {
        c.issue_extra = issue_from_forge(ctx, env).await;
    }
    let user = inputs(ctx.store, ctx.run, contract, &c).await?;
    Ok(match run_agent(ctx, contract, user).await {
        AgentOutcome::Artifact(v) => {
            let next = crate::steps::next_step(ctx.step).unwrap_or("DEVELOPER");
            StepResult::next(contract.output.as_deref().unwrap_or_default(), v, next)
        }
        AgentOutcome::Failed(e) => StepResult::Failed(e),
        AgentOutcome::Cancelled => StepResult::Cancelled,
        AgentOutcome::Escalate(e) => over_budget(ctx, &e),
    })
}

/// Most issue comments the PM reads.
const ISSUE_COMMENTS: usize = 20;

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

async fn develop(ctx: &StepCtx<'_>, env: &Env) -> Result<StepResult, StoreError> {
    let contract = match contract(ctx, "developer") {
        Ok(c) => c,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let ws = match workspace(ctx, env).await {
        Ok(ws) => ws,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let n = reports(ctx).await? + 1;
    // Start from the branch as the last completed step left it: drop uncommitted work of a
    // crashed attempt, and its commit when the crash came after committing but before the step
    // was recorded (the journal replays the model's answers, so the work is redone for free).
    let (forge, w, marker) = (env.forge.clone(), ws.clone(), step_marker(n));
    let reset = blocking(move || {
        forge.discard_changes(&w)?;
        if forge.head_message(&w)?.contains(&marker) {
            forge.drop_head_commit(&w)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = reset {
        return Ok(StepResult::Failed(format!("resetting the worktree: {e}")));
    }
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
                return Ok(escalate(
                    ctx,
                    &reason,
                    "the developer step (a protected write or the budget)",
                    self::reason::DEVELOPER,
                ));
            }
            DeveloperOutcome::Failed(e) => return Ok(StepResult::Failed(e)),
            DeveloperOutcome::Cancelled => return Ok(StepResult::Cancelled),
        };
        let (forge, w) = (env.forge.clone(), ws.clone());
        let changed = match blocking(move || forge.changed_paths(&w)).await {
            Ok(paths) => paths,
            Err(e) => return Ok(StepResult::Failed(format!("listing the changes: {e}"))),
        };
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
            return Ok(with_artifacts(
                vec![("implementation_report".into(), report)],
                escalate(ctx, &blocker, "the no-change rule", self::reason::NO_CHANGE),
            ));
        }
    }
    // The tools check every write, but an allowed command (a build, a script) can write
    // anywhere in the tree: the whole change passes the policy before it is committed.
    if let Some(refused) = policy_violation(env, &ws).await {
        return Ok(escalate(ctx, &refused, "the path policy", reason::POLICY));
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
    let commit = match blocking(move || forge.commit(&w, &message)).await {
        Ok(c) => c,
        Err(e) => return Ok(StepResult::Failed(format!("committing: {e}"))),
    };
    let mut events = Vec::new();
    if let Some(sha) = commit {
        events.push((
            EventKind::Committed,
            json!({"step": ctx.step, "commit": sha, "branch": ws.branch, "iteration": n}),
        ));
    }
    if let Err(e) = push(ctx, env, &ws).await {
        return Ok(StepResult::Failed(e));
    }
    Ok(StepResult::Next {
        artifacts: vec![("implementation_report".into(), report)],
        next: "REVIEW",
        loops: None,
        events,
    })
}

/// Pushes the branch when the run is on GitHub (a few tries: a push is not retried by the REST
/// client's policy).
async fn push(ctx: &StepCtx<'_>, env: &Env, ws: &Workspace) -> Result<(), String> {
    let Some((gh, name)) = on_github(ctx, env) else {
        return Ok(());
    };
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match gh.push(&name, ws).await {
            Ok(()) => {
                ctx.emit(
                    EventKind::ToolCalled,
                    json!({"step": ctx.step, "tool": "git_push", "target": ws.branch, "ok": true}),
                )
                .await;
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    Err(format!("pushing {} to {name}: {last}", ws.branch))
}

/// The first changed path the policy refuses, with the reason.
async fn policy_violation(env: &Env, ws: &Workspace) -> Option<String> {
    let (forge, w) = (env.forge.clone(), ws.clone());
    let paths = match blocking(move || forge.changed_paths(&w)).await {
        Ok(p) => p,
        Err(e) => return Some(format!("cannot list the changes: {e}")),
    };
    for path in paths {
        let content = tokio::fs::read(ws.path.join(&path))
            .await
            .unwrap_or_default();
        if let Err(e) = env.policy.check_write(&ws.path, &path, &content) {
            return Some(format!("the change to {path} is refused: {e}"));
        }
    }
    None
}

async fn review(ctx: &StepCtx<'_>, env: &Env) -> Result<StepResult, StoreError> {
    let ws = match workspace(ctx, env).await {
        Ok(ws) => ws,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let n = reports(ctx).await?;
    let mut calls = Vec::new();
    // The reviewers share one reading of the worktree (the same diff for all four).
    let shared = match contract(ctx, PERSONAS[0].1) {
        Ok(c) => context(env, Some(&ws), c, n).await,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    for (persona, agent) in PERSONAS {
        let contract = match contract(ctx, agent) {
            Ok(c) => c,
            Err(e) => return Ok(StepResult::Failed(e)),
        };
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
        match answer {
            AgentOutcome::Artifact(v) => {
                match serde_json::from_value::<PersonaReview>(v.clone()) {
                    Ok(r) => reviews.push(r),
                    Err(e) => {
                        return Ok(StepResult::Failed(format!(
                            "{persona} review cannot be read: {e}"
                        )));
                    }
                }
                artifacts.push(("persona_review".to_owned(), v));
            }
            AgentOutcome::Failed(e) => return Ok(StepResult::Failed(e)),
            AgentOutcome::Cancelled => return Ok(StepResult::Cancelled),
            AgentOutcome::Escalate(e) => return Ok(over_budget(ctx, &e)),
        }
    }
    let merged = review::merge(&reviews);
    let mut summary = serde_json::to_value(&merged).unwrap_or_default();
    if let Some(o) = summary.as_object_mut() {
        o.insert("iteration".into(), json!(n));
    }
    artifacts.push(("review".into(), summary));
    if !merged.needs_loop_back() {
        return Ok(StepResult::Next {
            artifacts,
            next: "TESTER",
            loops: None,
            events: Vec::new(),
        });
    }
    let reason = format!(
        "review verdict {} with {} finding(s)",
        merged.verdict.as_str(),
        merged.findings.len()
    );
    Ok(loop_back(
        ctx,
        artifacts,
        "review_to_developer",
        &reason,
        env.limits.review_loops,
    ))
}

/// Goes back to DEVELOPER on `edge` when its bound allows, else escalates.
fn loop_back(
    ctx: &StepCtx<'_>,
    artifacts: Vec<(String, Value)>,
    edge: &str,
    reason: &str,
    max: u32,
) -> StepResult {
    let (review, fix) = (
        i64::from(ctx.run.review_loops),
        i64::from(ctx.run.fix_loops),
    );
    let taken = if edge == "review_to_developer" {
        review
    } else {
        fix
    };
    if taken < i64::from(max) {
        let loops = if edge == "review_to_developer" {
            (review + 1, fix)
        } else {
            (review, fix + 1)
        };
        return StepResult::Next {
            artifacts,
            next: "DEVELOPER",
            loops: Some(loops),
            events: vec![(
                EventKind::LoopBack,
                json!({"edge": edge, "from": ctx.step, "to": "DEVELOPER", "count": taken + 1,
                       "max": max, "reason": reason}),
            )],
        };
    }
    let blocker = format!("{reason}; the {edge} loop-back bound ({max}) is used up");
    with_artifacts(
        artifacts,
        escalate(ctx, &blocker, "the loop-back bound", reason::LOOP_BOUND),
    )
}

/// `result` with `artifacts` stored first (the step's own outputs before its escalation).
fn with_artifacts(mut artifacts: Vec<(String, Value)>, result: StepResult) -> StepResult {
    match result {
        StepResult::Escalate {
            artifacts: esc,
            reason,
            resume,
        } => {
            artifacts.extend(esc);
            StepResult::Escalate {
                artifacts,
                reason,
                resume,
            }
        }
        other => other,
    }
}

/// The `escalation` artifact for a blocker at the current step; PROCEED resumes at DEVELOPER.
fn escalate(ctx: &StepCtx<'_>, blocker: &str, what: &str, code: &str) -> StepResult {
    escalate_to(ctx, blocker, what, RESUME_STEP, code)
}

/// A spent budget: PROCEED (after the budget was raised) retries the same step.
fn over_budget(ctx: &StepCtx<'_>, blocker: &str) -> StepResult {
    let step = crate::steps::PIPELINE
        .iter()
        .copied()
        .find(|s| *s == ctx.step)
        .unwrap_or(RESUME_STEP);
    escalate_to(ctx, blocker, "the LLM budget", step, reason::BUDGET)
}

fn escalate_to(
    ctx: &StepCtx<'_>,
    blocker: &str,
    what: &str,
    resume: &'static str,
    code: &str,
) -> StepResult {
    let run = ctx.run;
    let payload = json!({
        "reason": code,
        "context": format!(
            "Run {} on {} stopped at {} ({} review loop-back(s), {} fix loop-back(s) so far). \
             Stopped by {what}.",
            run.id, run.repo, ctx.step, run.review_loops, run.fix_loops),
        "blocker": blocker,
        "options": [
            {"id": "proceed",
             "description": format!("PROCEED with guidance: the bolt resumes at {resume} with the \
                             branch as it is, reading your guidance first; loop-back bounds start \
                             afresh."),
             "consequence": "More LLM cost; the bolt reviews and tests again before the PR."},
            {"id": "abort",
             "description": "ABORT: stop the bolt here; the branch keeps the work done so far.",
             "consequence": "The run ends FAILED; no pull request is opened."},
        ],
        "recommendation": "proceed",
    });
    if let Err(issues) = ctx.contracts.validate("escalation", &payload) {
        let detail: Vec<String> = issues.iter().map(ToString::to_string).collect();
        return StepResult::Failed(format!(
            "escalation artifact invalid: {}",
            detail.join("; ")
        ));
    }
    StepResult::Escalate {
        artifacts: vec![("escalation".into(), payload)],
        reason: blocker.to_owned(),
        resume,
    }
}

/// Variables for every command a bolt runs: build output goes to a shared cache outside the
/// worktree (never into the change, and reused across bolts), and Python writes no bytecode
/// there (a stale `.pyc` with the same size and second as its edited source would be used).
fn build_env(env: &Env) -> Vec<(String, String)> {
    vec![
        (
            "CARGO_TARGET_DIR".into(),
            env.cache_dir.join("cargo-target").display().to_string(),
        ),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ]
}

/// Directories commands may write besides the worktree: the shared build cache.
fn build_writable(env: &Env) -> Vec<PathBuf> {
    vec![env.cache_dir.join("cargo-target")]
}

/// `.atlasia.toml` as committed at the bolt's base: the repository owner's word (a bolt that
/// edits the file does not change its own verify commands, network or `allow_untested`).
async fn repo_config(env: &Env, ws: &Workspace) -> Option<toml::Table> {
    let (forge, w) = (env.forge.clone(), ws.clone());
    let text = tokio::task::spawn_blocking(move || forge.file_at_base(&w, ".atlasia.toml"))
        .await
        .ok()
        .flatten();
    text.and_then(|t| t.parse::<toml::Table>().ok())
}

/// The repository's network opt-in for its commands: `[sandbox] network = true` in
/// `.atlasia.toml` (see [`repo_config`]).
async fn repo_network(env: &Env, ws: &Workspace) -> bool {
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
fn allows_untested(config: Option<&toml::Table>) -> bool {
    config
        .and_then(|doc| doc.get("allow_untested"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false)
}

/// A command the tester will run, with where it came from.
#[derive(Debug, Clone)]
struct Planned {
    command: String,
    /// `atlasia_toml`, `work_plan` or `detected`.
    source: &'static str,
    why: String,
}

/// The verify commands and a sentence saying how they were chosen:
/// 1. `.atlasia.toml` `verify = [...]` (at the base commit) when it names any: the repository
///    owner's word, used alone;
/// 2. else the work plan's `verify_commands` (model-chosen) **plus** the repository's own test
///    command detected from its files ([`crate::detect`]): a model may add checks but cannot
///    replace the repository's tests with a weaker command. The detected command is skipped when
///    a work plan command already starts with it.
///
/// An empty list means nothing can run: the report is `not_run`.
async fn select_commands(
    ctx: &StepCtx<'_>,
    env: &Env,
    ws: &Workspace,
    config: Option<&toml::Table>,
) -> Result<(Vec<Planned>, String), StoreError> {
    let configured: Vec<String> = config
        .and_then(|doc| doc.get("verify"))
        .and_then(toml::Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .filter(|c| !c.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !configured.is_empty() {
        let planned = configured
            .into_iter()
            .map(|command| Planned {
                command,
                source: "atlasia_toml",
                why: ".atlasia.toml `verify` (the repository owner's commands)".into(),
            })
            .collect();
        return Ok((
            planned,
            ".atlasia.toml names the verify commands; they run alone.".into(),
        ));
    }
    let plan = ctx.store.latest_artifact(ctx.run.id, "work_plan").await?;
    let mut planned: Vec<Planned> = plan
        .and_then(|a| a.payload.get("verify_commands").cloned())
        .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !c.trim().is_empty())
        .map(|command| Planned {
            command,
            source: "work_plan",
            why: "the work plan's verify_commands".into(),
        })
        .collect();
    let detected = match crate::detect::detect(&ws.path) {
        None => None,
        Some(crate::detect::Found::Command(d)) => Some(d),
        Some(crate::detect::Found::Python { why }) => Some(crate::detect::python(
            &why,
            pytest_importable(env, ws).await,
        )),
    };
    let mut selection = if planned.is_empty() {
        "No .atlasia.toml verify and no work plan verify_commands".to_owned()
    } else {
        format!(
            "No .atlasia.toml verify; the work plan names {} command(s)",
            planned.len()
        )
    };
    match detected {
        Some(d) if planned.iter().any(|p| p.command.starts_with(&d.command)) => {
            selection.push_str(&format!(
                "; the detected `{}` ({}) is already among them.",
                d.command, d.why
            ));
        }
        Some(d) => {
            selection.push_str(&format!(
                "; the repository's own test command was detected: `{}` ({}).",
                d.command, d.why
            ));
            planned.push(Planned {
                command: d.command,
                source: "detected",
                why: d.why,
            });
        }
        None => selection.push_str(&format!(
            "; no test command could be detected (looked for {}).",
            crate::detect::LOOKED_FOR
        )),
    }
    Ok((planned, selection))
}

/// Whether pytest imports where the tests run (the sandbox); `false` when it cannot be asked.
async fn pytest_importable(env: &Env, ws: &Workspace) -> bool {
    if matches!(env.sandbox.status(), SandboxStatus::Unavailable(_)) {
        return false;
    }
    let mut spec = CommandSpec::new(crate::detect::PYTEST_PROBE, ws.path.clone());
    spec.env_set = build_env(env);
    env.sandbox
        .run(&spec, Duration::from_secs(30), 1024)
        .await
        .is_ok_and(|o| o.exit_code == Some(0))
}

/// Whether a test runner's output says it ran no test (Python's unittest and pytest; other
/// runners print per-package counts where a zero is normal).
fn found_no_tests(output: &str) -> bool {
    output.contains("Ran 0 tests")
        || output.contains("NO TESTS RAN")
        || output.contains("no tests ran")
}

/// The evidence of a test report, one line per command: command, result, duration, and where
/// the command came from; or why nothing ran. What the PR body and `atlasia run` show.
pub fn evidence(report: &Value) -> Vec<String> {
    let commands = report["commands"].as_array().cloned().unwrap_or_default();
    if commands.is_empty() {
        return vec![format!(
            "untested: no test command ran. {}",
            report["selection"]
                .as_str()
                .or_else(|| report["summary"].as_str())
                .unwrap_or_default()
        )];
    }
    commands
        .iter()
        .map(|c| {
            let result = match c["exit_code"].as_i64() {
                Some(0) => "passed (exit 0)".to_owned(),
                Some(code) => format!("FAILED (exit {code})"),
                None => "FAILED (killed or could not run)".to_owned(),
            };
            let ms = c["duration_ms"].as_u64().unwrap_or(0);
            let from = match (c["source"].as_str(), c["why"].as_str()) {
                (Some(s), Some(w)) => format!(" [{s}: {w}]"),
                (Some(s), None) => format!(" [{s}]"),
                _ => String::new(),
            };
            format!(
                "`{}` {result} in {}.{:03} s{from}",
                c["command"].as_str().unwrap_or("?"),
                ms / 1000,
                ms % 1000
            )
        })
        .collect()
}

/// The test status of a report: `passed`, `failed` or `not_run` (older reports have no
/// `status`: read from `passed`).
pub fn test_status(report: &Value) -> &str {
    match report["status"].as_str() {
        Some(s) => s,
        None if report["passed"] == json!(true) => "passed",
        None => "failed",
    }
}

async fn test(ctx: &StepCtx<'_>, env: &Env) -> Result<StepResult, StoreError> {
    let ws = match workspace(ctx, env).await {
        Ok(ws) => ws,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let n = reports(ctx).await?;
    let config = repo_config(env, &ws).await;
    let (planned, selection) = select_commands(ctx, env, &ws, config.as_ref()).await?;
    let commands: Vec<String> = planned.iter().map(|p| p.command.clone()).collect();
    if commands.is_empty() {
        // Nothing can run: the report says so and the judges' evidence rule decides (a veto
        // unless the repository allows untested changes).
        let report = json!({
            "status": "not_run",
            "passed": false,
            "commands": [],
            "selection": selection,
            "summary": format!("untested: no test command ran. {selection}"),
        });
        return Ok(StepResult::next("test_report", report, "JUDGE"));
    }
    if let SandboxStatus::Unavailable(why) = env.sandbox.status() {
        // Running the commands unisolated is the operator's call (`sandbox.mode = "none"`);
        // a PROCEED after fixing the sandbox runs the tests again.
        let reason = SandboxError::Unavailable(why.clone()).to_string();
        return Ok(escalate_to(
            ctx,
            &reason,
            "the sandbox",
            "TESTER",
            reason::SANDBOX,
        ));
    }
    let network = repo_network(env, &ws).await;
    let mut results = Vec::new();
    for Planned {
        command,
        source,
        why,
    } in &planned
    {
        let mut spec = CommandSpec::new(command.clone(), ws.path.clone());
        spec.env_set = build_env(env);
        spec.writable = build_writable(env);
        spec.network = network;
        let outcome = tokio::select! {
            r = env.sandbox.run(&spec, env.limits.verify_timeout, env.limits.output_cap) => r,
            () = ctx.cancel.cancelled() => return Ok(StepResult::Cancelled),
        };
        let mut entry = match outcome {
            Ok(o) => json!({
                "command": command,
                "exit_code": o.exit_code,
                "duration_ms": u64::try_from(o.duration.as_millis()).unwrap_or(u64::MAX),
                "output_tail": if o.timed_out {
                    format!("[timed out after {} s; process group killed]\n{}",
                            env.limits.verify_timeout.as_secs(), o.output_tail)
                } else { o.output_tail },
            }),
            Err(e) => json!({"command": command, "exit_code": null, "duration_ms": 0,
                             "output_tail": format!("could not run: {e}")}),
        };
        if let Some(o) = entry.as_object_mut() {
            o.insert("source".into(), json!(source));
            o.insert("why".into(), json!(why));
        }
        ctx.emit(
            EventKind::ToolCalled,
            json!({"step": ctx.step, "tool": "verify", "target": command,
                   "ok": entry["exit_code"] == json!(0)}),
        )
        .await;
        results.push(entry);
    }
    // A runner that found no test at all proves nothing: when every command says so, the
    // report is `not_run`, whatever the exit codes.
    if results
        .iter()
        .all(|r| found_no_tests(r["output_tail"].as_str().unwrap_or_default()))
    {
        let report = json!({
            "status": "not_run",
            "passed": false,
            "commands": results,
            "selection": selection,
            "summary": format!(
                "untested: {} ran but found no tests. {selection}",
                commands.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ),
        });
        return Ok(StepResult::next("test_report", report, "JUDGE"));
    }
    let mut passed = results.iter().all(|r| r["exit_code"] == json!(0));
    let mut ci_note = None;
    if passed && let Some((gh, name)) = on_github(ctx, env) {
        let (forge, w) = (env.forge.clone(), ws.clone());
        let sha = match blocking(move || forge.head(&w)).await {
            Ok(sha) => sha,
            Err(e) => return Ok(StepResult::Failed(format!("reading the head commit: {e}"))),
        };
        let outcome = tokio::select! {
            r = gh.checks(&name, &sha) => r,
            () = ctx.cancel.cancelled() => return Ok(StepResult::Cancelled),
        };
        match outcome {
            Ok(CheckOutcome::NoChecks) => {
                ci_note = Some("no CI checks are configured: local result only".to_owned());
            }
            Ok(CheckOutcome::AllPassed { runs }) => {
                ci_note = Some(format!("{} CI check(s) passed", runs.len()));
            }
            Ok(CheckOutcome::TimedOut { pending }) => {
                ci_note = Some(format!(
                    "{} CI check(s) still pending at the deadline: local result only",
                    pending.len()
                ));
            }
            Ok(CheckOutcome::Failed { failed }) => {
                passed = false;
                for f in failed {
                    results.push(json!({
                        "command": format!("CI check {}", f.run.name),
                        "source": "ci",
                        "exit_code": null,
                        "duration_ms": 0,
                        "output_tail": f.log_tail.unwrap_or_else(|| format!(
                            "concluded {}; see {}",
                            f.run.conclusion.as_deref().unwrap_or("?"),
                            f.run.html_url.as_deref().unwrap_or("the check run"))),
                    }));
                }
            }
            Err(e) => {
                ci_note = Some(format!(
                    "CI checks could not be read ({e}): local result only"
                ))
            }
        }
    }
    let mut report = if passed {
        let summary = format!(
            "All {} verify command(s) passed: {}",
            commands.len(),
            evidence(&json!({"commands": results})).join("; ")
        );
        let summary = match &ci_note {
            Some(note) => format!("{summary} {note}."),
            None => summary,
        };
        json!({"passed": true, "commands": results, "summary": summary})
    } else {
        tester_report(ctx, &ws, env, &results, n).await?
    };
    // The outcome is the exit codes', never the model's reading of them.
    if let Some(o) = report.as_object_mut() {
        o.insert("passed".into(), json!(passed));
        o.insert(
            "status".into(),
            json!(if passed { "passed" } else { "failed" }),
        );
        o.insert("selection".into(), json!(selection));
        o.insert("commands".into(), json!(results));
    }
    if passed {
        return Ok(StepResult::next("test_report", report, "JUDGE"));
    }
    if i64::from(ctx.run.fix_loops) >= i64::from(env.limits.fix_loops) {
        // The fix loop is used up: the failing report goes to the judges, whose evidence rule
        // vetoes it (no vote is asked) and escalates.
        return Ok(StepResult::next("test_report", report, "JUDGE"));
    }
    let failing = results
        .iter()
        .find(|r| r["exit_code"] != json!(0))
        .and_then(|r| r["command"].as_str())
        .unwrap_or("a verify command")
        .to_owned();
    Ok(loop_back(
        ctx,
        vec![("test_report".into(), report)],
        "tester_to_developer",
        &format!("`{failing}` failed"),
        env.limits.fix_loops,
    ))
}

/// The tester agent's reading of a failure (root cause, files involved), or a plain summary
/// when the agent cannot answer: a failing test must reach the developer either way.
async fn tester_report(
    ctx: &StepCtx<'_>,
    ws: &Workspace,
    env: &Env,
    results: &[Value],
    n: i64,
) -> Result<Value, StoreError> {
    let plain = || {
        let failing: Vec<&str> = results
            .iter()
            .filter(|r| r["exit_code"] != json!(0))
            .filter_map(|r| r["command"].as_str())
            .collect();
        json!({"passed": false, "commands": results,
               "summary": format!("Failing: {}. See each command's output tail.",
                                  failing.join(", "))})
    };
    let Ok(contract) = contract(ctx, "tester") else {
        return Ok(plain());
    };
    let mut c = context(env, Some(ws), contract, n).await;
    c.test_log = Some(json!(results));
    let user = inputs(ctx.store, ctx.run, contract, &c).await?;
    Ok(match run_agent(ctx, contract, user).await {
        AgentOutcome::Artifact(v) => v,
        AgentOutcome::Failed(e) | AgentOutcome::Escalate(e) => {
            tracing::warn!(run = %ctx.run.id, error = %e, "tester agent failed; plain report");
            plain()
        }
        AgentOutcome::Cancelled => plain(),
    })
}

async fn judge(ctx: &StepCtx<'_>, env: &Env) -> Result<StepResult, StoreError> {
    let contract = match contract(ctx, "judge") {
        Ok(c) => c,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
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
        if veto.code == reason::TESTS_FAILED {
            blocker.push_str(&format!(
                "; the tester_to_developer loop-back bound ({}) is used up",
                env.limits.fix_loops
            ));
        }
        let record = json!({
            "outcome": "veto",
            "weighted": 0.0,
            "rule": veto.code,
            "reason": blocker,
            "iteration": n,
            "votes": 0,
        });
        return Ok(with_artifacts(
            vec![("judge_decision".into(), record)],
            escalate(ctx, &blocker, "the judges' evidence rule", veto.code),
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
        match answer {
            AgentOutcome::Artifact(v) => {
                match serde_json::from_value::<JudgeVote>(v.clone()) {
                    Ok(vote) => votes.push(vote),
                    Err(e) => {
                        return Ok(StepResult::Failed(format!("judge vote unreadable: {e}")));
                    }
                }
                artifacts.push(("judge_verdict".to_owned(), v));
            }
            AgentOutcome::Failed(e) => return Ok(StepResult::Failed(e)),
            AgentOutcome::Cancelled => return Ok(StepResult::Cancelled),
            AgentOutcome::Escalate(e) => return Ok(over_budget(ctx, &e)),
        }
    }
    let decision = judge::aggregate(&votes);
    let mut record = serde_json::to_value(&decision).unwrap_or_default();
    if let Some(o) = record.as_object_mut() {
        o.insert("iteration".into(), json!(n));
        o.insert("votes".into(), json!(votes.len()));
    }
    artifacts.push(("judge_decision".into(), record));
    if decision.outcome == Outcome::Veto {
        let blocker = format!(
            "the judges vetoed the change (weighted score {:.2})",
            decision.weighted
        );
        return Ok(with_artifacts(
            artifacts,
            escalate(ctx, &blocker, "a judge veto", reason::JUDGE_VETO),
        ));
    }
    Ok(StepResult::Next {
        artifacts,
        next: "WRITER",
        loops: None,
        events: Vec::new(),
    })
}

async fn write(ctx: &StepCtx<'_>, env: &Env) -> Result<StepResult, StoreError> {
    let contract = match contract(ctx, "writer") {
        Ok(c) => c,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let ws = match workspace(ctx, env).await {
        Ok(ws) => ws,
        Err(e) => return Ok(StepResult::Failed(e)),
    };
    let n = reports(ctx).await?;
    let c = context(env, Some(&ws), contract, n).await;
    let user = inputs(ctx.store, ctx.run, contract, &c).await?;
    let docs = match run_agent(ctx, contract, user).await {
        AgentOutcome::Artifact(v) => v,
        AgentOutcome::Failed(e) => return Ok(StepResult::Failed(e)),
        AgentOutcome::Cancelled => return Ok(StepResult::Cancelled),
        AgentOutcome::Escalate(e) => return Ok(over_budget(ctx, &e)),
    };
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
    match blocking(move || forge.commit(&w, &message)).await {
        Ok(Some(sha)) => events.push((
            EventKind::Committed,
            json!({"step": ctx.step, "commit": sha, "branch": ws.branch}),
        )),
        Ok(None) => {}
        Err(e) => return Ok(StepResult::Failed(format!("committing docs: {e}"))),
    }
    if let Err(e) = push(ctx, env, &ws).await {
        return Ok(StepResult::Failed(e));
    }
    let (forge, w) = (env.forge.clone(), ws.clone());
    let (stat, diff) =
        match blocking(move || Ok((forge.diff_stat(&w)?, forge.unified_diff(&w)?))).await {
            Ok(d) => d,
            Err(e) => return Ok(StepResult::Failed(format!("diffing the branch: {e}"))),
        };
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
        match gh.pull_request(&name, &new).await {
            Ok((pr, action)) => {
                draft.forge = "github".into();
                draft.number = i64::try_from(pr.number).ok();
                draft.url = Some(pr.html_url);
                draft.state = pr.state;
                tracing::info!(run = %ctx.run.id, number = pr.number, ?action, "pull request");
            }
            Err(e) => return Ok(StepResult::Failed(e)),
        }
    }
    ctx.store.upsert_pull_request(&draft).await?;
    events.push((
        EventKind::PullRequestUpdated,
        json!({"forge": draft.forge, "head": ws.branch, "base": ws.base_branch_name,
               "title": title, "number": draft.number, "url": draft.url,
               "repository": ws.repo.display().to_string()}),
    ));
    Ok(StepResult::Done {
        artifacts: vec![
            ("docs_update".into(), docs),
            (
                "pull_request_diff".into(),
                json!({"diff": cap(diff, PR_DIFF_MAX_BYTES), "base_commit": ws.base_commit}),
            ),
        ],
        events,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judges_read_the_diff_and_the_test_report() {
        let c = crate::contracts::Contracts::embedded().unwrap_or_else(|e| panic!("{e}"));
        let judge = c
            .agent("judge")
            .unwrap_or_else(|| panic!("no judge contract"));
        for input in ["diff", "test_report"] {
            assert!(judge.inputs.iter().any(|i| i == input), "{input}");
        }
    }

    #[test]
    fn evidence_states_command_result_duration_and_source() {
        let report = json!({"status": "failed", "commands": [
            {"command": "make test", "exit_code": 0, "duration_ms": 1234,
             "source": "detected", "why": "Makefile has a `test` target"},
            {"command": "npm test", "exit_code": 2, "duration_ms": 5, "source": "work_plan"},
            {"command": "CI check lint", "exit_code": null, "duration_ms": 0, "source": "ci"}]});
        assert_eq!(
            evidence(&report),
            vec![
                "`make test` passed (exit 0) in 1.234 s [detected: Makefile has a `test` target]",
                "`npm test` FAILED (exit 2) in 0.005 s [work_plan]",
                "`CI check lint` FAILED (killed or could not run) in 0.000 s [ci]",
            ]
        );
        let none = json!({"status": "not_run", "commands": [], "selection": "nothing found"});
        assert_eq!(
            evidence(&none),
            vec!["untested: no test command ran. nothing found"]
        );
        assert_eq!(test_status(&none), "not_run");
        assert_eq!(test_status(&json!({"passed": true})), "passed");
        assert_eq!(test_status(&json!({"passed": false})), "failed");
    }

    #[test]
    fn an_empty_test_run_is_recognised() {
        assert!(found_no_tests("\n----\nRan 0 tests in 0.000s\n\nOK\n"));
        assert!(found_no_tests("\n\nNO TESTS RAN\n"));
        assert!(found_no_tests("no tests ran in 0.01s\n"));
        assert!(!found_no_tests("Ran 10 tests in 0.1s\n\nOK\n"));
        assert!(!found_no_tests(
            "running 0 tests\ntest result: ok. 0 passed"
        ));
    }

    #[test]
    fn commit_types_follow_the_title() {
        assert_eq!(commit_type("Fix overflow in add"), "fix");
        assert_eq!(commit_type("Add a multiply function"), "feat");
        assert_eq!(commit_type("Document the API in the README"), "docs");
    }

    #[test]
    fn caps_cut_on_char_boundaries() {
        let s = cap("ééé".to_owned(), 3);
        assert!(s.starts_with('é') && s.ends_with("[truncated]"), "{s}");
        assert_eq!(cap("abc".to_owned(), 3), "abc");
    }
}
