//! HTTP handlers, one module per resource. Handlers are thin: extract, call the store, map.

pub mod admin;
pub mod decisions;
pub mod health;
pub mod live;
pub mod metrics;
pub mod openai;
pub mod runs;
pub mod webhooks;
