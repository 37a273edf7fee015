//! What a simulator instance is told at start: auth, the server-wide fault plan (fault spec,
//! failure rate, first-n failures, latency, requests- and tokens-per-minute limits) and the seed that makes
//! every random choice repeatable.

use crate::faults::FaultSpec;
use std::time::Duration;

/// Settings of one simulator. `Default` is a well-behaved server: no auth, no faults, no delay.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// When set, the OpenAI route needs `Authorization: Bearer <key>` and the Anthropic route
    /// `x-api-key: <key>` plus an `anthropic-version` header; otherwise 401 (400 for the
    /// missing version), each in its provider's error format.
    pub api_key: Option<String>,
    /// Seeds the failure-rate draws and the latency jitter, so a run can be repeated exactly.
    pub seed: u64,
    /// A fault applied to every model request that carries no `X-Sim-Fault` header.
    pub fault: Option<FaultSpec>,
    /// Share of model requests (0..=1) that fail with `fail_status`, drawn from `seed`.
    pub fail_rate: f64,
    /// The status `fail_rate` and `fail_first` answer with (400..=599; 429 and 529 get their
    /// provider-specific bodies and headers).
    pub fail_status: u16,
    /// The first n model requests fail with `fail_status` (a deterministic "storm, then
    /// recovery").
    pub fail_first: u64,
    /// Delay before every model answer.
    pub latency: Duration,
    /// Extra delay up to this much, drawn per request from `seed`.
    pub latency_jitter: Duration,
    /// Model requests allowed per one-minute window; beyond it, 429 with `Retry-After` set
    /// to the window's end. `None`: unlimited (the headers still report a nominal limit).
    pub rate_limit_rpm: Option<u32>,
    /// Tokens (input + output of answered requests) allowed per one-minute window; once the
    /// window has used them, 429 with `Retry-After` set to the window's end. `None`: unlimited
    /// (the headers still report a nominal limit).
    pub rate_limit_tpm: Option<u64>,
    /// `Retry-After` of injected 429s, unless the request's `X-Sim-Retry-After` says otherwise.
    pub retry_after: Duration,
    /// The longest a `stall` fault holds a request, so that nothing hangs forever.
    pub stall_max: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            seed: 0,
            fault: None,
            fail_rate: 0.0,
            fail_status: 503,
            fail_first: 0,
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            rate_limit_rpm: None,
            rate_limit_tpm: None,
            retry_after: Duration::from_secs(1),
            stall_max: Duration::from_secs(600),
        }
    }
}

/// A setting the simulator cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("fail-rate must be between 0 and 1, got {0}")]
    FailRate(String),
    #[error("fail-status must be an HTTP error status (400..=599), got {0}")]
    FailStatus(u16),
    #[error("rate-limit-rpm must be at least 1")]
    RateLimit,
    #[error("rate-limit-tpm must be at least 1")]
    TokenLimit,
    #[error("api-key must not be empty")]
    EmptyKey,
}

impl SimConfig {
    /// Refuses settings that would make the simulator misbehave silently.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(ConfigError::FailRate(self.fail_rate.to_string()));
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err(ConfigError::FailStatus(self.fail_status));
        }
        if self.rate_limit_rpm == Some(0) {
            return Err(ConfigError::RateLimit);
        }
        if self.rate_limit_tpm == Some(0) {
            return Err(ConfigError::TokenLimit);
        }
        if self.api_key.as_deref() == Some("") {
            return Err(ConfigError::EmptyKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_refused() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
        let bad_rate = SimConfig {
            fail_rate: 1.5,
            ..SimConfig::default()
        };
        assert!(matches!(bad_rate.validate(), Err(ConfigError::FailRate(_))));
        let nan = SimConfig {
            fail_rate: f64::NAN,
            ..SimConfig::default()
        };
        assert!(nan.validate().is_err());
        let bad_status = SimConfig {
            fail_status: 200,
            ..SimConfig::default()
        };
        assert_eq!(bad_status.validate(), Err(ConfigError::FailStatus(200)));
        let zero_rpm = SimConfig {
            rate_limit_rpm: Some(0),
            ..SimConfig::default()
        };
        assert_eq!(zero_rpm.validate(), Err(ConfigError::RateLimit));
        let zero_tpm = SimConfig {
            rate_limit_tpm: Some(0),
            ..SimConfig::default()
        };
        assert_eq!(zero_tpm.validate(), Err(ConfigError::TokenLimit));
    }
}
