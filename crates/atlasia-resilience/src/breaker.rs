//! The per-endpoint circuit breaker. After a run of failures it stops sending traffic to an
//! endpoint for `open_for`, then lets a few probe calls through; their verdict decides whether
//! the endpoint is back. Verdicts arrive through a `Permit`, so a call that is cancelled or
//! panics cannot leave a probe slot taken forever, and a verdict from before a state change
//! (a slow call that started while closed) cannot decide the next state. The caller decides
//! what counts as a failure (a 5xx, a timeout) and what is no verdict (a 4xx that is the
//! request's fault, a rate limit): the breaker knows no error types.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// When to open and how to recover.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many recent outcomes the failure rate is computed over.
    pub window: usize,
    /// No verdict on fewer outcomes than this.
    pub min_calls: usize,
    /// Open when failures / outcomes reaches this.
    pub failure_rate: f64,
    /// How long to refuse calls before probing.
    pub open_for: Duration,
    /// Probe calls admitted while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(25),
            half_open_probes: 3,
        }
    }
}

/// The state as a circuit-state gauge reports it (e.g. `llm_circuit_state{provider}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry in {retry_in:?}")]
pub struct Open {
    /// Until the breaker probes again; zero when half-open and all probe slots are taken
    /// (their verdict is imminent).
    pub retry_in: Duration,
}

/// A cheap-to-clone handle; clones share one breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: BreakerConfig,
    state: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Recent outcomes while closed, `true` = failure.
    outcomes: VecDeque<bool>,
    /// Bumped on every transition; permits from an older generation have no say.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// Leave to make one call. Report how it went with `success` or `failure`; dropping it says
/// nothing (a cancelled call is no evidence either way) and frees its probe slot.
#[derive(Debug)]
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg,
                state: Mutex::new(Inner {
                    phase: Phase::Closed,
                    outcomes: VecDeque::new(),
                    generation: 0,
                }),
            }),
        }
    }

    /// A permit to call the endpoint, or how long it stays open.
    pub fn try_acquire(&self) -> Result<Permit, Open> {
        let now = Instant::now();
        let mut st = self.shared.lock();
        st.expire(now);
        let probe = match &mut st.phase {
            Phase::Closed => false,
            Phase::Open { until } => {
                return Err(Open {
                    retry_in: *until - now,
                });
            }
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if *in_flight + *succeeded >= probes(&self.shared.cfg) {
                    return Err(Open {
                        retry_in: Duration::ZERO,
                    });
                }
                *in_flight += 1;
                true
            }
        };
        Ok(Permit {
            shared: Arc::clone(&self.shared),
            generation: st.generation,
            probe,
            reported: false,
        })
    }

    pub fn state(&self) -> BreakerState {
        let mut st = self.shared.lock();
        st.expire(Instant::now());
        match st.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self, generation: u64, probe: bool, verdict: Option<bool>) {
        let mut st = self.lock();
        let now = Instant::now();
        st.expire(now);
        if st.generation != generation {
            return;
        }
        match (st.phase, verdict) {
            (Phase::Closed, Some(failed)) => st.record(&self.cfg, failed, now),
            (Phase::HalfOpen { .. }, _) if probe => st.probe_done(&self.cfg, verdict, now),
            _ => {}
        }
    }
}

/// At least one probe, or a half-open breaker could never close.
fn probes(cfg: &BreakerConfig) -> u32 {
    cfg.half_open_probes.max(1)
}

impl Inner {
    /// An open breaker becomes half-open once its time is up; checked lazily, no timer needed.
    fn expire(&mut self, now: Instant) {
        if let Phase::Open { until } = self.phase
            && now >= until
        {
            self.transition(Phase::HalfOpen {
                in_flight: 0,
                succeeded: 0,
            });
        }
    }

    /// A verdict while closed: opens once the recent failure rate reaches the threshold.
    fn record(&mut self, cfg: &BreakerConfig, failed: bool, now: Instant) {
        self.outcomes.push_back(failed);
        while self.outcomes.len() > cfg.window.max(1) {
            self.outcomes.pop_front();
        }
        let calls = self.outcomes.len();
        let failures = self.outcomes.iter().filter(|&&f| f).count();
        if calls >= cfg.min_calls && failures as f64 >= cfg.failure_rate * calls as f64 {
            self.open(cfg, now);
        }
    }

    /// A probe finished: any failure reopens, the last success needed closes, and a probe
    /// without a verdict just gives its slot back.
    fn probe_done(&mut self, cfg: &BreakerConfig, verdict: Option<bool>, now: Instant) {
        let Phase::HalfOpen {
            in_flight,
            succeeded,
        } = self.phase
        else {
            return;
        };
        let in_flight = in_flight.saturating_sub(1);
        let succeeded = succeeded + u32::from(verdict == Some(false));
        match verdict {
            Some(true) => self.open(cfg, now),
            Some(false) if succeeded >= probes(cfg) => self.transition(Phase::Closed),
            _ => {
                self.phase = Phase::HalfOpen {
                    in_flight,
                    succeeded,
                }
            }
        }
    }

    fn open(&mut self, cfg: &BreakerConfig, now: Instant) {
        self.transition(Phase::Open {
            until: now + cfg.open_for,
        });
    }

    fn transition(&mut self, phase: Phase) {
        self.phase = phase;
        self.outcomes.clear();
        self.generation += 1;
    }
}

impl Permit {
    pub fn success(mut self) {
        self.reported = true;
        self.shared.report(self.generation, self.probe, Some(false));
    }

    pub fn failure(mut self) {
        self.reported = true;
        self.shared.report(self.generation, self.probe, Some(true));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.shared.report(self.generation, self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::time::advance;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default())
    }

    fn fail(b: &CircuitBreaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().unwrap().failure();
        }
    }

    fn succeed(b: &CircuitBreaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().unwrap().success();
        }
    }

    /// Opens the breaker, then waits out `open_for`.
    async fn half_open() -> CircuitBreaker {
        let b = breaker();
        fail(&b, 4);
        advance(Duration::from_secs(25)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_min_calls() {
        let b = breaker();
        fail(&b, 3);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.state().as_gauge(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_half_failures_and_rejects_with_retry_in() {
        let b = breaker();
        succeed(&b, 2);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.state().as_gauge(), 1.0);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(25)
        );
        advance(Duration::from_secs(10)).await;
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(15)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_last_window_of_outcomes_counts() {
        let b = breaker();
        succeed(&b, 10);
        fail(&b, 4); // 4 of the last 10
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1); // 5 of the last 10, though only 5 of 15 overall
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_open_for_admits_limited_probes() {
        let b = half_open().await;
        assert_eq!(b.state().as_gauge(), 2.0);
        let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
        assert_eq!(b.try_acquire().unwrap_err().retry_in, Duration::ZERO);
        drop(probes); // no verdict: the slots come back
        let _again: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    }

    #[tokio::test(start_paused = true)]
    async fn successful_probes_close_it_with_a_clean_window() {
        let b = half_open().await;
        succeed(&b, 3);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 3); // the old failures are gone, so 3 are not enough
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_the_full_period() {
        let b = half_open().await;
        let ok = b.try_acquire().unwrap();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        ok.success(); // a verdict from the previous state has no say
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(25)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_from_before_opening_is_ignored() {
        let b = breaker();
        let slow = b.try_acquire().unwrap();
        fail(&b, 4);
        advance(Duration::from_secs(25)).await;
        slow.failure(); // started while closed: not a probe
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
}
