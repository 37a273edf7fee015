//! The in-process backend: the policy of [`super::bwrap`] — same read-only system directories,
//! toolchains, masks, private `/tmp` and `HOME`, worktree the only writable bind with its git
//! directory read-only, fresh PID/IPC/UTS/cgroup (and, unless opted in, network) namespaces,
//! rlimits, `setpriv` to the unprivileged uid under root — built by the `hakoniwa` crate inside
//! this process, so that a machine without bubblewrap still runs every command sandboxed.
//!
//! hakoniwa forks a helper that sets the namespaces and mounts up and forks the command as PID 1
//! of the new PID namespace; both carry `PR_SET_PDEATHSIG = SIGKILL`. The death signal follows
//! the *thread* that forked, so every fork happens on one thread that lives as long as the
//! process ([`spawn`]): killing the helper (timeout, cancel) or the server takes the command's
//! PID 1 down, and with it everything in its namespace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hakoniwa::{Container, MountOptions, Namespace, Rlimit, Runctl, Stdio};
use tokio_util::sync::CancellationToken;

use super::bwrap::{self, Request, SANDBOX_HOME, SYSTEM_DIRS, TOOLCHAIN_SECRETS};
use super::config::SandboxConfig;
use super::{CommandOutcome, DRAIN_GRACE, SandboxError, read_tail};

/// The shell every command line runs in.
const SHELL: &str = "/bin/sh";

/// hakoniwa's exit code when the container itself (not the command) failed.
const CONTAINER_FAILURE: i32 = 125;

/// What the in-process backend needs, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// util-linux `setsid`: the command gets a session and process group of its own, so that
    /// `kill 0` in it cannot reach the server's process group.
    pub setsid: PathBuf,
    /// Set when the server runs as root: the command drops to `run_as` through it.
    pub setpriv: Option<PathBuf>,
    /// Set when the server is not root: an unprivileged user namespace mapping this uid/gid to
    /// itself (root needs none, and keeps the real uid so that `setpriv` can drop it).
    pub user_namespace: Option<(u32, u32)>,
}

/// Checks that the shell exists; the helpers are resolved by the caller.
pub fn resolve(
    setsid: PathBuf,
    setpriv: Option<PathBuf>,
    ids: Option<(u32, u32)>,
) -> Result<Tools, String> {
    if !Path::new(SHELL).is_file() {
        return Err(format!("{SHELL} does not exist"));
    }
    Ok(Tools {
        setsid,
        setpriv,
        user_namespace: ids,
    })
}

fn utf8(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))
}

/// The container for one command: the same mounts, masks and namespaces as [`bwrap::args`].
pub fn container(
    tools: &Tools,
    config: &SandboxConfig,
    req: &Request<'_>,
) -> Result<Container, String> {
    let mut c = Container::empty();
    for ns in [
        Namespace::Mount,
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Uts,
    ] {
        c.unshare(ns);
    }
    if Path::new("/proc/self/ns/cgroup").exists() {
        c.unshare(Namespace::Cgroup);
    }
    if !req.network {
        c.unshare(Namespace::Network);
    }
    if let Some((uid, gid)) = tools.user_namespace {
        c.unshare(Namespace::User);
        c.uidmap(uid);
        c.gidmap(gid);
        // Bind mounts inside a user namespace keep the flags the kernel locked on the source.
        c.runctl(Runctl::MountFallback);
    }
    c.hostname("atlasia-sandbox");
    c.procfsmount("/proc");
    c.devfsmount("/dev");
    // hakoniwa's root is a fresh 0700 directory: the sandbox uid must be able to cross it.
    c.dir("/", 0o755);

    // Host directories shown so far (what a hidden path must be masked under), and every
    // mount point (parents of later mounts that must not be re-moded).
    let mut shown: Vec<PathBuf> = Vec::new();
    let mut mounted: Vec<PathBuf> = Vec::new();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    c.symlink(utf8(&target)?, dir);
                }
            }
            Ok(m) if m.is_dir() => {
                c.bindmount_ro(dir, dir);
                shown.push(path.to_path_buf());
                mounted.push(path.to_path_buf());
            }
            _ => {}
        }
    }
    let tmp_size = config.limits.tmp_size_mb.saturating_mul(1024 * 1024);
    let tmpfs = MountOptions::NOSUID | MountOptions::NODEV;
    c.mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        tmpfs,
        Some(format!("mode=1777,size={tmp_size}")),
    );
    c.mount(
        "tmpfs",
        SANDBOX_HOME,
        "tmpfs",
        tmpfs,
        Some(format!("mode=0777,size={tmp_size}")),
    );
    mounted.extend([PathBuf::from("/tmp"), PathBuf::from(SANDBOX_HOME)]);
    for home in req.toolchains {
        let h = utf8(home)?;
        c.bindmount_ro(h, h);
        shown.push(home.clone());
        mounted.push(home.clone());
        for secret in TOOLCHAIN_SECRETS {
            let file = home.join(secret);
            if file.is_file() {
                c.bindmount_ro("/dev/null", utf8(&file)?);
            }
        }
    }
    // Hidden paths only need masking where a bind above would show them.
    for hidden in &config.hide {
        if !shown.iter().any(|s| hidden.starts_with(s)) {
            continue;
        }
        if hidden.is_dir() {
            c.mount(
                "tmpfs",
                utf8(hidden)?,
                "tmpfs",
                tmpfs,
                Some("mode=0700,size=4096".to_owned()),
            );
            mounted.push(hidden.clone());
        } else if hidden.exists() {
            c.bindmount_ro("/dev/null", utf8(hidden)?);
        }
    }
    for dir in req.writable {
        let d = utf8(dir)?;
        c.bindmount_rw(d, d);
        mounted.push(dir.clone());
    }
    let cwd = utf8(req.cwd)?;
    c.bindmount_rw(cwd, cwd);
    mounted.push(req.cwd.to_path_buf());
    // Commits happen outside, by the forge: the git directory is read-only in here.
    let dot_git = req.cwd.join(".git");
    let mut targets: Vec<PathBuf> = vec![PathBuf::from(SANDBOX_HOME), req.cwd.to_path_buf()];
    targets.extend(req.toolchains.iter().cloned());
    targets.extend(req.writable.iter().cloned());
    if dot_git.exists() {
        let g = utf8(&dot_git)?;
        c.bindmount_ro(g, g);
        if let Some(common) = bwrap::linked_common_dir(&dot_git) {
            let cd = utf8(&common)?;
            c.bindmount_ro(cd, cd);
            mounted.push(common.clone());
            targets.push(common);
        }
    }
    // Mount points' parents are created with the server's umask: make them traversable, as
    // bwrap.rs does, but never touch a host directory or a mount (e.g. `/tmp`'s 1777).
    for target in &targets {
        for parent in target.ancestors().skip(1) {
            if parent.parent().is_none() || mounted.iter().any(|m| parent.starts_with(m)) {
                continue;
            }
            c.dir(utf8(parent)?, 0o755);
        }
    }
    let l = &config.limits;
    let mib = 1024 * 1024;
    for (resource, value) in [
        (Rlimit::As, l.memory_mb.saturating_mul(mib)),
        (Rlimit::Nproc, l.processes),
        (Rlimit::Fsize, l.file_size_mb.saturating_mul(mib)),
        (Rlimit::Nofile, l.open_files),
        (Rlimit::Core, 0),
    ] {
        c.setrlimit(resource, value, value);
    }
    Ok(c)
}

/// Program and arguments: `setsid --wait sh -c <line>`; under root `sh -c` runs behind
/// `setpriv`, itself the child of a root shell that stays PID 1. Changing uid clears a
/// process's parent-death signal, so the process that drops privileges must not be the one
/// whose death signal ends the namespace. (`setsid` does not fork here: PID 1 does not lead a
/// process group; `--wait` keeps the exit code should it ever have to.)
pub fn argv(tools: &Tools, config: &SandboxConfig, command_line: &str) -> (String, Vec<String>) {
    let mut argv: Vec<String> = vec![
        tools.setsid.to_string_lossy().into_owned(),
        "--wait".to_owned(),
    ];
    if let Some(setpriv) = &tools.setpriv {
        // `; exit $?` keeps the shell from exec'ing its last command in place of itself.
        argv.extend([
            SHELL.to_owned(),
            "-c".to_owned(),
            "\"$@\"; exit $?".to_owned(),
            "atlasia-sandbox-init".to_owned(),
        ]);
        argv.extend(
            bwrap::drop_privileges(setpriv, config.run_as)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
    }
    argv.extend([SHELL.to_owned(), "-c".to_owned(), command_line.to_owned()]);
    let program = argv.remove(0);
    (program, argv)
}

/// One command ready to start.
pub struct Job {
    pub container: Container,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

type Task = Box<dyn FnOnce() + Send>;

/// The thread every hakoniwa fork happens on (see the module comment): started once, never
/// ends before the process does.
fn spawner() -> &'static mpsc::Sender<Task> {
    static SPAWNER: OnceLock<mpsc::Sender<Task>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Task>();
        let started = std::thread::Builder::new()
            .name("atlasia-sandbox-spawner".to_owned())
            .spawn(move || {
                for task in rx {
                    task();
                }
            });
        if let Err(e) = started {
            // The receiver is gone with the closure: every send fails and says so.
            tracing::error!(error = %e, "could not start the in-process sandbox's spawner thread");
        }
        tx
    })
}

/// Forks `job` on the spawner thread; stdout and stderr both go to `output`.
async fn spawn(job: Job, output: std::io::PipeWriter) -> Result<hakoniwa::Child, SandboxError> {
    let output_err = output.try_clone().map_err(SandboxError::Setup)?;
    let stdin = File::open("/dev/null").map_err(SandboxError::Setup)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let task: Task = Box::new(move || {
        let mut command = job.container.command(&job.program);
        command
            .args(&job.args)
            .envs(job.env)
            .current_dir(&job.cwd)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output_err));
        let spawned = command.spawn().map_err(|e| e.to_string());
        // Nobody waits any more (the caller was dropped): do not leave the command running.
        if let Err(Ok(mut child)) = reply.send(spawned) {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
    let gone = || {
        SandboxError::Spawn(std::io::Error::other(
            "the in-process sandbox's spawner thread is not running",
        ))
    };
    spawner().send(task).map_err(|_| gone())?;
    answer
        .await
        .map_err(|_| gone())?
        .map_err(|e| SandboxError::Spawn(std::io::Error::other(e)))
}

/// Kills the helper process (and so the command's PID namespace) unless disarmed: a dropped
/// future must not leave a command running.
struct KillOnDrop {
    pid: u32,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            kill_pid_blocking(self.pid);
        }
    }
}

fn kill_pid_blocking(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &pid.to_string()])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The container's root (its mount points only), in memory when `/dev/shm` exists: on a busy
/// disk, creating and removing them there was measurably slower. Removed when dropped.
struct RootDir(PathBuf);

impl RootDir {
    fn create() -> std::io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("atlasia-sandbox-root-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for RootDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `job`, waits with `timeout` or until `cancel`, and keeps the output's tail.
pub async fn execute(
    mut job: Job,
    timeout: Duration,
    max_output: usize,
    cancel: &CancellationToken,
) -> Result<CommandOutcome, SandboxError> {
    let root = RootDir::create().map_err(SandboxError::Setup)?;
    job.container.rootdir(&root.0);
    let (reader, writer) = std::io::pipe().map_err(SandboxError::Setup)?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
        .map_err(SandboxError::Setup)?;
    let started = Instant::now();
    let mut child = spawn(job, writer).await?;
    let mut guard = KillOnDrop {
        pid: child.id(),
        armed: true,
    };
    let drain = tokio::spawn(read_tail(reader, max_output));
    let mut waiter = tokio::task::spawn_blocking(move || child.wait());

    let waited = tokio::select! {
        w = tokio::time::timeout(timeout, &mut waiter) => Some(w),
        () = cancel.cancelled() => None,
    };
    let (joined, timed_out) = match waited {
        Some(Ok(joined)) => (joined, false),
        elapsed_or_cancelled => {
            // The helper's death signals the command's PID 1, whose death ends its namespace.
            let pid = guard.pid;
            let _ = tokio::task::spawn_blocking(move || kill_pid_blocking(pid)).await;
            let joined = waiter.await;
            if elapsed_or_cancelled.is_none() {
                guard.armed = false;
                drain.abort();
                return Err(SandboxError::Cancelled);
            }
            (joined, true)
        }
    };
    guard.armed = false;
    drop(root);
    let duration = started.elapsed();
    let status = joined
        .map_err(|e| SandboxError::Wait(std::io::Error::other(e.to_string())))?
        .map_err(|e| SandboxError::Wait(std::io::Error::other(e.to_string())))?;

    let mut output_tail = match tokio::time::timeout(DRAIN_GRACE, drain).await {
        Ok(Ok(tail)) => tail.render(),
        Ok(Err(join)) => format!("[output capture failed: {join}]"),
        Err(_) => "[output capture did not finish: a process escaped the sandbox]".to_owned(),
    };
    let exit_code = if timed_out {
        None
    } else if let Some(code) = status.exit_code {
        Some(code)
    } else if status.code == CONTAINER_FAILURE {
        // The sandbox could not be set up: say why, the command never ran.
        output_tail = format!(
            "[in-process sandbox: {}]\n{output_tail}",
            status.reason.trim()
        );
        None
    } else {
        // Killed by a signal: 128 + its number, as bwrap and shells report it.
        Some(status.code)
    };
    Ok(CommandOutcome {
        exit_code,
        timed_out,
        duration,
        output_tail,
    })
}
