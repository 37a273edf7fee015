//! The runs API end to end, on both backends: creating runs and validating input, error shape
//! and correlation ids, reading and listing (filters, keyset pagination, also under concurrent
//! inserts), pause/resume/cancel and the event log they write, the admin bulk actions, and who
//! may do what (roles, token lifecycle, unauthenticated endpoints).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use uuid::Uuid;

/// A response: status, JSON body (Null when not JSON), headers.
struct Resp {
    status: StatusCode,
    body: Value,
    headers: HeaderMap,
}

impl Resp {
    /// Asserts the status and returns the body.
    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        &self.body
    }

    /// Asserts an API error: the status, a JSON content type, exactly `{"error": {...}}` with a
    /// string `code` equal to `code` and a non-empty string `message`. Returns the inner object.
    fn err(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let ctype = self.headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap());
        assert!(
            ctype.is_some_and(|c| c.starts_with("application/json")),
            "error content type {ctype:?}"
        );
        let top = self.body.as_object().expect("error body is an object");
        assert_eq!(
            top.len(),
            1,
            "only an `error` key at the top: {}",
            self.body
        );
        let e = &self.body["error"];
        assert!(e.is_object(), "{}", self.body);
        assert_eq!(e["code"].as_str(), Some(code), "{}", self.body);
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        e
    }

    /// Asserts 422 `invalid_field` naming `field`.
    fn invalid(&self, field: &str) {
        let e = self.err(422, "invalid_field");
        assert_eq!(e["field"].as_str(), Some(field), "{}", self.body);
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A JSON request through the harness, with an optional bearer token.
async fn call(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let (status, body, headers) = srv.call(method, path, token, body).await;
    Resp {
        status,
        body,
        headers,
    }
}

async fn get(srv: &TestServer, path: &str) -> Resp {
    call(srv, Method::GET, path, Some(ADMIN_TOKEN), None).await
}

async fn post(srv: &TestServer, path: &str, body: &Value) -> Resp {
    call(srv, Method::POST, path, Some(ADMIN_TOKEN), Some(body)).await
}

/// A request with exactly these headers and raw body bytes (for content-type and size cases).
async fn raw(
    srv: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Resp {
    let mut req = srv.client.request(method, srv.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    }
}

fn run_body(n: usize) -> Value {
    json!({"repo": "acme/widgets", "title": format!("run {n}")})
}

fn id_of(run: &Value) -> String {
    run["id"].as_str().unwrap().to_owned()
}

/// Every run, walking pages of `limit` from the start; asserts the last page has no cursor.
async fn walk(srv: &TestServer, query: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/api/runs?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get(srv, &path).await.ok(200).clone();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit as usize);
        all.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(
                    items.len(),
                    limit as usize,
                    "a page before the last is full"
                );
                cursor = Some(c.to_owned());
            }
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return all;
            }
        }
    }
    panic!("pagination did not end");
}

/// The first 200 runs, as listed.
async fn listed(srv: &TestServer) -> Value {
    get(srv, "/api/runs?limit=200").await.ok(200).clone()
}

/// How many runs the list holds (at most 200).
async fn run_count(srv: &TestServer) -> usize {
    listed(srv).await["items"].as_array().unwrap().len()
}

async fn events(srv: &TestServer, id: &str, after: i64) -> Value {
    get(srv, &format!("/api/runs/{id}/events?after={after}"))
        .await
        .ok(200)
        .clone()
}

fn seqs(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

/// Milliseconds since the epoch of an RFC 3339 UTC/offset timestamp, or None when malformed.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        ms = format!("{:0<3}", &frac[..n.min(3)]).parse::<i64>().ok()?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let m = rest[1..3].parse::<i64>().ok()? * 60 + rest[4..6].parse::<i64>().ok()?;
            if rest.starts_with('-') { -m } else { m }
        }
        _ => return None,
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + ms)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// 1. Creating runs

async fn create_echoes_every_field(db: Db) {
    let srv = TestServer::start(db).await;
    let before = now_ms();
    let r = post(
        &srv,
        "/api/runs",
        &json!({"repo": "acme/widgets", "issue_number": 42, "title": "Fix the bug",
                "body": "It breaks on Tuesdays.", "budget_usd": 12.5}),
    )
    .await;
    let run = r.ok(202).clone();
    let id = Uuid::parse_str(run["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "{id}");
    assert_eq!(run["status"], "PENDING");
    assert_eq!(run["priority"], 5);
    assert_eq!(run["autonomy"], "autonomous");
    assert_eq!(run["budget_usd"], 12.5);
    assert_eq!(run["issue_number"], 42);
    assert_eq!(run["title"], "Fix the bug");
    assert_eq!(run["body"], "It breaks on Tuesdays.");
    assert_eq!(run["repo"], "acme/widgets");
    assert_eq!(run["last_event_seq"], 1);
    assert_eq!(run["cost_usd"], 0.0);
    assert!(run["finished_at"].is_null() && run["lease_owner"].is_null());
    let created = rfc3339_ms(run["created_at"].as_str().unwrap())
        .unwrap_or_else(|| panic!("created_at is not RFC 3339: {}", run["created_at"]));
    assert!(
        created >= before - 1000 && created <= now_ms() + 1000,
        "created_at {} is not now",
        run["created_at"]
    );
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    let id_ms = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
    assert!(
        (created - id_ms).abs() < 1000,
        "id time and created_at differ"
    );
    assert!(rfc3339_ms(run["updated_at"].as_str().unwrap()).is_some());

    // What was stored is what was answered.
    assert_eq!(get(&srv, &format!("/api/runs/{id}")).await.ok(200), &run);

    // Explicit priority/autonomy are kept; a budget is optional.
    let run = post(
        &srv,
        "/api/runs",
        &json!({"repo": "acme/widgets", "issue_number": 7, "priority": 0, "autonomy": "observe"}),
    )
    .await
    .ok(202)
    .clone();
    assert_eq!(
        (&run["priority"], &run["autonomy"]),
        (&json!(0), &json!("observe"))
    );
    assert!(run["budget_usd"].is_null());
    assert_eq!(run["title"], "", "no title given with an issue number");
}

async fn local_repo_requires_title(db: Db) {
    let srv = TestServer::start(db).await;
    post(&srv, "/api/runs", &json!({"repo": "/srv/repos/app"}))
        .await
        .invalid("title");
    // An issue number does not stand in for a title on a local repository.
    post(
        &srv,
        "/api/runs",
        &json!({"repo": "./app", "issue_number": 3}),
    )
    .await
    .invalid("title");
    post(
        &srv,
        "/api/runs",
        &json!({"repo": "/srv/repos/app", "title": "   "}),
    )
    .await
    .invalid("title");
    // A real folder under `server.repo_roots` (the harness allows the temp dir): the run
    // stores its canonical path.
    let repo = tempfile::tempdir().unwrap();
    let run = post(
        &srv,
        "/api/runs",
        &json!({"repo": repo.path().display().to_string(), "title": "Local work"}),
    )
    .await
    .ok(202)
    .clone();
    assert_eq!(
        run["repo"],
        repo.path().canonicalize().unwrap().display().to_string()
    );
    assert_eq!(run["title"], "Local work");
    assert!(run["issue_number"].is_null());
    assert_eq!(run_count(&srv).await, 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Validation

async fn invalid_fields_are_named(db: Db) {
    let srv = TestServer::start(db).await;
    srv.create_run(run_body(0)).await;
    let before = listed(&srv).await;
    let base = || json!({"repo": "acme/widgets", "title": "t"});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("repo", json!("not a repo")), "repo"),
        (with("repo", json!("a/b/c")), "repo"),
        (with("repo", json!("")), "repo"),
        (with("repo", json!(17)), "repo"),
        (json!({"title": "t"}), "repo"),
        (with("issue_number", json!(0)), "issue_number"),
        (with("issue_number", json!(-4)), "issue_number"),
        (with("priority", json!(11)), "priority"),
        (with("priority", json!(-1)), "priority"),
        (with("priority", json!("high")), "priority"),
        (with("autonomy", json!("yolo")), "autonomy"),
        (with("budget_usd", json!(-1)), "budget_usd"),
        (with("budget_usd", json!(0)), "budget_usd"),
        (with("title", json!("x".repeat(501))), "title"),
        (with("body", json!("x".repeat(64 * 1024 + 1))), "body"),
        (json!({"repo": "acme/widgets"}), "title"),
        (with("prioritty", json!(3)), "prioritty"),
        // PostgreSQL cannot store NUL; both backends refuse it the same way.
        (with("title", json!("a\u{0}b")), "title"),
        (with("body", json!("a\u{0}b")), "body"),
    ];
    for (body, field) in &cases {
        let r = post(&srv, "/api/runs", body).await;
        assert_eq!(r.status, 422, "{body} → {}", r.body);
        r.invalid(field);
    }
    assert_eq!(
        listed(&srv).await,
        before,
        "a rejected request changed the runs"
    );
}

async fn malformed_requests_are_refused(db: Db) {
    let srv = TestServer::start(db).await;
    srv.create_run(run_body(0)).await;
    let before = listed(&srv).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let json_ct = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let send = |headers: &'static [(&str, &str)], body: &[u8]| {
        let mut h: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
        h.extend_from_slice(headers);
        let body = body.to_vec();
        let srv = &srv;
        async move { raw(srv, Method::POST, "/api/runs", &h, Some(body)).await }
    };
    let valid = br#"{"repo":"acme/widgets","title":"t"}"#;

    for broken in [
        &br#"{"repo": "#[..],
        br#"{"repo":"acme/widgets","title":"t"} trailing"#,
        b"",
        b"not json",
    ] {
        raw(
            &srv,
            Method::POST,
            "/api/runs",
            &json_ct,
            Some(broken.to_vec()),
        )
        .await
        .err(400, "bad_request");
    }
    // A struct written as a positional array is not an object, even if serde could read it.
    raw(
        &srv,
        Method::POST,
        "/api/runs",
        &json_ct,
        Some(br#"["acme/widgets", null, "t", null, null, null, null]"#.to_vec()),
    )
    .await
    .invalid("body");
    send(&[], valid).await.err(415, "unsupported_media_type");
    send(&[("content-type", "text/plain")], valid)
        .await
        .err(415, "unsupported_media_type");
    send(
        &[("content-type", "application/x-www-form-urlencoded")],
        b"repo=a/b&title=t",
    )
    .await
    .err(415, "unsupported_media_type");
    let mut big = br#"{"repo":"acme/widgets","title":"t","body":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(br#""}"#);
    raw(&srv, Method::POST, "/api/runs", &json_ct, Some(big))
        .await
        .err(413, "payload_too_large");
    assert_eq!(
        listed(&srv).await,
        before,
        "a rejected request changed the runs"
    );

    // Parameters and a `+json` suffix are still JSON.
    send(
        &[("content-type", "application/json; charset=utf-8")],
        valid,
    )
    .await
    .ok(202);
    send(&[("content-type", "application/vnd.atlasia+json")], valid)
        .await
        .ok(202);

    assert_eq!(
        run_count(&srv).await,
        3,
        "the first run and the two valid requests"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Errors and correlation ids

async fn unknown_routes_and_methods(db: Db) {
    let srv = TestServer::start(db).await;
    for path in ["/api/nope", "/api/runs/x/y/z", "/", "/api/admin"] {
        call(&srv, Method::GET, path, Some(ADMIN_TOKEN), None)
            .await
            .err(404, "not_found");
    }
    // Unknown routes answer 404 whether or not a token is sent.
    call(&srv, Method::GET, "/api/nope", None, None)
        .await
        .err(404, "not_found");

    let id = id_of(&srv.create_run(run_body(0)).await);
    for (method, path) in [
        (Method::DELETE, "/api/runs".to_owned()),
        (Method::PUT, "/api/runs".to_owned()),
        (Method::DELETE, format!("/api/runs/{id}")),
        (Method::GET, format!("/api/runs/{id}/pause")),
        (Method::POST, "/api/health/live".to_owned()),
    ] {
        let r = call(&srv, method, &path, Some(ADMIN_TOKEN), None).await;
        r.err(405, "method_not_allowed");
        assert!(
            r.header("allow").is_some_and(|a| !a.is_empty()),
            "405 without Allow"
        );
    }
    let r = call(&srv, Method::DELETE, "/api/runs", Some(ADMIN_TOKEN), None).await;
    let allow: HashSet<&str> = r
        .header("allow")
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    assert!(allow.contains("GET") && allow.contains("POST") && !allow.contains("DELETE"));
    // The run survived the DELETE attempt.
    get(&srv, &format!("/api/runs/{id}")).await.ok(200);
}

async fn correlation_ids(db: Db) {
    let srv = TestServer::start(db).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let with_id = |cid: String| {
        let auth = auth.clone();
        let srv = &srv;
        async move {
            let h = [("authorization", auth.as_str()), ("x-correlation-id", &cid)];
            raw(srv, Method::GET, "/api/runs", &h, None).await
        }
    };

    let mine = "client-req-1234.abc_XYZ";
    let r = with_id(mine.to_owned()).await;
    r.ok(200);
    assert_eq!(r.header("x-correlation-id"), Some(mine));
    // Echoed on errors too.
    let h = [("x-correlation-id", mine)];
    let r = raw(&srv, Method::GET, "/api/nope", &h, None).await;
    r.err(404, "not_found");
    assert_eq!(r.header("x-correlation-id"), Some(mine));

    let a = get(&srv, "/api/runs").await;
    let b = get(&srv, "/api/runs").await;
    let (a, b) = (
        a.header("x-correlation-id").unwrap().to_owned(),
        b.header("x-correlation-id").unwrap().to_owned(),
    );
    assert!(Uuid::parse_str(&a).is_ok(), "generated id {a}");
    assert_ne!(a, b, "each request gets its own id");

    for bad in ["x".repeat(300), "has space".to_owned(), String::new()] {
        let r = with_id(bad.clone()).await;
        r.ok(200);
        let got = r.header("x-correlation-id").unwrap();
        assert_ne!(got, bad);
        assert!(Uuid::parse_str(got).is_ok(), "replacement {got}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Reading one run

async fn get_one_run(db: Db) {
    let srv = TestServer::start(db).await;
    let run = srv.create_run(run_body(1)).await;
    assert_eq!(
        get(&srv, &format!("/api/runs/{}", id_of(&run)))
            .await
            .ok(200),
        &run
    );
    get(&srv, &format!("/api/runs/{}", Uuid::now_v7()))
        .await
        .err(404, "not_found");
    for bad in ["not-a-uuid", "123", "0190abcd"] {
        get(&srv, &format!("/api/runs/{bad}")).await.invalid("id");
        post(&srv, &format!("/api/runs/{bad}/pause"), &json!({}))
            .await
            .invalid("id");
        get(&srv, &format!("/api/runs/{bad}/events"))
            .await
            .invalid("id");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Listing

async fn list_filters(db: Db) {
    let srv = TestServer::start(db).await;
    let mut a = Vec::new();
    for i in 0..3 {
        a.push(id_of(
            &srv.create_run(json!({"repo": "acme/a", "title": format!("a{i}")}))
                .await,
        ));
    }
    let b: Vec<String> = [
        srv.create_run(json!({"repo": "acme/b", "title": "b0"}))
            .await,
        srv.create_run(json!({"repo": "acme/b", "title": "b1"}))
            .await,
    ]
    .iter()
    .map(id_of)
    .collect();
    post(&srv, &format!("/api/runs/{}/pause", a[1]), &json!({}))
        .await
        .ok(200);

    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect()
    };
    let rev = |v: &[&String]| v.iter().rev().map(|s| (*s).clone()).collect::<Vec<_>>();
    let q = |query: &'static str| {
        let srv = &srv;
        async move {
            get(srv, &format!("/api/runs?{query}"))
                .await
                .ok(200)
                .clone()
        }
    };
    assert_eq!(ids(&q("status=PAUSED").await), vec![a[1].clone()]);
    assert_eq!(
        ids(&q("status=PENDING").await),
        rev(&[&a[0], &a[2], &b[0], &b[1]])
    );
    assert_eq!(ids(&q("repo=acme/b").await), rev(&[&b[0], &b[1]]));
    assert_eq!(
        ids(&q("repo=acme%2Fa&status=PENDING").await),
        rev(&[&a[0], &a[2]])
    );
    assert!(ids(&q("repo=acme/none").await).is_empty());
    assert!(ids(&q("status=CANCELLED").await).is_empty());
    assert!(q("status=CANCELLED").await["next_cursor"].is_null());
    get(&srv, "/api/runs?status=BOGUS").await.invalid("status");
    get(&srv, "/api/runs?repo=acme%00a").await.invalid("repo");
    get(&srv, "/api/runs?statuss=PENDING")
        .await
        .err(400, "bad_request");
    get(&srv, "/api/runs?limit=ten")
        .await
        .err(400, "bad_request");
}

async fn list_pagination(db: Db) {
    let srv = TestServer::start(db).await;
    let mut created = Vec::new();
    for i in 0..25 {
        created.push(id_of(&srv.create_run(run_body(i)).await));
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    // 25 = 7+7+7+4 (short last page) and 5×5 (full last page: still no cursor).
    for limit in [7, 5, 1, 25, 200] {
        let ids: Vec<String> = walk(&srv, "", limit).await.iter().map(id_of).collect();
        assert_eq!(ids, newest_first, "limit {limit}");
        let uuids: Vec<Uuid> = ids.iter().map(|s| Uuid::parse_str(s).unwrap()).collect();
        assert!(
            uuids.windows(2).all(|w| w[0] > w[1]),
            "ids strictly decreasing"
        );
    }
    let page = get(&srv, "/api/runs?limit=7").await.ok(200).clone();
    assert_eq!(page["items"].as_array().unwrap().len(), 7);
    assert!(page["next_cursor"].is_string());
    // Without a limit the page holds them all (default 50).
    let page = get(&srv, "/api/runs").await.ok(200).clone();
    assert_eq!(page["items"].as_array().unwrap().len(), 25);
    assert!(page["next_cursor"].is_null());

    for bad in ["0", "201", "-1"] {
        let r = get(&srv, &format!("/api/runs?limit={bad}")).await;
        if bad == "-1" {
            r.err(400, "bad_request");
        } else {
            r.invalid("limit");
        }
    }
    // `v1:` + not-a-uuid, plain garbage, and a valid-looking id without the prefix.
    for bad in ["garbage!!", "djE6bm9wZQ", "MDE5MGFiY2Q"] {
        get(&srv, &format!("/api/runs?cursor={bad}"))
            .await
            .invalid("cursor");
    }
}

async fn pagination_under_concurrent_inserts(db: Db) {
    let srv = TestServer::start(db).await;
    let mut existing = HashSet::new();
    for i in 0..60 {
        existing.insert(id_of(&srv.create_run(run_body(i)).await));
    }
    // The inserter runs on its own task; the walk starts once the first concurrent insert has
    // landed, so the two overlap.
    let (client, url) = (srv.client.clone(), srv.url("/api/runs"));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let inserter = tokio::spawn(async move {
        let mut started = Some(started_tx);
        for i in 0..40 {
            let resp = client
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&run_body(100 + i))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            if let Some(tx) = started.take() {
                tx.send(()).unwrap();
            }
        }
    });
    started_rx.await.unwrap();
    let seen = walk(&srv, "", 7).await;
    inserter.await.unwrap();
    let ids: Vec<String> = seen.iter().map(id_of).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a run appeared twice");
    let missing: Vec<_> = existing.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "missing pre-existing runs: {missing:?}");
    let uuids: Vec<Uuid> = ids.iter().map(|s| Uuid::parse_str(s).unwrap()).collect();
    assert!(uuids.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(walk(&srv, "", 200).await.len(), 100);
}

// ---------------------------------------------------------------------------------------------
// 6. Operator actions

async fn act(srv: &TestServer, id: &str, action: &str) -> Resp {
    post(srv, &format!("/api/runs/{id}/{action}"), &json!({})).await
}

async fn refused(srv: &TestServer, id: &str, action: &str, current: &str) {
    let r = act(srv, id, action).await;
    let e = r.err(409, "invalid_transition");
    assert_eq!(e["current_status"], current, "{action}: {}", r.body);
}

async fn transitions(db: Db) {
    let srv = TestServer::start(db).await;
    let id = id_of(&srv.create_run(run_body(0)).await);

    refused(&srv, &id, "resume", "PENDING").await;
    assert_eq!(act(&srv, &id, "pause").await.ok(200)["status"], "PAUSED");
    refused(&srv, &id, "pause", "PAUSED").await;
    assert_eq!(act(&srv, &id, "resume").await.ok(200)["status"], "PENDING");
    let cancelled = act(&srv, &id, "cancel").await.ok(200).clone();
    assert_eq!(cancelled["status"], "CANCELLED");
    assert!(rfc3339_ms(cancelled["finished_at"].as_str().unwrap()).is_some());
    for action in ["pause", "resume", "cancel"] {
        refused(&srv, &id, action, "CANCELLED").await;
    }
    assert_eq!(
        get(&srv, &format!("/api/runs/{id}")).await.ok(200),
        &cancelled
    );

    // A paused run can be cancelled directly.
    let other = id_of(&srv.create_run(run_body(1)).await);
    act(&srv, &other, "pause").await.ok(200);
    assert_eq!(
        act(&srv, &other, "cancel").await.ok(200)["status"],
        "CANCELLED"
    );

    let ghost = Uuid::now_v7().to_string();
    for action in ["pause", "resume", "cancel"] {
        act(&srv, &ghost, action).await.err(404, "not_found");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Events

async fn event_log(db: Db) {
    let srv = TestServer::start(db).await;
    let id = id_of(&srv.create_run(run_body(0)).await);
    act(&srv, &id, "pause").await.ok(200);
    act(&srv, &id, "pause").await.err(409, "invalid_transition");
    act(&srv, &id, "resume").await.ok(200);
    act(&srv, &id, "cancel").await.ok(200);
    act(&srv, &id, "resume")
        .await
        .err(409, "invalid_transition");

    let page = events(&srv, &id, 0).await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4], "refused actions log nothing");
    assert_eq!(page["next_after"], 4);
    let items = page["items"].as_array().unwrap();
    assert!(items.iter().all(|e| e["run_id"] == id.as_str()));
    assert!(
        items
            .iter()
            .all(|e| rfc3339_ms(e["created_at"].as_str().unwrap()).is_some())
    );
    assert_eq!(items[0]["kind"], "run_created");
    let changes: Vec<(&str, &str, &str)> = items[1..]
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["data"]["from"].as_str().unwrap(),
                e["data"]["to"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("status_changed", "PENDING", "PAUSED"),
            ("status_changed", "PAUSED", "PENDING"),
            ("status_changed", "PENDING", "CANCELLED"),
        ]
    );
    let run = get(&srv, &format!("/api/runs/{id}")).await.ok(200).clone();
    assert_eq!(run["last_event_seq"], 4);

    let later = events(&srv, &id, 2).await;
    assert_eq!(seqs(&later), vec![3, 4]);
    assert_eq!(later["items"][0], items[2]);
    assert_eq!(later["next_after"], 4);
    let none = events(&srv, &id, 4).await;
    assert_eq!(seqs(&none), Vec::<i64>::new());
    assert_eq!(none["next_after"], 4, "an empty page keeps the position");
    let first_two = get(&srv, &format!("/api/runs/{id}/events?after=0&limit=2"))
        .await
        .ok(200)
        .clone();
    assert_eq!(seqs(&first_two), vec![1, 2]);
    assert_eq!(first_two["next_after"], 2);

    get(&srv, &format!("/api/runs/{id}/events?after=-1"))
        .await
        .invalid("after");
    for limit in [0, 1001] {
        get(&srv, &format!("/api/runs/{id}/events?limit={limit}"))
            .await
            .invalid("limit");
    }
    get(&srv, &format!("/api/runs/{id}/events?since=1"))
        .await
        .err(400, "bad_request");
    get(&srv, &format!("/api/runs/{}/events", Uuid::now_v7()))
        .await
        .err(404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// 8. Admin bulk actions

async fn statuses(srv: &TestServer, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let run = get(srv, &format!("/api/runs/{id}")).await.ok(200).clone();
        out.push(run["status"].as_str().unwrap().to_owned());
    }
    out
}

async fn bulk_pause_resume(db: Db) {
    let srv = TestServer::start(db).await;
    let mut ids = Vec::new();
    for p in 0..=10 {
        let run = srv
            .create_run(json!({"repo": "acme/widgets", "title": format!("p{p}"), "priority": p}))
            .await;
        ids.push(id_of(&run));
    }
    // Neither a finished run nor a run paused by hand above the threshold is touched.
    let done = id_of(
        &srv.create_run(json!({"repo": "a/b", "title": "x", "priority": 0}))
            .await,
    );
    act(&srv, &done, "cancel").await.ok(200);
    act(&srv, &ids[8], "pause").await.ok(200);

    let r = post(&srv, "/api/admin/runs/pause", &json!({"priority_below": 5})).await;
    assert_eq!(r.ok(200), &json!({"paused": 5}));
    let expect = |low: &str, high: &str| -> Vec<String> {
        (0..=10)
            .map(|p| match p {
                8 => "PAUSED",
                p if p < 5 => low,
                _ => high,
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(statuses(&srv, &ids).await, expect("PAUSED", "PENDING"));
    assert_eq!(
        statuses(&srv, std::slice::from_ref(&done)).await,
        ["CANCELLED"]
    );
    for (p, id) in ids.iter().enumerate() {
        let page = events(&srv, id, 0).await;
        let kinds: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        if p < 5 {
            assert_eq!(kinds, ["run_created", "status_changed"], "priority {p}");
            assert_eq!(page["items"][1]["data"]["from"], "PENDING");
            assert_eq!(page["items"][1]["data"]["to"], "PAUSED");
            let run = get(&srv, &format!("/api/runs/{id}")).await.ok(200).clone();
            assert_eq!(run["last_event_seq"], 2);
        } else if p != 8 {
            assert_eq!(kinds, ["run_created"], "priority {p} was touched");
        }
    }

    let r = post(
        &srv,
        "/api/admin/runs/resume",
        &json!({"priority_below": 5}),
    )
    .await;
    assert_eq!(r.ok(200), &json!({"resumed": 5}));
    assert_eq!(statuses(&srv, &ids).await, expect("PENDING", "PENDING"));
    for id in &ids[..5] {
        let last = events(&srv, id, 2).await;
        assert_eq!(seqs(&last), vec![3]);
        assert_eq!(last["items"][0]["kind"], "status_changed");
        assert_eq!(last["items"][0]["data"]["to"], "PENDING");
    }
    // Nothing left to move.
    let r = post(
        &srv,
        "/api/admin/runs/resume",
        &json!({"priority_below": 5}),
    )
    .await;
    assert_eq!(r.ok(200), &json!({"resumed": 0}));

    for bad in [json!({"priority_below": 12}), json!({"priority_below": -1})] {
        post(&srv, "/api/admin/runs/pause", &bad)
            .await
            .invalid("priority_below");
    }
    post(&srv, "/api/admin/runs/pause", &json!({}))
        .await
        .invalid("priority_below");
    assert_eq!(statuses(&srv, &ids).await, expect("PENDING", "PENDING"));
}

// ---------------------------------------------------------------------------------------------
// 9. Roles and tokens

async fn role_matrix(db: Db) {
    let srv = TestServer::start(db).await;
    let viewer = srv.token("viewer-1", "viewer").await;
    let operator = srv.token("operator-1", "operator").await;
    let admin = srv.token("admin-1", "admin").await;
    let id = id_of(&srv.create_run(run_body(0)).await);
    let as_ = |token: &str, method: Method, path: String, body: Option<Value>| {
        let srv = &srv;
        let token = token.to_owned();
        async move { call(srv, method, &path, Some(&token), body.as_ref()).await }
    };
    let run = || Some(run_body(9));
    let empty = || Some(json!({}));
    let bulk = || Some(json!({"priority_below": 1}));

    // Viewer: reads only.
    as_(&viewer, Method::GET, "/api/runs".into(), None)
        .await
        .ok(200);
    as_(&viewer, Method::GET, format!("/api/runs/{id}"), None)
        .await
        .ok(200);
    as_(&viewer, Method::GET, format!("/api/runs/{id}/events"), None)
        .await
        .ok(200);
    for (path, body) in [
        ("/api/runs".to_owned(), run()),
        (format!("/api/runs/{id}/pause"), empty()),
        (format!("/api/runs/{id}/cancel"), empty()),
        ("/api/admin/runs/pause".to_owned(), bulk()),
    ] {
        as_(&viewer, Method::POST, path, body)
            .await
            .err(403, "forbidden");
    }
    as_(&viewer, Method::GET, "/api/admin/tokens".into(), None)
        .await
        .err(403, "forbidden");
    // The role is checked before the body: a caller without it learns nothing from validation.
    let viewer_auth = format!("Bearer {viewer}");
    for body in [
        None,
        Some(b"{\"prioritty\": 1}".to_vec()),
        Some(b"{".to_vec()),
    ] {
        let mut h = vec![("authorization", viewer_auth.as_str())];
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        raw(&srv, Method::POST, "/api/runs", &h, body.clone())
            .await
            .err(403, "forbidden");
        raw(&srv, Method::POST, "/api/admin/runs/pause", &h, body)
            .await
            .err(403, "forbidden");
    }
    assert_eq!(run_count(&srv).await, 1);
    assert_eq!(statuses(&srv, std::slice::from_ref(&id)).await, ["PENDING"]);

    // Operator: runs, but no admin endpoints.
    let op_run = id_of(
        as_(&operator, Method::POST, "/api/runs".into(), run())
            .await
            .ok(202),
    );
    for (action, status) in [
        ("pause", "PAUSED"),
        ("resume", "PENDING"),
        ("cancel", "CANCELLED"),
    ] {
        let r = as_(
            &operator,
            Method::POST,
            format!("/api/runs/{op_run}/{action}"),
            empty(),
        )
        .await;
        assert_eq!(r.ok(200)["status"], status);
    }
    as_(&operator, Method::GET, "/api/runs".into(), None)
        .await
        .ok(200);
    for (method, path, body) in [
        (Method::POST, "/api/admin/runs/pause", bulk()),
        (Method::POST, "/api/admin/runs/resume", bulk()),
        (Method::GET, "/api/admin/tokens", None),
        (
            Method::POST,
            "/api/admin/tokens",
            Some(json!({"name": "x", "role": "admin"})),
        ),
        (Method::DELETE, "/api/admin/tokens/viewer-1", None),
        (
            Method::POST,
            "/api/admin/tokens",
            Some(json!({"name": "bad name!"})),
        ),
        (
            Method::POST,
            "/api/admin/runs/resume",
            Some(json!({"priority_below": 99})),
        ),
    ] {
        as_(&operator, method, path.into(), body)
            .await
            .err(403, "forbidden");
    }
    as_(&viewer, Method::GET, "/api/runs".into(), None)
        .await
        .ok(200);

    // Admin (issued and bootstrap): everything.
    for token in [admin.as_str(), ADMIN_TOKEN] {
        let rid = id_of(
            as_(token, Method::POST, "/api/runs".into(), run())
                .await
                .ok(202),
        );
        as_(
            token,
            Method::POST,
            format!("/api/runs/{rid}/pause"),
            empty(),
        )
        .await
        .ok(200);
        as_(token, Method::GET, format!("/api/runs/{rid}/events"), None)
            .await
            .ok(200);
        as_(token, Method::POST, "/api/admin/runs/resume".into(), bulk())
            .await
            .ok(200);
        as_(token, Method::POST, "/api/admin/runs/pause".into(), bulk())
            .await
            .ok(200);
        as_(token, Method::GET, "/api/admin/tokens".into(), None)
            .await
            .ok(200);
    }
    let extra = as_(
        &admin,
        Method::POST,
        "/api/admin/tokens".into(),
        Some(json!({"name": "by-admin", "role": "viewer"})),
    )
    .await;
    extra.ok(201);
    as_(
        &admin,
        Method::DELETE,
        "/api/admin/tokens/by-admin".into(),
        None,
    )
    .await
    .ok(200);
}

async fn unauthenticated_requests(db: Db) {
    let srv = TestServer::start(db).await;
    let id = id_of(&srv.create_run(run_body(0)).await);
    let unauthorized = |r: Resp| {
        r.err(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    };
    let routes = [
        (Method::GET, "/api/runs".to_owned()),
        (Method::POST, "/api/runs".to_owned()),
        (Method::GET, format!("/api/runs/{id}")),
        (Method::POST, format!("/api/runs/{id}/cancel")),
        (Method::GET, "/api/admin/tokens".to_owned()),
    ];
    let basic = "Basic xyz".to_owned();
    let admin_basic = format!("Basic {ADMIN_TOKEN}");
    let token_only = ADMIN_TOKEN.to_owned();
    for (method, path) in &routes {
        unauthorized(raw(&srv, method.clone(), path, &[], None).await);
        for header in [&basic, &admin_basic, &token_only, &"Bearer ".to_owned()] {
            let h = [
                ("authorization", header.as_str()),
                ("content-type", "application/json"),
            ];
            let body = Some(serde_json::to_vec(&run_body(1)).unwrap());
            unauthorized(raw(&srv, method.clone(), path, &h, body).await);
        }
        unauthorized(call(&srv, method.clone(), path, Some("atl_0000deadbeef"), None).await);
        unauthorized(
            call(
                &srv,
                method.clone(),
                path,
                Some(&format!("{ADMIN_TOKEN}x")),
                None,
            )
            .await,
        );
    }
    assert_eq!(run_count(&srv).await, 1);
    assert_eq!(statuses(&srv, &[id]).await, ["PENDING"]);

    for path in [
        "/api/health/live",
        "/api/health/ready",
        "/api/metrics/prometheus",
    ] {
        raw(&srv, Method::GET, path, &[], None).await.ok(200);
    }
}

async fn token_lifecycle(db: Db) {
    let srv = TestServer::start(db).await;
    let r = post(
        &srv,
        "/api/admin/tokens",
        &json!({"name": "ci.bot_1", "role": "operator"}),
    )
    .await;
    let created = r.ok(201).clone();
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("atl_") && secret.len() > 20, "{secret}");
    assert_eq!(created["name"], "ci.bot_1");
    assert_eq!(created["role"], "operator");
    assert!(created["revoked_at"].is_null());
    let token_id = created["id"].as_str().unwrap().to_owned();
    call(&srv, Method::GET, "/api/runs", Some(&secret), None)
        .await
        .ok(200);

    post(
        &srv,
        "/api/admin/tokens",
        &json!({"name": "ci.bot_1", "role": "viewer"}),
    )
    .await
    .err(409, "conflict");
    for bad in ["", "has space", "slash/name", "é", "n".repeat(65).as_str()] {
        post(
            &srv,
            "/api/admin/tokens",
            &json!({"name": bad, "role": "viewer"}),
        )
        .await
        .invalid("name");
    }
    post(
        &srv,
        "/api/admin/tokens",
        &json!({"name": "ok", "role": "root"}),
    )
    .await
    .invalid("role");
    post(&srv, "/api/admin/tokens", &json!({"role": "viewer"}))
        .await
        .invalid("name");
    let viewer = srv.token("reader", "viewer").await;

    let list = get(&srv, "/api/admin/tokens").await.ok(200).clone();
    let items = list["items"].as_array().unwrap();
    let names: HashSet<&str> = items.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, HashSet::from(["ci.bot_1", "reader"]));
    for t in items {
        let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_at",
                "id",
                "last_used_at",
                "name",
                "revoked_at",
                "role"
            ],
            "no secret or hash in {t}"
        );
    }
    let listed = list.to_string();
    assert!(!listed.contains(&secret) && !listed.contains(&viewer));

    call(
        &srv,
        Method::DELETE,
        "/api/admin/tokens/nobody",
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .err(404, "not_found");
    call(
        &srv,
        Method::DELETE,
        "/api/admin/tokens/ci.bot_1%00",
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .err(404, "not_found");

    // Revoking by name, then by id; a revoked token no longer authenticates.
    let revoked = call(
        &srv,
        Method::DELETE,
        "/api/admin/tokens/ci.bot_1",
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .ok(200)
    .clone();
    assert!(revoked["revoked_at"].is_string());
    assert!(revoked.get("token").is_none());
    let r = call(&srv, Method::GET, "/api/runs", Some(&secret), None).await;
    r.err(401, "unauthorized");
    call(
        &srv,
        Method::DELETE,
        "/api/admin/tokens/ci.bot_1",
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .err(404, "not_found");
    call(
        &srv,
        Method::DELETE,
        &format!("/api/admin/tokens/{token_id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .err(404, "not_found");
    let reader_id = items.iter().find(|t| t["name"] == "reader").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        &srv,
        Method::DELETE,
        &format!("/api/admin/tokens/{reader_id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .ok(200);
    call(&srv, Method::GET, "/api/runs", Some(&viewer), None)
        .await
        .err(401, "unauthorized");

    // The name of a revoked token is free again, with a new secret.
    let again = srv.token("ci.bot_1", "viewer").await;
    assert_ne!(again, secret);
    call(&srv, Method::GET, "/api/runs", Some(&again), None)
        .await
        .ok(200);
    let list = get(&srv, "/api/admin/tokens").await.ok(200).clone();
    let revoked_count = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["revoked_at"].is_string())
        .count();
    assert_eq!(revoked_count, 2);

    // A token named like another token's id: revoking by that id takes only the one it names.
    let target = post(
        &srv,
        "/api/admin/tokens",
        &json!({"name": "target", "role": "viewer"}),
    )
    .await
    .ok(201)
    .clone();
    let target_id = target["id"].as_str().unwrap().to_owned();
    let twin = srv.token(&target_id, "viewer").await;
    call(
        &srv,
        Method::DELETE,
        &format!("/api/admin/tokens/{target_id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .ok(200);
    call(&srv, Method::GET, "/api/runs", Some(&twin), None)
        .await
        .ok(200);

    // Secrets never reach the log, even after they were used and revoked.
    let log = srv.log();
    assert!(log.contains("token created"), "the log is being written");
    for s in [&secret, &viewer, &again, &ADMIN_TOKEN.to_owned()] {
        assert!(!log.contains(s.as_str()), "a token secret is in the log");
    }
}

on_both! {
    create_run_fields => create_echoes_every_field;
    create_local_repo => local_repo_requires_title;
    validation_fields => invalid_fields_are_named;
    validation_malformed => malformed_requests_are_refused;
    errors_routes_methods => unknown_routes_and_methods;
    errors_correlation_id => correlation_ids;
    get_run => get_one_run;
    list_filter => list_filters;
    list_pages => list_pagination;
    list_pages_concurrent_inserts => pagination_under_concurrent_inserts;
    actions => transitions;
    events_log => event_log;
    admin_bulk => bulk_pause_resume;
    auth_roles => role_matrix;
    auth_missing_or_bad => unauthenticated_requests;
    auth_tokens => token_lifecycle;
}
