//! Test harness: a fresh database per test on either backend, and the real `atlasia` binary
//! started on port 0 against it, driven over HTTP. PostgreSQL comes from `ATLASIA_TEST_PG_URL`
//! (an admin URL; `./scripts/test` starts a throwaway cluster and sets it).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod bolts;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The bootstrap admin token every test server gets.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_atlasia");

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Generates `sqlite` and `postgres` tests that call `$body(Db)`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident => $body:ident;)+) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$body($crate::common::Db::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::common::skip_postgres() { return; }
                super::$body($crate::common::Db::Postgres).await
            }
        })+
    };
}

/// PostgreSQL tests run unless `ATLASIA_TEST_SKIP_PG=1`; without a server URL they fail loudly
/// rather than pass unnoticed.
pub fn skip_postgres() -> bool {
    if std::env::var("ATLASIA_TEST_SKIP_PG").is_ok_and(|v| v == "1") {
        eprintln!("skipping PostgreSQL variant (ATLASIA_TEST_SKIP_PG=1)");
        return true;
    }
    false
}

/// A database of its own for one test, and a scratch directory.
pub struct TestDb {
    pub kind: Db,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(kind: Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = match kind {
            Db::Sqlite => format!("sqlite://{}/atlasia.db", dir.path().display()),
            Db::Postgres => {
                let admin = std::env::var("ATLASIA_TEST_PG_URL").expect(
                    "ATLASIA_TEST_PG_URL is not set: run ./scripts/test (it starts PostgreSQL), \
                     or set ATLASIA_TEST_SKIP_PG=1",
                );
                let name = format!("t_{}", uuid::Uuid::now_v7().simple());
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                let base = admin.rsplit_once('/').unwrap().0;
                format!("{base}/{name}")
            }
        };
        Self { kind, url, dir }
    }

    /// The same database for a second server (a replica), with a scratch directory of its own.
    pub fn same_database(&self) -> Self {
        Self {
            kind: self.kind,
            url: self.url.clone(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A store on this database (migrated), with pool options for tests.
    pub async fn store(&self, max_connections: u32) -> atlasia_store::Store {
        let opts = atlasia_store::DbOptions {
            url: self.url.clone(),
            max_connections,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let store = atlasia_store::Store::connect(&opts).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// Runs SQL through the backend's own command-line client, as an operator would.
    pub fn sql_cli(&self, sql: &str) -> String {
        let out = match self.kind {
            Db::Sqlite => std::process::Command::new("sqlite3")
                .arg(self.url.trim_start_matches("sqlite://"))
                .arg(sql)
                .output(),
            Db::Postgres => std::process::Command::new("psql")
                .args([&self.url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
                .output(),
        }
        .expect("the database CLI (sqlite3 / psql) must be installed");
        assert!(
            out.status.success(),
            "SQL CLI failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A running `atlasia serve`.
pub struct TestServer {
    pub db: TestDb,
    pub base: String,
    pub child: Child,
    pub client: reqwest::Client,
    pub log_path: PathBuf,
}

/// `server.repo_roots` of test servers: the system temp dir and the bundled examples.
pub fn default_repo_roots() -> String {
    repo_roots(&[&std::env::temp_dir(), &examples_dir()])
}

/// The bundled `examples/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `ATLASIA_SERVER__REPO_ROOTS` for `roots` (a JSON array, which the setting reads as TOML).
pub fn repo_roots(roots: &[&Path]) -> String {
    serde_json::to_string(
        &roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

/// Installs the TLS crypto provider reqwest needs (once per process).
fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TestServer {
    pub async fn start(kind: Db) -> Self {
        Self::start_with(TestDb::new(kind).await, &[]).await
    }

    /// Starts the binary against `db` with extra environment variables and waits until it
    /// prints its address.
    pub async fn start_with(db: TestDb, env: &[(&str, &str)]) -> Self {
        init_tls();
        let log_path = db.dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(db.dir.path())
            .env("DB_URL", &db.url)
            .env("ORCHESTRATOR_TOKEN", ADMIN_TOKEN)
            .env("ATLASIA_STORAGE__DATA_DIR", db.dir.path())
            .env("RUST_LOG", "info")
            // API tests expect runs to stay PENDING; engine tests ask for workers.
            .env("ATLASIA_ENGINE__WORKERS", "0")
            // New work is refused at the disk floor (507); tests must not depend on how full
            // the machine's disk is. Tests of the floor pass their own value in `env`.
            .env("ATLASIA_STORAGE__MIN_FREE_DISK_MB", "1")
            // Tests work on repositories in temp dirs and on the bundled examples; attack tests
            // pass a narrower `ATLASIA_SERVER__REPO_ROOTS` in `env`.
            .env("ATLASIA_SERVER__REPO_ROOTS", default_repo_roots())
            // A developer's or CI's own GitHub credentials must not reach test servers.
            .env_remove("GITHUB_TOKEN")
            .env_remove("GITHUB_APP_ID")
            .env_remove("GITHUB_PRIVATE_KEY_PATH")
            .env_remove("GITHUB_INSTALLATION_ID")
            .env_remove("GITHUB_WEBHOOK_SECRET")
            .env_remove("GITHUB_API_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("server did not print its address within 60 s")
            .unwrap();
        let Some(first) = first else {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("server exited before listening; log:\n{log}");
        };
        let base = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            db,
            base,
            child,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            log_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; returns status, JSON body (Null when not JSON) and headers.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value, HeaderMap) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, json, headers)
    }

    /// The Prometheus exposition (`/api/metrics/prometheus`, unauthenticated) as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/api/metrics/prometheus"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::GET, path, Some(token), None)
            .await;
        (s, v)
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::POST, path, Some(token), Some(body))
            .await;
        (s, v)
    }

    /// Creates a run as admin and returns its JSON.
    pub async fn create_run(&self, body: Value) -> Value {
        let (s, v) = self.post("/api/runs", ADMIN_TOKEN, &body).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v
    }

    /// Issues a token with `role` through the admin API and returns the secret.
    pub async fn token(&self, name: &str, role: &str) -> String {
        let (s, v) = self
            .post(
                "/api/admin/tokens",
                ADMIN_TOKEN,
                &serde_json::json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status (at most `limit`).
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("server did not exit in time")
            .unwrap()
    }
}

/// Polls `f` until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the CLI to completion with `env` in `dir`.
pub fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("DB_URL")
        .env_remove("ORCHESTRATOR_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A write lock on `workflow_runs` held from a connection of the test's own, so every server
/// write blocks while reads go on: how tests make a request stay in flight deterministically.
pub enum WriteLock {
    /// A transaction holding `EXCLUSIVE` on `workflow_runs`.
    Pg(sqlx::PgConnection),
    /// A `BEGIN EXCLUSIVE` transaction: the single SQLite write lock (WAL readers go on).
    Sqlite(sqlx::SqliteConnection),
}

impl WriteLock {
    pub async fn take(db: &TestDb) -> Self {
        use sqlx::Connection;
        match db.kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql("BEGIN; LOCK TABLE workflow_runs IN EXCLUSIVE MODE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Self::Pg(c)
            }
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
                // Nothing is written under the lock, so the server's waiting transactions keep
                // a valid snapshot and simply proceed once it is released.
                sqlx::raw_sql("BEGIN EXCLUSIVE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Self::Sqlite(c)
            }
        }
    }

    pub async fn release(self) {
        use sqlx::Connection;
        match self {
            Self::Pg(mut c) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
            Self::Sqlite(mut c) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }
}

/// A running `atlasia sim-llm` (the LLM simulator), killed when dropped.
pub struct Sim {
    pub base: String,
    _child: Child,
}

impl Sim {
    /// Starts the simulator on a free port with extra flags and waits for its address.
    pub async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["sim-llm", "--bind", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let base = first.strip_prefix("listening on ").unwrap().to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            base,
            _child: child,
        }
    }

    /// The model request bodies the simulator received (its last 64), verbatim, oldest first.
    pub async fn bodies(&self) -> Vec<String> {
        let v: Value = reqwest::get(format!("{}/sim/requests", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["requests"]
            .as_array()
            .unwrap_or_else(|| panic!("requests: {v}"))
            .iter()
            .map(|r| r["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// How many chat requests (OpenAI route) reached the simulator.
    pub async fn requests(&self) -> u64 {
        let v: Value = reqwest::get(format!("{}/sim/stats", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["routes"]["chat_completions"]
            .as_u64()
            .unwrap_or_else(|| panic!("stats: {v}"))
    }
}

/// Samples of metric `name` as (label set, value), e.g. (`{route="/x",status="200"}`, 1.0).
pub fn samples(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name).then(|| (labels.to_owned(), value.parse().unwrap()))
        })
        .collect()
}

/// The value of the one sample of `name` carrying every label in `labels` (`k="v"`).
pub fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    samples(body, name)
        .into_iter()
        .find(|(l, _)| labels.iter().all(|want| l.contains(want)))
        .map(|(_, v)| v)
}
