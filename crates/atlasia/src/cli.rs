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

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}
