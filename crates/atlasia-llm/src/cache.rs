//! The exact-match response cache. Only deterministic requests are cached, keyed by a hash of
//! everything that can change the answer, and only complete answers are stored: `insert`
//! takes a `ChatResponse`, which an error or a cut stream never becomes. Bounded by entry
//! count, total bytes and age, so it cannot grow with traffic.

use std::time::Duration;

use moka::future::Cache;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{ChatRequest, ChatResponse, FinishReason};

/// Bumped when the key's input changes meaning, so old keys cannot alias new requests.
const KEY_VERSION: &[u8] = b"atlasia-llm-cache-v1\n";

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub max_entries: u64,
    /// How long an answer is served from the cache.
    pub ttl: Duration,
    /// Bound on the serialized size of all cached answers.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 1000,
            ttl: Duration::from_secs(600),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    resp: ChatResponse,
    weight: u32,
}

/// A cheap-to-clone handle; clones share one cache.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    cache: Cache<String, Entry>,
    min_weight: u64,
    max_bytes: u64,
}

impl ResponseCache {
    pub fn new(cfg: CacheConfig) -> Self {
        // moka bounds one weighted total. Weighing each entry at least max_bytes/max_entries
        // makes that total bound the entry count too: both limits hold, at the price of
        // counting tiny entries as a little bigger than they are.
        let min_weight = cfg.max_bytes.div_ceil(cfg.max_entries.max(1)).max(1);
        let cache = Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_: &String, e: &Entry| e.weight)
            .time_to_live(cfg.ttl)
            .build();
        Self {
            cache,
            min_weight,
            max_bytes: cfg.max_bytes,
        }
    }

    /// Hex SHA-256 of every field of the request. The destructuring is exhaustive on purpose:
    /// a field added to `ChatRequest` does not compile here until someone decides it belongs
    /// in the key.
    pub fn key(req: &ChatRequest) -> String {
        let ChatRequest {
            model,
            messages,
            tools,
            tool_choice,
            response_format,
            temperature,
            top_p,
            max_tokens,
            stop,
            seed,
        } = req;
        let fields = serde_json::json!({
            "model": model,
            "messages": messages,
            "tools": tools,
            "tool_choice": tool_choice,
            "response_format": response_format,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "stop": stop,
            "seed": seed,
        });
        let mut canonical = Vec::new();
        write_canonical(&fields, &mut canonical);
        let mut hasher = Sha256::new();
        hasher.update(KEY_VERSION);
        hasher.update(&canonical);
        hex::encode(hasher.finalize())
    }

    /// Whether an answer to `req` may be reused: only when it is deterministic
    /// (temperature 0) or the caller opted in.
    pub fn cacheable(req: &ChatRequest, opt_in: bool) -> bool {
        opt_in || req.temperature == Some(0.0)
    }

    pub async fn get(&self, key: &str) -> Option<ChatResponse> {
        let hit = self.cache.get(key).await.map(|e| e.resp);
        let result = if hit.is_some() { "hit" } else { "miss" };
        ::metrics::counter!("llm_cache_requests_total", "result" => result).increment(1);
        hit
    }

    /// Stores a complete answer. A content-filtered answer is not stored (the filter may
    /// decide differently next time), nor one larger than the whole cache.
    pub async fn insert(&self, key: String, resp: ChatResponse) {
        if resp.finish_reason == FinishReason::ContentFilter {
            return;
        }
        let bytes = serde_json::to_vec(&resp).map_or(u64::MAX, |v| v.len() as u64);
        let size = bytes.saturating_add(key.len() as u64);
        if size > self.max_bytes {
            return;
        }
        let weight = u32::try_from(size.max(self.min_weight)).unwrap_or(u32::MAX);
        self.cache.insert(key, Entry { resp, weight }).await;
    }
}

/// JSON with object keys sorted at every level, so the key does not depend on map order
/// (serde_json keeps insertion order when any crate enables `preserve_order`).
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{JsonSchema, Message, Role, Tool, ToolChoice, Usage};

    fn request() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![Message::text(Role::User, "hello")],
            temperature: Some(0.0),
            ..ChatRequest::default()
        }
    }

    fn response(content: &str) -> ChatResponse {
        ChatResponse {
            id: "r1".into(),
            model: "gpt-4o-mini".into(),
            content: Some(content.into()),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
        }
    }

    #[test]
    fn equal_requests_share_a_key_and_every_field_changes_it() {
        let base = request();
        assert_eq!(ResponseCache::key(&base), ResponseCache::key(&base.clone()));
        assert_eq!(ResponseCache::key(&base).len(), 64);
        let variants: Vec<fn(&mut ChatRequest)> = vec![
            |r| r.model = "gpt-4o".into(),
            |r| r.messages.push(Message::text(Role::Assistant, "hi")),
            |r| r.messages[0].role = Role::System,
            |r| {
                r.tools.push(Tool {
                    name: "f".into(),
                    description: None,
                    parameters: serde_json::json!({"type": "object"}),
                })
            },
            |r| r.tool_choice = Some(ToolChoice::Required),
            |r| {
                r.response_format = Some(JsonSchema {
                    name: "s".into(),
                    schema: serde_json::json!({}),
                    strict: true,
                })
            },
            |r| r.temperature = Some(0.5),
            |r| r.top_p = Some(0.9),
            |r| r.max_tokens = Some(10),
            |r| r.stop = vec!["END".into()],
            |r| r.seed = Some(1),
        ];
        let mut keys = vec![ResponseCache::key(&base)];
        for change in &variants {
            let mut r = base.clone();
            change(&mut r);
            keys.push(ResponseCache::key(&r));
        }
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }

    #[test]
    fn key_ignores_json_key_order() {
        let mut a = request();
        let mut b = request();
        a.response_format = Some(JsonSchema {
            name: "s".into(),
            schema: serde_json::from_str(r#"{"type":"object","required":["x"]}"#).unwrap(),
            strict: true,
        });
        b.response_format = Some(JsonSchema {
            name: "s".into(),
            schema: serde_json::from_str(r#"{"required":["x"],"type":"object"}"#).unwrap(),
            strict: true,
        });
        assert_eq!(ResponseCache::key(&a), ResponseCache::key(&b));
    }

    #[test]
    fn only_deterministic_or_opted_in_requests_are_cacheable() {
        let mut r = request();
        assert!(ResponseCache::cacheable(&r, false));
        r.temperature = Some(0.7);
        assert!(!ResponseCache::cacheable(&r, false));
        assert!(ResponseCache::cacheable(&r, true));
        r.temperature = None; // the provider's default is not 0
        assert!(!ResponseCache::cacheable(&r, false));
    }

    #[tokio::test]
    async fn hit_and_miss() {
        let cache = ResponseCache::new(CacheConfig::default());
        let key = ResponseCache::key(&request());
        assert_eq!(cache.get(&key).await, None);
        cache.insert(key.clone(), response("hi")).await;
        assert_eq!(cache.get(&key).await, Some(response("hi")));
        let mut filtered = response("x");
        filtered.finish_reason = FinishReason::ContentFilter;
        cache.insert("other".into(), filtered).await;
        assert_eq!(cache.get("other").await, None);
    }

    // moka keeps its own clock, which tokio's paused time does not drive: this test waits
    // for real, briefly.
    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let cache = ResponseCache::new(CacheConfig {
            ttl: Duration::from_millis(50),
            ..CacheConfig::default()
        });
        cache.insert("k".into(), response("hi")).await;
        assert!(cache.get("k").await.is_some());
        let start = std::time::Instant::now();
        while cache.get("k").await.is_some() {
            assert!(
                start.elapsed() < Duration::from_millis(900),
                "never expired"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_byte_bound_evicts() {
        let one = serde_json::to_vec(&response(&"x".repeat(1000)))
            .unwrap()
            .len() as u64;
        let cache = ResponseCache::new(CacheConfig {
            max_bytes: 3 * (one + 2),
            ..CacheConfig::default()
        });
        for i in 0..10 {
            cache
                .insert(format!("k{i}"), response(&"x".repeat(1000)))
                .await;
        }
        cache.cache.run_pending_tasks().await;
        assert!(cache.cache.weighted_size() <= 3 * (one + 2));
        assert!(cache.cache.entry_count() <= 3);
        // Larger than the whole cache: not stored at all.
        cache
            .insert("big".into(), response(&"x".repeat(4000)))
            .await;
        assert_eq!(cache.get("big").await, None);
    }

    #[tokio::test]
    async fn the_entry_bound_holds_for_small_entries() {
        let cache = ResponseCache::new(CacheConfig {
            max_entries: 5,
            ..CacheConfig::default()
        });
        for i in 0..50 {
            cache.insert(format!("k{i}"), response("hi")).await;
        }
        cache.cache.run_pending_tasks().await;
        assert!(cache.cache.entry_count() <= 5);
        assert!(cache.cache.entry_count() >= 1);
    }
}
