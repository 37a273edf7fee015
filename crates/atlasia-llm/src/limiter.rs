//! The per-endpoint rate limiter: requests per fixed window (resilience4j semantics), tokens
//! per minute as a continuously refilling bucket, and the provider's own rate headers, which
//! only ever tighten the local view. Waiters are served strictly by priority, then in arrival
//! order, so a planner call is not stuck behind a queue of background summaries.
//!
//! One mutex guards all state. Grants happen under it, either inline when a caller arrives or
//! from a dispatcher task that sleeps until the head waiter's capacity exists; the task only
//! lives while someone waits, so an idle limiter owns no task. All timing is
//! `tokio::time::Instant`, so the paused test clock drives it exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::{ErrorKind, LlmError, RateHints};

/// The bucket counts token·nanoseconds so that refill and wait times are exact integers.
const MINUTE_NS: i128 = 60_000_000_000;

/// Limits of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterConfig {
    /// Requests admitted per window.
    pub limit_for_period: u32,
    /// Window length; all permits come back at each window boundary.
    pub limit_refresh_period: Duration,
    /// Token bucket size, refilled evenly over a minute; `None` = no token limit.
    pub tokens_per_minute: Option<u64>,
    /// The longest a caller waits before it gets `Timeout` and tries another endpoint.
    pub timeout_duration: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            limit_for_period: 60,
            limit_refresh_period: Duration::from_secs(60),
            tokens_per_minute: None,
            timeout_duration: Duration::from_secs(30),
        }
    }
}

/// Why no permit was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// No capacity within `timeout_duration`. `waited` is shorter than the timeout when the
    /// limiter could tell early that capacity would come too late.
    #[error("rate limiter: no capacity after waiting {waited:?}")]
    Timeout { waited: Duration },
}

impl From<LimiterError> for LlmError {
    fn from(e: LimiterError) -> Self {
        LlmError::new(ErrorKind::RateLimit, e.to_string())
    }
}

/// A cheap-to-clone handle; clones share one limiter.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: LimiterConfig,
    state: Mutex<State>,
    /// Wakes the dispatcher when the head of the queue or the capacity changed.
    wake: Notify,
}

#[derive(Debug)]
struct State {
    permits: u32,
    window_start: Instant,
    /// Token bucket level in token·ns (see `MINUTE_NS`); negative after an oversized request.
    level: i128,
    level_at: Instant,
    /// A 429's `Retry-After`: nothing is admitted before it.
    blocked_until: Option<Instant>,
    /// Provider-reported (remaining, reset instant) for requests and for tokens.
    req_hint: Option<(u64, Instant)>,
    tok_hint: Option<(u64, Instant)>,
    waiters: BinaryHeap<Waiter>,
    next_seq: u64,
    /// The running dispatcher, by number; `None` when nobody waits.
    dispatcher: Option<u64>,
    dispatchers_started: u64,
}

#[derive(Debug)]
struct Waiter {
    priority: u8,
    seq: u64,
    est: u64,
    deadline: Instant,
    tx: oneshot::Sender<Verdict>,
}

impl Waiter {
    fn key(&self) -> (u8, Reverse<u64>) {
        (self.priority, Reverse(self.seq))
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Granted(Ticket),
    /// Capacity cannot arrive before the waiter's deadline.
    Hopeless,
}

/// What a grant took, so a grant nobody collected can be given back.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    window_start: Instant,
    est: u64,
}

impl RateLimiter {
    pub fn new(cfg: LimiterConfig) -> Self {
        let now = Instant::now();
        let level = cfg
            .tokens_per_minute
            .map_or(0, |c| i128::from(c) * MINUTE_NS);
        let state = State {
            permits: cfg.limit_for_period,
            window_start: now,
            level,
            level_at: now,
            blocked_until: None,
            req_hint: None,
            tok_hint: None,
            waiters: BinaryHeap::new(),
            next_seq: 0,
            dispatcher: None,
            dispatchers_started: 0,
        };
        Self {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(state),
                wake: Notify::new(),
            }),
        }
    }

    /// Waits for a permit for one request of about `est_tokens` tokens. Higher `priority` is
    /// served first. Dropping the future withdraws the request without losing capacity.
    pub async fn acquire(&self, priority: u8, est_tokens: u64) -> Result<(), LimiterError> {
        let start = Instant::now();
        let deadline = later(start, self.inner.cfg.timeout_duration);
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut st = self.inner.lock();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.waiters.push(Waiter {
                priority,
                seq,
                est: est_tokens,
                deadline,
                tx,
            });
            st.grant(&self.inner.cfg, start);
            self.inner.kick(&mut st);
            seq
        };
        let mut pending = Pending {
            inner: &self.inner,
            seq,
            rx,
            settled: false,
        };
        let verdict = match tokio::time::timeout_at(deadline, &mut pending.rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => Verdict::Hopeless,
            Err(_) => pending.withdraw(),
        };
        pending.settled = true;
        match verdict {
            Verdict::Granted(_) => Ok(()),
            Verdict::Hopeless => Err(LimiterError::Timeout {
                waited: Instant::now() - start,
            }),
        }
    }

    /// Applies what the provider said about its own limits. They only tighten ours: a
    /// `Retry-After` blocks everything until it passes; a remaining count caps what we send
    /// until its reset. A count without a reset time is ignored, since nothing says when it
    /// ends; the 429 that follows carries `Retry-After`.
    pub fn observe(&self, hints: &RateHints) {
        let now = Instant::now();
        let mut st = self.inner.lock();
        if let Some(ra) = hints.retry_after {
            let until = later(now, ra);
            st.blocked_until = Some(st.blocked_until.map_or(until, |b| b.max(until)));
        }
        if let (Some(left), Some(reset)) = (hints.remaining_requests, hints.reset_requests) {
            st.req_hint = Some((left, later(now, reset)));
        }
        if let (Some(left), Some(reset)) = (hints.remaining_tokens, hints.reset_tokens) {
            st.tok_hint = Some((left, later(now, reset)));
        }
        self.inner.kick(&mut st);
    }

    /// How many callers are queued (the `llm_ratelimiter_waiting` gauge).
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiters.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere does not taint it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure someone will serve the queue: starts the dispatcher or wakes it to recompute.
    fn kick(self: &Arc<Self>, st: &mut State) {
        if st.waiters.is_empty() {
            return;
        }
        if st.dispatcher.is_some() {
            self.wake.notify_one();
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let id = st.dispatchers_started;
            st.dispatchers_started += 1;
            st.dispatcher = Some(id);
            rt.spawn(dispatch(Arc::clone(self), id));
        }
    }
}

/// Serves the queue until it is empty, sleeping until the head's capacity exists.
async fn dispatch(inner: Arc<Inner>, id: u64) {
    // If the runtime drops this task mid-sleep, the next caller must start a new one.
    let _registration = Registration {
        inner: Arc::clone(&inner),
        id,
    };
    loop {
        let next = {
            let mut st = inner.lock();
            match st.grant(&inner.cfg, Instant::now()) {
                Some(at) => at,
                None => {
                    st.dispatcher = None;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = inner.wake.notified() => {}
        }
    }
}

struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if st.dispatcher == Some(self.id) {
            st.dispatcher = None;
        }
    }
}

impl State {
    /// Hands out permits from the top of the queue while capacity lasts and fails heads that
    /// cannot be served in time. Returns when the new head can be served, if anyone waits.
    fn grant(&mut self, cfg: &LimiterConfig, now: Instant) -> Option<Instant> {
        loop {
            let (est, deadline) = {
                let head = self.waiters.peek()?;
                (head.est, head.deadline)
            };
            match self.ready_at(cfg, now, est) {
                Some(at) if at > now && at <= deadline => return Some(at),
                ready => {
                    let head = self.waiters.pop()?;
                    if ready.is_some_and(|at| at <= now) {
                        let ticket = self.take(cfg, head.est);
                        if head.tx.send(Verdict::Granted(ticket)).is_err() {
                            self.refund(cfg, ticket);
                        }
                    } else {
                        let _ = head.tx.send(Verdict::Hopeless);
                    }
                }
            }
        }
    }

    /// The earliest instant a request of `est` tokens fits every limit; `None` = never.
    fn ready_at(&mut self, cfg: &LimiterConfig, now: Instant, est: u64) -> Option<Instant> {
        self.refill(cfg, now);
        let mut at = now;
        if let Some(b) = self.blocked_until {
            at = at.max(b);
        }
        if self.permits == 0 {
            if cfg.limit_for_period == 0 {
                return None;
            }
            at = at.max(later(self.window_start, period(cfg)));
        }
        if let Some((0, until)) = self.req_hint {
            at = at.max(until);
        }
        if let Some((left, until)) = self.tok_hint
            && left < est
        {
            at = at.max(until);
        }
        if let Some(cap) = cfg.tokens_per_minute {
            // An oversized request needs a full bucket, not more than the bucket can hold.
            let need = i128::from(est.min(cap)) * MINUTE_NS;
            if self.level < need {
                if cap == 0 {
                    return None;
                }
                let ns = (need - self.level + i128::from(cap) - 1) / i128::from(cap);
                let wait = Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
                at = at.max(later(now, wait));
            }
        }
        Some(at)
    }

    /// Brings the window, the bucket and the hints up to `now`.
    fn refill(&mut self, cfg: &LimiterConfig, now: Instant) {
        let period = period(cfg);
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= period {
            let rem = elapsed.as_nanos() % period.as_nanos();
            self.window_start = now - Duration::from_nanos(u64::try_from(rem).unwrap_or(0));
            self.permits = cfg.limit_for_period;
        }
        if let Some(cap) = cfg.tokens_per_minute {
            let dt = i128::try_from(now.saturating_duration_since(self.level_at).as_nanos())
                .unwrap_or(i128::MAX);
            let full = i128::from(cap) * MINUTE_NS;
            self.level = self
                .level
                .saturating_add(dt.saturating_mul(i128::from(cap)))
                .min(full);
        }
        self.level_at = now;
        self.blocked_until = self.blocked_until.filter(|&b| b > now);
        self.req_hint = self.req_hint.filter(|&(_, until)| until > now);
        self.tok_hint = self.tok_hint.filter(|&(_, until)| until > now);
    }

    fn take(&mut self, cfg: &LimiterConfig, est: u64) -> Ticket {
        self.permits = self.permits.saturating_sub(1);
        if let Some((left, _)) = &mut self.req_hint {
            *left = left.saturating_sub(1);
        }
        if let Some((left, _)) = &mut self.tok_hint {
            *left = left.saturating_sub(est);
        }
        if cfg.tokens_per_minute.is_some() {
            self.level -= i128::from(est) * MINUTE_NS;
        }
        Ticket {
            window_start: self.window_start,
            est,
        }
    }

    /// Gives back a grant its caller never saw (it was cancelled in between).
    fn refund(&mut self, cfg: &LimiterConfig, t: Ticket) {
        if t.window_start == self.window_start {
            self.permits = self.permits.saturating_add(1).min(cfg.limit_for_period);
        }
        if let Some(cap) = cfg.tokens_per_minute {
            let full = i128::from(cap) * MINUTE_NS;
            self.level = (self.level + i128::from(t.est) * MINUTE_NS).min(full);
        }
    }

    /// Removes a queued waiter; false if it already left the queue (granted or failed).
    fn remove(&mut self, seq: u64) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|w| w.seq != seq);
        self.waiters.len() != before
    }
}

/// A queued request; dropping it before a verdict was read withdraws it.
struct Pending<'a> {
    inner: &'a Arc<Inner>,
    seq: u64,
    rx: oneshot::Receiver<Verdict>,
    settled: bool,
}

impl Pending<'_> {
    /// At the deadline: leave the queue, unless a grant raced in first (then keep it).
    fn withdraw(&mut self) -> Verdict {
        let mut st = self.inner.lock();
        if st.remove(self.seq) {
            self.inner.kick(&mut st);
            return Verdict::Hopeless;
        }
        self.rx.try_recv().unwrap_or(Verdict::Hopeless)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut st = self.inner.lock();
        // Grants are sent under this lock, so a waiter no longer queued has its verdict ready.
        if !st.remove(self.seq)
            && let Ok(Verdict::Granted(ticket)) = self.rx.try_recv()
        {
            st.refund(&self.inner.cfg, ticket);
        }
        self.inner.kick(&mut st);
    }
}

fn period(cfg: &LimiterConfig) -> Duration {
    cfg.limit_refresh_period.max(Duration::from_nanos(1))
}

/// `at + d`, saturating at a far future instead of panicking on absurd durations.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Mutex as StdMutex;
    use tokio::time::{advance, sleep};

    fn cfg(limit: u32, period_s: u64) -> LimiterConfig {
        LimiterConfig {
            limit_for_period: limit,
            limit_refresh_period: Duration::from_secs(period_s),
            tokens_per_minute: None,
            timeout_duration: Duration::from_secs(30),
        }
    }

    /// Queues one waiter per priority, in order, and returns the order they were served in.
    async fn served_order(lim: &RateLimiter, priorities: &[u8]) -> Vec<usize> {
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, &p) in priorities.iter().enumerate() {
            let (task_lim, order) = (lim.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                task_lim.acquire(p, 1).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            while lim.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_overtakes_then_fifo() {
        let lim = RateLimiter::new(cfg(1, 1));
        lim.acquire(0, 1).await.unwrap();
        let order = served_order(&lim, &[1, 3, 2, 3, 0]).await;
        assert_eq!(order, vec![1, 3, 2, 0, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn equal_priorities_are_served_in_arrival_order() {
        let lim = RateLimiter::new(cfg(1, 1));
        lim.acquire(0, 1).await.unwrap();
        let order = served_order(&lim, &[5, 5, 5, 5, 5]).await;
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn permits_come_back_at_the_window_boundary() {
        let lim = RateLimiter::new(cfg(2, 1));
        let start = Instant::now();
        lim.acquire(0, 1).await.unwrap();
        lim.acquire(0, 1).await.unwrap();
        assert_eq!(Instant::now(), start);
        lim.acquire(0, 1).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        // The window is fixed: 1.5 s in, one permit is left and the next waits for 2 s.
        advance(Duration::from_millis(500)).await;
        lim.acquire(0, 1).await.unwrap();
        lim.acquire(0, 1).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_that_comes_too_late_fails_at_once() {
        let lim = RateLimiter::new(LimiterConfig {
            timeout_duration: Duration::from_secs(5),
            ..cfg(1, 60)
        });
        lim.acquire(0, 1).await.unwrap();
        let err = lim.acquire(0, 1).await.unwrap_err();
        assert_eq!(
            err,
            LimiterError::Timeout {
                waited: Duration::ZERO
            }
        );
        assert_eq!(lim.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_kept_behind_others_times_out_at_its_deadline() {
        let lim = RateLimiter::new(LimiterConfig {
            timeout_duration: Duration::from_secs(15),
            ..cfg(1, 10)
        });
        lim.acquire(0, 1).await.unwrap();
        let start = Instant::now();
        let high = |lim: &RateLimiter| {
            let lim = lim.clone();
            tokio::spawn(async move { lim.acquire(9, 1).await })
        };
        let a = high(&lim);
        let low = {
            let lim = lim.clone();
            tokio::spawn(async move { lim.acquire(1, 1).await })
        };
        sleep(Duration::from_secs(9)).await;
        let c = high(&lim); // arrives before `low` reaches the head at 10 s
        assert_eq!(
            low.await.unwrap(),
            Err(LimiterError::Timeout {
                waited: Duration::from_secs(15)
            })
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(15));
        assert!(a.await.unwrap().is_ok());
        assert!(c.await.unwrap().is_ok());
        assert_eq!(Instant::now() - start, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_continuously() {
        let lim = RateLimiter::new(LimiterConfig {
            tokens_per_minute: Some(600),
            timeout_duration: Duration::from_secs(120),
            ..cfg(1000, 60)
        });
        let start = Instant::now();
        lim.acquire(0, 600).await.unwrap();
        lim.acquire(0, 300).await.unwrap(); // 10 tokens/s
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // Bigger than the bucket: admitted once the bucket is full, then repaid.
        lim.acquire(0, 1000).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(90));
        lim.acquire(0, 60).await.unwrap(); // from -400 up to 60
        assert_eq!(Instant::now() - start, Duration::from_secs(136));
    }

    #[tokio::test(start_paused = true)]
    async fn provider_hints_block_until_their_reset() {
        let lim = RateLimiter::new(cfg(100, 60));
        let start = Instant::now();
        lim.observe(&RateHints {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(5)),
            ..RateHints::default()
        });
        lim.acquire(0, 1).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));

        lim.observe(&RateHints {
            remaining_tokens: Some(100),
            reset_tokens: Some(Duration::from_secs(10)),
            ..RateHints::default()
        });
        lim.acquire(0, 50).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        lim.acquire(0, 80).await.unwrap(); // only 50 left until the reset
        assert_eq!(Instant::now() - start, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_and_fails_fast_when_beyond_the_timeout() {
        let lim = RateLimiter::new(cfg(100, 60));
        let start = Instant::now();
        let hint = |s| RateHints {
            retry_after: Some(Duration::from_secs(s)),
            ..RateHints::default()
        };
        lim.observe(&hint(3));
        lim.acquire(0, 1).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        lim.observe(&hint(45));
        assert!(lim.acquire(0, 1).await.is_err());
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_frees_its_place() {
        let lim = RateLimiter::new(cfg(1, 10));
        lim.acquire(0, 1).await.unwrap();
        let start = Instant::now();
        let first = {
            let lim = lim.clone();
            tokio::spawn(async move { lim.acquire(9, 1).await })
        };
        let second = {
            let lim = lim.clone();
            tokio::spawn(async move { lim.acquire(1, 1).await })
        };
        while lim.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        first.abort();
        let _ = first.await;
        assert_eq!(lim.waiting(), 1);
        second.await.unwrap().unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_dropped_before_it_was_seen_is_given_back() {
        let lim = RateLimiter::new(cfg(1, 10));
        lim.acquire(0, 1).await.unwrap();
        let mut fut = Box::pin(lim.acquire(0, 1));
        assert!(futures::poll!(&mut fut).is_pending());
        // The dispatcher grants at 10 s while nobody polls `fut`.
        sleep(Duration::from_millis(10_001)).await;
        assert_eq!(lim.waiting(), 0);
        drop(fut);
        let t = Instant::now();
        lim.acquire(0, 1).await.unwrap();
        assert_eq!(Instant::now(), t);
    }

    #[test]
    fn survives_the_runtime_that_served_it() {
        let paused = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        let lim = RateLimiter::new(cfg(1, 1));
        paused().block_on(async {
            lim.acquire(0, 1).await.unwrap();
            let waiter = {
                let lim = lim.clone();
                tokio::spawn(async move { lim.acquire(0, 1).await })
            };
            while lim.waiting() < 1 {
                tokio::task::yield_now().await;
            }
            drop(waiter); // detached: the runtime's shutdown drops it and the dispatcher
        });
        assert_eq!(lim.waiting(), 0);
        paused().block_on(async { lim.acquire(0, 1).await.unwrap() });
    }
}
