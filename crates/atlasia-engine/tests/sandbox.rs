//! The sandbox with real `bwrap` and real `sh` subprocesses: what a command can see and do
//! (each test reproduces one attack from issue 9 and asserts the safe outcome), the limits,
//! exit codes, timeouts and cancellation that kill everything, the scrubbed environment, the
//! output cap, and the `none` / unavailable modes. Every attack test runs twice, against
//! bubblewrap (`bwrap_backend::*`) and against the in-process backend (`inprocess_backend::*`,
//! see [`on_both_backends!`]). bubblewrap must be installed: these tests fail (never skip)
//! without it, as they do when the in-process backend cannot create namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use atlasia_engine::sandbox::{
    Backend, CommandOutcome, CommandSpec, Limits, Mode, Sandbox, SandboxConfig, SandboxError,
    Status,
};

/// Generates, for each named `async fn name(backend: Backend)`, one test per backend:
/// `bwrap_backend::name` and `inprocess_backend::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod bwrap_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Bwrap).await
                }
            )*
        }
        mod inprocess_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::InProcess).await
                }
            )*
        }
    };
}

/// The real sandbox on `backend`; panics (never skips) when that backend does not work here.
async fn sandboxed_with(backend: Backend, config: SandboxConfig) -> Sandbox {
    let sandbox = Sandbox::start(SandboxConfig { backend, ..config }).await;
    assert_eq!(
        sandbox.status(),
        &Status::Enabled,
        "the {} backend does not work here (bwrap: apt-get install bubblewrap)",
        backend.as_str()
    );
    assert_eq!(sandbox.backend(), Some(backend));
    sandbox
}

async fn sandboxed(backend: Backend) -> Sandbox {
    sandboxed_with(backend, SandboxConfig::default()).await
}

/// A `sleep` marker unique to the backend, so that both variants of a test can run at once.
fn marker(backend: Backend, n: u32) -> String {
    match backend {
        Backend::InProcess => (n + 5000).to_string(),
        _ => n.to_string(),
    }
}

fn unsandboxed() -> Sandbox {
    Sandbox::new(SandboxConfig {
        mode: Mode::None,
        ..SandboxConfig::default()
    })
}

fn spec(cmd: &str, dir: &Path) -> CommandSpec {
    CommandSpec::new(cmd, dir)
}

async fn sh(sandbox: &Sandbox, cmd: &str, dir: &Path) -> CommandOutcome {
    sandbox
        .run(&spec(cmd, dir), Duration::from_secs(30), 64 * 1024)
        .await
        .unwrap()
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Host processes whose command line is exactly `sleep <marker>`, read from /proc (the
/// sandbox's own PID namespace hides nothing from the host's view).
fn sleepers(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && args.len() == 2 && args[0].ends_with(b"sleep") && args[1] == marker.as_bytes()
        {
            found.push(pid);
        }
    }
    found
}

/// Waits (bounded) until no `sleep <marker>` is left; returns the survivors.
async fn survivors(marker: &str) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = sleepers(marker);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exit_codes(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let ok = sh(&sb, "echo hello", dir.path()).await;
    assert_eq!(ok.exit_code, Some(0));
    assert!(ok.success());
    assert!(!ok.timed_out);
    assert_eq!(ok.output_tail, "hello\n");

    let fail = sh(&sb, "echo oops >&2; exit 3", dir.path()).await;
    assert_eq!(fail.exit_code, Some(3));
    assert!(!fail.success());
    assert_eq!(fail.output_tail, "oops\n");
}

async fn stdout_and_stderr_interleave_in_order(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let out = sh(&sb, "echo one; echo two >&2; echo three", dir.path()).await;
    assert_eq!(out.output_tail, "one\ntwo\nthree\n");
}

async fn timeout_kills_everything(sb: Sandbox, marker: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!(
        "sleep {marker} & sh -c 'sleep {marker}' & setsid sleep {marker} & echo started; sleep {marker}"
    );
    let out = sb
        .run(&spec(&cmd, dir.path()), Duration::from_millis(800), 1024)
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert!(out.duration < Duration::from_secs(10), "{:?}", out.duration);
    assert!(out.output_tail.contains("started"), "{}", out.output_tail);
    let left = survivors(marker).await;
    assert!(left.is_empty(), "still running: {left:?}");
}

async fn timeout_kills_everything_the_command_started(backend: Backend) {
    timeout_kills_everything(sandboxed(backend).await, &marker(backend, 1001)).await;
}

#[tokio::test]
async fn timeout_kills_the_whole_group_without_the_sandbox() {
    // Unsandboxed, a `setsid` escapee would survive the group kill: that is mode none's known
    // gap, so this variant starts none.
    let dir = tempfile::tempdir().unwrap();
    let cmd = "sleep 1002 & sh -c 'sleep 1002' & echo started; sleep 1002";
    let out = unsandboxed()
        .run(&spec(cmd, dir.path()), Duration::from_millis(500), 1024)
        .await
        .unwrap();
    assert!(out.timed_out);
    assert!(survivors("1002").await.is_empty());
}

async fn cancel_kills_everything_the_command_started(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let m = marker(backend, 1003);
    let cmd = format!("sleep {m} & sh -c 'sleep {m}' & echo started; sleep {m}");
    let cancel = tokio_util::sync::CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let started = std::time::Instant::now();
    let out = sb
        .run_until(
            &spec(&cmd, dir.path()),
            Duration::from_secs(600),
            1024,
            &cancel,
        )
        .await;
    assert!(matches!(out, Err(SandboxError::Cancelled)), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let left = survivors(&m).await;
    assert!(left.is_empty(), "still running: {left:?}");
    // An already cancelled token runs nothing.
    let never = sb
        .run_until(
            &spec("touch ran", dir.path()),
            Duration::from_secs(5),
            64,
            &cancel,
        )
        .await;
    assert!(matches!(never, Err(SandboxError::Cancelled)));
    assert!(!dir.path().join("ran").exists());
}

async fn background_leftovers_do_not_outlive_a_finished_command(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let m = marker(backend, 1004);
    let out = sh(
        &sb,
        &format!("sleep {m} & setsid sleep {m} & echo done"),
        dir.path(),
    )
    .await;
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.output_tail, "done\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    let left = survivors(&m).await;
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn sleeper_scan_sees_live_processes() {
    // Guards the survivor checks above against passing vacuously.
    let mut child = std::process::Command::new("sleep")
        .arg("1999")
        .spawn()
        .unwrap();
    let found = sleepers("1999");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(found, vec![child.id()]);
}

async fn secret_variables_are_scrubbed(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("env", dir.path());
    s.env_allow = vec!["MY_API_KEY".into(), "USER_VISIBLE".into()];
    s.env_set = vec![
        ("GITHUB_TOKEN".into(), "ghp_x".into()),
        ("DB_PASSWORD".into(), "hunter2".into()),
        ("CARGO_TARGET_DIR".into(), "/tmp/t".into()),
    ];
    let out = sb
        .run(&s, Duration::from_secs(10), 64 * 1024)
        .await
        .unwrap();
    let env = out.output_tail;
    assert!(!env.contains("GITHUB_TOKEN"), "{env}");
    assert!(!env.contains("DB_PASSWORD"), "{env}");
    assert!(!env.contains("MY_API_KEY"), "{env}");
    assert!(env.contains("CARGO_TARGET_DIR=/tmp/t"), "{env}");
    assert!(env.contains("TERM=dumb"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(env.lines().any(|l| l == "HOME=/home/atlasia"), "{env}");
    // HOME is a private, writable tmpfs.
    let out = sh(&sb, "touch ~/.probe && ls -A ~", dir.path()).await;
    assert_eq!(out.output_tail, ".probe\n");
}

#[tokio::test]
async fn unsandboxed_home_is_a_scratch_dir_removed_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let out = sh(&unsandboxed(), "echo $HOME", dir.path()).await;
    let home = out.output_tail.trim().to_owned();
    assert_ne!(Some(home.clone()), std::env::var("HOME").ok());
    assert!(home.contains("atlasia-sandbox-home"), "{home}");
    assert!(!Path::new(&home).exists());
}

async fn inherited_secrets_are_invisible_even_through_proc(backend: Backend) {
    // Setting variables in this process needs `unsafe` (edition 2024), which the workspace
    // forbids; so run this test binary again as a child with secrets in its environment, and
    // let the child run the sandbox (see `child_sees_no_secret`).
    if std::env::var("ATLASIA_SANDBOX_CHILD").is_ok() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "child_sees_no_secret",
            "--exact",
            "--nocapture",
            "--include-ignored",
        ])
        .env("ATLASIA_SANDBOX_CHILD", backend.as_str())
        .env("MY_API_KEY", "x-secret-value")
        .env("SOME_TOKEN", "t-secret-value")
        .env("ORCHESTRATOR_TOKEN", "orchestrator-secret-value")
        .env("USER_VISIBLE", "visible-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[tokio::test]
#[ignore = "run by inherited_secrets_are_invisible_even_through_proc in a child process"]
async fn child_sees_no_secret() {
    assert_eq!(std::env::var("MY_API_KEY").as_deref(), Ok("x-secret-value"));
    let backend = match std::env::var("ATLASIA_SANDBOX_CHILD").as_deref() {
        Ok("inprocess") => Backend::InProcess,
        _ => Backend::Bwrap,
    };
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        "env; tr '\\0' '\\n' < /proc/$PPID/environ; cat /proc/1/environ /proc/*/environ; \
         echo; ls /proc | grep -c '^[0-9]'",
        dir.path(),
    );
    s.env_allow = vec![
        "MY_API_KEY".into(),
        "SOME_TOKEN".into(),
        "USER_VISIBLE".into(),
    ];
    let out = sb
        .run(&s, Duration::from_secs(10), 64 * 1024)
        .await
        .unwrap();
    let text = &out.output_tail;
    for secret in [
        "x-secret-value",
        "t-secret-value",
        "orchestrator-secret-value",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(!text.contains("ATLASIA_SANDBOX_CHILD"), "{text}");
    assert!(text.contains("USER_VISIBLE=visible-value"), "{text}");
    // Only the sandbox's own few processes exist in its /proc; this test process is not one.
    let count: u32 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(count < 10, "{count} processes visible: {text}");
    let me = std::process::id();
    let out = sh(&sb, &format!("test -e /proc/{me}/environ"), dir.path()).await;
    assert_ne!(out.exit_code, Some(0), "pid {me} visible");
}

async fn tmp_is_private(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let unique = format!("atlasia-sandbox-test-{}-{}", std::process::id(), line!());
    let host = tempfile::Builder::new()
        .prefix("atlasia-host-")
        .tempfile()
        .unwrap();
    let out = sh(
        &sb,
        &format!(
            "touch /tmp/{unique} && ls /tmp/{unique} && test ! -e {}",
            host.path().display()
        ),
        dir.path(),
    )
    .await;
    assert!(out.success(), "{}", out.output_tail);
    assert!(!Path::new("/tmp").join(&unique).exists());
}

async fn only_the_worktree_is_writable(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let wt = dir.path().join("wt");
    std::fs::create_dir(&wt).unwrap();
    let ok = sh(&sb, "echo hi > inside && mkdir sub && touch sub/f", &wt).await;
    assert!(ok.success(), "{}", ok.output_tail);
    assert_eq!(std::fs::read_to_string(wt.join("inside")).unwrap(), "hi\n");
    for target in [
        "/etc/atlasia-x",
        "/usr/atlasia-x",
        "/atlasia-x",
        "../outside",
        "/root/x",
    ] {
        let out = sh(&sb, &format!("echo x > {target}"), &wt).await;
        // Without root, the worktree's parent here lies in the sandbox's private /tmp (the
        // test's worktree is a temp dir), which the sandbox's user may write: only the host
        // side (checked below) matters then.
        if target != "../outside" || running_as_root() {
            assert!(!out.success(), "{target} was writable: {}", out.output_tail);
        }
    }
    assert!(!dir.path().join("outside").exists());
    assert!(!Path::new("/etc/atlasia-x").exists());
    assert!(!Path::new("/usr/atlasia-x").exists());
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn git_dir_is_read_only_but_git_status_works(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("a.txt"), "a\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "first"]);
    let wt = dir.path().join("wt");
    git(
        &repo,
        &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "bolt"],
    );
    let head_before = std::fs::read_to_string(repo.join(".git/HEAD")).unwrap();

    let status = sh(&sb, "git status --short; git log --oneline", &wt).await;
    assert!(status.success(), "{}", status.output_tail);
    assert!(
        status.output_tail.contains("first"),
        "{}",
        status.output_tail
    );
    for attack in [
        "echo gitdir: /tmp > .git",
        "rm -f .git",
        "echo x > \"$(cut -d' ' -f2 .git)/HEAD\"",
        "echo x > \"$(cut -d' ' -f2 .git)/../../HEAD\"",
        "git commit --allow-empty -m sneaky",
    ] {
        let out = sh(&sb, attack, &wt).await;
        assert!(!out.success(), "`{attack}` succeeded: {}", out.output_tail);
    }
    assert_eq!(
        std::fs::read_to_string(repo.join(".git/HEAD")).unwrap(),
        head_before
    );
    assert!(
        std::fs::read_to_string(wt.join(".git"))
            .unwrap()
            .starts_with("gitdir: ")
    );
    // A plain repository's .git directory is read-only too.
    let out = sh(&sb, "touch .git/hooks/post-commit", &repo).await;
    assert!(!out.success(), "{}", out.output_tail);
    assert!(!repo.join(".git/hooks/post-commit").exists());
}

async fn network_is_off_unless_the_repository_opts_in(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')\""
    );
    let off = sh(&sb, &connect, dir.path()).await;
    assert!(!off.success(), "{}", off.output_tail);
    assert!(
        !off.output_tail.contains("connected"),
        "{}",
        off.output_tail
    );
    let mut s = spec(&connect, dir.path());
    s.network = true;
    let on = sb.run(&s, Duration::from_secs(30), 4096).await.unwrap();
    assert!(
        on.success(),
        "the control connection failed: {}",
        on.output_tail
    );
}

async fn killing_the_parent_does_not_reach_the_host(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();
    let out = sh(
        &sb,
        // Never `kill -9 -1`: should the sandbox regress, it would hit the whole machine.
        &format!("kill -9 {me}; kill -9 $PPID; kill -9 1; echo survived-kill"),
        dir.path(),
    )
    .await;
    // Whatever became of the command, this process is alive to read the outcome.
    assert!(!out.timed_out);
    assert!(std::fs::metadata(format!("/proc/{me}")).is_ok());
}

async fn the_data_directory_and_hidden_paths_are_not_visible(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("atlasia.db"), "SECRET-DB").unwrap();
    let wt = data.path().join("worktrees").join("run-1");
    let other = data.path().join("worktrees").join("run-2");
    std::fs::create_dir_all(&wt).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("theirs.txt"), "other bolt").unwrap();
    // A hidden path under a directory the sandbox shows (/etc) is masked.
    // (Creating files under /etc needs root; otherwise they go where the data directory hides.)
    let shown = if running_as_root() {
        std::path::PathBuf::from("/etc")
    } else {
        data.path().to_path_buf()
    };
    let etc_dir = shown.join(format!("atlasia-sandbox-test-{}", std::process::id()));
    std::fs::create_dir_all(&etc_dir).unwrap();
    std::fs::write(etc_dir.join("atlasia.toml"), "token = 'SECRET-CONFIG'").unwrap();
    let etc_file = shown.join(format!("atlasia-sandbox-key-{}", std::process::id()));
    std::fs::write(&etc_file, "SECRET-KEY").unwrap();
    let sb = sandboxed_with(
        backend,
        SandboxConfig {
            hide: vec![
                data.path().canonicalize().unwrap(),
                etc_dir.clone(),
                etc_file.clone(),
            ],
            ..SandboxConfig::default()
        },
    )
    .await;
    let d = data.path().canonicalize().unwrap();
    let out = sh(
        &sb,
        &format!(
            "ls -A {d}; ls -A {d}/worktrees; cat {d}/atlasia.db {d}/worktrees/run-2/theirs.txt; \
             cat {}/atlasia.toml {}; ls -A {}",
            etc_dir.display(),
            etc_file.display(),
            etc_dir.display(),
            d = d.display()
        ),
        &wt,
    )
    .await;
    let _ = std::fs::remove_dir_all(&etc_dir);
    let _ = std::fs::remove_file(&etc_file);
    let text = out.output_tail;
    assert!(!text.contains("SECRET"), "{text}");
    assert!(!text.contains("other bolt"), "{text}");
    assert!(!text.contains("atlasia.db\n"), "{text}");
    assert!(text.starts_with("worktrees\nrun-1\n"), "{text}");
}

async fn limits_bite(backend: Backend) {
    let sb = sandboxed_with(
        backend,
        SandboxConfig {
            limits: Limits {
                memory_mb: 256,
                processes: 64,
                file_size_mb: 1,
                open_files: 32,
                tmp_size_mb: 2,
            },
            ..SandboxConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // File size: a 2 MB file stops at 1 MiB.
    let out = sh(&sb, "head -c 2000000 /dev/zero > big", dir.path()).await;
    assert!(!out.success(), "{}", out.output_tail);
    assert!(std::fs::metadata(dir.path().join("big")).unwrap().len() <= 1024 * 1024);
    // Memory: 512 MiB cannot be allocated under a 256 MiB address space.
    let out = sh(
        &sb,
        "python3 -c 'b = bytearray(512 * 1024 * 1024)'",
        dir.path(),
    )
    .await;
    assert!(
        out.output_tail.contains("MemoryError"),
        "{}",
        out.output_tail
    );
    // Open files.
    let out = sh(
        &sb,
        "python3 -c \"fs = [open('/dev/null') for _ in range(100)]\"",
        dir.path(),
    )
    .await;
    assert!(
        out.output_tail.contains("Too many open files"),
        "{}",
        out.output_tail
    );
    // /tmp is bounded too.
    let out = sh(&sb, "head -c 900000 /dev/zero > /tmp/a && head -c 900000 /dev/zero > /tmp/b && head -c 900000 /dev/zero > /tmp/c", dir.path()).await;
    assert!(!out.success(), "{}", out.output_tail);
    if running_as_root() {
        // Processes (counted per uid: the sandbox's uid here). A fork bomb stops short.
        let out = sb
            .run(
                &spec(
                    "python3 -c \"
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print('fork failed after', n)
\"",
                    dir.path(),
                ),
                Duration::from_secs(20),
                4096,
            )
            .await
            .unwrap();
        let n: u32 = out
            .output_tail
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}", out.output_tail));
        assert!(n < 64, "{n} forks");
    }
}

async fn commands_run_unprivileged_when_the_server_is_root(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let out = sh(&sb, "id -u; touch made-here", dir.path()).await;
    assert!(out.success(), "{}", out.output_tail);
    if running_as_root() {
        assert_eq!(out.output_tail.trim(), "65534");
        assert_eq!(
            std::fs::metadata(dir.path().join("made-here"))
                .unwrap()
                .uid(),
            65534
        );
        // Root-only files stay unreadable.
        let out = sh(&sb, "cat /etc/shadow", dir.path()).await;
        assert!(!out.success(), "{}", out.output_tail);
    } else {
        assert_ne!(out.output_tail.trim(), "0");
    }
}

async fn the_build_cache_is_writable(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let wt = dir.path().join("wt");
    std::fs::create_dir(&wt).unwrap();
    let cache = dir.path().join("cache").join("cargo-target");
    let mut s = spec(&format!("echo built > {}/out", cache.display()), &wt);
    s.writable = vec![cache.clone()];
    let out = sb.run(&s, Duration::from_secs(10), 4096).await.unwrap();
    assert!(out.success(), "{}", out.output_tail);
    assert_eq!(
        std::fs::read_to_string(cache.join("out")).unwrap(),
        "built\n"
    );
}

#[tokio::test]
async fn an_unusable_sandbox_refuses_commands() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Sandbox::start(SandboxConfig {
        backend: Backend::Bwrap,
        bwrap_path: "/nonexistent/bwrap".into(),
        ..SandboxConfig::default()
    })
    .await;
    let Status::Unavailable(why) = missing.status() else {
        panic!("{:?}", missing.status());
    };
    assert!(why.contains("/nonexistent/bwrap"), "{why}");
    let err = missing
        .run(&spec("touch ran", dir.path()), Duration::from_secs(5), 64)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("sandbox unavailable: "), "{text}");
    assert!(
        text.contains("install bubblewrap or set sandbox.mode = \"none\""),
        "{text}"
    );
    assert!(!dir.path().join("ran").exists());
    // A binary that exists but cannot sandbox fails the start-up probe.
    let broken = Sandbox::start(SandboxConfig {
        backend: Backend::Bwrap,
        bwrap_path: "/bin/false".into(),
        ..SandboxConfig::default()
    })
    .await;
    assert!(
        matches!(broken.status(), Status::Unavailable(_)),
        "{:?}",
        broken.status()
    );
}

async fn a_command_dies_with_the_server(backend: Backend) {
    // The "server" is this test binary run again as a child; it starts a long command, then
    // is SIGKILLed mid-command (no destructor runs): the command must not outlive it.
    if std::env::var("ATLASIA_SANDBOX_CHILD").is_ok() {
        return;
    }
    let m = marker(backend, 1005);
    let mut server = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_runs_a_long_command",
            "--exact",
            "--nocapture",
            "--include-ignored",
        ])
        .env("ATLASIA_SANDBOX_CHILD", backend.as_str())
        .env("ATLASIA_SANDBOX_MARKER", &m)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sleepers(&m).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let left = survivors(&m).await;
    assert!(
        left.is_empty(),
        "still running after the server died: {left:?}"
    );
}

#[tokio::test]
#[ignore = "run by a_command_dies_with_the_server in a child process"]
async fn child_runs_a_long_command() {
    let backend = match std::env::var("ATLASIA_SANDBOX_CHILD").as_deref() {
        Ok("inprocess") => Backend::InProcess,
        _ => Backend::Bwrap,
    };
    let m = std::env::var("ATLASIA_SANDBOX_MARKER").unwrap();
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let _ = sb
        .run(
            &spec(&format!("sleep {m} & sleep {m}"), dir.path()),
            Duration::from_secs(60),
            1024,
        )
        .await;
}

#[tokio::test]
async fn without_bwrap_auto_falls_back_to_the_in_process_backend() {
    // A fresh machine: no bubblewrap (here: a missing `bwrap_path`, or one that cannot sandbox).
    for bwrap_path in ["/nonexistent/bwrap", "/bin/false"] {
        let sb = Sandbox::start(SandboxConfig {
            bwrap_path: bwrap_path.into(),
            ..SandboxConfig::default()
        })
        .await;
        assert_eq!(sb.status(), &Status::Enabled, "{bwrap_path}");
        assert_eq!(sb.backend(), Some(Backend::InProcess));
        assert_eq!(sb.label(), "inprocess");
        assert_eq!(sb.bwrap_binary(), None);
        let dir = tempfile::tempdir().unwrap();
        // Isolated: its own PID namespace, where this process does not exist.
        let me = std::process::id();
        let out = sh(
            &sb,
            &format!("test ! -e /proc/{me} && ls /proc | grep -c '^[0-9]'"),
            dir.path(),
        )
        .await;
        assert!(out.success(), "{}", out.output_tail);
        let count: u32 = out.output_tail.trim().parse().unwrap();
        assert!(count < 6, "{}", out.output_tail);
    }
    // The default prefers a working bubblewrap.
    let sb = Sandbox::start(SandboxConfig::default()).await;
    assert_eq!(sb.backend(), Some(Backend::Bwrap));
    assert_eq!(sb.label(), "bwrap");
}

#[tokio::test]
async fn mode_none_runs_on_the_host() {
    let sb = unsandboxed();
    assert_eq!(sb.status(), &Status::Disabled);
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::Builder::new()
        .prefix("atlasia-host-")
        .tempfile()
        .unwrap();
    let out = sh(
        &sb,
        &format!("test -e {}", host.path().display()),
        dir.path(),
    )
    .await;
    assert!(out.success());
}

async fn cwd_is_respected(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker.txt"), "here").unwrap();
    let out = sh(&sb, "pwd; cat marker.txt", dir.path()).await;
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(out.output_tail, format!("{}\nhere", canonical.display()));

    let missing = sb
        .run(
            &spec("true", &dir.path().join("nope")),
            Duration::from_secs(1),
            10,
        )
        .await;
    assert!(matches!(missing, Err(SandboxError::Cwd(_))));
}

async fn large_output_keeps_the_tail_without_deadlock(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    // ~5 MB on stdout and some on stderr, then a recognisable last line.
    let cmd = "head -c 5000000 /dev/zero | tr '\\0' 'a'; head -c 100000 /dev/zero | tr '\\0' 'b' >&2; echo; echo THE-END";
    let out = sb
        .run(&spec(cmd, dir.path()), Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(
        out.output_tail.ends_with("bbbb\nTHE-END\n"),
        "{}",
        out.output_tail
    );
    assert!(out.output_tail.starts_with("[... "), "{}", out.output_tail);
    assert!(
        out.output_tail.contains("5099909 earlier bytes"),
        "{}",
        out.output_tail
    );
    let body = out.output_tail.split_once('\n').unwrap().1;
    assert_eq!(body.len(), 100);
}

async fn tail_cut_never_splits_a_character(backend: Backend) {
    let sb = sandboxed(backend).await;
    let dir = tempfile::tempdir().unwrap();
    // "é" is two bytes: an odd cap lands inside one.
    let out = sb
        .run(
            &spec("printf 'ééééé'", dir.path()),
            Duration::from_secs(10),
            5,
        )
        .await
        .unwrap();
    let body = out.output_tail.split_once('\n').unwrap().1;
    assert_eq!(body, "éé");
    assert!(!out.output_tail.contains('\u{FFFD}'));
}

on_both_backends!(
    a_command_dies_with_the_server,
    timeout_kills_everything_the_command_started,
    inherited_secrets_are_invisible_even_through_proc,
    exit_codes,
    stdout_and_stderr_interleave_in_order,
    cancel_kills_everything_the_command_started,
    background_leftovers_do_not_outlive_a_finished_command,
    secret_variables_are_scrubbed,
    tmp_is_private,
    only_the_worktree_is_writable,
    git_dir_is_read_only_but_git_status_works,
    network_is_off_unless_the_repository_opts_in,
    killing_the_parent_does_not_reach_the_host,
    the_data_directory_and_hidden_paths_are_not_visible,
    limits_bite,
    commands_run_unprivileged_when_the_server_is_root,
    the_build_cache_is_writable,
    cwd_is_respected,
    large_output_keeps_the_tail_without_deadlock,
    tail_cut_never_splits_a_character,
);
