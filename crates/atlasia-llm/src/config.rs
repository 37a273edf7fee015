//! Gateway settings as they appear under `[llm]` and `[agents.<name>]` in `atlasia.toml`.
//! Plain data with defaults from the runbook; the server layers file and environment on top
//! (including the original `LLM_*` variables) and the gateway is built from the result.

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// Everything under `[llm]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// Model for agents without their own (`LLM_MODEL`).
    pub default_model: Option<String>,
    /// Cheaper model for reviewer-class agents and for the soft-budget downgrade.
    pub cheap_model: Option<String>,
    /// Ordered endpoints per logical model name.
    pub models: Vec<ModelSettings>,
    pub retry: RetrySettings,
    pub rate_limit: RateLimitSettings,
    pub breaker: BreakerSettings,
    pub cache: CacheSettings,
    pub budget: BudgetSettings,
    /// Price overrides, USD per million tokens, by model id.
    pub prices: BTreeMap<String, PriceSettings>,
    /// The endpoints are Atlasia's simulator (`atlasia sim-llm`, or the offline demo): only
    /// then do agents see the `atlasia-sim` scripts of issue bodies.
    pub simulator: bool,
    /// Per-attempt timeout of every endpoint, milliseconds (`LLM_TIMEOUT_MS`); when set it
    /// replaces each endpoint's own `timeout_ms`. A slow CPU model needs minutes.
    pub timeout_ms: Option<u64>,
    /// Context size in tokens of every endpoint that says nothing else (see
    /// `endpoint_context_tokens`, and what an endpoint's `GET /models` reports).
    pub context_tokens: Option<u32>,
    /// Context size by endpoint name (`[llm.endpoint_context_tokens] primary = 2048`).
    pub endpoint_context_tokens: BTreeMap<String, u32>,
}

/// One logical model and the endpoints that serve it, tried in order.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub name: String,
    pub endpoints: Vec<EndpointSettings>,
}

/// Which wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireSetting {
    /// OpenAI Chat Completions (OpenAI, DeepSeek, Groq, vLLM, Ollama's `/v1`, …).
    #[default]
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

/// One provider endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    /// Label in metrics and errors (default: the base URL's host).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub wire: Option<WireSetting>,
    pub base_url: String,
    #[serde(default, serialize_with = "mask")]
    pub api_key: Option<SecretString>,
    /// The provider's model id (default: the logical name).
    #[serde(default)]
    pub model: Option<String>,
    /// Per attempt, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Overrides `[llm.rate_limit]` for this endpoint.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSettings>,
}

fn default_timeout_ms() -> u64 {
    120_000
}

fn mask<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

/// Retries of transient failures (runbook: 3 attempts from 1 s).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    pub attempts: u32,
    pub base_ms: u64,
    pub cap_ms: u64,
}

/// Per-endpoint limiter (resilience4j names).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub limit_for_period: u32,
    pub limit_refresh_period_ms: u64,
    pub tokens_per_minute: Option<u64>,
    pub timeout_duration_ms: u64,
}

/// Per-endpoint circuit breaker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    pub window: usize,
    pub min_calls: usize,
    pub failure_rate: f64,
    pub open_for_ms: u64,
    pub half_open_probes: u32,
}

/// Response cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    pub enabled: bool,
    pub max_entries: u64,
    pub ttl_secs: u64,
    pub max_bytes: u64,
}

/// Spending caps in USD.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    pub per_bolt_usd: Option<f64>,
    pub per_day_usd: Option<f64>,
    pub soft_ratio: f64,
}

/// A price override.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSettings {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// `[agents.<name>]`: per-agent routing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The logical model this agent uses.
    pub llm_model: Option<String>,
    /// The model it switches to past the soft budget threshold.
    pub cheaper_model: Option<String>,
    /// Output bound of one answer, over the agent contract's `max_tokens` (the engine applies
    /// it; a cut structured answer is asked again with twice the bound).
    pub max_tokens: Option<u32>,
    /// This agent's per-attempt timeout, milliseconds (over `llm.timeout_ms` and the
    /// endpoint's own): `ATLASIA_AGENTS__DEVELOPER__TIMEOUT_MS=600000`.
    pub timeout_ms: Option<u64>,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_ms: 1_000,
            cap_ms: 30_000,
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            limit_for_period: 60,
            limit_refresh_period_ms: 60_000,
            tokens_per_minute: None,
            timeout_duration_ms: 30_000,
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            open_for_ms: 25_000,
            half_open_probes: 3,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 1_000,
            ttl_secs: 600,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            per_bolt_usd: None,
            per_day_usd: None,
            soft_ratio: 0.8,
        }
    }
}

/// Agents whose work is judging rather than writing: they default to the cheaper model.
pub const REVIEWER_CLASS: &[&str] = &["review", "reviewer", "judge", "qualifier", "pm", "writer"];

impl LlmSettings {
    /// Checks what types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, r: &str| Err((k.to_owned(), r.to_owned()));
        if self.retry.attempts == 0 {
            return bad("llm.retry.attempts", "must be at least 1");
        }
        if self.rate_limit.limit_for_period == 0 || self.rate_limit.limit_refresh_period_ms == 0 {
            return bad(
                "llm.rate_limit",
                "limit_for_period and limit_refresh_period_ms must be > 0",
            );
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_rate) || self.breaker.window == 0 {
            return bad(
                "llm.breaker",
                "failure_rate must be within 0..1 and window > 0",
            );
        }
        if self.timeout_ms == Some(0) {
            return bad("llm.timeout_ms", "must be at least 1");
        }
        if self.context_tokens == Some(0) || self.endpoint_context_tokens.values().any(|n| *n == 0)
        {
            return bad("llm.context_tokens", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.budget.soft_ratio) {
            return bad("llm.budget.soft_ratio", "must be within 0..1");
        }
        for name in self.endpoint_context_tokens.keys() {
            let known = self.models.iter().flat_map(|m| &m.endpoints).any(|e| {
                e.name.as_deref().unwrap_or_else(|| host_of(&e.base_url)) == name.as_str()
            });
            if !known {
                return Err((
                    format!("llm.endpoint_context_tokens.{name}"),
                    "names no configured endpoint".into(),
                ));
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err((format!("llm.models[{i}].name"), "must not be empty".into()));
            }
            if m.endpoints.is_empty() {
                return Err((
                    format!("llm.models[{i}].endpoints"),
                    "needs at least one endpoint".into(),
                ));
            }
            for (j, e) in m.endpoints.iter().enumerate() {
                let u = e.base_url.as_str();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err((
                        format!("llm.models[{i}].endpoints[{j}].base_url"),
                        "must start with http:// or https://".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The host (and port) of a URL: an endpoint's default name.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_sizes_must_name_an_endpoint_and_be_positive() {
        let mut s = LlmSettings {
            models: vec![ModelSettings {
                name: "m".into(),
                endpoints: vec![EndpointSettings {
                    name: None,
                    wire: None,
                    base_url: "http://127.0.0.1:8080/v1".into(),
                    api_key: None,
                    model: None,
                    timeout_ms: 1_000,
                    rate_limit: None,
                }],
            }],
            ..LlmSettings::default()
        };
        s.endpoint_context_tokens
            .insert("127.0.0.1:8080".into(), 2048);
        assert_eq!(s.validate(), Ok(()), "the default name is the host");
        s.endpoint_context_tokens.insert("typo".into(), 2048);
        assert_eq!(
            s.validate().map_err(|e| e.0),
            Err("llm.endpoint_context_tokens.typo".to_owned())
        );
        s.endpoint_context_tokens.remove("typo");
        s.context_tokens = Some(0);
        assert!(s.validate().is_err());
        s.context_tokens = None;
        s.timeout_ms = Some(0);
        assert_eq!(
            s.validate().map_err(|e| e.0),
            Err("llm.timeout_ms".to_owned())
        );
    }
}
