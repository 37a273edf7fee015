//! The gateway's Prometheus series, with the names the runbook's PromQL uses. Labels are
//! bounded: endpoints and models come from configuration, agents from a fixed set.

use crate::Usage;
use crate::error::ERROR_TYPES;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};
use std::time::Duration;

/// Registers HELP/TYPE lines; call once at start.
pub fn describe() {
    describe_counter!(
        "llm_api_calls_total",
        "Provider attempts by provider, model, agent and outcome."
    );
    describe_counter!(
        "llm_api_errors_total",
        "Failed provider attempts (and refusals) by provider and error type."
    );
    describe_counter!(
        "llm_tokens_total",
        "Tokens by provider, model, agent and kind (input, output)."
    );
    describe_histogram!(
        "llm_api_duration_seconds",
        Unit::Seconds,
        "Provider attempt latency."
    );
    describe_histogram!(
        "llm_cost_per_bolt",
        "Cost in USD of a bolt that reached DONE, FAILED or CANCELLED (observed once per bolt)."
    );
    describe_counter!(
        "llm_calls_by_agent_total",
        "Answered LLM calls by agent (cache hits included)."
    );
    describe_counter!(
        "llm_cost_micro_usd_total",
        "Spent, in millionths of a USD, by provider and model."
    );
    describe_counter!(
        "llm_cache_requests_total",
        "Response cache lookups by result (hit, miss)."
    );
    describe_gauge!(
        "llm_ratelimiter_waiting",
        "Calls waiting for a rate-limiter permit, by provider."
    );
    describe_gauge!(
        "llm_budget_tracked_runs",
        "Runs whose spend the budget ledger holds in memory (those being driven now)."
    );
    describe_gauge!(
        "llm_circuit_state",
        "Circuit breaker state by provider: 0 closed, 1 open, 2 half-open."
    );
}

/// One provider attempt.
pub fn attempt(
    provider: &str,
    model: &str,
    agent: &str,
    outcome: &str,
    took: Duration,
    usage: Option<Usage>,
) {
    let (p, m, a) = (provider.to_owned(), model.to_owned(), agent.to_owned());
    counter!("llm_api_calls_total", "provider" => p.clone(), "model" => m.clone(), "agent" => a.clone(), "outcome" => outcome.to_owned()).increment(1);
    histogram!("llm_api_duration_seconds", "provider" => p.clone(), "model" => m.clone())
        .record(took.as_secs_f64());
    if let Some(u) = usage {
        counter!("llm_tokens_total", "provider" => p.clone(), "model" => m.clone(), "agent" => a.clone(), "kind" => "input").increment(u.input_tokens);
        counter!("llm_tokens_total", "provider" => p, "model" => m, "agent" => a, "kind" => "output").increment(u.output_tokens);
    }
}

/// A failure of a provider (or `-` for a refusal before any provider, e.g. a budget).
pub fn error(provider: &str, error_type: &'static str) {
    counter!("llm_api_errors_total", "provider" => provider.to_owned(), "error_type" => error_type)
        .increment(1);
}

/// An answered call, whatever served it.
pub fn answered(agent: &str, provider: &str, model: &str, cost_usd: f64) {
    counter!("llm_calls_by_agent_total", "agent" => agent.to_owned()).increment(1);
    if cost_usd > 0.0 {
        // Counters are integers in the metrics crate; micro-dollars keep the precision.
        counter!("llm_cost_micro_usd_total", "provider" => provider.to_owned(), "model" => model.to_owned())
            .increment((cost_usd * 1e6).round() as u64);
    }
}

/// Exposes the error and outcome counters at 0 for every label value known at start: each
/// configured endpoint (`provider`) with every provider error type, budget refusals (`-`,
/// `BUDGET`) and both cache results. A counter that first appears with the first failure hides
/// that failure from `increase()`; one that is there from the start does not.
pub fn zero<'a>(providers: impl IntoIterator<Item = &'a str>) {
    for p in providers {
        for &t in ERROR_TYPES.iter().filter(|t| **t != "BUDGET") {
            counter!("llm_api_errors_total", "provider" => p.to_owned(), "error_type" => t)
                .increment(0);
        }
    }
    counter!("llm_api_errors_total", "provider" => "-", "error_type" => "BUDGET").increment(0);
    for result in ["hit", "miss"] {
        counter!("llm_cache_requests_total", "result" => result).increment(0);
    }
}
