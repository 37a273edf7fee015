//! TESTER: the verify commands — `.atlasia.toml`'s alone, else the work plan's plus the
//! repository's own detected test command ([`crate::detect`]) — run in the sandbox; then the CI
//! checks on GitHub. The verdict is the exit codes', never a model's reading of them: a runner
//! that found no test is `not_run`. On a failure the tester agent explains it for the
//! Developer; whether the fix loop goes on is the state machine's call.

use super::agent::{inputs, run_agent};
use super::worktree::{
    blocking, build_env, build_writable, context, on_github, repo_config, repo_network, reports,
    workspace,
};
use super::{Env, StepOutput, the_agent};
use crate::ctx::StepCtx;
use crate::error::EngineError;
use crate::forge::Workspace;
use crate::sandbox::{CommandSpec, SandboxError, Status as SandboxStatus};
use atlasia_core::{EscalationReason, EventKind, Outcome, TestVerdict};
use atlasia_github::CheckOutcome;
use atlasia_store::StoreError;
use serde_json::{Value, json};
use std::time::Duration;

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

/// The `test_report` with its verdict.
fn report(verdict: TestVerdict, payload: Value) -> StepOutput {
    StepOutput::with(Outcome::Tested(verdict), "test_report", payload)
}

pub(super) async fn run(ctx: &StepCtx<'_>, env: &Env) -> Result<StepOutput, EngineError> {
    let ws = workspace(ctx, env).await?;
    let n = reports(ctx).await?;
    let config = repo_config(env, &ws).await;
    let (planned, selection) = select_commands(ctx, env, &ws, config.as_ref()).await?;
    let commands: Vec<String> = planned.iter().map(|p| p.command.clone()).collect();
    if commands.is_empty() {
        // Nothing can run: the report says so and the judges' evidence rule decides (a veto
        // unless the repository allows untested changes).
        let payload = json!({
            "status": "not_run",
            "passed": false,
            "commands": [],
            "selection": selection,
            "summary": format!("untested: no test command ran. {selection}"),
        });
        return Ok(report(TestVerdict::NotRun, payload));
    }
    if let SandboxStatus::Unavailable(why) = env.sandbox.status() {
        // Running the commands unisolated is the operator's call (`sandbox.mode = "none"`);
        // a PROCEED after fixing the sandbox runs the tests again.
        let reason = SandboxError::Unavailable(why.clone()).to_string();
        return Ok(StepOutput::blocked(
            EscalationReason::Sandbox,
            reason,
            Vec::new(),
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
            () = ctx.cancel.cancelled() => return Err(EngineError::Cancelled),
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
        let payload = json!({
            "status": "not_run",
            "passed": false,
            "commands": results,
            "selection": selection,
            "summary": format!(
                "untested: {} ran but found no tests. {selection}",
                commands.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ),
        });
        return Ok(report(TestVerdict::NotRun, payload));
    }
    let mut passed = results.iter().all(|r| r["exit_code"] == json!(0));
    let mut ci_note = None;
    if passed && let Some((gh, name)) = on_github(ctx, env) {
        let (forge, w) = (env.forge.clone(), ws.clone());
        let sha = blocking("reading the head commit", move || forge.head(&w)).await?;
        let outcome = tokio::select! {
            r = gh.checks(&name, &sha) => r,
            () = ctx.cancel.cancelled() => return Err(EngineError::Cancelled),
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
    let mut payload = if passed {
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
    if let Some(o) = payload.as_object_mut() {
        o.insert("passed".into(), json!(passed));
        o.insert(
            "status".into(),
            json!(if passed { "passed" } else { "failed" }),
        );
        o.insert("selection".into(), json!(selection));
        o.insert("commands".into(), json!(results));
    }
    if passed {
        return Ok(report(TestVerdict::Passed, payload));
    }
    let failing = results
        .iter()
        .find(|r| r["exit_code"] != json!(0))
        .and_then(|r| r["command"].as_str())
        .unwrap_or("a verify command");
    let mut out = report(TestVerdict::Failed, payload);
    out.note = format!("`{failing}` failed");
    Ok(out)
}

/// The tester agent's reading of a failure (root cause, files involved), or a plain summary
/// when the agent cannot answer: a failing test must reach the developer either way.
async fn tester_report(
    ctx: &StepCtx<'_>,
    ws: &Workspace,
    env: &Env,
    results: &[Value],
    n: i64,
) -> Result<Value, EngineError> {
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
    let Ok(contract) = the_agent(ctx) else {
        return Ok(plain());
    };
    let mut c = context(env, Some(ws), contract, n).await;
    c.test_log = Some(json!(results));
    let user = inputs(ctx.store, ctx.run, contract, &c).await?;
    Ok(match run_agent(ctx, contract, user).await {
        Ok(v) => v,
        Err(e @ EngineError::Store(_)) => return Err(e),
        Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
        Err(e) => {
            tracing::warn!(run = %ctx.run.id, error = %e, "tester agent failed; plain report");
            plain()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
