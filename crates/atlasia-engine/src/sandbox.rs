//! The sandboxed command runner used by the Tester (and the Developer's allowed commands): a
//! `sh -c` subprocess in the bolt's worktree, with a scrubbed environment, a timeout that kills
//! the whole process group (grandchildren included), and output capped to its tail.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Default timeout for a verify command (10 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Default output kept (the tail), in bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;

/// How long to wait for the output pipe to close once the command has ended and its group has
/// been killed. Only a process that left the group (`setsid`) can hold it open past that.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Substrings that mark an environment variable as a credential; such variables never reach the
/// child, even when allow-listed.
const SECRET_MARKERS: [&str; 6] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// A shell command line, run as `sh -c <command_line>`.
    pub command_line: String,
    /// Working directory (the bolt's worktree).
    pub cwd: PathBuf,
    /// Names of extra environment variables to pass through from this process.
    pub env_allow: Vec<String>,
    /// Variables to set explicitly (e.g. a shared `CARGO_TARGET_DIR`); the secret filter applies.
    pub env_set: Vec<(String, String)>,
}

impl CommandSpec {
    /// A command line in a working directory, with the default environment.
    pub fn new(command_line: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            command_line: command_line.into(),
            cwd: cwd.into(),
            env_allow: Vec::new(),
            env_set: Vec::new(),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The exit code; `None` when killed by a signal (including our timeout kill).
    pub exit_code: Option<i32>,
    /// True when the timeout fired and the process group was killed.
    pub timed_out: bool,
    /// Wall-clock time from spawn to exit.
    pub duration: Duration,
    /// The last `max_output` bytes of stdout and stderr interleaved, cut on a UTF-8 boundary,
    /// prefixed by a marker when earlier output was dropped.
    pub output_tail: String,
}

impl CommandOutcome {
    /// True when the command exited with code 0 before the timeout.
    pub fn success(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }
}

/// Why a command could not be run at all (a failing command is an outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The working directory does not exist or is not a directory.
    #[error("working directory {0} is not a directory")]
    Cwd(PathBuf),
    /// Creating the output pipe or the scratch HOME failed.
    #[error("sandbox setup failed: {0}")]
    Setup(#[source] std::io::Error),
    /// The shell could not be started.
    #[error("could not start the command: {0}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for the command failed.
    #[error("waiting for the command failed: {0}")]
    Wait(#[source] std::io::Error),
    /// The caller cancelled; the command's process group was killed.
    #[error("the command was cancelled")]
    Cancelled,
}

/// True when a variable name looks like it holds a credential.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// Runs `spec` with `timeout`, keeping the last `max_output` bytes of output.
pub async fn run(
    spec: &CommandSpec,
    timeout: Duration,
    max_output: usize,
) -> Result<CommandOutcome, SandboxError> {
    run_until(spec, timeout, max_output, &CancellationToken::new()).await
}

/// [`run`], but `cancel` ends the command early: its whole process group is killed (as on a
/// timeout) and the call returns [`SandboxError::Cancelled`].
pub async fn run_until(
    spec: &CommandSpec,
    timeout: Duration,
    max_output: usize,
    cancel: &CancellationToken,
) -> Result<CommandOutcome, SandboxError> {
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    if !spec.cwd.is_dir() {
        return Err(SandboxError::Cwd(spec.cwd.clone()));
    }
    let home = ScratchHome::create().map_err(SandboxError::Setup)?;

    // One pipe for both streams keeps stdout and stderr interleaved in the order they were
    // written, which is what a human reading a failing test log expects.
    let (reader, writer) = std::io::pipe().map_err(SandboxError::Setup)?;
    let writer_err = writer.try_clone().map_err(SandboxError::Setup)?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
        .map_err(SandboxError::Setup)?;

    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command_line)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(environment(spec, home.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err))
        // A fresh process group lets the timeout kill everything the command started.
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let spawned = command.spawn();
    // The command holds the parent's copies of the pipe's write end; they must close, or the
    // reader never sees end-of-file.
    drop(command);
    let mut child = spawned.map_err(SandboxError::Spawn)?;
    let pgid = child.id();

    let drain = tokio::spawn(read_tail(reader, max_output));

    let waited = tokio::select! {
        w = tokio::time::timeout(timeout, child.wait()) => Some(w),
        () = cancel.cancelled() => None,
    };
    let (status, timed_out) = match waited {
        Some(Ok(exited)) => (exited.map_err(SandboxError::Wait)?, false),
        elapsed_or_cancelled => {
            if let Some(pgid) = pgid {
                kill_group(pgid).await;
            }
            // Kill the leader directly too, in case the group kill could not be delivered.
            let _ = child.start_kill();
            let status = child.wait().await.map_err(SandboxError::Wait)?;
            if elapsed_or_cancelled.is_none() {
                drain.abort();
                return Err(SandboxError::Cancelled);
            }
            (status, true)
        }
    };
    let duration = started.elapsed();
    // Background processes the command left behind would outlive the sandbox and hold the
    // output pipe open; nothing started by a verify command should survive it.
    if let Some(pgid) = pgid {
        kill_group(pgid).await;
    }

    let output_tail = match tokio::time::timeout(DRAIN_GRACE, drain).await {
        Ok(Ok(tail)) => tail.render(),
        Ok(Err(join)) => format!("[output capture failed: {join}]"),
        Err(_) => "[output capture did not finish: a process escaped the sandbox group]".to_owned(),
    };
    drop(home);

    Ok(CommandOutcome {
        exit_code: if timed_out { None } else { status.code() },
        timed_out,
        duration,
        output_tail,
    })
}

/// The child's whole environment: a small allowlist, never anything that looks like a secret.
fn environment(spec: &CommandSpec, home: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let parent = |name: &str| std::env::var(name).ok();
    env.push((
        "PATH".to_owned(),
        parent("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned()),
    ));
    env.push(("HOME".to_owned(), home.display().to_string()));
    env.push((
        "LANG".to_owned(),
        parent("LANG").unwrap_or_else(|| "C.UTF-8".to_owned()),
    ));
    env.push(("TERM".to_owned(), "dumb".to_owned()));
    // HOME points at a scratch directory, so the toolchain has to be named explicitly for
    // `cargo test` (and rustup's proxies) to keep working.
    let real_home = parent("HOME").map(PathBuf::from);
    for (name, default_dir) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
        let value = parent(name).or_else(|| {
            let dir = real_home.as_ref()?.join(default_dir);
            dir.is_dir().then(|| dir.display().to_string())
        });
        if let Some(value) = value {
            env.push((name.to_owned(), value));
        }
    }
    for name in &spec.env_allow {
        if let Some(value) = parent(name) {
            env.push((name.clone(), value));
        }
    }
    env.extend(spec.env_set.iter().cloned());
    env.retain(|(name, _)| !is_secret_name(name));
    env
}

/// SIGKILL to every process in the group. Uses procps' `kill` because the workspace forbids
/// `unsafe` (no direct `kill(2)`) and dash's builtin does not take a negative pid after `--`.
async fn kill_group(pgid: u32) {
    let result = tokio::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    // "No such process" is the normal case when the group already exited.
    if let Err(e) = result {
        tracing::warn!(pgid, error = %e, "could not run kill for the sandbox process group");
    }
}

/// The last `cap` bytes of a stream, plus how many were dropped before them.
struct Tail {
    buf: VecDeque<u8>,
    dropped: u64,
}

impl Tail {
    fn render(self) -> String {
        let bytes: Vec<u8> = self.buf.into_iter().collect();
        // The cut may have landed inside a multi-byte character: skip its continuation bytes.
        let skip = if self.dropped > 0 {
            bytes
                .iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count()
        } else {
            0
        };
        let text = String::from_utf8_lossy(bytes.get(skip..).unwrap_or_default());
        let dropped = self.dropped + skip as u64;
        if dropped > 0 {
            format!("[... {dropped} earlier bytes of output truncated ...]\n{text}")
        } else {
            text.into_owned()
        }
    }
}

async fn read_tail(mut reader: tokio::net::unix::pipe::Receiver, cap: usize) -> Tail {
    let mut tail = Tail {
        buf: VecDeque::with_capacity(cap.min(1 << 20)),
        dropped: 0,
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                tail.buf.extend(chunk.iter().take(n));
                let excess = tail.buf.len().saturating_sub(cap);
                if excess > 0 {
                    tail.buf.drain(..excess);
                    tail.dropped += excess as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tail
}

/// A per-command HOME, so that tools cannot read the operator's dotfiles (credentials, git
/// config) and leave nothing behind.
struct ScratchHome(PathBuf);

impl ScratchHome {
    fn create() -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("atlasia-sandbox-home-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised() {
        assert!(is_secret_name("MY_API_KEY"));
        assert!(is_secret_name("github_token"));
        assert!(is_secret_name("DB_PASSWORD"));
        assert!(!is_secret_name("PATH"));
    }

    #[test]
    fn tail_cut_is_utf8_safe() {
        let tail = Tail {
            buf: "éé".as_bytes()[1..].iter().copied().collect(),
            dropped: 1,
        };
        let text = tail.render();
        assert!(text.ends_with('é'));
        assert!(text.contains("2 earlier bytes"));
        assert!(!text.contains('\u{FFFD}'));
    }
}
