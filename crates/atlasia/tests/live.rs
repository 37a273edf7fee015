//! Watching a bolt live through the real binary: the WebSocket `/ws/runs/{id}` and the SSE
//! stream replay then follow the run's events exactly as `GET /api/runs/{id}/events` lists them
//! (no gap, no duplicate, resumable by seq), across two servers on one PostgreSQL; every
//! refusal is a JSON error with its status, the runbook's `curl` probe included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bolts::*;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

on_both! {
    websocket_replays_then_follows_a_bolt_exactly => websocket_replays_then_follows_a_bolt_exactly;
    sse_resumes_from_last_event_id => sse_resumes_from_last_event_id;
    refusals_are_json_with_their_status => refusals_are_json_with_their_status;
}

/// A scripted bolt that ends DONE.
async fn start_bolt(srv: &TestServer) -> (String, tempfile::TempDir) {
    let repo = calc_repo();
    let run = srv
        .create_run(json!({"repo": repo.path().display().to_string(),
                           "title": "add() subtracts",
                           "body": body(json!({"developer": [edit_to(FIXED_NEW)]}))}))
        .await;
    (run["id"].as_str().unwrap().to_owned(), repo)
}

/// Opens `/ws/runs/{id}?after=N` on `srv` with the admin token.
async fn connect(
    srv: &TestServer,
    id: &str,
    after: i64,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "{}/ws/runs/{id}?after={after}",
        srv.base.replacen("http://", "ws://", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads event frames until the run's final status event, within the bolt's time limit.
async fn read_until_finished<S>(ws: &mut S) -> Vec<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + BOLT_LIMIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the stream ended the bolt in time")
            .expect("the stream stays open")
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let event: Value = serde_json::from_str(&text).unwrap();
        let finished = event["kind"] == "status_changed"
            && matches!(
                event["data"]["to"].as_str(),
                Some("DONE" | "FAILED" | "ESCALATED")
            );
        got.push(event);
        if finished {
            return got;
        }
    }
}

/// Every stored event, as the polling endpoint lists them.
async fn stored(srv: &TestServer, id: &str) -> Vec<Value> {
    let (_, page) = srv
        .get(&format!("/api/runs/{id}/events?limit=1000"), ADMIN_TOKEN)
        .await;
    page["items"].as_array().unwrap().clone()
}

async fn websocket_replays_then_follows_a_bolt_exactly(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = bolt_server(TestDb::new(db).await, &sim, &[]).await;
    let (id, _repo) = start_bolt(&srv).await;
    // From the start, while the bolt runs: replay of what exists, then live events.
    let mut ws = connect(&srv, &id, 0).await;
    let streamed = read_until_finished(&mut ws).await;
    let seqs: Vec<i64> = streamed
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "in order, no gap, no duplicate");
    assert_eq!(
        streamed.last().unwrap()["data"]["to"],
        "DONE",
        "{}",
        srv.log()
    );
    let all = stored(&srv, &id).await;
    assert_eq!(
        streamed,
        all[..streamed.len()],
        "each frame is exactly an item of GET /events"
    );
    // Resuming after seq 5 starts at 6 and ends at the same final event.
    let mut again = connect(&srv, &id, 5).await;
    let resumed = read_until_finished(&mut again).await;
    assert_eq!(resumed.first().unwrap()["seq"], 6);
    assert_eq!(resumed, streamed[5..]);
    // A client that closes is counted as such.
    again.close(None).await.unwrap();
    ws.close(None).await.unwrap();
    let counted = eventually(Duration::from_secs(10), || async {
        let m = srv.metrics().await;
        let n = sample(
            &m,
            "websocket_disconnects_total",
            &[r#"reason="client_closed""#],
        )?;
        (n >= 2.0).then_some(m)
    })
    .await;
    assert!(sample(&counted, "websocket_messages_sent_total", &[]).unwrap() >= all.len() as f64);
    assert_eq!(
        sample(&counted, "websocket_connections_active", &[]),
        Some(0.0)
    );
}

async fn sse_resumes_from_last_event_id(db: Db) {
    let sim = Sim::start(&[]).await;
    let srv = bolt_server(TestDb::new(db).await, &sim, &[]).await;
    let (id, _repo) = start_bolt(&srv).await;
    wait_status(&srv, &id, &["DONE"]).await;
    let all = stored(&srv, &id).await;
    let resp = reqwest::Client::new()
        .get(srv.url(&format!("/api/runs/{id}/events/stream")))
        .bearer_auth(ADMIN_TOKEN)
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Read frames until every stored event after 3 has arrived.
    let mut body = resp.bytes_stream();
    let mut raw = Vec::new();
    let want = all.len() - 3;
    let frames = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let chunk = body.next().await.unwrap().unwrap();
            raw.extend_from_slice(&chunk);
            // Whole characters only: a chunk may also end inside one.
            let text = String::from_utf8_lossy(&raw).into_owned();
            // Only whole frames: a chunk may end in the middle of one.
            let whole = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
            let frames: Vec<&str> = whole
                .split("\n\n")
                .filter(|f| f.contains("data:"))
                .collect();
            if frames.len() >= want {
                return frames.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>();
            }
        }
    })
    .await
    .expect("every event after Last-Event-ID arrives");
    for (frame, event) in frames.iter().zip(&all[3..]) {
        let id_line = format!("id: {}", event["seq"]);
        assert!(frame.contains(&id_line), "{frame}");
        let data = frame
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        assert_eq!(&serde_json::from_str::<Value>(data).unwrap(), event);
    }
}

async fn refusals_are_json_with_their_status(db: Db) {
    let srv = TestServer::start_with(TestDb::new(db).await, &[]).await;
    let client = reqwest::Client::new();
    let probe = |path: &str, token: Option<&str>, upgrade: bool| {
        let mut req = client.get(srv.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if upgrade {
            req = req
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    // The runbook's probe: `curl -i -N -H "Connection: Upgrade" -H "Upgrade: websocket"
    // http://localhost:8080/ws/runs/test` — a 400 naming the problem, not a 404.
    let runbook = client
        .get(srv.url("/ws/runs/test"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert_eq!(runbook.status(), 400);
    let body: Value = runbook.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a run id"),
        "{body}"
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let path = format!("/ws/runs/{unknown}");
    let (s, b) = probe(&path, Some(ADMIN_TOKEN), false).await;
    assert_eq!(s, 400, "no upgrade headers: {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{b}"
    );
    let (s, b) = probe(&path, None, true).await;
    assert_eq!(s, 401, "{b}");
    let (s, b) = probe(&path, Some(ADMIN_TOKEN), true).await;
    assert_eq!(s, 404, "{b}");
    assert!(b["error"]["code"].is_string(), "{b}");
    let (s, b) = probe(&format!("{path}?after=-1"), Some(ADMIN_TOKEN), true).await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = probe(
        &format!("/api/runs/{unknown}/events/stream"),
        Some(ADMIN_TOKEN),
        false,
    )
    .await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = probe(&format!("/api/runs/{unknown}/events/stream"), None, false).await;
    assert_eq!(s, 401);
}

/// A subscriber on one server sees every event a worker on another server commits (the
/// database is the only channel).
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_sees_events_committed_by_another_replica() {
    if skip_postgres() {
        return;
    }
    let sim = Sim::start(&[]).await;
    let first_db = TestDb::new(Db::Postgres).await;
    let second_db = first_db.same_database();
    // The watcher's server runs no workers: every event comes from the other one.
    let watcher = bolt_server(first_db, &sim, &[("ATLASIA_ENGINE__WORKERS", "0")]).await;
    let worker = bolt_server(second_db, &sim, &[]).await;
    let (id, _repo) = start_bolt(&worker).await;
    let mut ws = connect(&watcher, &id, 0).await;
    let streamed = read_until_finished(&mut ws).await;
    assert_eq!(streamed.last().unwrap()["data"]["to"], "DONE");
    let seqs: Vec<i64> = streamed
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert_eq!(streamed, stored(&watcher, &id).await[..streamed.len()]);
}
