//! Test harness: a simulator on a free port, a client, request helpers and an SSE parser.

use atlasia_sim::SimConfig;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A running simulator; stops when dropped.
pub struct Sim {
    pub base: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Installs the TLS crypto provider reqwest needs (once per process).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Sim {
    pub async fn start() -> Self {
        Self::with(SimConfig::default()).await
    }

    pub async fn with(cfg: SimConfig) -> Self {
        init_tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(atlasia_sim::serve(cfg, listener, stop.clone()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self { base, client, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/chat/completions` with extra headers.
    pub async fn openai(&self, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut req = self
            .client
            .post(self.url("/v1/chat/completions"))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// `POST /v1/messages` with `anthropic-version` and extra headers.
    pub async fn anthropic(&self, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut req = self
            .client
            .post(self.url("/v1/messages"))
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    pub async fn stats(&self) -> Value {
        let r = self
            .client
            .get(self.url("/sim/stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

/// Status, headers and JSON body of a response (panics on a non-JSON body).
pub async fn parts(r: Response) -> (StatusCode, HeaderMap, Value) {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, body)
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name} in {h:?}"))
        .to_str()
        .unwrap()
}

/// A simple OpenAI request.
pub fn openai_body(text: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text}
        ]
    })
}

/// A simple Anthropic request.
pub fn anthropic_body(text: &str) -> Value {
    json!({
        "model": "claude-sonnet-4",
        "max_tokens": 1024,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": text}]
    })
}

/// `body` with `stream: true` (and more fields merged in).
pub fn streamed(body: &Value, extra: Value) -> Value {
    let mut b = body.clone();
    b["stream"] = json!(true);
    if let (Some(o), Value::Object(e)) = (b.as_object_mut(), extra) {
        o.extend(e);
    }
    b
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.data))
    }
}

/// Splits an SSE body into events (blank-line separated; `event:` and `data:` lines).
pub fn parse_sse(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            Event {
                event,
                data: data.join("\n"),
            }
        })
        .collect()
}

/// Reads a body until it ends or fails: the text received, and whether it failed.
pub async fn read_until_end(r: Response) -> (String, bool) {
    let mut stream = r.bytes_stream();
    let mut buf = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => buf.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    (String::from_utf8(buf).unwrap(), failed)
}

/// ceil(n / 4), the simulator's token count.
pub fn tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Without the fields that legitimately differ between two identical requests.
pub fn without_created(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("created");
    }
    v
}
