//! Resilience shared by every client that talks to something that can fail: one retry schedule
//! (exponential backoff with full jitter, floored by `Retry-After`), one per-endpoint circuit
//! breaker, and a sleep that a cancellation cuts short. Pure policy: no I/O, no knowledge of
//! LLMs, GitHub or the store, so each of them can depend on it without depending on the other.

pub mod backoff;
pub mod breaker;

pub use backoff::{RetryPolicy, sleep_or_cancel};
pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Open, Permit};
