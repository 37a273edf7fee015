//! The command allow-list of the Developer's `run_command`, beside the path policy it extends: one
//! allowed program per call (read-only `git` subcommands only), no shell metacharacters that
//! could chain, redirect or substitute, no argument that names an absolute path or leaves the
//! tree, and no argument that reaches out of the tree through a symlink.

use super::PathPolicy;
use crate::tools::{READ, SEARCH, is_root, truncate_chars};
use std::path::Path;

/// Programs `run_command` may start by default (the first word of the command line).
pub const DEFAULT_ALLOWED_PROGRAMS: &[&str] = &[
    "cargo", "python3", "python", "pytest", "npm", "node", "go", "make", "git", "ls", "cat", "grep",
];
/// The only `git` subcommands allowed (read-only).
pub const GIT_SUBCOMMANDS: &[&str] = &["status", "diff", "log"];

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
pub fn check_command_paths(policy: &PathPolicy, root: &Path, command: &str) -> Result<(), String> {
    for word in command.split_whitespace().skip(1) {
        let word = word.trim_matches(|c| c == '"' || c == '\'');
        let value = word.split_once('=').map_or(word, |(_, v)| v);
        for candidate in [word, value] {
            if candidate.is_empty() || candidate.starts_with('-') || is_root(candidate) {
                continue;
            }
            if std::fs::symlink_metadata(root.join(candidate)).is_err() {
                continue;
            }
            if let Err(e) = policy.check_read(root, candidate) {
                return Err(format!("argument `{}`: {e}", truncate_chars(candidate, 80)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;
    use crate::tools::RunLimits;

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
}
