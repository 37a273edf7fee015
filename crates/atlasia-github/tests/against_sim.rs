//! The client against the fake GitHub (`atlasia-github-sim`) over real HTTP: App tokens
//! (minted, cached, refreshed once on a 401), rate limits, 5xx retries, idempotent pull
//! requests, comments, the check-runs waiter, job log tails, and a real clone + push whose
//! token never reaches `.git/config`.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use atlasia_github::{
    AppKey, CheckOutcome, CheckWait, Credentials, GithubClient, GithubConfig, GithubError,
    NewPullRequest, PrAction, RepoName,
};
use atlasia_github_sim::{SimCheck, SimConfig, SimGithub};
use atlasia_resilience::RetryPolicy;
use secrecy::SecretString;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const APP_ID: &str = "4242";
const INSTALLATION: u64 = 77;
const PAT: &str = "ghp_test_personal_access_token_0123";
const REPO: &str = "acme/widgets";

/// A throwaway RSA key pair (private PKCS#1 as GitHub hands it out, public SPKI), generated
/// once per test binary with openssl; never written to the repository.
fn keys() -> &'static (Vec<u8>, Vec<u8>) {
    static KEYS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let k = key.to_str().unwrap();
        run(&["genrsa", "-traditional", "-out", k, "2048"]);
        let public = run(&["rsa", "-in", k, "-pubout"]);
        (std::fs::read(&key).unwrap(), public)
    })
}

struct Fixture {
    sim: SimGithub,
    _root: tempfile::TempDir,
    repo: RepoName,
}

async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let sim = SimGithub::start(SimConfig {
        app_id: APP_ID.into(),
        installation_id: INSTALLATION,
        public_key_pem: Some(keys().1.clone()),
        pat: Some(PAT.into()),
        token_ttl: Duration::from_secs(3600),
        git_root: root.path().join("git"),
    })
    .await
    .unwrap();
    sim.add_repo(REPO, "main").unwrap();
    sim.add_issue(
        REPO,
        1,
        "Add a widget",
        "The body",
        &["ai:run", "priority:7"],
    );
    Fixture {
        sim,
        _root: root,
        repo: RepoName::parse(REPO).unwrap(),
    }
}

fn config(sim: &SimGithub, credentials: Credentials) -> GithubConfig {
    let mut cfg = GithubConfig::new(credentials);
    cfg.api_url = sim.base();
    cfg.timeout = Duration::from_secs(10);
    cfg.retry = RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    };
    cfg.max_rate_limit_wait = Duration::from_secs(5);
    cfg
}

fn app_client(sim: &SimGithub) -> GithubClient {
    let key = AppKey::from_pem(&keys().0).unwrap();
    GithubClient::new(config(
        sim,
        Credentials::App {
            app_id: APP_ID.into(),
            key,
            installation_id: INSTALLATION,
        },
    ))
    .unwrap()
}

fn pat_client(sim: &SimGithub) -> GithubClient {
    GithubClient::new(config(sim, Credentials::Token(SecretString::from(PAT)))).unwrap()
}

fn count(sim: &SimGithub, path_suffix: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.ends_with(path_suffix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_is_cached_and_refreshed_once_after_early_expiry() {
    let f = fixture().await;
    let gh = app_client(&f.sim);
    let issue = gh.issue(&f.repo, 1).await.unwrap();
    assert_eq!(issue.title, "Add a widget");
    assert_eq!(issue.labels, vec!["ai:run", "priority:7"]);
    gh.repository(&f.repo).await.unwrap();
    assert_eq!(count(&f.sim, "/access_tokens"), 1, "the token is cached");
    assert_eq!(f.sim.issued_tokens().len(), 1);

    f.sim.expire_tokens();
    let repo = gh.repository(&f.repo).await.unwrap();
    assert_eq!(repo.default_branch, "main");
    assert_eq!(count(&f.sim, "/access_tokens"), 2, "refreshed exactly once");
    let reqs = f.sim.requests();
    let statuses: Vec<(String, u16)> = reqs
        .iter()
        .filter(|r| r.path == "/repos/acme/widgets")
        .map(|r| (r.auth.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("installation-token".into(), 200),
            ("revoked-token".into(), 401),
            ("installation-token".into(), 200)
        ]
    );
    // The JWT only ever goes to the token endpoint, and every request has GitHub's headers.
    for r in &reqs {
        assert_eq!(
            r.auth == "app-jwt",
            r.path.ends_with("/access_tokens"),
            "{r:?}"
        );
        let header = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("accept"), Some("application/vnd.github+json"));
        assert_eq!(header("x-github-api-version"), Some("2022-11-28"));
        assert!(header("user-agent").is_some_and(|u| u.starts_with("atlasia/")));
    }

    // A second revocation in a row is refused after one refresh (no refresh loop).
    f.sim.expire_tokens();
    let mut cfg = config(&f.sim, Credentials::Token(SecretString::from("ghp_wrong")));
    cfg.retry.attempts = 1;
    let wrong = GithubClient::new(cfg).unwrap();
    let err = wrong.repository(&f.repo).await.unwrap_err();
    assert!(
        matches!(err, GithubError::Auth { status: 401, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_access_token_works_too() {
    let f = fixture().await;
    let gh = pat_client(&f.sim);
    gh.issue(&f.repo, 1).await.unwrap();
    let reqs = f.sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].auth, "pat");
    let missing = gh.issue(&f.repo, 99).await.unwrap_err();
    assert!(matches!(missing, GithubError::NotFound { .. }), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_rate_limit_waits_for_retry_after() {
    let f = fixture().await;
    let gh = pat_client(&f.sim);
    f.sim.secondary_rate_limit(1, 1);
    let started = Instant::now();
    gh.issue(&f.repo, 1).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry-after honoured"
    );
    let statuses: Vec<u16> = f.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![403, 200]);

    // A wait longer than the cap fails at once, classified as a rate limit.
    let mut cfg = config(&f.sim, Credentials::Token(SecretString::from(PAT)));
    cfg.max_rate_limit_wait = Duration::from_millis(500);
    let impatient = GithubClient::new(cfg).unwrap();
    f.sim.secondary_rate_limit(1, 30);
    let started = Instant::now();
    let err = impatient.issue(&f.repo, 1).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.error_type(), "RATE_LIMIT");
    assert!(
        matches!(err, GithubError::RateLimited { retry_in, .. } if retry_in == Duration::from_secs(30))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_rate_limit_waits_for_the_reset() {
    let f = fixture().await;
    let gh = pat_client(&f.sim);
    f.sim.primary_rate_limit(1, 1);
    let started = Instant::now();
    gh.repository(&f.repo).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(f.sim.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_reported() {
    let f = fixture().await;
    let gh = pat_client(&f.sim);
    f.sim.fail_requests(2, 502);
    gh.issue(&f.repo, 1).await.unwrap();
    let statuses: Vec<u16> = f.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![502, 502, 200]);

    f.sim.fail_requests(10, 503);
    let err = gh.issue(&f.repo, 1).await.unwrap_err();
    assert!(
        matches!(err, GithubError::Server { status: 503, .. }),
        "{err}"
    );
    assert_eq!(f.sim.requests().len(), 6, "3 attempts, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_github_is_a_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut cfg = GithubConfig::new(Credentials::Token(SecretString::from(PAT)));
    cfg.api_url = format!("http://127.0.0.1:{port}");
    cfg.retry = RetryPolicy {
        attempts: 2,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(10),
    };
    let gh = GithubClient::new(cfg).unwrap();
    let err = gh
        .repository(&RepoName::parse(REPO).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "NETWORK", "{err}");
    assert!(!err.to_string().contains(PAT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_or_update_pull_request_is_idempotent() {
    let f = fixture().await;
    let gh = app_client(&f.sim);
    git(
        None,
        &[
            "--git-dir",
            f.sim.git_dir(REPO).to_str().unwrap(),
            "branch",
            "ai/issue-1",
            "main",
        ],
    );
    let new = NewPullRequest {
        title: "[AI] Add a widget".into(),
        body: "Closes #1".into(),
        head: "ai/issue-1".into(),
        base: "main".into(),
    };
    let (first, action) = gh
        .create_or_update_pull_request(&f.repo, &new)
        .await
        .unwrap();
    assert_eq!(action, PrAction::Created);
    let again = NewPullRequest {
        title: "[AI] Add a widget (revised)".into(),
        ..new.clone()
    };
    let (second, action) = gh
        .create_or_update_pull_request(&f.repo, &again)
        .await
        .unwrap();
    assert_eq!(action, PrAction::Updated);
    assert_eq!(second.number, first.number);
    let pulls = f.sim.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "[AI] Add a widget (revised)");

    // A plain create of the same head is GitHub's 422, recognised as "already exists".
    let err = gh.create_pull_request(&f.repo, &new).await.unwrap_err();
    assert!(err.is_pull_request_exists(), "{err}");
    // A head that does not exist is a different 422.
    let bad = NewPullRequest {
        head: "nope".into(),
        ..new
    };
    let err = gh
        .create_or_update_pull_request(&f.repo, &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GithubError::Validation { status: 422, .. }) && !err.is_pull_request_exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_are_created_updated_and_read_newest_last() {
    let f = fixture().await;
    let gh = app_client(&f.sim);
    for i in 0..150 {
        f.sim.add_comment(REPO, 1, "alice", &format!("comment {i}"));
    }
    let ctx = gh.issue_context(&f.repo, 1, 5).await.unwrap();
    let bodies: Vec<&str> = ctx.comments.iter().map(|c| c.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "comment 145",
            "comment 146",
            "comment 147",
            "comment 148",
            "comment 149"
        ]
    );
    // Across a page boundary: the last page holds 50, so the one before it is read too.
    let ctx = gh.issue_context(&f.repo, 1, 60).await.unwrap();
    assert_eq!(ctx.comments.len(), 60);
    assert_eq!(ctx.comments[0].body, "comment 90");
    assert_eq!(ctx.comments[59].body, "comment 149");

    let c = gh
        .create_comment(&f.repo, 1, "Working on it")
        .await
        .unwrap();
    gh.update_comment(&f.repo, c.id, "Done").await.unwrap();
    let stored = f.sim.comments(REPO, 1);
    assert_eq!(stored.last().map(|c| c.body.as_str()), Some("Done"));
    assert_eq!(stored.len(), 151);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_issue_bodies_are_capped() {
    let f = fixture().await;
    let body = "é".repeat(50_000); // 100 000 bytes
    f.sim.add_issue(REPO, 2, "Big", &body, &[]);
    let issue = pat_client(&f.sim).issue(&f.repo, 2).await.unwrap();
    assert!(issue.body_truncated);
    assert!(issue.body.len() <= atlasia_github::api::MAX_ISSUE_BODY);
    assert!(issue.body.len() > 60_000);
}

fn quick_wait() -> CheckWait {
    CheckWait {
        total: Duration::from_secs(20),
        grace: Duration::from_millis(300),
        poll: Duration::from_millis(20),
        poll_max: Duration::from_millis(100),
        log_tail_bytes: 1024,
        max_logs: 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_waiter_reports_a_failure_with_its_log_then_a_pass() {
    let f = fixture().await;
    let gh = app_client(&f.sim);
    let log = format!(
        "{}\nerror[E0425]: cannot find value `x`\nFAILED\n",
        "compiling...\n".repeat(500)
    );
    f.sim.set_checks(
        REPO,
        "sha-1",
        vec![
            SimCheck::after("build", 1, "success", "ok"),
            SimCheck::after("test", 2, "failure", &log),
        ],
    );
    f.sim.fail_check_runs(1); // a transient 500 in the middle costs nothing
    let out = gh
        .wait_for_checks(&f.repo, "sha-1", &quick_wait())
        .await
        .unwrap();
    let CheckOutcome::Failed { failed } = out else {
        panic!("expected a failure, got {out:?}");
    };
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].run.name, "test");
    let tail = failed[0].log_tail.as_deref().unwrap();
    assert!(tail.len() <= 1024);
    assert!(tail.ends_with("cannot find value `x`\nFAILED\n"), "{tail}");

    // The fix is pushed as a new commit, whose checks pass.
    f.sim.set_checks(
        REPO,
        "sha-2",
        vec![SimCheck::after("test", 2, "success", "ok")],
    );
    let out = gh
        .wait_for_checks(&f.repo, "sha-2", &quick_wait())
        .await
        .unwrap();
    assert!(
        matches!(out, CheckOutcome::AllPassed { ref runs } if runs.len() == 1),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_waiter_without_checks_returns_quickly_and_times_out_when_stuck() {
    let f = fixture().await;
    let gh = pat_client(&f.sim);
    let started = Instant::now();
    let out = gh
        .wait_for_checks(&f.repo, "sha-none", &quick_wait())
        .await
        .unwrap();
    assert_eq!(out, CheckOutcome::NoChecks);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    f.sim.set_checks(
        REPO,
        "sha-stuck",
        vec![SimCheck::after("slow", 1_000_000, "success", "")],
    );
    let wait = CheckWait {
        total: Duration::from_millis(400),
        ..quick_wait()
    };
    let started = Instant::now();
    let out = gh
        .wait_for_checks(&f.repo, "sha-stuck", &wait)
        .await
        .unwrap();
    assert!(
        matches!(out, CheckOutcome::TimedOut { ref pending } if pending.len() == 1),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn git(dir: Option<&Path>, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

fn git_env(dir: Option<&Path>, args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = std::process::Command::new("git");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_and_push_over_smart_http_keep_the_token_out_of_git_config() {
    let f = fixture().await;
    let gh = app_client(&f.sim);
    let auth = gh.clone_url_and_auth(&f.repo).await.unwrap();
    assert_eq!(auth.url, format!("{}/acme/widgets.git", f.sim.base()));
    let token = f.sim.issued_tokens().pop().unwrap();
    assert!(!auth.url.contains(&token));

    let work = tempfile::tempdir().unwrap();
    let env = auth.expose_env();
    git_env(Some(work.path()), &["clone", "-q", &auth.url, "w"], &env);
    let w = work.path().join("w");
    std::fs::write(w.join("widget.rs"), "pub fn widget() {}\n").unwrap();
    git(Some(&w), &["checkout", "-q", "-b", "ai/issue-1"]);
    git(Some(&w), &["add", "widget.rs"]);
    git(
        Some(&w),
        &[
            "-c",
            "user.name=Atlasia",
            "-c",
            "user.email=bot@example.invalid",
            "commit",
            "-q",
            "-m",
            "feat: widget",
        ],
    );
    git_env(Some(&w), &["push", "-q", "origin", "ai/issue-1"], &env);

    let pushed = git(
        None,
        &[
            "--git-dir",
            f.sim.git_dir(REPO).to_str().unwrap(),
            "log",
            "--format=%s",
            "ai/issue-1",
        ],
    );
    assert!(pushed.starts_with("feat: widget"), "{pushed}");
    let config = std::fs::read_to_string(w.join(".git/config")).unwrap();
    assert!(!config.contains(&token), "token written to .git/config");
    assert!(!config.contains(auth.expose_header()));
    assert!(!config.contains("extraHeader"));

    // Without the header git is refused (no anonymous access), and it does not prompt.
    let anon = std::process::Command::new("git")
        .args(["ls-remote", &auth.url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(!anon.status.success());

    // The pushed branch can now carry a pull request.
    let (pr, action) = gh
        .create_or_update_pull_request(
            &f.repo,
            &NewPullRequest {
                title: "[AI] widget".into(),
                body: "Closes #1".into(),
                head: "ai/issue-1".into(),
                base: "main".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (pr.head.as_str(), action),
        ("ai/issue-1", PrAction::Created)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_repeated_failures() {
    let f = fixture().await;
    let mut cfg = config(&f.sim, Credentials::Token(SecretString::from(PAT)));
    cfg.retry.attempts = 1;
    cfg.breaker.min_calls = 2;
    cfg.breaker.window = 2;
    let gh = GithubClient::new(cfg).unwrap();
    f.sim.fail_requests(2, 500);
    for _ in 0..2 {
        gh.issue(&f.repo, 1).await.unwrap_err();
    }
    let err = gh.issue(&f.repo, 1).await.unwrap_err();
    assert_eq!(err.error_type(), "CIRCUIT_OPEN", "{err}");
    assert_eq!(f.sim.requests().len(), 2, "no request while open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_signed_by_another_key_is_refused() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out", other.to_str().unwrap(), "2048"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // PKCS#8 this time (openssl 3's default): also accepted by the client.
    let key = AppKey::from_file(&other).unwrap();
    let mut cfg = config(
        &f.sim,
        Credentials::App {
            app_id: APP_ID.into(),
            key,
            installation_id: INSTALLATION,
        },
    );
    cfg.retry.attempts = 1;
    let gh = GithubClient::new(cfg).unwrap();
    let err = gh.issue(&f.repo, 1).await.unwrap_err();
    assert!(
        matches!(err, GithubError::Auth { status: 401, .. }),
        "{err}"
    );
    assert!(f.sim.issued_tokens().is_empty());
    assert!(!format!("{err:?}").contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_within_five_minutes_of_expiry_is_replaced_before_use() {
    let root = tempfile::tempdir().unwrap();
    let sim = SimGithub::start(SimConfig {
        app_id: APP_ID.into(),
        installation_id: INSTALLATION,
        public_key_pem: Some(keys().1.clone()),
        pat: None,
        // Valid, but inside the refresh margin from the moment it is issued.
        token_ttl: Duration::from_secs(200),
        git_root: root.path().join("git"),
    })
    .await
    .unwrap();
    sim.add_repo(REPO, "main").unwrap();
    let gh = app_client(&sim);
    let repo = RepoName::parse(REPO).unwrap();
    gh.repository(&repo).await.unwrap();
    gh.repository(&repo).await.unwrap();
    assert_eq!(count(&sim, "/access_tokens"), 2);
    // No request was refused: the old token was replaced before GitHub could reject it.
    assert!(sim.requests().iter().all(|r| r.status < 400));
}
