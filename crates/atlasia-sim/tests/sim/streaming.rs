//! Streaming framing on both wires: the exact event sequence, and that the concatenated deltas
//! equal the non-streamed answer.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The JSON chunks of an OpenAI stream, after checking it ends with `data: [DONE]`.
async fn openai_chunks(sim: &Sim, req: &Value) -> Vec<Value> {
    let r = sim.openai(req, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(r.headers(), "content-type").starts_with("text/event-stream"));
    header(r.headers(), "x-ratelimit-remaining-requests");
    let events = parse_sse(&r.text().await.unwrap());
    let (last, chunks) = events.split_last().unwrap();
    assert_eq!(last.data, "[DONE]");
    assert!(events.iter().all(|e| e.event.is_none()));
    chunks.iter().map(Event::json).collect()
}

#[tokio::test]
async fn openai_text_stream_matches_the_plain_answer() {
    let sim = Sim::start().await;
    let plain_req = openai_body("Stream me a reply about the weather in Paris");
    let plain = parts(sim.openai(&plain_req, &[]).await).await.2;
    let req = streamed(
        &plain_req,
        json!({"stream_options": {"include_usage": true}}),
    );
    let chunks = openai_chunks(&sim, &req).await;
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], plain["id"]);
        assert_eq!(c["model"], "sim-llm/gpt-4o-mini");
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
    let (finish, deltas) = rest.split_last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(deltas[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(deltas.iter().all(|d| d["usage"].is_null()));
    assert!(
        deltas
            .iter()
            .all(|d| d["choices"][0]["finish_reason"].is_null())
    );
    let text: String = deltas
        .iter()
        .map(|d| d["choices"][0]["delta"]["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // Without include_usage: no usage chunk and no usage keys.
    let chunks = openai_chunks(&sim, &streamed(&plain_req, json!({}))).await;
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn openai_tool_call_stream_matches_the_plain_answer() {
    let sim = Sim::start().await;
    let mut plain_req = openai_body("please call write_file");
    plain_req["tools"] = json!([{"type": "function", "function": {"name": "write_file", "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string", "minLength": 40}},
        "required": ["path", "content"]
    }}}]);
    let plain = parts(sim.openai(&plain_req, &[]).await).await.2;
    let call = &plain["choices"][0]["message"]["tool_calls"][0];
    let chunks = openai_chunks(&sim, &streamed(&plain_req, json!({}))).await;
    let (finish, deltas) = chunks.split_last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let first = &deltas[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    let head = &first["tool_calls"][0];
    assert_eq!(head["index"], 0);
    assert_eq!(head["id"], call["id"]);
    assert_eq!(head["type"], "function");
    assert_eq!(head["function"]["name"], "write_file");
    assert_eq!(head["function"]["arguments"], "");
    assert!(deltas.len() > 2, "arguments come in several fragments");
    let args: String = deltas[1..]
        .iter()
        .map(|d| {
            let tc = &d["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(tc["index"], 0);
            assert!(tc.get("id").is_none());
            tc["function"]["arguments"].as_str().unwrap()
        })
        .collect();
    assert_eq!(args, call["function"]["arguments"].as_str().unwrap());
}

/// The events of an Anthropic stream, after checking each names its own `type`.
async fn anthropic_events(sim: &Sim, req: &Value) -> Vec<(String, Value)> {
    let r = sim.anthropic(req, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(r.headers(), "content-type").starts_with("text/event-stream"));
    header(r.headers(), "anthropic-ratelimit-requests-remaining");
    parse_sse(&r.text().await.unwrap())
        .iter()
        .map(|e| {
            let name = e.event.clone().expect("every Anthropic event is named");
            let data = e.json();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

/// The event names with the deltas collapsed to one `content_block_delta*`.
fn shape(events: &[(String, Value)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in events {
        if name == "content_block_delta" && out.last().is_some_and(|l| l == "content_block_delta*")
        {
            continue;
        }
        out.push(if name == "content_block_delta" {
            "content_block_delta*".into()
        } else {
            name.clone()
        });
    }
    out
}

const SEQUENCE: [&str; 7] = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta*",
    "content_block_stop",
    "message_delta",
    "message_stop",
];

#[tokio::test]
async fn anthropic_text_stream_matches_the_plain_answer() {
    let sim = Sim::start().await;
    let plain_req = anthropic_body("Stream me a reply about the weather in Paris");
    let plain = parts(sim.anthropic(&plain_req, &[]).await).await.2;
    let events = anthropic_events(&sim, &streamed(&plain_req, json!({}))).await;
    assert_eq!(shape(&events), SEQUENCE);
    let start = &events[0].1["message"];
    assert_eq!(start["id"], plain["id"]);
    assert_eq!(start["model"], plain["model"]);
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(
        start["usage"]["input_tokens"],
        plain["usage"]["input_tokens"]
    );
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d)
        .collect();
    assert!(deltas.len() >= 3);
    let text: String = deltas
        .iter()
        .map(|d| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, plain["content"][0]["text"].as_str().unwrap());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        delta["usage"]["output_tokens"],
        plain["usage"]["output_tokens"]
    );
}

#[tokio::test]
async fn anthropic_tool_use_stream_matches_the_plain_answer() {
    let sim = Sim::start().await;
    let mut plain_req = anthropic_body("plan it");
    plain_req["tools"] = json!([{"name": "submit_plan", "input_schema": {
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {"type": "string", "minLength": 12}, "minItems": 3}},
        "required": ["steps"]
    }}]);
    plain_req["tool_choice"] = json!({"type": "tool", "name": "submit_plan"});
    let plain = parts(sim.anthropic(&plain_req, &[]).await).await.2;
    let events = anthropic_events(&sim, &streamed(&plain_req, json!({}))).await;
    assert_eq!(shape(&events), SEQUENCE);
    let block = &events[1].1["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["id"], plain["content"][0]["id"]);
    assert_eq!(block["name"], "submit_plan");
    assert_eq!(block["input"], json!({}));
    let json_text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    let input: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(input, plain["content"][0]["input"]);
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "tool_use"
    );
}
