//! Workers: each claims a run from the queue, heartbeats its lease in the background and drives
//! the run through the pipeline from its `current_step` (so a reclaimed run resumes after its
//! last completed step). Losing the lease — expiry, pause, cancel — cancels the step in progress;
//! pause is also checked between steps.
//!
//! The pipeline is partial: after ARCHITECT a run with autonomy `confirm` waits at the
//! `architecture_approval` gate (WAITING_GATE), as the design says; any other run is failed
//! with an explicit "not implemented yet" error rather than reported DONE without code.

use crate::contracts::Contracts;
use crate::steps::{AGENT_STEPS, AgentOutcome, FIRST_STEP, NOT_IMPLEMENTED, next_step, run_agent};
use atlasia_core::{Autonomy, Run, RunId, RunStatus};
use atlasia_llm::Gateway;
use atlasia_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The error a run gets when it reaches the first step that does not exist yet.
pub const NOT_IMPLEMENTED_ERROR: &str =
    "pipeline stops after ARCHITECT: DEVELOPER is not implemented yet";

/// How workers hold and look for runs.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Lease length; heartbeats run every third of it.
    pub lease: Duration,
    /// Wait between claims when the queue is empty.
    pub poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
        }
    }
}

/// What a worker needs; shared by all workers of a pool.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    gateway: Arc<Gateway>,
    contracts: Arc<Contracts>,
    config: WorkerConfig,
    /// This worker's lease owner name, unique per process and worker.
    owner: String,
}

/// A set of workers running on a tracker until `shutdown`.
pub struct WorkerPool;

impl WorkerPool {
    /// Starts `n` workers on `tracker`; they stop when `shutdown` is cancelled (a step in
    /// progress is abandoned; its lease expires and another worker resumes it).
    pub fn spawn(
        n: usize,
        store: Store,
        gateway: Arc<Gateway>,
        contracts: Arc<Contracts>,
        config: WorkerConfig,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        // The pid and start time tell processes apart (also across restarts of one host).
        let stamp = atlasia_core::Timestamp::now().0;
        for i in 0..n {
            let worker = Worker {
                store: store.clone(),
                gateway: gateway.clone(),
                contracts: contracts.clone(),
                config,
                owner: format!("worker-{}-{stamp}-{i}", std::process::id()),
            };
            let stop = shutdown.clone();
            let tasks = tracker.clone();
            tracker.spawn(async move { worker.run(&tasks, stop).await });
        }
    }
}

impl Worker {
    /// Claims and drives runs until `shutdown`.
    pub async fn run(self, tracker: &TaskTracker, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let claimed = tokio::select! {
                c = self.store.claim(&self.owner, self.config.lease) => c,
                () = shutdown.cancelled() => break,
            };
            match claimed {
                Ok(Some(claim)) => {
                    tracing::info!(run = %claim.run.id, owner = %self.owner,
                        reclaimed = claim.reclaimed, step = ?claim.run.current_step, "claimed run");
                    if let Err(e) = self.drive(claim.run, tracker, &shutdown).await {
                        // The lease expires and the run is reclaimed; nothing else to do here.
                        tracing::warn!(owner = %self.owner, error = %e, "run abandoned");
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(owner = %self.owner, error = %e, "claim failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }

    /// Runs the claimed run's steps under a heartbeat; returns when the run left RUNNING, the
    /// lease was lost or shutdown began.
    async fn drive(
        &self,
        run: Run,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let held = shutdown.child_token();
        let beat = tracker.spawn(heartbeat(
            self.store.clone(),
            run.id,
            self.owner.clone(),
            self.config.lease,
            held.clone(),
        ));
        let id = run.id;
        let result = self.steps(run, &held).await;
        held.cancel();
        // The heartbeat only ends on `held`; its result carries nothing.
        let _ = beat.await;
        if shutdown.is_cancelled() {
            // Hand the run back now rather than after the lease expires, so the next process
            // resumes it at once; a no-op if the run already left our hands.
            let requeued = self
                .store
                .release(id, &self.owner, RunStatus::Pending, "worker shutdown")
                .await;
            if let Err(e) = requeued {
                tracing::warn!(run = %id, error = %e, "could not requeue on shutdown");
            }
        }
        result
    }

    async fn steps(&self, claimed: Run, held: &CancellationToken) -> Result<(), StoreError> {
        let id = claimed.id;
        loop {
            if held.is_cancelled() {
                return Ok(());
            }
            // Re-read between steps: a pause or cancel since the last step ends the work here.
            let run = self.store.get_run(id).await?;
            if run.status != RunStatus::Running || run.lease_owner.as_deref() != Some(&self.owner) {
                tracing::info!(run = %id, status = %run.status.as_str(), "run left our hands");
                return Ok(());
            }
            let step = run
                .current_step
                .clone()
                .unwrap_or_else(|| FIRST_STEP.into());
            let Some((_, agent)) = AGENT_STEPS.iter().find(|(s, _)| *s == step) else {
                let error = if step == NOT_IMPLEMENTED {
                    NOT_IMPLEMENTED_ERROR.to_owned()
                } else {
                    format!("unknown step '{step}'")
                };
                self.store.fail_run(id, &self.owner, &error).await?;
                return Ok(());
            };
            let Some(contract) = self.contracts.agent(agent) else {
                let error = format!("no agent contract '{agent}' for step {step}");
                self.store.fail_run(id, &self.owner, &error).await?;
                return Ok(());
            };
            let Some(run) = self.store.start_step(id, &self.owner, &step).await? else {
                return Ok(());
            };
            let user = match crate::steps::inputs(&self.store, &run, contract).await {
                Ok(u) => u,
                Err(crate::steps::StepError::Store(e)) => return Err(e),
            };
            let outcome =
                run_agent(&self.gateway, &self.contracts, &run, contract, user, held).await;
            match outcome {
                AgentOutcome::Cancelled => return Ok(()),
                AgentOutcome::Failed(error) => {
                    tracing::warn!(run = %id, %step, %error, "step failed");
                    self.store.fail_run(id, &self.owner, &error).await?;
                    return Ok(());
                }
                AgentOutcome::Artifact(payload) => {
                    let kind = contract.output.as_deref().unwrap_or_default();
                    let next = next_step(&step);
                    let done = self
                        .store
                        .complete_step(id, &self.owner, &step, kind, &payload, next)
                        .await?;
                    let Some(done) = done else { return Ok(()) };
                    tracing::info!(run = %id, %step, kind, "step completed");
                    if step == "ARCHITECT" && done.autonomy == Autonomy::Confirm {
                        self.gate(id, "architecture_approval").await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Parks the run at `gate` (WAITING_GATE) and gives up the lease.
    async fn gate(&self, id: RunId, gate: &str) -> Result<(), StoreError> {
        let reason = format!("gate {gate}");
        self.store
            .release(id, &self.owner, RunStatus::WaitingGate, &reason)
            .await?;
        Ok(())
    }
}

/// Extends the lease every third of its length until `held` is cancelled; cancels `held` when
/// the lease is lost so the step in progress stops at once.
async fn heartbeat(
    store: Store,
    id: RunId,
    owner: String,
    lease: Duration,
    held: CancellationToken,
) {
    let every = lease / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = held.cancelled() => return,
        }
        match store.heartbeat(id, &owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(run = %id, %owner, "lease lost; stopping the step");
                held.cancel();
                return;
            }
            // A transient database error: keep the step going; the next beat may succeed
            // before the lease runs out.
            Err(e) => tracing::warn!(run = %id, error = %e, "heartbeat failed"),
        }
    }
}
