//! Agent-aware, scripted answers: what makes a whole bolt run offline and deterministically.
//!
//! The engine sends every agent a user message that is a JSON document with the issue
//! (`{"issue": {"repo", "number", "title", "body"}, "iteration": n, …}`, plus `"persona"` for a
//! reviewer and `"voter"` for a judge voter). When the first user message parses as such a JSON
//! object, the simulator recognises the agent — by the structured-output name (OpenAI
//! `response_format.json_schema.name`, or the forced tool of Anthropic's structured output), or,
//! for the developer, by a tool named `finish` among the tools — and answers as that agent would.
//!
//! The issue body may carry a script in an HTML comment, at any position:
//!
//! ```text
//! <!-- atlasia-sim
//! {"verify": ["python3 -m unittest -q"],
//!  "developer": [[{"tool": "edit_file", "args": {"path": "a.py", "old_text": "x", "new_text": "y"}}],
//!                [{"tool": "write_file", "args": {"path": "b.py", "content": "…"}}]],
//!  "review": ["changes_required", {"security": "rejected"}, "approved"],
//!  "judge": [0.9]}
//! -->
//! ```
//!
//! Every field is optional. Per-iteration lists are indexed by the document's `iteration`
//! (1-based); past their end the last entry repeats. A script that does not parse is ignored
//! (with a warning in the log), so the agents fall back to their defaults.

use crate::schema_gen;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The marker that opens a script comment in an issue body.
const OPEN: &str = "<!-- atlasia-sim";
/// The end of the comment.
const CLOSE: &str = "-->";
/// The judges' score when the script gives none.
pub const DEFAULT_SCORE: f64 = 0.9;
/// Rubric weights, in the order correctness, security, maintainability, performance, tests
/// (the same numbers as the engine's `judge` module).
const WEIGHTS: [f64; 5] = [0.30, 0.25, 0.20, 0.15, 0.10];
/// Scores strictly below this are a veto.
const VETO_BELOW: f64 = 0.40;
/// Scores from this up are a pass; between the two, conditional.
const PASS_FROM: f64 = 0.65;
/// The longest pull request title the `docs_update` schema allows.
const MAX_PR_TITLE: usize = 72;
/// The persona personas default to when the document names none.
const DEFAULT_PERSONA: &str = "security";

/// A script read from an issue body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The QUALIFIER's `work_plan.verify_commands`.
    #[serde(default)]
    pub verify: Option<Vec<String>>,
    /// The developer's tool calls, one list per developer iteration.
    #[serde(default)]
    pub developer: Vec<Vec<ToolStep>>,
    /// The reviewers' verdicts, one round per developer iteration.
    #[serde(default)]
    pub review: Vec<ReviewRound>,
    /// The score every judge voter gives every criterion, one per developer iteration.
    #[serde(default)]
    pub judge: Vec<f64>,
}

/// One scripted developer tool call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolStep {
    /// The tool's name (`write_file`, `edit_file`, `run_command`, …).
    pub tool: String,
    /// Its arguments, passed through as they are.
    #[serde(default = "empty_object")]
    pub args: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// One review round: the same verdict for every persona, or a verdict per persona (personas not
/// named approve).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ReviewRound {
    /// Every persona gives this verdict.
    All(Verdict),
    /// Per persona (`security`, `code_quality`, `sre`, `frontend_ux`).
    PerPersona(std::collections::BTreeMap<String, Verdict>),
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No findings.
    Approved,
    /// One low finding.
    ApprovedWithMinorIssues,
    /// One high finding.
    ChangesRequired,
    /// One critical finding.
    Rejected,
}

impl Verdict {
    /// The artifact's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::ApprovedWithMinorIssues => "approved_with_minor_issues",
            Self::ChangesRequired => "changes_required",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a script could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the atlasia-sim script in the issue body is not valid: {0}")]
pub struct ScriptError(String);

/// The script in an issue body: `Ok(None)` when there is none.
pub fn from_issue_body(body: &str) -> Result<Option<Script>, ScriptError> {
    let Some(start) = body.find(OPEN) else {
        return Ok(None);
    };
    let rest = &body[start + OPEN.len()..];
    let Some(end) = rest.find(CLOSE) else {
        return Err(ScriptError("the comment is not closed with -->".into()));
    };
    let text = rest[..end].trim();
    if text.is_empty() {
        return Ok(Some(Script::default()));
    }
    let script: Script =
        serde_json::from_str(text).map_err(|e| ScriptError(format!("{e} in {text:.80}")))?;
    if let Some(bad) = script.judge.iter().find(|s| !(0.0..=1.0).contains(*s)) {
        return Err(ScriptError(format!("judge score {bad} is not in 0..=1")));
    }
    Ok(Some(script))
}

/// The entry of a per-iteration list for 1-based `iteration` (the last one past the end).
fn pick<T>(list: &[T], iteration: u64) -> Option<&T> {
    let i = usize::try_from(iteration.max(1) - 1).unwrap_or(usize::MAX);
    list.get(i).or_else(|| list.last())
}

impl Script {
    /// The developer's tool calls for `iteration` (empty when the script has none).
    pub fn developer_steps(&self, iteration: u64) -> &[ToolStep] {
        pick(&self.developer, iteration).map_or(&[], Vec::as_slice)
    }

    /// The verdict `persona` gives on `iteration`.
    pub fn verdict(&self, iteration: u64, persona: &str) -> Verdict {
        match pick(&self.review, iteration) {
            None => Verdict::Approved,
            Some(ReviewRound::All(v)) => *v,
            Some(ReviewRound::PerPersona(map)) => {
                map.get(persona).copied().unwrap_or(Verdict::Approved)
            }
        }
    }

    /// The judges' score on `iteration`.
    pub fn score(&self, iteration: u64) -> f64 {
        pick(&self.judge, iteration)
            .copied()
            .unwrap_or(DEFAULT_SCORE)
    }
}

/// The files a list of tool calls writes or edits, in first-touched order.
pub fn touched_files(steps: &[ToolStep]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for step in steps {
        if !matches!(step.tool.as_str(), "write_file" | "edit_file") {
            continue;
        }
        if let Some(path) = step.args.get("path").and_then(Value::as_str)
            && !out.iter().any(|p| p == path)
        {
            out.push(path.to_owned());
        }
    }
    out
}

/// The rubric's weighted score of five equal scores, rounded to 6 decimals exactly as the engine
/// computes it.
pub fn weighted(score: f64) -> f64 {
    let raw = WEIGHTS[0] * score
        + WEIGHTS[1] * score
        + WEIGHTS[2] * score
        + WEIGHTS[3] * score
        + WEIGHTS[4] * score;
    (raw * 1e6).round() / 1e6
}

/// The band of a weighted score: veto < 0.40 ≤ conditional < 0.65 ≤ pass.
pub fn band(weighted: f64) -> &'static str {
    if weighted < VETO_BELOW {
        "veto"
    } else if weighted < PASS_FROM {
        "conditional"
    } else {
        "pass"
    }
}

/// What the engine's document says about the run, read from the first user message.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Context {
    /// The whole document.
    pub doc: Map<String, Value>,
    /// 1-based developer iteration.
    pub iteration: u64,
    pub title: String,
    pub number: Option<u64>,
    pub persona: Option<String>,
    pub voter: Option<u64>,
    /// The issue's script; `None` without one (or when it does not parse).
    pub script: Option<Script>,
}

impl Context {
    /// The context of a conversation whose first user message is the engine's JSON document;
    /// `None` for any other conversation.
    pub(crate) fn parse(first_user: &str) -> Option<Self> {
        let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(first_user.trim()) else {
            return None;
        };
        let issue = doc.get("issue");
        let text = |k: &str| {
            issue
                .and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let body = text("body");
        let script = match from_issue_body(&body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("sim-llm: {e}; answering without a script");
                None
            }
        };
        Some(Self {
            iteration: doc
                .get("iteration")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1),
            title: text("title"),
            number: issue.and_then(|i| i.get("number")).and_then(Value::as_u64),
            persona: doc
                .get("persona")
                .and_then(Value::as_str)
                .map(str::to_owned),
            voter: doc.get("voter").and_then(Value::as_u64),
            script,
            doc,
        })
    }

    fn script(&self) -> Script {
        self.script.clone().unwrap_or_default()
    }

    /// The files this iteration's developer script touches.
    fn touched(&self) -> Vec<String> {
        self.script
            .as_ref()
            .map(|s| touched_files(s.developer_steps(self.iteration)))
            .unwrap_or_default()
    }
}

/// The next developer move: the script's next tool call, or `finish` with the report.
/// `tool_turns` is how many assistant turns with tool calls the conversation already has.
pub(crate) fn developer(ctx: &Context, tool_turns: usize) -> (String, Value) {
    let script = ctx.script();
    let steps = script.developer_steps(ctx.iteration);
    if let Some(step) = steps.get(tool_turns) {
        return (step.tool.clone(), step.args.clone());
    }
    ("finish".to_owned(), implementation_report(ctx, steps))
}

/// The developer's report on the script's steps.
fn implementation_report(ctx: &Context, steps: &[ToolStep]) -> Value {
    let files: Vec<Value> = touched_files(steps)
        .into_iter()
        .map(|path| {
            let how = if steps
                .iter()
                .any(|s| s.tool == "write_file" && s.args.get("path") == Some(&json!(path)))
            {
                "Written"
            } else {
                "Edited"
            };
            json!({"path": path, "change": format!("{how} by the scripted developer (iteration {}).", ctx.iteration)})
        })
        .collect();
    let commands: Vec<Value> = steps
        .iter()
        .filter(|s| s.tool == "run_command")
        .filter_map(|s| s.args.get("command").and_then(Value::as_str))
        .map(|c| json!(c))
        .collect();
    let summary = if files.is_empty() && ctx.doc.contains_key("no_change") {
        format!(
            "[sim-llm] Asked again, but the simulator has no scripted change for \"{}\" \
             (iteration {}); still nothing was modified.",
            subject(ctx),
            ctx.iteration
        )
    } else if files.is_empty() {
        format!(
            "[sim-llm] No scripted change for \"{}\" (iteration {}); nothing was modified.",
            subject(ctx),
            ctx.iteration
        )
    } else {
        format!(
            "[sim-llm] Scripted change for \"{}\" (iteration {}): {} file(s) changed.",
            subject(ctx),
            ctx.iteration,
            files.len()
        )
    };
    json!({
        "summary": summary,
        "files_changed": files,
        "commands_run": commands,
        "notes": "Produced by the sim-llm simulator from the issue's atlasia-sim script.",
    })
}

fn subject(ctx: &Context) -> String {
    if ctx.title.trim().is_empty() {
        "the issue".to_owned()
    } else {
        ctx.title.trim().to_owned()
    }
}

/// The structured answer of the agent producing `kind`, or `None` for kinds answered as usual.
pub(crate) fn structured(ctx: &Context, kind: &str, schema: &Value) -> Option<Value> {
    match kind {
        "work_plan" => Some(work_plan(ctx, schema)),
        "persona_review" => Some(persona_review(ctx)),
        "judge_verdict" => Some(judge_verdict(ctx)),
        "docs_update" => Some(docs_update(ctx)),
        "test_report" => test_report(ctx),
        _ => None,
    }
}

/// A schema-valid plan on the issue's branch, with the script's verify commands. Without a
/// script the list is empty: the simulator cannot know the repository, so it leaves the
/// repository's own configured verify commands (`.atlasia.toml`) to apply.
fn work_plan(ctx: &Context, schema: &Value) -> Value {
    let mut plan = schema_gen::instance(schema);
    if let Some(o) = plan.as_object_mut() {
        let verify = ctx
            .script
            .as_ref()
            .and_then(|s| s.verify.clone())
            .unwrap_or_default();
        o.insert("verify_commands".into(), json!(verify));
        if let Some(n) = ctx.number {
            o.insert("branch".into(), json!(format!("ai/issue-{n}")));
        }
    }
    plan
}

/// A review whose findings imply the scripted verdict.
fn persona_review(ctx: &Context) -> Value {
    let persona = ctx.persona.as_deref().unwrap_or(DEFAULT_PERSONA);
    let verdict = ctx.script().verdict(ctx.iteration, persona);
    let file = ctx
        .touched()
        .into_iter()
        .next()
        .unwrap_or_else(|| "README.md".to_owned());
    let finding = |severity: &str, title: &str, detail: &str, suggestion: &str| {
        json!({
            "severity": severity,
            "file": file,
            "title": title,
            "detail": format!("[sim-llm] {persona} review of iteration {}: {detail}", ctx.iteration),
            "suggestion": suggestion,
        })
    };
    let findings = match verdict {
        Verdict::Approved => vec![],
        Verdict::ApprovedWithMinorIssues => vec![finding(
            "low",
            "Minor polish suggested",
            "a small readability improvement is possible; it does not block the change.",
            "Consider a clearer name or a short comment where the change is least obvious.",
        )],
        Verdict::ChangesRequired => vec![finding(
            "high",
            "Change must be revised before merging",
            "the script asked this reviewer to require changes, so the bolt loops back to the developer.",
            "Address this finding in the next developer iteration and keep the tests passing.",
        )],
        Verdict::Rejected => vec![finding(
            "critical",
            "Change must not merge as it is",
            "the script asked this reviewer to reject the change, so the bolt loops back to the developer.",
            "Rework the change so this blocker is gone, then ask for another review.",
        )],
    };
    json!({"persona": persona, "verdict": verdict.as_str(), "findings": findings})
}

/// A vote giving every criterion the scripted score.
fn judge_verdict(ctx: &Context) -> Value {
    let score = ctx.script().score(ctx.iteration);
    let weighted = weighted(score);
    let decision = band(weighted);
    let conditions: Vec<String> = if decision == "conditional" {
        vec![format!(
            "Raise every rubric criterion above the pass threshold {PASS_FROM:.2} (now {score})."
        )]
    } else {
        Vec::new()
    };
    let voter = ctx
        .voter
        .map_or_else(String::new, |v| format!(" (voter {v})"));
    json!({
        "scores": {
            "correctness": score,
            "security": score,
            "maintainability": score,
            "performance": score,
            "tests": score,
        },
        "weighted_score": weighted,
        "decision": decision,
        "rationale": format!(
            "[sim-llm] Scripted score {score} on every criterion for iteration {}{voter}; \
             weighted {weighted} → {decision}.",
            ctx.iteration
        ),
        "conditions": conditions,
    })
}

/// The writer's changelog entry and pull request text.
fn docs_update(ctx: &Context) -> Value {
    let title = subject(ctx);
    let pr_title = if title.chars().count() <= MAX_PR_TITLE {
        title.clone()
    } else {
        let mut t: String = title.chars().take(MAX_PR_TITLE - 1).collect();
        t = t.trim_end().to_owned();
        t.push('…');
        t
    };
    let lower = title.to_lowercase();
    let category = if ["fix", "bug", "crash", "error", "wrong"]
        .iter()
        .any(|w| lower.contains(w))
    {
        "fixed"
    } else {
        "added"
    };
    let files = ctx.touched();
    let mut body = format!(
        "## What\n\n{title}\n\n## How it was tested\n\nSee the test evidence the engine adds \
         below (each command, its result and duration).\n\n_Written by the sim-llm simulator \
         (iteration {})._",
        ctx.iteration
    );
    if !files.is_empty() {
        body.push_str("\n\n## Files\n\n");
        for f in &files {
            body.push_str(&format!("- `{f}`\n"));
        }
    }
    if let Some(n) = ctx.number {
        body.push_str(&format!("\n\nCloses #{n}"));
    }
    json!({
        "changelog": [{"category": category, "text": format!("{}.", title.trim_end_matches('.'))}],
        "pr_title": pr_title,
        "pr_body": body,
    })
}

/// An honest test report: the `test_log` the engine sent, copied, with `passed` computed from
/// the exit codes. `None` when the document has no readable log (answered as usual then).
fn test_report(ctx: &Context) -> Option<Value> {
    let log = ctx.doc.get("test_log")?;
    let list = match log {
        Value::Array(a) => a,
        Value::Object(o) => o.get("commands").and_then(Value::as_array)?,
        _ => return None,
    };
    let mut commands = Vec::new();
    for c in list {
        let command = c.get("command").and_then(Value::as_str)?;
        let exit_code = c.get("exit_code").and_then(Value::as_i64);
        commands.push(json!({
            "command": if command.is_empty() { "?" } else { command },
            "exit_code": exit_code,
            "duration_ms": c.get("duration_ms").and_then(Value::as_u64).unwrap_or(0),
            "output_tail": c.get("output_tail").and_then(Value::as_str).unwrap_or_default(),
        }));
    }
    let failed = commands
        .iter()
        .find(|c| c.get("exit_code").and_then(Value::as_i64) != Some(0));
    let summary = match failed {
        None => "[sim-llm] Every verify command exited 0.".to_owned(),
        Some(c) => format!(
            "[sim-llm] `{}` failed with exit code {}; see its output tail.",
            c["command"].as_str().unwrap_or_default(),
            c["exit_code"]
        ),
    };
    Some(json!({"passed": failed.is_none(), "commands": commands, "summary": summary}))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"Fix it please.

<!-- atlasia-sim
{"verify": ["python3 -m unittest -q"],
 "developer": [[{"tool": "edit_file", "args": {"path": "a.py", "old_text": "x", "new_text": "y"}},
                {"tool": "run_command", "args": {"command": "python3 -m unittest -q"}}],
               [{"tool": "write_file", "args": {"path": "b.py", "content": "z"}}]],
 "review": ["changes_required", {"security": "rejected", "sre": "approved_with_minor_issues"}, "approved"],
 "judge": [0.5, 0.3]}
-->
"#;

    fn doc(iteration: u64, extra: Value) -> String {
        let mut d = json!({
            "iteration": iteration,
            "issue": {"repo": "acme/app", "number": 7, "title": "Fix the total", "body": SCRIPT},
        });
        if let (Some(o), Value::Object(e)) = (d.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::to_string_pretty(&d).unwrap()
    }

    fn ctx(iteration: u64, extra: Value) -> Context {
        Context::parse(&doc(iteration, extra)).unwrap()
    }

    #[test]
    fn scripts_are_found_anywhere_and_bad_ones_are_errors() {
        let s = from_issue_body(SCRIPT).unwrap().unwrap();
        assert_eq!(
            s.verify.as_deref(),
            Some(&["python3 -m unittest -q".to_owned()][..])
        );
        assert_eq!(s.developer.len(), 2);
        assert_eq!(from_issue_body("no script here").unwrap(), None);
        assert_eq!(
            from_issue_body("<!-- atlasia-sim\n-->").unwrap(),
            Some(Script::default())
        );
        assert!(from_issue_body("<!-- atlasia-sim {\"verify\": [] ").is_err());
        assert!(from_issue_body("<!-- atlasia-sim {\"nope\": 1} -->").is_err());
        assert!(from_issue_body("<!-- atlasia-sim {\"review\": [\"maybe\"]} -->").is_err());
        assert!(from_issue_body("<!-- atlasia-sim {\"judge\": [1.5]} -->").is_err());
    }

    #[test]
    fn per_iteration_lists_repeat_their_last_entry() {
        let s = from_issue_body(SCRIPT).unwrap().unwrap();
        assert_eq!(s.developer_steps(1).len(), 2);
        assert_eq!(s.developer_steps(2)[0].tool, "write_file");
        assert_eq!(s.developer_steps(9)[0].tool, "write_file");
        assert_eq!(s.verdict(1, "frontend_ux"), Verdict::ChangesRequired);
        assert_eq!(s.verdict(2, "security"), Verdict::Rejected);
        assert_eq!(s.verdict(2, "sre"), Verdict::ApprovedWithMinorIssues);
        assert_eq!(s.verdict(2, "code_quality"), Verdict::Approved);
        assert_eq!(s.verdict(5, "security"), Verdict::Approved);
        assert_eq!((s.score(1), s.score(2), s.score(3)), (0.5, 0.3, 0.3));
        let none = Script::default();
        assert!(none.developer_steps(1).is_empty());
        assert_eq!(none.verdict(1, "security"), Verdict::Approved);
        assert_eq!(none.score(1), DEFAULT_SCORE);
        assert_eq!(touched_files(s.developer_steps(1)), vec!["a.py"]);
    }

    #[test]
    fn only_json_documents_are_engine_conversations() {
        assert!(Context::parse("please call read_file").is_none());
        assert!(Context::parse("[1, 2]").is_none());
        let c = ctx(2, json!({"persona": "sre", "voter": 3}));
        assert_eq!(c.iteration, 2);
        assert_eq!(c.number, Some(7));
        assert_eq!(c.persona.as_deref(), Some("sre"));
        assert_eq!(c.voter, Some(3));
        assert!(c.script.is_some());
        let broken = json!({"issue": {"title": "t", "body": "<!-- atlasia-sim {oops} -->"}});
        let c = Context::parse(&broken.to_string()).unwrap();
        assert_eq!((c.iteration, c.script), (1, None));
    }

    #[test]
    fn the_developer_plays_its_script_then_finishes() {
        let c = ctx(1, json!({}));
        assert_eq!(developer(&c, 0).0, "edit_file");
        assert_eq!(developer(&c, 0).1["old_text"], "x");
        assert_eq!(developer(&c, 1).0, "run_command");
        let (name, report) = developer(&c, 2);
        assert_eq!(name, "finish");
        assert_eq!(report["files_changed"][0]["path"], "a.py");
        assert_eq!(report["commands_run"], json!(["python3 -m unittest -q"]));
        let (name, report) = developer(&ctx(3, json!({})), 1);
        assert_eq!(name, "finish");
        assert_eq!(report["files_changed"][0]["path"], "b.py");
        let bare = Context::parse(r#"{"issue": {"title": "t", "body": ""}}"#).unwrap();
        let (name, report) = developer(&bare, 0);
        assert_eq!(name, "finish");
        assert_eq!(report["files_changed"], json!([]));
        assert!(
            report["summary"]
                .as_str()
                .unwrap()
                .contains("nothing was modified"),
            "{report}"
        );
        // Told that nothing changed, an unscripted developer says so again.
        let again =
            Context::parse(r#"{"issue": {"title": "t", "body": ""}, "no_change": "…"}"#).unwrap();
        let (_, report) = developer(&again, 0);
        assert!(
            report["summary"]
                .as_str()
                .unwrap()
                .contains("still nothing was modified"),
            "{report}"
        );
    }

    #[test]
    fn reviews_follow_the_verdict_rule() {
        let r = |it, persona: &str| {
            structured(
                &ctx(it, json!({"persona": persona})),
                "persona_review",
                &json!({}),
            )
            .unwrap()
        };
        let v = r(1, "code_quality");
        assert_eq!(
            (v["persona"].as_str(), v["verdict"].as_str()),
            (Some("code_quality"), Some("changes_required"))
        );
        assert_eq!(v["findings"][0]["severity"], "high");
        assert_eq!(v["findings"][0]["file"], "a.py");
        let v = r(2, "security");
        assert_eq!(v["verdict"], "rejected");
        assert_eq!(v["findings"][0]["severity"], "critical");
        assert_eq!(v["findings"][0]["file"], "b.py");
        assert_eq!(r(2, "sre")["findings"][0]["severity"], "low");
        assert_eq!(r(3, "security")["findings"], json!([]));
        let bare = Context::parse(r#"{"issue": {"title": "t", "body": ""}}"#).unwrap();
        let v = structured(&bare, "persona_review", &json!({})).unwrap();
        assert_eq!(
            (v["persona"].as_str(), v["verdict"].as_str()),
            (Some("security"), Some("approved"))
        );
    }

    #[test]
    fn judge_votes_follow_the_rubric_and_bands() {
        assert_eq!(weighted(0.65), 0.65);
        assert_eq!(weighted(0.4), 0.4);
        assert_eq!(
            (band(0.399_999), band(0.40), band(0.649_999), band(0.65)),
            ("veto", "conditional", "conditional", "pass")
        );
        let v = structured(&ctx(1, json!({"voter": 2})), "judge_verdict", &json!({})).unwrap();
        assert_eq!(
            (v["weighted_score"].as_f64(), v["decision"].as_str()),
            (Some(0.5), Some("conditional"))
        );
        assert_eq!(v["conditions"].as_array().unwrap().len(), 1);
        let v = structured(&ctx(2, json!({})), "judge_verdict", &json!({})).unwrap();
        assert_eq!(v["decision"], "veto");
        assert_eq!(v["conditions"], json!([]));
        let bare = Context::parse(r#"{"issue": {"body": ""}}"#).unwrap();
        let v = structured(&bare, "judge_verdict", &json!({})).unwrap();
        assert_eq!(
            (v["scores"]["tests"].as_f64(), v["decision"].as_str()),
            (Some(0.9), Some("pass"))
        );
    }

    #[test]
    fn the_writer_titles_the_pr_and_closes_the_issue() {
        let v = structured(&ctx(1, json!({})), "docs_update", &json!({})).unwrap();
        assert_eq!(v["pr_title"], "Fix the total");
        assert!(v["pr_body"].as_str().unwrap().contains("Closes #7"));
        assert_eq!(
            v["changelog"],
            json!([{"category": "fixed", "text": "Fix the total."}])
        );
        let long = json!({"issue": {"title": "a ".repeat(60), "body": ""}});
        let v = structured(
            &Context::parse(&long.to_string()).unwrap(),
            "docs_update",
            &json!({}),
        )
        .unwrap();
        let title = v["pr_title"].as_str().unwrap();
        assert!(title.chars().count() <= MAX_PR_TITLE, "{title}");
        assert!(!v["pr_body"].as_str().unwrap().contains("Closes"));
    }

    #[test]
    fn the_tester_copies_the_log_honestly() {
        let c = ctx(
            1,
            json!({"test_log": [
                {"command": "make test", "exit_code": 0, "duration_ms": 5, "output_tail": "ok"},
                {"command": "make lint", "exit_code": null, "duration_ms": 9, "output_tail": "killed"}
            ]}),
        );
        let v = structured(&c, "test_report", &json!({})).unwrap();
        assert_eq!(v["passed"], false);
        assert_eq!(v["commands"][1]["exit_code"], Value::Null);
        assert!(v["summary"].as_str().unwrap().contains("make lint"));
        assert!(structured(&ctx(1, json!({})), "test_report", &json!({})).is_none());
        assert!(structured(&ctx(1, json!({})), "ticket_plan", &json!({})).is_none());
    }
}
