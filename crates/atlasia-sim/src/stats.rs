//! What the simulator has seen, for `GET /sim/stats`: requests per route and the faults it
//! injected. Tests read it to prove, say, that a cache hit never reached the "provider".

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The routes that are counted (`/sim/stats` itself is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    ChatCompletions,
    Messages,
    Models,
    Health,
    Other,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::ChatCompletions,
        Route::Messages,
        Route::Models,
        Route::Health,
        Route::Other,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Messages => "messages",
            Self::Models => "models",
            Self::Health => "health",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::ChatCompletions => 0,
            Self::Messages => 1,
            Self::Models => 2,
            Self::Health => 3,
            Self::Other => 4,
        }
    }
}

/// Counters, shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    routes: [AtomicU64; 5],
    answered: AtomicU64,
    rate_limited: AtomicU64,
    faults: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub(crate) fn request(&self, route: Route) {
        self.routes[route.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A model answer was produced (whatever happened to it on the way out).
    pub(crate) fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused by `--rate-limit-rpm` or `--rate-limit-tpm`.
    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// An injected fault, by its spec name (`503`, `stall`, `cut=2`, `latency`, …).
    pub(crate) fn fault(&self, name: &str) {
        let mut f = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        *f.entry(name.to_owned()).or_default() += 1;
    }

    /// The JSON of `GET /sim/stats`.
    pub(crate) fn to_json(&self) -> Value {
        let routes: serde_json::Map<String, Value> = Route::ALL
            .iter()
            .map(|r| {
                let n = self.routes[r.index()].load(Ordering::Relaxed);
                (r.name().to_owned(), json!(n))
            })
            .collect();
        let total: u64 = self.routes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let injected: u64 = faults.values().sum();
        json!({
            "simulator": "sim-llm",
            "requests_total": total,
            "routes": routes,
            "answers": self.answered.load(Ordering::Relaxed),
            "rate_limited": self.rate_limited.load(Ordering::Relaxed),
            "faults_injected": injected,
            "faults": faults,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_routes_and_faults() {
        let s = Stats::default();
        s.request(Route::ChatCompletions);
        s.request(Route::ChatCompletions);
        s.request(Route::Messages);
        s.fault("503");
        s.fault("503");
        s.fault("stall");
        let j = s.to_json();
        assert_eq!(j["requests_total"], 3);
        assert_eq!(j["routes"]["chat_completions"], 2);
        assert_eq!(j["routes"]["messages"], 1);
        assert_eq!(j["faults_injected"], 3);
        assert_eq!(j["faults"]["503"], 2);
    }
}
