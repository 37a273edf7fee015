//! Which local folders a bolt may work on, and how much of a plain folder it may import.
//!
//! Runs created over the API name a path on the server's host, so `serve` admits a local
//! repository only when its canonical path (symlinks resolved) lies under one of
//! `server.repo_roots`; `atlasia run` (the user's own process) admits any folder. In both, the
//! data directory is never a repository: importing it, something inside it, or a folder that
//! contains it would copy the server's database, worktrees and imports (and recurse). The same
//! check runs again when the bolt prepares its worktree, so a run stored before a root was
//! removed (or written into the store directly) cannot reach outside the roots.

use std::path::{Path, PathBuf};

/// The setting that lists the allowed roots (named in every refusal).
pub const ROOTS_SETTING: &str = "server.repo_roots";

/// Default cap on the files of an imported plain folder.
pub const DEFAULT_IMPORT_MAX_FILES: u64 = 20_000;
/// Default cap on the bytes of an imported plain folder (500 MiB).
pub const DEFAULT_IMPORT_MAX_BYTES: u64 = 500 * 1024 * 1024;

/// How much of a plain folder an import may copy; checked before anything is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Regular files and symlinks, at most.
    pub max_files: u64,
    /// Sum of the regular files' sizes, at most.
    pub max_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self {
            max_files: DEFAULT_IMPORT_MAX_FILES,
            max_bytes: DEFAULT_IMPORT_MAX_BYTES,
        }
    }
}

/// Where local repositories may come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoAccess {
    /// `None`: any folder (the CLI's own process). `Some(roots)`: only under these canonical
    /// directories; an empty list refuses every local path.
    pub roots: Option<Vec<PathBuf>>,
    /// Caps of plain-folder imports.
    pub import: ImportLimits,
}

/// Why a local path is not admitted as a repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoRefused {
    /// The path does not exist (or cannot be resolved).
    #[error("repository {0} does not exist")]
    Missing(String),
    /// The path is a file or a special file.
    #[error("repository {0} is not a directory")]
    NotADirectory(String),
    /// The path is not valid UTF-8 (it could not be stored or handed to git safely).
    #[error("repository path {0} is not valid UTF-8")]
    NotUtf8(String),
    /// The path is, is inside, or contains the data directory.
    #[error(
        "repository {path} overlaps the data directory {data_dir} (storage.data_dir), which is never a repository"
    )]
    DataDir { path: String, data_dir: String },
    /// `serve` has no roots: local repositories are refused.
    #[error(
        "local repositories are refused: none are allowed until {ROOTS_SETTING} lists the directories they may come from"
    )]
    NoRoots,
    /// The canonical path lies under none of the roots.
    #[error("repository {0} is not under any directory of {ROOTS_SETTING}")]
    NotUnderRoot(String),
}

impl RepoAccess {
    /// Any folder except the data directory (the CLI).
    pub fn anywhere() -> Self {
        Self::default()
    }

    /// Only folders under `roots` (canonicalised here; a root that cannot be resolved is
    /// dropped — settings validation refuses those at start).
    pub fn under(roots: &[PathBuf], import: ImportLimits) -> Self {
        Self {
            roots: Some(roots.iter().filter_map(|r| r.canonicalize().ok()).collect()),
            import,
        }
    }

    /// The canonical path of `repo` when it may be used as a repository with `data_dir` as
    /// the data directory; otherwise why not. Relative paths resolve against the current
    /// directory.
    pub fn admit(&self, repo: &Path, data_dir: &Path) -> Result<PathBuf, RepoRefused> {
        let shown = repo.display().to_string();
        if self.roots.as_ref().is_some_and(Vec::is_empty) {
            return Err(RepoRefused::NoRoots);
        }
        let path = repo.canonicalize().map_err(|_| {
            // Outside the roots, "does not exist" and "not allowed" must read the same, or the
            // API would tell a caller which host paths exist.
            match &self.roots {
                Some(roots) if !roots.iter().any(|r| lexical(repo).starts_with(r)) => {
                    RepoRefused::NotUnderRoot(shown.clone())
                }
                _ => RepoRefused::Missing(shown.clone()),
            }
        })?;
        if !path.is_dir() {
            return Err(RepoRefused::NotADirectory(shown));
        }
        let canonical = path
            .to_str()
            .ok_or_else(|| RepoRefused::NotUtf8(shown.clone()))?
            .to_owned();
        if let Some(roots) = &self.roots
            && !roots.iter().any(|root| path.starts_with(root))
        {
            return Err(RepoRefused::NotUnderRoot(canonical));
        }
        // A root may contain the data directory; the data directory stays out all the same.
        let data = data_dir
            .canonicalize()
            .or_else(|_| std::path::absolute(data_dir))
            .unwrap_or_else(|_| data_dir.to_path_buf());
        if path.starts_with(&data) || data.starts_with(&path) {
            return Err(RepoRefused::DataDir {
                path: canonical,
                data_dir: data.display().to_string(),
            });
        }
        Ok(path)
    }
}

/// `path` made absolute with `.` and `..` folded away, without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roots_data_dir_and_kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repos");
        let repo = root.join("app");
        let data = root.join("data");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        let access = RepoAccess::under(std::slice::from_ref(&root), ImportLimits::default());
        let admit = |p: &Path| access.admit(p, &data);
        assert_eq!(admit(&repo), Ok(repo.canonicalize().unwrap()));
        assert!(matches!(admit(&data), Err(RepoRefused::DataDir { .. })));
        assert!(matches!(
            admit(&data.join("..")),
            Err(RepoRefused::DataDir { .. })
        ));
        assert!(matches!(
            admit(Path::new("/etc")),
            Err(RepoRefused::NotUnderRoot(_))
        ));
        assert!(matches!(
            admit(&root.join("etc-link")),
            Err(RepoRefused::NotUnderRoot(_))
        ));
        assert!(matches!(
            admit(&root.join("file")),
            Err(RepoRefused::NotADirectory(_))
        ));
        assert!(matches!(
            admit(&root.join("nope")),
            Err(RepoRefused::Missing(_))
        ));
        // Outside the roots a missing path reads like any refused one.
        for outside in ["/nonexistent-atlasia", "/etc/../nonexistent-atlasia"] {
            assert!(matches!(
                admit(Path::new(outside)),
                Err(RepoRefused::NotUnderRoot(_))
            ));
        }
        assert!(matches!(
            admit(&root.join("app/../../nope")),
            Err(RepoRefused::NotUnderRoot(_))
        ));
        let none = RepoAccess::under(&[], ImportLimits::default());
        assert_eq!(none.admit(&repo, &data), Err(RepoRefused::NoRoots));
        let cli = RepoAccess::anywhere();
        assert!(cli.admit(Path::new("/etc"), &data).is_ok());
        assert!(matches!(
            cli.admit(Path::new("/"), &data),
            Err(RepoRefused::DataDir { .. })
        ));
    }
}
