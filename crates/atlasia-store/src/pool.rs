//! The connection pool for either backend, migrations, and the pool figures that the metrics
//! and readiness check report.

use crate::{Backend, DbOptions, StoreError};
use atlasia_core::Redactor;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The `kind` of `db_errors_total` for a pool that stayed busy for the whole acquire timeout.
pub const POOL_EXHAUSTED: &str = "pool_exhausted";

/// The default of `engine.max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// One pool or the other. Query code is written once and expanded for both by [`on_pool!`].
#[derive(Clone)]
pub(crate) enum DbPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to whichever concrete pool the store has. The body is compiled
/// once per backend, so it must be valid SQL for both.
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.pool {
            $crate::pool::DbPool::Sqlite($p) => $body,
            $crate::pool::DbPool::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Acquires a connection (or, with `tx`, begins a transaction) while counting the caller as a
/// waiter, so `db_pool_connections_pending` is real; a pool timeout becomes `PoolTimeout`.
/// A database that cannot be reached fails the caller within `connect_timeout` with the named
/// fault (see `health.rs`).
macro_rules! acquire {
    ($store:expr, $pool:expr) => {{ $store.acquire_from($pool).await? }};
    ($store:expr, $pool:expr, tx) => {{
        let conn = $store.acquire_from($pool).await?;
        sqlx::Transaction::begin(conn, None)
            .await
            .map_err(|e| $store.map_err(e))?
    }};
    ($store:expr, $pool:expr, tx_with $begin:expr) => {{
        let conn = $store.acquire_from($pool).await?;
        sqlx::Transaction::begin(conn, Some(sqlx::SqlSafeStr::into_sql_str($begin)))
            .await
            .map_err(|e| $store.map_err(e))?
    }};
}
pub(crate) use acquire;

/// The database behind Atlasia. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: DbPool,
    /// SQLite only: writers queue here, first come first served. SQLite admits one writer at a
    /// time and lets the others sleep and retry, which is unfair (a writer can starve) and
    /// slow under contention; a FIFO lock in the process removes both. `None` on PostgreSQL.
    writer: Option<Arc<tokio::sync::Mutex<()>>>,
    waiting: Arc<AtomicU32>,
    acquire_timeout: Duration,
    max_connections: u32,
    /// Reachability as last seen (the `db_up` gauge) and the shared probe.
    pub(crate) health: Arc<crate::health::Health>,
    /// Bumped whenever this process makes a run claimable, so idle workers claim at once
    /// instead of at their next poll (other processes still find it by polling).
    queued: Arc<tokio::sync::watch::Sender<u64>>,
    /// Hygiene before storage: every text and JSON value the write paths store passes
    /// through it (known secrets redacted, NUL replaced), on both backends alike.
    redactor: Arc<Redactor>,
    /// A run whose worker died this many times at the same step fails instead of being
    /// reclaimed again (see `queue.rs`).
    max_attempts: u32,
}

/// Pool occupancy at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections lent out.
    pub active: u32,
    /// Connections open and free.
    pub idle: u32,
    /// Callers waiting for a connection.
    pub pending: u32,
    /// The configured maximum.
    pub max: u32,
}

/// Decrements the waiter count when the acquire finishes, however it finishes.
pub(crate) struct Waiting(Arc<AtomicU32>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Store {
    /// Opens the pool (creating the SQLite file and its folder when needed). Does not migrate.
    pub async fn connect(opts: &DbOptions) -> Result<Self, StoreError> {
        let backend = Backend::of_url(&opts.url).ok_or_else(|| {
            StoreError::Config("database.url must start with sqlite: or postgres://".into())
        })?;
        let pool = match backend {
            Backend::Sqlite => {
                let (url, max_pages) = split_max_page_count(&opts.url)?;
                let mut conn = SqliteConnectOptions::from_str(&url)
                    .map_err(|e| StoreError::Config(e.to_string()))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                if let Some(pages) = max_pages {
                    conn = conn.pragma("max_page_count", pages.to_string());
                }
                if let Some(dir) = conn
                    .get_filename()
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Config(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let pool = SqlitePoolOptions::new()
                    .after_release(|c, _| Box::pin(crate::health::fit_for_reuse(c)))
                    .max_connections(opts.max_connections)
                    .min_connections(opts.min_idle)
                    .acquire_timeout(opts.acquire_timeout)
                    .idle_timeout(opts.idle_timeout)
                    .max_lifetime(opts.max_lifetime)
                    .connect_with(conn)
                    .await?;
                DbPool::Sqlite(pool)
            }
            Backend::Postgres => {
                let conn = PgConnectOptions::from_str(&opts.url)
                    .map_err(|e| StoreError::Config(e.to_string()))?
                    .application_name("atlasia");
                let pool = PgPoolOptions::new()
                    .after_release(|c, _| Box::pin(crate::health::fit_for_reuse(c)))
                    .max_connections(opts.max_connections)
                    .min_connections(opts.min_idle)
                    .acquire_timeout(opts.acquire_timeout)
                    .idle_timeout(opts.idle_timeout)
                    .max_lifetime(opts.max_lifetime)
                    // Opened lazily: the first ping below names the fault within the connect
                    // timeout instead of retrying for the whole acquire timeout.
                    .connect_lazy_with(conn);
                DbPool::Postgres(pool)
            }
        };
        let writer =
            matches!(pool, DbPool::Sqlite(_)).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let store = Self {
            pool,
            writer,
            waiting: Arc::new(AtomicU32::new(0)),
            acquire_timeout: opts.acquire_timeout,
            max_connections: opts.max_connections,
            health: crate::health::Health::new(opts.connect_timeout),
            queued: Arc::new(tokio::sync::watch::Sender::new(0)),
            redactor: Arc::new(Redactor::default()),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        };
        store.ping().await?;
        Ok(store)
    }

    /// Installs the redactor every write path applies (install it once, right after
    /// [`Store::connect`], so every clone shares it). NUL is replaced even without one.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Arc::new(redactor);
        self
    }

    /// How many times a worker may die at the same step before the run fails (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The redactor the write paths apply.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Text as it may be stored: secrets redacted, NUL replaced.
    pub(crate) fn clean<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.redactor.clean(text)
    }

    /// JSON as it may be stored: every string cleaned like [`Store::clean`].
    pub(crate) fn clean_json<'a>(&self, value: &'a Value) -> Cow<'a, Value> {
        self.redactor.clean_json(value)
    }

    /// A receiver that changes whenever this process makes a run claimable.
    pub fn queue_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// Wakes idle workers: a run became claimable.
    pub(crate) fn wake_workers(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies any migration not yet applied. Safe to call on every start and concurrently.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            DbPool::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
            DbPool::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    /// Which engine this store talks to.
    pub fn backend(&self) -> Backend {
        match self.pool {
            DbPool::Sqlite(_) => Backend::Sqlite,
            DbPool::Postgres(_) => Backend::Postgres,
        }
    }

    /// A round trip to the database (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
        });
        Ok(())
    }

    /// Pool occupancy now.
    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle) = on_pool!(self, |p| (p.size(), p.num_idle()));
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        PoolStats {
            active: size.saturating_sub(idle),
            idle,
            pending: self.waiting.load(Ordering::Relaxed),
            max: self.max_connections,
        }
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await);
    }

    /// Waits for this process's turn to write (SQLite only), counted as a pool waiter and
    /// bounded by the acquire timeout like a connection. Hold the guard until the commit.
    pub(crate) async fn write_permit(
        &self,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, StoreError> {
        let Some(lock) = &self.writer else {
            return Ok(None);
        };
        let _w = self.waiting();
        tokio::time::timeout(self.acquire_timeout, lock.clone().lock_owned())
            .await
            .map(Some)
            .map_err(|_| self.pool_timeout())
    }

    /// The pool stayed busy for the whole acquire timeout (counted as `pool_exhausted`).
    fn pool_timeout(&self) -> StoreError {
        metrics::counter!("db_errors_total", "kind" => POOL_EXHAUSTED).increment(1);
        StoreError::PoolTimeout(self.acquire_timeout)
    }

    pub(crate) fn waiting(&self) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self.waiting.clone())
    }

    pub(crate) fn map_err(&self, e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::PoolTimedOut => self.pool_timeout(),
            other => {
                let e = StoreError::from(other);
                if let StoreError::Fault { fault, detail } = &e {
                    self.health.saw(Some((*fault, detail)));
                }
                e
            }
        }
    }
}

/// Takes `max_page_count=N` out of a SQLite URL's query: a cap on the database file's pages
/// (SQLite answers `SQLITE_FULL` past it, as on a full disk). The tests use it to emulate a
/// full disk where they cannot mount a small filesystem.
fn split_max_page_count(url: &str) -> Result<(String, Option<u64>), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut pages = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("max_page_count=") {
            Some(n) => {
                pages = Some(n.parse::<u64>().map_err(|_| {
                    StoreError::Config(format!("max_page_count must be a number, not {n:?}"))
                })?);
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, pages))
}

/// The PostgreSQL channel a run that became claimable is announced on, so workers in other
/// processes claim it at once rather than at their next poll.
pub(crate) const QUEUE_CHANNEL: &str = "atlasia_queue";

impl Store {
    /// Announces a claimable run to other processes (PostgreSQL; a no-op on SQLite, where every
    /// writer shares one file and the poll is the only cross-process signal).
    pub(crate) async fn announce_queued(&self) {
        if let DbPool::Postgres(p) = &self.pool {
            let sent = sqlx::query("SELECT pg_notify($1, '')")
                .bind(QUEUE_CHANNEL)
                .execute(p)
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "queue notification not sent; workers will poll");
            }
        }
    }

    /// On PostgreSQL, listens for runs announced by other processes and wakes this process's
    /// idle workers, until `stop` resolves; reconnects after a lost connection. The listener
    /// holds one connection of the pool. Returns at once on SQLite.
    pub async fn forward_queue_notifications(&self, stop: impl std::future::Future<Output = ()>) {
        let DbPool::Postgres(pool) = &self.pool else {
            return;
        };
        tokio::pin!(stop);
        // Reconnect attempts back off from 250 ms up to 30 s, jittered so replicas that lost
        // the database together do not come back together.
        let retry = atlasia_resilience::RetryPolicy {
            attempts: u32::MAX,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        };
        let mut failures = 0u32;
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
                l.listen(QUEUE_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                l = listener => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for queued runs; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(retry.backoff(failures)) => {}
                            () = &mut stop => return,
                        }
                        failures = failures.saturating_add(1);
                        continue;
                    }
                },
                () = &mut stop => return,
            };
            failures = 0;
            // Runs announced while we were not listening are found by the next claim.
            self.wake_workers();
            loop {
                tokio::select! {
                    n = listener.recv() => match n {
                        Ok(_) => self.wake_workers(),
                        Err(e) => {
                            tracing::warn!(error = %e, "queue listener lost; reconnecting");
                            break;
                        }
                    },
                    () = &mut stop => return,
                }
            }
        }
    }
}
