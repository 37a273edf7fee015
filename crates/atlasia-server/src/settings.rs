//! Typed settings: defaults ← `atlasia.toml` ← environment. Every key is optional. The
//! original system's variable names (`DB_URL`, `ORCHESTRATOR_TOKEN`) keep working beside
//! `ATLASIA_<SECTION>__<KEY>`. Validation happens once, at start, and names the key at fault.

use atlasia_core::redact::{MIN_SECRET_LEN, Redactor, ShortSecret};
use atlasia_llm::config::{AgentSettings, EndpointSettings, LlmSettings, ModelSettings};
use atlasia_store::{Backend, DbOptions};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every setting of the server.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    /// Scheduled backups in `serve` (`[backup]`).
    pub backup: BackupSettings,
    pub auth: AuthSettings,
    /// The LLM gateway (`[llm]`; the original `LLM_*` variables fill it too).
    pub llm: LlmSettings,
    /// Per-agent settings (`[agents.<name>]`), e.g. `llm_model`.
    pub agents: BTreeMap<String, AgentSettings>,
    /// The bolt engine's workers (`[engine]`).
    pub engine: EngineSettings,
    /// GitHub (`[github]`; the original `GITHUB_*` variables fill it too).
    pub github: GithubSettings,
    /// The sandbox every command of a bolt runs in (`[sandbox]`).
    pub sandbox: SandboxSettings,
}

/// The command sandbox: bubblewrap, its resource limits and the uid commands take under root.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// `bwrap` (default) or `none` (no isolation: an explicit opt-out, warned about).
    pub mode: SandboxMode,
    /// Which isolation `bwrap` mode uses: `auto` (system bubblewrap when it works, else
    /// in-process namespaces), `bwrap` or `inprocess` only.
    pub backend: SandboxBackend,
    /// The bubblewrap binary; a bare name is looked up in `PATH`.
    pub bwrap_path: PathBuf,
    /// Address space per command process, MiB.
    pub memory_mb: u64,
    /// Processes (and threads) of the sandbox's uid.
    pub max_processes: u64,
    /// Largest file a command may write, MiB.
    pub max_file_size_mb: u64,
    /// Open files per command process.
    pub max_open_files: u64,
    /// Size of the private `/tmp` and of `HOME` (tmpfs, in memory), MiB each.
    pub tmp_size_mb: u64,
    /// The uid commands run as when the server runs as root.
    pub uid: u32,
    /// The gid commands run as when the server runs as root.
    pub gid: u32,
    /// The settings file these were loaded from (hidden from commands); not a setting.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// `sandbox.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxBackend {
    #[default]
    Auto,
    Bwrap,
    Inprocess,
}

/// `sandbox.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    #[default]
    Bwrap,
    None,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        let c = atlasia_engine::sandbox::SandboxConfig::default();
        Self {
            mode: SandboxMode::Bwrap,
            backend: SandboxBackend::Auto,
            bwrap_path: c.bwrap_path,
            memory_mb: c.limits.memory_mb,
            max_processes: c.limits.processes,
            max_file_size_mb: c.limits.file_size_mb,
            max_open_files: c.limits.open_files,
            tmp_size_mb: c.limits.tmp_size_mb,
            uid: c.run_as.0,
            gid: c.run_as.1,
            config_file: None,
        }
    }
}

impl Settings {
    /// What the engine's sandbox needs: the mode, the limits, and the paths it must never show
    /// (the data directory, the settings file, the GitHub App key).
    pub fn sandbox_config(&self) -> atlasia_engine::sandbox::SandboxConfig {
        use atlasia_engine::sandbox::{Backend, Limits, Mode, SandboxConfig};
        let s = &self.sandbox;
        let mut hide = vec![self.storage.data_dir.clone()];
        hide.extend(s.config_file.clone());
        hide.extend(self.github.private_key_path.clone());
        let hide = hide
            .into_iter()
            .map(|p| {
                p.canonicalize()
                    .or_else(|_| std::path::absolute(&p))
                    .unwrap_or(p)
            })
            .collect();
        SandboxConfig {
            mode: match s.mode {
                SandboxMode::Bwrap => Mode::Bwrap,
                SandboxMode::None => Mode::None,
            },
            backend: match s.backend {
                SandboxBackend::Auto => Backend::Auto,
                SandboxBackend::Bwrap => Backend::Bwrap,
                SandboxBackend::Inprocess => Backend::InProcess,
            },
            bwrap_path: s.bwrap_path.clone(),
            limits: Limits {
                memory_mb: s.memory_mb,
                processes: s.max_processes,
                file_size_mb: s.max_file_size_mb,
                open_files: s.max_open_files,
                tmp_size_mb: s.tmp_size_mb,
            },
            hide,
            run_as: (s.uid, s.gid),
        }
    }

    fn validate_sandbox(&self) -> Result<(), SettingsError> {
        let s = &self.sandbox;
        for (key, v) in [
            ("sandbox.memory_mb", s.memory_mb),
            ("sandbox.max_processes", s.max_processes),
            ("sandbox.max_file_size_mb", s.max_file_size_mb),
            ("sandbox.max_open_files", s.max_open_files),
            ("sandbox.tmp_size_mb", s.tmp_size_mb),
        ] {
            if v == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if s.uid == 0 {
            return Err(SettingsError::new(
                "sandbox.uid",
                "must not be 0 (commands never run as root)",
            ));
        }
        if s.bwrap_path.as_os_str().is_empty() {
            return Err(SettingsError::new(
                "sandbox.bwrap_path",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// GitHub: credentials (an App, or a personal access token), the webhook secret, limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubSettings {
    /// REST base (`GITHUB_API_URL`); `https://HOST/api/v3` on GitHub Enterprise Server.
    pub api_url: String,
    /// Where git clones from; default derived from `api_url` (api.github.com → github.com).
    pub git_url: Option<String>,
    /// The GitHub App's id (`GITHUB_APP_ID`).
    pub app_id: Option<u64>,
    /// The App's private key, PEM (`GITHUB_PRIVATE_KEY_PATH`).
    pub private_key_path: Option<PathBuf>,
    /// The App installation on the organisation or account (`GITHUB_INSTALLATION_ID`).
    pub installation_id: Option<u64>,
    /// A personal access token instead of an App (`GITHUB_TOKEN`); the App wins when both are set.
    #[serde(serialize_with = "mask_secret")]
    pub token: Option<SecretString>,
    /// Verifies `X-Hub-Signature-256` (`GITHUB_WEBHOOK_SECRET`); unset: every delivery is refused.
    #[serde(serialize_with = "mask_secret")]
    pub webhook_secret: Option<SecretString>,
    /// Per attempt.
    pub request_timeout_ms: u64,
    /// Attempts per call for 5xx and network failures, the first included.
    pub retry_attempts: u32,
    /// The longest rate-limit wait honoured; a longer one fails the call.
    pub max_rate_limit_wait_ms: u64,
    /// The longest wait for a commit's check runs to complete.
    pub check_wait_ms: u64,
    /// No check run by then means the repository has none.
    pub check_grace_ms: u64,
    /// First check-runs poll interval (doubles, with jitter, up to `check_poll_max_ms`).
    pub check_poll_ms: u64,
    pub check_poll_max_ms: u64,
    /// Recent issue comments read into a run created from an issue.
    pub context_comments: usize,
}

impl Default for GithubSettings {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            git_url: None,
            app_id: None,
            private_key_path: None,
            installation_id: None,
            token: None,
            webhook_secret: None,
            request_timeout_ms: 30_000,
            retry_attempts: 3,
            max_rate_limit_wait_ms: 60_000,
            check_wait_ms: 30 * 60_000,
            check_grace_ms: 60_000,
            check_poll_ms: 10_000,
            check_poll_max_ms: 60_000,
            context_comments: 20,
        }
    }
}

/// The workers that execute runs in this process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Workers claiming runs in this process (`ATLASIA_ENGINE__WORKERS`; 0 = API only).
    pub workers: usize,
    /// A worker's lease on a run; heartbeats run every third of it, and a run whose worker
    /// died is reclaimed after it expires.
    pub lease_ms: u64,
    /// Wait between claims while the queue is empty.
    pub poll_ms: u64,
    /// Loop-backs allowed from REVIEW to DEVELOPER before the bolt escalates.
    pub review_loops: u32,
    /// Loop-backs allowed from TESTER to DEVELOPER (the fix loop) before the bolt escalates.
    pub fix_loops: u32,
    /// Time limit of one verify command; its whole process group is killed past it.
    pub verify_timeout_secs: u64,
    /// Output kept per verify command (the tail), in bytes.
    pub output_cap_bytes: usize,
    /// Tokens (input + output) the developer may spend on one iteration.
    pub developer_max_tokens: u64,
    /// How long a step keeps retrying LLM calls that fail for a passing reason (every endpoint
    /// rate-limited, overloaded or unreachable) before it fails.
    pub llm_patience_secs: u64,
    /// Times a worker may die (its lease expire) at one step of a run before the run fails
    /// instead of being reclaimed again: one poison run must not take down every replica.
    pub max_attempts: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let limits = atlasia_engine::steps::BoltLimits::default();
        Self {
            workers: 4,
            lease_ms: 30_000,
            poll_ms: 500,
            review_loops: limits.review_loops,
            fix_loops: limits.fix_loops,
            verify_timeout_secs: limits.verify_timeout.as_secs(),
            output_cap_bytes: limits.output_cap,
            developer_max_tokens: limits.developer_max_tokens,
            llm_patience_secs: limits.llm_patience.as_secs(),
            max_attempts: atlasia_store::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl EngineSettings {
    /// The engine's limits from these settings.
    pub fn limits(&self) -> atlasia_engine::steps::BoltLimits {
        atlasia_engine::steps::BoltLimits {
            review_loops: self.review_loops,
            fix_loops: self.fix_loops,
            verify_timeout: std::time::Duration::from_secs(self.verify_timeout_secs),
            output_cap: self.output_cap_bytes,
            developer_max_tokens: self.developer_max_tokens,
            llm_patience: std::time::Duration::from_secs(self.llm_patience_secs),
            output_tokens: BTreeMap::new(),
        }
    }
}

/// The HTTP listener and logs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (`--bind`, `ATLASIA_SERVER__BIND`).
    pub bind: String,
    /// `text` or `json` (`--log-format`).
    pub log_format: LogFormat,
    /// Longest wait for in-flight requests after SIGTERM before exiting anyway.
    pub shutdown_timeout_ms: u64,
    /// A request still running after this gets 503 `request_timeout`.
    pub request_timeout_ms: u64,
    /// Directories local repositories may come from (`ATLASIA_SERVER__REPO_ROOTS='["/srv/repos"]'`);
    /// empty: `POST /api/runs` refuses every local path. Canonicalised at start.
    pub repo_roots: Vec<PathBuf>,
    /// A connection that has not sent a whole request head within this is closed (slowloris);
    /// the same timer closes an idle keep-alive connection.
    pub header_read_timeout_ms: u64,
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The database and its connection pool (defaults from the runbook).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…` (`DB_URL`); default `sqlite://<data_dir>/atlasia.db`.
    #[serde(serialize_with = "mask_url")]
    pub url: Option<String>,
    pub max_connections: u32,
    pub min_idle: u32,
    pub acquire_timeout_ms: u64,
    /// A request whose connection does not come within this, because the database cannot be
    /// reached, fails with the named fault (`database_unavailable`, …) instead of waiting
    /// `acquire_timeout_ms`.
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_lifetime_ms: u64,
    /// The readiness check fails when a `SELECT 1` takes longer than this.
    pub ready_timeout_ms: u64,
}

/// Local files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Where the SQLite file and (later) workspaces live.
    pub data_dir: PathBuf,
    /// Readiness fails when the data directory's disk has less free space than this.
    pub min_free_disk_mb: u64,
    /// A plain folder with more files than this is not imported (checked before copying).
    pub import_max_files: u64,
    /// A plain folder with more bytes than this is not imported (checked before copying).
    pub import_max_bytes: u64,
}

/// Authentication.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// A bootstrap admin token (`ORCHESTRATOR_TOKEN`). Unset: only stored tokens work.
    #[serde(serialize_with = "mask_secret")]
    pub orchestrator_token: Option<SecretString>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            log_format: LogFormat::Text,
            shutdown_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
            repo_roots: Vec::new(),
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        let d = DbOptions::default();
        Self {
            url: None,
            max_connections: d.max_connections,
            min_idle: d.min_idle,
            acquire_timeout_ms: ms(d.acquire_timeout),
            connect_timeout_ms: ms(d.connect_timeout),
            idle_timeout_ms: ms(d.idle_timeout),
            max_lifetime_ms: ms(d.max_lifetime),
            ready_timeout_ms: 2_000,
        }
    }
}

/// Scheduled backups: `serve` runs `atlasia backup create` every `interval_secs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Seconds between scheduled backups; 0 (the default) schedules none.
    pub interval_secs: u64,
    /// Folder of the backups. Default: `<storage.data_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// After each scheduled backup keep only the newest this many; 0 keeps all.
    pub keep: u32,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            interval_secs: 0,
            dir: None,
            keep: 7,
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            min_free_disk_mb: 512,
            import_max_files: atlasia_engine::forge::access::DEFAULT_IMPORT_MAX_FILES,
            import_max_bytes: atlasia_engine::forge::access::DEFAULT_IMPORT_MAX_BYTES,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn mask_secret<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

/// Hides the password of a database URL, keeps the rest readable.
fn mask_url<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:********@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let masked = if userinfo.contains(':') {
        format!("{user}:********")
    } else {
        user.to_owned()
    };
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{masked}@{host}{slash}{tail}")
}

/// Refuses a secret too short to redact without mangling words.
fn short_secret(key: &str, value: &str) -> Result<(), SettingsError> {
    Redactor::new([(key, value)]).map(|_| ()).map_err(too_short)
}

fn too_short(e: ShortSecret) -> SettingsError {
    SettingsError::new(
        &e.name,
        format!(
            "a secret must be at least {MIN_SECRET_LEN} characters (it is redacted from all output)"
        ),
    )
}

/// The password of a database URL (`scheme://user:password@host/…`), if it has one.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo
        .split_once(':')
        .map(|(_, pw)| pw)
        .filter(|pw| !pw.is_empty())
}

impl Settings {
    /// Every secret value these settings hold, each with the setting it comes from. The GitHub
    /// App's private key is a file; [`Settings::redactor`] reads it.
    pub fn secrets(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: String, v: Option<&SecretString>| {
            if let Some(v) = v {
                out.push((key, v.expose_secret().to_owned()));
            }
        };
        add(
            "auth.orchestrator_token (ORCHESTRATOR_TOKEN)".into(),
            self.auth.orchestrator_token.as_ref(),
        );
        add(
            "github.token (GITHUB_TOKEN)".into(),
            self.github.token.as_ref(),
        );
        add(
            "github.webhook_secret (GITHUB_WEBHOOK_SECRET)".into(),
            self.github.webhook_secret.as_ref(),
        );
        for m in &self.llm.models {
            for (i, e) in m.endpoints.iter().enumerate() {
                let name = e.name.clone().unwrap_or_else(|| i.to_string());
                add(
                    format!("llm.models.{}.endpoints.{name}.api_key", m.name),
                    e.api_key.as_ref(),
                );
            }
        }
        if let Some(pw) = url_password(&self.db_url()) {
            out.push(("database.url (DB_URL) password".into(), pw.to_owned()));
        }
        out
    }

    /// The redactor for everything the server stores, shows and logs: every value of
    /// [`Settings::secrets`] and the GitHub App's private key (whole and line by line).
    /// Fails, naming the setting, on a secret shorter than 8 characters.
    pub fn redactor(&self) -> Result<Redactor, SettingsError> {
        let r = Redactor::new(self.secrets()).map_err(too_short)?;
        // An unreadable key file fails the GitHub client's start with its own message.
        Ok(match &self.github.private_key_path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(pem) => r.with_pem(&pem),
                Err(_) => r,
            },
            None => r,
        })
    }
}

/// A setting that is missing its mark: the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {key}: {reason}")]
pub struct SettingsError {
    /// Dotted key, e.g. `database.max_connections`.
    pub key: String,
    /// Why the value is refused (and where it came from, when known).
    pub reason: String,
}

impl SettingsError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (or `./atlasia.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(f) if !f.exists() => {
                return Err(SettingsError::new(
                    "config",
                    format!("file {} does not exist", f.display()),
                ));
            }
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None if Path::new("atlasia.toml").exists() => {
                fig = fig.merge(Toml::file_exact("atlasia.toml"));
            }
            None => {}
        }
        fig = fig
            // Only `SECTION__KEY` names: other ATLASIA_* variables are not settings.
            .merge(
                Env::prefixed("ATLASIA_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
            .merge(Env::raw().only(&["DB_URL"]).map(|_| "database.url".into()))
            .merge(
                Env::raw()
                    .only(&["LLM_TIMEOUT_MS"])
                    .map(|_| "llm.timeout_ms".into()),
            )
            .merge(
                Env::raw()
                    .only(&["ORCHESTRATOR_TOKEN"])
                    .map(|_| "auth.orchestrator_token".into()),
            );
        let mut settings: Settings = fig.extract().map_err(from_figment)?;
        // `[agents.reviewer_sre]` (the environment's only spelling) is `reviewer-sre`.
        settings.agents = std::mem::take(&mut settings.agents)
            .into_iter()
            .map(|(k, v)| (atlasia_llm::gateway::agent_key(&k), v))
            .collect();
        settings.sandbox.config_file = match file {
            Some(f) => Some(f.to_path_buf()),
            None => Path::new("atlasia.toml")
                .exists()
                .then(|| PathBuf::from("atlasia.toml")),
        };
        settings.apply_legacy_llm_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
        settings.apply_github_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
        settings.validate()?;
        settings.resolve_repo_roots()?;
        Ok(settings)
    }

    /// The original system's LLM variables: `LLM_ENDPOINT` (+ `LLM_API_KEY`) serves
    /// `LLM_MODEL`, then `LLM_FALLBACK_ENDPOINT` (+ `LLM_FALLBACK_API_KEY`, else `LLM_API_KEY`).
    /// They add (or replace) that model's endpoint list and make it the default model.
    pub fn apply_legacy_llm_env(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SettingsError> {
        let Some(primary) = var("LLM_ENDPOINT") else {
            if var("LLM_FALLBACK_ENDPOINT").is_some() {
                return Err(SettingsError::new(
                    "LLM_FALLBACK_ENDPOINT",
                    "is set without LLM_ENDPOINT",
                ));
            }
            if let Some(model) = var("LLM_MODEL") {
                self.llm.default_model = Some(model);
            }
            return Ok(());
        };
        let model = var("LLM_MODEL").ok_or_else(|| {
            SettingsError::new("LLM_MODEL", "is required when LLM_ENDPOINT is set")
        })?;
        for name in ["LLM_API_KEY", "LLM_FALLBACK_API_KEY"] {
            if let Some(k) = var(name) {
                short_secret(name, &k)?;
            }
        }
        let key = var("LLM_API_KEY").map(SecretString::from);
        let endpoint = |name: &str, url: String, key: Option<SecretString>| EndpointSettings {
            name: Some(name.to_owned()),
            wire: None,
            base_url: url,
            api_key: key,
            model: Some(model.clone()),
            timeout_ms: 120_000,
            rate_limit: None,
        };
        let mut endpoints = vec![endpoint("primary", primary, key.clone())];
        if let Some(fallback) = var("LLM_FALLBACK_ENDPOINT") {
            let fkey = var("LLM_FALLBACK_API_KEY").map(SecretString::from).or(key);
            endpoints.push(endpoint("fallback", fallback, fkey));
        }
        self.llm.models.retain(|m| m.name != model);
        self.llm.models.push(ModelSettings {
            name: model.clone(),
            endpoints,
        });
        self.llm.default_model = Some(model);
        Ok(())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.bind_addr()?;
        let db = &self.database;
        if db.max_connections == 0 {
            return Err(SettingsError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if db.min_idle > db.max_connections {
            return Err(SettingsError::new(
                "database.min_idle",
                format!(
                    "must not exceed database.max_connections ({})",
                    db.max_connections
                ),
            ));
        }
        for (key, v) in [
            ("database.acquire_timeout_ms", db.acquire_timeout_ms),
            ("database.connect_timeout_ms", db.connect_timeout_ms),
            ("database.ready_timeout_ms", db.ready_timeout_ms),
            (
                "server.shutdown_timeout_ms",
                self.server.shutdown_timeout_ms,
            ),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("engine.lease_ms", self.engine.lease_ms),
            ("engine.poll_ms", self.engine.poll_ms),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.max_connections",
                u64::try_from(self.server.max_connections).unwrap_or(u64::MAX),
            ),
            ("storage.import_max_files", self.storage.import_max_files),
            ("storage.import_max_bytes", self.storage.import_max_bytes),
            ("engine.max_attempts", u64::from(self.engine.max_attempts)),
        ] {
            if v == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        self.llm
            .validate()
            .map_err(|(key, reason)| SettingsError { key, reason })?;
        self.validate_github()?;
        self.validate_sandbox()?;
        self.validate_agents()?;
        if Backend::of_url(&self.db_url()).is_none() {
            return Err(SettingsError::new(
                "database.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if let Some(t) = &self.auth.orchestrator_token
            && t.expose_secret().len() < 16
        {
            return Err(SettingsError::new(
                "auth.orchestrator_token",
                "must be at least 16 characters",
            ));
        }
        for (key, value) in self.secrets() {
            short_secret(&key, &value)?;
        }
        Ok(())
    }

    /// Checks every `server.repo_roots` entry (absolute, an existing directory, not inside the
    /// data directory) and replaces it with its canonical path, so later checks compare
    /// resolved paths only.
    pub fn resolve_repo_roots(&mut self) -> Result<(), SettingsError> {
        const KEY: &str = "server.repo_roots";
        let data = self
            .storage
            .data_dir
            .canonicalize()
            .or_else(|_| std::path::absolute(&self.storage.data_dir))
            .unwrap_or_else(|_| self.storage.data_dir.clone());
        let mut resolved = Vec::with_capacity(self.server.repo_roots.len());
        for root in &self.server.repo_roots {
            let shown = root.display();
            if !root.is_absolute() {
                return Err(SettingsError::new(
                    KEY,
                    format!("'{shown}' is not an absolute path"),
                ));
            }
            let canonical = root.canonicalize().map_err(|e| {
                SettingsError::new(KEY, format!("'{shown}' cannot be resolved: {e}"))
            })?;
            if !canonical.is_dir() {
                return Err(SettingsError::new(
                    KEY,
                    format!("'{shown}' is not a directory"),
                ));
            }
            if canonical.starts_with(&data) {
                return Err(SettingsError::new(
                    KEY,
                    format!(
                        "'{shown}' is inside storage.data_dir ({}), which is never a repository",
                        data.display()
                    ),
                ));
            }
            resolved.push(canonical);
        }
        self.server.repo_roots = resolved;
        Ok(())
    }

    /// Which local repositories `serve` admits, and the import caps.
    pub fn repo_access(&self) -> atlasia_engine::forge::RepoAccess {
        atlasia_engine::forge::RepoAccess::under(&self.server.repo_roots, self.import_limits())
    }

    /// The import caps of plain folders.
    pub fn import_limits(&self) -> atlasia_engine::forge::ImportLimits {
        atlasia_engine::forge::ImportLimits {
            max_files: self.storage.import_max_files,
            max_bytes: self.storage.import_max_bytes,
        }
    }

    /// The listen address.
    pub fn bind_addr(&self) -> Result<SocketAddr, SettingsError> {
        self.server.bind.parse().map_err(|_| {
            SettingsError::new(
                "server.bind",
                format!(
                    "'{}' is not an address like 127.0.0.1:8080",
                    self.server.bind
                ),
            )
        })
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn db_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.storage.data_dir.join("atlasia.db").display()
            )
        })
    }

    /// What the store needs to connect.
    pub fn db_options(&self) -> DbOptions {
        let d = &self.database;
        DbOptions {
            url: self.db_url(),
            max_connections: d.max_connections,
            min_idle: d.min_idle,
            acquire_timeout: Duration::from_millis(d.acquire_timeout_ms),
            connect_timeout: Duration::from_millis(d.connect_timeout_ms),
            idle_timeout: Duration::from_millis(d.idle_timeout_ms),
            max_lifetime: Duration::from_millis(d.max_lifetime_ms),
        }
    }

    /// The effective settings as TOML, secrets masked; models without a price are named at the
    /// end (budgets cannot apply to them).
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = Some(self.db_url());
        let mut out =
            toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        for model in self.unpriced_models() {
            out.push_str(&format!(
                "# budgets cannot apply to model \"{model}\": it has no price, so its calls are \
                 recorded at $0; set [llm.prices.\"{model}\"] input_per_mtok/output_per_mtok\n"
            ));
        }
        out
    }

    /// The configured provider models that have no price (built in or `[llm.prices]`).
    pub fn unpriced_models(&self) -> Vec<String> {
        atlasia_llm::pricing::PriceTable::from_settings(&self.llm).unpriced(&self.llm)
    }

    /// The names `[agents.<name>]` accepts: every agent of the contracts, and `reviewer` for
    /// the four review personas together. `_` may stand for `-` (the environment's form).
    pub fn known_agents() -> Vec<String> {
        let mut names: Vec<String> = atlasia_engine::contracts::EMBEDDED_AGENTS
            .iter()
            .map(|(file, _)| file.trim_end_matches(".yaml").to_owned())
            .collect();
        names.push("reviewer".to_owned());
        names.sort();
        names
    }

    /// Refuses an `[agents.<name>]` section no agent reads (a typo would otherwise be ignored
    /// in silence); unknown keys inside a section are refused when the settings are read.
    fn validate_agents(&self) -> Result<(), SettingsError> {
        let known = Self::known_agents();
        for (name, agent) in &self.agents {
            let key = atlasia_llm::gateway::agent_key(name);
            if !known.contains(&key) {
                return Err(SettingsError::new(
                    &format!("agents.{name}"),
                    format!("no such agent; known: {}", known.join(", ")),
                ));
            }
            if agent.max_tokens.is_some_and(|m| m < 64) {
                return Err(SettingsError::new(
                    &format!("agents.{name}.max_tokens"),
                    "must be at least 64 (an answer that cannot hold a JSON object is useless)",
                ));
            }
        }
        Ok(())
    }

    /// The output bounds operators set per agent (`[agents.<name>] max_tokens`); `reviewer`
    /// applies to the four review personas that have no bound of their own.
    pub fn agent_output_tokens(&self) -> BTreeMap<String, u32> {
        let mut bounds: BTreeMap<String, u32> = self
            .agents
            .iter()
            .filter_map(|(name, a)| Some((atlasia_llm::gateway::agent_key(name), a.max_tokens?)))
            .collect();
        if let Some(all) = bounds.remove("reviewer") {
            for name in Self::known_agents() {
                if name.starts_with("reviewer-") {
                    bounds.entry(name).or_insert(all);
                }
            }
        }
        bounds
    }
}

impl Settings {
    /// The original `GITHUB_*` variables, read as plain strings (a secret of digits stays a
    /// string); they override `[github]`.
    pub fn apply_github_env(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SettingsError> {
        let number = |name: &str| -> Result<Option<u64>, SettingsError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| SettingsError::new(name, "must be a number"))
                })
                .transpose()
        };
        let g = &mut self.github;
        if let Some(v) = number("GITHUB_APP_ID")? {
            g.app_id = Some(v);
        }
        if let Some(v) = number("GITHUB_INSTALLATION_ID")? {
            g.installation_id = Some(v);
        }
        if let Some(v) = var("GITHUB_PRIVATE_KEY_PATH") {
            g.private_key_path = Some(PathBuf::from(v));
        }
        if let Some(v) = var("GITHUB_TOKEN") {
            g.token = Some(SecretString::from(v));
        }
        if let Some(v) = var("GITHUB_WEBHOOK_SECRET") {
            g.webhook_secret = Some(SecretString::from(v));
        }
        if let Some(v) = var("GITHUB_API_URL") {
            g.api_url = v;
        }
        Ok(())
    }

    fn validate_github(&self) -> Result<(), SettingsError> {
        let g = &self.github;
        let app = [
            g.app_id.is_some(),
            g.private_key_path.is_some(),
            g.installation_id.is_some(),
        ];
        if app.contains(&true) && app.contains(&false) {
            return Err(SettingsError::new(
                "github.app_id",
                "a GitHub App needs app_id, private_key_path and installation_id together",
            ));
        }
        let url = g.api_url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(SettingsError::new(
                "github.api_url",
                "must start with https:// or http://",
            ));
        }
        for (key, v) in [
            ("github.request_timeout_ms", g.request_timeout_ms),
            ("github.retry_attempts", u64::from(g.retry_attempts)),
            ("github.check_poll_ms", g.check_poll_ms),
        ] {
            if v == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if g.webhook_secret
            .as_ref()
            .is_some_and(|s| s.expose_secret().is_empty())
        {
            return Err(SettingsError::new(
                "github.webhook_secret",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

fn from_figment(e: figment::Error) -> SettingsError {
    let key = if e.path.is_empty() {
        "config".to_owned()
    } else {
        e.path.join(".")
    };
    let mut reason = e.kind.to_string();
    if let Some(md) = &e.metadata {
        reason.push_str(&format!(" (from {})", md.name));
    }
    // One line, whatever the provider's description holds.
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    SettingsError { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_runbook() {
        let s = Settings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            (
                s.database.max_connections,
                s.database.min_idle,
                s.database.acquire_timeout_ms
            ),
            (20, 5, 30_000)
        );
        assert_eq!(s.db_url(), "sqlite://./data/atlasia.db");
    }

    #[test]
    fn original_llm_variables_build_primary_then_fallback() {
        let env = |k: &str| match k {
            "LLM_ENDPOINT" => Some("https://api.openai.com/v1".to_owned()),
            "LLM_API_KEY" => Some("sk-primary".to_owned()),
            "LLM_MODEL" => Some("gpt-4o".to_owned()),
            "LLM_FALLBACK_ENDPOINT" => Some("https://api.deepseek.com".to_owned()),
            _ => None,
        };
        let mut s = Settings::default();
        assert_eq!(s.apply_legacy_llm_env(env), Ok(()));
        assert_eq!(s.llm.default_model.as_deref(), Some("gpt-4o"));
        let eps = &s.llm.models[0].endpoints;
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].base_url, "https://api.deepseek.com");
        // The fallback reuses the primary key when it has none of its own.
        assert!(eps[1].api_key.is_some());
        assert!(!s.to_masked_toml().contains("sk-primary"));
        let mut s = Settings::default();
        let missing = s.apply_legacy_llm_env(|k| (k == "LLM_ENDPOINT").then(|| "http://x".into()));
        assert_eq!(missing.map_err(|e| e.key), Err("LLM_MODEL".to_owned()));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn every_secret_is_collected_and_short_ones_are_refused_by_name() {
        let env = |k: &str| match k {
            "LLM_ENDPOINT" => Some("https://api.openai.com/v1".to_owned()),
            "LLM_API_KEY" => Some("sk-primary-key".to_owned()),
            "LLM_MODEL" => Some("gpt-4o".to_owned()),
            "GITHUB_TOKEN" => Some("ghp_secret_token_value".to_owned()),
            "GITHUB_WEBHOOK_SECRET" => Some("whsec-12345678".to_owned()),
            _ => None,
        };
        let mut s = Settings::default();
        s.apply_legacy_llm_env(env).unwrap();
        s.apply_github_env(env).unwrap();
        s.database.url = Some("postgres://u:db-password-1@h/db".into());
        assert_eq!(s.validate(), Ok(()));
        let r = s.redactor().unwrap();
        let text = "sk-primary-key ghp_secret_token_value whsec-12345678 db-password-1";
        assert_eq!(r.clean(text), "[redacted] [redacted] [redacted] [redacted]");

        s.database.url = Some("postgres://u:pw@h/db".into());
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "database.url (DB_URL) password");
        assert!(!e.to_string().contains("pw@"), "{e}");
        let mut s = Settings::default();
        let short = s.apply_legacy_llm_env(|k| match k {
            "LLM_ENDPOINT" => Some("http://x".to_owned()),
            "LLM_MODEL" => Some("m".to_owned()),
            "LLM_API_KEY" => Some("x".to_owned()),
            _ => None,
        });
        assert_eq!(short.map_err(|e| e.key), Err("LLM_API_KEY".to_owned()));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:********@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./data/a.db"), "sqlite://./data/a.db");
    }

    #[test]
    fn github_variables_fill_the_section_and_secrets_stay_masked() {
        let env = |k: &str| match k {
            "GITHUB_APP_ID" => Some("12345".to_owned()),
            "GITHUB_PRIVATE_KEY_PATH" => Some("/keys/app.pem".to_owned()),
            "GITHUB_INSTALLATION_ID" => Some("678".to_owned()),
            "GITHUB_TOKEN" => Some("ghp_secret_token_value".to_owned()),
            "GITHUB_WEBHOOK_SECRET" => Some("12345678".to_owned()),
            "GITHUB_API_URL" => Some("http://127.0.0.1:9".to_owned()),
            _ => None,
        };
        let mut s = Settings::default();
        assert_eq!(s.apply_github_env(env), Ok(()));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            (s.github.app_id, s.github.installation_id),
            (Some(12345), Some(678))
        );
        assert_eq!(s.github.api_url, "http://127.0.0.1:9");
        let shown = s.to_masked_toml();
        assert!(!shown.contains("ghp_secret_token_value"), "{shown}");
        assert!(!shown.contains("12345678"), "{shown}");
        assert!(
            shown.contains("[github]") && shown.contains("app_id = 12345"),
            "{shown}"
        );

        let mut s = Settings::default();
        let bad = s.apply_github_env(|k| (k == "GITHUB_APP_ID").then(|| "abc".into()));
        assert_eq!(bad.map_err(|e| e.key), Err("GITHUB_APP_ID".to_owned()));
        let mut s = Settings::default();
        s.github.app_id = Some(1);
        assert_eq!(s.validate().map_err(|e| e.key), Err("github.app_id".into()));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn agent_sections_must_name_an_agent_in_either_spelling() {
        let mut s = Settings::default();
        for name in [
            "developer",
            "reviewer",
            "reviewer-sre",
            "reviewer_security",
            "TESTER",
        ] {
            s.agents.insert(name.into(), AgentSettings::default());
        }
        assert_eq!(s.validate(), Ok(()));
        s.agents.insert("reviwer".into(), AgentSettings::default());
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "agents.reviwer");
        assert!(e.reason.contains("reviewer-security"), "{e}");
    }

    #[test]
    fn unpriced_models_are_named_in_config_show() {
        let mut s = Settings::default();
        let env = |k: &str| match k {
            "LLM_ENDPOINT" => Some("http://127.0.0.1:9".to_owned()),
            "LLM_MODEL" => Some("house-model".to_owned()),
            _ => None,
        };
        assert_eq!(s.apply_legacy_llm_env(env), Ok(()));
        assert_eq!(s.unpriced_models(), vec!["house-model".to_owned()]);
        let shown = s.to_masked_toml();
        assert!(
            shown.contains("# budgets cannot apply to model \"house-model\""),
            "{shown}"
        );
        s.llm.prices.insert(
            "house-model".into(),
            atlasia_llm::config::PriceSettings {
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
            },
        );
        assert!(s.unpriced_models().is_empty());
        assert!(!s.to_masked_toml().contains("budgets cannot apply"));
    }

    #[test]
    fn validation_names_the_key() {
        let mut s = Settings::default();
        s.database.min_idle = 50;
        assert_eq!(
            s.validate().map_err(|e| e.key),
            Err("database.min_idle".into())
        );
        let mut s = Settings::default();
        s.server.bind = "nowhere".into();
        assert_eq!(s.validate().map_err(|e| e.key), Err("server.bind".into()));
    }
}
