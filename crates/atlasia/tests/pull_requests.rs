//! The `pull_requests` record through `atlasia_store::Store` on both backends: opening is an
//! upsert keyed by run (loop-backs update the same record and keep its creation time), and a
//! record for an unknown run is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_core::{Autonomy, NewRun};
use atlasia_store::{PullRequestDraft, StoreError};
use common::*;

fn draft(run_id: &str, title: &str, stat: &str) -> PullRequestDraft {
    PullRequestDraft {
        run_id: run_id.to_owned(),
        forge: "local".into(),
        number: None,
        url: None,
        title: title.into(),
        body: "Closes the issue.\n\n- adds f".into(),
        base: "main".into(),
        head: "ai/issue-7".into(),
        diff_stat: stat.into(),
        state: "open".into(),
    }
}

async fn upsert_is_idempotent(db: Db) {
    let tdb = TestDb::new(db).await;
    let store = tdb.store(4).await;
    let run = store
        .create_run(&NewRun {
            repo: "acme/widgets".into(),
            issue_number: Some(7),
            title: "t".into(),
            body: String::new(),
            priority: 5,
            autonomy: Autonomy::Autonomous,
            budget_usd: None,
        })
        .await
        .unwrap();
    let run_id = run.id.to_string();
    assert_eq!(store.get_pull_request(&run_id).await.unwrap(), None);

    let first = store
        .upsert_pull_request(&draft(&run_id, "Add f", " a.rs | 1 +"))
        .await
        .unwrap();
    assert_eq!(first.title, "Add f");
    assert_eq!(first.state, "open");
    assert_eq!(first.created_at, first.updated_at);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut second_draft = draft(&run_id, "Add f (revised)", " a.rs | 2 ++");
    second_draft.number = Some(12);
    second_draft.url = Some("https://example.invalid/pr/12".into());
    let second = store.upsert_pull_request(&second_draft).await.unwrap();
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(second.title, "Add f (revised)");
    assert_eq!(second.number, Some(12));

    let stored = store.get_pull_request(&run_id).await.unwrap().unwrap();
    assert_eq!(stored, second);

    let missing = store
        .upsert_pull_request(&draft("0190abcd-0000-7000-8000-00000000dead", "x", ""))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound("run"))),
        "{missing:?}"
    );
}

on_both! {
    pull_request_upsert => upsert_is_idempotent;
}
