//! `run_command`: one allow-listed command line (checked by [`crate::policy::commands`]) run in the
//! bolt's worktree through the [`Sandbox`], with a wall-clock limit, cancellation, and only the
//! tail of its output returned to the model.

use super::{Executed, RunArgs, ToolResult, Workdir, refused, truncate_chars};
use crate::policy::commands::{DEFAULT_ALLOWED_PROGRAMS, check_command, check_command_paths};
use crate::sandbox::{self, CommandSpec, Sandbox, SandboxError};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

pub(super) async fn run_command(wd: &Workdir, a: RunArgs, cancel: &CancellationToken) -> Executed {
    let target = truncate_chars(a.command.trim(), 200);
    if let Err(why) = check_command(&a.command, &wd.run.allowed) {
        return refused(target, why);
    }
    if let Err(why) = check_command_paths(&wd.policy, &wd.root, &a.command) {
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
    use super::super::tests::{call, exec, ok_text, refused_text, repo};
    use super::super::{RUN, execute, execute_detailed};
    use super::*;
    use serde_json::json;

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
}
