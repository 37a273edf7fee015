//! The sandbox every command a bolt runs goes through (the Tester's verify commands, the
//! Developer's `run_command`): `sh -c` in the bolt's worktree inside fresh namespaces (see
//! [`bwrap`] for what is visible), with resource limits, an unprivileged uid when the server is
//! root, a scrubbed environment, a timeout that kills everything the command started, and the
//! output capped to its tail. Two backends apply that one policy: the system's bubblewrap
//! ([`bwrap`]) and, with nothing installed, in-process namespaces ([`inprocess`]).
//!
//! [`Sandbox::start`] probes once that the sandbox works (by default bubblewrap first, then the
//! in-process backend). When neither does, every command is refused with
//! [`SandboxError::Unavailable`] unless the operator set `sandbox.mode = "none"` explicitly.

pub mod bwrap;
pub mod config;
pub mod inprocess;
mod owner;

pub use config::{Backend, Limits, Mode, SandboxConfig};

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// How long the start-up probe (`true` in the sandbox) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Substrings that mark an environment variable as a credential; such variables never reach the
/// child, even when allow-listed.
const SECRET_MARKERS: [&str; 6] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];

/// Where the sandbox's helper binaries may live: they must be visible inside it (under `/usr`).
const HELPER_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// A shell command line, run as `sh -c <command_line>`.
    pub command_line: String,
    /// Working directory (the bolt's worktree): the only writable place besides `writable`.
    pub cwd: PathBuf,
    /// Names of extra environment variables to pass through from this process.
    pub env_allow: Vec<String>,
    /// Variables to set explicitly (e.g. a shared `CARGO_TARGET_DIR`); the secret filter applies.
    pub env_set: Vec<(String, String)>,
    /// Extra writable directories (the shared build cache); created when missing.
    pub writable: Vec<PathBuf>,
    /// Keep the network (the repository's `.atlasia.toml` `[sandbox] network = true`).
    pub network: bool,
}

impl CommandSpec {
    /// A command line in a working directory, with the default environment and no network.
    pub fn new(command_line: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            command_line: command_line.into(),
            cwd: cwd.into(),
            env_allow: Vec::new(),
            env_set: Vec::new(),
            writable: Vec::new(),
            network: false,
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
    /// The sandbox does not work here and the operator did not opt out.
    #[error("sandbox unavailable: {0}; install bubblewrap or set sandbox.mode = \"none\"")]
    Unavailable(String),
    /// Creating the output pipe, the scratch HOME or handing the tree to the sandbox uid failed.
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

/// Whether commands can run, as found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A backend works (see [`Sandbox::backend`]): every command is isolated.
    Enabled,
    /// `sandbox.mode = "none"`: commands run unisolated, by the operator's choice.
    Disabled,
    /// The sandbox does not work; commands are refused. The reason.
    Unavailable(String),
}

/// The labels of [`Sandbox::label`].
pub const LABELS: [&str; 4] = ["bwrap", "inprocess", "none", "unavailable"];

/// The backend isolating commands, with what it resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Engine {
    Bwrap(bwrap::Tools),
    InProcess(inprocess::Tools),
}

impl Engine {
    fn backend(&self) -> Backend {
        match self {
            Self::Bwrap(_) => Backend::Bwrap,
            Self::InProcess(_) => Backend::InProcess,
        }
    }

    /// True when commands switch to the unprivileged uid (the server is root).
    fn drops_privileges(&self) -> bool {
        match self {
            Self::Bwrap(t) => t.setpriv.is_some(),
            Self::InProcess(t) => t.setpriv.is_some(),
        }
    }

    /// How the backend is named in logs and the probe's errors.
    fn describe(&self) -> String {
        match self {
            Self::Bwrap(t) => t.bwrap.display().to_string(),
            Self::InProcess(_) => "the in-process sandbox".to_owned(),
        }
    }
}

/// The configured sandbox; cheap to clone, shared by every worker of a process.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SandboxConfig,
    status: Status,
    engine: Option<Engine>,
    /// Extra writable directories already handed to the sandbox uid in this process.
    prepared: Mutex<HashSet<PathBuf>>,
}

impl PartialEq for Sandbox {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.config == other.inner.config && self.inner.status == other.inner.status)
    }
}

impl Eq for Sandbox {}

impl Default for Sandbox {
    /// The default backend choice and limits, resolved but not probed.
    fn default() -> Self {
        Self::new(SandboxConfig::default())
    }
}

impl Sandbox {
    /// Resolves the backend for `config` without running anything (the first of
    /// [`Backend::Auto`]'s candidates that resolves); see [`Self::start`].
    pub fn new(config: SandboxConfig) -> Self {
        let (status, engine) = match config.mode {
            Mode::None => (Status::Disabled, None),
            Mode::Bwrap => {
                let mut reasons = Vec::new();
                let mut found = None;
                for backend in candidates(config.backend) {
                    match resolve(&config, backend) {
                        Ok(engine) => {
                            found = Some(engine);
                            break;
                        }
                        Err(why) => reasons.push(why),
                    }
                }
                match found {
                    Some(engine) => (Status::Enabled, Some(engine)),
                    None => (Status::Unavailable(reasons.join("; ")), None),
                }
            }
        };
        Self::with(config, status, engine)
    }

    fn with(config: SandboxConfig, status: Status, engine: Option<Engine>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                status,
                engine,
                prepared: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Resolves, then proves the sandbox works by running `true` in it once — for
    /// `backend = "auto"` bubblewrap first, then the in-process backend; logs the outcome (a
    /// warning for `none` and for an unusable sandbox) and sets the `sandbox_enabled` and
    /// `sandbox_mode{mode}` gauges.
    pub async fn start(config: SandboxConfig) -> Self {
        let sandbox = match config.mode {
            Mode::None => Self::new(config),
            Mode::Bwrap => {
                let mut reasons = Vec::new();
                let mut found = None;
                for backend in candidates(config.backend) {
                    let engine = match resolve(&config, backend) {
                        Ok(engine) => engine,
                        Err(why) => {
                            reasons.push(why);
                            continue;
                        }
                    };
                    let candidate = Self::with(config.clone(), Status::Enabled, Some(engine));
                    match candidate.probe().await {
                        Ok(()) => {
                            found = Some(candidate);
                            break;
                        }
                        Err(why) => reasons.push(why),
                    }
                }
                found.unwrap_or_else(|| {
                    Self::with(config, Status::Unavailable(reasons.join("; ")), None)
                })
            }
        };
        match sandbox.status() {
            Status::Enabled => tracing::info!(
                backend = sandbox.label(),
                uid = sandbox
                    .inner
                    .engine
                    .as_ref()
                    .filter(|e| e.drops_privileges())
                    .map(|_| sandbox.inner.config.run_as.0),
                "command sandbox works"
            ),
            Status::Disabled => tracing::warn!(
                "sandbox.mode = \"none\": commands of bolts run WITHOUT isolation, as this \
                 server's user, with its files, network and processes in view"
            ),
            Status::Unavailable(why) => tracing::warn!(
                reason = %why,
                "command sandbox unavailable: bolts will refuse to run commands \
                 (install bubblewrap or set sandbox.mode = \"none\")"
            ),
        }
        sandbox.record_metrics();
        sandbox
    }

    /// The settings it was built from.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The bubblewrap binary in use, when bubblewrap is the backend.
    pub fn bwrap_binary(&self) -> Option<&Path> {
        match &self.inner.engine {
            Some(Engine::Bwrap(t)) => Some(t.bwrap.as_path()),
            _ => None,
        }
    }

    /// The backend isolating commands (`Bwrap` or `InProcess`), when enabled.
    pub fn backend(&self) -> Option<Backend> {
        self.inner.engine.as_ref().map(Engine::backend)
    }

    /// A label from a closed set ([`LABELS`]), for metrics, health and the doctor: the backend
    /// in use (`bwrap`, `inprocess`), `none` or `unavailable`.
    pub fn label(&self) -> &'static str {
        match (self.status(), self.backend()) {
            (Status::Enabled, Some(Backend::InProcess)) => "inprocess",
            (Status::Enabled, _) => "bwrap",
            (Status::Disabled, _) => "none",
            (Status::Unavailable(_), _) => "unavailable",
        }
    }

    /// Whether commands can run.
    pub fn status(&self) -> &Status {
        &self.inner.status
    }

    /// Sets `sandbox_enabled` (1 when commands are isolated) and `sandbox_mode{mode}` (1 for the
    /// current of `bwrap`, `inprocess`, `none`, `unavailable`).
    pub fn record_metrics(&self) {
        let label = self.label();
        let enabled = matches!(self.status(), Status::Enabled);
        metrics::gauge!("sandbox_enabled").set(if enabled { 1.0 } else { 0.0 });
        for mode in LABELS {
            metrics::gauge!("sandbox_mode", "mode" => mode).set(if mode == label {
                1.0
            } else {
                0.0
            });
        }
    }

    async fn probe(&self) -> Result<(), String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("atlasia-sandbox-probe-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let outcome = self
            .run(&CommandSpec::new("true", &dir), PROBE_TIMEOUT, 4096)
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        let bwrap = self
            .inner
            .engine
            .as_ref()
            .map_or_else(String::new, Engine::describe);
        match outcome {
            Ok(o) if o.success() => Ok(()),
            Ok(o) if o.timed_out => Err(format!(
                "{bwrap} did not finish `true` in {} s",
                PROBE_TIMEOUT.as_secs()
            )),
            Ok(o) => Err(format!(
                "{bwrap} cannot run `true` (exit {}): {}",
                o.exit_code
                    .map_or_else(|| "by signal".to_owned(), |c| c.to_string()),
                one_line(&o.output_tail)
            )),
            Err(e) => Err(format!("{bwrap}: {e}")),
        }
    }

    /// Runs `spec` with `timeout`, keeping the last `max_output` bytes of output.
    pub async fn run(
        &self,
        spec: &CommandSpec,
        timeout: Duration,
        max_output: usize,
    ) -> Result<CommandOutcome, SandboxError> {
        self.run_until(spec, timeout, max_output, &CancellationToken::new())
            .await
    }

    /// [`Self::run`], but `cancel` ends the command early: everything it started is killed (as
    /// on a timeout) and the call returns [`SandboxError::Cancelled`].
    pub async fn run_until(
        &self,
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
        match (self.status(), &self.inner.engine) {
            (Status::Unavailable(why), _) => Err(SandboxError::Unavailable(why.clone())),
            (Status::Disabled, _) | (_, None) => {
                let home = ScratchHome::create().map_err(SandboxError::Setup)?;
                let mut command = tokio::process::Command::new("sh");
                command
                    .arg("-c")
                    .arg(&spec.command_line)
                    .current_dir(&spec.cwd)
                    .env_clear()
                    .envs(environment(spec, home.path()));
                let out = execute(command, timeout, max_output, cancel).await;
                drop(home);
                out
            }
            (Status::Enabled, Some(engine)) => {
                let p = self.prepare(engine, spec)?;
                let req = bwrap::Request {
                    command_line: &spec.command_line,
                    cwd: &p.cwd,
                    writable: &p.writable,
                    toolchains: &p.toolchains,
                    network: spec.network,
                };
                match engine {
                    Engine::Bwrap(tools) => {
                        let mut command = tokio::process::Command::new(&tools.bwrap);
                        command
                            .args(bwrap::args(tools, &self.inner.config, &req))
                            .current_dir(&p.cwd)
                            .env_clear()
                            .envs(p.env);
                        execute(command, timeout, max_output, cancel).await
                    }
                    Engine::InProcess(tools) => {
                        let container = inprocess::container(tools, &self.inner.config, &req)
                            .map_err(|e| SandboxError::Setup(std::io::Error::other(e)))?;
                        let (program, args) =
                            inprocess::argv(tools, &self.inner.config, &spec.command_line);
                        let job = inprocess::Job {
                            container,
                            program,
                            args,
                            env: p.env,
                            cwd: p.cwd.clone(),
                        };
                        inprocess::execute(job, timeout, max_output, cancel).await
                    }
                }
            }
        }
    }

    /// What both backends need for `spec`: canonical paths, the environment, the toolchain
    /// homes, and the trees the command writes handed to the sandbox uid first.
    fn prepare(&self, engine: &Engine, spec: &CommandSpec) -> Result<Prepared, SandboxError> {
        let cwd = spec.cwd.canonicalize().map_err(SandboxError::Setup)?;
        let mut writable = Vec::with_capacity(spec.writable.len());
        for dir in &spec.writable {
            std::fs::create_dir_all(dir).map_err(SandboxError::Setup)?;
            writable.push(dir.canonicalize().map_err(SandboxError::Setup)?);
        }
        if engine.drops_privileges() {
            let (uid, gid) = self.inner.config.run_as;
            owner::give_tree(&cwd, uid, gid).map_err(SandboxError::Setup)?;
            for dir in &writable {
                // A shared cache is large: hand it over once per process; what the sandbox
                // writes there afterwards is the sandbox uid's already.
                let first = self
                    .inner
                    .prepared
                    .lock()
                    .map(|mut done| done.insert(dir.clone()))
                    .unwrap_or(true);
                if first {
                    owner::give_tree(dir, uid, gid).map_err(SandboxError::Setup)?;
                }
            }
        }
        let mut env = environment(spec, Path::new(bwrap::SANDBOX_HOME));
        // The git directory belongs to the server's user, not to the sandbox's: read-only git
        // (`status`, `diff`, `log`) must still accept this worktree.
        env.extend([
            ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_KEY_0".to_owned(), "safe.directory".to_owned()),
            ("GIT_CONFIG_VALUE_0".to_owned(), cwd.display().to_string()),
        ]);
        let toolchains: Vec<PathBuf> = env
            .iter()
            .filter(|(name, _)| name == "CARGO_HOME" || name == "RUSTUP_HOME")
            .filter_map(|(_, value)| Path::new(value).canonicalize().ok())
            .filter(|p| p.is_dir())
            .collect();
        Ok(Prepared {
            cwd,
            writable,
            toolchains,
            env,
        })
    }
}

/// [`Sandbox::prepare`]'s result.
struct Prepared {
    cwd: PathBuf,
    writable: Vec<PathBuf>,
    toolchains: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

/// The backends `backend` stands for, in the order they are tried.
fn candidates(backend: Backend) -> Vec<Backend> {
    match backend {
        Backend::Auto => vec![Backend::Bwrap, Backend::InProcess],
        other => vec![other],
    }
}

/// Resolves one concrete backend; the error names it.
fn resolve(config: &SandboxConfig, backend: Backend) -> Result<Engine, String> {
    match backend {
        Backend::InProcess => {
            let setpriv = match owner::effective_uid() {
                Some(0) | None => Some(helper("setpriv")?),
                Some(_) => None,
            };
            let ids = match owner::effective_uid() {
                Some(0) | None => None,
                Some(uid) => Some((uid, owner::effective_gid().unwrap_or(uid))),
            };
            inprocess::resolve(helper("setsid")?, setpriv, ids)
                .map(Engine::InProcess)
                .map_err(|e| format!("in-process: {e}"))
        }
        Backend::Bwrap | Backend::Auto => resolve_tools(config).map(Engine::Bwrap),
    }
}

/// A util-linux helper under the directories the sandbox shows.
fn helper(name: &str) -> Result<PathBuf, String> {
    HELPER_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("`{name}` (util-linux) is not installed"))
}

/// True when a variable name looks like it holds a credential.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// Finds bwrap (a bare name in `PATH`), and `prlimit` (+ `setpriv` when root) under `/usr`.
fn resolve_tools(config: &SandboxConfig) -> Result<bwrap::Tools, String> {
    let bwrap = if config.bwrap_path.components().count() > 1 {
        config
            .bwrap_path
            .is_file()
            .then(|| config.bwrap_path.clone())
            .ok_or_else(|| format!("{} does not exist", config.bwrap_path.display()))?
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(HELPER_DIRS.iter().map(PathBuf::from))
            .map(|d| d.join(&config.bwrap_path))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "`{}` is not installed (not found in PATH)",
                    config.bwrap_path.display()
                )
            })?
    };
    let prlimit = helper("prlimit")?;
    let setpriv = match owner::effective_uid() {
        Some(0) | None => Some(helper("setpriv")?),
        Some(_) => None,
    };
    Ok(bwrap::Tools {
        bwrap,
        prlimit,
        setpriv,
    })
}

/// The first line of `text`, trimmed and bounded.
fn one_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// Spawns `command` (stdin closed, stdout and stderr into one pipe, its own process group),
/// waits with `timeout` or until `cancel`, and keeps the output's tail.
async fn execute(
    mut command: tokio::process::Command,
    timeout: Duration,
    max_output: usize,
    cancel: &CancellationToken,
) -> Result<CommandOutcome, SandboxError> {
    // One pipe for both streams keeps stdout and stderr interleaved in the order they were
    // written, which is what a human reading a failing test log expects.
    let (reader, writer) = std::io::pipe().map_err(SandboxError::Setup)?;
    let writer_err = writer.try_clone().map_err(SandboxError::Setup)?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
        .map_err(SandboxError::Setup)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err))
        // A fresh process group lets the timeout kill everything the command started (in the
        // sandbox: bwrap, whose death takes its whole PID namespace with it).
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
