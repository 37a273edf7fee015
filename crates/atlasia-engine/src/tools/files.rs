//! The reading tools: `list_files`, `read_file` and `search`. Every path passes the read policy
//! (no absolute paths, no `..`, no symlink out of the tree, never `.git`); walks never follow
//! symlinks and skip build and VCS directories; every answer is bounded.

use super::{
    Executed, LIST, ListArgs, READ, ReadArgs, SearchArgs, Workdir, done, is_root, refused,
    truncate_chars,
};
use crate::policy::PolicyError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

pub(super) async fn list(wd: &Workdir, a: ListArgs) -> Executed {
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

pub(super) async fn read(wd: &Workdir, a: ReadArgs) -> Executed {
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

pub(super) async fn search(wd: &Workdir, a: SearchArgs) -> Executed {
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

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::super::tests::{exec, ok_text, refused_text, repo};
    use super::super::{SEARCH, ToolResult};
    use super::*;
    use serde_json::json;

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
}
