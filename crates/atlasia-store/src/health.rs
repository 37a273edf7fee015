//! Whether the database can be reached, and connections that are never lent out in doubt.
//!
//! A pool asked for a connection while the database is down keeps retrying until its acquire
//! timeout and then says only "timed out". Here a caller whose connection has not come within
//! half of `connect_timeout` makes one direct connection attempt (shared with every other
//! waiter: at most one probe in flight) bounded by the other half; when that fails the caller
//! gets the named fault at once — within `connect_timeout` — and `db_up` drops to 0. A pool that
//! is merely busy passes the probe, and the caller keeps waiting for its connection.
//!
//! A connection coming back to the pool still inside a transaction (a COMMIT that failed, e.g.
//! on a full disk, and whose rollback failed too) is closed instead of being lent again: lent
//! again, its next "transaction" would be a savepoint inside the stale one, acknowledged but
//! never committed.

use crate::error::classify;
use crate::{DbFault, Store, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection, Database, Pool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a probe found: reachable, or the fault and the driver's words.
type ProbeOutcome = Result<(), (DbFault, String)>;

/// Reachability as last seen, shared by every clone of the store.
pub(crate) struct Health {
    up: AtomicBool,
    connect_timeout: Duration,
    /// The last probe: when it ended and what it found. Holding the lock is being the prober.
    last_probe: tokio::sync::Mutex<Option<(Instant, ProbeOutcome)>>,
}

impl Health {
    pub(crate) fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            up: AtomicBool::new(true),
            connect_timeout: connect_timeout.max(Duration::from_millis(2)),
            last_probe: tokio::sync::Mutex::new(None),
        })
    }

    /// Records what a call saw; logs the transitions only (once per outage, once per recovery).
    pub(crate) fn saw(&self, fault: Option<(DbFault, &str)>) {
        match fault {
            None => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("database reachable again");
                }
            }
            Some((fault, detail)) if fault.is_connectivity() => {
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::error!(kind = fault.kind(), error = %detail, "{fault}");
                }
            }
            Some(_) => {}
        }
    }
}

/// The `after_release` hook of both pools: keep the connection only if no transaction is left
/// open on it. A connection inside one may just have a rollback queued by a dropped
/// transaction; a round trip flushes it before the verdict (the common path costs nothing).
pub(crate) async fn fit_for_reuse<C: Connection>(conn: &mut C) -> Result<bool, sqlx::Error> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "a pooled connection is still inside a transaction (a failed COMMIT?); closing it"
        );
        return Ok(false);
    }
    Ok(true)
}

impl Store {
    /// Whether the database was reachable at the last call (the `db_up` gauge).
    pub fn db_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    /// A connection from `pool`, counted as a waiter. Fails with the named fault within
    /// `connect_timeout` when the database cannot be reached, with `PoolTimeout` when the pool
    /// stays busy for the whole acquire timeout.
    pub(crate) async fn acquire_from<DB: Database>(
        &self,
        pool: &Pool<DB>,
    ) -> Result<PoolConnection<DB>, StoreError> {
        let _w = self.waiting();
        let acquire = pool.acquire();
        tokio::pin!(acquire);
        // While the database is known down, probe at once; otherwise give the pool a moment.
        let grace = if self.db_up() {
            self.health.connect_timeout / 2
        } else {
            Duration::ZERO
        };
        let probe = async {
            tokio::time::sleep(grace).await;
            self.probe(pool).await
        };
        let first = tokio::select! {
            r = &mut acquire => Ok(r),
            p = probe => Err(p),
        };
        let res = match first {
            Ok(r) => r,
            Err(Err(fault)) => return Err(fault),
            // Reachable: the pool is only busy; keep our place in its queue.
            Err(Ok(())) => acquire.await,
        };
        match res {
            Ok(conn) => {
                self.health.saw(None);
                Ok(conn)
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// One direct connection attempt bounded by half of `connect_timeout` (shared: a result
    /// younger than that is reused). SQLite files are always "reachable".
    async fn probe<DB: Database>(&self, pool: &Pool<DB>) -> Result<(), StoreError> {
        if matches!(self.backend(), crate::Backend::Sqlite) {
            return Ok(());
        }
        let bound = self.health.connect_timeout / 2;
        let mut last = self.health.last_probe.lock().await;
        let fresh = last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < bound)
            .map(|(_, r)| r.clone());
        let outcome = match fresh {
            Some(r) => r,
            None => {
                let opts = pool.connect_options();
                let r = match tokio::time::timeout(bound, opts.connect()).await {
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        Ok(())
                    }
                    Ok(Err(e)) => {
                        Err((classify(&e).unwrap_or(DbFault::Unavailable), e.to_string()))
                    }
                    Err(_) => Err((
                        DbFault::Unavailable,
                        format!("no connection within {} ms", bound.as_millis()),
                    )),
                };
                *last = Some((Instant::now(), r.clone()));
                r
            }
        };
        drop(last);
        match outcome {
            Ok(()) => Ok(()),
            Err((fault, detail)) => {
                self.health.saw(Some((fault, &detail)));
                metrics::counter!("db_errors_total", "kind" => fault.kind()).increment(1);
                Err(StoreError::Fault { fault, detail })
            }
        }
    }
}
