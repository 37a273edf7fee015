//! How to connect: the database URL and the pool's limits (defaults from the runbook).

use std::time::Duration;

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// The backend a URL names, if any.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// `sqlite://path/to/file.db` or `postgres://user@host:port/db`.
    pub url: String,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_idle: u32,
    /// How long a caller waits for a free connection before getting `PoolTimeout`.
    pub acquire_timeout: Duration,
    /// How long opening a connection may take: a caller whose connection does not come within
    /// this learns why (refused, unknown host, …) instead of waiting `acquire_timeout`.
    pub connect_timeout: Duration,
    /// An idle connection above `min_idle` is closed after this.
    pub idle_timeout: Duration,
    /// Any connection is replaced after this.
    pub max_lifetime: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            url: "sqlite://./data/atlasia.db".into(),
            max_connections: 20,
            min_idle: 5,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}
