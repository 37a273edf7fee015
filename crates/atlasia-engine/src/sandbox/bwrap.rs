//! The bubblewrap command line for one command: an explicit list of read-only system
//! directories, the toolchain homes read-only, private `/tmp` and `HOME`, the hidden host paths
//! masked, the repository's git directory read-only, the worktree (and the build cache) the only
//! writable binds, fresh PID/IPC/UTS/cgroup (and, unless opted in, network) namespaces; then,
//! inside, `setpriv` to the unprivileged uid when the server is root and `prlimit` for the
//! resource limits, and finally `sh -c`.

use super::config::{Limits, SandboxConfig};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `HOME` inside the sandbox (a tmpfs of its own).
pub const SANDBOX_HOME: &str = "/home/atlasia";

/// System directories shown read-only (those that exist; merged-/usr symlinks are recreated
/// as symlinks). Nothing else of the host is visible unless bound below.
pub(super) const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];

/// Files of a toolchain home that hold credentials: masked with an empty file.
pub(super) const TOOLCHAIN_SECRETS: [&str; 2] = ["credentials.toml", "credentials"];

/// The helper binaries the sandbox runs, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub bwrap: PathBuf,
    pub prlimit: PathBuf,
    /// Set when the server runs as root: the command drops to `run_as` through it.
    pub setpriv: Option<PathBuf>,
}

/// What one command needs bound.
pub struct Request<'a> {
    pub command_line: &'a str,
    /// Canonical working directory (the worktree): writable.
    pub cwd: &'a Path,
    /// Extra writable directories (the shared build cache); they must exist.
    pub writable: &'a [PathBuf],
    /// Read-only toolchain homes (`CARGO_HOME`, `RUSTUP_HOME`) that exist.
    pub toolchains: &'a [PathBuf],
    /// Keep the host's network namespace (the repository's opt-in).
    pub network: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Host content: its subdirectories already exist.
    Host,
    /// A tmpfs or a directory bwrap created: anything below must be created.
    Fresh,
}

/// Builds the argument list; `bwrap` itself is the program.
pub fn args(tools: &Tools, config: &SandboxConfig, req: &Request<'_>) -> Vec<OsString> {
    let mut b = Builder::default();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    b.push(["--symlink".into(), target.into_os_string(), dir.into()]);
                    b.mounted(path, Origin::Host);
                }
            }
            Ok(m) if m.is_dir() => b.bind("--ro-bind", path, path),
            _ => {}
        }
    }
    b.push(["--proc", "/proc", "--dev", "/dev"]);
    let tmp_size = (config.limits.tmp_size_mb.saturating_mul(1024 * 1024)).to_string();
    b.push(["--perms", "1777", "--size", &tmp_size, "--tmpfs", "/tmp"]);
    b.mounted(Path::new("/tmp"), Origin::Fresh);
    b.parents(Path::new(SANDBOX_HOME));
    b.push([
        "--perms",
        "0777",
        "--size",
        &tmp_size,
        "--tmpfs",
        SANDBOX_HOME,
    ]);
    b.mounted(Path::new(SANDBOX_HOME), Origin::Fresh);
    for home in req.toolchains {
        b.bind("--ro-bind", home, home);
        for secret in TOOLCHAIN_SECRETS {
            let file = home.join(secret);
            if file.is_file() {
                b.bind("--ro-bind", Path::new("/dev/null"), &file);
            }
        }
    }
    // Hidden paths only need masking where a bind above would show them.
    for hidden in &config.hide {
        if !b.shown(hidden) {
            continue;
        }
        if hidden.is_dir() {
            b.push([
                "--perms".into(),
                "0700".into(),
                "--tmpfs".into(),
                hidden.as_os_str().to_owned(),
            ]);
            b.mounted(hidden, Origin::Fresh);
        } else if hidden.exists() {
            b.bind("--ro-bind", Path::new("/dev/null"), hidden);
        }
    }
    for dir in req.writable {
        b.bind("--bind", dir, dir);
    }
    b.bind("--bind", req.cwd, req.cwd);
    // Commits happen outside, by the forge: the git directory is read-only in here.
    let dot_git = req.cwd.join(".git");
    if dot_git.exists() {
        b.bind("--ro-bind", &dot_git, &dot_git);
        if let Some(common) = linked_common_dir(&dot_git) {
            b.bind("--ro-bind", &common, &common);
        }
    }
    // What bwrap created in its root (mount points, parents) must not be a writable scratch
    // space: only the worktree, the cache, `/tmp` and `HOME` (mounts of their own) stay writable.
    b.push(["--remount-ro", "/"]);
    b.push([
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "atlasia-sandbox",
        "--die-with-parent",
        "--new-session",
    ]);
    if !req.network {
        b.push(["--unshare-net"]);
    }
    b.push([
        "--chdir".into(),
        req.cwd.as_os_str().to_owned(),
        "--".into(),
    ]);
    if let Some(setpriv) = &tools.setpriv {
        b.push(drop_privileges(setpriv, config.run_as));
    }
    b.push([tools.prlimit.as_os_str().to_owned()]);
    b.push(rlimits(&config.limits));
    b.push([
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        OsString::from(req.command_line),
    ]);
    b.args
}

/// `setpriv … --` switching to `run_as` with no groups and no capabilities (for a root server).
pub(super) fn drop_privileges(setpriv: &Path, (uid, gid): (u32, u32)) -> Vec<OsString> {
    vec![
        setpriv.as_os_str().to_owned(),
        format!("--reuid={uid}").into(),
        format!("--regid={gid}").into(),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
    ]
}

/// `prlimit` options (soft = hard).
fn rlimits(l: &Limits) -> Vec<OsString> {
    let mib = 1024 * 1024;
    vec![
        format!("--as={}", l.memory_mb.saturating_mul(mib)).into(),
        format!("--nproc={}", l.processes).into(),
        format!("--fsize={}", l.file_size_mb.saturating_mul(mib)).into(),
        format!("--nofile={}", l.open_files).into(),
        "--core=0".into(),
    ]
}

/// For a linked worktree (`.git` is a file `gitdir: …/.git/worktrees/<name>`), the
/// repository's common git directory, which holds the objects `git status` needs.
pub(super) fn linked_common_dir(dot_git: &Path) -> Option<PathBuf> {
    if !dot_git.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(dot_git).ok()?;
    let gitdir = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
    let common = match std::fs::read_to_string(gitdir.join("commondir")) {
        Ok(rel) => gitdir.join(rel.trim()),
        Err(_) => gitdir,
    };
    common.canonicalize().ok().filter(|p| p.is_dir())
}

#[derive(Default)]
struct Builder {
    args: Vec<OsString>,
    mounts: Vec<(PathBuf, Origin)>,
}

impl Builder {
    fn push<I, S>(&mut self, items: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(items.into_iter().map(Into::into));
    }

    fn mounted(&mut self, path: &Path, origin: Origin) {
        self.mounts.push((path.to_path_buf(), origin));
    }

    /// The deepest mount at or above `path`.
    fn covering(&self, path: &Path) -> Option<(&Path, Origin)> {
        self.mounts
            .iter()
            .rev()
            .filter(|(m, _)| path.starts_with(m))
            .max_by_key(|(m, _)| m.components().count())
            .map(|(m, o)| (m.as_path(), *o))
    }

    /// True when `path` would be visible through a host bind made so far.
    fn shown(&self, path: &Path) -> bool {
        matches!(self.covering(path), Some((_, Origin::Host)))
    }

    /// bwrap creates missing parents of a mount point with mode 0700, which an unprivileged
    /// uid cannot cross: create them explicitly, world-traversable.
    fn parents(&mut self, path: &Path) {
        let ancestors: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|a| a.parent().is_some())
            .map(Path::to_path_buf)
            .collect();
        for dir in ancestors.into_iter().rev() {
            match self.covering(&dir) {
                Some((m, _)) if m == dir => continue,
                Some((_, Origin::Host)) => continue,
                _ => {}
            }
            self.push([
                "--perms".into(),
                "0755".into(),
                "--dir".into(),
                dir.as_os_str().to_owned(),
            ]);
            self.mounted(&dir, Origin::Fresh);
        }
    }

    fn bind(&mut self, how: &str, src: &Path, dest: &Path) {
        self.parents(dest);
        self.push([
            OsString::from(how),
            src.as_os_str().to_owned(),
            dest.as_os_str().to_owned(),
        ]);
        self.mounted(dest, Origin::Host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn worktree_is_the_writable_bind_and_parents_are_traversable() {
        let tools = Tools {
            bwrap: "/usr/bin/bwrap".into(),
            prlimit: "/usr/bin/prlimit".into(),
            setpriv: Some("/usr/bin/setpriv".into()),
        };
        let config = SandboxConfig {
            hide: vec!["/etc/atlasia-test-hidden-file-that-does-not-exist".into()],
            ..SandboxConfig::default()
        };
        let cwd = Path::new("/srv/data/worktrees/r1");
        let req = Request {
            command_line: "true",
            cwd,
            writable: &[],
            toolchains: &[],
            network: false,
        };
        let a = text(&args(&tools, &config, &req));
        assert!(
            a.contains("--perms 0755 --dir /srv --perms 0755 --dir /srv/data"),
            "{a}"
        );
        assert!(
            a.contains("--bind /srv/data/worktrees/r1 /srv/data/worktrees/r1"),
            "{a}"
        );
        assert!(a.contains("--unshare-net"), "{a}");
        assert!(a.contains("--reuid=65534"), "{a}");
        assert!(a.ends_with("-- /bin/sh -c true"), "{a}");
        let req = Request {
            network: true,
            ..req
        };
        assert!(!text(&args(&tools, &config, &req)).contains("--unshare-net"));
    }
}
