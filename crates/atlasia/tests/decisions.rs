//! Human decisions through the API on both backends: a run put at the architecture gate (or
//! escalated) through the store answers approve/reject (PROCEED/ABORT) with the decision stored
//! as an artifact and logged as an event in the same change; wrong gate names, wrong states,
//! unknown fields and viewer tokens are refused. The pull-request endpoint answers 404 without
//! a record and the record (with `diff: null`) once one exists. End to end, a `confirm` run
//! parked by the real engine resumes at DEVELOPER after approval.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_core::{Autonomy, NewRun, RunId, RunStatus};
use atlasia_store::{PullRequestDraft, Store};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// A server without workers (nothing claims behind the test's back) and a store on its database.
async fn setup(db: Db) -> (TestServer, Store) {
    let srv = TestServer::start_with(TestDb::new(db).await, &[]).await;
    let store = srv.db.store(2).await;
    (srv, store)
}

/// A new run moved RUNNING → `to` the way the engine does it (claim, then transition). Each
/// is on an issue of its own: one issue has one active run at a time.
async fn run_at(store: &Store, to: RunStatus) -> RunId {
    static ISSUE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(7);
    let run = store
        .create_run(&NewRun {
            repo: "acme/widgets".into(),
            issue_number: Some(ISSUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            title: "decide me".into(),
            body: String::new(),
            priority: 5,
            autonomy: Autonomy::Confirm,
            budget_usd: None,
        })
        .await
        .unwrap();
    let claim = store
        .claim("test-owner", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.run.id, run.id);
    let moved = store
        .transition(run.id, RunStatus::Running, to, "test", json!({}))
        .await
        .unwrap();
    assert_eq!(moved.unwrap().status, to);
    run.id
}

fn gate_path(id: RunId, gate: &str) -> String {
    format!("/api/runs/{id}/gates/{gate}/respond")
}

fn esc_path(id: RunId) -> String {
    format!("/api/runs/{id}/escalation-decision")
}

/// The run's last event.
async fn last_event(srv: &TestServer, id: RunId) -> Value {
    let (s, v) = srv
        .get(&format!("/api/runs/{id}/events?limit=1000"), ADMIN_TOKEN)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().last().unwrap().clone()
}

async fn gates(db: Db) {
    let (srv, store) = setup(db).await;

    // Approve: back in the queue, the decision stored and logged.
    let id = run_at(&store, RunStatus::WaitingGate).await;
    let body = json!({"decision": "approve", "comment": "looks right"});
    let (s, v) = srv
        .post(&gate_path(id, "architecture_approval"), ADMIN_TOKEN, &body)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "PENDING");
    let a = store
        .latest_artifact(id, "gate_decision")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.step, "HUMAN");
    assert_eq!(a.payload["gate"], "architecture_approval");
    assert_eq!(a.payload["decision"], "approve");
    assert_eq!(a.payload["comment"], "looks right");
    assert!(a.payload["by"].as_str().is_some_and(|b| !b.is_empty()));
    let e = last_event(&srv, id).await;
    assert_eq!(e["kind"], "status_changed");
    assert_eq!(e["data"]["from"], "WAITING_GATE");
    assert_eq!(e["data"]["to"], "PENDING");
    assert_eq!(e["data"]["gate"], "architecture_approval");
    assert_eq!(e["data"]["decision"], "approve");
    assert_eq!(e["data"]["by"], a.payload["by"]);

    // Approve again: the run is PENDING now → 409 with the current status.
    let (s, v) = srv
        .post(
            &gate_path(id, "architecture_approval"),
            ADMIN_TOKEN,
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "invalid_transition");
    assert_eq!(v["error"]["current_status"], "PENDING");
    // Claim the PENDING run so it does not stand in the way of the next `run_at`.
    store
        .claim("test-owner", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();

    // Reject: FAILED with the reason; no comment is fine.
    let id = run_at(&store, RunStatus::WaitingGate).await;
    let (s, v) = srv
        .post(
            &gate_path(id, "architecture_approval"),
            ADMIN_TOKEN,
            &json!({"decision": "reject"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "FAILED");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("architecture_approval rejected")),
        "{v}"
    );
    let a = store
        .latest_artifact(id, "gate_decision")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.payload["decision"], "reject");
    assert_eq!(a.payload["comment"], Value::Null);

    // Refusals, none of which moves the run.
    let id = run_at(&store, RunStatus::WaitingGate).await;
    let ok = json!({"decision": "approve"});
    let (s, v) = srv.post(&gate_path(id, "deploy"), ADMIN_TOKEN, &ok).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "gate");
    let bad = [
        (json!({"decision": "approve", "extra": 1}), "extra"),
        (json!({"decision": "maybe"}), "decision"),
        (json!({}), "decision"),
        (
            json!({"decision": "approve", "comment": "x".repeat(4001)}),
            "comment",
        ),
    ];
    for (body, field) in bad {
        let (s, v) = srv
            .post(&gate_path(id, "architecture_approval"), ADMIN_TOKEN, &body)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let viewer = srv.token("watcher", "viewer").await;
    let (s, v) = srv
        .post(&gate_path(id, "architecture_approval"), &viewer, &ok)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let missing = "0190abcd-0000-7000-8000-00000000dead";
    let (s, v) = srv
        .post(
            &format!("/api/runs/{missing}/gates/architecture_approval/respond"),
            ADMIN_TOKEN,
            &ok,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        store.get_run(id).await.unwrap().status,
        RunStatus::WaitingGate
    );
    assert_eq!(
        store.latest_artifact(id, "gate_decision").await.unwrap(),
        None
    );

    // An operator token may decide.
    let operator = srv.token("oncall", "operator").await;
    let (s, v) = srv
        .post(&gate_path(id, "architecture_approval"), &operator, &ok)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let a = store
        .latest_artifact(id, "gate_decision")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.payload["by"], "oncall");
}

async fn escalations(db: Db) {
    let (srv, store) = setup(db).await;

    // PROCEED: requeued with the guidance stored.
    let id = run_at(&store, RunStatus::Escalated).await;
    let body = json!({"decision": "PROCEED", "guidance": "use the v2 API"});
    let (s, v) = srv.post(&esc_path(id), ADMIN_TOKEN, &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "PENDING");
    let a = store
        .latest_artifact(id, "escalation_decision")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.payload["decision"], "PROCEED");
    assert_eq!(a.payload["guidance"], "use the v2 API");
    let e = last_event(&srv, id).await;
    assert_eq!(e["data"]["from"], "ESCALATED");
    assert_eq!(e["data"]["to"], "PENDING");
    assert_eq!(e["data"]["decision"], "PROCEED");

    // Not escalated any more → 409.
    let (s, v) = srv
        .post(&esc_path(id), ADMIN_TOKEN, &json!({"decision": "ABORT"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["current_status"], "PENDING");
    store
        .claim("test-owner", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();

    // ABORT: FAILED with who and why.
    let id = run_at(&store, RunStatus::Escalated).await;
    let operator = srv.token("oncall", "operator").await;
    let body = json!({"decision": "ABORT", "guidance": "not worth it"});
    let (s, v) = srv.post(&esc_path(id), &operator, &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "FAILED");
    assert_eq!(v["error"], "aborted by oncall: not worth it");
    assert!(v["finished_at"].is_string(), "{v}");

    // Refusals.
    let id = run_at(&store, RunStatus::Escalated).await;
    for (body, field) in [
        (json!({"decision": "proceed"}), "decision"),
        (json!({"decision": "PROCEED", "comment": "x"}), "comment"),
        (
            json!({"decision": "PROCEED", "guidance": "x".repeat(8001)}),
            "guidance",
        ),
    ] {
        let (s, v) = srv.post(&esc_path(id), ADMIN_TOKEN, &body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let viewer = srv.token("watcher", "viewer").await;
    let (s, v) = srv
        .post(&esc_path(id), &viewer, &json!({"decision": "ABORT"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        store.get_run(id).await.unwrap().status,
        RunStatus::Escalated
    );

    // A gate answer is not an escalation decision, and the other way round.
    let (s, v) = srv
        .post(
            &gate_path(id, "architecture_approval"),
            ADMIN_TOKEN,
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["current_status"], "ESCALATED");
}

async fn pull_request(db: Db) {
    let (srv, store) = setup(db).await;
    let viewer = srv.token("watcher", "viewer").await;
    let id = run_at(&store, RunStatus::Done).await;
    let path = format!("/api/runs/{id}/pull-request");

    let (s, v) = srv.get(&path, &viewer).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    let (s, v) = srv
        .get(
            "/api/runs/0190abcd-0000-7000-8000-00000000dead/pull-request",
            &viewer,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_found");

    store
        .upsert_pull_request(&PullRequestDraft {
            run_id: id.to_string(),
            forge: "local".into(),
            number: None,
            url: None,
            title: "Add f".into(),
            body: "Closes #7".into(),
            base: "main".into(),
            head: "ai/issue-7".into(),
            diff_stat: " a.rs | 1 +".into(),
            state: "open".into(),
        })
        .await
        .unwrap();
    let (s, v) = srv.get(&path, &viewer).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_id"], id.to_string());
    assert_eq!(v["title"], "Add f");
    assert_eq!(v["head"], "ai/issue-7");
    assert_eq!(v["diff_stat"], " a.rs | 1 +");
    assert_eq!(v["state"], "open");
    assert!(v.as_object().unwrap().contains_key("diff"), "{v}");
    assert_eq!(v["diff"], Value::Null);
}

/// The real engine parks a `confirm` run at the gate; approval requeues it and the engine
/// resumes at DEVELOPER, which fails for want of a checkout (`acme/widgets` is no local path
/// and no forge is configured) — so no planning step ran again. Whole bolts: `bolt.rs`.
async fn gate_end_to_end(db: Db) {
    let sim = Sim::start(&[]).await;
    let env = [
        ("LLM_ENDPOINT", sim.base.as_str()),
        ("ATLASIA_LLM__SIMULATOR", "true"),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("ATLASIA_ENGINE__WORKERS", "1"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
    ];
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    let run = srv
        .create_run(json!({"repo": "acme/widgets", "title": "Gate me", "autonomy": "confirm"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let status = |want: &'static str| {
        let srv = &srv;
        let id = id.clone();
        async move {
            eventually(Duration::from_secs(60), || async {
                let (_, r) = srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
                (r["status"] == want).then_some(r)
            })
            .await
        }
    };
    let parked = status("WAITING_GATE").await;
    assert_eq!(parked["current_step"], "DEVELOPER", "{parked}");

    let (s, v) = srv
        .post(
            &format!("/api/runs/{id}/gates/architecture_approval/respond"),
            ADMIN_TOKEN,
            &json!({"decision": "approve", "comment": "go"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let failed = status("FAILED").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot prepare repository"),
        "{failed}"
    );
    // The engine resumed where it stopped: no agent step ran again after the approval.
    let (_, evs) = srv
        .get(&format!("/api/runs/{id}/events?limit=1000"), ADMIN_TOKEN)
        .await;
    let evs = evs["items"].as_array().unwrap();
    let approved = evs
        .iter()
        .position(|e| e["data"]["decision"] == "approve")
        .unwrap();
    assert!(
        evs[approved..]
            .iter()
            .all(|e| e["kind"] != "step_completed"),
        "{evs:?}"
    );
}

/// After PROCEED (and a gate comment), the next agent's input carries the operator's words.
async fn guidance_in_input(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(2).await;
    let contracts = atlasia_engine::contracts::Contracts::embedded().unwrap();
    let pm = contracts.agent("pm").unwrap();

    let id = run_at(&store, RunStatus::Escalated).await;
    let run = store.get_run(id).await.unwrap();
    let plain = atlasia_engine::steps::agent::inputs(&store, &run, pm, &Default::default())
        .await
        .unwrap();
    assert!(!plain.contains("operator_guidance"), "{plain}");

    let decision = atlasia_store::Decision {
        action: atlasia_core::RunAction::Proceed,
        artifact_kind: "escalation_decision",
        payload: json!({"decision": "PROCEED", "guidance": "use the v2 API", "by": "oncall"}),
        reason: "test",
        extra: json!({}),
        error: None,
    };
    let run = store.decide(id, &decision).await.unwrap();
    assert_eq!(run.status, RunStatus::Pending);
    let user = atlasia_engine::steps::agent::inputs(&store, &run, pm, &Default::default())
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&user).unwrap();
    assert_eq!(
        doc["operator_guidance"],
        json!([{"from": "escalation_decision", "by": "oncall", "text": "use the v2 API"}]),
        "{user}"
    );
    // Deciding again is refused by the status table, and records nothing.
    let again = store.decide(id, &decision).await;
    assert!(
        matches!(again, Err(atlasia_store::StoreError::Transition(_))),
        "{again:?}"
    );
    let all = store.artifacts(id).await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|a| a.kind == "escalation_decision")
            .count(),
        1
    );
}

on_both! {
    operator_guidance_reaches_the_next_agent => guidance_in_input;
    gate_decisions => gates;
    escalation_decisions => escalations;
    pull_request_endpoint => pull_request;
    gate_approval_resumes_the_engine => gate_end_to_end;
}
