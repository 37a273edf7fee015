//! Agent-aware answers over HTTP, as the engine would ask for them: the engine's JSON document
//! as the first user message, the artifact's schema as structured output (OpenAI
//! `response_format`, Anthropic forced tool), the developer's tool loop with the engine's own tool
//! definitions. Every artifact is checked with the engine's contracts (schema + semantic rules),
//! and both wires must give the same logical answers.

use crate::common::*;
use atlasia_engine::contracts::{Contracts, Tool as ContractTool};
use reqwest::StatusCode;
use serde_json::{Value, json};

const BODY: &str = r#"The total is wrong.

<!-- atlasia-sim
{"verify": ["python3 -m unittest -q"],
 "developer": [
   [{"tool": "read_file", "args": {"path": "app/total.py"}},
    {"tool": "edit_file", "args": {"path": "app/total.py", "old_text": "a - b", "new_text": "a + b"}},
    {"tool": "run_command", "args": {"command": "python3 -m unittest -q"}}],
   [{"tool": "write_file", "args": {"path": "tests/test_total.py", "content": "import unittest\n"}}]],
 "review": ["changes_required", {"security": "rejected", "sre": "approved_with_minor_issues"}, "approved"],
 "judge": [0.3, 0.5, 0.65]}
-->"#;

const PERSONAS: [&str; 4] = ["security", "code_quality", "sre", "frontend_ux"];

fn contracts() -> Contracts {
    Contracts::embedded().unwrap()
}

/// The engine's user message for an agent.
fn doc(iteration: u64, body: &str, extra: Value) -> String {
    let mut d = json!({
        "iteration": iteration,
        "issue": {"repo": "acme/shop", "number": 12, "title": "Fix the order total", "body": body},
    });
    if let (Some(o), Value::Object(e)) = (d.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::to_string_pretty(&d).unwrap()
}

/// The artifact `kind` as both wires answer it (asserted equal), validated by the engine.
async fn artifact(sim: &Sim, kind: &str, user: &str) -> Value {
    let c = contracts();
    let schema = c.schema(kind).unwrap().clone();
    let openai = json!({
        "model": "sim-llm/fast",
        "messages": [{"role": "system", "content": "You are an agent."},
                     {"role": "user", "content": user}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": kind, "schema": schema, "strict": true}},
    });
    let (status, _, body) = parts(sim.openai(&openai, &[]).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    let from_openai: Value = serde_json::from_str(text).unwrap();

    let anthropic = json!({
        "model": "claude-sonnet-4",
        "max_tokens": 4096,
        "system": "You are an agent.",
        "messages": [{"role": "user", "content": user}],
        "tools": [{"name": kind, "description": "Give the answer.", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": kind},
    });
    let (status, _, body) = parts(sim.anthropic(&anthropic, &[]).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"][0]["name"], kind);
    let from_anthropic = body["content"][0]["input"].clone();

    assert_eq!(
        from_openai, from_anthropic,
        "both wires give the same {kind}"
    );
    if let Err(issues) = c.validate(kind, &from_openai) {
        panic!("{kind} {from_openai} is refused by the engine: {issues:?}");
    }
    from_openai
}

#[tokio::test]
async fn reviews_follow_the_script_and_the_verdict_rule() {
    let sim = Sim::start().await;
    // (iteration, persona) → verdict, per the script's review rounds.
    let cases = [
        (1, "security", "changes_required", Some("high")),
        (1, "frontend_ux", "changes_required", Some("high")),
        (2, "security", "rejected", Some("critical")),
        (2, "sre", "approved_with_minor_issues", Some("low")),
        (2, "code_quality", "approved", None),
        (3, "frontend_ux", "approved", None),
        (7, "security", "approved", None),
    ];
    for (iteration, persona, verdict, severity) in cases {
        let user = doc(iteration, BODY, json!({"persona": persona}));
        let review = artifact(&sim, "persona_review", &user).await;
        assert_eq!(review["persona"], persona);
        assert_eq!(
            review["verdict"], verdict,
            "{iteration} {persona}: {review}"
        );
        let findings = review["findings"].as_array().unwrap();
        match severity {
            None => assert!(findings.is_empty(), "{review}"),
            Some(s) => {
                assert_eq!(findings.len(), 1);
                assert_eq!(findings[0]["severity"], s);
                // The file the developer script touched in that iteration.
                let file = if iteration == 1 {
                    "app/total.py"
                } else {
                    "tests/test_total.py"
                };
                assert_eq!(findings[0]["file"], file);
            }
        }
    }
    // No script: every persona approves.
    for persona in PERSONAS {
        let review = artifact(
            &sim,
            "persona_review",
            &doc(1, "plain", json!({"persona": persona})),
        )
        .await;
        assert_eq!(
            (
                review["verdict"].as_str(),
                review["findings"].as_array().map(Vec::len)
            ),
            (Some("approved"), Some(0))
        );
    }
}

#[tokio::test]
async fn judge_votes_follow_the_rubric_and_the_bands() {
    let sim = Sim::start().await;
    for (iteration, decision) in [(1, "veto"), (2, "conditional"), (3, "pass"), (4, "pass")] {
        for voter in 1..=3 {
            let vote = artifact(
                &sim,
                "judge_verdict",
                &doc(iteration, BODY, json!({"voter": voter})),
            )
            .await;
            let parsed: atlasia_engine::judge::JudgeVote =
                serde_json::from_value(vote.clone()).unwrap();
            assert_eq!(parsed.weighted_score, parsed.scores.weighted(), "{vote}");
            let band =
                serde_json::to_value(atlasia_engine::judge::band(parsed.weighted_score)).unwrap();
            assert_eq!(vote["decision"], band);
            assert_eq!(vote["decision"], decision, "{vote}");
            assert_eq!(
                vote["conditions"].as_array().unwrap().is_empty(),
                decision != "conditional"
            );
        }
    }
    let vote = artifact(
        &sim,
        "judge_verdict",
        &doc(1, "no script", json!({"voter": 1})),
    )
    .await;
    assert_eq!(
        (
            vote["scores"]["correctness"].as_f64(),
            vote["decision"].as_str()
        ),
        (Some(0.9), Some("pass"))
    );
}

#[tokio::test]
async fn the_plan_the_writer_and_the_tester() {
    let sim = Sim::start().await;
    let plan = artifact(&sim, "work_plan", &doc(1, BODY, json!({}))).await;
    assert_eq!(plan["verify_commands"], json!(["python3 -m unittest -q"]));
    assert_eq!(plan["branch"], "ai/issue-12");
    let plan = artifact(&sim, "work_plan", &doc(1, "no script", json!({}))).await;
    assert_eq!(plan["verify_commands"], json!([]));

    let docs = artifact(&sim, "docs_update", &doc(2, BODY, json!({}))).await;
    assert_eq!(docs["pr_title"], "Fix the order total");
    assert!(docs["pr_body"].as_str().unwrap().contains("Closes #12"));
    assert_eq!(docs["changelog"].as_array().unwrap().len(), 1);

    let log = json!([{"command": "python3 -m unittest -q", "exit_code": 1, "duration_ms": 40,
                      "output_tail": "FAILED (failures=1)"}]);
    let report = artifact(&sim, "test_report", &doc(1, BODY, json!({"test_log": log}))).await;
    assert_eq!(report["passed"], false);
    assert_eq!(report["commands"], log);

    // Kinds without agent-aware answers keep the plain schema instance, still valid.
    artifact(&sim, "ticket_plan", &doc(1, BODY, json!({}))).await;
}

fn developer_tools() -> Vec<(String, Value)> {
    let c = contracts();
    let allowed = [
        ContractTool::List,
        ContractTool::Read,
        ContractTool::Search,
        ContractTool::Write,
        ContractTool::Edit,
        ContractTool::Run,
        ContractTool::Finish,
    ];
    atlasia_engine::tools::definitions(&allowed, c.schema("implementation_report").unwrap())
        .into_iter()
        .map(|t| (t.name, t.parameters))
        .collect()
}

/// Plays the developer loop on one wire: the tool calls until `finish` (its arguments last).
async fn developer_loop(sim: &Sim, anthropic: bool, user: &str) -> Vec<(String, Value)> {
    let tools = developer_tools();
    let mut messages = vec![json!({"role": "user", "content": user})];
    let mut calls = Vec::new();
    for turn in 0..10 {
        let (name, args, id) = if anthropic {
            let req = json!({
                "model": "claude-sonnet-4", "max_tokens": 8192, "system": "Develop.",
                "messages": messages,
                "tools": tools.iter().map(|(n, p)| json!({"name": n, "input_schema": p})).collect::<Vec<_>>(),
            });
            let (status, _, body) = parts(sim.anthropic(&req, &[]).await).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["stop_reason"], "tool_use");
            let block = body["content"][0].clone();
            (
                block["name"].as_str().unwrap().to_owned(),
                block["input"].clone(),
                block["id"].as_str().unwrap().to_owned(),
            )
        } else {
            let mut all = vec![json!({"role": "system", "content": "Develop."})];
            all.extend(messages.iter().cloned());
            let req = json!({
                "model": "gpt-4o", "messages": all,
                "tools": tools.iter().map(|(n, p)| json!({"type": "function", "function": {"name": n, "parameters": p}})).collect::<Vec<_>>(),
            });
            let (status, _, body) = parts(sim.openai(&req, &[]).await).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
            let call = body["choices"][0]["message"]["tool_calls"][0].clone();
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            (
                call["function"]["name"].as_str().unwrap().to_owned(),
                args,
                call["id"].as_str().unwrap().to_owned(),
            )
        };
        calls.push((name.clone(), args.clone()));
        if name == "finish" {
            return calls;
        }
        let result = format!("ok: turn {turn}");
        if anthropic {
            messages.push(json!({"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": name, "input": args}]}));
            messages.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": result}]}));
        } else {
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}));
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
        }
    }
    panic!("no finish after 10 turns: {calls:?}");
}

#[tokio::test]
async fn the_developer_plays_its_script_then_finishes_on_both_wires() {
    let sim = Sim::start().await;
    let c = contracts();
    for (iteration, expected, files) in [
        (
            1,
            vec!["read_file", "edit_file", "run_command", "finish"],
            vec!["app/total.py"],
        ),
        (2, vec!["write_file", "finish"], vec!["tests/test_total.py"]),
        (5, vec!["write_file", "finish"], vec!["tests/test_total.py"]),
    ] {
        let user = doc(iteration, BODY, json!({}));
        let openai = developer_loop(&sim, false, &user).await;
        let anthropic = developer_loop(&sim, true, &user).await;
        assert_eq!(openai, anthropic, "both wires play the same loop");
        let names: Vec<&str> = openai.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expected);
        if iteration == 1 {
            assert_eq!(
                openai[1].1,
                json!({"path": "app/total.py", "old_text": "a - b", "new_text": "a + b"})
            );
        }
        let report = &openai.last().unwrap().1;
        c.validate("implementation_report", report).unwrap();
        let changed: Vec<&str> = report["files_changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert_eq!(changed, files);
    }
    // No script: finish at once, with a valid (empty) report.
    let calls = developer_loop(&sim, false, &doc(1, "plain", json!({}))).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "finish");
    c.validate("implementation_report", &calls[0].1).unwrap();
    assert_eq!(calls[0].1["files_changed"], json!([]));
}

#[tokio::test]
async fn agent_answers_are_deterministic_and_plain_chats_are_unchanged() {
    let sim = Sim::start().await;
    let user = doc(1, BODY, json!({"persona": "security"}));
    let a = artifact(&sim, "persona_review", &user).await;
    let b = artifact(&sim, "persona_review", &user).await;
    assert_eq!(a, b);
    // A conversation that is not the engine's document keeps today's behaviour, `finish` or not.
    let mut req = openai_body("hello there");
    req["tools"] = json!([{"type": "function", "function": {"name": "finish", "parameters": {"type": "object"}}}]);
    let (_, _, body) = parts(sim.openai(&req, &[]).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("[sim-llm] ")
    );
    assert_eq!(body["model"], "sim-llm/gpt-4o-mini");
}
