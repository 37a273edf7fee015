//! Workers: each claims a run from the queue, heartbeats its lease in the background and hands
//! the run to the bolt driver ([`crate::bolt`]), which resumes it at its `current_step` (so a
//! reclaimed run resumes after its last completed step). Losing the lease — expiry, pause,
//! cancel — cancels the step in progress.

use crate::bolt::Driver;
use crate::contracts::Contracts;
use crate::forge::github::GithubForge;
use crate::forge::{LocalForge, RepoAccess};
use crate::policy::PathPolicy;
use crate::sandbox::Sandbox;
use crate::steps::{BoltLimits, Env};
use atlasia_core::{Run, RunId, RunStatus};
use atlasia_llm::Gateway;
use atlasia_store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How workers hold and look for runs, and where bolts keep their worktrees.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Lease length; heartbeats run every third of it.
    pub lease: Duration,
    /// Wait between claims when the queue is empty.
    pub poll: Duration,
    /// Worktrees, imports and build caches live under it.
    pub data_dir: PathBuf,
    /// Loop bounds, sandbox limits, developer budget.
    pub limits: BoltLimits,
    /// Where writes may go.
    pub policy: PathPolicy,
    /// GitHub, when configured: the client and how long to wait for check runs.
    pub github: Option<(atlasia_github::GithubClient, atlasia_github::CheckWait)>,
    /// Where every command of a bolt runs (probed at start: [`Sandbox::start`]).
    pub sandbox: Sandbox,
    /// Which local repositories bolts may work on (re-checked when a worktree is prepared),
    /// and the import caps.
    pub repos: RepoAccess,
    /// The LLM is the built-in simulator (`[llm] simulator`): agents see `atlasia-sim` scripts.
    pub simulator: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            data_dir: PathBuf::from("data"),
            limits: BoltLimits::default(),
            policy: PathPolicy::from_env(),
            github: None,
            sandbox: Sandbox::default(),
            repos: RepoAccess::anywhere(),
            simulator: false,
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
    env: Arc<Env>,
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
        // Runs enqueued by other processes (PostgreSQL NOTIFY) wake these workers at once.
        let (listen_store, stop) = (store.clone(), shutdown.clone());
        tracker.spawn(async move {
            listen_store
                .forward_queue_notifications(stop.cancelled_owned())
                .await;
        });
        let first = Worker::new(store, gateway, contracts, config, String::new());
        for i in 0..n {
            let worker = Worker {
                owner: format!("worker-{}-{stamp}-{i}", std::process::id()),
                ..first.clone()
            };
            let stop = shutdown.clone();
            let tasks = tracker.clone();
            tracker.spawn(async move { worker.run(&tasks, stop).await });
        }
    }
}

impl Worker {
    /// A worker named `owner` (unique among all processes sharing the database).
    pub fn new(
        store: Store,
        gateway: Arc<Gateway>,
        contracts: Arc<Contracts>,
        config: WorkerConfig,
        owner: String,
    ) -> Self {
        let github = config
            .github
            .clone()
            .map(|(client, wait)| Arc::new(GithubForge::new(client, wait, &config.data_dir)));
        let env = Arc::new(Env {
            forge: Arc::new(LocalForge::with_access(
                &config.data_dir,
                config.repos.clone(),
            )),
            github,
            policy: config.policy.clone(),
            limits: config.limits.clone(),
            // Verify commands run in the worktree: a relative path would resolve there.
            cache_dir: std::path::absolute(&config.data_dir)
                .unwrap_or_else(|_| config.data_dir.clone())
                .join("cache"),
            sandbox: config.sandbox.clone(),
            simulator: config.simulator,
        });
        Self {
            store,
            gateway,
            contracts,
            config,
            env,
            owner,
        }
    }

    /// Claims run `id` and drives it until it leaves RUNNING (done, failed, escalated, at a
    /// gate, paused, cancelled) or `shutdown`; `false` when the run was not claimable.
    pub async fn drive_one(
        &self,
        id: RunId,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let Some(claim) = self
            .store
            .claim_run(id, &self.owner, self.config.lease)
            .await?
        else {
            return Ok(false);
        };
        let span = tracing::info_span!("run", run = %id);
        self.drive(claim.run, tracker, shutdown)
            .instrument(span)
            .await?;
        Ok(true)
    }

    /// Claims and drives runs until `shutdown`.
    pub async fn run(self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let mut queued = self.store.queue_signal();
        while !shutdown.is_cancelled() {
            let claimed = tokio::select! {
                c = self.store.claim(&self.owner, self.config.lease) => c,
                () = shutdown.cancelled() => break,
            };
            match claimed {
                Ok(Some(claim)) => {
                    // Every line logged while driving the run names it.
                    let span = tracing::info_span!("run", run = %claim.run.id);
                    async {
                        tracing::info!(run = %claim.run.id, owner = %self.owner,
                            reclaimed = claim.reclaimed, step = ?claim.run.current_step,
                            "claimed run");
                        let id = claim.run.id;
                        if let Err(e) = self.drive(claim.run, tracker, &shutdown).await {
                            // The lease expires and the run is reclaimed (at most
                            // `engine.max_attempts` times at one step).
                            tracing::warn!(run = %id, owner = %self.owner, error = %e,
                                "run abandoned");
                        }
                    }
                    .instrument(span)
                    .await;
                }
                Ok(None) => {
                    // Woken at once by a run enqueued in this process; by the poll otherwise.
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll) => {}
                        _ = queued.changed() => {}
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
        let beat = tracker.spawn(
            heartbeat(
                self.store.clone(),
                run.id,
                self.owner.clone(),
                self.config.lease,
                held.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        let id = run.id;
        self.progress(id).await;
        self.seed_budget(id).await;
        let driver = Driver {
            store: &self.store,
            gateway: &self.gateway,
            contracts: &self.contracts,
            env: &self.env,
            owner: &self.owner,
        };
        let result = match driver.steps(id, &held).await {
            // A write the database refuses will be refused again: retrying it after every
            // lease would loop forever, so the run fails with the reason instead.
            Err(e) if !e.is_retryable() => {
                let error = format!("the database refused to store this run's progress: {e}");
                tracing::error!(run = %id, error = %e, "unstorable step result; failing the run");
                self.store
                    .fail_run(id, &self.owner, &error)
                    .await
                    .map(|_| ())
            }
            other => other,
        };
        held.cancel();
        // The heartbeat only ends on `held`; its result carries nothing.
        let _ = beat.await;
        // Whoever drives the run next seeds its spend again from the ledger.
        self.gateway.budgets().forget_run(&id.to_string());
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

    /// Restores the run's spend from the `llm_calls` ledger, so its bolt budget holds across a
    /// restart or a move to another worker. A read failure leaves the budget as it was (logged).
    async fn seed_budget(&self, id: RunId) {
        let run = id.to_string();
        match self.store.llm_totals(Some(run.as_str())).await {
            Ok(t) => self.gateway.budgets().seed_run(&run, t.cost_usd),
            Err(e) => tracing::warn!(run = %id, error = %e, "could not read the run's spend"),
        }
    }

    /// Updates the GitHub progress comment (runs on GitHub only; best effort).
    async fn progress(&self, id: RunId) {
        if let Some(gh) = self.env.github.as_deref() {
            crate::progress::report(&self.store, gh, id).await;
        }
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
    // At most a second apart, so a cancel or pause stops the step promptly even with a long
    // lease (the beat is one small guarded update).
    let every = (lease / 3).min(Duration::from_secs(1));
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
