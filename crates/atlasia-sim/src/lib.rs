//! sim-llm: a local, deterministic fake of the OpenAI Chat Completions and Anthropic Messages
//! HTTP APIs, with fault injection (error statuses, latency, stalls, cut and malformed
//! streams, rate limits). Tests, benchmarks and the offline demo talk to it instead of real
//! providers. It never pretends to be one: every answer's `model` is `sim-llm/<requested>`.
//!
//! Routes: `POST /v1/chat/completions` (OpenAI), `POST /v1/messages` (Anthropic),
//! `GET /v1/models` (OpenAI list; Anthropic's when the request carries Anthropic headers),
//! `GET /sim/stats` (requests per route, faults injected), `GET /sim/requests` (the last 64
//! model request bodies, verbatim), `GET /health`.
//!
//! Answers depend only on the request: a forced tool (`tool_choice`) or a user message saying
//! `call <tool>` gets a tool call whose arguments are generated from the tool's schema; an
//! OpenAI `json_schema` response format gets a schema-valid JSON document; a conversation that
//! ends with a tool result gets a note of the result's length; anything else gets
//! `[sim-llm] …` text derived from the last user message. Tokens are characters / 4.
//!
//! Engine agents get agent-aware answers ([`script`]): when the first user message is the
//! engine's JSON document (`issue`, `iteration`, `persona`, `voter`), reviewers, judge voters,
//! the qualifier, the writer and the tester answer consistently with the engine's semantic rules,
//! and the developer's tool loop plays the tool calls scripted in the issue body
//! (`<!-- atlasia-sim {json} -->`), then calls `finish`.
//!
//! Faults apply to the two model routes. A request's `X-Sim-Fault` header (`429`, `500`,
//! `502`, `503`, `529`, `auth`, `stall`, `malformed`, `cut=<n>`, `length[=<n>]`, `context[=<n>]`,
//! `prose`, `latency=<ms>`, `none`;
//! comma-separated) wins over the server's settings ([`SimConfig::fault`], `fail_first`,
//! `fail_rate`, `latency`); `X-Sim-Retry-After: <secs>` sets an injected 429's wait.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! atlasia_sim::serve(atlasia_sim::SimConfig::default(), listener, stop).await
//! # }
//! ```

mod anthropic;
mod app;
mod config;
mod error;
mod faults;
mod openai;
mod pattern;
mod pipeline;
mod ratelimit;
mod reply;
mod requests;
mod schema_gen;
pub mod script;
mod stats;
mod stream;

pub use app::{router, serve};
pub use config::{ConfigError, SimConfig};
pub use error::SimError;
pub use faults::{BadFaultSpec, Fault, FaultSpec};
pub use schema_gen::instance as schema_instance;

/// The banner the CLI prints on start: the simulator says what it is.
pub const BANNER: &str =
    "sim-llm: SIMULATOR — deterministic fake of the OpenAI and Anthropic APIs, not a real model";
