//! Steps and artifacts through `atlasia_store::Store` directly: completing a step writes the
//! step row, the next artifact version, the event and `current_step` together, only while the
//! caller holds the lease; a worker that lost its lease writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_core::{Autonomy, NewRun, RunStatus};
use atlasia_store::Store;
use common::*;
use serde_json::json;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(600);

async fn claimed_run(store: &Store) -> atlasia_core::Run {
    store
        .create_run(&NewRun {
            repo: "acme/widgets".into(),
            issue_number: Some(7),
            title: "Add a health endpoint".into(),
            body: "GET /health".into(),
            priority: 5,
            autonomy: Autonomy::Autonomous,
            budget_usd: None,
        })
        .await
        .unwrap();
    store.claim("w1", LEASE).await.unwrap().unwrap().run
}

on_both! {
    complete_writes_step_artifact_and_event => complete_writes_step_artifact_and_event;
    lost_lease_writes_nothing => lost_lease_writes_nothing;
    fail_run_records_the_error => fail_run_records_the_error;
}

async fn complete_writes_step_artifact_and_event(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = claimed_run(&store).await;

    let started = store.start_step(run.id, "w1", "PM").await.unwrap().unwrap();
    assert_eq!(started.current_step.as_deref(), Some("PM"));
    let done = store
        .complete_step(
            run.id,
            "w1",
            "PM",
            "ticket_plan",
            &json!({"v": 1}),
            Some("QUALIFIER"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.current_step.as_deref(), Some("QUALIFIER"));
    assert_eq!(done.status, RunStatus::Running);
    // A second version (a loop-back), without a start_step this time.
    store
        .complete_step(
            run.id,
            "w1",
            "PM",
            "ticket_plan",
            &json!({"v": 2}),
            Some("QUALIFIER"),
        )
        .await
        .unwrap()
        .unwrap();

    let arts = store.artifacts(run.id).await.unwrap();
    let versions: Vec<i64> = arts.iter().map(|a| a.version).collect();
    assert_eq!(versions, [1, 2]);
    assert!(
        arts.iter()
            .all(|a| a.kind == "ticket_plan" && a.step == "PM")
    );
    let latest = store
        .latest_artifact(run.id, "ticket_plan")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.version, latest.payload), (2, json!({"v": 2})));
    assert!(
        store
            .latest_artifact(run.id, "work_plan")
            .await
            .unwrap()
            .is_none()
    );

    let events = store.events(run.id, 0, 100).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_created",
            "status_changed",
            "step_started",
            "step_completed",
            "step_completed"
        ]
    );
    assert_eq!(events[3].data["artifact"], "ticket_plan");
    assert_eq!(events[3].data["version"], 1);
    assert_eq!(events[4].data["version"], 2);
    let last = store.get_run(run.id).await.unwrap();
    assert_eq!(last.last_event_seq, events.len() as i64);

    let steps = tdb.sql_cli(&format!(
        "SELECT seq, step, attempt, status FROM run_steps WHERE run_id = '{}' ORDER BY seq",
        run.id
    ));
    let steps: Vec<String> = steps.lines().map(|l| l.replace('|', " ")).collect();
    assert_eq!(steps, ["1 PM 1 DONE", "2 PM 2 DONE"]);
}

async fn lost_lease_writes_nothing(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = claimed_run(&store).await;
    let before = store.events(run.id, 0, 100).await.unwrap().len();

    assert!(
        store
            .start_step(run.id, "w2", "PM")
            .await
            .unwrap()
            .is_none()
    );
    let payload = json!({"v": 1});
    let other = store
        .complete_step(run.id, "w2", "PM", "ticket_plan", &payload, None)
        .await
        .unwrap();
    assert!(other.is_none());
    // Paused: the holder itself no longer holds a RUNNING run.
    store
        .apply_action(run.id, atlasia_core::RunAction::Pause, "test")
        .await
        .unwrap();
    let paused = store
        .complete_step(run.id, "w1", "PM", "ticket_plan", &payload, None)
        .await
        .unwrap();
    assert!(paused.is_none());
    assert!(store.fail_run(run.id, "w1", "x").await.unwrap().is_none());

    assert!(store.artifacts(run.id).await.unwrap().is_empty());
    let events = store.events(run.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), before + 1, "only the pause was logged");
    let rows = tdb.sql_cli(&format!(
        "SELECT COUNT(*) FROM run_steps WHERE run_id = '{}'",
        run.id
    ));
    assert_eq!(rows.trim(), "0");
}

async fn fail_run_records_the_error(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = claimed_run(&store).await;
    store.start_step(run.id, "w1", "PM").await.unwrap().unwrap();
    let failed = store
        .fail_run(run.id, "w1", "PM: invalid output")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("PM: invalid output"));
    assert!(failed.lease_owner.is_none() && failed.finished_at.is_some());
    let events = store.events(run.id, 0, 100).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "status_changed");
    assert_eq!(last.data["to"], "FAILED");
    let rows = tdb.sql_cli(&format!(
        "SELECT status, error FROM run_steps WHERE run_id = '{}'",
        run.id
    ));
    assert_eq!(rows.trim(), "FAILED|PM: invalid output");
}
