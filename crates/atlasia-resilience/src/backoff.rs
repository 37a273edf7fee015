//! How long to wait before retrying a transient failure: exponential backoff with full jitter
//! (so clients that failed together do not retry together), never shorter than the server's
//! `Retry-After`, and never a long wait here when another endpoint could answer now. Plus the
//! one way to wait: [`sleep_or_cancel`], which a shutdown or a cancelled run cuts short.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Retry schedule for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included.
    pub attempts: u32,
    /// Ceiling of the first retry's delay; doubles on each retry.
    pub base: Duration,
    /// The longest delay this policy waits; a longer `Retry-After` moves on instead.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Whether retry number `attempt` (0-based) is still within `attempts`.
    pub fn allows(&self, attempt: u32) -> bool {
        attempt.saturating_add(1) < self.attempts
    }

    /// The delay before retry number `attempt` (0-based): uniform in
    /// `[0, min(cap, base·2^attempt)]`, raised to `retry_after` when the provider sent one.
    /// `None` when `retry_after` exceeds `cap`: waiting that long here is worse than trying
    /// the next endpoint.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if retry_after.is_some_and(|ra| ra > self.cap) {
            return None;
        }
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.cap);
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(rng.random_range(0..=ceiling_ns));
        Some(jitter.max(retry_after.unwrap_or_default()))
    }

    /// The delay before retry number `attempt` when the server named no `Retry-After`, drawn
    /// from the thread's generator (draw it before an `.await`: that generator is not `Send`).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.delay(attempt, None, &mut rand::rng())
            .unwrap_or(self.cap)
    }
}

/// Sleeps for `delay` unless `cancel` fires first. True when the whole delay passed, false when
/// cancelled (at once if it already was): the caller stops retrying instead of sleeping on
/// through a shutdown or a cancelled run.
pub async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn samples(p: &RetryPolicy, attempt: u32, ra: Option<Duration>) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(7);
        (0..2000)
            .map(|_| p.delay(attempt, ra, &mut rng).unwrap())
            .collect()
    }

    #[test]
    fn defaults_allow_two_retries() {
        let p = RetryPolicy::default();
        assert!(p.allows(0) && p.allows(1) && !p.allows(2));
    }

    #[test]
    fn each_attempt_is_fully_jittered_below_its_ceiling() {
        let p = RetryPolicy::default();
        for (attempt, ceiling_s) in [(0, 1), (1, 2), (2, 4), (3, 8), (4, 16)] {
            let ceiling = Duration::from_secs(ceiling_s);
            let d = samples(&p, attempt, None);
            assert!(d.iter().all(|&x| x <= ceiling), "attempt {attempt}");
            // Full jitter spans the whole range, not just its top.
            assert!(d.iter().any(|&x| x < ceiling / 10), "attempt {attempt}");
            assert!(d.iter().any(|&x| x > ceiling * 9 / 10), "attempt {attempt}");
        }
    }

    #[test]
    fn the_cap_bounds_late_attempts_without_overflow() {
        let p = RetryPolicy::default();
        for attempt in [5, 10, 31, 32, 1000] {
            let d = samples(&p, attempt, None);
            assert!(d.iter().all(|&x| x <= p.cap));
            assert!(d.iter().any(|&x| x > Duration::from_secs(27)));
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        let ra = Duration::from_secs(5);
        let d = samples(&p, 1, Some(ra)); // jitter alone would be at most 2 s
        assert!(d.iter().all(|&x| x == ra));
        let d = samples(&p, 4, Some(ra)); // up to 16 s: jitter wins when larger
        assert!(d.iter().all(|&x| x >= ra && x <= Duration::from_secs(16)));
        assert!(d.iter().any(|&x| x > ra));
    }

    #[test]
    fn retry_after_beyond_the_cap_moves_on() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(p.delay(0, Some(Duration::from_secs(31)), &mut rng), None);
        assert!(
            p.delay(0, Some(Duration::from_secs(30)), &mut rng)
                .is_some()
        );
    }

    #[test]
    fn backoff_stays_under_each_attempts_ceiling() {
        let p = RetryPolicy::default();
        for (attempt, ceiling_s) in [(0, 1), (3, 8), (40, 30)] {
            let ceiling = Duration::from_secs(ceiling_s);
            assert!(
                (0..200).all(|_| p.backoff(attempt) <= ceiling),
                "attempt {attempt}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_cancel_sleeps_the_whole_delay_when_nothing_cancels() {
        let cancel = CancellationToken::new();
        let started = tokio::time::Instant::now();
        assert!(sleep_or_cancel(Duration::from_secs(5), &cancel).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_cancel_returns_false_as_soon_as_cancelled() {
        let cancel = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            canceller.cancel();
        });
        assert!(!sleep_or_cancel(Duration::from_secs(60), &cancel).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Already cancelled: no wait at all, even for a zero delay (no race with the timer).
        assert!(!sleep_or_cancel(Duration::ZERO, &cancel).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
