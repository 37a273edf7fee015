//! Structured output and tool calls: the generated JSON must validate against the request's
//! schema (checked with the `jsonschema` crate), on both wires.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A schema with the keywords agent schemas use: nesting, `$defs`/`$ref`, enums, patterns,
/// bounds, `oneOf`, `minItems`, `uniqueItems`, `additionalProperties: false`.
fn plan_schema() -> Value {
    json!({
        "$defs": {
            "step": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^S-\\d{3}$"},
                    "kind": {"type": "string", "enum": ["edit", "test", "review"]},
                    "files": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 1, "uniqueItems": true},
                    "estimate": {"type": "number", "exclusiveMinimum": 0, "maximum": 8}
                },
                "required": ["id", "kind", "files", "estimate"],
                "additionalProperties": false
            }
        },
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 10, "maxLength": 80},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 2},
            "risk": {"oneOf": [{"type": "string", "enum": ["low", "high"]}, {"type": "null"}]},
            "labels": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": true},
            "approved": {"type": "boolean"},
            "branch": {"type": "string", "pattern": "^(feat|fix)/[a-z0-9-]{3,}$"},
            "meta": {"type": "object", "properties": {"version": {"const": 2}}, "required": ["version"]}
        },
        "required": ["title", "priority", "steps", "risk", "labels", "approved", "branch", "meta"],
        "additionalProperties": false
    })
}

fn assert_valid(schema: &Value, instance: &Value) {
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{instance} is invalid: {errors:?}");
}

#[tokio::test]
async fn openai_json_schema_answer_validates() {
    let sim = Sim::start().await;
    let mut req = openai_body("Plan the fix for issue #42");
    req["response_format"] = json!({
        "type": "json_schema",
        "json_schema": {"name": "plan", "strict": true, "schema": plan_schema()}
    });
    let (status, _, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let instance: Value = serde_json::from_str(content).unwrap();
    assert_valid(&plan_schema(), &instance);
    assert_eq!(instance["meta"]["version"], 2);
    assert_eq!(
        body["usage"]["completion_tokens"],
        tokens(content.chars().count())
    );
}

#[tokio::test]
async fn openai_json_object_answer_is_an_object() {
    let sim = Sim::start().await;
    let mut req = openai_body("reply in JSON");
    req["response_format"] = json!({"type": "json_object"});
    let (_, _, body) = parts(sim.openai(&req, &[]).await).await;
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(content).unwrap();
    assert!(v["answer"].as_str().unwrap().starts_with("[sim-llm] "));
}

#[tokio::test]
async fn anthropic_forced_tool_input_validates() {
    let sim = Sim::start().await;
    let mut req = anthropic_body("Plan the fix for issue #42");
    req["tools"] = json!([
        {"name": "noop", "description": "unused", "input_schema": {"type": "object"}},
        {"name": "submit_plan", "description": "the plan", "input_schema": plan_schema()}
    ]);
    req["tool_choice"] = json!({"type": "tool", "name": "submit_plan"});
    let (status, _, body) = parts(sim.anthropic(&req, &[]).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stop_reason"], "tool_use");
    let block = &body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "submit_plan");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_valid(&plan_schema(), &block["input"]);
    assert_eq!(body["content"].as_array().unwrap().len(), 1);
}

fn openai_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "read_file", "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "minLength": 1}, "max_lines": {"type": "integer", "minimum": 10}},
            "required": ["path"]
        }}},
        {"type": "function", "function": {"name": "run_tests", "parameters": {
            "type": "object",
            "properties": {"suite": {"type": "string", "enum": ["unit", "integration"]}},
            "required": ["suite"],
            "additionalProperties": false
        }}}
    ])
}

/// The tool call of an OpenAI answer: (name, arguments), after checking the common shape.
fn openai_call(body: &Value) -> (String, Value) {
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    (call["function"]["name"].as_str().unwrap().to_owned(), args)
}

#[tokio::test]
async fn openai_tool_calls_when_forced_or_asked() {
    let sim = Sim::start().await;
    let tools = openai_tools();
    let schema_of = |i: usize| tools[i]["function"]["parameters"].clone();

    let mut req = openai_body("do what you must");
    req["tools"] = tools.clone();
    req["tool_choice"] = json!("required");
    let (name, args) = openai_call(&parts(sim.openai(&req, &[]).await).await.2);
    assert_eq!(name, "read_file");
    assert_valid(&schema_of(0), &args);

    req["tool_choice"] = json!({"type": "function", "function": {"name": "run_tests"}});
    let (name, args) = openai_call(&parts(sim.openai(&req, &[]).await).await.2);
    assert_eq!(name, "run_tests");
    assert_eq!(args, json!({"suite": "unit"}));

    let mut asked = openai_body("Please call run_tests now");
    asked["tools"] = tools.clone();
    let (name, _) = openai_call(&parts(sim.openai(&asked, &[]).await).await.2);
    assert_eq!(name, "run_tests");

    // Without being asked, or with tools switched off, the answer is text.
    let mut plain = openai_body("hello");
    plain["tools"] = tools.clone();
    let (_, _, body) = parts(sim.openai(&plain, &[]).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    asked["tool_choice"] = json!("none");
    let (_, _, body) = parts(sim.openai(&asked, &[]).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn anthropic_tool_use_when_forced_or_asked() {
    let sim = Sim::start().await;
    let tools: Vec<Value> = openai_tools()
        .as_array()
        .unwrap()
        .iter()
        .map(
            |t| json!({"name": t["function"]["name"], "input_schema": t["function"]["parameters"]}),
        )
        .collect();
    let mut req = anthropic_body("go");
    req["tools"] = json!(tools);
    req["tool_choice"] = json!({"type": "any"});
    let (_, _, body) = parts(sim.anthropic(&req, &[]).await).await;
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(body["content"][0]["name"], "read_file");
    assert_valid(&tools[0]["input_schema"], &body["content"][0]["input"]);

    let mut asked = anthropic_body("now CALL RUN_TESTS");
    asked["tools"] = json!(tools);
    let (_, _, body) = parts(sim.anthropic(&asked, &[]).await).await;
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(body["content"][0]["input"], json!({"suite": "unit"}));
}

#[tokio::test]
async fn after_a_tool_result_the_answer_mentions_its_length() {
    let sim = Sim::start().await;
    let result = "x".repeat(1234);
    let req = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "call read_file"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": result}
        ],
        "tools": openai_tools()
    });
    let (_, _, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("1234") && text.contains("read_file"),
        "{text}"
    );

    let req = json!({
        "model": "claude",
        "max_tokens": 500,
        "messages": [
            {"role": "user", "content": "call read_file"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]}
        ],
        "tools": [{"name": "read_file", "input_schema": {"type": "object"}}]
    });
    let (_, _, body) = parts(sim.anthropic(&req, &[]).await).await;
    assert_eq!(body["stop_reason"], "end_turn");
    let text = body["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("1234"), "{text}");
}
