//! The offline demo: with no LLM configured, `atlasia run` and `atlasia serve` start sim-llm
//! in-process on a loopback port and point the gateway at it over real HTTP, and say so.

use crate::commands::CliError;
use atlasia_llm::config::{EndpointSettings, ModelSettings, PriceSettings};
use atlasia_server::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The logical model name the simulator serves in offline mode.
pub const SIM_MODEL: &str = "sim-llm";

/// Starts the simulator when `settings` configure no LLM; returns the banner to print.
pub async fn ensure_llm(
    settings: &mut Settings,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Option<String>, CliError> {
    if !settings.llm.models.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone();
    tracker.spawn(async move {
        if let Err(e) = atlasia_sim::serve(atlasia_sim::SimConfig::default(), listener, stop).await
        {
            tracing::error!(error = %e, "in-process sim-llm stopped");
        }
    });
    settings.llm.models.push(ModelSettings {
        name: SIM_MODEL.to_owned(),
        endpoints: vec![EndpointSettings {
            name: Some("sim-llm".to_owned()),
            wire: None,
            base_url: format!("http://{addr}/v1"),
            api_key: None,
            model: Some(SIM_MODEL.to_owned()),
            timeout_ms: 60_000,
            rate_limit: None,
        }],
    });
    settings.llm.default_model = Some(SIM_MODEL.to_owned());
    // The simulator alone reads the bundled issues' `atlasia-sim` scripts.
    settings.llm.simulator = true;
    // Simulated answers are free: priced at zero, so budgets apply and no "unpriced" warning
    // interrupts the demo.
    settings
        .llm
        .prices
        .entry(SIM_MODEL.to_owned())
        .or_insert(PriceSettings {
            input_per_mtok: 0.0,
            output_per_mtok: 0.0,
        });
    Ok(Some(format!(
        "No LLM configured: using the built-in simulator (sim-llm) at http://{addr}. Answers \
         are simulated, deterministic and free. Set LLM_ENDPOINT, LLM_MODEL and LLM_API_KEY \
         (or [llm] in atlasia.toml) to use a real model."
    )))
}
