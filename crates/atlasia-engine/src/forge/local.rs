//! The local forge: each bolt works in its own git worktree under `<data_dir>/worktrees/<run_id>`
//! on branch `ai/issue-<n>` (or `ai/run-<last 8 hex of the run id>`), created from the repository's HEAD commit
//! without touching the user's checked-out branch, index or working files. A plain folder (or a
//! folder inside someone else's repository, like the bundled examples) is first imported into a
//! scratch repository under `<data_dir>/imports/`. Git runs as a subprocess with the user's hooks
//! and signing disabled and a fixed bot identity.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::access::{ImportLimits, RepoAccess, RepoRefused};

/// The bot's commit author and committer name.
pub const BOT_NAME: &str = "Atlasia Bot";
/// The bot's commit e-mail (the `.invalid` TLD never resolves).
pub const BOT_EMAIL: &str = "bot@atlasia.invalid";

/// Directories never copied when importing a plain folder: VCS data, build output, caches.
const IMPORT_EXCLUDES: [&str; 4] = [".git", "target", "node_modules", "__pycache__"];

/// Branch of an imported scratch repository.
const IMPORT_BRANCH: &str = "main";

/// Why a forge operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// A git command exited non-zero; carries its trimmed stderr.
    #[error("git {args} failed: {stderr}")]
    Git {
        /// The git arguments (after the fixed `-c` options).
        args: String,
        /// Git's trimmed standard error.
        stderr: String,
    },
    /// Git could not be started, or a file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The repository path does not exist or is not a directory.
    #[error("repository {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The repository has no commit to branch from.
    #[error("repository {0} has no commits yet")]
    NoCommits(PathBuf),
    /// The local path may not be used as a repository (outside `server.repo_roots`, the data
    /// directory, not a directory).
    #[error("{0}")]
    Refused(#[from] RepoRefused),
    /// A plain folder is larger than the import caps allow; nothing was copied.
    #[error(
        "{} is too large to import: {what} (storage.import_max_files / storage.import_max_bytes)",
        folder.display()
    )]
    ImportTooLarge {
        /// The folder.
        folder: PathBuf,
        /// Which cap it exceeds.
        what: String,
    },
    /// The run id or branch name cannot be used.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// `run id` or `branch name`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ForgeError {
    let context = context.into();
    move |source| ForgeError::Io { context, source }
}

/// A bolt's working copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// The worktree directory the agents work in.
    pub path: PathBuf,
    /// The bolt's branch (`ai/issue-<n>` or `ai/run-<hex>`).
    pub branch: String,
    /// The commit the branch was created from; diffs are `base_commit..HEAD`.
    pub base_commit: String,
    /// The branch the user had checked out (the pull request's base), or the commit id when
    /// HEAD was detached.
    pub base_branch_name: String,
    /// The repository holding the branch: the user's repository, or the scratch import.
    pub repo: PathBuf,
    /// The path the bolt was asked to work on.
    pub source: PathBuf,
}

/// The embedded local git forge.
#[derive(Debug)]
pub struct LocalForge {
    data_dir: PathBuf,
    /// Which local paths may be repositories, and the import caps.
    access: RepoAccess,
    /// Serialises worktree creation and imports within this process: `git worktree add` on the
    /// same repository and refreshing the same import must not interleave.
    lock: Mutex<()>,
}

/// `ai/issue-<n>` for an issue, else `ai/run-<last 8 hex digits of the run id>`: the last
/// digits of a UUID v7 are random, while its first ones are a timestamp that runs created
/// within the same minute share.
pub fn branch_name(issue_number: Option<i64>, run_id: &str) -> String {
    match issue_number {
        Some(n) if n > 0 => format!("ai/issue-{n}"),
        _ => {
            let digits: Vec<char> = run_id
                .chars()
                .filter(char::is_ascii_hexdigit)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            let hex: String = digits[digits.len().saturating_sub(8)..].iter().collect();
            if hex.is_empty() {
                "ai/run".to_owned()
            } else {
                format!("ai/run-{hex}")
            }
        }
    }
}

impl LocalForge {
    /// A forge keeping worktrees and imports under `data_dir`, working on any folder but the
    /// data directory, with the default import caps.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self::with_access(data_dir, RepoAccess::anywhere())
    }

    /// A forge that admits local repositories by `access` (the server's roots and caps).
    pub fn with_access(data_dir: impl Into<PathBuf>, access: RepoAccess) -> Self {
        let data_dir = data_dir.into();
        Self {
            // Git runs in other directories: a relative data directory would resolve there.
            data_dir: std::path::absolute(&data_dir).unwrap_or(data_dir),
            access,
            lock: Mutex::new(()),
        }
    }

    fn worktree_dir(&self, run_id: &str) -> PathBuf {
        self.data_dir.join("worktrees").join(run_id)
    }

    fn meta_file(&self, run_id: &str) -> PathBuf {
        self.data_dir
            .join("worktrees")
            .join(format!("{run_id}.json"))
    }

    /// Creates the bolt's worktree on `branch`, or reuses it when it already exists (loop-backs,
    /// resume after a crash). `repo` is checked against the forge's [`RepoAccess`] first, every
    /// time: a run stored before a root was removed must not reach outside the roots.
    /// Blocking: call from `spawn_blocking` in async code.
    pub fn prepare(
        &self,
        repo: &Path,
        run_id: &str,
        branch: &str,
    ) -> Result<Workspace, ForgeError> {
        let repo = self.access.admit(repo, &self.data_dir)?;
        self.prepare_admitted(&repo, run_id, branch)
    }

    /// [`LocalForge::prepare`] on a repository the engine made itself (a GitHub clone under
    /// the data directory).
    pub(crate) fn prepare_clone(
        &self,
        repo: &Path,
        run_id: &str,
        branch: &str,
    ) -> Result<Workspace, ForgeError> {
        self.prepare_admitted(repo, run_id, branch)
    }

    fn prepare_admitted(
        &self,
        repo: &Path,
        run_id: &str,
        branch: &str,
    ) -> Result<Workspace, ForgeError> {
        validate_run_id(run_id)?;
        validate_branch(branch)?;
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);

        let wt_dir = self.worktree_dir(run_id);
        if let Some(ws) = self.reuse(run_id, &wt_dir, branch)? {
            return Ok(ws);
        }

        if wt_dir.exists() {
            // A worktree without its record (a crash between `worktree add` and the record) or
            // on another branch: committed work survives on the branch, so start the directory
            // afresh; `worktree prune` below forgets the stale registration.
            std::fs::remove_dir_all(&wt_dir).map_err(io_err("clearing a stale worktree"))?;
        }

        let source = repo
            .canonicalize()
            .map_err(|_| ForgeError::NotADirectory(repo.to_path_buf()))?;
        if !source.is_dir() {
            return Err(ForgeError::NotADirectory(source));
        }
        let git_repo = if is_repo_root(&source) {
            source.clone()
        } else {
            self.import(&source)?
        };

        let base_commit = git(&git_repo, &["rev-parse", "--verify", "HEAD^{commit}"])
            .map_err(|_| ForgeError::NoCommits(git_repo.clone()))?;
        let base_branch_name = git(&git_repo, &["symbolic-ref", "--quiet", "--short", "HEAD"])
            .unwrap_or_else(|_| base_commit.clone());

        std::fs::create_dir_all(self.data_dir.join("worktrees"))
            .map_err(io_err("creating the worktrees directory"))?;
        // A worktree directory deleted by hand stays registered until pruned, which would make
        // `worktree add` refuse the path or the branch.
        git(&git_repo, &["worktree", "prune"])?;
        let wt = path_str(&wt_dir)?;
        let branch_ref = format!("refs/heads/{branch}");
        let branch_exists = git(
            &git_repo,
            &["rev-parse", "--verify", "--quiet", &branch_ref],
        )
        .is_ok();
        let base_commit = if branch_exists {
            // The branch survived an earlier worktree (removed or lost): keep its commits, and
            // diff from where it left the user's history.
            git(&git_repo, &["worktree", "add", "--quiet", wt, branch])?;
            git(&git_repo, &["merge-base", &base_commit, &branch_ref]).unwrap_or(base_commit)
        } else {
            git(
                &git_repo,
                &["worktree", "add", "--quiet", "-b", branch, wt, &base_commit],
            )?;
            base_commit
        };

        let ws = Workspace {
            path: wt_dir
                .canonicalize()
                .map_err(io_err("resolving the worktree path"))?,
            branch: branch.to_owned(),
            base_commit,
            base_branch_name,
            repo: git_repo,
            source,
        };
        let meta = serde_json::to_vec_pretty(&ws).map_err(|e| ForgeError::Io {
            context: "encoding the workspace record".to_owned(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(self.meta_file(run_id), meta)
            .map_err(io_err("writing the workspace record"))?;
        tracing::info!(run_id, branch, path = %ws.path.display(), "prepared bolt worktree");
        Ok(ws)
    }

    /// The existing workspace for `run_id` when its record and worktree are both intact and on
    /// the expected branch.
    fn reuse(
        &self,
        run_id: &str,
        wt_dir: &Path,
        branch: &str,
    ) -> Result<Option<Workspace>, ForgeError> {
        let Ok(bytes) = std::fs::read(self.meta_file(run_id)) else {
            return Ok(None);
        };
        let Ok(ws) = serde_json::from_slice::<Workspace>(&bytes) else {
            return Ok(None);
        };
        if ws.branch != branch || !wt_dir.join(".git").exists() {
            return Ok(None);
        }
        match git(wt_dir, &["symbolic-ref", "--quiet", "--short", "HEAD"]) {
            Ok(current) if current == branch => Ok(Some(ws)),
            _ => Ok(None),
        }
    }

    /// Copies a plain folder into `<data_dir>/imports/<hash>` and commits it as the bot. An
    /// existing import is refreshed so a later bolt sees the folder's current content.
    fn import(&self, source: &Path) -> Result<PathBuf, ForgeError> {
        let src = path_str(source)?;
        let dest = self
            .data_dir
            .join("imports")
            .join(format!("{:016x}", fnv1a(src.as_bytes())));
        // Measured before anything is created, cleared or copied.
        check_import_size(source, self.access.import)?;
        if !dest.join(".git").exists() {
            std::fs::create_dir_all(&dest).map_err(io_err("creating the import repository"))?;
            git(
                &dest,
                &["init", "--quiet", "--initial-branch", IMPORT_BRANCH],
            )?;
        } else {
            clear_except_git(&dest)?;
        }
        copy_tree(source, source, &dest)?;
        git(&dest, &["add", "--all"])?;
        if has_staged_changes(&dest)? {
            let message = format!("Import {}", source.display());
            git(&dest, &["commit", "--quiet", "--no-verify", "-m", &message])?;
        } else if git(&dest, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_err() {
            // An empty folder still needs a commit to branch from.
            git(
                &dest,
                &[
                    "commit",
                    "--quiet",
                    "--no-verify",
                    "--allow-empty",
                    "-m",
                    "Import (empty folder)",
                ],
            )?;
        }
        Ok(dest)
    }

    /// Stages everything in the worktree and commits it as the bot; `None` when nothing changed.
    pub fn commit(&self, ws: &Workspace, message: &str) -> Result<Option<String>, ForgeError> {
        git(&ws.path, &["add", "--all"])?;
        if !has_staged_changes(&ws.path)? {
            return Ok(None);
        }
        let message = if message.trim().is_empty() {
            "Atlasia: update"
        } else {
            message
        };
        git(
            &ws.path,
            &["commit", "--quiet", "--no-verify", "-m", message],
        )?;
        git(&ws.path, &["rev-parse", "HEAD"]).map(Some)
    }

    /// Drops uncommitted changes in the worktree, ignored files included (build output,
    /// bytecode caches): a step restarts from exactly the branch's last commit.
    pub fn discard_changes(&self, ws: &Workspace) -> Result<(), ForgeError> {
        git(&ws.path, &["reset", "--quiet", "--hard", "HEAD"])?;
        git(&ws.path, &["clean", "--quiet", "-fdx"])?;
        Ok(())
    }

    /// Paths changed in the worktree since the last commit (added, modified, deleted,
    /// untracked; both sides of a rename), relative to the worktree.
    pub fn changed_paths(&self, ws: &Workspace) -> Result<Vec<String>, ForgeError> {
        let out = git_raw_ok(
            &ws.path,
            &["status", "--porcelain=v1", "-z", "--untracked-files=all"],
        )?;
        let mut paths = Vec::new();
        let mut fields = out.split('\0').filter(|f| !f.is_empty());
        while let Some(entry) = fields.next() {
            let (code, path) = entry.split_at(entry.len().min(3));
            paths.push(path.to_owned());
            // A rename or copy is followed by its source path.
            if (code.starts_with('R') || code.starts_with('C'))
                && let Some(from) = fields.next()
            {
                paths.push(from.to_owned());
            }
        }
        Ok(paths)
    }

    /// `path` as committed at the bolt's base commit: the repository owner's version, whatever
    /// the bolt changed since. `None` when it does not exist there.
    pub fn file_at_base(&self, ws: &Workspace, path: &str) -> Option<String> {
        git_raw_ok(&ws.path, &["show", &format!("{}:{path}", ws.base_commit)]).ok()
    }

    /// The worktree's HEAD commit id.
    pub fn head(&self, ws: &Workspace) -> Result<String, ForgeError> {
        git(&ws.path, &["rev-parse", "HEAD"])
    }

    /// The full message of the branch's head commit.
    pub fn head_message(&self, ws: &Workspace) -> Result<String, ForgeError> {
        git(&ws.path, &["log", "-1", "--format=%B"])
    }

    /// Moves the branch back one commit and drops the work (the commit of a step whose
    /// completion was never recorded). Refuses to go below the bolt's base commit.
    pub fn drop_head_commit(&self, ws: &Workspace) -> Result<(), ForgeError> {
        let head = git(&ws.path, &["rev-parse", "HEAD"])?;
        if head == ws.base_commit {
            return Ok(());
        }
        git(&ws.path, &["reset", "--quiet", "--hard", "HEAD~1"])?;
        git(&ws.path, &["clean", "--quiet", "-fd"])?;
        Ok(())
    }

    /// Tracked files of the worktree, at most `max`.
    pub fn files(&self, ws: &Workspace, max: usize) -> Result<Vec<String>, ForgeError> {
        let all = git(&ws.path, &["ls-files"])?;
        Ok(all.lines().take(max).map(str::to_owned).collect())
    }

    /// `git diff --stat base..HEAD`.
    pub fn diff_stat(&self, ws: &Workspace) -> Result<String, ForgeError> {
        let range = format!("{}..HEAD", ws.base_commit);
        git(
            &ws.path,
            &["diff", "--no-color", "--no-ext-diff", "--stat", &range],
        )
    }

    /// The unified diff `base..HEAD`, as shown with the pull request.
    pub fn unified_diff(&self, ws: &Workspace) -> Result<String, ForgeError> {
        let range = format!("{}..HEAD", ws.base_commit);
        git_raw_ok(&ws.path, &["diff", "--no-color", "--no-ext-diff", &range])
    }

    /// The recorded workspace of `run_id`, when its worktree still exists.
    pub fn existing(&self, run_id: &str) -> Option<Workspace> {
        let bytes = std::fs::read(self.meta_file(run_id)).ok()?;
        let ws: Workspace = serde_json::from_slice(&bytes).ok()?;
        ws.path.exists().then_some(ws)
    }

    /// Removes a finished bolt's worktree (the branch stays: the pull request points at it).
    pub fn remove(&self, ws: &Workspace) -> Result<(), ForgeError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ws.path.exists() {
            let wt = path_str(&ws.path)?;
            if let Err(e) = git(&ws.repo, &["worktree", "remove", "--force", wt]) {
                tracing::warn!(error = %e, "git worktree remove failed; deleting the directory");
            }
            if ws.path.exists() {
                std::fs::remove_dir_all(&ws.path).map_err(io_err("deleting the worktree"))?;
            }
        }
        git(&ws.repo, &["worktree", "prune"])?;
        if let Some(run_id) = ws.path.file_name().and_then(|n| n.to_str()) {
            let _ = std::fs::remove_file(self.meta_file(run_id));
        }
        Ok(())
    }
}

fn validate_run_id(run_id: &str) -> Result<(), ForgeError> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 128
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ForgeError::Invalid {
            what: "run id",
            value: run_id.to_owned(),
        })
    }
}

fn validate_branch(branch: &str) -> Result<(), ForgeError> {
    let ok = !branch.starts_with('-')
        && git_output(Path::new("."), &["check-ref-format", "--branch", branch])
            .is_ok_and(|out| out.status.success());
    if ok {
        Ok(())
    } else {
        Err(ForgeError::Invalid {
            what: "branch name",
            value: branch.to_owned(),
        })
    }
}

/// True only when `dir` is the top level of a (non-bare) repository: a folder nested inside
/// another repository (the bundled examples inside a clone of this project) is imported instead,
/// so a bolt never creates branches in the enclosing project.
fn is_repo_root(dir: &Path) -> bool {
    match git(dir, &["rev-parse", "--show-toplevel"]) {
        Ok(top) => Path::new(&top).canonicalize().is_ok_and(|top| top == dir),
        Err(_) => false,
    }
}

fn has_staged_changes(dir: &Path) -> Result<bool, ForgeError> {
    // `diff --cached --quiet` exits 1 when there are changes; an unborn HEAD counts as changed
    // when the index has entries.
    if git(dir, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_err() {
        return Ok(!git(dir, &["ls-files"])?.is_empty());
    }
    let out = git_output(dir, &["diff", "--cached", "--quiet"])?;
    match out.status.code() {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        _ => Err(git_failure(&["diff", "--cached", "--quiet"], &out)),
    }
}

fn path_str(path: &Path) -> Result<&str, ForgeError> {
    path.to_str().ok_or_else(|| ForgeError::Invalid {
        what: "path (not UTF-8)",
        value: path.display().to_string(),
    })
}

/// A stable 64-bit FNV-1a hash: import directory names must not change between releases, which
/// `std`'s `DefaultHasher` does not promise.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn clear_except_git(dir: &Path) -> Result<(), ForgeError> {
    for entry in std::fs::read_dir(dir).map_err(io_err("reading the import repository"))? {
        let entry = entry.map_err(io_err("reading the import repository"))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let path = entry.path();
        let meta =
            std::fs::symlink_metadata(&path).map_err(io_err("reading the import repository"))?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .map_err(io_err(format!("clearing {}", path.display())))?;
    }
    Ok(())
}

/// Counts what [`copy_tree`] would copy and refuses a folder over `limits` before anything is
/// copied; stops walking as soon as a cap is passed.
fn check_import_size(source: &Path, limits: ImportLimits) -> Result<(), ForgeError> {
    let (mut files, mut bytes) = (0_u64, 0_u64);
    let mut pending = vec![source.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?
        {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            let kind = entry
                .file_type()
                .map_err(io_err(format!("reading {}", entry.path().display())))?;
            let name = entry.file_name();
            if kind.is_dir() {
                if !IMPORT_EXCLUDES.iter().any(|x| name == *x) {
                    pending.push(entry.path());
                }
                continue;
            }
            if !(kind.is_file() || kind.is_symlink()) || name == ".git" {
                continue;
            }
            files += 1;
            if kind.is_file() {
                let len = entry
                    .metadata()
                    .map_err(io_err(format!("reading {}", entry.path().display())))?
                    .len();
                bytes = bytes.saturating_add(len);
            }
            let what = if files > limits.max_files {
                format!("more than {} files", limits.max_files)
            } else if bytes > limits.max_bytes {
                format!("more than {} bytes", limits.max_bytes)
            } else {
                continue;
            };
            return Err(ForgeError::ImportTooLarge {
                folder: source.to_path_buf(),
                what,
            });
        }
    }
    Ok(())
}

/// True when symlink `link` (inside `root`) points at something inside `root`, judged on the
/// text of its target (never by following it): absolute targets and `..` that climb out are not.
fn link_stays_inside(root: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let Ok(rel) = link.parent().unwrap_or(root).strip_prefix(root) else {
        return false;
    };
    let mut depth = rel.components().count();
    for part in target.components() {
        match part {
            std::path::Component::ParentDir if depth == 0 => return false,
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

/// Copies files, directories and symlinks (as symlinks, and only those pointing inside the
/// imported folder `root`: the import never carries a way out of it), skipping
/// `IMPORT_EXCLUDES` at any depth and special files (devices, FIFOs, sockets).
fn copy_tree(root: &Path, from: &Path, to: &Path) -> Result<(), ForgeError> {
    for entry in std::fs::read_dir(from).map_err(io_err(format!("reading {}", from.display())))? {
        let entry = entry.map_err(io_err(format!("reading {}", from.display())))?;
        let name = entry.file_name();
        let src = entry.path();
        let dst = to.join(&name);
        let kind = entry
            .file_type()
            .map_err(io_err(format!("reading {}", src.display())))?;
        if kind.is_dir() {
            if IMPORT_EXCLUDES.iter().any(|x| name == *x) {
                continue;
            }
            std::fs::create_dir_all(&dst).map_err(io_err(format!("creating {}", dst.display())))?;
            copy_tree(root, &src, &dst)?;
        } else if kind.is_symlink() {
            if name == ".git" {
                continue;
            }
            let target =
                std::fs::read_link(&src).map_err(io_err(format!("reading {}", src.display())))?;
            if !link_stays_inside(root, &src, &target) {
                tracing::warn!(link = %src.display(), "import skips a symlink that points outside the folder");
                continue;
            }
            std::os::unix::fs::symlink(target, &dst)
                .map_err(io_err(format!("creating {}", dst.display())))?;
        } else if kind.is_file() {
            // A `.git` file marks a submodule or linked worktree checkout: not content.
            if name == ".git" {
                continue;
            }
            std::fs::copy(&src, &dst).map_err(io_err(format!("copying {}", src.display())))?;
        }
    }
    Ok(())
}

/// Runs git in `dir` with the fixed safety options and bot identity.
fn git_output(dir: &Path, args: &[&str]) -> Result<Output, ForgeError> {
    // A root server hands bolt worktrees to the sandbox's unprivileged uid (see
    // `sandbox::owner`); git's ownership check must still let the forge work in the one
    // directory it was pointed at, and only there.
    let safe = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .arg("-c")
        .arg(format!("safe.directory={}", safe.display()))
        // The user's hooks must not run on the bot's commits or checkouts, signing would prompt
        // for keys, and the identity is fixed so no global git config is needed.
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ])
        .args([
            "-c",
            &format!("user.name={BOT_NAME}"),
            "-c",
            &format!("user.email={BOT_EMAIL}"),
        ])
        .args(["-c", "core.quotePath=false", "-c", "core.fsmonitor=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", BOT_NAME)
        .env("GIT_AUTHOR_EMAIL", BOT_EMAIL)
        .env("GIT_COMMITTER_NAME", BOT_NAME)
        .env("GIT_COMMITTER_EMAIL", BOT_EMAIL)
        // Inherited repository overrides (set when we run inside a git hook) would point every
        // command at the wrong repository.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_COMMON_DIR")
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running git"))
}

fn git_failure(args: &[&str], out: &Output) -> ForgeError {
    ForgeError::Git {
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// Runs git and returns its stdout untouched, failing on a non-zero exit.
fn git_raw_ok(dir: &Path, args: &[&str]) -> Result<String, ForgeError> {
    let out = git_output(dir, args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(git_failure(args, &out))
    }
}

/// Runs git and returns its trimmed stdout, failing on a non-zero exit.
fn git(dir: &Path, args: &[&str]) -> Result<String, ForgeError> {
    git_raw_ok(dir, args).map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names() {
        assert_eq!(branch_name(Some(42), "x"), "ai/issue-42");
        assert_eq!(
            branch_name(None, "0190ABCD-ef01-7000-8000-000000000000"),
            "ai/run-00000000"
        );
        assert_eq!(branch_name(Some(0), "deadbeefcafe"), "ai/run-beefcafe");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
