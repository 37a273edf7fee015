//! What the sandbox is told: the mode, which backend isolates (bubblewrap or in-process
//! namespaces), where bubblewrap is, the resource limits, the host paths it must never show, and
//! the unprivileged identity commands take when the server is root.

use std::path::PathBuf;

/// How commands are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Sandboxed (the default): bubblewrap or in-process namespaces, per [`Backend`]; commands
    /// are refused when neither works.
    #[default]
    Bwrap,
    /// No isolation: the operator's explicit opt-out (scrubbed environment and limits on time
    /// and output only).
    None,
}

impl Mode {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bwrap => "bwrap",
            Self::None => "none",
        }
    }
}

/// Which isolation `Mode::Bwrap` uses. Both apply the same policy (see `bwrap.rs` and
/// `inprocess.rs`); the in-process one needs nothing installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The system's `bwrap` when it works, else in-process namespaces (the default).
    #[default]
    Auto,
    /// Only bubblewrap.
    Bwrap,
    /// Only in-process namespaces (the `hakoniwa` crate): no external sandbox binary.
    InProcess,
}

impl Backend {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Bwrap => "bwrap",
            Self::InProcess => "inprocess",
        }
    }
}

/// Per-command resource limits (rlimits, set by `prlimit` inside the sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Address space per process, MiB (`RLIMIT_AS`).
    pub memory_mb: u64,
    /// Processes and threads of the sandbox's user (`RLIMIT_NPROC`; counted per uid).
    pub processes: u64,
    /// Largest file a command may write, MiB (`RLIMIT_FSIZE`).
    pub file_size_mb: u64,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Size of the private `/tmp` and `HOME` (each a tmpfs, held in memory), MiB.
    pub tmp_size_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 8192,
            processes: 1024,
            file_size_mb: 1024,
            open_files: 4096,
            tmp_size_mb: 512,
        }
    }
}

/// Everything the sandbox needs to know, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// `bwrap` (sandboxed) or `none`.
    pub mode: Mode,
    /// Which isolation a sandboxed mode uses.
    pub backend: Backend,
    /// The bubblewrap binary; a bare name is looked up in `PATH`.
    pub bwrap_path: PathBuf,
    /// Resource limits per command.
    pub limits: Limits,
    /// Host paths (the data directory, the settings file, key files) hidden even when they lie
    /// under a directory the sandbox shows (e.g. a data directory under `/etc`).
    pub hide: Vec<PathBuf>,
    /// The uid and gid commands run as when the server runs as root.
    pub run_as: (u32, u32),
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Bwrap,
            backend: Backend::Auto,
            bwrap_path: PathBuf::from("bwrap"),
            limits: Limits::default(),
            hide: Vec::new(),
            run_as: (65534, 65534),
        }
    }
}
