//! The last model requests as they arrived, for `GET /sim/requests`: tests read the exact
//! bytes a client sent (key order, `max_tokens`, tools) without a packet capture. Bounded, so a
//! long-running simulator does not grow.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// How many requests are kept (oldest dropped first).
const KEPT: usize = 64;

/// The log, shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<(&'static str, String)>>,
}

impl RequestLog {
    /// Keeps `body` (lossy UTF-8) as received on `route`.
    pub(crate) fn push(&self, route: &'static str, body: &[u8]) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back((route, String::from_utf8_lossy(body).into_owned()));
    }

    /// `{"requests": [{"route", "body"}]}`, oldest first; `body` is the raw text.
    pub(crate) fn to_json(&self) -> Value {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let list: Vec<Value> = entries
            .iter()
            .map(|(route, body)| json!({"route": route, "body": body}))
            .collect();
        json!({ "requests": list })
    }
}
