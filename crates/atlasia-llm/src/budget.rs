//! Spending caps per bolt (run) and per UTC day, enforced before a call is made: a call
//! reserves its maximum cost, and settles to its actual cost afterwards (or to nothing, if it
//! failed and its reservation is dropped). Check and reservation happen under one lock, so
//! concurrent calls cannot all see the same headroom and overspend together. Amounts are kept
//! in integer nano-dollars, so thousands of reserve/settle rounds leave no float residue.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{ErrorKind, LlmError};

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Cap per bolt; a run's own cap overrides it.
    pub per_bolt_usd: Option<f64>,
    /// Cap per UTC day across all runs.
    pub per_day_usd: Option<f64>,
    /// Share of a cap from which `level` reports `Soft`.
    pub soft_ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            per_bolt_usd: None,
            per_day_usd: None,
            soft_ratio: 0.8,
        }
    }
}

/// Which cap refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Bolt,
    Day,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bolt => "bolt",
            Self::Day => "daily",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "the {scope} budget of ${cap:.4} does not cover this call: ${committed:.4} is already spent or reserved"
)]
pub struct BudgetError {
    pub scope: Scope,
    pub cap: f64,
    /// Spent plus reserved in that scope when the call was refused.
    pub committed: f64,
}

impl From<BudgetError> for LlmError {
    fn from(e: BudgetError) -> Self {
        LlmError::new(ErrorKind::Budget, e.to_string())
    }
}

/// How close to its caps a run is, so the router can pick a cheaper model before the hard stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BudgetLevel {
    Normal,
    /// At or above `soft_ratio` of a cap.
    Soft,
    /// A cap is fully committed.
    Exhausted,
}

/// A cheap-to-clone handle; clones share one ledger.
#[derive(Clone)]
pub struct Budgets {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: BudgetConfig,
    /// Today's UTC day number; injected so tests can cross midnight.
    today: Box<dyn Fn() -> i64 + Send + Sync>,
    ledger: Mutex<Ledger>,
}

struct Ledger {
    day: i64,
    today: Tally,
    runs: HashMap<String, Tally>,
}

/// Nano-dollars.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    spent: u64,
    reserved: u64,
}

impl Tally {
    fn committed(self) -> u64 {
        self.spent.saturating_add(self.reserved)
    }
}

/// Money set aside for one call. `settle` it with the actual cost; dropping it releases it.
#[must_use = "settle the reservation with the call's actual cost"]
pub struct Reservation {
    shared: Arc<Shared>,
    run: Option<String>,
    day: i64,
    amount: u64,
    settled: bool,
}

impl Budgets {
    pub fn new(cfg: BudgetConfig) -> Self {
        Self::with_clock(cfg, utc_day)
    }

    /// With `today` returning the current day number (days since 1970-01-01 UTC).
    pub fn with_clock(cfg: BudgetConfig, today: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        let day = today();
        Self {
            shared: Arc::new(Shared {
                cfg,
                today: Box::new(today),
                ledger: Mutex::new(Ledger {
                    day,
                    today: Tally::default(),
                    runs: HashMap::new(),
                }),
            }),
        }
    }

    /// Sets `amount` USD aside for a call of `run` (none for calls outside a bolt), if both the
    /// bolt cap (`run_cap`, else `per_bolt_usd`) and the day cap still cover it.
    pub fn reserve(
        &self,
        run: Option<&str>,
        run_cap: Option<f64>,
        amount: f64,
    ) -> Result<Reservation, BudgetError> {
        let amount = nanos(amount);
        let mut l = self.shared.ledger();
        if let (Some(run), Some(cap)) = (run, run_cap.or(self.shared.cfg.per_bolt_usd)) {
            let tally = l.runs.get(run).copied().unwrap_or_default();
            check(Scope::Bolt, cap, tally, amount)?;
        }
        if let Some(cap) = self.shared.cfg.per_day_usd {
            check(Scope::Day, cap, l.today, amount)?;
        }
        if let Some(run) = run {
            let tally = l.runs.entry(run.to_owned()).or_default();
            tally.reserved = tally.reserved.saturating_add(amount);
        }
        l.today.reserved = l.today.reserved.saturating_add(amount);
        Ok(Reservation {
            shared: Arc::clone(&self.shared),
            run: run.map(str::to_owned),
            day: l.day,
            amount,
            settled: false,
        })
    }

    /// The highest level over the run's bolt cap and the day cap.
    pub fn level(&self, run: Option<&str>, run_cap: Option<f64>) -> BudgetLevel {
        let l = self.shared.ledger();
        let soft = self.shared.cfg.soft_ratio;
        let bolt = run
            .zip(run_cap.or(self.shared.cfg.per_bolt_usd))
            .map(|(run, cap)| level_of(cap, l.runs.get(run).copied().unwrap_or_default(), soft));
        let day = self
            .shared
            .cfg
            .per_day_usd
            .map(|cap| level_of(cap, l.today, soft));
        bolt.into_iter()
            .chain(day)
            .max()
            .unwrap_or(BudgetLevel::Normal)
    }

    /// USD settled for `run` so far.
    pub fn spent(&self, run: &str) -> f64 {
        usd(self.shared.ledger().runs.get(run).map_or(0, |t| t.spent))
    }

    /// USD settled since UTC midnight.
    pub fn spent_today(&self) -> f64 {
        usd(self.shared.ledger().today.spent)
    }

    /// Restores a run's spend after a restart. Takes the larger of the stored and the known
    /// figure, so seeding late cannot erase calls settled in between.
    pub fn seed_run(&self, run: &str, spent: f64) {
        let mut l = self.shared.ledger();
        let tally = l.runs.entry(run.to_owned()).or_default();
        tally.spent = tally.spent.max(nanos(spent));
    }

    /// Restores today's spend after a restart, like `seed_run`.
    pub fn seed_today(&self, spent: f64) {
        let mut l = self.shared.ledger();
        l.today.spent = l.today.spent.max(nanos(spent));
    }

    /// Drops a finished run's tally so the ledger does not grow with every run ever made.
    pub fn forget_run(&self, run: &str) {
        self.shared.ledger().runs.remove(run);
    }

    /// How many runs the ledger tracks now (each is forgotten when its worker lets go).
    pub fn tracked_runs(&self) -> usize {
        self.shared.ledger().runs.len()
    }

    /// The start of the current budget day (UTC midnight), in Unix milliseconds: spend recorded
    /// since then counts against `per_day_usd`.
    pub fn day_start_ms(&self) -> i64 {
        (self.shared.today)().saturating_mul(86_400_000)
    }
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The ledger, with the day tally reset if UTC midnight passed since the last look.
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Every update is a few integer assignments, so a poisoned ledger is still consistent.
        let mut l = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let today = (self.today)();
        if l.day != today {
            l.day = today;
            l.today = Tally::default();
        }
        l
    }

    fn release(&self, r: &Reservation, actual: u64) {
        let mut l = self.ledger();
        if let Some(tally) = r.run.as_deref().and_then(|run| l.runs.get_mut(run)) {
            tally.reserved = tally.reserved.saturating_sub(r.amount);
            tally.spent = tally.spent.saturating_add(actual);
        }
        // A reservation from before midnight went with yesterday's tally; the money is spent today.
        if l.day == r.day {
            l.today.reserved = l.today.reserved.saturating_sub(r.amount);
        }
        l.today.spent = l.today.spent.saturating_add(actual);
    }
}

impl Reservation {
    /// Replaces the reservation by what the call actually cost.
    pub fn settle(mut self, actual_usd: f64) {
        self.settled = true;
        self.shared.release(&self, nanos(actual_usd));
    }

    /// The amount set aside, in USD.
    pub fn amount(&self) -> f64 {
        usd(self.amount)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.release(self, 0);
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("run", &self.run)
            .field("amount_usd", &usd(self.amount))
            .finish_non_exhaustive()
    }
}

fn check(scope: Scope, cap: f64, tally: Tally, amount: u64) -> Result<(), BudgetError> {
    if tally.committed().saturating_add(amount) > nanos(cap) {
        return Err(BudgetError {
            scope,
            cap,
            committed: usd(tally.committed()),
        });
    }
    Ok(())
}

fn level_of(cap: f64, tally: Tally, soft_ratio: f64) -> BudgetLevel {
    let (committed, cap) = (tally.committed(), nanos(cap));
    if committed >= cap {
        BudgetLevel::Exhausted
    } else if committed as f64 >= soft_ratio * cap as f64 {
        BudgetLevel::Soft
    } else {
        BudgetLevel::Normal
    }
}

/// USD → nano-dollars; negative, NaN and infinite amounts count as nothing.
fn nanos(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn utc_day() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        i64::try_from(d.as_secs() / 86_400).unwrap_or(i64::MAX)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    fn bolt_cap(cap: f64) -> Budgets {
        Budgets::new(BudgetConfig {
            per_bolt_usd: Some(cap),
            ..BudgetConfig::default()
        })
    }

    /// 50 tasks × 10 calls against one bolt; each reserves `max_cost` and settles `actual`.
    /// Returns the highest spend seen after any settle and the most calls in flight at once.
    async fn hammer(b: &Budgets, max_cost: f64, actual: fn(&mut StdRng) -> f64) -> (f64, usize) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak_in_flight = Arc::new(AtomicUsize::new(0));
        let peak_spent = Arc::new(Mutex::new(0.0_f64));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (b, in_flight, peak_in_flight, peak_spent) = (
                    b.clone(),
                    Arc::clone(&in_flight),
                    Arc::clone(&peak_in_flight),
                    Arc::clone(&peak_spent),
                );
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(i);
                    for _ in 0..10 {
                        let Ok(r) = b.reserve(Some("bolt"), None, max_cost) else {
                            tokio::task::yield_now().await;
                            continue;
                        };
                        let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        peak_in_flight.fetch_max(n, Ordering::SeqCst);
                        tokio::task::yield_now().await; // the call
                        r.settle(actual(&mut rng));
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let spent = b.spent("bolt");
                        let mut peak = peak_spent.lock().unwrap();
                        *peak = peak.max(spent);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let peak = *peak_spent.lock().unwrap();
        (peak, peak_in_flight.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_settling_within_their_reservation_never_overspend() {
        let b = bolt_cap(1.0);
        let (peak, in_flight) = hammer(&b, 0.07, |rng| rng.random_range(0.0..=0.07)).await;
        assert!(peak <= 1.0, "spent {peak}");
        assert!(in_flight > 1, "the test did not run calls concurrently");
        assert!(b.spent("bolt") > 0.5, "the cap was not approached");
        assert_eq!(b.shared.ledger().runs["bolt"].reserved, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_costing_more_than_reserved_overspend_by_at_most_their_excess() {
        let b = bolt_cap(1.0);
        let (peak, _) = hammer(&b, 0.05, |_| 0.06).await;
        // Only settles push spending past the cap, and once past it nothing more is admitted:
        // the overspend is the excess of the calls in flight then, at most one per task.
        assert!(peak <= 1.0 + 50.0 * 0.01 + 1e-9, "spent {peak}");
        if b.spent("bolt") > 1.0 {
            assert!(b.reserve(Some("bolt"), None, 0.0).is_err());
        }
    }

    #[test]
    fn one_call_at_a_time_overspends_by_at_most_that_calls_excess() {
        let b = bolt_cap(1.0);
        b.seed_run("bolt", 0.97);
        while let Ok(r) = b.reserve(Some("bolt"), None, 0.03) {
            r.settle(0.05); // the estimate was low
        }
        assert_eq!(b.spent("bolt"), 1.02);
    }

    #[test]
    fn a_dropped_reservation_is_released() {
        let b = bolt_cap(1.0);
        let r = b.reserve(Some("bolt"), None, 0.9).unwrap();
        let err = b.reserve(Some("bolt"), None, 0.2).unwrap_err();
        assert_eq!(err.scope, Scope::Bolt);
        assert_eq!(err.committed, 0.9);
        drop(r);
        b.reserve(Some("bolt"), None, 0.2).unwrap().settle(0.15);
        assert_eq!(b.spent("bolt"), 0.15);
        assert_eq!(b.spent_today(), 0.15);
    }

    #[test]
    fn levels_turn_soft_then_exhausted() {
        let b = bolt_cap(1.0);
        let level = || b.level(Some("bolt"), None);
        b.reserve(Some("bolt"), None, 0.79).unwrap().settle(0.79);
        assert_eq!(level(), BudgetLevel::Normal);
        let pending = b.reserve(Some("bolt"), None, 0.01).unwrap(); // reservations count
        assert_eq!(level(), BudgetLevel::Soft);
        pending.settle(0.21);
        assert_eq!(level(), BudgetLevel::Exhausted);
        // A run's own cap overrides the default.
        assert_eq!(b.level(Some("bolt"), Some(10.0)), BudgetLevel::Normal);
        assert_eq!(b.level(None, None), BudgetLevel::Normal);
    }

    #[test]
    fn the_day_cap_spans_runs_and_resets_at_midnight() {
        let day = Arc::new(AtomicI64::new(20_000));
        let clock = Arc::clone(&day);
        let b = Budgets::with_clock(
            BudgetConfig {
                per_day_usd: Some(1.0),
                ..BudgetConfig::default()
            },
            move || clock.load(Ordering::SeqCst),
        );
        b.reserve(Some("a"), None, 0.6).unwrap().settle(0.6);
        let late = b.reserve(None, None, 0.3).unwrap();
        let err = b.reserve(Some("b"), None, 0.2).unwrap_err();
        assert_eq!((err.scope, err.cap), (Scope::Day, 1.0));
        assert_eq!(
            err.to_string(),
            "the daily budget of $1.0000 does not cover this call: $0.9000 is already spent or reserved"
        );
        assert_eq!(b.level(None, None), BudgetLevel::Soft);

        day.store(20_001, Ordering::SeqCst);
        assert_eq!(b.spent_today(), 0.0);
        b.reserve(Some("b"), None, 0.2).unwrap().settle(0.2);
        late.settle(0.3); // reserved yesterday, paid today
        assert_eq!(b.spent_today(), 0.5);
        assert_eq!(b.shared.ledger().today.reserved, 0);
        assert_eq!(b.spent("a"), 0.6);
    }

    #[test]
    fn seeding_restores_spend_after_a_restart() {
        let b = bolt_cap(1.0);
        b.seed_run("bolt", 0.95);
        b.seed_run("bolt", 0.5); // an older figure never lowers it
        assert_eq!(b.spent("bolt"), 0.95);
        assert_eq!(
            b.reserve(Some("bolt"), None, 0.1).unwrap_err().committed,
            0.95
        );
        assert!(b.reserve(Some("bolt"), Some(2.0), 0.1).is_ok());
        b.forget_run("bolt");
        assert_eq!(b.spent("bolt"), 0.0);
    }

    #[test]
    fn the_day_seed_reads_from_midnight_and_forgotten_runs_leave_the_ledger() {
        let day = Arc::new(AtomicI64::new(20_000));
        let clock = Arc::clone(&day);
        let b = Budgets::with_clock(
            BudgetConfig {
                per_day_usd: Some(1.0),
                ..BudgetConfig::default()
            },
            move || clock.load(Ordering::SeqCst),
        );
        // The store is asked for the spend since this instant: UTC midnight of day 20 000.
        assert_eq!(b.day_start_ms(), 20_000 * 86_400_000);
        b.seed_today(0.95);
        assert_eq!(b.reserve(None, None, 0.1).unwrap_err().scope, Scope::Day);
        // Seeded spend belongs to its day like any other.
        day.store(20_001, Ordering::SeqCst);
        assert_eq!(b.day_start_ms(), 20_001 * 86_400_000);
        assert!(b.reserve(None, None, 0.1).is_ok());

        let r = b.reserve(Some("a"), None, 0.1).unwrap();
        b.reserve(Some("b"), None, 0.1).unwrap().settle(0.1);
        assert_eq!(b.tracked_runs(), 2);
        b.forget_run("b");
        // A call still in flight when its run is forgotten settles without coming back.
        b.forget_run("a");
        r.settle(0.1);
        assert_eq!(b.tracked_runs(), 0);
        assert_eq!(b.spent_today(), 0.2);
    }
}
