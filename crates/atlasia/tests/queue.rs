//! The durable run queue, driven through `atlasia_store::Store` directly: concurrent claimers
//! get every run exactly once and in priority order, expired leases are reclaimed while
//! heartbeated ones are not, PAUSED runs are never handed out (whether paused through the store
//! or by the runbook's hand-written SQL), and `release` is reserved to the lease holder, even
//! when racing a reclaim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_core::{Autonomy, NewRun, Run, RunAction, RunId, RunStatus, Timestamp};
use atlasia_store::{Claim, RunFilter, Store};
use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A lease long enough never to expire during a test.
const LONG_LEASE: Duration = Duration::from_secs(600);

fn new_run(title: &str, priority: i32) -> NewRun {
    NewRun {
        repo: "acme/widgets".into(),
        issue_number: None,
        title: title.into(),
        body: String::new(),
        priority,
        autonomy: Autonomy::Autonomous,
        budget_usd: None,
    }
}

/// Deterministic priorities in 0..=10 that are not sorted in any useful way (a 64-bit LCG,
/// high bits), so the queue has to do the ordering.
fn priorities(n: usize) -> Vec<i32> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            i32::try_from((state >> 33) % 11).unwrap()
        })
        .collect()
}

/// Claims for `owner` until the queue says there is nothing left.
async fn drain(store: &Store, owner: &str) -> Vec<Claim> {
    let mut out = Vec::new();
    while let Some(c) = store.claim(owner, LONG_LEASE).await.unwrap() {
        out.push(c);
        assert!(out.len() <= 10_000, "claim never returned None");
    }
    out
}

/// Every run in the database (the store's own listing, all pages).
async fn all_runs(store: &Store) -> Vec<Run> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_runs(&RunFilter::default(), 200, cursor)
            .await
            .unwrap();
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// The event kinds of a run, oldest first, after checking that their seqs are 1, 2, 3… .
async fn event_kinds(store: &Store, id: RunId) -> Vec<String> {
    let events = store.events(id, 0, 1000).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
    assert_eq!(seqs, expected, "event seqs must be gapless from 1");
    events.into_iter().map(|e| e.kind).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Concurrent claimers
// ---------------------------------------------------------------------------------------------

const RUNS: usize = 500;
const CLAIMERS: usize = 8;

/// One successful claim as a claimer saw it.
#[derive(Debug, Clone)]
struct Taken {
    claimer: usize,
    /// Tickets handed out before this claim was started: every claim with a ticket below this
    /// had returned before this one began.
    started_after: u64,
    /// Global completion order, taken right after `claim` returned.
    ticket: u64,
    id: RunId,
    priority: i32,
}

/// One claimer: claims until `None`, recording start and completion tickets.
async fn claimer(store: Store, me: usize, tickets: Arc<AtomicU64>) -> Vec<Taken> {
    let owner = format!("claimer-{me}");
    let mut taken = Vec::new();
    loop {
        let started_after = tickets.load(Ordering::SeqCst);
        let Some(c) = store.claim(&owner, LONG_LEASE).await.unwrap() else {
            return taken;
        };
        let ticket = tickets.fetch_add(1, Ordering::SeqCst);
        assert!(
            !c.reclaimed,
            "nothing has expired, yet {c:?} was 'reclaimed'"
        );
        assert_eq!(c.run.status, RunStatus::Running);
        assert_eq!(c.run.lease_owner.as_deref(), Some(owner.as_str()));
        taken.push(Taken {
            claimer: me,
            started_after,
            ticket,
            id: c.run.id,
            priority: c.run.priority,
        });
    }
}

/// The global priority rule, checked exactly rather than with a tolerance.
///
/// Claim `a` returned before claim `b` started (`a.ticket < b.started_after`). When `a`
/// picked its run, `b`'s run was PENDING (it is claimed exactly once, by `b`, later) and no
/// other claimer held it (a claimer that locks a row always takes it, and it went to `b`).
/// So a correct queue gave `a` a run of priority at least `b`'s. Pairs that overlapped in time
/// are exempt: with SKIP LOCKED a claimer may legitimately pass over a row another in-flight
/// claimer is taking, and the ticket order of overlapping claims says nothing about the order
/// in which they picked. This is the precise form of "inversions only among concurrent
/// claims"; a fixed window of 8 would be wrong, because a claimer waiting on SQLite's write
/// lock can watch the others finish many claims.
fn assert_priority_order(all: &[Taken]) {
    let mut by_ticket = all.to_vec();
    by_ticket.sort_by_key(|t| t.ticket);
    // min_before[k] = lowest priority among tickets 0..k.
    let mut min_before = Vec::with_capacity(by_ticket.len() + 1);
    min_before.push(i32::MAX);
    for t in &by_ticket {
        min_before.push((*min_before.last().unwrap()).min(t.priority));
    }
    let mut overlapped_inversions = 0;
    for b in &by_ticket {
        let floor = min_before[usize::try_from(b.started_after).unwrap()];
        assert!(
            floor >= b.priority,
            "claim {b:?} took priority {} although an earlier, non-overlapping claim had \
             taken priority {floor} while it was still pending",
            b.priority
        );
        overlapped_inversions +=
            usize::from(min_before[usize::try_from(b.ticket).unwrap()] < b.priority);
    }
    eprintln!("priority inversions between overlapping claims: {overlapped_inversions}");
}

/// The order check itself: it must reject an inversion between claims that did not overlap,
/// and accept one between claims that did (no database involved).
#[test]
fn priority_order_check_has_teeth() {
    let taken = |ticket, started_after, priority| Taken {
        claimer: 0,
        started_after,
        ticket,
        id: RunId::new(),
        priority,
    };
    // Ticket 1 started while ticket 0 was in flight: allowed to outrank it.
    assert_priority_order(&[taken(0, 0, 3), taken(1, 0, 7), taken(2, 2, 3)]);
    // Ticket 1 started after ticket 0 returned: its run was waiting and should have gone first.
    let late = std::panic::catch_unwind(|| {
        assert_priority_order(&[taken(0, 0, 3), taken(1, 1, 7)]);
    });
    assert!(late.is_err(), "a non-overlapping inversion went unnoticed");
}

async fn concurrent_claimers(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(10).await;
    let prios = priorities(RUNS);
    let mut priority_of = HashMap::new();
    for (i, p) in prios.iter().enumerate() {
        let run = store
            .create_run(&new_run(&format!("run {i}"), *p))
            .await
            .unwrap();
        priority_of.insert(run.id, *p);
    }
    // Every priority level is present, or the ordering check would be weak.
    assert_eq!(prios.iter().collect::<HashSet<_>>().len(), 11);

    let tickets = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|me| tokio::spawn(claimer(store.clone(), me, tickets.clone())))
        .collect();
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for (me, task) in tasks.into_iter().enumerate() {
        let mine = task.await.unwrap();
        counts.push(mine.len());
        // Each claimer's own sequence never goes up in priority.
        for w in mine.windows(2) {
            assert!(w[0].priority >= w[1].priority, "claimer {me}: {w:?}");
        }
        all.extend(mine);
    }
    assert!(store.claim("late", LONG_LEASE).await.unwrap().is_none());
    eprintln!("claims per claimer: {counts:?}");
    // The claims really were concurrent and fair: PostgreSQL claimers never wait on each other
    // (SKIP LOCKED) and SQLite claimers queue first come first served in the store, so every
    // claimer gets work.
    let busy = counts.iter().filter(|n| **n > 0).count();
    assert_eq!(busy, CLAIMERS, "{counts:?}");

    // Exactly once: no duplicates, none missing, priorities as stored.
    let mut seen = HashSet::new();
    for t in &all {
        assert!(seen.insert(t.id), "run {} claimed twice", t.id);
        assert_eq!(priority_of.get(&t.id), Some(&t.priority));
    }
    assert_eq!(seen.len(), RUNS, "some runs were never claimed");

    // What is stored agrees with what each claimer was told.
    let owner_of: HashMap<RunId, String> = all
        .iter()
        .map(|t| (t.id, format!("claimer-{}", t.claimer)))
        .collect();
    let stored = all_runs(&store).await;
    assert_eq!(stored.len(), RUNS);
    for run in &stored {
        assert_eq!(run.status, RunStatus::Running, "{}", run.id);
        assert_eq!(
            run.lease_owner.as_ref(),
            owner_of.get(&run.id),
            "{}",
            run.id
        );
    }

    assert_priority_order(&all);
}

// ---------------------------------------------------------------------------------------------
// 2. Leases
// ---------------------------------------------------------------------------------------------

async fn expired_lease_is_reclaimed(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = store.create_run(&new_run("stale", 5)).await.unwrap();
    let first = store
        .claim("w1", Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the run is claimable");
    assert_eq!((first.run.id, first.reclaimed), (run.id, false));
    let expires = first.run.lease_expires_at.unwrap();

    // w1 never heartbeats; w2 keeps asking until the lease has lapsed.
    let s = &store;
    let second = eventually(Duration::from_secs(10), || async move {
        s.claim("w2", LONG_LEASE).await.unwrap()
    })
    .await;
    assert_eq!(second.run.id, run.id);
    assert!(second.reclaimed);
    assert_eq!(second.run.status, RunStatus::Running);
    assert_eq!(second.run.lease_owner.as_deref(), Some("w2"));

    // The old holder has lost it; the new one has it.
    assert!(!store.heartbeat(run.id, "w1", LONG_LEASE).await.unwrap());
    assert!(store.heartbeat(run.id, "w2", LONG_LEASE).await.unwrap());

    assert_eq!(
        event_kinds(&store, run.id).await,
        ["run_created", "status_changed", "lease_claimed"]
    );
    let events = store.events(run.id, 2, 10).await.unwrap();
    let ev = &events[0];
    assert_eq!(ev.data["reclaimed"], json!(true), "{}", ev.data);
    assert_eq!(ev.data["previous_owner"], json!("w1"), "{}", ev.data);
    assert_eq!(ev.data["owner"], json!("w2"), "{}", ev.data);
    // Taken over only once the lease had really expired, not before.
    assert!(
        ev.created_at > expires,
        "reclaimed at {:?}, lease ran until {expires:?}",
        ev.created_at
    );
}

/// Heartbeats every `every` for `beats` beats; returns, for each, whether the lease was kept.
async fn heartbeat_for(
    store: Store,
    id: RunId,
    lease: Duration,
    every: Duration,
    beats: u32,
) -> Vec<bool> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kept = Vec::new();
    for _ in 0..beats {
        tick.tick().await;
        kept.push(store.heartbeat(id, "w1", lease).await.unwrap());
    }
    kept
}

async fn heartbeat_keeps_the_lease(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = store.create_run(&new_run("busy", 5)).await.unwrap();
    let lease = Duration::from_millis(300);
    let first = store.claim("w1", lease).await.unwrap().unwrap();
    assert_eq!(first.run.id, run.id);

    // ~1 s of heartbeats, a third of the lease apart; meanwhile w2 keeps trying to claim.
    let beats = tokio::spawn(heartbeat_for(
        store.clone(),
        run.id,
        lease,
        Duration::from_millis(100),
        10,
    ));
    let mut attempts = 0;
    while !beats.is_finished() {
        let stolen = store.claim("w2", LONG_LEASE).await.unwrap();
        assert!(
            stolen.is_none(),
            "a heartbeated lease was taken: {stolen:?}"
        );
        attempts += 1;
        // Pacing of the poll only; nothing waits on this.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = beats.await.unwrap();
    assert_eq!(kept, vec![true; 10], "w1 lost its lease while heartbeating");
    assert!(attempts >= 5, "w2 tried only {attempts} times");

    // Once w1 stops, the same poll does take the run: the check above could have failed.
    let s = &store;
    let taken = eventually(Duration::from_secs(10), || async move {
        s.claim("w2", LONG_LEASE).await.unwrap()
    })
    .await;
    assert_eq!((taken.run.id, taken.reclaimed), (run.id, true));
}

// ---------------------------------------------------------------------------------------------
// 3. PAUSED runs
// ---------------------------------------------------------------------------------------------

async fn paused_runs_are_never_claimed(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let mut runs = Vec::new();
    for (i, p) in [10, 9, 8, 7, 3, 2, 1, 0].into_iter().enumerate() {
        runs.push(
            store
                .create_run(&new_run(&format!("r{i}"), p))
                .await
                .unwrap(),
        );
    }
    // Hold back the three most urgent (a queue ignoring PAUSED would hand them out first),
    // two through the operator action and one through a plain transition.
    let paused = [runs[0].id, runs[1].id, runs[2].id];
    for id in &paused[..2] {
        let r = store
            .apply_action(*id, RunAction::Pause, "hold")
            .await
            .unwrap();
        assert_eq!(r.status, RunStatus::Paused);
    }
    let r = store
        .transition(
            paused[2],
            RunStatus::Pending,
            RunStatus::Paused,
            "hold",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.map(|r| r.status), Some(RunStatus::Paused));

    // The queue hands out exactly the others, most urgent first, then nothing.
    let got: Vec<RunId> = drain(&store, "w1").await.iter().map(|c| c.run.id).collect();
    let expected: Vec<RunId> = runs[3..].iter().map(|r| r.id).collect();
    assert_eq!(got, expected);
    for id in paused {
        let r = store.get_run(id).await.unwrap();
        assert_eq!(
            (r.status, r.lease_owner, r.started_at),
            (RunStatus::Paused, None, None)
        );
    }

    // Resuming one makes exactly that one claimable.
    store
        .apply_action(paused[1], RunAction::Resume, "go")
        .await
        .unwrap();
    let got: Vec<RunId> = drain(&store, "w1").await.iter().map(|c| c.run.id).collect();
    assert_eq!(got, [paused[1]]);

    // The bulk resume brings back the rest, in priority order.
    let moved = store
        .bulk_transition(RunStatus::Paused, RunStatus::Pending, 11, "resume all")
        .await
        .unwrap();
    assert_eq!(moved, 2);
    let got: Vec<RunId> = drain(&store, "w1").await.iter().map(|c| c.run.id).collect();
    assert_eq!(got, [paused[0], paused[2]]);
}

// ---------------------------------------------------------------------------------------------
// 4. The runbook's SQL, by hand
// ---------------------------------------------------------------------------------------------

const RUNBOOK_PAUSE: &str =
    "UPDATE workflow_runs SET status = 'PAUSED' WHERE status = 'PENDING' AND priority < 5;";

/// Runs SQL through the backend's CLI and returns the raw outcome, failures included (the
/// harness's `sql_cli` asserts success).
fn sql_cli_output(tdb: &TestDb, sql: &str) -> std::process::Output {
    match tdb.kind {
        Db::Sqlite => std::process::Command::new("sqlite3")
            .arg(tdb.url.trim_start_matches("sqlite://"))
            .arg(sql)
            .output(),
        Db::Postgres => std::process::Command::new("psql")
            .args([&tdb.url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output(),
    }
    .expect("the database CLI (sqlite3 / psql) must be installed")
}

fn cli_count(tdb: &TestDb, status: &str) -> usize {
    let sql = format!("SELECT COUNT(*) FROM workflow_runs WHERE status = '{status}';");
    tdb.sql_cli(&sql).trim().parse().unwrap()
}

async fn runbook_sql_pauses_low_priority(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    // Runs that the statement must not touch although their priority is low: one RUNNING
    // (created and claimed alone so the claim picks it) and one CANCELLED.
    let running = store.create_run(&new_run("running", 1)).await.unwrap();
    store.claim("w1", LONG_LEASE).await.unwrap().unwrap();
    let cancelled = store.create_run(&new_run("cancelled", 1)).await.unwrap();
    store
        .apply_action(cancelled.id, RunAction::Cancel, "no")
        .await
        .unwrap();
    // Two PENDING runs at every priority.
    let mut pending = Vec::new();
    for p in (0..=10).chain(0..=10) {
        pending.push(
            store
                .create_run(&new_run(&format!("p{p}"), p))
                .await
                .unwrap(),
        );
    }
    let low = pending.iter().filter(|r| r.priority < 5).count();
    assert_eq!(low, 10);

    tdb.sql_cli(RUNBOOK_PAUSE);

    assert_eq!(cli_count(&tdb, "PAUSED"), low);
    for r in &pending {
        let now = store.get_run(r.id).await.unwrap();
        let want = if r.priority < 5 {
            RunStatus::Paused
        } else {
            RunStatus::Pending
        };
        assert_eq!(now.status, want, "priority {}", r.priority);
    }
    let r = store.get_run(running.id).await.unwrap();
    assert_eq!(
        (r.status, r.lease_owner.as_deref()),
        (RunStatus::Running, Some("w1"))
    );
    assert_eq!(
        store.get_run(cancelled.id).await.unwrap().status,
        RunStatus::Cancelled
    );

    // The queue now hands out only priority >= 5, all of them, most urgent first.
    let got: Vec<i32> = drain(&store, "w2")
        .await
        .iter()
        .map(|c| c.run.priority)
        .collect();
    assert_eq!(got, [10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5]);
}

async fn check_constraint_refuses_typo(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(2).await;
    for p in [1, 7] {
        store.create_run(&new_run("r", p)).await.unwrap();
    }
    let out = sql_cli_output(
        &tdb,
        "UPDATE workflow_runs SET status = 'PAUSD' WHERE status = 'PENDING' AND priority < 5;",
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "a typo status was accepted");
    assert!(
        stderr.contains("check constraint"),
        "unexpected error: {stderr}"
    );
    // Nothing changed, and the store still reads every row.
    assert_eq!(cli_count(&tdb, "PENDING"), 2);
    assert_eq!(drain(&store, "w1").await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. release()
// ---------------------------------------------------------------------------------------------

async fn release_is_for_the_lease_holder(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = store.create_run(&new_run("work", 5)).await.unwrap();
    let claim = store.claim("w1", LONG_LEASE).await.unwrap().unwrap();
    let started = claim.run.started_at.expect("claim stamps started_at");

    // Someone else cannot finish it, and trying changes nothing.
    assert!(
        store
            .release(run.id, "w2", RunStatus::Done, "not mine")
            .await
            .unwrap()
            .is_none()
    );
    let r = store.get_run(run.id).await.unwrap();
    assert_eq!(
        (r.status, r.lease_owner.as_deref()),
        (RunStatus::Running, Some("w1"))
    );

    let done = store
        .release(run.id, "w1", RunStatus::Done, "finished")
        .await
        .unwrap()
        .expect("the holder can release");
    assert_eq!(done.status, RunStatus::Done);
    assert!(done.finished_at.is_some_and(|f| f >= started), "{done:?}");
    assert_eq!((&done.lease_owner, done.lease_expires_at), (&None, None));
    assert_eq!(store.get_run(run.id).await.unwrap(), done);

    // Released is released: no second release, no heartbeat, nothing to claim.
    assert!(
        store
            .release(run.id, "w1", RunStatus::Done, "again")
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.heartbeat(run.id, "w1", LONG_LEASE).await.unwrap());
    assert!(store.claim("w3", LONG_LEASE).await.unwrap().is_none());

    let events = store.events(run.id, 0, 10).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "status_changed");
    assert_eq!(
        (&last.data["from"], &last.data["to"], &last.data["owner"]),
        (&json!("RUNNING"), &json!("DONE"), &json!("w1"))
    );
    assert_eq!(last.seq, done.last_event_seq);
}

/// A lease that has just expired, on a fresh run: returns the run's id.
async fn lapsed_claim(store: &Store, n: usize) -> RunId {
    let run = store
        .create_run(&new_run(&format!("race {n}"), 5))
        .await
        .unwrap();
    let c = store
        .claim("w1", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.run.id, run.id);
    let expires = c.run.lease_expires_at.unwrap();
    // Spins only until the wall clock passes the lease (a millisecond or two).
    while Timestamp::now() <= expires {
        tokio::task::yield_now().await;
    }
    run.id
}

/// The old holder releasing while another worker reclaims its lapsed lease: exactly one of
/// them may win. `release` reads the run, then updates it; if the reclaim commits in between,
/// the update must not go through (it used to, marking DONE a run just handed to `w2`).
/// A race, so it is repeated; before the fix a quarter (SQLite) to two thirds (PostgreSQL)
/// of the rounds went wrong.
async fn release_loses_to_reclaim(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    for n in 0..100 {
        let id = lapsed_claim(&store, n).await;
        let (released, reclaimed) = tokio::join!(
            store.release(id, "w1", RunStatus::Done, "finished late"),
            store.claim("w2", LONG_LEASE)
        );
        let (released, reclaimed) = (released.unwrap(), reclaimed.unwrap());
        let now = store.get_run(id).await.unwrap();
        match (released, reclaimed) {
            (Some(_), None) => assert_eq!(now.status, RunStatus::Done),
            (None, Some(c)) => {
                assert_eq!((c.run.id, c.reclaimed), (id, true));
                assert_eq!(
                    (now.status, now.lease_owner.as_deref()),
                    (RunStatus::Running, Some("w2"))
                );
                // Out of the way of the next round.
                store
                    .release(id, "w2", RunStatus::Done, "ok")
                    .await
                    .unwrap()
                    .unwrap();
            }
            (r, c) => panic!("round {n}: release {r:?} and claim {c:?}; run is now {now:?}"),
        }
    }
}

on_both! {
    claim_concurrent_exactly_once_in_priority_order => concurrent_claimers;
    claim_reclaims_expired_lease => expired_lease_is_reclaimed;
    claim_respects_heartbeated_lease => heartbeat_keeps_the_lease;
    claim_skips_paused => paused_runs_are_never_claimed;
    runbook_sql_pause_by_priority => runbook_sql_pauses_low_priority;
    runbook_sql_typo_refused => check_constraint_refuses_typo;
    release_only_by_holder => release_is_for_the_lease_holder;
    release_races_reclaim => release_loses_to_reclaim;
}
