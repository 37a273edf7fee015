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
    /// Anything else the driver reported.
    #[error("database error: {0}")]
    Db(sqlx::Error),
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
            other => Self::Db(other),
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
            Self::PoolTimeout(_) => true,
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
