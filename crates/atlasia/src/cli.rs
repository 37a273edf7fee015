//! Arguments of every subcommand (clap derive). `--help` on each is generated from these docs.

use atlasia_core::Role;
use atlasia_server::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Atlasia turns a software issue into a pull request through a pipeline of LLM agents.
#[derive(Debug, Parser)]
#[command(name = "atlasia", version, about, long_about = None)]
pub struct Cli {
    /// Settings file (TOML). Default: ./atlasia.toml when it exists.
    #[arg(long, global = true, env = "ATLASIA_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

/// `atlasia run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The repository: a git repository's top folder, or a plain folder (imported into a
    /// scratch repository under the data directory; the folder itself is never changed).
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The issue as Markdown: first line `# Title`, then the body.
    #[arg(long, value_name = "FILE.md")]
    pub issue: PathBuf,
    /// The issue's number (names the branch `ai/issue-<n>` and adds `Closes #<n>`).
    #[arg(long, value_name = "N")]
    pub issue_number: Option<i64>,
    /// 0–10, higher first (default 5).
    #[arg(long, value_name = "0-10")]
    pub priority: Option<i32>,
    /// `autonomous` (default), `confirm` (stop at the architecture gate) or `observe`.
    #[arg(long, value_enum)]
    pub autonomy: Option<AutonomyArg>,
    /// Hard spending cap for this bolt, in USD.
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
}

/// Autonomy levels.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AutonomyArg {
    Autonomous,
    Confirm,
    Observe,
}

impl From<AutonomyArg> for atlasia_core::Autonomy {
    fn from(a: AutonomyArg) -> Self {
        match a {
            AutonomyArg::Autonomous => Self::Autonomous,
            AutonomyArg::Confirm => Self::Confirm,
            AutonomyArg::Observe => Self::Observe,
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one bolt on a local repository in this process, with live progress; then print the
    /// branch, the pull request, the diff stat, the tests and the cost. Without a configured
    /// LLM the built-in simulator answers. Exit 0 done, 3 escalated or at a gate, 1 failed,
    /// 2 bad input.
    Run(RunArgs),
    /// Run the HTTP API (migrates the database first). Stops cleanly on SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Diagnose an installation in one go: settings, database, queue, connections, disk, and
    /// the running server's readiness, pool and memory. Exit 1 when a check fails.
    Doctor(DoctorArgs),
    /// Inspect settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Administration: API tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Backups of the database: create (consistent while serving), verify, restore.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Run sim-llm: a local, deterministic fake of the OpenAI and Anthropic APIs with fault
    /// injection, for tests, benchmarks and the offline demo. Stops on SIGINT/SIGTERM.
    SimLlm(SimLlmArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port). Overrides
    /// `server.bind`.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Base URL of the running server to probe. Default: derived from `server.bind`.
    #[arg(long, value_name = "URL", conflicts_with = "no_server")]
    pub server: Option<String>,
    /// Do not probe a running server (check only settings, database and disk).
    #[arg(long)]
    pub no_server: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings (file + environment + defaults) as TOML, secrets masked.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage API bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once; only its hash is stored.
    Create {
        /// A unique name for the token (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// What the token may do.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id or name.
    Revoke {
        /// The token's id or name.
        id_or_name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a compressed backup with a manifest (schema version, rows per table, SHA-256)
    /// and print its path. Safe while a server runs: it reads one consistent snapshot.
    Create {
        /// Folder for the backup. Default: `<storage.data_dir>/backups`.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Then keep only the newest N backups in that folder (only files named like ours
        /// are ever deleted).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Check a backup: checksum, then a restore into a scratch SQLite database and its row
    /// counts against the manifest. Exit 2 with one line when the file is damaged.
    Verify {
        /// The backup file.
        file: PathBuf,
    },
    /// Restore a backup into the configured database (SQLite or PostgreSQL, whichever the
    /// backup came from). Refuses a database that holds any rows unless `--force`.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Replace the contents of a non-empty database.
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct SimLlmArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8089")]
    pub bind: String,
    /// Require this API key: `Authorization: Bearer KEY` on the OpenAI route, `x-api-key: KEY`
    /// (and an `anthropic-version` header) on the Anthropic route.
    #[arg(
        long,
        env = "SIM_LLM_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Seed of the failure draws and the latency jitter (same seed, same run).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Fault for every model request without an `X-Sim-Fault` header: 429, 500, 502, 503,
    /// 529, auth, stall, malformed, cut=<n>, length[=<n>], context[=<n>], prose, latency=<ms>,
    /// comma-separated.
    #[arg(long, value_name = "SPEC")]
    pub fault: Option<atlasia_sim::FaultSpec>,
    /// Share of model requests (0..1) that fail with --fail-status.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Status of the --fail-rate and --fail-first failures.
    #[arg(long, value_name = "CODE", default_value_t = 503)]
    pub fail_status: u16,
    /// The first N model requests fail with --fail-status, later ones succeed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fail_first: u64,
    /// Delay before every answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra delay of 0..=MS milliseconds per request, drawn from the seed.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Model requests allowed per minute; beyond that, 429 with Retry-After to the window end.
    #[arg(long, value_name = "N")]
    pub rate_limit_rpm: Option<u32>,
    /// Tokens (input + output) allowed per minute; once used, 429 with Retry-After to the
    /// window end.
    #[arg(long, value_name = "N")]
    pub rate_limit_tpm: Option<u64>,
    /// Retry-After of injected 429s, in seconds (a request's X-Sim-Retry-After wins).
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after_secs: u64,
    /// The longest a stall holds a request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub stall_max_secs: u64,
}
