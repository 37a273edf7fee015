//! The one composition root of the engine: `serve` and `atlasia run` build the LLM gateway,
//! the agent contracts, the sandbox and the workers' configuration here, so a setting means the
//! same thing in both. Only what each surface may reach differs ([`Reach`]).

use crate::{Settings, StartError};
use atlasia_engine::contracts::Contracts;
use atlasia_engine::forge::RepoAccess;
use atlasia_engine::ledger::StoreRecorder;
use atlasia_engine::policy::PathPolicy;
use atlasia_engine::sandbox::Sandbox;
use atlasia_engine::worker::WorkerConfig;
use atlasia_github::{CheckWait, GithubClient};
use atlasia_llm::Gateway;
use atlasia_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What bolts built here may reach.
pub struct Reach {
    /// GitHub, when configured: runs on `owner/name` go there.
    pub github: Option<(GithubClient, CheckWait)>,
    /// Which local repositories bolts may work on.
    pub repos: RepoAccess,
}

/// The engine's parts, ready for workers.
pub struct Engine {
    pub gateway: Arc<Gateway>,
    pub contracts: Arc<Contracts>,
    pub workers: WorkerConfig,
}

/// Builds the engine on `store`: the gateway's call ledger is written by a task on `tracker`
/// until `stop`; the day budget is seeded from the ledger; the sandbox is probed.
pub async fn engine(
    settings: &Settings,
    store: &Store,
    tracker: &TaskTracker,
    stop: CancellationToken,
    reach: Reach,
) -> Result<Engine, StartError> {
    let recorder = StoreRecorder::spawn(store.clone(), tracker, stop);
    let gateway = Gateway::new(&settings.llm, settings.agents.clone(), Arc::new(recorder))
        .map_err(|e| StartError::Setup(format!("LLM settings: {e}")))?;
    if !gateway.is_configured() {
        tracing::info!("no LLM configured: /v1 answers 503 until [llm] or LLM_ENDPOINT is set");
    }
    // The day cap counts what was spent since midnight, also before this process started.
    let spent = atlasia_engine::ledger::seed_today(store, gateway.budgets()).await?;
    tracing::info!(spent_today_usd = spent, "day budget seeded from llm_calls");
    let contracts =
        Contracts::embedded().map_err(|e| StartError::Setup(format!("agent contracts: {e}")))?;
    let workers = WorkerConfig {
        lease: Duration::from_millis(settings.engine.lease_ms),
        poll: Duration::from_millis(settings.engine.poll_ms),
        data_dir: settings.storage.data_dir.clone(),
        limits: atlasia_engine::steps::BoltLimits {
            output_tokens: settings.agent_output_tokens(),
            ..settings.engine.limits()
        },
        // The server's own secrets may never be written into a repository.
        policy: PathPolicy::from_env().with_known_secrets(store.redactor().clone()),
        github: reach.github,
        sandbox: Sandbox::start(settings.sandbox_config()).await,
        repos: reach.repos,
        simulator: settings.llm.simulator,
    };
    let gateway = Arc::new(gateway);
    // The endpoints' own word on their context sizes (llama-server's `n_ctx`, vLLM's
    // `max_model_len`), learnt in the background; until then only configured sizes apply.
    let probing = gateway.clone();
    tracker.spawn(async move {
        for p in probing.probe().await {
            if !p.result.is_ok() {
                tracing::warn!(endpoint = %p.endpoint, "{p}");
            }
        }
    });
    Ok(Engine {
        gateway,
        contracts: Arc::new(contracts),
        workers,
    })
}
