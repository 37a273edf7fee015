//! The developer's tools, as function-calling definitions and their execution against the bolt's
//! worktree: list, read and search files (containment-checked reads), write and edit files (every
//! write through the [`PathPolicy`]), run an allow-listed command in the [`sandbox`], and
//! `finish` (handled by the loop in [`crate::developer`]).
//!
//! [`execute`] never panics on model input: malformed arguments, odd paths and refused writes all
//! become a [`ToolResult::Refused`] text the model can act on, and every result is bounded so a
//! huge file or log cannot blow the conversation's context.

use crate::contracts;
use crate::policy::{PathPolicy, PolicyError};
use crate::sandbox::{self, CommandSpec, Sandbox, SandboxError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
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

/// Largest text a `read_file` returns.
pub const MAX_READ_BYTES: usize = 64 * 1024;
/// Most matches a `search` returns.
pub const MAX_SEARCH_MATCHES: usize = 200;
/// Most entries a `list_files` returns.
pub const MAX_LIST_ENTRIES: usize = 1000;
/// Files larger than this are skipped by `search`.
pub const MAX_SEARCH_FILE_BYTES: u64 = 1024 * 1024;
/// Longest line shown by `search`.
const MAX_MATCH_LINE: usize = 240;
/// Directories `list_files` and `search` never descend into.
pub const SKIPPED_DIRS: &[&str] = &[".git", "target", "node_modules", "__pycache__"];

/// Programs `run_command` may start by default (the first word of the command line).
pub const DEFAULT_ALLOWED_PROGRAMS: &[&str] = &[
    "cargo", "python3", "python", "pytest", "npm", "node", "go", "make", "git", "ls", "cat", "grep",
];
/// The only `git` subcommands allowed (read-only).
pub const GIT_SUBCOMMANDS: &[&str] = &["status", "diff", "log"];
/// Default output tail of a command shown to the model.
pub const DEFAULT_RUN_OUTPUT: usize = 16 * 1024;

/// Bounds of `run_command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// Programs allowed as the first word of a command line.
    pub allowed: Vec<String>,
    /// Wall-clock limit per command; the process group is killed past it.
    pub timeout: Duration,
    /// Bytes of output (the tail) returned to the model.
    pub max_output: usize,
    /// Variables set for every command (e.g. a shared `CARGO_TARGET_DIR`); secrets are filtered.
    pub env_set: Vec<(String, String)>,
    /// Where commands run.
    pub sandbox: Sandbox,
    /// Directories commands may write besides the worktree (the shared build cache).
    pub writable: Vec<PathBuf>,
    /// The repository's network opt-in.
    pub network: bool,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            allowed: DEFAULT_ALLOWED_PROGRAMS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            timeout: sandbox::DEFAULT_TIMEOUT,
            max_output: DEFAULT_RUN_OUTPUT,
            env_set: Vec::new(),
            sandbox: Sandbox::default(),
            writable: Vec::new(),
            network: false,
        }
    }
}

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
            Ok(a) => list(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        READ => match typed::<ReadArgs>(READ, args) {
            Ok(a) => read(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        SEARCH => match typed::<SearchArgs>(SEARCH, args) {
            Ok(a) => search(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        WRITE => match typed::<WriteArgs>(WRITE, args) {
            Ok(a) => write(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        EDIT => match typed::<EditArgs>(EDIT, args) {
            Ok(a) => edit(wd, a).await,
            Err(e) => refused(String::new(), e),
        },
        RUN => match typed::<RunArgs>(RUN, args) {
            Ok(a) => run_command(wd, a, cancel).await,
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
// Bounded text helpers.

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn is_root(path: &str) -> bool {
    let t = path.trim();
    t.is_empty() || t == "." || t == "./"
}

/// Resolves a path to read (a file or a directory; the root for `""`/`"."`).
fn resolve_read(wd: &Workdir, path: &str) -> Result<PathBuf, PolicyError> {
    if is_root(path) {
        return wd
            .root
            .canonicalize()
            .map_err(|e| PolicyError::InvalidPath {
                path: path.to_owned(),
                reason: format!("repository root: {e}"),
            });
    }
    wd.policy.check_read(&wd.root, path)
}

/// `abs` relative to the canonical root, `/`-separated.
fn relative(root: &Path, abs: &Path) -> String {
    abs.strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| abs.to_string_lossy().into_owned())
}

// ---------------------------------------------------------------------------------------------
// list_files.

async fn list(wd: &Workdir, a: ListArgs) -> Executed {
    let target = if is_root(&a.path) {
        ".".to_owned()
    } else {
        a.path.clone()
    };
    let depth = a.depth.unwrap_or(1).clamp(1, 3);
    let dir = match resolve_read(wd, &a.path) {
        Ok(d) => d,
        Err(e) => return refused(target, format!("path policy: {e}")),
    };
    if !dir.is_dir() {
        return refused(
            target,
            format!("{} is not a directory (use {READ} for files)", a.path),
        );
    }
    let root = wd.root.canonicalize().unwrap_or_else(|_| wd.root.clone());
    let walked = tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        let mut truncated = false;
        list_walk(&root, &dir, depth, &mut entries, &mut truncated);
        (entries, truncated)
    })
    .await;
    let Ok((entries, truncated)) = walked else {
        return refused(target, "listing failed".to_owned());
    };
    let n = entries.len();
    let mut text = entries.join("\n");
    if n == 0 {
        text = "(empty directory)".to_owned();
    }
    if truncated {
        let _ = write!(
            text,
            "\n[truncated: more than {MAX_LIST_ENTRIES} entries; list a subdirectory]"
        );
    }
    done(target, text, format!("{n} entries"))
}

fn list_walk(root: &Path, dir: &Path, depth: i64, out: &mut Vec<String>, truncated: &mut bool) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<_> = read.flatten().collect();
    children.sort_by_key(std::fs::DirEntry::file_name);
    for child in children {
        if out.len() >= MAX_LIST_ENTRIES {
            *truncated = true;
            return;
        }
        let name = child.file_name().to_string_lossy().into_owned();
        let path = child.path();
        let Ok(ft) = child.file_type() else { continue };
        let rel = relative(root, &path);
        if ft.is_dir() {
            if SKIPPED_DIRS.contains(&name.as_str()) {
                continue;
            }
            out.push(format!("{rel}/"));
            if depth > 1 {
                list_walk(root, &path, depth - 1, out, truncated);
            }
        } else if ft.is_symlink() {
            // Symlinks are shown but never followed while walking.
            out.push(format!("{rel}@"));
        } else {
            out.push(rel);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// read_file.

async fn read(wd: &Workdir, a: ReadArgs) -> Executed {
    let target = a.path.clone();
    let path = match resolve_read(wd, &a.path) {
        Ok(p) => p,
        Err(e) => return refused(target, format!("path policy: {e}")),
    };
    if path.is_dir() {
        return refused(target, format!("{} is a directory (use {LIST})", a.path));
    }
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refused(target, format!("{} does not exist", a.path));
        }
        Err(e) => return refused(target, format!("cannot read {}: {e}", a.path)),
    };
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return refused(
            target,
            format!(
                "{} is a binary file ({} bytes); not shown",
                a.path,
                bytes.len()
            ),
        );
    }
    let text = String::from_utf8_lossy(&bytes);
    let total = text.lines().count();
    let ranged = a.start_line.is_some() || a.end_line.is_some();
    let start = usize::try_from(a.start_line.unwrap_or(1).max(1)).unwrap_or(1);
    let end = a
        .end_line
        .map_or(total, |e| usize::try_from(e.max(0)).unwrap_or(total))
        .min(total);
    if ranged && (start > end || start > total.max(1)) {
        return refused(
            target,
            format!(
                "line range {start}-{end} is empty; {} has {total} lines",
                a.path
            ),
        );
    }
    let body: String = if ranged {
        let mut s = text
            .lines()
            .skip(start - 1)
            .take(end + 1 - start)
            .collect::<Vec<_>>()
            .join("\n");
        s.push('\n');
        s
    } else {
        text.into_owned()
    };
    let mut out = if ranged {
        format!("[{} lines {start}-{end} of {total}]\n", a.path)
    } else {
        String::new()
    };
    let shown = prefix_bytes(&body, MAX_READ_BYTES);
    out.push_str(shown);
    let cut = shown.len() < body.len();
    if cut {
        let shown_lines = shown.lines().count();
        let _ = write!(
            out,
            "\n[truncated: showing {} of {} bytes; read further with start_line={}]",
            shown.len(),
            body.len(),
            start + shown_lines.saturating_sub(1)
        );
    }
    let detail = if ranged {
        format!(
            "lines {start}-{end} of {total}{}",
            if cut { ", truncated" } else { "" }
        )
    } else {
        format!("{total} lines{}", if cut { ", truncated" } else { "" })
    };
    done(target, out, detail)
}

// ---------------------------------------------------------------------------------------------
// search.

async fn search(wd: &Workdir, a: SearchArgs) -> Executed {
    let scope = a.path.clone().unwrap_or_default();
    let target = if is_root(&scope) {
        ".".to_owned()
    } else {
        scope.clone()
    };
    if a.pattern.is_empty() {
        return refused(target, "pattern is empty".to_owned());
    }
    if a.pattern.contains('\n') {
        return refused(target, "pattern must be a single line".to_owned());
    }
    let start = match resolve_read(wd, &scope) {
        Ok(p) => p,
        Err(e) => return refused(target, format!("path policy: {e}")),
    };
    if !start.exists() {
        return refused(target, format!("{scope} does not exist"));
    }
    let root = wd.root.canonicalize().unwrap_or_else(|_| wd.root.clone());
    let pattern = a.pattern.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut hits = Vec::new();
        let mut more = false;
        search_walk(&root, &start, &pattern, &mut hits, &mut more);
        (hits, more)
    })
    .await;
    let Ok((hits, more)) = found else {
        return refused(target, "search failed".to_owned());
    };
    let n = hits.len();
    let mut text = if hits.is_empty() {
        format!("no matches for {:?}", a.pattern)
    } else {
        hits.join("\n")
    };
    if more {
        let _ = write!(
            text,
            "\n[truncated: more than {MAX_SEARCH_MATCHES} matches; narrow the pattern or the path]"
        );
    }
    done(
        target,
        text,
        format!("{n}{} matches", if more { "+" } else { "" }),
    )
}

/// Walks `at` (already resolved by the policy, so not itself a symlink); symlinks inside the
/// walk are never followed.
fn search_walk(root: &Path, at: &Path, pattern: &str, hits: &mut Vec<String>, more: &mut bool) {
    let Ok(meta) = std::fs::metadata(at) else {
        return;
    };
    if meta.is_file() {
        search_file(root, at, pattern, hits, more);
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let Ok(read) = std::fs::read_dir(at) else {
        return;
    };
    let mut children: Vec<_> = read.flatten().collect();
    children.sort_by_key(std::fs::DirEntry::file_name);
    for child in children {
        let Ok(ft) = child.file_type() else { continue };
        if ft.is_symlink() {
            continue;
        }
        let name = child.file_name();
        if ft.is_dir() && SKIPPED_DIRS.contains(&name.to_string_lossy().as_ref()) {
            continue;
        }
        search_walk(root, &child.path(), pattern, hits, more);
        if *more {
            return;
        }
    }
}

fn search_file(root: &Path, file: &Path, pattern: &str, hits: &mut Vec<String>, more: &mut bool) {
    let Ok(meta) = std::fs::metadata(file) else {
        return;
    };
    if meta.len() > MAX_SEARCH_FILE_BYTES {
        return;
    }
    let Ok(bytes) = std::fs::read(file) else {
        return;
    };
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return;
    }
    let text = String::from_utf8_lossy(&bytes);
    let rel = relative(root, file);
    for (i, line) in text.lines().enumerate() {
        if line.contains(pattern) {
            if hits.len() >= MAX_SEARCH_MATCHES {
                *more = true;
                return;
            }
            hits.push(format!(
                "{rel}:{}: {}",
                i + 1,
                truncate_chars(line.trim_end(), MAX_MATCH_LINE)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// write_file and edit_file.

async fn write_resolved(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::write(path, content).await
}

async fn write(wd: &Workdir, a: WriteArgs) -> Executed {
    let target = a.path.clone();
    let resolved = match wd
        .policy
        .check_write(&wd.root, &a.path, a.content.as_bytes())
    {
        Ok(p) => p,
        Err(e) => return policy_refusal(target, &e),
    };
    let existed = tokio::fs::try_exists(&resolved).await.unwrap_or(false);
    match write_resolved(&resolved, a.content.as_bytes()).await {
        Ok(()) => {
            let verb = if existed { "overwrote" } else { "created" };
            let n = a.content.len();
            done(
                target,
                format!("{verb} {} ({n} bytes)", a.path),
                format!("{verb} {n} bytes"),
            )
        }
        Err(e) => refused(target, format!("cannot write {}: {e}", a.path)),
    }
}

async fn edit(wd: &Workdir, a: EditArgs) -> Executed {
    let target = a.path.clone();
    if a.old_text.is_empty() {
        return refused(
            target,
            format!("old_text is empty; use {WRITE} to create or overwrite a file"),
        );
    }
    // The policy on the path and on the new text first: a protected path escalates whether or
    // not the file exists, and a secret in `new_text` is refused before anything is read.
    let resolved = match wd
        .policy
        .check_write(&wd.root, &a.path, a.new_text.as_bytes())
    {
        Ok(p) => p,
        Err(e) => return policy_refusal(target, &e),
    };
    let current = match tokio::fs::read(&resolved).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refused(
                target,
                format!("{} does not exist; use {WRITE} to create it", a.path),
            );
        }
        Err(e) => return refused(target, format!("cannot read {}: {e}", a.path)),
    };
    let Ok(current) = String::from_utf8(current) else {
        return refused(target, format!("{} is not UTF-8 text", a.path));
    };
    let count = current.matches(a.old_text.as_str()).count();
    if count != 1 {
        let why = if count == 0 {
            "old_text was not found (it occurred 0 times); read the file and copy the exact text, \
             including whitespace"
                .to_owned()
        } else {
            format!(
                "old_text occurred {count} times; it must occur exactly once — include more \
                 surrounding lines to make it unique"
            )
        };
        return refused(target, format!("{}: {why}", a.path));
    }
    let updated = current.replacen(a.old_text.as_str(), &a.new_text, 1);
    let size = updated.len() as u64;
    if size > wd.policy.max_file_bytes {
        let e = PolicyError::TooLarge {
            path: a.path.clone(),
            size,
            max: wd.policy.max_file_bytes,
        };
        return policy_refusal(target, &e);
    }
    match tokio::fs::write(&resolved, updated.as_bytes()).await {
        Ok(()) => {
            let (old_lines, new_lines) = (a.old_text.lines().count(), a.new_text.lines().count());
            done(
                target,
                format!(
                    "edited {}: replaced {old_lines} line(s) with {new_lines} line(s)",
                    a.path
                ),
                format!("replaced {old_lines} with {new_lines} lines"),
            )
        }
        Err(e) => refused(target, format!("cannot write {}: {e}", a.path)),
    }
}

// ---------------------------------------------------------------------------------------------
// run_command.

/// Character sequences that would let one command line start other programs, redirect output
/// over files, or expand into code.
const METACHARACTERS: &[&str] = &[
    ";", "&", "|", "`", "$(", "${", ">", "<", "\n", "\r", "(", ")",
];

/// Checks a command line against the allow-list; `Err` says why it is refused.
pub fn check_command(command: &str, allowed: &[String]) -> Result<(), String> {
    let line = command.trim();
    if line.is_empty() {
        return Err("the command is empty".to_owned());
    }
    if line.len() > 4096 {
        return Err("the command is longer than 4096 bytes".to_owned());
    }
    if let Some(m) = METACHARACTERS.iter().find(|m| line.contains(**m)) {
        return Err(format!(
            "the command contains the shell metacharacter {m:?}; run one program per call, \
             without chaining, pipes, redirections or substitutions (use the {SEARCH} and \
             {READ} tools instead of pipes)"
        ));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let program = words.first().copied().unwrap_or_default();
    if !allowed.iter().any(|p| p == program) {
        return Err(format!(
            "`{}` is not an allowed program; allowed: {}",
            truncate_chars(program, 60),
            allowed.join(", ")
        ));
    }
    if program == "git" {
        let sub = words.get(1).copied().unwrap_or_default();
        if !GIT_SUBCOMMANDS.contains(&sub) {
            return Err(format!(
                "only `git {}` are allowed (commits are made by the engine)",
                GIT_SUBCOMMANDS.join("`, `git ")
            ));
        }
        if words.iter().any(|w| w.starts_with("--output")) {
            return Err("git --output would write a file outside the path policy".to_owned());
        }
    }
    for word in words.iter().skip(1) {
        let word = word.trim_matches(|c| c == '"' || c == '\'');
        let value = word.split_once('=').map_or(word, |(_, v)| v);
        for candidate in [word, value] {
            if candidate.starts_with('/') || candidate.starts_with('~') {
                return Err(format!(
                    "argument `{}` is an absolute path; use paths relative to the repository root",
                    truncate_chars(word, 80)
                ));
            }
            if candidate.split('/').any(|part| part == "..") {
                return Err(format!(
                    "argument `{}` leaves the repository (`..`)",
                    truncate_chars(word, 80)
                ));
            }
        }
    }
    Ok(())
}

/// Arguments that name an existing entry of the tree must pass the read policy: `cat link/x`
/// through an in-tree symlink pointing outside is refused like `read_file` would be.
fn check_command_paths(wd: &Workdir, command: &str) -> Result<(), String> {
    for word in command.split_whitespace().skip(1) {
        let word = word.trim_matches(|c| c == '"' || c == '\'');
        let value = word.split_once('=').map_or(word, |(_, v)| v);
        for candidate in [word, value] {
            if candidate.is_empty() || candidate.starts_with('-') || is_root(candidate) {
                continue;
            }
            if std::fs::symlink_metadata(wd.root.join(candidate)).is_err() {
                continue;
            }
            if let Err(e) = wd.policy.check_read(&wd.root, candidate) {
                return Err(format!("argument `{}`: {e}", truncate_chars(candidate, 80)));
            }
        }
    }
    Ok(())
}

async fn run_command(wd: &Workdir, a: RunArgs, cancel: &CancellationToken) -> Executed {
    let target = truncate_chars(a.command.trim(), 200);
    if let Err(why) = check_command(&a.command, &wd.run.allowed) {
        return refused(target, why);
    }
    if let Err(why) = check_command_paths(wd, &a.command) {
        return refused(target, why);
    }
    let mut spec = CommandSpec::new(a.command.trim(), wd.root.clone());
    spec.env_set.clone_from(&wd.run.env_set);
    spec.writable.clone_from(&wd.run.writable);
    spec.network = wd.run.network;
    match wd
        .run
        .sandbox
        .run_until(&spec, wd.run.timeout, wd.run.max_output, cancel)
        .await
    {
        Ok(outcome) => {
            let status = if outcome.timed_out {
                format!(
                    "timed out after {} s; the command's processes were killed",
                    wd.run.timeout.as_secs()
                )
            } else {
                match outcome.exit_code {
                    Some(code) => format!("exit code: {code}"),
                    None => "killed by a signal".to_owned(),
                }
            };
            let text = format!(
                "{status} ({:.1} s)\n--- output (last {} bytes at most) ---\n{}",
                outcome.duration.as_secs_f64(),
                wd.run.max_output,
                outcome.output_tail
            );
            Executed {
                ok: outcome.success(),
                detail: status,
                result: ToolResult::Ok(text),
                target,
            }
        }
        Err(SandboxError::Cancelled) => refused(target, "cancelled".to_owned()),
        Err(e) => refused(target, format!("the command could not run: {e}")),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;
    use atlasia_llm::ToolCall;

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments: args.to_string(),
        }
    }

    async fn exec(wd: &Workdir, name: &str, args: Value) -> ToolResult {
        execute(wd, &call(name, args), &CancellationToken::new()).await
    }

    fn ok_text(r: ToolResult) -> String {
        match r {
            ToolResult::Ok(t) => t,
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    fn refused_text(r: ToolResult) -> String {
        match r {
            ToolResult::Refused(t) => t,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    fn repo() -> (tempfile::TempDir, Workdir) {
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
    async fn list_files_skips_build_and_vcs_directories() {
        let (_d, wd) = repo();
        let top = ok_text(exec(&wd, LIST, json!({"path": ""})).await);
        assert!(top.contains("README.md"), "{top}");
        assert!(top.contains("src/"), "{top}");
        assert!(!top.contains("src/lib.py"), "depth 1: {top}");
        for skipped in [".git", "target", "node_modules"] {
            assert!(!top.contains(skipped), "{skipped} listed: {top}");
        }
        let deep = ok_text(exec(&wd, LIST, json!({"path": ".", "depth": 3})).await);
        assert!(deep.contains("src/nested/deep.txt"), "{deep}");
        let sub = ok_text(exec(&wd, LIST, json!({"path": "src"})).await);
        assert!(
            sub.contains("src/lib.py") && sub.contains("src/nested/"),
            "{sub}"
        );
        refused_text(exec(&wd, LIST, json!({"path": "README.md"})).await);
        refused_text(exec(&wd, LIST, json!({"path": "../"})).await);
    }

    #[tokio::test]
    async fn read_file_whole_range_and_cap() {
        let (_d, wd) = repo();
        let all = ok_text(exec(&wd, READ, json!({"path": "src/lib.py"})).await);
        assert!(all.starts_with("def add(a, b):\n"), "{all}");
        let range = ok_text(
            exec(
                &wd,
                READ,
                json!({"path": "src/lib.py", "start_line": 5, "end_line": 6}),
            )
            .await,
        );
        assert!(range.contains("lines 5-6 of 6"), "{range}");
        assert!(
            range.contains("def sub(a, b):\n    return a - b\n"),
            "{range}"
        );
        assert!(!range.contains("def add"), "{range}");
        refused_text(exec(&wd, READ, json!({"path": "src/lib.py", "start_line": 50})).await);
        let missing = refused_text(exec(&wd, READ, json!({"path": "nope.txt"})).await);
        assert!(missing.contains("does not exist"), "{missing}");
        // A big file is cut at the cap and says so.
        let big = "x".repeat(100) + "\n";
        std::fs::write(wd.root.join("big.txt"), big.repeat(2000)).unwrap();
        let cut = ok_text(exec(&wd, READ, json!({"path": "big.txt"})).await);
        assert!(cut.len() < MAX_READ_BYTES + 200, "{}", cut.len());
        assert!(cut.contains("[truncated"), "no marker");
        // Reads cannot leave the tree or enter .git.
        for bad in ["/etc/passwd", "../outside", ".git/config", "src/../../x"] {
            let r = exec(&wd, READ, json!({"path": bad})).await;
            assert!(matches!(r, ToolResult::Refused(_)), "{bad}: {r:?}");
        }
    }

    #[tokio::test]
    async fn read_through_a_symlink_out_of_the_tree_is_refused() {
        let (_d, wd) = repo();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), wd.root.join("link")).unwrap();
        let r = exec(&wd, READ, json!({"path": "link/secret.txt"})).await;
        let why = refused_text(r);
        assert!(why.contains("symlink"), "{why}");
        // Search does not follow it either.
        let s = ok_text(exec(&wd, SEARCH, json!({"pattern": "top secret"})).await);
        assert!(s.starts_with("no matches"), "{s}");
    }

    #[tokio::test]
    async fn search_finds_literal_matches_and_skips_ignored_dirs() {
        let (_d, wd) = repo();
        let hits = ok_text(exec(&wd, SEARCH, json!({"pattern": "needle"})).await);
        assert_eq!(hits, "src/nested/deep.txt:1: needle here", "{hits}");
        let scoped = ok_text(exec(&wd, SEARCH, json!({"pattern": "a - b", "path": "src"})).await);
        assert!(scoped.contains("src/lib.py:2:"), "{scoped}");
        assert!(scoped.contains("src/lib.py:6:"), "{scoped}");
        let file = ok_text(
            exec(
                &wd,
                SEARCH,
                json!({"pattern": "hello", "path": "README.md"}),
            )
            .await,
        );
        assert_eq!(file, "README.md:2: hello world");
        let none = ok_text(exec(&wd, SEARCH, json!({"pattern": "a.*b"})).await);
        assert!(none.starts_with("no matches"), "literal, not regex: {none}");
        // Capped.
        std::fs::write(wd.root.join("many.txt"), "hit\n".repeat(500)).unwrap();
        let many = ok_text(exec(&wd, SEARCH, json!({"pattern": "hit"})).await);
        assert_eq!(
            many.lines().filter(|l| l.starts_with("many.txt:")).count(),
            200
        );
        assert!(many.contains("[truncated"), "no marker");
        refused_text(exec(&wd, SEARCH, json!({"pattern": ""})).await);
        refused_text(exec(&wd, SEARCH, json!({"pattern": "x", "path": "/etc"})).await);
    }

    #[tokio::test]
    async fn write_file_creates_parents_and_overwrites() {
        let (_d, wd) = repo();
        let r = ok_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "new/dir/file.txt", "content": "one\n"}),
            )
            .await,
        );
        assert!(r.starts_with("created"), "{r}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("new/dir/file.txt")).unwrap(),
            "one\n"
        );
        let r = ok_text(exec(&wd, WRITE, json!({"path": "README.md", "content": "two"})).await);
        assert!(r.starts_with("overwrote"), "{r}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("README.md")).unwrap(),
            "two"
        );
    }

    #[tokio::test]
    async fn edit_file_replaces_exactly_one_occurrence() {
        let (_d, wd) = repo();
        let ok = exec(
            &wd,
            EDIT,
            json!({"path": "src/lib.py", "old_text": "def add(a, b):\n    return a - b",
                   "new_text": "def add(a, b):\n    return a + b"}),
        )
        .await;
        ok_text(ok);
        let now = std::fs::read_to_string(wd.root.join("src/lib.py")).unwrap();
        assert!(now.contains("return a + b"));
        assert!(now.contains("def sub(a, b):\n    return a - b"), "{now}");

        let zero = refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "src/lib.py", "old_text": "not there", "new_text": "x"}),
            )
            .await,
        );
        assert!(zero.contains("0 times"), "{zero}");
        std::fs::write(wd.root.join("two.txt"), "same\nsame\n").unwrap();
        let two = refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "two.txt", "old_text": "same", "new_text": "x"}),
            )
            .await,
        );
        assert!(two.contains("2 times"), "{two}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("two.txt")).unwrap(),
            "same\nsame\n",
            "unchanged"
        );
        let missing = refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "nope.txt", "old_text": "a", "new_text": "b"}),
            )
            .await,
        );
        assert!(missing.contains("does not exist"), "{missing}");
        refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "two.txt", "old_text": "", "new_text": "b"}),
            )
            .await,
        );
    }

    #[tokio::test]
    async fn writes_outside_the_tree_are_refused() {
        let (_d, wd) = repo();
        let outside = tempfile::tempdir().unwrap();
        let abs = outside.path().join("x.txt");
        for path in [
            abs.to_string_lossy().into_owned(),
            "../x.txt".into(),
            "a/../../x.txt".into(),
            ".git/hooks/pre-commit".into(),
        ] {
            let r = exec(&wd, WRITE, json!({"path": path, "content": "x"})).await;
            assert!(matches!(r, ToolResult::Refused(_)), "{path}: {r:?}");
            let r = exec(
                &wd,
                EDIT,
                json!({"path": path, "old_text": "a", "new_text": "x"}),
            )
            .await;
            assert!(matches!(r, ToolResult::Refused(_)), "{path}: {r:?}");
        }
        assert!(!abs.exists());
        // A symlink planted in the repository that points outside.
        std::os::unix::fs::symlink(outside.path(), wd.root.join("escape")).unwrap();
        std::fs::write(outside.path().join("victim.txt"), "original").unwrap();
        let r = exec(
            &wd,
            WRITE,
            json!({"path": "escape/victim.txt", "content": "pwned"}),
        )
        .await;
        assert!(refused_text(r).contains("symlink"));
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "escape/victim.txt", "old_text": "original", "new_text": "pwned"}),
        )
        .await;
        assert!(refused_text(r).contains("symlink"));
        let r = exec(
            &wd,
            WRITE,
            json!({"path": "escape/new.txt", "content": "x"}),
        )
        .await;
        refused_text(r);
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim.txt")).unwrap(),
            "original"
        );
        assert!(!outside.path().join("new.txt").exists());
        // A file symlink too.
        std::os::unix::fs::symlink(outside.path().join("victim.txt"), wd.root.join("f")).unwrap();
        refused_text(exec(&wd, WRITE, json!({"path": "f", "content": "pwned"})).await);
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim.txt")).unwrap(),
            "original"
        );
    }

    #[tokio::test]
    async fn protected_workflows_escalate() {
        let (_d, wd) = repo();
        let r = exec(
            &wd,
            WRITE,
            json!({"path": ".github/workflows/x.yml", "content": "on: push"}),
        )
        .await;
        assert!(
            matches!(&r, ToolResult::Escalate(m) if m.contains("protected")),
            "{r:?}"
        );
        assert!(!wd.root.join(".github/workflows/x.yml").exists());
        // Edits too, even of a file that does not exist.
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "./.github/workflows/ci.yml", "old_text": "a", "new_text": "b"}),
        )
        .await;
        assert!(matches!(r, ToolResult::Escalate(_)), "{r:?}");
        // An in-tree symlink into the protected directory does not smuggle the write.
        std::fs::create_dir_all(wd.root.join(".github/workflows")).unwrap();
        std::os::unix::fs::symlink(wd.root.join(".github/workflows"), wd.root.join("wf")).unwrap();
        let r = exec(
            &wd,
            WRITE,
            json!({"path": "wf/y.yml", "content": "on: push"}),
        )
        .await;
        assert!(matches!(r, ToolResult::Escalate(_)), "{r:?}");
        assert!(!wd.root.join(".github/workflows/y.yml").exists());
    }

    #[tokio::test]
    async fn secrets_are_refused() {
        let (_d, wd) = repo();
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";
        let r = refused_text(exec(&wd, WRITE, json!({"path": "key.pem", "content": pem})).await);
        assert!(r.contains("secret"), "{r}");
        assert!(!wd.root.join("key.pem").exists());
        let token = format!("TOKEN = \"ghp_{}\"\n", "a1B2".repeat(9));
        refused_text(exec(&wd, WRITE, json!({"path": "conf.py", "content": token})).await);
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "README.md", "old_text": "hello world",
                   "new_text": format!("key: AKIA{}", "ABCDEFGHIJ234567")}),
        )
        .await;
        refused_text(r);
        assert!(
            std::fs::read_to_string(wd.root.join("README.md"))
                .unwrap()
                .contains("hello world")
        );
    }

    #[tokio::test]
    async fn allowlist_prefixes_and_size_limit() {
        let (_d, mut wd) = repo();
        wd.policy = PathPolicy::from_values(Some("src/, docs"), None);
        ok_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "src/new.py", "content": "x = 1\n"}),
            )
            .await,
        );
        ok_text(exec(&wd, WRITE, json!({"path": "docs/a.md", "content": "a"})).await);
        let r = refused_text(exec(&wd, WRITE, json!({"path": "setup.py", "content": "x"})).await);
        assert!(r.contains("outside the allowed prefixes"), "{r}");
        refused_text(exec(&wd, WRITE, json!({"path": "srcfoo/a.py", "content": "x"})).await);
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "README.md", "old_text": "hello", "new_text": "bye"}),
        )
        .await;
        refused_text(r);
        // Protection still wins inside an allow-listed tree.
        wd.policy = PathPolicy::from_values(Some(".github"), None);
        let r = exec(
            &wd,
            WRITE,
            json!({"path": ".github/workflows/a.yml", "content": "x"}),
        )
        .await;
        assert!(matches!(r, ToolResult::Escalate(_)), "{r:?}");

        wd.policy = PathPolicy {
            max_file_bytes: 16,
            ..PathPolicy::default()
        };
        let r = refused_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "big.txt", "content": "x".repeat(17)}),
            )
            .await,
        );
        assert!(r.contains("limit"), "{r}");
        ok_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "ok.txt", "content": "abcdefghijklmnop"}),
            )
            .await,
        );
        // An edit that grows the file past the limit.
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "ok.txt", "old_text": "abcd", "new_text": "abcdefgh"}),
        )
        .await;
        let why = refused_text(r);
        assert!(why.contains("limit"), "{why}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("ok.txt")).unwrap(),
            "abcdefghijklmnop"
        );
    }

    #[test]
    fn command_checks() {
        let allowed: Vec<String> = RunLimits::default().allowed;
        for ok in [
            "cargo test",
            "python3 -m unittest discover -s tests",
            "git status",
            "git diff HEAD~1",
            "git log origin/main..HEAD",
            "ls src",
            "grep -rn foo src",
            "pytest -q tests/test_x.py",
            "make check FOO=bar",
        ] {
            assert_eq!(check_command(ok, &allowed), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("rm -rf src", "not an allowed program"),
            ("/usr/bin/cargo test", "not an allowed program"),
            ("FOO=1 cargo test", "not an allowed program"),
            ("cargo test; rm -rf /", "metacharacter"),
            ("cargo test && curl x", "metacharacter"),
            ("cargo test || true", "metacharacter"),
            ("cat README.md | sh", "metacharacter"),
            ("ls `whoami`", "metacharacter"),
            ("ls $(whoami)", "metacharacter"),
            ("cat x > y", "metacharacter"),
            ("cat < y", "metacharacter"),
            ("cargo test &", "metacharacter"),
            ("cargo test\nrm -rf .", "metacharacter"),
            ("git commit -m x", "only"),
            ("git push", "only"),
            ("git", "only"),
            ("git diff --output=x.txt", "--output"),
            ("cat /etc/passwd", "absolute"),
            ("cat ~/.ssh/id_rsa", "absolute"),
            ("ls ../..", "leaves"),
            ("cargo test --manifest-path=../x/Cargo.toml", "leaves"),
        ] {
            let err = check_command(bad, &allowed).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn run_command_runs_allowed_commands_in_the_tree() {
        let (_d, wd) = repo();
        let r = exec(&wd, RUN, json!({"command": "ls src"})).await;
        let text = ok_text(r);
        assert!(text.starts_with("exit code: 0"), "{text}");
        assert!(text.contains("lib.py"), "{text}");
        let r = execute_detailed(
            &wd,
            &call(
                RUN,
                json!({"command": "python3 -c 'import sys; sys.exit(3)'"}),
            ),
            &CancellationToken::new(),
        )
        .await;
        // `;` is refused even inside quotes: the check is lexical and conservative.
        assert!(matches!(r.result, ToolResult::Refused(_)));
        std::fs::write(
            wd.root.join("fail.py"),
            "import sys\nprint('boom')\nsys.exit(3)\n",
        )
        .unwrap();
        let r = execute_detailed(
            &wd,
            &call(RUN, json!({"command": "python3 fail.py"})),
            &CancellationToken::new(),
        )
        .await;
        assert!(!r.ok, "exit 3 is not ok");
        assert_eq!(r.detail, "exit code: 3");
        assert_eq!(r.target, "python3 fail.py");
        let text = ok_text(r.result);
        assert!(text.contains("boom"), "{text}");
        let r = refused_text(exec(&wd, RUN, json!({"command": "curl http://example.com"})).await);
        assert!(r.contains("not an allowed program"), "{r}");
        refused_text(exec(&wd, RUN, json!({"command": "ls; touch pwned"})).await);
        assert!(!wd.root.join("pwned").exists());
    }

    #[tokio::test]
    async fn run_command_arguments_cannot_read_through_an_escaping_symlink() {
        let (_d, wd) = repo();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), wd.root.join("link")).unwrap();
        let r = refused_text(exec(&wd, RUN, json!({"command": "cat link/secret.txt"})).await);
        assert!(r.contains("symlink"), "{r}");
        let r = refused_text(exec(&wd, RUN, json!({"command": "ls link"})).await);
        assert!(r.contains("symlink"), "{r}");
        let r = refused_text(exec(&wd, RUN, json!({"command": "cat .git/config"})).await);
        assert!(r.contains(".git"), "{r}");
        let text = ok_text(exec(&wd, RUN, json!({"command": "cat README.md"})).await);
        assert!(text.contains("hello world"), "{text}");
    }

    #[tokio::test]
    async fn run_command_output_is_capped() {
        let (_d, mut wd) = repo();
        wd.run.max_output = 1024;
        std::fs::write(
            wd.root.join("loud.py"),
            "print('y' * 100000)\nprint('END')\n",
        )
        .unwrap();
        let text = ok_text(exec(&wd, RUN, json!({"command": "python3 loud.py"})).await);
        assert!(text.len() < 1400, "{}", text.len());
        assert!(text.contains("truncated"), "{text}");
        assert!(text.trim_end().ends_with("END"), "the tail is kept");
    }

    #[tokio::test]
    async fn run_command_timeout_kills_the_process() {
        let (_d, mut wd) = repo();
        wd.run.timeout = Duration::from_millis(500);
        std::fs::write(
            wd.root.join("hang.py"),
            "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let r = execute_detailed(
            &wd,
            &call(RUN, json!({"command": "python3 hang.py"})),
            &CancellationToken::new(),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!r.ok);
        let text = ok_text(r.result);
        assert!(text.starts_with("timed out"), "{text}");
    }

    #[tokio::test]
    async fn run_command_stops_on_cancel() {
        let (_d, wd) = repo();
        std::fs::write(wd.root.join("hang.py"), "import time\ntime.sleep(60)\n").unwrap();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let started = std::time::Instant::now();
        let r = execute(
            &wd,
            &call(RUN, json!({"command": "python3 hang.py"})),
            &cancel,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(refused_text(r), "cancelled");
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
