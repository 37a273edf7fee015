//! `atlasia backup create | verify | restore`: the backup file around the store's logical rows.
//!
//! A backup is one gzip file, `atlasia-backup-<UTC time>.jsonl.gz`, of two gzip members that
//! `zcat` shows as one text: line 1 the [`Manifest`] (format, schema version, rows per table,
//! SHA-256 of the rest), then the rows as JSON lines (see `atlasia_store::Store::export_rows`).
//! The same logical format on both backends: a backup restores into SQLite or PostgreSQL
//! alike, and `verify` always restores into a scratch SQLite file, so one tested path works
//! everywhere without `pg_dump` at hand.
//!
//! Exit codes: a file that is missing, truncated, altered, or not ours, and a target database
//! that is not empty without `--force`, are bad input (2, one line); a database or disk that
//! fails is 1.

use crate::cli::BackupCommand;
use crate::commands::{CliError, open_store};
use atlasia_core::Timestamp;
use atlasia_server::Settings;
use atlasia_store::{BackupError, DbOptions, Store, TableCounts};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

const PREFIX: &str = "atlasia-backup-";
const SUFFIX: &str = ".jsonl.gz";
const FORMAT: &str = "atlasia-backup";
const FORMAT_VERSION: u32 = 1;

/// The first line of a backup.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    /// Always `atlasia-backup`.
    format: String,
    format_version: u32,
    created_at: String,
    atlasia_version: String,
    /// `sqlite` or `postgres`: where the rows came from (they restore into either).
    source_backend: String,
    /// The newest migration of the source database.
    schema_version: i64,
    /// Rows per table.
    tables: TableCounts,
    /// SHA-256 (hex) of everything after the manifest line, uncompressed.
    payload_sha256: String,
}

/// Runs a `backup` subcommand.
pub async fn run(settings: Settings, cmd: BackupCommand) -> Result<(), CliError> {
    match cmd {
        BackupCommand::Create { to, keep } => {
            let dir = to.unwrap_or_else(|| settings.storage.data_dir.join("backups"));
            let (path, what) = create(&settings, &dir).await?;
            eprintln!("{what}");
            println!("{}", path.display());
            if let Some(keep) = keep {
                for old in prune(&dir, keep as usize)? {
                    eprintln!("deleted old backup {}", old.display());
                }
            }
            Ok(())
        }
        BackupCommand::Verify { file } => {
            let m = check(&file)?;
            let scratch = tempfile::tempdir()?;
            let opts = DbOptions {
                url: format!("sqlite://{}/verify.db", scratch.path().display()),
                max_connections: 1,
                min_idle: 0,
                ..DbOptions::default()
            };
            let store = Store::connect(&opts).await?;
            store.migrate().await?;
            let res = restore_into(&store, &file, &m, false).await;
            store.close().await;
            res?;
            println!(
                "backup {} is good: {} (schema {}, from {}, {})",
                file.display(),
                summary(&m.tables),
                m.schema_version,
                m.source_backend,
                m.created_at
            );
            Ok(())
        }
        BackupCommand::Restore { file, force } => {
            let m = check(&file)?;
            let store = open_store(&settings).await?;
            let res = async {
                let now = store.table_counts().await?;
                if !force && now.values().any(|&n| n > 0) {
                    return Err(CliError::BadInput(format!(
                        "the {} database is not empty ({}); stop the server and pass --force \
                         to replace its contents",
                        store.backend().as_str(),
                        summary(&now)
                    )));
                }
                restore_into(&store, &file, &m, force).await
            }
            .await;
            store.close().await;
            res?;
            println!(
                "restored {} into the {} database: {}",
                file.display(),
                store.backend().as_str(),
                summary(&m.tables)
            );
            Ok(())
        }
    }
}

/// Writes a backup of the configured database into `dir`; returns its path and what it holds.
/// Consistent while a server writes (one snapshot); the file appears under its final name only
/// once complete.
async fn create(settings: &Settings, dir: &Path) -> Result<(PathBuf, String), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::BadInput(format!(
            "cannot create backup folder {}: {e}",
            dir.display()
        ))
    })?;
    // No migration: a backup reads the database as it is, on a small pool of its own.
    let mut opts = settings.db_options();
    opts.max_connections = 2;
    opts.min_idle = 0;
    let store = Store::connect(&opts).await?;
    let stamp = Timestamp::now().to_rfc3339().replace(['-', ':'], "");
    let name = format!("{PREFIX}{stamp}{SUFFIX}");
    let payload_tmp = dir.join(format!(".{name}.payload"));
    let final_tmp = dir.join(format!(".{name}.partial"));
    let res = async {
        let schema_version = store.schema_version().await?;
        let (tables, sha) = {
            let file = File::create_new(&payload_tmp)?;
            let mut out =
                Hashing::new(GzEncoder::new(BufWriter::new(file), Compression::default()));
            let counts = store.export_rows(&mut out).await.map_err(store_err)?;
            let sha = out.hasher.finalize_reset();
            out.inner
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
            (counts, hex::encode(sha))
        };
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: Timestamp::now().to_rfc3339(),
            atlasia_version: env!("CARGO_PKG_VERSION").into(),
            source_backend: store.backend().as_str().into(),
            schema_version,
            tables,
            payload_sha256: sha,
        };
        let mut out = File::create_new(&final_tmp)?;
        let mut head = GzEncoder::new(&mut out, Compression::default());
        serde_json::to_writer(&mut head, &manifest).map_err(std::io::Error::from)?;
        head.write_all(b"\n")?;
        head.finish()?;
        std::io::copy(&mut File::open(&payload_tmp)?, &mut out)?;
        out.sync_all()?;
        let path = dir.join(&name);
        std::fs::rename(&final_tmp, &path)?;
        let what = format!(
            "backup of the {} database (schema {}): {}",
            manifest.source_backend,
            manifest.schema_version,
            summary(&manifest.tables)
        );
        Ok((path, what))
    }
    .await;
    store.close().await;
    let _ = std::fs::remove_file(&payload_tmp);
    if res.is_err() {
        let _ = std::fs::remove_file(&final_tmp);
    }
    res
}

/// `serve`'s schedule (`[backup] interval_secs` > 0): a backup every interval, then the
/// retention of `[backup] keep`, until `stop`. Failures are logged and counted, never fatal.
pub async fn schedule(settings: Settings, stop: tokio_util::sync::CancellationToken) {
    metrics::describe_gauge!(
        "backup_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time of the last scheduled backup that succeeded (0: none since start)."
    );
    metrics::describe_counter!("backup_failures_total", "Scheduled backups that failed.");
    metrics::gauge!("backup_last_success_timestamp_seconds").set(0.0);
    metrics::counter!("backup_failures_total").absolute(0);
    let every = std::time::Duration::from_secs(settings.backup.interval_secs);
    if every.is_zero() {
        return;
    }
    let dir = settings
        .backup
        .dir
        .clone()
        .unwrap_or_else(|| settings.storage.data_dir.join("backups"));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let keep = settings.backup.keep as usize;
        let done = match create(&settings, &dir).await {
            Ok((path, what)) if keep > 0 => prune(&dir, keep).map(|old| (path, what, old)),
            Ok((path, what)) => Ok((path, what, Vec::new())),
            Err(e) => Err(e),
        };
        match done {
            Ok((path, what, old)) => {
                let now = Timestamp::now().0 as f64 / 1000.0;
                metrics::gauge!("backup_last_success_timestamp_seconds").set(now);
                tracing::info!(path = %path.display(), deleted = old.len(), "{what}");
            }
            Err(e) => {
                metrics::counter!("backup_failures_total").increment(1);
                tracing::error!(dir = %dir.display(), "scheduled backup failed: {e}");
            }
        }
    }
}

/// Reads the whole file once: the manifest must parse and the payload's checksum match.
/// Nothing is written anywhere before this passes.
fn check(file: &Path) -> Result<Manifest, CliError> {
    let (m, mut payload) = open(file)?;
    let mut hashing = Hashing::new(std::io::sink());
    std::io::copy(&mut payload, &mut hashing).map_err(|e| damaged(file, &e.to_string()))?;
    let got = hex::encode(hashing.hasher.finalize());
    if got != m.payload_sha256 {
        return Err(damaged(
            file,
            &format!(
                "checksum mismatch (manifest {}, content {got})",
                m.payload_sha256
            ),
        ));
    }
    Ok(m)
}

/// Opens a backup: its manifest, and a reader positioned on the payload.
fn open(file: &Path) -> Result<(Manifest, BufReader<MultiGzDecoder<File>>), CliError> {
    let f = File::open(file)
        .map_err(|e| CliError::BadInput(format!("cannot read {}: {e}", file.display())))?;
    let mut reader = BufReader::new(MultiGzDecoder::new(f));
    let mut first = String::new();
    reader.read_line(&mut first).map_err(|e| {
        damaged(
            file,
            &format!("no readable manifest: truncated, or not an Atlasia backup ({e})"),
        )
    })?;
    let m: Manifest = serde_json::from_str(&first)
        .map_err(|_| damaged(file, "no readable manifest (not an Atlasia backup?)"))?;
    if m.format != FORMAT || m.format_version > FORMAT_VERSION {
        return Err(damaged(
            file,
            &format!(
                "format {} v{} is not one this Atlasia reads",
                m.format, m.format_version
            ),
        ));
    }
    Ok((m, reader))
}

/// Inserts the rows of a checked backup into `store` and compares what landed with the
/// manifest.
async fn restore_into(
    store: &Store,
    file: &Path,
    m: &Manifest,
    replace: bool,
) -> Result<(), CliError> {
    let ours = store.schema_version().await?;
    if m.schema_version > ours {
        return Err(CliError::BadInput(format!(
            "backup {} is of schema {}, newer than this Atlasia's {ours}; restore it with a \
             newer Atlasia",
            file.display(),
            m.schema_version
        )));
    }
    let (_, payload) = open(file)?;
    store
        .import_rows(payload, replace)
        .await
        .map_err(|e| match e {
            BackupError::Store(s) => CliError::Store(s),
            other => damaged(file, &other.to_string()),
        })?;
    let landed = store.table_counts().await?;
    for (table, want) in &m.tables {
        let got = landed.get(table).copied().unwrap_or(0);
        if got != *want {
            return Err(damaged(
                file,
                &format!("table {table} restored {got} rows, the manifest says {want}"),
            ));
        }
    }
    Ok(())
}

/// Deletes the oldest of our backups in `dir` beyond the newest `keep`; never another file.
fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, CliError> {
    let mut ours: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_ours(n))
        .collect();
    // The names carry the UTC time, so their order is their age.
    ours.sort_unstable();
    let excess = ours.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for name in &ours[..excess] {
        let path = dir.join(name);
        std::fs::remove_file(&path)?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// `atlasia-backup-YYYYMMDDTHHMMSS.mmmZ.jsonl.gz` exactly.
fn is_ours(name: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
    else {
        return false;
    };
    stamp.len() == 20
        && stamp.char_indices().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == '.',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}

fn summary(counts: &TableCounts) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn damaged(file: &Path, why: &str) -> CliError {
    CliError::BadInput(format!("backup {} is damaged: {why}", file.display()))
}

fn store_err(e: BackupError) -> CliError {
    match e {
        BackupError::Store(s) => CliError::Store(s),
        BackupError::Io(e) => CliError::Io(e),
        BackupError::Format { .. } => CliError::BadInput(e.to_string()),
    }
}

/// Passes bytes through to `inner` while hashing them.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_ours() {
        assert!(is_ours("atlasia-backup-20261207T025500.123Z.jsonl.gz"));
        assert!(!is_ours(
            "atlasia-backup-20261207T025500.123Z.jsonl.gz.partial"
        ));
        assert!(!is_ours(
            ".atlasia-backup-20261207T025500.123Z.jsonl.gz.payload"
        ));
        assert!(!is_ours("atlasia-backup-notes.jsonl.gz"));
        assert!(!is_ours("atlasia-backup-2026120XT025500.123Z.jsonl.gz"));
        assert!(!is_ours("atlasia.db"));
    }
}
