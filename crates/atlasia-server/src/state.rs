//! The one application state every handler receives. Cheap to clone.

use crate::settings::Settings;
use atlasia_llm::Gateway;
use atlasia_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub settings: Arc<Settings>,
    /// Renders the Prometheus text format.
    pub metrics: PrometheusHandle,
    /// The LLM gateway (the proxy and, later, the engine call through it).
    pub gateway: Arc<Gateway>,
    /// The GitHub client, when `[github]` has credentials.
    pub github: Option<atlasia_github::GithubClient>,
    /// The command sandbox, probed at start (shown by the readiness check).
    pub sandbox: atlasia_engine::sandbox::Sandbox,
}
