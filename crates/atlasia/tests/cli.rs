//! The `atlasia` command line as an operator meets it: help texts, `config show` (defaults, file,
//! environment, masking), refusal of bad settings with exit code 2 and one line naming the key,
//! `migrate`, and API token administration against a real database and server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::HashMap;
use std::path::Path;

/// What a finished CLI invocation left behind.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The non-empty lines of stderr.
    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// The non-empty lines of stdout.
    fn stdout_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Panics with both streams unless the exit code is `code`.
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs the binary in `dir` with only the given settings variables.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let o = cli(dir, args, env);
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Flattens simple TOML (sections of `key = value`) into `section.key` → raw value. Enough for
/// `config show`, and it keeps keys of different sections apart (`server.bind` vs others).
fn toml_values(text: &str) -> HashMap<String, String> {
    let mut section = String::new();
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            out.insert(format!("{section}.{}", k.trim()), v.trim().to_owned());
        }
    }
    out
}

/// `config show` in `dir` with `env`; must succeed. Returns the stdout and its values.
fn show(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, HashMap<String, String>) {
    let mut all = vec!["config", "show"];
    all.extend_from_slice(args);
    let out = run(dir, &all, env);
    out.expect_code(0);
    let values = toml_values(&out.stdout);
    (out.stdout, values)
}

/// Exit code 2 and a single stderr line that names `key`.
fn assert_refused(out: &Out, key: &str) {
    out.expect_code(2);
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected one stderr line, got:\n{}",
        out.stderr
    );
    assert!(lines[0].contains(key), "'{key}' not named in: {}", lines[0]);
}

// ---- 1. help ------------------------------------------------------------------------------

#[test]
fn top_level_help_lists_every_command() {
    let out = run(&std::env::temp_dir(), &["--help"], &[]);
    out.expect_code(0);
    for cmd in ["serve", "migrate", "config", "admin"] {
        let listed = out.stdout.lines().any(|l| l.trim_start().starts_with(cmd));
        assert!(listed, "'{cmd}' missing from --help:\n{}", out.stdout);
    }
}

/// Arguments, and each option with words of its description.
type HelpCase = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

#[test]
fn subcommand_help_describes_options() {
    let cases: &[HelpCase] = &[
        (
            &["serve", "--help"],
            &[
                ("--bind", "Address to listen on"),
                ("--config", "Settings file"),
            ],
        ),
        (
            &["config", "show", "--help"],
            &[("--config", "Settings file")],
        ),
        (
            &["admin", "token", "create", "--help"],
            &[
                ("--name", "unique name"),
                ("--role", "What the token may do"),
            ],
        ),
    ];
    for (args, options) in cases {
        let out = run(&std::env::temp_dir(), args, &[]);
        out.expect_code(0);
        for (opt, words) in *options {
            let listed = out.stdout.lines().any(|l| l.trim_start().starts_with(opt));
            assert!(listed, "{args:?}: '{opt}' not listed:\n{}", out.stdout);
            assert!(
                out.stdout.contains(words),
                "{args:?}: no '{words}':\n{}",
                out.stdout
            );
        }
    }
}

#[test]
fn unknown_subcommand_exits_2() {
    let out = run(&std::env::temp_dir(), &["frobnicate"], &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("frobnicate"), "{}", out.stderr);
}

// ---- 2. config show -----------------------------------------------------------------------

#[test]
fn config_show_prints_runbook_defaults() {
    let dir = tempdir();
    let (_, v) = show(dir.path(), &[], &[]);
    let expected = [
        ("database.max_connections", "20"),
        ("database.min_idle", "5"),
        ("database.acquire_timeout_ms", "30000"),
        ("database.idle_timeout_ms", "600000"),
        ("database.max_lifetime_ms", "1800000"),
        ("server.bind", "\"127.0.0.1:8080\""),
    ];
    for (key, want) in expected {
        assert_eq!(v.get(key).map(String::as_str), Some(want), "{key} in {v:?}");
    }
}

#[test]
fn config_file_in_working_dir_is_applied_and_env_wins() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[database]\nmax_connections = 11\nmin_idle = 2\n\n[server]\nbind = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    let (_, v) = show(dir.path(), &[], &[]);
    assert_eq!(v["database.max_connections"], "11");
    assert_eq!(v["database.min_idle"], "2");
    assert_eq!(v["server.bind"], "\"127.0.0.1:9001\"");

    let env = [
        ("ATLASIA_DATABASE__MAX_CONNECTIONS", "7"),
        ("ATLASIA_SERVER__BIND", "127.0.0.1:9002"),
    ];
    let (_, v) = show(dir.path(), &[], &env);
    assert_eq!(v["database.max_connections"], "7");
    assert_eq!(v["server.bind"], "\"127.0.0.1:9002\"");
    // Keys the environment does not touch still come from the file.
    assert_eq!(v["database.min_idle"], "2");
}

#[test]
fn config_flag_selects_another_file() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[database]\nmax_connections = 11\n[server]\nbind = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("other.toml"),
        "[database]\nmax_connections = 13\n",
    )
    .unwrap();
    let (_, v) = show(dir.path(), &["--config", "other.toml"], &[]);
    assert_eq!(v["database.max_connections"], "13");
    // ./atlasia.toml is not merged when another file is named.
    assert_eq!(v["server.bind"], "\"127.0.0.1:8080\"");
}

#[test]
fn original_variable_names_work_and_secrets_are_masked() {
    let dir = tempdir();
    let secret = "orchestrator-secret-9f8e7d6c5b4a";
    let env = [
        ("DB_URL", "postgres://user:hunter2-pw@localhost/db"),
        ("ORCHESTRATOR_TOKEN", secret),
    ];
    let (text, v) = show(dir.path(), &[], &env);
    assert!(!text.contains("hunter2"), "password shown:\n{text}");
    assert!(!text.contains(secret), "token shown:\n{text}");
    let url = &v["database.url"];
    assert!(url.contains("user") && url.contains("localhost"), "{url}");
    assert!(url.starts_with("\"postgres://"), "{url}");
    assert_eq!(v["auth.orchestrator_token"], "\"********\"");
}

// ---- 3. invalid settings --------------------------------------------------------------------

#[test]
fn non_numeric_env_value_is_refused() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["config", "show"],
        &[("ATLASIA_DATABASE__MAX_CONNECTIONS", "abc")],
    );
    assert_refused(&out, "database.max_connections");
}

#[test]
fn min_idle_above_max_in_file_is_refused() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[database]\nmax_connections = 4\nmin_idle = 9\n",
    )
    .unwrap();
    let out = run(dir.path(), &["config", "show"], &[]);
    assert_refused(&out, "database.min_idle");
}

#[test]
fn unparsable_bind_is_refused() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["config", "show"],
        &[("ATLASIA_SERVER__BIND", "nonsense")],
    );
    assert_refused(&out, "server.bind");
}

#[test]
fn unknown_key_in_file_is_refused() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[database]\nmax_conections = 4\n",
    )
    .unwrap();
    let out = run(dir.path(), &["config", "show"], &[]);
    assert_refused(&out, "database.max_conections");
}

#[test]
fn unknown_agent_section_is_refused() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[agents.reviwer]\nllm_model = \"gpt-4o-mini\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["config", "show"], &[]);
    assert_refused(&out, "agents.reviwer");
    // The same through the environment.
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["config", "show"],
        &[("ATLASIA_AGENTS__DEVELOPPER__LLM_MODEL", "gpt-4o")],
    );
    assert_refused(&out, "agents.developper");
}

#[test]
fn unknown_agent_key_is_refused() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[agents.developer]\nllm_modle = \"gpt-4o\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["config", "show"], &[]);
    assert_refused(&out, "agents.developer");
    assert!(out.stderr.contains("llm_modle"), "{}", out.stderr);
}

#[test]
fn persona_sections_take_the_environment_spelling() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("atlasia.toml"),
        "[agents.reviewer]\nllm_model = \"gpt-4o-mini\"\n",
    )
    .unwrap();
    let env = [("ATLASIA_AGENTS__REVIEWER_SECURITY__LLM_MODEL", "gpt-4o")];
    let (_, v) = show(dir.path(), &[], &env);
    assert_eq!(
        v.get("agents.reviewer-security.llm_model")
            .map(String::as_str),
        Some("\"gpt-4o\"")
    );
    assert_eq!(
        v.get("agents.reviewer.llm_model").map(String::as_str),
        Some("\"gpt-4o-mini\"")
    );
}

#[test]
fn config_show_says_budgets_cannot_apply_to_an_unpriced_model() {
    let dir = tempdir();
    let env = [
        ("LLM_ENDPOINT", "http://127.0.0.1:9/v1"),
        ("LLM_MODEL", "house-model"),
    ];
    let (text, _) = show(dir.path(), &[], &env);
    assert!(
        text.contains("# budgets cannot apply to model \"house-model\""),
        "{text}"
    );
    let (text, _) = show(
        dir.path(),
        &[],
        &[
            ("LLM_ENDPOINT", "http://127.0.0.1:9/v1"),
            ("LLM_MODEL", "gpt-4o"),
        ],
    );
    assert!(!text.contains("budgets cannot apply"), "{text}");
}

#[test]
fn missing_config_file_is_refused() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["--config", "does-not-exist.toml", "config", "show"],
        &[],
    );
    assert_refused(&out, "does-not-exist.toml");
}

#[test]
fn unsupported_database_scheme_is_refused() {
    let dir = tempdir();
    let out = run(dir.path(), &["config", "show"], &[("DB_URL", "mysql://x")]);
    assert_refused(&out, "database.url");
}

#[test]
fn short_orchestrator_token_is_refused_without_echoing_it() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["config", "show"],
        &[("ORCHESTRATOR_TOKEN", "tiny-q7")],
    );
    assert_refused(&out, "auth.orchestrator_token");
    assert!(!out.stderr.contains("tiny-q7"), "{}", out.stderr);
}

#[test]
fn serve_with_bad_bind_flag_exits_2() {
    let dir = tempdir();
    let out = run(dir.path(), &["serve", "--bind", "nonsense"], &[]);
    assert_refused(&out, "server.bind");
    // It was refused before touching anything: no default SQLite file appeared.
    assert!(!dir.path().join("data").exists());
}

// ---- 4. migrate -----------------------------------------------------------------------------

const TABLES: &[&str] = &[
    "workflow_runs",
    "run_events",
    "run_steps",
    "run_artifacts",
    "llm_calls",
    "pull_requests",
    "api_tokens",
    "webhook_deliveries",
];

/// Table names in the database, one per line.
fn tables(db: &TestDb) -> Vec<String> {
    let sql = match db.kind {
        Db::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table'",
        Db::Postgres => {
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        }
    };
    db.sql_cli(sql).lines().map(str::to_owned).collect()
}

/// Column names of `table`.
fn columns(db: &TestDb, table: &str) -> Vec<String> {
    let sql = match db.kind {
        Db::Sqlite => format!("SELECT name FROM pragma_table_info('{table}')"),
        Db::Postgres => format!(
            "SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
        ),
    };
    db.sql_cli(&sql).lines().map(str::to_owned).collect()
}

async fn migrate_creates_schema(kind: Db) {
    let db = TestDb::new(kind).await;
    let env = [("DB_URL", db.url.as_str())];
    assert!(
        !tables(&db).iter().any(|t| t == "workflow_runs"),
        "fresh database already has the schema"
    );
    for _ in 0..2 {
        let out = run(db.dir.path(), &["migrate"], &env);
        out.expect_code(0);
        assert_eq!(out.stdout_lines().len(), 1, "{}", out.stdout);
    }
    let have = tables(&db);
    for t in TABLES {
        assert!(have.iter().any(|h| h == t), "table {t} missing: {have:?}");
    }
    let cols = columns(&db, "workflow_runs");
    for c in ["status", "priority"] {
        assert!(cols.iter().any(|h| h == c), "column {c} missing: {cols:?}");
    }
}

// ---- 5. admin tokens ------------------------------------------------------------------------

async fn token_lifecycle(kind: Db) {
    let db = TestDb::new(kind).await;
    let url = db.url.clone();
    let dir = db.dir.path().to_owned();
    let env = [("DB_URL", url.as_str())];
    let token = create_token(&dir, &env);
    assert_token_not_stored(&db, &token);
    assert_listed_without_secret(&dir, &env, &token);
    assert_bad_creates_refused(&dir, &env);

    let srv = TestServer::start_with(db, &[]).await;
    let (s, v) = srv.get("/api/runs", &token).await;
    assert_eq!(s, 200, "fresh token refused: {v}");

    run(&dir, &["admin", "token", "revoke", "ci"], &env).expect_code(0);
    let (s, v) = srv.get("/api/runs", &token).await;
    assert_eq!(s, 401, "revoked token still works: {v}");
    assert!(!srv.log().contains(&token), "token reached the server log");

    let out = run(&dir, &["admin", "token", "revoke", "no-such-token"], &env);
    assert_refused(&out, "no-such-token");
}

/// `admin token create --name ci --role operator`: one stdout line, the secret.
fn create_token(dir: &Path, env: &[(&str, &str)]) -> String {
    let args = [
        "admin", "token", "create", "--name", "ci", "--role", "operator",
    ];
    let out = run(dir, &args, env);
    out.expect_code(0);
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "stdout:\n{}", out.stdout);
    let token = lines[0].trim().to_owned();
    assert!(token.starts_with("atl_") && token.len() > 20, "{token}");
    assert!(!out.stderr.contains(&token), "secret also on stderr");
    token
}

/// Neither the token nor its random part is anywhere in `api_tokens`; the hash is 64 hex.
fn assert_token_not_stored(db: &TestDb, token: &str) {
    let dump = db.sql_cli("SELECT * FROM api_tokens");
    assert!(!dump.is_empty());
    let random = token.trim_start_matches("atl_");
    assert!(!dump.contains(random), "secret stored in clear:\n{dump}");
    let hash = db.sql_cli("SELECT token_hash FROM api_tokens WHERE name = 'ci'");
    let hash = hash.trim();
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
}

fn assert_listed_without_secret(dir: &Path, env: &[(&str, &str)], token: &str) {
    let out = run(dir, &["admin", "token", "list"], env);
    out.expect_code(0);
    let line = out
        .stdout_lines()
        .into_iter()
        .find(|l| l.split('\t').any(|f| f == "ci"))
        .unwrap_or_else(|| panic!("'ci' not listed:\n{}", out.stdout));
    assert!(line.split('\t').any(|f| f == "operator"), "{line}");
    assert!(!out.stdout.contains(token) && !out.stderr.contains(token));
}

/// A duplicate name and an unknown role are input errors (exit 2).
fn assert_bad_creates_refused(dir: &Path, env: &[(&str, &str)]) {
    let dup = [
        "admin", "token", "create", "--name", "ci", "--role", "viewer",
    ];
    let out = run(dir, &dup, env);
    assert_refused(&out, "ci");
    assert!(out.stdout.trim().is_empty(), "{}", out.stdout);

    let root = [
        "admin", "token", "create", "--name", "other", "--role", "root",
    ];
    let out = run(dir, &root, env);
    out.expect_code(2);
    assert!(out.stdout.trim().is_empty(), "{}", out.stdout);
}

on_both! {
    migrate => migrate_creates_schema;
    admin_token => token_lifecycle;
}
