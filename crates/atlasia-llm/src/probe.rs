//! Reachability: one `GET {base}/models` per endpoint, classified into what an operator can act
//! on (refused, bad key, wrong path), and the context size the answer states, when it does.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::ErrorKind;
use crate::provider::{Endpoint, ProviderClient};

/// The longest a probe waits (less when the endpoint's own timeout is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How one endpoint answered the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointProbe {
    /// The endpoint's name (metrics and errors use it too).
    pub endpoint: String,
    /// Its base URL without credentials or query.
    pub url: String,
    pub result: ProbeResult,
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// It answered its model list.
    Ok,
    /// Nothing listens there (wrong port, server not running).
    Refused,
    /// 401 or 403: the key is missing or wrong.
    Auth(String),
    /// 404: the base URL's path is wrong (or the server has no model list).
    NotFound,
    /// Anything else (timeout, TLS, DNS, a 5xx …), in the error's words.
    Other(String),
}

impl ProbeResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Refused => f.write_str("refused the connection"),
            Self::Auth(why) => write!(f, "refused the API key ({why})"),
            Self::NotFound => {
                f.write_str("has no model list there (404: check the base URL's path)")
            }
            Self::Other(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for EndpointProbe {
    /// `LLM endpoint http://127.0.0.1:8080 (primary) refused the connection`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LLM endpoint {} ({}) {}",
            self.url, self.endpoint, self.result
        )
    }
}

/// Probes `ep`: the result, and the context size its model list states for its model.
pub(crate) async fn check(client: &ProviderClient, ep: &Endpoint) -> (ProbeResult, Option<u32>) {
    match client.models(ep, ep.timeout.min(PROBE_TIMEOUT)).await {
        Ok(list) => (ProbeResult::Ok, context_from_models(&list, &ep.model)),
        Err(e) => {
            let result = match (e.kind, e.status) {
                (ErrorKind::Unreachable, _) => ProbeResult::Refused,
                (_, Some(404)) => ProbeResult::NotFound,
                (ErrorKind::Auth, _) => ProbeResult::Auth(e.message),
                _ => ProbeResult::Other(e.to_string()),
            };
            (result, None)
        }
    }
}

/// The context size a model list states for `model` (else for its only or first entry):
/// llama-server's `meta.n_ctx`, vLLM's `max_model_len`, OpenRouter's `context_length`,
/// `context_window` elsewhere.
pub fn context_from_models(list: &Value, model: &str) -> Option<u32> {
    let data = list.get("data")?.as_array()?;
    let entry = data
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(model))
        .or_else(|| data.first())?;
    let n = [
        entry.pointer("/meta/n_ctx"),
        entry.get("max_model_len"),
        entry.get("context_length"),
        entry.get("context_window"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_u64)?;
    u32::try_from(n).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn context_sizes_are_read_where_servers_state_them() {
        let llama = json!({"object": "list", "data": [{"id": "smollm2", "object": "model",
            "meta": {"n_ctx": 2048, "n_ctx_train": 8192}}]});
        assert_eq!(
            context_from_models(&llama, "other"),
            Some(2048),
            "the only entry"
        );
        let vllm = json!({"data": [{"id": "a", "max_model_len": 4096}, {"id": "b", "max_model_len": 32768}]});
        assert_eq!(context_from_models(&vllm, "b"), Some(32768));
        assert_eq!(
            context_from_models(&json!({"data": [{"id": "gpt-4o"}]}), "gpt-4o"),
            None
        );
        assert_eq!(context_from_models(&json!({"data": []}), "x"), None);
    }
}
