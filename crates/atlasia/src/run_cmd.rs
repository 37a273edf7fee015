//! `atlasia run`: one bolt, in this process, on the embedded store, with a live progress line;
//! then the branch, the pull request, the diff stat, the test result and the cost. Exit codes:
//! 0 done, 3 escalated or waiting at a gate (a human decides next), 1 failed, 2 bad input.

use crate::cli::RunArgs;
use crate::commands::{CliError, open_store};
use atlasia_core::{Run, RunId, RunRequest, RunStatus, Timestamp};
use atlasia_engine::forge::{RepoAccess, branch_name};
use atlasia_engine::worker::Worker;
use atlasia_server::compose::Reach;
use atlasia_server::{Settings, StartError};
use atlasia_store::{Store, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit code of a bolt that needs a human (escalated, or waiting at a gate).
pub const EXIT_NEEDS_HUMAN: u8 = 3;

/// A Markdown issue: the first `# ` heading is the title, the rest the body.
pub fn parse_issue(text: &str) -> Result<(String, String), String> {
    let mut lines = text.lines();
    let title = loop {
        match lines.next() {
            Some(l) if l.trim().is_empty() => continue,
            Some(l) => break l.trim().trim_start_matches('#').trim().to_owned(),
            None => return Err("the issue file is empty".into()),
        }
    };
    if title.is_empty() {
        return Err("the issue file's first line must be its title (`# Title`)".into());
    }
    let body = lines.collect::<Vec<_>>().join("\n").trim().to_owned();
    Ok((title, body))
}

/// Asks every LLM endpoint for its model list before the first step: when none can answer
/// for a reason that will not pass by itself (nothing listens, the key is refused), the bolt
/// is not started (exit 2, the endpoint's answer in one line) instead of waiting out
/// `engine.llm_patience_secs`. An endpoint that answers oddly (no model list, a 5xx) is only
/// reported: the call itself may still work.
async fn preflight(gateway: &atlasia_llm::Gateway) -> Result<(), CliError> {
    use atlasia_llm::ProbeResult;
    let probes = gateway.probe().await;
    let dead = |p: &&atlasia_llm::EndpointProbe| {
        matches!(p.result, ProbeResult::Refused | ProbeResult::Auth(_))
    };
    if let Some(first) = probes.first()
        && probes.iter().all(|p| dead(&p))
    {
        return Err(CliError::BadInput(first.to_string()));
    }
    for p in probes.iter().filter(|p| !p.result.is_ok()) {
        eprintln!("warning: {p}");
    }
    Ok(())
}

/// Runs one bolt; returns the process exit code.
pub async fn run(mut settings: Settings, args: RunArgs) -> Result<u8, CliError> {
    // The user's own process takes any folder they name, except the data directory (importing
    // it, or a folder holding it, would copy the database and recurse into its own imports).
    let repo = RepoAccess::anywhere()
        .admit(&args.repo, &settings.storage.data_dir)
        .map_err(|e| CliError::BadInput(format!("--repo {}: {e}", args.repo.display())))?;
    let text = std::fs::read_to_string(&args.issue)
        .map_err(|e| CliError::BadInput(format!("--issue {}: {e}", args.issue.display())))?;
    let (title, body) =
        parse_issue(&text).map_err(|e| CliError::BadInput(format!("--issue: {e}")))?;
    let new = RunRequest {
        repo: repo.display().to_string(),
        issue_number: args.issue_number,
        title: Some(title),
        body: Some(body),
        priority: args.priority,
        autonomy: args.autonomy.map(Into::into),
        budget_usd: args.budget_usd,
    }
    .validate()
    .map_err(|e| CliError::BadInput(e.to_string()))?;

    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    if let Some(banner) = crate::offline::ensure_llm(&mut settings, &tracker, &shutdown).await? {
        eprintln!("{banner}");
    }
    let store = open_store(&settings).await?;
    // `atlasia run` works on local repositories; the user's own process may name any folder.
    let reach = Reach {
        github: None,
        repos: RepoAccess {
            roots: None,
            import: settings.import_limits(),
        },
    };
    let engine =
        atlasia_server::compose::engine(&settings, &store, &tracker, shutdown.clone(), reach)
            .await
            .map_err(|e| match e {
                StartError::Setup(why) => CliError::BadInput(why),
                other => other.into(),
            })?;
    preflight(&engine.gateway).await?;
    let run = store.create_run(&new).await.map_err(|e| match e {
        StoreError::RunActive(id) => CliError::BadInput(format!(
            "--issue-number: run {} of this repository and issue is still active; cancel it or let it finish first",
            id.as_deref().unwrap_or("(finished meanwhile)")
        )),
        other => other.into(),
    })?;
    eprintln!(
        "bolt {} on {} (branch {})",
        run.id,
        repo.display(),
        branch_name(run.issue_number, &run.id.to_string())
    );
    let owner = format!("cli-{}-{}", std::process::id(), Timestamp::now().0);
    let worker = Worker::new(
        store.clone(),
        engine.gateway,
        engine.contracts,
        engine.workers,
        owner,
    );

    // Ctrl-C stops the step and hands the run back to the queue (a server resumes it).
    let interrupt = CancellationToken::new();
    let trigger = interrupt.clone();
    tokio::spawn(async move {
        atlasia_server::shutdown_signal().await;
        trigger.cancel();
    });
    let progress = tracker.spawn(watch(store.clone(), run.id, shutdown.child_token()));
    let driven = worker.drive_one(run.id, &tracker, &interrupt).await;
    shutdown.cancel();
    tracker.close();
    // The ledger writer drains before the summary reads the cost.
    tracker.wait().await;
    let _ = progress.await;
    driven?;
    let run = store.get_run(run.id).await?;
    let code = summary(&store, &run).await?;
    store.close().await;
    Ok(code)
}

/// Updates a spinner line from the run's events until `stop`.
async fn watch(store: Store, id: RunId, stop: CancellationToken) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    // A hidden bar (no terminal) drops its lines: print them plainly then.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let started = Instant::now();
    let mut after = 0;
    let (mut step, mut detail) = (String::from("queued"), String::new());
    let (mut tokens, mut cost, mut loops) = (0u64, 0f64, 0u64);
    loop {
        if let Ok(events) = store.events(id, after, 500).await {
            for e in events {
                after = e.seq;
                let d = &e.data;
                match e.kind.as_str() {
                    "step_started" => {
                        step = d["step"].as_str().unwrap_or("?").to_owned();
                        detail.clear();
                    }
                    "llm_call_completed" => {
                        tokens += d["tokens_in"].as_u64().unwrap_or(0)
                            + d["tokens_out"].as_u64().unwrap_or(0);
                        cost += d["cost_usd"].as_f64().unwrap_or(0.0);
                    }
                    "tool_called" => {
                        detail = format!(
                            "{} {}",
                            d["tool"].as_str().unwrap_or(""),
                            d["target"].as_str().unwrap_or("")
                        );
                    }
                    // A step waiting out an LLM outage says why and for how long, once per wait.
                    "llm_call_failed" if d["retry_in_ms"].is_u64() => {
                        let secs = d["retry_in_ms"].as_u64().unwrap_or(0).div_ceil(1000);
                        let why = d["error"].as_str().unwrap_or("unavailable");
                        detail = format!("waiting for the LLM, retry in {secs}s");
                        say(format!("  … waiting for the LLM: {why}, retry in {secs}s"));
                    }
                    "loop_back" => {
                        loops += 1;
                        say(format!(
                            "  ↺ loop-back {} → DEVELOPER: {}",
                            d["from"].as_str().unwrap_or("?"),
                            d["reason"].as_str().unwrap_or("")
                        ));
                    }
                    "step_completed" => {
                        // One line per step: the per-persona and per-voter artifacts are
                        // summed up by `review` and `judge_decision`.
                        if let Some(a) = d["artifact"]
                            .as_str()
                            .filter(|a| !matches!(*a, "persona_review" | "judge_verdict"))
                        {
                            say(format!(
                                "  ✓ {} → {a} v{}",
                                d["step"].as_str().unwrap_or("?"),
                                d["version"]
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        bar.set_message(format!(
            "{step:<9} loops {loops} · {tokens} tokens · ${cost:.4} {detail}"
        ));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.cancelled() => break,
        }
    }
    bar.finish_and_clear();
    eprintln!("finished in {:.1} s", started.elapsed().as_secs_f64());
}

/// Prints the outcome; returns the exit code.
async fn summary(store: &Store, run: &Run) -> Result<u8, CliError> {
    let totals = store.llm_totals(Some(&run.id.to_string())).await?;
    let latest = |kind: &'static str| store.latest_artifact(run.id, kind);
    println!("status:   {}", run.status.as_str());
    println!("run:      {}", run.id);
    if let Some(pr) = store.get_pull_request(&run.id.to_string()).await? {
        println!("branch:   {} (into {})", pr.head, pr.base);
        if let Some(repo) = pr_repository(store, run).await? {
            println!("repo:     {repo}");
        }
        println!("PR:       {}", pr.title);
        println!("diff:\n{}", indent(&pr.diff_stat));
    } else {
        println!(
            "branch:   {}",
            branch_name(run.issue_number, &run.id.to_string())
        );
    }
    match latest("test_report").await? {
        Some(t) => {
            let label = match atlasia_engine::steps::test_status(&t.payload) {
                "passed" => "passed",
                "not_run" => "untested",
                _ => "FAILED",
            };
            println!(
                "tests:    {label} — {}",
                t.payload["summary"].as_str().unwrap_or("")
            );
            // The evidence exactly: each command, its result and duration, where it came from.
            for line in atlasia_engine::steps::evidence(&t.payload) {
                println!("  evidence: {line}");
            }
        }
        None => println!("tests:    untested — no test report (the bolt stopped before TESTER)"),
    }
    println!(
        "cost:     ${:.4} ({} LLM calls, {} tokens in, {} out)",
        totals.cost_usd, totals.calls, totals.tokens_in, totals.tokens_out
    );
    Ok(match run.status {
        RunStatus::Done => 0,
        RunStatus::Escalated => {
            if let Some(e) = latest("escalation").await? {
                print_escalation(run, &e.payload);
            }
            EXIT_NEEDS_HUMAN
        }
        RunStatus::WaitingGate => {
            let gate = atlasia_core::Gate::ALL
                .into_iter()
                .find(|g| run.current_step.as_deref() == Some(g.then().as_str()))
                .unwrap_or(atlasia_core::Gate::ArchitectureApproval)
                .as_str();
            println!(
                "waiting:  at the {gate} gate. Start `atlasia serve` and answer with\n          \
                 POST /api/runs/{}/gates/{gate}/respond {{\"decision\":\"approve\"}}",
                run.id
            );
            EXIT_NEEDS_HUMAN
        }
        _ => {
            if let Some(e) = &run.error {
                println!("error:    {e}");
            }
            1
        }
    })
}

/// Where the branch lives (the scratch import for a plain folder).
async fn pr_repository(store: &Store, run: &Run) -> Result<Option<String>, CliError> {
    let events = store.events(run.id, 0, 10_000).await?;
    Ok(events
        .iter()
        .rev()
        .find(|e| e.kind == "pull_request_updated")
        .and_then(|e| e.data["repository"].as_str().map(str::to_owned)))
}

fn print_escalation(run: &Run, e: &Value) {
    println!("ESCALATED: {}", e["blocker"].as_str().unwrap_or("?"));
    if let Some(code) = e["reason"].as_str() {
        println!("reason:   {code}");
    }
    println!("context:  {}", e["context"].as_str().unwrap_or(""));
    for o in e["options"].as_array().into_iter().flatten() {
        println!(
            "  option {}: {}",
            o["id"].as_str().unwrap_or("?"),
            o["description"].as_str().unwrap_or("")
        );
    }
    println!(
        "recommendation: {}\ndecide with `atlasia serve` and POST /api/runs/{}/escalation-decision \
         {{\"decision\":\"PROCEED|ABORT\",\"guidance\":\"…\"}}",
        e["recommendation"].as_str().unwrap_or("?"),
        run.id
    );
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {}", l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_parse_title_and_body() {
        let (t, b) = parse_issue("\n# Add mul\n\nBody line\n").unwrap_or_default();
        assert_eq!((t.as_str(), b.as_str()), ("Add mul", "Body line"));
        assert!(parse_issue("").is_err());
        assert!(parse_issue("#\nbody").is_err());
    }
}
