//! The real `ai/` folder: contracts load, schemas compile, valid artifacts pass, invalid ones fail
//! with the right JSON pointer, the semantic checks hold, and broken files are reported by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use atlasia_engine::contracts::{
    ContractError, Contracts, EMBEDDED_AGENTS, EMBEDDED_SCHEMAS, ModelClass, Step, Tool,
    ValidationIssue, reask_message,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn ai_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ai")
}

fn contracts() -> Contracts {
    Contracts::load(&ai_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// A valid example of every artifact kind.
fn valid(kind: &str) -> Value {
    match kind {
        "ticket_plan" => json!({
            "summary": "Add a health endpoint so the load balancer can probe the service.",
            "acceptance_criteria": [
                "GET /health returns 200 with {\"status\":\"ok\"}",
                "GET /health needs no authentication",
                "GET /health answers within 50 ms when the database is down"
            ],
            "out_of_scope": ["readiness checks of dependencies"],
            "risks": ["probe floods: the handler does no I/O"],
            "labels": ["enhancement", "backend"]
        }),
        "work_plan" => json!({
            "branch": "ai/issue-42",
            "tasks": [
                {"area": "backend", "description": "Add the handler", "files": ["src/health.rs"], "tests": ["health_returns_ok"]},
                {"area": "backend", "description": "Route it without auth", "files": ["src/app.rs"], "tests": ["health_needs_no_token"]},
                {"area": "docs", "description": "Document it", "files": ["README.md"], "tests": []}
            ],
            "verify_commands": ["cargo test", "cargo clippy -- -D warnings"],
            "definition_of_done": ["all acceptance criteria have a passing test"]
        }),
        "architecture_notes" => json!({
            "decisions": [{"decision": "Handler in its own module", "rationale": "Keeps routing thin"}],
            "components": ["src/health.rs: the handler"],
            "risks": [],
            "test_strategy": "One integration test per criterion over the real router."
        }),
        "implementation_report" => json!({
            "summary": "Added GET /health.",
            "files_changed": [{"path": "src/health.rs", "change": "new handler"}],
            "commands_run": ["cargo test"],
            "notes": ""
        }),
        "persona_review" => json!({
            "persona": "security",
            "verdict": "approved_with_minor_issues",
            "findings": [{
                "severity": "low", "file": "src/health.rs", "line": 3,
                "title": "Version leak", "detail": "Returns the build version.", "suggestion": "Drop it."
            }]
        }),
        "test_report" => json!({
            "passed": false,
            "commands": [
                {"command": "cargo test", "exit_code": 101, "duration_ms": 5300, "output_tail": "test health ... FAILED"},
                {"command": "cargo clippy", "exit_code": null, "duration_ms": 600000, "output_tail": "killed: timeout"}
            ],
            "summary": "cargo test failed: health_returns_ok expected 200 got 404."
        }),
        "judge_verdict" => json!({
            "scores": {"correctness": 0.7, "security": 1.0, "maintainability": 0.7, "performance": 1.0, "tests": 0.4},
            // 0.21 + 0.25 + 0.14 + 0.15 + 0.04 = 0.79
            "weighted_score": 0.79,
            "decision": "pass",
            "rationale": "All criteria tested; one test is shallow.",
            "conditions": []
        }),
        "escalation" => json!({
            "context": "REVIEW looped back twice.",
            "blocker": "A high finding persists: token logged.",
            "options": [
                {"id": "manual_fix", "description": "A human fixes it", "consequence": "Bolt waits"},
                {"id": "abort", "description": "Stop", "consequence": "No pull request"}
            ],
            "recommendation": "manual_fix"
        }),
        "docs_update" => json!({
            "changelog": [{"category": "added", "text": "GET /health for load balancer probes."}],
            "pr_title": "Add a health endpoint",
            "pr_body": "## What and why\n...\nCloses #42"
        }),
        other => panic!("no example for {other}"),
    }
}

/// Sets `value[pointer] = new`, creating nothing: the pointer must exist.
fn with(mut value: Value, pointer: &str, new: Value) -> Value {
    *value
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = new;
    value
}

fn without(mut value: Value, parent: &str, key: &str) -> Value {
    value
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap();
    value
}

fn issues(c: &Contracts, kind: &str, value: &Value) -> Vec<ValidationIssue> {
    match c.validate(kind, value) {
        Ok(()) => panic!("{kind} should be invalid: {value}"),
        Err(issues) => issues,
    }
}

fn assert_issue_at(c: &Contracts, kind: &str, value: &Value, pointer: &str) {
    let found = issues(c, kind, value);
    assert!(
        found.iter().any(|i| i.path == pointer),
        "{kind}: expected an issue at {pointer:?}, got {found:?}"
    );
}

#[test]
fn the_real_ai_folder_loads_and_every_agent_schema_compiles() {
    let c = contracts();
    let names: Vec<&str> = c.agents().map(|a| a.name.as_str()).collect();
    for expected in [
        "architect",
        "developer",
        "judge",
        "pm",
        "qualifier",
        "reviewer-code-quality",
        "reviewer-frontend-ux",
        "reviewer-security",
        "reviewer-sre",
        "tester",
        "writer",
    ] {
        assert!(names.contains(&expected), "missing agent {expected}");
    }
    for agent in c.agents() {
        if let Some(output) = &agent.output {
            assert!(
                c.schema(output).is_some(),
                "{} output {output} has no schema",
                agent.name
            );
        }
        let lines = agent.prompt.lines().count();
        assert!(
            (10..=30).contains(&lines),
            "{}: prompt has {lines} lines",
            agent.name
        );
        assert!(!agent.prompt.contains("TODO"), "{}", agent.name);
    }
}

#[test]
fn embedded_contracts_match_the_folder() {
    let listed = |dir: &str, ext: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(ai_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(ext))
            .collect();
        names.sort();
        names
    };
    let embedded = |files: &[(&str, &str)]| -> Vec<String> {
        let mut names: Vec<String> = files.iter().map(|(n, _)| (*n).to_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(
        embedded(EMBEDDED_SCHEMAS),
        listed("schemas", ".json"),
        "update EMBEDDED_SCHEMAS"
    );
    assert_eq!(
        embedded(EMBEDDED_AGENTS),
        listed("agents", ".yaml"),
        "update EMBEDDED_AGENTS"
    );
    let from_binary = Contracts::embedded().unwrap();
    let from_disk = contracts();
    assert_eq!(
        from_binary.agents().collect::<Vec<_>>(),
        from_disk.agents().collect::<Vec<_>>()
    );
    assert_eq!(
        from_binary.kinds().collect::<Vec<_>>(),
        from_disk.kinds().collect::<Vec<_>>()
    );
}

#[test]
fn contract_fields_follow_the_design() {
    let c = contracts();
    let developer = c.agent("developer").unwrap();
    assert_eq!(developer.step, Step::Developer);
    assert_eq!(developer.model_class, ModelClass::Primary);
    assert_eq!(developer.max_turns, 40);
    assert_eq!(
        developer.tools,
        vec![
            Tool::List,
            Tool::Read,
            Tool::Search,
            Tool::Write,
            Tool::Edit,
            Tool::Run,
            Tool::Finish
        ]
    );
    assert_eq!(
        c.agent("architect").unwrap().model_class,
        ModelClass::Primary
    );
    for cheap in ["pm", "qualifier", "judge", "writer", "reviewer-security"] {
        assert_eq!(
            c.agent(cheap).unwrap().model_class,
            ModelClass::Cheap,
            "{cheap}"
        );
        assert!(c.agent(cheap).unwrap().tools.is_empty(), "{cheap}");
    }
    let reviewers: Vec<&str> = c
        .agents_for(Step::Review)
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(
        reviewers,
        [
            "reviewer-code-quality",
            "reviewer-frontend-ux",
            "reviewer-security",
            "reviewer-sre"
        ]
    );
    for step in [
        Step::Pm,
        Step::Qualifier,
        Step::Architect,
        Step::Tester,
        Step::Judge,
        Step::Writer,
    ] {
        assert_eq!(c.agents_for(step).len(), 1, "{step:?}");
    }
    assert!(c.agent("nobody").is_none());
}

#[test]
fn every_kind_has_a_valid_example_that_passes() {
    let c = contracts();
    for kind in c.kinds().map(str::to_owned).collect::<Vec<_>>() {
        if let Err(issues) = c.validate(&kind, &valid(&kind)) {
            panic!("{kind}: {issues:?}");
        }
    }
    // The optional persona_review line and docs_update readme_update.
    let c2 = &c;
    let no_line = without(valid("persona_review"), "/findings/0", "line");
    assert!(c2.validate("persona_review", &no_line).is_ok());
    let mut docs = valid("docs_update");
    docs["readme_update"] = json!({"heading": "Health", "content": "GET /health"});
    assert!(c.validate("docs_update", &docs).is_ok());
    let run_branch = with(valid("work_plan"), "/branch", json!("ai/run-0a1b2c3d"));
    assert!(c.validate("work_plan", &run_branch).is_ok());
}

#[test]
fn missing_required_fields_point_at_the_missing_property() {
    let c = contracts();
    assert_issue_at(
        &c,
        "ticket_plan",
        &without(valid("ticket_plan"), "", "summary"),
        "/summary",
    );
    assert_issue_at(
        &c,
        "work_plan",
        &without(valid("work_plan"), "/tasks/1", "files"),
        "/tasks/1/files",
    );
    assert_issue_at(
        &c,
        "persona_review",
        &without(valid("persona_review"), "/findings/0", "severity"),
        "/findings/0/severity",
    );
    assert_issue_at(
        &c,
        "judge_verdict",
        &without(valid("judge_verdict"), "/scores", "tests"),
        "/scores/tests",
    );
    assert_issue_at(
        &c,
        "implementation_report",
        &without(valid("implementation_report"), "", "files_changed"),
        "/files_changed",
    );
    assert_issue_at(
        &c,
        "escalation",
        &without(valid("escalation"), "/options/1", "consequence"),
        "/options/1/consequence",
    );
    assert_issue_at(
        &c,
        "architecture_notes",
        &without(valid("architecture_notes"), "", "test_strategy"),
        "/test_strategy",
    );
    assert_issue_at(
        &c,
        "test_report",
        &without(valid("test_report"), "/commands/0", "exit_code"),
        "/commands/0/exit_code",
    );
}

#[test]
fn wrong_enums_fail_at_the_field() {
    let c = contracts();
    assert_issue_at(
        &c,
        "persona_review",
        &with(valid("persona_review"), "/persona", json!("legal")),
        "/persona",
    );
    assert_issue_at(
        &c,
        "persona_review",
        &with(valid("persona_review"), "/verdict", json!("lgtm")),
        "/verdict",
    );
    assert_issue_at(
        &c,
        "persona_review",
        &with(
            valid("persona_review"),
            "/findings/0/severity",
            json!("blocker"),
        ),
        "/findings/0/severity",
    );
    assert_issue_at(
        &c,
        "judge_verdict",
        &with(
            valid("judge_verdict"),
            "/decision",
            json!("conditional_pass"),
        ),
        "/decision",
    );
    assert_issue_at(
        &c,
        "docs_update",
        &with(valid("docs_update"), "/changelog/0/category", json!("misc")),
        "/changelog/0/category",
    );
}

#[test]
fn too_few_items_and_out_of_range_numbers_fail() {
    let c = contracts();
    let two = with(
        valid("ticket_plan"),
        "/acceptance_criteria",
        json!(["a", "b"]),
    );
    assert_issue_at(&c, "ticket_plan", &two, "/acceptance_criteria");
    let two_tasks = {
        let mut v = valid("work_plan");
        v["tasks"].as_array_mut().unwrap().pop();
        v
    };
    assert_issue_at(&c, "work_plan", &two_tasks, "/tasks");
    let one_option = {
        let mut v = valid("escalation");
        v["options"].as_array_mut().unwrap().pop();
        v
    };
    assert_issue_at(&c, "escalation", &one_option, "/options");
    assert_issue_at(
        &c,
        "judge_verdict",
        &with(valid("judge_verdict"), "/scores/security", json!(1.2)),
        "/scores/security",
    );
    assert_issue_at(
        &c,
        "persona_review",
        &with(valid("persona_review"), "/findings/0/line", json!(0)),
        "/findings/0/line",
    );
    assert_issue_at(
        &c,
        "work_plan",
        &with(valid("work_plan"), "/verify_commands/1", json!(7)),
        "/verify_commands/1",
    );
    // A conditional vote without conditions (if/then in the schema).
    let bare_conditional = with(valid("judge_verdict"), "/decision", json!("conditional"));
    assert!(!issues(&c, "judge_verdict", &bare_conditional).is_empty());
}

#[test]
fn extra_properties_are_refused_at_every_level() {
    let c = contracts();
    let mut top = valid("ticket_plan");
    top["priority"] = json!("P1");
    assert_issue_at(&c, "ticket_plan", &top, "/priority");
    let mut nested = valid("work_plan");
    nested["tasks"][2]["owner"] = json!("bob");
    assert_issue_at(&c, "work_plan", &nested, "/tasks/2/owner");
    let mut scores = valid("judge_verdict");
    scores["scores"]["style"] = json!(0.5);
    assert_issue_at(&c, "judge_verdict", &scores, "/scores/style");
    let mut option = valid("escalation");
    option["options"][0]["risk"] = json!("low");
    assert_issue_at(&c, "escalation", &option, "/options/0/risk");
}

#[test]
fn bad_branch_names_fail_at_branch() {
    let c = contracts();
    for bad in [
        "main",
        "ai/issue-",
        "ai/issue-12-fix-it",
        "ai/goal-0a1b2c3d",
        "ai/run-0A1B2C3D",
        "ai/run-0a1b2c3",
        "feature/ai/issue-1",
    ] {
        assert_issue_at(
            &c,
            "work_plan",
            &with(valid("work_plan"), "/branch", json!(bad)),
            "/branch",
        );
    }
}

#[test]
fn all_schema_errors_are_collected_not_just_the_first() {
    let c = contracts();
    let mut v = without(valid("ticket_plan"), "", "summary");
    v["acceptance_criteria"] = json!(["only one"]);
    v["extra"] = json!(true);
    let found = issues(&c, "ticket_plan", &v);
    let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
    for p in ["/summary", "/acceptance_criteria", "/extra"] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
}

#[test]
fn unknown_kind_is_an_issue() {
    let found = issues(&contracts(), "horoscope", &json!({}));
    assert!(found[0].message.contains("horoscope"));
}

#[test]
fn escalation_recommendation_must_be_an_option_id() {
    let c = contracts();
    assert_issue_at(
        &c,
        "escalation",
        &with(valid("escalation"), "/recommendation", json!("retry")),
        "/recommendation",
    );
    let duplicate = with(valid("escalation"), "/options/1/id", json!("manual_fix"));
    assert_issue_at(&c, "escalation", &duplicate, "/options/1/id");
}

#[test]
fn judge_weighted_score_must_match_the_rubric_within_0_01() {
    let c = contracts();
    assert!(
        c.validate(
            "judge_verdict",
            &with(valid("judge_verdict"), "/weighted_score", json!(0.799))
        )
        .is_ok()
    );
    assert!(
        c.validate(
            "judge_verdict",
            &with(valid("judge_verdict"), "/weighted_score", json!(0.781))
        )
        .is_ok()
    );
    let off = with(valid("judge_verdict"), "/weighted_score", json!(0.75));
    let found = issues(&c, "judge_verdict", &off);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path, "/weighted_score");
    assert!(found[0].message.contains("0.79"), "{}", found[0].message);
}

#[test]
fn persona_verdict_must_follow_from_the_findings() {
    let c = contracts();
    for (severity, implied) in [
        ("critical", "rejected"),
        ("high", "changes_required"),
        ("medium", "approved_with_minor_issues"),
        ("low", "approved_with_minor_issues"),
    ] {
        let v = with(
            valid("persona_review"),
            "/findings/0/severity",
            json!(severity),
        );
        let right = with(v.clone(), "/verdict", json!(implied));
        assert!(c.validate("persona_review", &right).is_ok(), "{severity}");
        let wrong = with(v, "/verdict", json!("approved"));
        assert_issue_at(&c, "persona_review", &wrong, "/verdict");
    }
    let clean = with(valid("persona_review"), "/findings", json!([]));
    assert_issue_at(&c, "persona_review", &clean, "/verdict");
    assert!(
        c.validate(
            "persona_review",
            &with(clean, "/verdict", json!("approved"))
        )
        .is_ok()
    );
}

#[test]
fn test_report_passed_must_match_the_exit_codes() {
    let c = contracts();
    assert_issue_at(
        &c,
        "test_report",
        &with(valid("test_report"), "/passed", json!(true)),
        "/passed",
    );
    let all_ok = with(
        valid("test_report"),
        "/commands",
        json!([{"command": "cargo test", "exit_code": 0, "duration_ms": 1, "output_tail": "ok"}]),
    );
    assert_issue_at(&c, "test_report", &all_ok, "/passed");
    assert!(
        c.validate("test_report", &with(all_ok, "/passed", json!(true)))
            .is_ok()
    );
    // Nothing run is not a pass.
    let none = with(valid("test_report"), "/commands", json!([]));
    assert_issue_at(
        &c,
        "test_report",
        &with(none, "/passed", json!(true)),
        "/passed",
    );
}

#[test]
fn reask_message_lists_every_issue_with_its_path() {
    let c = contracts();
    let mut v = without(valid("work_plan"), "", "definition_of_done");
    v["branch"] = json!("feature/x");
    v["tasks"][0]["owner"] = json!("me");
    let found = issues(&c, "work_plan", &v);
    assert!(found.len() >= 3, "{found:?}");
    let message = reask_message(&found);
    for issue in &found {
        assert!(
            message.contains(&issue.path),
            "{} missing from {message}",
            issue.path
        );
        assert!(message.contains(&issue.message), "{message}");
    }
    assert!(message.contains(&format!("{} problems", found.len())));
    assert!(message.contains("JSON object only"));
}

/// Copies the real `ai/` folder into a temporary directory for breaking.
fn scratch_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["agents", "schemas"] {
        std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        for entry in std::fs::read_dir(ai_dir().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, tmp.path().join(dir).join(path.file_name().unwrap())).unwrap();
        }
    }
    tmp
}

fn load_error(dir: &Path) -> String {
    match Contracts::load(dir) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_field_in_an_agent_is_refused_naming_the_file() {
    let tmp = scratch_copy();
    let path = tmp.path().join("agents/pm.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("temperature: 0.2\n{text}")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("ai/agents/pm.yaml"), "{error}");
    assert!(error.contains("temperature"), "{error}");
}

#[test]
fn missing_schema_file_is_refused_naming_the_agent_file() {
    let tmp = scratch_copy();
    // docs_update is the writer's output and no agent's input, so only writer.yaml is affected.
    std::fs::remove_file(tmp.path().join("schemas/docs_update.json")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("ai/agents/writer.yaml"), "{error}");
    assert!(error.contains("docs_update.json does not exist"), "{error}");
}

#[test]
fn other_broken_agents_are_refused_naming_the_file() {
    let cases: &[(&str, &str, &str)] = &[
        ("name: pm\n", "name: project-manager\n", "name"),
        ("step: PM\n", "step: PLANNING\n", "PLANNING"),
        ("output: ticket_plan\n", "output: work_plan\n", "output"),
        (
            "inputs: [issue]\n",
            "inputs: [issue, horoscope]\n",
            "horoscope",
        ),
        ("max_turns: 3\n", "max_turns: 0\n", "max_turns"),
    ];
    for (from, to, mention) in cases {
        let tmp = scratch_copy();
        let path = tmp.path().join("agents/pm.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let error = load_error(tmp.path());
        assert!(error.contains("ai/agents/pm.yaml"), "{error}");
        assert!(error.contains(mention), "{mention}: {error}");
    }
}

#[test]
fn broken_schemas_are_refused_naming_the_file() {
    let tmp = scratch_copy();
    let path = tmp.path().join("schemas/escalation.json");
    std::fs::write(&path, r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://atlasia.dev/schemas/escalation.json", "type": 12}"#).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("ai/schemas/escalation.json"), "{error}");

    std::fs::write(&path, "{ not json").unwrap();
    assert!(load_error(tmp.path()).contains("ai/schemas/escalation.json"));

    std::fs::write(
        &path,
        r#"{"$id": "https://atlasia.dev/schemas/escalation.json"}"#,
    )
    .unwrap();
    assert!(load_error(tmp.path()).contains("$schema"));
}

#[test]
fn a_missing_folder_is_an_io_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    match Contracts::load(tmp.path()) {
        Err(ContractError::Io { path, .. }) => assert!(path.ends_with("schemas")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}
