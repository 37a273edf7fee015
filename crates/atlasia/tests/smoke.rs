//! The server starts on both backends and answers its health check.

mod common;

use common::*;

async fn ready(db: Db) {
    let srv = TestServer::start(db).await;
    let (s, v, h) = srv
        .call(reqwest::Method::GET, "/api/health/ready", None, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["checks"]["database"]["ok"], true);
    assert!(h.contains_key("x-correlation-id"));
}

on_both! {
    health_ready => ready;
}
