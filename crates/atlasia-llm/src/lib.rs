//! The Atlasia LLM gateway: one call path from an agent to a model with routing, ordered
//! fallback endpoints, a priority rate limiter, retries with backoff, a circuit breaker, a
//! response cache, pricing and budgets, and metrics. It records its calls through a trait its
//! caller supplies; it never touches the store.

pub mod budget;
pub mod cache;
pub mod config;
pub mod context;
pub mod error;
pub mod gateway;
pub mod limiter;
pub mod metrics;
pub mod pricing;
pub mod probe;
pub mod provider;
pub mod record;
pub mod types;

pub use context::estimate_tokens;
pub use error::{ErrorKind, LlmError};
pub use gateway::{CallMeta, Gateway, GatewayError};
pub use probe::{EndpointProbe, ProbeResult};
pub use record::{CallRecord, CallRecorder, NoRecorder};
pub use types::*;
