//! The developer's tools, as function-calling definitions and their execution against the bolt's
//! worktree. This module holds what every tool shares — the definitions the model sees, the
//! dispatch of a call to its tool, the argument types, and the result types; the tools themselves
//! live in `files` (list, read and search, containment-checked), `edit` (write and edit, every
//! write through the [`PathPolicy`]) and `command` (an allow-listed command in the [`sandbox`],
//! the allow-list itself beside the path policy in [`crate::policy::commands`]). `finish` is
//! handled by the loop in [`crate::developer`].
//!
//! [`execute`] never panics on model input: malformed arguments, odd paths and refused writes all
//! become a [`ToolResult::Refused`] text the model can act on, and every result is bounded so a
//! huge file or log cannot blow the conversation's context.
//!
//! [`sandbox`]: crate::sandbox

mod command;
mod edit;
mod files;

pub use command::{DEFAULT_RUN_OUTPUT, RunLimits};
pub use files::{
    MAX_LIST_ENTRIES, MAX_READ_BYTES, MAX_SEARCH_FILE_BYTES, MAX_SEARCH_MATCHES, SKIPPED_DIRS,
};

use crate::contracts;
use crate::policy::{PathPolicy, PolicyError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// List a directory tree.
pub const LIST: &str = "list_files";
/// Read a file (optionally a line range).
pub const READ: &str = "read_file";
/// Search for a literal substring.
pub const SEARCH: &str = "search";
/// Create or overwrite a file.
pub const WRITE: &str = "write_file";
/// Replace exactly one occurrence of a text in a file.
pub const EDIT: &str = "edit_file";
/// Run an allowed command in the sandbox.
pub const RUN: &str = "run_command";
/// End the loop; the arguments are the `implementation_report`.
pub const FINISH: &str = "finish";

/// Where and under which rules the tools act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workdir {
    /// The bolt's worktree (the repository root every path is relative to).
    pub root: PathBuf,
    /// The write/read path policy.
    pub policy: PathPolicy,
    /// Command bounds.
    pub run: RunLimits,
}

impl Workdir {
    /// A worktree with the default policy and command limits.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            policy: PathPolicy::default(),
            run: RunLimits::default(),
        }
    }
}

/// What a tool call produced, for the model (or for the loop, on escalation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolResult {
    /// The tool ran; its (bounded) output.
    Ok(String),
    /// The call was refused (policy, bad arguments, missing file…); told to the model.
    Refused(String),
    /// The call needs a human decision (a write under `WORKFLOW_PROTECT`); the loop stops.
    Escalate(String),
}

impl ToolResult {
    /// The text the model sees as the tool's answer.
    pub fn text(&self) -> String {
        match self {
            Self::Ok(t) => t.clone(),
            Self::Refused(t) => format!("refused: {t}"),
            Self::Escalate(t) => format!("escalated to a human: {t}"),
        }
    }
}

/// A tool call's outcome plus what the run's event log says about it.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The result.
    pub result: ToolResult,
    /// The path or command acted on (never file contents).
    pub target: String,
    /// True when the tool did what was asked (a command: exited 0).
    pub ok: bool,
    /// One short line for the event log.
    pub detail: String,
}

/// The function definitions of `allowed`, in that order. `finish` takes the
/// `implementation_report` schema itself as its parameters.
pub fn definitions(allowed: &[contracts::Tool], report_schema: &Value) -> Vec<atlasia_llm::Tool> {
    allowed
        .iter()
        .map(|t| definition(*t, report_schema))
        .collect()
}

/// The function name of a contract tool.
pub fn name_of(tool: contracts::Tool) -> &'static str {
    match tool {
        contracts::Tool::List => LIST,
        contracts::Tool::Read => READ,
        contracts::Tool::Search => SEARCH,
        contracts::Tool::Write => WRITE,
        contracts::Tool::Edit => EDIT,
        contracts::Tool::Run => RUN,
        contracts::Tool::Finish => FINISH,
    }
}

fn definition(tool: contracts::Tool, report_schema: &Value) -> atlasia_llm::Tool {
    let (description, parameters) = match tool {
        contracts::Tool::List => (
            "List files and directories under a repository-relative directory (directories end \
             with `/`). .git, target, node_modules and __pycache__ are skipped.",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "Directory relative to the repository root; \"\" or \".\" for the root."},
                "depth": {"type": "integer", "minimum": 1, "maximum": 3, "description": "How many levels to descend (default 1)."}
            }, "required": ["path"]}),
        ),
        contracts::Tool::Read => (
            "Read a text file, optionally a 1-based inclusive line range. Output over 64 KiB is \
             cut and marked [truncated].",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "File relative to the repository root."},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "minimum": 1}
            }, "required": ["path"]}),
        ),
        contracts::Tool::Search => (
            "Search file contents for a literal substring (case-sensitive). Returns \
             `path:line: text` lines, at most 200.",
            json!({"type": "object", "properties": {
                "pattern": {"type": "string", "minLength": 1, "description": "Literal text to find (not a regex)."},
                "path": {"type": "string", "description": "Directory or file to search in; default the whole repository."}
            }, "required": ["pattern"]}),
        ),
        contracts::Tool::Write => (
            "Create or overwrite a file with the given content (parent directories are created). \
             The path policy applies: some paths are refused or need a human decision.",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "File relative to the repository root."},
                "content": {"type": "string", "description": "The complete new content."}
            }, "required": ["path", "content"]}),
        ),
        contracts::Tool::Edit => (
            "Replace old_text with new_text in a file. old_text must occur exactly once; include \
             enough surrounding lines to make it unique. The path policy applies.",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "File relative to the repository root."},
                "old_text": {"type": "string", "minLength": 1, "description": "Exact text to replace, including whitespace."},
                "new_text": {"type": "string", "description": "Replacement text."}
            }, "required": ["path", "old_text", "new_text"]}),
        ),
        contracts::Tool::Run => (
            "Run one command in the repository root in a sandbox (no shell chaining, pipes or \
             redirections). Allowed programs: cargo, python3, python, pytest, npm, node, go, make, \
             git (status/diff/log only), ls, cat, grep. Returns the exit code and the output tail.",
            json!({"type": "object", "properties": {
                "command": {"type": "string", "description": "e.g. `cargo test` or `python3 -m unittest`"}
            }, "required": ["command"]}),
        ),
        contracts::Tool::Finish => (
            "Finish the work: the arguments are the implementation_report (summary, files_changed, \
             commands_run, notes). Call it once, when the change is complete and verified.",
            report_schema.clone(),
        ),
    };
    atlasia_llm::Tool {
        name: name_of(tool).to_owned(),
        description: Some(description.to_owned()),
        parameters,
    }
}

/// Executes one tool call. `finish` is not executed here (the loop validates it); calling it
/// through this function is refused.
pub async fn execute(
    wd: &Workdir,
    call: &atlasia_llm::ToolCall,
    cancel: &CancellationToken,
) -> ToolResult {
    execute_detailed(wd, call, cancel).await.result
}

/// [`execute`], plus the target/ok/detail the event log records.
pub async fn execute_detailed(
    wd: &Workdir,
    call: &atlasia_llm::ToolCall,
    cancel: &CancellationToken,
) -> Executed {
    let mut executed = dispatch(wd, call, cancel).await;
    if executed.target.is_empty() {
        // Arguments that did not fit the tool still usually name what was meant.
        if let Ok(v) = parse_object(&call.arguments) {
            let named = ["path", "command"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str));
            executed.target = truncate_chars(named.unwrap_or_default(), 200);
        }
    }
    executed
}

async fn dispatch(
    wd: &Workdir,
    call: &atlasia_llm::ToolCall,
    cancel: &CancellationToken,
) -> Executed {
    let args = match parse_object(&call.arguments) {
        Ok(v) => v,
        Err(e) => {
            return refused(
                String::new(),
                format!(
                    "the arguments of {} are not a JSON object ({e}); send them as JSON matching \
                     the tool's parameters",
                    call.name
                ),
            );
        }
    };
    match call.name.as_str() {
        LIST => match typed::<ListArgs>(LIST, args) {
            Ok(a) => files::list(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        READ => match typed::<ReadArgs>(READ, args) {
            Ok(a) => files::read(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        SEARCH => match typed::<SearchArgs>(SEARCH, args) {
            Ok(a) => files::search(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        WRITE => match typed::<WriteArgs>(WRITE, args) {
            Ok(a) => edit::write(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        EDIT => match typed::<EditArgs>(EDIT, args) {
            Ok(a) => edit::edit(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        RUN => match typed::<RunArgs>(RUN, args) {
            Ok(a) => command::run_command(wd, a, cancel).await,
            Err(e) => refused(String::new(), e),
        },
        FINISH => refused(
            "implementation_report".to_owned(),
            "finish is handled by the developer loop".to_owned(),
        ),
        other => refused(
            String::new(),
            format!(
                "unknown tool `{}`; the tools are {LIST}, {READ}, {SEARCH}, {WRITE}, {EDIT}, \
                 {RUN} and {FINISH}",
                truncate_chars(other, 80)
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments.

#[derive(Deserialize)]
struct ListArgs {
    #[serde(default)]
    path: String,
    #[serde(default)]
    depth: Option<i64>,
}

#[derive(Deserialize)]
struct ReadArgs {
    path: String,
    #[serde(default)]
    start_line: Option<i64>,
    #[serde(default)]
    end_line: Option<i64>,
}

#[derive(Deserialize)]
struct SearchArgs {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize)]
struct EditArgs {
    path: String,
    old_text: String,
    new_text: String,
}

#[derive(Deserialize)]
struct RunArgs {
    command: String,
}

/// The arguments as a JSON object; an empty string counts as `{}`.
pub fn parse_object(arguments: &str) -> Result<Value, String> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("expected a JSON object".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn typed<T: for<'de> Deserialize<'de>>(tool: &str, args: Value) -> Result<T, String> {
    serde_json::from_value(args).map_err(|e| format!("invalid arguments for {tool}: {e}"))
}

fn refused(target: String, reason: String) -> Executed {
    Executed {
        detail: truncate_chars(&reason, 200),
        result: ToolResult::Refused(reason),
        target,
        ok: false,
    }
}

fn done(target: String, text: String, detail: String) -> Executed {
    Executed {
        result: ToolResult::Ok(text),
        target,
        ok: true,
        detail,
    }
}

fn policy_refusal(target: String, e: &PolicyError) -> Executed {
    if e.is_escalation() {
        let reason = e.to_string();
        return Executed {
            detail: truncate_chars(&reason, 200),
            result: ToolResult::Escalate(reason),
            target,
            ok: false,
        };
    }
    refused(target, format!("path policy: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Helpers the tools (and the command allow-list) share.

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

pub(crate) fn is_root(path: &str) -> bool {
    let t = path.trim();
    t.is_empty() || t == "." || t == "./"
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;
    use atlasia_llm::ToolCall;

    pub(super) fn call(name: &str, args: Value) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments: args.to_string(),
        }
    }

    pub(super) async fn exec(wd: &Workdir, name: &str, args: Value) -> ToolResult {
        execute(wd, &call(name, args), &CancellationToken::new()).await
    }

    pub(super) fn ok_text(r: ToolResult) -> String {
        match r {
            ToolResult::Ok(t) => t,
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    pub(super) fn refused_text(r: ToolResult) -> String {
        match r {
            ToolResult::Refused(t) => t,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    pub(super) fn repo() -> (tempfile::TempDir, Workdir) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/nested")).unwrap();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join("node_modules/x")).unwrap();
        std::fs::write(root.join("README.md"), "# demo\nhello world\n").unwrap();
        std::fs::write(
            root.join("src/lib.py"),
            "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n",
        )
        .unwrap();
        std::fs::write(root.join("src/nested/deep.txt"), "needle here\n").unwrap();
        std::fs::write(root.join("target/debug/junk"), "needle in target\n").unwrap();
        std::fs::write(root.join("node_modules/x/i.js"), "needle\n").unwrap();
        std::fs::write(root.join(".git/config"), "needle\n").unwrap();
        let wd = Workdir::new(root);
        (dir, wd)
    }

    #[test]
    fn definitions_follow_the_contract() {
        let c = crate::contracts::Contracts::embedded().unwrap();
        let dev = c.agent("developer").unwrap();
        let schema = c.schema("implementation_report").unwrap();
        let defs = definitions(&dev.tools, schema);
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, [LIST, READ, SEARCH, WRITE, EDIT, RUN, FINISH]);
        let finish = defs.iter().find(|d| d.name == FINISH).unwrap();
        assert_eq!(&finish.parameters, schema);
        for d in &defs {
            assert_eq!(d.parameters["type"], "object", "{}", d.name);
        }
        let only = definitions(&[contracts::Tool::Read], schema);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].name, READ);
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_not_panics() {
        let (_d, wd) = repo();
        let cancel = CancellationToken::new();
        for (name, args) in [
            (READ, "{not json"),
            (READ, "[1,2]"),
            (READ, "\"path\""),
            (READ, "{}"),
            (READ, r#"{"path": 7}"#),
            (READ, r#"{"path": "README.md", "start_line": "one"}"#),
            (WRITE, r#"{"path": "a.txt"}"#),
            (
                EDIT,
                r#"{"path": "a.txt", "old_text": null, "new_text": "x"}"#,
            ),
            (RUN, r#"{"cmd": "ls"}"#),
            (SEARCH, r#"{"pattern": ["x"]}"#),
            (LIST, r#"{"path": "", "depth": "deep"}"#),
            ("rm_rf", "{}"),
            (FINISH, "{}"),
            (WRITE, "{\"path\": \"nul\u{0000}.txt\", \"content\": \"x\"}"),
            (
                READ,
                r#"{"path": "README.md", "start_line": -5, "end_line": 99999999999}"#,
            ),
        ] {
            let c = ToolCall {
                id: "x".into(),
                name: name.into(),
                arguments: args.into(),
            };
            let r = execute(&wd, &c, &cancel).await;
            match (name, args) {
                (READ, a) if a.contains("start_line\": -5") => {
                    ok_text(r);
                }
                _ => {
                    let why = refused_text(r);
                    assert!(!why.is_empty(), "{name} {args}");
                }
            }
        }
        // Missing depth and an out-of-range one are clamped, not refused.
        ok_text(exec(&wd, LIST, json!({"path": "", "depth": 99})).await);
        ok_text(exec(&wd, LIST, json!({})).await);
    }
}
