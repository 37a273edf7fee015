//! The simulator's own rate limit: a fixed one-minute window counting model requests and
//! tokens. It feeds the rate-limit headers of every answer and, with `--rate-limit-rpm`, turns
//! requests beyond the limit into 429s whose `Retry-After` points at the window's end; with
//! `--rate-limit-tpm`, so does a window whose answered tokens (input + output) reached the limit.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The request limit reported when no `--rate-limit-rpm` is set (nothing is refused then).
pub(crate) const NOMINAL_RPM: u32 = 10_000;
/// The token limit reported when no `--rate-limit-tpm` is set (tokens are counted, never
/// refused then).
pub(crate) const NOMINAL_TPM: u64 = 2_000_000;
const WINDOW: Duration = Duration::from_secs(60);

/// The counters of the current window.
#[derive(Debug)]
pub(crate) struct RateWindow {
    enforced: Option<u32>,
    enforced_tokens: Option<u64>,
    state: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    start: Instant,
    requests: u32,
    tokens: u64,
}

/// What the rate-limit headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateSnapshot {
    pub limit_requests: u32,
    pub remaining_requests: u32,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    /// Time until the window starts over.
    pub reset: Duration,
}

impl RateWindow {
    pub(crate) fn new(enforced: Option<u32>, enforced_tokens: Option<u64>) -> Self {
        Self {
            enforced,
            enforced_tokens,
            state: Mutex::new(Counts {
                start: Instant::now(),
                requests: 0,
                tokens: 0,
            }),
        }
    }

    /// Counts a model request, or refuses it with the wait until the window ends: when the
    /// window's requests reached the request limit, or its tokens the token limit (a request's
    /// own tokens are only known once answered, so the one that crosses the limit still passes).
    pub(crate) fn admit(&self) -> Result<RateSnapshot, Duration> {
        let now = Instant::now();
        let mut c = self.lock(now);
        let over_requests = self.enforced.is_some_and(|limit| c.requests >= limit);
        let over_tokens = self.enforced_tokens.is_some_and(|limit| c.tokens >= limit);
        if over_requests || over_tokens {
            return Err(WINDOW.saturating_sub(now - c.start));
        }
        c.requests = c.requests.saturating_add(1);
        Ok(self.snapshot_of(&c, now))
    }

    /// Adds the tokens of an answer to the window.
    pub(crate) fn add_tokens(&self, tokens: u64) {
        let mut c = self.lock(Instant::now());
        c.tokens = c.tokens.saturating_add(tokens);
    }

    /// The counters as they are now.
    pub(crate) fn snapshot(&self) -> RateSnapshot {
        let now = Instant::now();
        let c = self.lock(now);
        self.snapshot_of(&c, now)
    }

    /// The counters, started over when the window has passed. A poisoned lock only means a
    /// panic elsewhere while counting; the numbers are still usable.
    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Counts> {
        let mut c = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now - c.start >= WINDOW {
            *c = Counts {
                start: now,
                requests: 0,
                tokens: 0,
            };
        }
        c
    }

    fn snapshot_of(&self, c: &Counts, now: Instant) -> RateSnapshot {
        let limit_requests = self.enforced.unwrap_or(NOMINAL_RPM);
        let limit_tokens = self.enforced_tokens.unwrap_or(NOMINAL_TPM);
        RateSnapshot {
            limit_requests,
            remaining_requests: limit_requests.saturating_sub(c.requests),
            limit_tokens,
            remaining_tokens: limit_tokens.saturating_sub(c.tokens),
            reset: WINDOW.saturating_sub(now - c.start),
        }
    }
}

/// Whole seconds to wait, never 0 (a `Retry-After: 0` invites a hot retry loop).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_beyond_the_limit_until_the_window_ends() {
        let w = RateWindow::new(Some(2), None);
        assert_eq!(w.admit().unwrap().remaining_requests, 1);
        assert_eq!(w.admit().unwrap().remaining_requests, 0);
        tokio::time::advance(Duration::from_secs(15)).await;
        let wait = w.admit().unwrap_err();
        assert_eq!(wait, Duration::from_secs(45));
        assert_eq!(ceil_secs(wait), 45);
        tokio::time::advance(Duration::from_secs(45)).await;
        let s = w.admit().unwrap();
        assert_eq!((s.limit_requests, s.remaining_requests), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_reports_a_nominal_limit_and_counts_tokens() {
        let w = RateWindow::new(None, None);
        for _ in 0..3 {
            w.admit().unwrap();
        }
        w.add_tokens(100);
        let s = w.snapshot();
        assert_eq!(s.remaining_requests, NOMINAL_RPM - 3);
        assert_eq!(s.remaining_tokens, NOMINAL_TPM - 100);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_once_the_tokens_reach_the_tpm_limit_until_the_window_ends() {
        let w = RateWindow::new(None, Some(100));
        let s = w.admit().unwrap();
        assert_eq!((s.limit_tokens, s.remaining_tokens), (100, 100));
        w.add_tokens(60);
        assert_eq!(w.admit().unwrap().remaining_tokens, 40);
        w.add_tokens(50); // this answer crosses the limit; the next request is refused
        assert_eq!(w.snapshot().remaining_tokens, 0);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(w.admit().unwrap_err(), Duration::from_secs(40));
        tokio::time::advance(Duration::from_secs(40)).await;
        let s = w.admit().unwrap();
        assert_eq!(
            (s.remaining_tokens, s.remaining_requests),
            (100, NOMINAL_RPM - 1)
        );
    }

    #[test]
    fn ceil_secs_rounds_up_and_never_says_zero() {
        assert_eq!(ceil_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }
}
