//! The path policy every agent file access passes through: writes stay inside the bolt's tree,
//! under the `REPO_ALLOWLIST` prefixes when set, away from `WORKFLOW_PROTECT` (which escalates to a
//! human instead of writing), within a size limit, and never carry private keys or tokens.
//! Reads get the same containment checks (no absolute paths, no `..`, no symlink escape). The
//! allow-list of the commands an agent may run sits beside it, in [`commands`].

pub mod commands;

use std::io;
use std::path::{Component, Path, PathBuf};

/// Default `WORKFLOW_PROTECT`: CI definitions can run arbitrary code with the repository's secrets.
pub const DEFAULT_PROTECT: &str = ".github/workflows/";

/// Default largest file an agent may write (1 MiB): larger output is almost always a mistake.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a path or a write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The path is absolute; agents only name paths relative to the repository root.
    #[error("absolute paths are not allowed: {path}")]
    Absolute {
        /// The path as given.
        path: String,
    },
    /// The path contains a `..` component.
    #[error("parent traversal (`..`) is not allowed: {path}")]
    ParentTraversal {
        /// The path as given.
        path: String,
    },
    /// `REPO_ALLOWLIST` is set and the path is under none of its prefixes.
    #[error("{path} is outside the allowed prefixes: {}", prefixes.join(", "))]
    OutsideAllowlist {
        /// The normalised relative path.
        path: String,
        /// The configured prefixes.
        prefixes: Vec<String>,
    },
    /// The path is under a `WORKFLOW_PROTECT` prefix: the bolt escalates instead of writing.
    #[error("{path} is protected; changing it needs a human decision")]
    Protected {
        /// The normalised relative path.
        path: String,
    },
    /// A symlink on the way resolves outside the repository (or cannot be resolved).
    #[error("{path} resolves through a symlink outside the repository")]
    SymlinkEscape {
        /// The path as given.
        path: String,
    },
    /// The content exceeds `max_file_bytes`.
    #[error("{path} is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// The normalised relative path.
        path: String,
        /// Size of the refused content.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The content looks like it carries a credential.
    #[error("{path} looks like it contains a secret ({kind})")]
    Secret {
        /// The normalised relative path.
        path: String,
        /// What was recognised.
        kind: SecretKind,
    },
    /// Empty path, NUL byte, the `.git` directory, a directory where a file is expected, or a root
    /// that does not exist.
    #[error("invalid path {path}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PolicyError {
    /// True when the refusal should become an escalation (a human may allow it), not a plain
    /// tool error the agent can route around.
    pub fn is_escalation(&self) -> bool {
        matches!(self, Self::Protected { .. })
    }
}

/// The kinds of credential the secret scanner recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `-----BEGIN ... PRIVATE KEY-----` (RSA, EC, PKCS#8, encrypted).
    PemPrivateKey,
    /// `-----BEGIN OPENSSH PRIVATE KEY-----`.
    OpenSshPrivateKey,
    /// `AKIA` followed by 16 upper-case letters or digits.
    AwsAccessKey,
    /// `ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_` or `github_pat_` tokens.
    GitHubToken,
    /// `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-` tokens.
    SlackToken,
    /// `sk-ant-...` keys.
    AnthropicKey,
    /// `sk-` followed by at least 32 key characters.
    OpenAiKey,
    /// A secret value this server holds (a token, an API key, the webhook secret…): a script
    /// that dumps the environment into a file must not get it committed.
    ServerSecret,
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PemPrivateKey => "PEM private key",
            Self::OpenSshPrivateKey => "OpenSSH private key",
            Self::AwsAccessKey => "AWS access key",
            Self::GitHubToken => "GitHub token",
            Self::SlackToken => "Slack token",
            Self::AnthropicKey => "Anthropic API key",
            Self::OpenAiKey => "OpenAI-style API key",
            Self::ServerSecret => "a secret value of this server",
        })
    }
}

/// The write/read policy for one repository tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPolicy {
    /// `REPO_ALLOWLIST`: when non-empty, writes must fall under one of these prefixes.
    pub allowlist: Vec<String>,
    /// `WORKFLOW_PROTECT`: writes under these prefixes escalate instead of happening.
    pub protect: Vec<String>,
    /// Largest content a single write may carry.
    pub max_file_bytes: u64,
    /// The server's own secret values; a write containing one is refused.
    pub known_secrets: atlasia_core::Redactor,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            allowlist: Vec::new(),
            protect: vec![DEFAULT_PROTECT.to_owned()],
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            known_secrets: atlasia_core::Redactor::default(),
        }
    }
}

impl PathPolicy {
    /// Builds the policy from the comma-separated `REPO_ALLOWLIST` and `WORKFLOW_PROTECT` values.
    /// An unset `WORKFLOW_PROTECT` keeps the default; a set but empty one disables protection
    /// (an explicit operator choice).
    pub fn from_values(allowlist: Option<&str>, protect: Option<&str>) -> Self {
        let mut policy = Self::default();
        if let Some(list) = allowlist {
            policy.allowlist = split_prefixes(list);
        }
        if let Some(list) = protect {
            policy.protect = split_prefixes(list);
        }
        policy
    }

    /// The same policy, also refusing writes that contain one of `secrets`' values.
    pub fn with_known_secrets(mut self, secrets: atlasia_core::Redactor) -> Self {
        self.known_secrets = secrets;
        self
    }

    /// Builds the policy from the process environment (`REPO_ALLOWLIST`, `WORKFLOW_PROTECT`).
    pub fn from_env() -> Self {
        let allow = std::env::var("REPO_ALLOWLIST").ok();
        let protect = std::env::var("WORKFLOW_PROTECT").ok();
        Self::from_values(allow.as_deref(), protect.as_deref())
    }

    /// Checks a write of `content` to `rel` under `root`; returns the resolved absolute path to
    /// write to. Protection and the allowlist are checked on both the path as given and the path
    /// after symlink resolution, so an in-tree symlink cannot smuggle a write into a protected
    /// directory.
    pub fn check_write(
        &self,
        root: &Path,
        rel: &str,
        content: &[u8],
    ) -> Result<PathBuf, PolicyError> {
        let norm = normalise(rel)?;
        self.check_prefixes(&norm)?;
        let size = content.len() as u64;
        if size > self.max_file_bytes {
            return Err(PolicyError::TooLarge {
                path: norm,
                size,
                max: self.max_file_bytes,
            });
        }
        if let Some(kind) = find_secret(content) {
            return Err(PolicyError::Secret { path: norm, kind });
        }
        if !self.known_secrets.is_empty()
            && self
                .known_secrets
                .contains_secret(&String::from_utf8_lossy(content))
        {
            return Err(PolicyError::Secret {
                path: norm,
                kind: SecretKind::ServerSecret,
            });
        }
        let (resolved, resolved_rel) = resolve(root, rel, &norm)?;
        if resolved_rel != norm {
            self.check_prefixes(&resolved_rel)?;
        }
        if resolved.is_dir() {
            return Err(invalid(rel, "is a directory"));
        }
        Ok(resolved)
    }

    /// Checks a read of `rel` under `root`; returns the resolved absolute path. Reads may look
    /// at protected and non-allow-listed files, but never outside the tree or into `.git`.
    pub fn check_read(&self, root: &Path, rel: &str) -> Result<PathBuf, PolicyError> {
        let norm = normalise(rel)?;
        let (resolved, _) = resolve(root, rel, &norm)?;
        Ok(resolved)
    }

    fn check_prefixes(&self, norm: &str) -> Result<(), PolicyError> {
        if self.protect.iter().any(|p| under_prefix(norm, p)) {
            return Err(PolicyError::Protected {
                path: norm.to_owned(),
            });
        }
        if !self.allowlist.is_empty() && !self.allowlist.iter().any(|p| under_prefix(norm, p)) {
            return Err(PolicyError::OutsideAllowlist {
                path: norm.to_owned(),
                prefixes: self.allowlist.clone(),
            });
        }
        Ok(())
    }
}

fn split_prefixes(list: &str) -> Vec<String> {
    list.split(',')
        .map(|p| p.trim().trim_start_matches("./").trim_start_matches('/'))
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A prefix ending in `/` names a directory; one without names a directory or a file, matched
/// by whole components so that `src` does not cover `srcfoo/`.
fn under_prefix(norm: &str, prefix: &str) -> bool {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return true;
    }
    norm == trimmed
        || norm
            .strip_prefix(trimmed)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn invalid(rel: &str, reason: &str) -> PolicyError {
    PolicyError::InvalidPath {
        path: rel.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Lexical checks and normalisation to `a/b/c` (no `.` components, no trailing slash).
fn normalise(rel: &str) -> Result<String, PolicyError> {
    if rel.trim().is_empty() {
        return Err(invalid(rel, "empty path"));
    }
    if rel.contains('\0') {
        return Err(invalid(rel, "contains a NUL byte"));
    }
    // Backslashes are ordinary file name bytes on Unix, but a Windows-style `..\` or `C:\` path
    // from a model is never meant literally; refuse rather than create odd file names.
    if rel.contains('\\') {
        return Err(invalid(rel, "contains a backslash"));
    }
    if rel.starts_with('/') || rel.starts_with('~') {
        return Err(PolicyError::Absolute {
            path: rel.to_owned(),
        });
    }
    let mut parts = Vec::new();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => {
                let part = part
                    .to_str()
                    .ok_or_else(|| invalid(rel, "not valid UTF-8"))?;
                if part == ".git" {
                    return Err(invalid(rel, "the .git directory is off limits"));
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(PolicyError::ParentTraversal {
                    path: rel.to_owned(),
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(PolicyError::Absolute {
                    path: rel.to_owned(),
                });
            }
        }
    }
    if parts.is_empty() {
        return Err(invalid(rel, "names the repository root"));
    }
    Ok(parts.join("/"))
}

/// Resolves `norm` under `root` component by component: every existing component that is a
/// symlink is canonicalised and must stay inside the canonical root; components that do not
/// exist yet are appended as they are (they cannot be symlinks). Returns the absolute path and
/// its path relative to the root after resolution.
fn resolve(root: &Path, rel: &str, norm: &str) -> Result<(PathBuf, String), PolicyError> {
    let canon_root = root
        .canonicalize()
        .map_err(|e| invalid(rel, &format!("repository root {}: {e}", root.display())))?;
    let escape = || PolicyError::SymlinkEscape {
        path: rel.to_owned(),
    };
    let mut current = canon_root.clone();
    let mut missing = false;
    for part in norm.split('/') {
        let next = current.join(part);
        if missing {
            current = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // A dangling symlink fails to canonicalise: writing through it would create its
                // target wherever it points, so it counts as an escape.
                let target = next.canonicalize().map_err(|_| escape())?;
                if !target.starts_with(&canon_root) {
                    return Err(escape());
                }
                current = target;
            }
            Ok(_) => current = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                current = next;
            }
            Err(e) => return Err(invalid(rel, &e.to_string())),
        }
    }
    let relative = current.strip_prefix(&canon_root).map_err(|_| escape())?;
    let relative = relative
        .to_str()
        .ok_or_else(|| invalid(rel, "not valid UTF-8"))?
        .to_owned();
    if relative.is_empty() {
        return Err(invalid(rel, "resolves to the repository root"));
    }
    if relative.split('/').any(|part| part == ".git") {
        return Err(invalid(rel, "resolves into the .git directory"));
    }
    Ok((current, relative))
}

/// Scans content for credentials. A small hand-written matcher: the patterns are fixed prefixes
/// followed by runs of a character class, which does not need a regex engine.
pub fn find_secret(content: &[u8]) -> Option<SecretKind> {
    find_pem(content)
        .or_else(|| find_aws(content))
        .or_else(|| find_github(content))
        .or_else(|| find_slack(content))
        .or_else(|| find_sk(content))
}

fn positions<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Length of the run of bytes at `start` satisfying `class`.
fn run_len(hay: &[u8], start: usize, class: impl Fn(u8) -> bool) -> usize {
    hay.get(start..)
        .map_or(0, |rest| rest.iter().take_while(|b| class(**b)).count())
}

/// True when the byte before `at` cannot be part of a longer identifier.
fn boundary_before(hay: &[u8], at: usize) -> bool {
    at == 0
        || hay
            .get(at - 1)
            .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'))
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn find_pem(hay: &[u8]) -> Option<SecretKind> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"PRIVATE KEY-----";
    for at in positions(hay, BEGIN) {
        let start = at + BEGIN.len();
        // The label is a few upper-case words ("RSA", "ENCRYPTED", "OPENSSH"...).
        let label = run_len(hay, start, |b| b.is_ascii_uppercase() || b == b' ');
        let label = label.min(40);
        let end = (start + label + END.len()).min(hay.len());
        let window = hay.get(start..end).unwrap_or_default();
        if let Some(pos) = positions(window, END).next() {
            let words = window.get(..pos).unwrap_or_default();
            return Some(if words.starts_with(b"OPENSSH") {
                SecretKind::OpenSshPrivateKey
            } else {
                SecretKind::PemPrivateKey
            });
        }
    }
    None
}

fn find_aws(hay: &[u8]) -> Option<SecretKind> {
    positions(hay, b"AKIA")
        .filter(|at| boundary_before(hay, *at))
        .any(|at| {
            run_len(hay, at + 4, |b| {
                b.is_ascii_uppercase() || b.is_ascii_digit()
            }) == 16
        })
        .then_some(SecretKind::AwsAccessKey)
}

fn find_github(hay: &[u8]) -> Option<SecretKind> {
    for prefix in [&b"ghp_"[..], b"gho_", b"ghs_", b"ghu_", b"ghr_"] {
        let hit = positions(hay, prefix)
            .filter(|at| boundary_before(hay, *at))
            .any(|at| run_len(hay, at + prefix.len(), |b| b.is_ascii_alphanumeric()) >= 36);
        if hit {
            return Some(SecretKind::GitHubToken);
        }
    }
    let pat = b"github_pat_";
    positions(hay, pat)
        .filter(|at| boundary_before(hay, *at))
        .any(|at| {
            run_len(hay, at + pat.len(), |b| {
                b.is_ascii_alphanumeric() || b == b'_'
            }) >= 40
        })
        .then_some(SecretKind::GitHubToken)
}

fn find_slack(hay: &[u8]) -> Option<SecretKind> {
    positions(hay, b"xox")
        .filter(|at| boundary_before(hay, *at))
        .any(|at| {
            matches!(hay.get(at + 3), Some(b'b' | b'a' | b'p' | b'r' | b's'))
                && hay.get(at + 4) == Some(&b'-')
                && run_len(hay, at + 5, |b| b.is_ascii_alphanumeric() || b == b'-') >= 10
        })
        .then_some(SecretKind::SlackToken)
}

fn find_sk(hay: &[u8]) -> Option<SecretKind> {
    let mut openai = false;
    for at in positions(hay, b"sk-").filter(|at| boundary_before(hay, *at)) {
        let rest = hay.get(at + 3..).unwrap_or_default();
        if rest.starts_with(b"ant-") && run_len(rest, 4, is_key_char) >= 20 {
            return Some(SecretKind::AnthropicKey);
        }
        if run_len(rest, 0, is_key_char) >= 32 {
            openai = true;
        }
    }
    openai.then_some(SecretKind::OpenAiKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matching_is_component_aware() {
        assert!(under_prefix("src/main.rs", "src/"));
        assert!(under_prefix("src/main.rs", "src"));
        assert!(under_prefix("src", "src/"));
        assert!(!under_prefix("srcfoo/x", "src"));
        assert!(under_prefix(
            ".github/workflows/ci.yml",
            ".github/workflows/"
        ));
        assert!(!under_prefix(".github/CODEOWNERS", ".github/workflows/"));
    }

    #[test]
    fn normalise_drops_dot_components() {
        assert_eq!(
            normalise("./a//b/./c.txt").ok().as_deref(),
            Some("a/b/c.txt")
        );
    }
}
