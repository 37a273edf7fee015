//! Store errors. The server maps them to HTTP in one place; here they say what went wrong.

use atlasia_core::TransitionError;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection became free within the pool's acquire timeout.
    #[error("no database connection became available within {0:?}")]
    PoolTimeout(std::time::Duration),
    /// The asked-for row does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The run's status does not allow the action.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A uniqueness rule refused the write (e.g. an active token with that name exists).
    #[error("{0}")]
    Conflict(String),
    /// Another run of the same (repository, issue) is still active (PENDING, RUNNING, PAUSED,
    /// WAITING_GATE or ESCALATED); carries its id when known.
    #[error("run {} of this repository and issue is still active", .0.as_deref().unwrap_or("(unknown)"))]
    RunActive(Option<String>),
    /// A pagination cursor that this store did not issue.
    #[error("invalid cursor")]
    BadCursor,
    /// A stored value could not be read back (a hand edit outside the allowed values).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database URL or options are unusable.
    #[error("database configuration: {0}")]
    Config(String),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database is unreachable, refuses us, cannot write, or is full: a named fault,
    /// counted in `db_errors_total{kind}`.
    #[error("{fault}: {detail}")]
    Fault { fault: DbFault, detail: String },
    /// Anything else the driver reported.
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

/// A database fault an operator can act on, each with its own error code, log line and
/// `db_errors_total{kind}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFault {
    /// Connection refused or lost, the server shutting down or starting up, no answer in
    /// `database.connect_timeout_ms`.
    Unavailable,
    /// The database host name does not resolve.
    HostUnknown,
    /// The server refused our credentials.
    AuthFailed,
    /// The server refuses new connections ("too many clients"): its `max_connections` is
    /// used up by us and others.
    TooManyConnections,
    /// The database accepts reads only (a replica, a read-only file or mount).
    ReadOnly,
    /// The disk under the database is full (ENOSPC, SQLITE_FULL, PostgreSQL `disk_full`).
    DiskFull,
}

impl DbFault {
    /// Every fault, for zero-initialised counters.
    pub const ALL: [Self; 6] = [
        Self::Unavailable,
        Self::HostUnknown,
        Self::AuthFailed,
        Self::TooManyConnections,
        Self::ReadOnly,
        Self::DiskFull,
    ];

    /// The `kind` label of `db_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::HostUnknown => "host_unknown",
            Self::AuthFailed => "auth_failed",
            Self::TooManyConnections => "too_many_connections",
            Self::ReadOnly => "read_only",
            Self::DiskFull => "disk_full",
        }
    }

    /// Whether the fault says the database cannot be reached at all (as opposed to a
    /// database that answers but refuses one write).
    pub fn is_connectivity(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::HostUnknown | Self::AuthFailed | Self::TooManyConnections
        )
    }
}

impl std::fmt::Display for DbFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "the database is unavailable",
            Self::HostUnknown => "the database host name does not resolve",
            Self::AuthFailed => "the database refused the credentials",
            Self::TooManyConnections => "the database refuses new connections (too many clients)",
            Self::ReadOnly => "the database is read-only",
            Self::DiskFull => "the disk under the database is full",
        })
    }
}

/// Which named fault a driver error is, if any.
pub fn classify(e: &sqlx::Error) -> Option<DbFault> {
    match e {
        sqlx::Error::Io(io) => Some(classify_io(io)),
        sqlx::Error::Tls(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            Some(DbFault::Unavailable)
        }
        sqlx::Error::Database(db) => classify_code(db.code().as_deref()?),
        _ => None,
    }
}

fn classify_io(io: &std::io::Error) -> DbFault {
    use std::io::ErrorKind;
    let text = io.to_string();
    if io.raw_os_error() == Some(28) || io.kind() == ErrorKind::StorageFull {
        DbFault::DiskFull
    } else if io.kind() == ErrorKind::ReadOnlyFilesystem {
        DbFault::ReadOnly
    } else if text.contains("lookup address")
        || text.contains("Name or service not known")
        || text.contains("nodename nor servname")
        || text.contains("Temporary failure in name resolution")
    {
        DbFault::HostUnknown
    } else {
        DbFault::Unavailable
    }
}

/// PostgreSQL SQLSTATEs (five characters) and SQLite result codes (numbers, extended codes
/// carry the primary one in the low byte).
fn classify_code(code: &str) -> Option<DbFault> {
    if code.len() == 5 {
        return match code {
            "28000" | "28P01" => Some(DbFault::AuthFailed),
            "53300" | "53400" => Some(DbFault::TooManyConnections),
            "53100" => Some(DbFault::DiskFull),
            "25006" => Some(DbFault::ReadOnly),
            // admin_shutdown, crash_shutdown, cannot_connect_now; connection exceptions.
            "57P01" | "57P02" | "57P03" => Some(DbFault::Unavailable),
            c if c.starts_with("08") => Some(DbFault::Unavailable),
            _ => None,
        };
    }
    match code.parse::<u32>().ok()? & 0xff {
        8 => Some(DbFault::ReadOnly),
        13 => Some(DbFault::DiskFull),
        14 => Some(DbFault::Unavailable),
        _ => None,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Self::PoolTimeout(std::time::Duration::ZERO),
            sqlx::Error::RowNotFound => Self::NotFound("row"),
            sqlx::Error::Database(ref db) if db.is_unique_violation() && is_one_active(&**db) => {
                Self::RunActive(None)
            }
            sqlx::Error::Database(ref db) if db.is_unique_violation() => {
                Self::Conflict(db.message().to_owned())
            }
            other => match classify(&other) {
                Some(fault) => {
                    metrics::counter!("db_errors_total", "kind" => fault.kind()).increment(1);
                    Self::Fault {
                        fault,
                        detail: other.to_string(),
                    }
                }
                None => Self::Db(other),
            },
        }
    }
}

/// True when the violated rule is the one-active-run-per-issue index (its name on PostgreSQL,
/// its columns in SQLite's message).
fn is_one_active(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.constraint() == Some(ONE_ACTIVE_INDEX)
        || db
            .message()
            .contains("workflow_runs.repo, workflow_runs.issue_number")
}

/// The partial unique index of migration 0002.
pub(crate) const ONE_ACTIVE_INDEX: &str = "workflow_runs_one_active";

impl StoreError {
    /// Whether trying the same write again may succeed. A busy pool, a lost connection, a lock
    /// or serialization conflict may pass; a value the database refuses (a data exception such
    /// as NUL on PostgreSQL, a constraint, a value too large) will be refused again, so the
    /// caller must not loop on it. Unknown database errors count as retryable: the poison-run
    /// bound (`engine.max_attempts`) still ends a run that keeps failing that way.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::PoolTimeout(_) | Self::Fault { .. } => true,
            Self::Db(sqlx::Error::Database(db)) => !refused_value(db.as_ref()),
            Self::Db(
                sqlx::Error::Encode(_)
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::TypeNotFound { .. },
            ) => false,
            Self::Db(_) => true,
            Self::NotFound(_)
            | Self::Transition(_)
            | Self::Conflict(_)
            | Self::RunActive(_)
            | Self::BadCursor
            | Self::Corrupt(_)
            | Self::Config(_)
            | Self::Migrate(_) => false,
        }
    }
}

/// A database error about the value written, not the moment: PostgreSQL SQLSTATE classes 22
/// (data exception), 23 (integrity constraint) and 54 (program limit exceeded); SQLite's
/// TOOBIG (18), CONSTRAINT (19) and MISMATCH (20), extended codes included.
fn refused_value(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    // PostgreSQL's SQLSTATE has five characters; SQLite's codes are shorter numbers.
    if code.len() == 5 {
        return matches!(code.get(..2), Some("22" | "23" | "54"));
    }
    // SQLite: the primary result code is the low byte of the extended one.
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, 18..=20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_name_their_fault() {
        assert_eq!(classify_code("28P01"), Some(DbFault::AuthFailed));
        assert_eq!(classify_code("53300"), Some(DbFault::TooManyConnections));
        assert_eq!(classify_code("53100"), Some(DbFault::DiskFull));
        assert_eq!(classify_code("25006"), Some(DbFault::ReadOnly));
        assert_eq!(classify_code("57P01"), Some(DbFault::Unavailable));
        assert_eq!(classify_code("08006"), Some(DbFault::Unavailable));
        assert_eq!(classify_code("23505"), None);
        // SQLite: FULL, READONLY (and READONLY_DBMOVED, an extended code), BUSY is no fault.
        assert_eq!(classify_code("13"), Some(DbFault::DiskFull));
        assert_eq!(classify_code("1032"), Some(DbFault::ReadOnly));
        assert_eq!(classify_code("5"), None);
    }

    #[test]
    fn io_errors_name_their_fault() {
        use std::io::{Error, ErrorKind};
        let refused = sqlx::Error::Io(Error::from(ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), Some(DbFault::Unavailable));
        let dns = sqlx::Error::Io(Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert_eq!(classify(&dns), Some(DbFault::HostUnknown));
        let full = sqlx::Error::Io(Error::from_raw_os_error(28));
        assert_eq!(classify(&full), Some(DbFault::DiskFull));
    }
}
