//! The `atlasia` command line. Boring on purpose: parse arguments, load settings, set up logs,
//! hand over to the command. Exit codes: 0 success, 1 failure, 2 bad input or settings (and
//! `run`'s 3: the bolt needs a human).

mod backup_cmd;
mod cli;
mod commands;
mod doctor;
mod offline;
mod prom;
mod run_cmd;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // TLS for outgoing HTTPS uses ring; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
