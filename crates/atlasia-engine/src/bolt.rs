//! The driver of a bolt: runs the claimed run's current step ([`crate::steps`]), asks the
//! pipeline's state machine ([`atlasia_core::pipeline::next`]) where the bolt goes, and writes
//! the step's end — artifacts, step row, events, loop counters, next step and any status
//! change — in one lease-guarded transaction. It goes on in the same worker until the run
//! leaves RUNNING (done, failed, escalated, at a gate, paused, cancelled) or the lease is lost.

use crate::contracts::Contracts;
use crate::ctx::StepCtx;
use crate::error::EngineError;
use crate::steps::{self, Env, StepOutput};
use atlasia_core::pipeline::{self, Transition};
use atlasia_core::{
    Edge, EscalationReason, EventKind, Loops, Outcome, Run, RunId, RunStatus, Step,
};
use atlasia_llm::Gateway;
use atlasia_store::{StepEnd, Store, StoreError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the driver needs; borrowed from the worker that holds the lease.
pub struct Driver<'a> {
    pub store: &'a Store,
    pub gateway: &'a Gateway,
    pub contracts: &'a Contracts,
    pub env: &'a Env,
    /// The lease holder.
    pub owner: &'a str,
}

impl Driver<'_> {
    /// Runs run `id`'s steps from its `current_step` while this worker holds it; returns when
    /// the run left RUNNING, `held` was cancelled, or the database failed (the caller decides
    /// whether that is worth another attempt).
    pub async fn steps(&self, id: RunId, held: &CancellationToken) -> Result<(), StoreError> {
        loop {
            if held.is_cancelled() {
                return Ok(());
            }
            // Re-read between steps: a pause or cancel since the last step ends the work here.
            let run = self.store.get_run(id).await?;
            if run.status != RunStatus::Running || run.lease_owner.as_deref() != Some(self.owner) {
                tracing::info!(run = %id, status = %run.status.as_str(), "run left our hands");
                return Ok(());
            }
            let step = match run.current_step.as_deref().map(str::parse::<Step>) {
                None => Step::FIRST,
                Some(Ok(step)) => step,
                Some(Err(e)) => {
                    self.store.fail_run(id, self.owner, &e.to_string()).await?;
                    return Ok(());
                }
            };
            let Some(run) = self.store.start_step(id, self.owner, step.as_str()).await? else {
                return Ok(());
            };
            let ctx = StepCtx {
                store: self.store,
                gateway: self.gateway,
                contracts: self.contracts,
                run: &run,
                owner: self.owner,
                step,
                cancel: held,
                limits: &self.env.limits,
                simulator: self.env.simulator,
            };
            let started = std::time::Instant::now();
            let result = steps::execute(&ctx, self.env).await;
            metrics::histogram!("workflow_step_duration_seconds", "agent" => step.as_str())
                .record(started.elapsed().as_secs_f64());
            // The step's calls are in the ledger before the step's end rolls up the run's cost
            // (and, at the bolt's end, observes `llm_cost_per_bolt`).
            self.gateway.flush_records().await;
            let output = match result {
                Ok(output) => output,
                // Nothing is written: whoever holds the run next resumes this step.
                Err(EngineError::Cancelled) => return Ok(()),
                // The caller retries a passing database fault (the lease expires and the run
                // is reclaimed) and fails the run on a permanent one.
                Err(EngineError::Store(e)) => return Err(e),
                Err(EngineError::Budget(note)) => StepOutput {
                    outcome: Outcome::Blocked(EscalationReason::Budget),
                    artifacts: Vec::new(),
                    events: Vec::new(),
                    note,
                },
                // A model that cannot produce a valid answer is a human's call (another model,
                // guidance), not a dead bolt.
                Err(EngineError::Invalid(note)) => StepOutput {
                    outcome: Outcome::Blocked(EscalationReason::InvalidOutput),
                    artifacts: Vec::new(),
                    events: Vec::new(),
                    note,
                },
                Err(e) => StepOutput {
                    outcome: Outcome::Failed,
                    artifacts: Vec::new(),
                    events: Vec::new(),
                    note: e.to_string(),
                },
            };
            let goes_on = self.record(&run, step, output).await?;
            // The GitHub progress comment follows every step (runs on GitHub only).
            if let Some(gh) = self.env.github.as_deref() {
                crate::progress::report(self.store, gh, id).await;
            }
            if !goes_on {
                return Ok(());
            }
        }
    }

    /// Routes a step's output through the state machine and writes it; `true` when the run
    /// goes on to another step in this worker.
    async fn record(&self, run: &Run, step: Step, out: StepOutput) -> Result<bool, StoreError> {
        let id = run.id;
        let loops = Loops {
            review: u32::try_from(run.review_loops).unwrap_or(0),
            fix: u32::try_from(run.fix_loops).unwrap_or(0),
        };
        let bounds = self.env.limits.bounds();
        let transition = pipeline::next(step, out.outcome, loops, bounds, run.autonomy);
        let StepOutput {
            outcome,
            mut artifacts,
            mut events,
            note,
        } = out;
        let mut step_status = "DONE";
        let mut next_step = None;
        let mut new_loops = None;
        let mut release: Option<(RunStatus, String)> = None;
        match transition {
            Transition::Fail => {
                let error = if outcome == Outcome::Failed {
                    note
                } else {
                    format!("step {step} ended with {outcome:?}, which it cannot report")
                };
                tracing::warn!(run = %id, %step, %error, "step failed");
                self.gateway.budgets().forget_run(&id.to_string());
                self.store.fail_run(id, self.owner, &error).await?;
                self.cleanup(run).await;
                return Ok(false);
            }
            Transition::Next(next) => next_step = Some(next),
            Transition::LoopBack(edge) => {
                events.push((
                    EventKind::LoopBack,
                    json!({"edge": edge.as_str(), "from": step, "to": Edge::TO,
                           "count": loops.taken(edge).saturating_add(1),
                           "max": bounds.of(edge), "reason": note}),
                ));
                let after = loops.after(edge);
                next_step = Some(Edge::TO);
                new_loops = Some((i64::from(after.review), i64::from(after.fix)));
            }
            Transition::Gate(gate) => {
                events.push((
                    EventKind::GateOpened,
                    json!({"gate": gate.as_str(), "step": gate.then()}),
                ));
                next_step = Some(gate.then());
                release = Some((RunStatus::WaitingGate, format!("gate {}", gate.as_str())));
            }
            Transition::Escalate { reason, resume } => {
                let blocker = if reason == EscalationReason::LoopBound {
                    let edge = Edge::ReviewToDeveloper;
                    format!(
                        "{note}; the {} loop-back bound ({}) is used up",
                        edge.as_str(),
                        bounds.of(edge)
                    )
                } else {
                    note
                };
                let escalation = match self.escalation(run, step, reason, resume, &blocker) {
                    Ok(payload) => payload,
                    Err(error) => {
                        self.store.fail_run(id, self.owner, &error).await?;
                        return Ok(false);
                    }
                };
                artifacts.push(("escalation".into(), escalation));
                events.push((
                    EventKind::Escalated,
                    json!({"step": step, "reason": blocker, "code": reason,
                           "resume_step": resume}),
                ));
                // PROCEED resumes at `resume` with fresh loop-back bounds; the escalation
                // artifact keeps the counts that led here.
                step_status = "ESCALATED";
                next_step = Some(resume);
                new_loops = Some((0, 0));
                release = Some((RunStatus::Escalated, blocker));
            }
            Transition::Done => release = Some((RunStatus::Done, "pull request ready".into())),
        }
        if release.is_some() {
            // The bolt leaves this worker: its spend is no longer tracked here (whoever drives
            // it next seeds it again from the ledger), and watchers that see the new status
            // see the ledger gone too.
            self.gateway.budgets().forget_run(&id.to_string());
        }
        let end = StepEnd {
            step: step.as_str(),
            step_status,
            artifacts: artifacts.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            next_step: next_step.map(Step::as_str),
            loops: new_loops,
            events,
            release: release.as_ref().map(|(s, why)| (*s, why.as_str())),
        };
        let written = self.store.end_step(id, self.owner, &end).await?.is_some();
        tracing::info!(run = %id, %step, ?transition, "step completed");
        if written && transition == Transition::Done {
            tracing::info!(run = %id, "bolt done");
            self.cleanup(run).await;
        }
        Ok(written && release.is_none())
    }

    /// The `escalation` artifact: what stopped the bolt, and the two answers a human has.
    fn escalation(
        &self,
        run: &Run,
        step: Step,
        reason: EscalationReason,
        resume: Step,
        blocker: &str,
    ) -> Result<Value, String> {
        let payload = json!({
            "reason": reason,
            "context": format!(
                "Run {} on {} stopped at {step} ({} review loop-back(s), {} fix loop-back(s) so \
                 far). Stopped by {}.",
                run.id, run.repo, run.review_loops, run.fix_loops, stopped_by(reason)),
            "blocker": blocker,
            "options": [
                {"id": "proceed",
                 "description": format!("PROCEED with guidance: the bolt resumes at {resume} with \
                                 the branch as it is, reading your guidance first; loop-back \
                                 bounds start afresh."),
                 "consequence": "More LLM cost; the bolt reviews and tests again before the PR."},
                {"id": "abort",
                 "description": "ABORT: stop the bolt here; the branch keeps the work done so far.",
                 "consequence": "The run ends FAILED; no pull request is opened."},
            ],
            "recommendation": "proceed",
        });
        self.contracts
            .validate("escalation", &payload)
            .map(|()| payload)
            .map_err(|issues| {
                let detail: Vec<String> = issues.iter().map(ToString::to_string).collect();
                format!("escalation artifact invalid: {}", detail.join("; "))
            })
    }

    /// Removes a finished bolt's worktree (its branch stays); failures are only logged.
    async fn cleanup(&self, run: &Run) {
        let forge = self.env.forge.clone();
        let id = run.id.to_string();
        let span = tracing::Span::current();
        let removed = tokio::task::spawn_blocking(move || {
            span.in_scope(|| match forge.existing(&id) {
                Some(ws) => forge.remove(&ws),
                None => Ok(()),
            })
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(run = %run.id, error = %e, "could not remove the worktree");
        }
    }
}

/// What stopped the bolt, for the escalation's context.
fn stopped_by(reason: EscalationReason) -> &'static str {
    match reason {
        EscalationReason::NoChange => "the no-change rule",
        EscalationReason::Untested | EscalationReason::TestsFailed => "the judges' evidence rule",
        EscalationReason::JudgeVeto => "a judge veto",
        EscalationReason::LoopBound => "the loop-back bound",
        EscalationReason::Budget => "the LLM budget",
        EscalationReason::Policy => "the path policy",
        EscalationReason::Developer => "the developer step (a protected write or the budget)",
        EscalationReason::Sandbox => "the sandbox",
        EscalationReason::InvalidOutput => "an agent whose answers stayed invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_escalation_is_a_valid_artifact() {
        let contracts = Contracts::embedded().unwrap_or_else(|e| panic!("{e}"));
        for reason in EscalationReason::ALL {
            let payload = json!({
                "reason": reason,
                "context": format!("Stopped by {}.", stopped_by(reason)),
                "blocker": "b",
                "options": [
                    {"id": "proceed", "description": "d", "consequence": "c"},
                    {"id": "abort", "description": "d", "consequence": "c"}],
                "recommendation": "proceed",
            });
            assert!(
                contracts.validate("escalation", &payload).is_ok(),
                "{reason}: the schema's reason enum lists every code"
            );
        }
    }

    #[test]
    fn the_judges_read_the_diff_and_the_test_report() {
        let c = Contracts::embedded().unwrap_or_else(|e| panic!("{e}"));
        let judge = c
            .agent("judge")
            .unwrap_or_else(|| panic!("no judge contract"));
        for input in ["diff", "test_report"] {
            assert!(judge.inputs.iter().any(|i| i == input), "{input}");
        }
    }
}
