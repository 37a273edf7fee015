//! Fault injection: each fault's status, headers and error body on both wires, latency, cut
//! and malformed streams, stalls, `--fail-first`, `--fail-rate`, `--fault`, `--rate-limit-rpm`.

use crate::common::*;
use atlasia_sim::{Fault, FaultSpec, SimConfig};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn status_faults_on_the_openai_wire() {
    let sim = Sim::start().await;
    let req = openai_body("hi");
    let cases = [
        ("429", 429, "requests", Some("rate_limit_exceeded")),
        ("500", 500, "server_error", None),
        ("502", 502, "server_error", None),
        ("503", 503, "server_error", None),
        ("529", 529, "server_error", Some("overloaded")),
        (
            "auth",
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
    ];
    for (fault, status, kind, code) in cases {
        let (s, h, body) = parts(sim.openai(&req, &[("x-sim-fault", fault)]).await).await;
        assert_eq!(s.as_u16(), status, "{fault}");
        let err = &body["error"];
        assert_eq!(err["type"], kind, "{fault}: {body}");
        assert_eq!(err["code"].as_str(), code, "{fault}: {body}");
        assert!(err["message"].is_string());
        assert!(err.as_object().unwrap().contains_key("param"));
        header(&h, "x-ratelimit-remaining-requests");
        if status == 429 {
            assert_eq!(header(&h, "retry-after"), "1");
            assert_eq!(header(&h, "retry-after-ms"), "1000");
        } else {
            assert!(h.get("retry-after").is_none());
        }
    }
    let (_, h, _) = parts(
        sim.openai(&req, &[("x-sim-fault", "429"), ("x-sim-retry-after", "7")])
            .await,
    )
    .await;
    assert_eq!(header(&h, "retry-after"), "7");
    assert_eq!(header(&h, "retry-after-ms"), "7000");
}

#[tokio::test]
async fn status_faults_on_the_anthropic_wire() {
    let sim = Sim::start().await;
    let req = anthropic_body("hi");
    let cases = [
        ("429", 429, "rate_limit_error"),
        ("500", 500, "api_error"),
        ("502", 502, "api_error"),
        ("503", 503, "api_error"),
        ("529", 529, "overloaded_error"),
        ("auth", 401, "authentication_error"),
    ];
    for (fault, status, kind) in cases {
        let (s, h, body) = parts(sim.anthropic(&req, &[("x-sim-fault", fault)]).await).await;
        assert_eq!(s.as_u16(), status, "{fault}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], kind, "{fault}: {body}");
        assert!(body["error"]["message"].is_string());
        header(&h, "anthropic-ratelimit-requests-remaining");
        header(&h, "request-id");
        if status == 429 {
            assert_eq!(header(&h, "retry-after"), "1");
        }
    }
}

#[tokio::test]
async fn a_bad_fault_header_is_a_400() {
    let sim = Sim::start().await;
    let (s, _, body) = parts(
        sim.openai(&openai_body("x"), &[("x-sim-fault", "teapot")])
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "X-Sim-Fault");
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let sim = Sim::start().await;
    let t = Instant::now();
    let r = sim
        .openai(&openai_body("slow"), &[("x-sim-fault", "latency=300")])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(sim.stats().await["faults"]["latency"], 1);

    let steady = Sim::with(SimConfig {
        latency: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    let t = Instant::now();
    steady.anthropic(&anthropic_body("slow"), &[]).await;
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn cut_streams_end_without_the_terminal_event() {
    let sim = Sim::start().await;
    let req = streamed(
        &openai_body("cut me off please, mid sentence"),
        serde_json::json!({}),
    );
    let r = sim.openai(&req, &[("x-sim-fault", "cut=2")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (text, failed) = read_until_end(r).await;
    assert!(failed, "the connection should end abruptly; got {text:?}");
    let events = parse_sse(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    events.iter().for_each(|e| {
        e.json();
    });

    let req = streamed(&anthropic_body("cut me off"), serde_json::json!({}));
    let r = sim.anthropic(&req, &[("x-sim-fault", "cut=3")]).await;
    let (text, failed) = read_until_end(r).await;
    assert!(failed);
    let names: Vec<_> = parse_sse(&text)
        .into_iter()
        .filter_map(|e| e.event)
        .collect();
    assert_eq!(names, ["message_start", "content_block_start", "ping"]);

    // A cut larger than the stream still withholds the terminal event.
    let r = sim.anthropic(&req, &[("x-sim-fault", "cut=1000")]).await;
    let (text, failed) = read_until_end(r).await;
    assert!(failed);
    assert!(!text.contains("message_stop"));
    assert!(text.contains("message_delta"));

    // A plain answer is cut mid-body.
    let r = sim
        .openai(&openai_body("plain"), &[("x-sim-fault", "cut=10")])
        .await;
    let (text, failed) = read_until_end(r).await;
    assert!(failed);
    assert_eq!(text.len(), 10);
    assert_eq!(sim.stats().await["faults"]["cut"], 4);
}

#[tokio::test]
async fn malformed_answers_do_not_parse() {
    let sim = Sim::start().await;
    let r = sim
        .openai(&openai_body("x"), &[("x-sim-fault", "malformed")])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    let r = sim
        .anthropic(&anthropic_body("x"), &[("x-sim-fault", "malformed")])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&r.text().await.unwrap()).is_err());

    let req = streamed(&openai_body("x"), serde_json::json!({}));
    let r = sim.openai(&req, &[("x-sim-fault", "malformed")]).await;
    let events = parse_sse(&r.text().await.unwrap());
    let broken = events
        .iter()
        .filter(|e| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
        .count();
    assert_eq!(broken, 1);

    let req = streamed(&anthropic_body("x"), serde_json::json!({}));
    let r = sim.anthropic(&req, &[("x-sim-fault", "malformed")]).await;
    let events = parse_sse(&r.text().await.unwrap());
    assert!(
        events
            .iter()
            .any(|e| serde_json::from_str::<Value>(&e.data).is_err())
    );
}

#[tokio::test]
async fn a_stall_outlasts_the_client_timeout() {
    let sim = Sim::with(SimConfig {
        stall_max: Duration::from_secs(20),
        ..SimConfig::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let t = Instant::now();
    let err = impatient
        .post(sim.url("/v1/chat/completions"))
        .header("x-sim-fault", "stall")
        .json(&openai_body("hello?"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // Streams get their headers, then nothing.
    let r = impatient
        .post(sim.url("/v1/messages"))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .header("x-sim-fault", "stall")
        .json(&streamed(&anthropic_body("hello?"), serde_json::json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let err = r.text().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(sim.stats().await["faults"]["stall"], 2);
}

#[tokio::test]
async fn fail_first_makes_a_storm_then_recovery() {
    let sim = Sim::with(SimConfig {
        fail_first: 3,
        fail_status: 503,
        ..SimConfig::default()
    })
    .await;
    let req = openai_body("again");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(sim.openai(&req, &[]).await.status().as_u16());
    }
    statuses.push(
        sim.anthropic(&anthropic_body("again"), &[])
            .await
            .status()
            .as_u16(),
    );
    statuses.push(sim.openai(&req, &[]).await.status().as_u16());
    assert_eq!(statuses, [503, 503, 503, 200, 200]);
    let s = sim.stats().await;
    assert_eq!(s["faults_injected"], 3);
    assert_eq!(s["answers"], 2);
}

#[tokio::test]
async fn fail_rate_repeats_with_the_seed() {
    let cfg = SimConfig {
        fail_rate: 0.5,
        fail_status: 500,
        seed: 42,
        ..SimConfig::default()
    };
    let run = |cfg: SimConfig| async move {
        let sim = Sim::with(cfg).await;
        let mut out = Vec::new();
        for i in 0..24 {
            let r = sim.openai(&openai_body(&format!("q{i}")), &[]).await;
            out.push(r.status().as_u16());
        }
        out
    };
    let a = run(cfg.clone()).await;
    assert_eq!(a, run(cfg.clone()).await);
    assert!(a.contains(&500) && a.contains(&200), "{a:?}");
    assert!(a.iter().all(|s| *s == 500 || *s == 200));
}

#[tokio::test]
async fn the_header_wins_over_the_server_fault() {
    let sim = Sim::with(SimConfig {
        fault: Some(FaultSpec {
            latency: None,
            fault: Some(Fault::Status(502)),
        }),
        ..SimConfig::default()
    })
    .await;
    let req = openai_body("x");
    assert_eq!(sim.openai(&req, &[]).await.status().as_u16(), 502);
    assert_eq!(
        sim.openai(&req, &[("x-sim-fault", "none")]).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        sim.openai(&req, &[("x-sim-fault", "529")])
            .await
            .status()
            .as_u16(),
        529
    );
}

#[tokio::test]
async fn the_rpm_limit_answers_429_until_the_window_ends() {
    let sim = Sim::with(SimConfig {
        rate_limit_rpm: Some(2),
        ..SimConfig::default()
    })
    .await;
    let req = openai_body("x");
    let (_, h, _) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(header(&h, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "1");
    let (s, h, _) = parts(sim.anthropic(&anthropic_body("x"), &[]).await).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(header(&h, "anthropic-ratelimit-requests-remaining"), "0");
    let (s, h, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let wait: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "0");
    let (s, _, body) = parts(sim.anthropic(&anthropic_body("x"), &[]).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(sim.stats().await["rate_limited"], 2);
}

#[tokio::test]
async fn the_tpm_limit_answers_429_once_the_window_tokens_are_used() {
    let sim = Sim::with(SimConfig {
        rate_limit_tpm: Some(50),
        ..SimConfig::default()
    })
    .await;
    // ~150 characters in, a short answer out: more than 50 tokens in one exchange.
    let req = openai_body(&"tokens ".repeat(20));
    let (s, h, _) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(header(&h, "x-ratelimit-limit-tokens"), "50");
    assert_eq!(header(&h, "x-ratelimit-remaining-tokens"), "0");
    let (s, h, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let wait: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let (s, h, _) = parts(sim.anthropic(&anthropic_body("x"), &[]).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "anthropic-ratelimit-tokens-limit"), "50");
    assert_eq!(sim.stats().await["rate_limited"], 2);
}

#[tokio::test]
async fn length_cuts_the_answer_and_says_so_on_both_wires() {
    let sim = Sim::start().await;
    let long = "please answer at length ".repeat(20);
    let (s, _, v) = parts(
        sim.openai(&openai_body(&long), &[("x-sim-fault", "length=3")])
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.chars().count(), 12, "3 tokens of 4 characters: {text}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // Without a size: the request's max_tokens.
    let mut req = openai_body(&long);
    req["max_tokens"] = 2.into();
    let (_, _, v) = parts(sim.openai(&req, &[("x-sim-fault", "length")]).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    // A forced tool call is cut too: text, not a call.
    let mut req = openai_body("judge");
    req["tools"] = serde_json::json!([{"type": "function", "function": {"name": "decide",
        "parameters": {"type": "object", "properties": {"why": {"type": "string"}}, "required": ["why"]}}}]);
    req["tool_choice"] = "required".into();
    let (_, _, v) = parts(sim.openai(&req, &[("x-sim-fault", "length=2")]).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    let (s, _, v) = parts(
        sim.anthropic(&anthropic_body(&long), &[("x-sim-fault", "length=3")])
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stop_reason"], "max_tokens", "{v}");
}

#[tokio::test]
async fn context_answers_as_llama_server_and_anthropic_do() {
    let sim = Sim::start().await;
    let long = "x".repeat(400);
    let (s, _, v) = parts(
        sim.openai(&openai_body(&long), &[("x-sim-fault", "context=50")])
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let err = &v["error"];
    assert_eq!(err["code"], 400, "{v}");
    assert_eq!(err["type"], "exceed_context_size_error", "{v}");
    assert_eq!(err["n_ctx"], 50, "{v}");
    let n_prompt = err["n_prompt_tokens"].as_u64().unwrap();
    assert!(n_prompt > 50, "{v}");
    assert_eq!(
        err["message"],
        format!(
            "request ({n_prompt} tokens) exceeds the available context size (50 tokens), try increasing it"
        )
    );
    // A prompt that fits is answered.
    let (s, _, v) = parts(
        sim.openai(&openai_body("short"), &[("x-sim-fault", "context=50")])
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = parts(
        sim.anthropic(&anthropic_body("short"), &[("x-sim-fault", "context")])
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long: "),
        "{v}"
    );
}

#[tokio::test]
async fn prose_comes_instead_of_the_tool_call() {
    let sim = Sim::start().await;
    let mut req = openai_body("judge");
    req["tools"] = serde_json::json!([{"type": "function", "function": {"name": "decide",
        "parameters": {"type": "object", "properties": {"why": {"type": "string"}}}}}]);
    req["tool_choice"] = "required".into();
    let (s, _, v) = parts(sim.openai(&req, &[("x-sim-fault", "prose")]).await).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("[sim-llm] "),
        "{v}"
    );
    // The server-wide switch works the same.
    let cfg = SimConfig {
        fault: Some("prose".parse::<FaultSpec>().unwrap()),
        ..SimConfig::default()
    };
    let sim = Sim::with(cfg).await;
    let (_, _, v) = parts(sim.openai(&req, &[]).await).await;
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert_eq!(sim.stats().await["faults"]["prose"], 1);
}

#[tokio::test]
async fn a_server_wide_context_size_is_reported_like_llama_server() {
    let cfg = SimConfig {
        fault: Some("context=300".parse::<FaultSpec>().unwrap()),
        ..SimConfig::default()
    };
    let sim = Sim::with(cfg).await;
    let v: Value = sim
        .client
        .get(sim.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["meta"]["n_ctx"], 300, "{v}");
    let plain = Sim::start().await;
    let v: Value = plain
        .client
        .get(plain.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["data"][0].get("meta").is_none(), "{v}");
}
