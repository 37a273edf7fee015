//! What each subcommand does, on top of the server library.

use crate::cli::{AdminCommand, Cli, Command, ConfigCommand, TokenCommand};
use atlasia_server::routes::admin::issue_token;
use atlasia_server::{Application, Settings, SettingsError, StartError, shutdown_signal};
use atlasia_store::{Store, StoreError};
use std::io::Write;
use tokio_util::sync::CancellationToken;

/// A command's failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("at least one check failed")]
    Unhealthy,
}

impl CliError {
    /// 2 for what the user can fix by changing input or settings, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Settings(_) | Self::BadInput(_) => 2,
            Self::Start(StartError::Store(StoreError::Config(_))) => 2,
            _ => 1,
        }
    }
}

/// Runs the parsed command; returns the exit code.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(f) = cli.log_format {
        settings.server.log_format = f.into();
    }
    let default_filter = match cli.command {
        Command::Run(_) => "warn,atlasia_engine=warn",
        _ => "info,sqlx=warn,tower_http=warn",
    };
    atlasia_server::telemetry::init_logs_redacting(
        settings.server.log_format,
        default_filter,
        settings.redactor()?,
    );
    let done = match cli.command {
        Command::Run(args) => return crate::run_cmd::run(settings, args).await,
        Command::Serve(args) => {
            if let Some(b) = args.bind {
                settings.server.bind = b;
                settings.validate()?;
            }
            serve(settings).await
        }
        Command::Migrate => {
            let store = open_store(&settings).await?;
            store.close().await;
            println!("migrations applied ({})", store.backend().as_str());
            Ok(())
        }
        Command::Doctor(args) => {
            let server = if args.no_server {
                None
            } else {
                args.server.or_else(|| default_server_url(&settings))
            };
            let findings = crate::doctor::diagnose(&settings, server.as_deref()).await;
            match crate::doctor::print(&findings) {
                crate::doctor::Level::Fail => Err(CliError::Unhealthy),
                _ => Ok(()),
            }
        }
        Command::Config(ConfigCommand::Show) => {
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Admin(AdminCommand::Token(cmd)) => token(settings, cmd).await,
        Command::Backup(cmd) => crate::backup_cmd::run(settings, cmd).await,
        Command::SimLlm(args) => sim_llm(args).await,
    };
    done.map(|()| 0)
}

/// Where a local server listens according to the settings (wildcard binds probed on loopback).
fn default_server_url(settings: &Settings) -> Option<String> {
    let mut addr = settings.bind_addr().ok()?;
    if addr.port() == 0 {
        return None;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Some(format!("http://{addr}"))
}

pub async fn open_store(settings: &Settings) -> Result<Store, CliError> {
    // `atlasia run` and the admin commands store with the same hygiene as `serve`.
    let store = Store::connect(&settings.db_options())
        .await?
        .with_redactor(settings.redactor()?)
        .with_max_attempts(settings.engine.max_attempts);
    store.migrate().await?;
    Ok(store)
}

async fn serve(mut settings: Settings) -> Result<(), CliError> {
    let backend = atlasia_store::Backend::of_url(&settings.db_url()).map_or("?", |b| b.as_str());
    let sim_tasks = tokio_util::task::TaskTracker::new();
    let sim_stop = CancellationToken::new();
    if let Some(banner) = crate::offline::ensure_llm(&mut settings, &sim_tasks, &sim_stop).await? {
        // A log event (so JSON logs stay JSON); stdout's first line stays the address.
        tracing::warn!(simulator = true, "{banner}");
    }
    let backups = settings.clone();
    let app = Application::build(settings).await?;
    let addr = app.local_addr()?;
    // The first stdout line tells scripts and tests where we listen (useful with port 0).
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    tracing::info!(%addr, backend, "atlasia serving");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    let scheduled = tokio::spawn(crate::backup_cmd::schedule(backups, shutdown.clone()));
    app.run_until_stopped(shutdown).await?;
    let _ = scheduled.await;
    sim_stop.cancel();
    sim_tasks.close();
    sim_tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn token(settings: Settings, cmd: TokenCommand) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let res = match cmd {
        TokenCommand::Create { name, role } => match issue_token(&store, &name, role).await {
            Ok((info, secret)) => {
                println!("{secret}");
                eprintln!(
                    "created token '{}' (id {}, role {}); it is shown only once",
                    info.name, info.id, info.role
                );
                Ok(())
            }
            Err(e) => Err(CliError::BadInput(e.to_string())),
        },
        TokenCommand::List => {
            for t in store.list_tokens().await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let used = t
                    .last_used_at
                    .map_or_else(|| "never".into(), |u| u.to_rfc3339());
                println!(
                    "{}\t{}\t{}\t{}\tcreated {}\tlast used {}",
                    t.id,
                    t.name,
                    t.role,
                    state,
                    t.created_at.to_rfc3339(),
                    used
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id_or_name } => match store.revoke_token(&id_or_name).await {
            Ok(t) => {
                println!("revoked token '{}' ({})", t.name, t.id);
                Ok(())
            }
            Err(StoreError::NotFound(_)) => Err(CliError::BadInput(format!(
                "no active token with id or name '{id_or_name}'"
            ))),
            Err(e) => Err(e.into()),
        },
    };
    store.close().await;
    res
}

/// Runs sim-llm until SIGINT/SIGTERM. Like `serve`, the first stdout line says where it listens.
async fn sim_llm(args: crate::cli::SimLlmArgs) -> Result<(), CliError> {
    use std::time::Duration;
    let cfg = atlasia_sim::SimConfig {
        api_key: args.api_key,
        seed: args.seed,
        fault: args.fault,
        fail_rate: args.fail_rate,
        fail_status: args.fail_status,
        fail_first: args.fail_first,
        latency: Duration::from_millis(args.latency_ms),
        latency_jitter: Duration::from_millis(args.latency_jitter_ms),
        rate_limit_rpm: args.rate_limit_rpm,
        rate_limit_tpm: args.rate_limit_tpm,
        retry_after: Duration::from_secs(args.retry_after_secs),
        stall_max: Duration::from_secs(args.stall_max_secs),
    };
    cfg.validate()
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .map_err(|e| CliError::BadInput(format!("cannot listen on {}: {e}", args.bind)))?;
    let addr = listener.local_addr()?;
    // The banner goes first, so whoever reads the address has already been told what this is.
    eprintln!("{}", atlasia_sim::BANNER);
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    atlasia_sim::serve(cfg, listener, shutdown).await?;
    tracing::info!("sim-llm stopped");
    Ok(())
}
