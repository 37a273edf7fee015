//! Agent contracts (`ai/agents/*.yaml`) and artifact schemas (`ai/schemas/*.json`): loading and
//! cross-checking them, validating an agent's output against its schema plus the semantic rules a
//! schema cannot express, and the re-ask message that tells a model how to fix its output.
//!
//! The files in `ai/` are the only source of truth: [`Contracts::load`] reads them at run time
//! (for operators who edit prompts) and [`Contracts::embedded`] compiles the same files into the
//! binary, so `atlasia run` works from any directory.

use crate::judge::JudgeVote;
use crate::review::{self, PersonaReview};
pub use atlasia_core::Step;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Which model tier an agent runs on; the gateway maps the class to concrete models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelClass {
    /// The strongest configured model (developer, architect).
    Primary,
    /// A cheaper model, enough for reading and judging (reviewers, judge, planners, writer).
    Cheap,
}

/// A tool an agent may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    /// List a directory.
    List,
    /// Read a file.
    Read,
    /// Search file contents.
    Search,
    /// Create or overwrite a file (path policy applies).
    Write,
    /// Replace text in a file (path policy applies).
    Edit,
    /// Run an allowed command in the sandbox.
    Run,
    /// End the loop, handing over the output artifact.
    Finish,
}

/// One agent's contract: what it reads, what it must produce, and its system prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentContract {
    /// Unique name; equal to the file stem.
    pub name: String,
    /// The step it runs in.
    pub step: Step,
    /// One line saying what it is for.
    pub role: String,
    /// Model tier.
    pub model_class: ModelClass,
    /// Artifact kinds (or engine-supplied context, see [`CONTEXT_INPUTS`]) put in its prompt.
    pub inputs: Vec<String>,
    /// The artifact kind it produces; `None` for a step that only acts through tools.
    pub output: Option<String>,
    /// The schema file its output is validated against; present exactly when `output` is.
    pub schema: Option<String>,
    /// Tools it may call; empty for a single structured answer.
    pub tools: Vec<Tool>,
    /// Bound on model turns: tool calls for a tool loop, answer + re-asks otherwise.
    pub max_turns: u32,
    /// Output bound of one answer (`max_tokens`); `[agents.<name>] max_tokens` overrides it.
    /// A structured answer cut there is asked again with twice the bound.
    pub max_tokens: u32,
    /// The system prompt.
    pub prompt: String,
}

/// Inputs the engine supplies that are not schema-validated artifacts.
pub const CONTEXT_INPUTS: &[&str] = &[
    "issue",     // title, body, labels, recent comments (or the goal text)
    "repo_tree", // the repository's file list, bucketed
    "repo_docs", // excerpts of README/AGENTS.md/build manifests
    "diff",      // the bolt branch's diff against the base
    "test_log",  // verify command results, for the tester
    "guidance",  // a human's PROCEED guidance after an escalation
];

/// A contract or schema file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A folder or file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A file was read but is wrong.
    #[error("{file}: {problem}")]
    Invalid {
        /// The file, as `ai/agents/x.yaml` or `ai/schemas/x.json`.
        file: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ContractError {
    fn invalid(file: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_owned(),
            problem: problem.into(),
        }
    }
}

/// One problem with an artifact: where (a JSON pointer, `""` for the whole document) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationIssue {
    /// JSON pointer to the offending value (for a missing property: where it should be).
    pub path: String,
    /// What is wrong, in words a model can act on.
    pub message: String,
}

impl ValidationIssue {
    /// An issue at JSON pointer `path` (empty for the whole value).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// A compiled schema and its source (the source is what the gateway sends as the response format).
struct Schema {
    source: Value,
    validator: jsonschema::Validator,
}

/// All agent contracts and compiled schemas.
pub struct Contracts {
    agents: BTreeMap<String, AgentContract>,
    schemas: BTreeMap<String, Schema>,
}

impl fmt::Debug for Contracts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contracts")
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .field("schemas", &self.schemas.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The files of `ai/`, compiled in. Adding a file to `ai/` means adding it here;
/// `tests/contracts.rs` fails until both lists match the folders.
macro_rules! embed {
    ($dir:literal, [$($file:literal),* $(,)?]) => {
        &[$(($file, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ai/", $dir, "/", $file)))),*]
    };
}

/// Schema files compiled into the binary: (file name, contents).
pub const EMBEDDED_SCHEMAS: &[(&str, &str)] = embed!(
    "schemas",
    [
        "architecture_notes.json",
        "docs_update.json",
        "escalation.json",
        "implementation_report.json",
        "judge_verdict.json",
        "persona_review.json",
        "test_report.json",
        "ticket_plan.json",
        "work_plan.json",
    ]
);

/// Agent files compiled into the binary: (file name, contents).
pub const EMBEDDED_AGENTS: &[(&str, &str)] = embed!(
    "agents",
    [
        "architect.yaml",
        "developer.yaml",
        "judge.yaml",
        "pm.yaml",
        "qualifier.yaml",
        "reviewer-code-quality.yaml",
        "reviewer-frontend-ux.yaml",
        "reviewer-security.yaml",
        "reviewer-sre.yaml",
        "tester.yaml",
        "writer.yaml",
    ]
);

impl Contracts {
    /// Loads `<dir>/schemas/*.json` and `<dir>/agents/*.yaml` (`dir` is the `ai/` folder).
    pub fn load(dir: &Path) -> Result<Self, ContractError> {
        let schemas = read_folder(&dir.join("schemas"), "json")?;
        let agents = read_folder(&dir.join("agents"), "yaml")?;
        Self::from_sources(&schemas, &agents)
    }

    /// The contracts compiled into the binary from the repository's `ai/` folder.
    pub fn embedded() -> Result<Self, ContractError> {
        let own = |files: &[(&str, &str)]| -> Vec<(String, String)> {
            files
                .iter()
                .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
                .collect()
        };
        Self::from_sources(&own(EMBEDDED_SCHEMAS), &own(EMBEDDED_AGENTS))
    }

    /// Builds from (file name, contents) pairs; shared by [`Self::load`] and [`Self::embedded`].
    pub fn from_sources(
        schemas: &[(String, String)],
        agents: &[(String, String)],
    ) -> Result<Self, ContractError> {
        let mut compiled = BTreeMap::new();
        for (file, text) in schemas {
            let label = format!("ai/schemas/{file}");
            let kind = stem(file, ".json")
                .ok_or_else(|| ContractError::invalid(&label, "not a .json file"))?;
            compiled.insert(kind.to_owned(), compile_schema(&label, kind, text)?);
        }

        let mut contracts = BTreeMap::new();
        for (file, text) in agents {
            let label = format!("ai/agents/{file}");
            let name = stem(file, ".yaml")
                .ok_or_else(|| ContractError::invalid(&label, "not a .yaml file"))?;
            let agent: AgentContract = yaml_serde::from_str(text)
                .map_err(|e| ContractError::invalid(&label, e.to_string()))?;
            check_agent(&label, name, &agent, &compiled)?;
            contracts.insert(agent.name.clone(), agent);
        }

        Ok(Self {
            agents: contracts,
            schemas: compiled,
        })
    }

    /// The contract named `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentContract> {
        self.agents.get(name)
    }

    /// Every agent of `step`, by name (REVIEW has four, the others one).
    pub fn agents_for(&self, step: Step) -> Vec<&AgentContract> {
        self.agents.values().filter(|a| a.step == step).collect()
    }

    /// All contracts, by name.
    pub fn agents(&self) -> impl Iterator<Item = &AgentContract> {
        self.agents.values()
    }

    /// The artifact kinds that have a schema.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    /// The JSON schema of `kind`, as sent to a model for structured output.
    pub fn schema(&self, kind: &str) -> Option<&Value> {
        self.schemas.get(kind).map(|s| &s.source)
    }

    /// Validates an artifact of `kind`: every schema violation, then — only when the shape is
    /// right, since they read typed fields — the semantic checks.
    pub fn validate(&self, kind: &str, value: &Value) -> Result<(), Vec<ValidationIssue>> {
        let Some(schema) = self.schemas.get(kind) else {
            return Err(vec![ValidationIssue::new(
                "",
                format!("unknown artifact kind `{kind}`"),
            )]);
        };
        let mut issues: Vec<ValidationIssue> = Vec::new();
        for error in schema.validator.iter_errors(value) {
            issues.extend(schema_issues(&error));
        }
        if issues.is_empty() {
            issues = semantic_issues(kind, value);
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}

/// The message sent back to a model whose output failed validation: every issue with its path,
/// and what to send instead.
pub fn reask_message(issues: &[ValidationIssue]) -> String {
    let mut message = format!(
        "Your previous answer does not satisfy the required JSON schema ({} problem{}):\n",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        message.push_str("- ");
        message.push_str(&issue.to_string());
        message.push('\n');
    }
    message.push_str(
        "Paths are JSON pointers into your answer ((root) is the whole object). Reply with the \
         complete corrected JSON object only — no prose, no Markdown fences — keeping every part \
         that was already correct.",
    );
    message
}

fn stem<'a>(file: &'a str, ext: &str) -> Option<&'a str> {
    file.strip_suffix(ext).filter(|s| !s.is_empty())
}

/// Reads every `*.<ext>` file of `dir`, sorted by name so errors are deterministic.
fn read_folder(dir: &Path, ext: &str) -> Result<Vec<(String, String)>, ContractError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContractError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        files.push((name.to_owned(), text));
    }
    files.sort();
    Ok(files)
}

/// Parses and compiles one schema, insisting on draft 2020-12 and an `$id` naming its kind.
fn compile_schema(label: &str, kind: &str, text: &str) -> Result<Schema, ContractError> {
    let source: Value = serde_json::from_str(text)
        .map_err(|e| ContractError::invalid(label, format!("not JSON: {e}")))?;
    let draft = source.get("$schema").and_then(Value::as_str);
    if draft != Some("https://json-schema.org/draft/2020-12/schema") {
        return Err(ContractError::invalid(
            label,
            "`$schema` must be https://json-schema.org/draft/2020-12/schema",
        ));
    }
    let id = source
        .get("$id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !id.ends_with(&format!("/{kind}.json")) {
        return Err(ContractError::invalid(
            label,
            format!("`$id` must end with /{kind}.json"),
        ));
    }
    let validator = jsonschema::draft202012::options()
        .build(&source)
        .map_err(|e| ContractError::invalid(label, format!("schema does not compile: {e}")))?;
    Ok(Schema { source, validator })
}

/// The cross-file checks: name = file stem, schema present and matching the output kind, inputs
/// known, a tool loop only with tools.
fn check_agent(
    label: &str,
    stem: &str,
    agent: &AgentContract,
    schemas: &BTreeMap<String, Schema>,
) -> Result<(), ContractError> {
    let fail = |problem: String| Err(ContractError::invalid(label, problem));
    if agent.name != stem {
        return fail(format!(
            "`name` is `{}` but the file is {stem}.yaml",
            agent.name
        ));
    }
    if agent.role.trim().is_empty() || agent.role.contains('\n') {
        return fail("`role` must be one non-empty line".to_owned());
    }
    if agent.prompt.trim().is_empty() {
        return fail("`prompt` is empty".to_owned());
    }
    if agent.max_turns == 0 {
        return fail("`max_turns` must be at least 1".to_owned());
    }
    if agent.max_tokens < 64 {
        return fail("`max_tokens` must be at least 64".to_owned());
    }
    match (&agent.output, &agent.schema) {
        (None, None) => {
            if agent.tools.is_empty() {
                return fail("an agent with no `output` must have `tools`".to_owned());
            }
        }
        (Some(output), Some(schema)) => {
            if !schemas.contains_key(stem_of_schema(schema)) || !schema.ends_with(".json") {
                return fail(format!(
                    "`schema` file {schema} does not exist in ai/schemas"
                ));
            }
            if stem_of_schema(schema) != output {
                return fail(format!("`output` is `{output}` but `schema` is {schema}"));
            }
        }
        (Some(_), None) => return fail("`output` is set but `schema` is null".to_owned()),
        (None, Some(_)) => return fail("`schema` is set but `output` is null".to_owned()),
    }
    let mut seen = HashSet::new();
    for input in &agent.inputs {
        if !seen.insert(input) {
            return fail(format!("input `{input}` is listed twice"));
        }
        if !schemas.contains_key(input) && !CONTEXT_INPUTS.contains(&input.as_str()) {
            return fail(format!(
                "unknown input `{input}` (neither a schema in ai/schemas nor one of {CONTEXT_INPUTS:?})"
            ));
        }
    }
    Ok(())
}

fn stem_of_schema(file: &str) -> &str {
    file.strip_suffix(".json").unwrap_or(file)
}

/// Escapes one JSON pointer segment (RFC 6901).
fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Turns one schema error into issues. A missing or unexpected property points at the property
/// itself rather than its parent, so the model sees exactly which key to add or drop.
fn schema_issues(error: &jsonschema::ValidationError<'_>) -> Vec<ValidationIssue> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let at = error.instance_path().as_str();
    match error.kind() {
        Kind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            vec![ValidationIssue::new(
                format!("{at}/{}", pointer_segment(&name)),
                "required property is missing",
            )]
        }
        Kind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| {
                ValidationIssue::new(
                    format!("{at}/{}", pointer_segment(name)),
                    "property is not allowed by the schema; remove it",
                )
            })
            .collect(),
        _ => vec![ValidationIssue::new(at, truncate(&error.to_string(), 300))],
    }
}

/// Keeps messages short: an error quoting a huge instance would drown the other issues.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// The rules a schema cannot express, for artifacts that already match their schema.
fn semantic_issues(kind: &str, value: &Value) -> Vec<ValidationIssue> {
    let parsed = |what: &str, e: serde_json::Error| {
        vec![ValidationIssue::new(
            "",
            format!("does not parse as a {what}: {e}"),
        )]
    };
    match kind {
        "persona_review" => match serde_json::from_value::<PersonaReview>(value.clone()) {
            Ok(review) => persona_review_issues(&review),
            Err(e) => parsed(kind, e),
        },
        "judge_verdict" => match serde_json::from_value::<JudgeVote>(value.clone()) {
            Ok(vote) => judge_verdict_issues(&vote),
            Err(e) => parsed(kind, e),
        },
        "escalation" => escalation_issues(value),
        "test_report" => test_report_issues(value),
        _ => Vec::new(),
    }
}

/// The verdict must be the one the findings imply, so that the merge and the persona agree.
fn persona_review_issues(review: &PersonaReview) -> Vec<ValidationIssue> {
    let implied = review::verdict(&review.findings);
    if review.verdict == implied {
        return Vec::new();
    }
    vec![ValidationIssue::new(
        "/verdict",
        format!(
            "is `{}` but the findings imply `{}` (any critical → rejected; any high → \
             changes_required; any medium or low → approved_with_minor_issues; none → approved)",
            review.verdict.as_str(),
            implied.as_str()
        ),
    )]
}

/// `weighted_score` must be the rubric applied to `scores` (within 0.01).
fn judge_verdict_issues(vote: &JudgeVote) -> Vec<ValidationIssue> {
    let expected = vote.scores.weighted();
    if (vote.weighted_score - expected).abs() <= 0.01 {
        return Vec::new();
    }
    vec![ValidationIssue::new(
        "/weighted_score",
        format!(
            "is {:.4} but 0.30×correctness + 0.25×security + 0.20×maintainability + \
             0.15×performance + 0.10×tests = {expected:.4}",
            vote.weighted_score
        ),
    )]
}

/// Option ids unique, and the recommendation one of them.
fn escalation_issues(value: &Value) -> Vec<ValidationIssue> {
    let mut issues = Vec::new();
    let ids: Vec<&str> = value
        .get("options")
        .and_then(Value::as_array)
        .map(|options| {
            options
                .iter()
                .map(|o| o.get("id").and_then(Value::as_str).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            issues.push(ValidationIssue::new(
                format!("/options/{i}/id"),
                format!("`{id}` is already used by an earlier option; ids must be unique"),
            ));
        }
    }
    let recommendation = value
        .get("recommendation")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !ids.contains(&recommendation) {
        issues.push(ValidationIssue::new(
            "/recommendation",
            format!("`{recommendation}` is not the id of an option (one of {ids:?})"),
        ));
    }
    issues
}

/// `passed` must say whether commands ran and every one exited 0 (nothing run is no pass); a
/// `not_run` report never passed.
fn test_report_issues(value: &Value) -> Vec<ValidationIssue> {
    let passed = value
        .get("passed")
        .and_then(Value::as_bool)
        .unwrap_or_default();
    if value.get("status").and_then(Value::as_str) == Some("not_run") {
        return if passed {
            vec![ValidationIssue::new(
                "/passed",
                "is true but status is not_run: nothing that ran found a test",
            )]
        } else {
            Vec::new()
        };
    }
    let all_zero = value
        .get("commands")
        .and_then(Value::as_array)
        .is_some_and(|cmds| {
            !cmds.is_empty()
                && cmds
                    .iter()
                    .all(|c| c.get("exit_code").and_then(Value::as_i64) == Some(0))
        });
    if passed == all_zero {
        return Vec::new();
    }
    vec![ValidationIssue::new(
        "/passed",
        format!(
            "is {passed} but {}",
            if all_zero {
                "every command exited 0"
            } else {
                "no command ran or a command did not exit 0"
            }
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contracts_can_be_shared_across_workers() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Contracts>();
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(pointer_segment("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn truncate_keeps_short_messages() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }

    #[test]
    fn issue_display_names_the_root() {
        assert_eq!(ValidationIssue::new("", "x").to_string(), "(root): x");
        assert_eq!(ValidationIssue::new("/a/0", "y").to_string(), "/a/0: y");
    }
}
