//! Whole bolts against the fake GitHub (`atlasia-github-sim`, in this process): the real
//! `atlasia serve` with workers and the real `atlasia sim-llm`, a repository on the fake seeded
//! with a tiny Python project whose test fails on `main`. The engine clones it over smart HTTP,
//! pushes `ai/issue-<n>` after each developer and writer commit, waits for the check runs of the
//! pushed head, opens (or updates) one pull request and keeps one progress comment per run on
//! the issue. Scenarios: a labelled-issue webhook to DONE with one pull request whose branch
//! holds the fix; a review loop-back and a re-run updating the same branch and pull request;
//! installation tokens revoked mid-bolt; a secondary rate limit mid-bolt; a CI check failing
//! once through the fix loop; a repository without checks; no secret anywhere a user or an
//! operator can read; and an escalation shown, with its options, in the one progress comment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atlasia_github::sign;
use atlasia_github_sim::{SimCheck, SimComment, SimConfig, SimGithub, SimPull};
use common::bolts::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

/// The longest a bolt may take here (each is expected to finish well under 30 s).
const LIMIT: Duration = Duration::from_secs(90);
const REPO: &str = "acme/calc";
const PAT: &str = "ghp_githubBoltTestPersonalAccessToken0123456789";
const SECRET: &str = "whsec-github-bolt-test-0123456789-abcdef";
const APP_ID: &str = "1001";
const INSTALLATION: &str = "55";
const TITLE: &str = "add() subtracts";

const SWAPPED: &str = "    return b + a\n";
/// What the failing CI job prints (only CI knows about this failure).
const CI_LOG: &str = "##[group]Run python3 -m unittest -v\ntest_add (test_calc.T) ... FAIL\n\
    AssertionError: CI-ONLY-FAILURE: add() overflows on the CI runner\n\
    ##[error]Process completed with exit code 1.\n";

/// How the server authenticates to the fake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// `GITHUB_TOKEN`.
    Pat,
    /// The App (and a PAT too, which the App then takes precedence over).
    App,
}

/// The fake GitHub with a seeded repository, the LLM simulator, and a server using both.
struct Env {
    gh: SimGithub,
    srv: TestServer,
    _llm: Sim,
    /// The App's private key (outside the server's data dir), when the App is configured.
    key: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

async fn setup(db: Db, auth: Auth, extra: &[(&str, &str)]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = match auth {
        Auth::Pat => (None, None),
        Auth::App => {
            let (k, p) = app_key(tmp.path());
            (Some(k), Some(p))
        }
    };
    let gh = SimGithub::start(SimConfig {
        app_id: APP_ID.into(),
        installation_id: INSTALLATION.parse().unwrap(),
        public_key_pem: public,
        pat: Some(PAT.into()),
        token_ttl: Duration::from_secs(3600),
        git_root: tmp.path().join("git"),
    })
    .await
    .unwrap();
    gh.add_repo(REPO, "main").unwrap();
    seed_repo(&gh.git_dir(REPO));
    let llm = Sim::start(&[]).await;
    let base = gh.base();
    let key_path = key.as_ref().map(|k| k.to_str().unwrap().to_owned());
    let mut env: Vec<(&str, &str)> = vec![
        ("LLM_ENDPOINT", llm.base.as_str()),
        ("ATLASIA_LLM__SIMULATOR", "true"),
        ("LLM_MODEL", "sim-model"),
        ("LLM_API_KEY", "sk-test-key"),
        ("ATLASIA_ENGINE__WORKERS", "2"),
        ("ATLASIA_ENGINE__POLL_MS", "50"),
        ("GITHUB_API_URL", base.as_str()),
        ("GITHUB_WEBHOOK_SECRET", SECRET),
        ("GITHUB_TOKEN", PAT),
        ("ATLASIA_GITHUB__CHECK_WAIT_MS", "20000"),
        ("ATLASIA_GITHUB__CHECK_GRACE_MS", "1500"),
        ("ATLASIA_GITHUB__CHECK_POLL_MS", "100"),
        ("ATLASIA_GITHUB__CHECK_POLL_MAX_MS", "400"),
    ];
    if let Some(k) = &key_path {
        env.push(("GITHUB_APP_ID", APP_ID));
        env.push(("GITHUB_INSTALLATION_ID", INSTALLATION));
        env.push(("GITHUB_PRIVATE_KEY_PATH", k.as_str()));
    }
    // Later entries win: `extra` overrides the defaults above.
    env.extend_from_slice(extra);
    let srv = TestServer::start_with(TestDb::new(db).await, &env).await;
    Env {
        gh,
        srv,
        _llm: llm,
        key,
        _tmp: tmp,
    }
}

/// An RSA key pair made by openssl in `dir`: (private key path, public PEM).
fn app_key(dir: &Path) -> (PathBuf, Vec<u8>) {
    let key = dir.join("app.pem");
    let ok = StdCommand::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success());
    let public = StdCommand::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    (key, public.stdout)
}

/// `git` in the fake's bare repository.
fn bare_git(bare: &Path, args: &[&str]) -> String {
    let mut all = vec!["--git-dir", bare.to_str().unwrap()];
    all.extend_from_slice(args);
    git(Path::new("."), &all)
}

/// Seeds the fake's bare repository (`git_dir`) with a tiny Python project whose test fails,
/// pushed over the filesystem with plain git to `main`.
fn seed_repo(bare: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    let out = StdCommand::new("git")
        .args(["clone", "-q", "-b", "main"])
        .arg(bare)
        .arg(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_calc_project(&work);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "calc with a bug"]);
    git(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        bare_git(bare, &["symbolic-ref", "HEAD"]),
        "refs/heads/main",
        "main is the default branch"
    );
}

fn branch(n: u64) -> String {
    format!("ai/issue-{n}")
}

/// Posts a signed `issues`/`labeled`/`ai:run` delivery for issue `n` of the fake; returns the
/// run id.
async fn label_issue(env: &Env, n: u64, title: &str, body: &str, labels: &[&str]) -> String {
    env.gh.add_issue(REPO, n, title, body, labels);
    let all: Vec<Value> = labels.iter().map(|l| json!({"name": l})).collect();
    let (owner, name) = REPO.split_once('/').unwrap();
    let payload = serde_json::to_vec(&json!({
        "action": "labeled",
        "label": {"name": "ai:run"},
        "issue": {"number": n, "title": title, "body": body, "labels": all},
        "repository": {"full_name": REPO, "name": name, "owner": {"login": owner}},
        "sender": {"login": "octocat"},
    }))
    .unwrap();
    let resp = env
        .srv
        .client
        .post(env.srv.url("/api/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "issues")
        .header("x-github-delivery", format!("delivery-{n}"))
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), &payload))
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "accepted", "{v}");
    v["run_id"].as_str().unwrap().to_owned()
}

/// Adds issue `n` to the fake and starts a run for it through `POST /api/runs` (which reads
/// the issue from GitHub); returns the run id.
async fn run_for_issue(env: &Env, n: u64, body: &str) -> String {
    env.gh.add_issue(REPO, n, TITLE, body, &["ai:run"]);
    let run = env
        .srv
        .create_run(json!({"repo": REPO, "issue_number": n}))
        .await;
    assert_eq!(run["title"], TITLE, "the issue was read from GitHub: {run}");
    run["id"].as_str().unwrap().to_owned()
}

/// Waits for a terminal state and asserts DONE, with everything useful when it is not.
async fn wait_done(env: &Env, id: &str) -> Value {
    let run = wait_status(&env.srv, id, &["DONE", "FAILED", "ESCALATED"]).await;
    if run["status"] != "DONE" {
        let esc = all_artifacts(&env.srv, id).await;
        let esc: Vec<&Value> = esc.iter().filter(|a| a["kind"] == "escalation").collect();
        let reqs: Vec<String> = env
            .gh
            .requests()
            .iter()
            .map(|r| format!("{} {} {} {}", r.method, r.path, r.auth, r.status))
            .collect();
        panic!(
            "run {id} ended {}: error {}\nescalations {esc:?}\nGitHub saw:\n{}\n\
             server log (tail):\n{}",
            run["status"],
            run["error"],
            reqs.join("\n"),
            tail(&env.srv.log(), 6000)
        );
    }
    run
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Waits until step `step` of the run completed.
async fn wait_step_completed(srv: &TestServer, id: &str, step: &str) {
    eventually(LIMIT, || async {
        let evs = events(srv, id).await;
        evs.iter()
            .any(|e| e["kind"] == "step_completed" && e["data"]["step"] == step)
            .then_some(())
    })
    .await;
}

async fn pull_request(srv: &TestServer, id: &str) -> Value {
    let (s, pr) = srv
        .get(&format!("/api/runs/{id}/pull-request"), ADMIN_TOKEN)
        .await;
    assert_eq!(s, StatusCode::OK, "{pr}");
    pr
}

fn marker(id: &str) -> String {
    format!("<!-- atlasia:run:{id} -->")
}

/// The issue comments carrying run `id`'s marker.
fn progress_comments(gh: &SimGithub, n: u64, id: &str) -> Vec<SimComment> {
    gh.comments(REPO, n)
        .into_iter()
        .filter(|c| c.body.contains(&marker(id)))
        .collect()
}

/// Exactly one progress comment for the run, edited at least once, that links `pr` (eventually:
/// the last edit may land just after the status turns DONE).
async fn assert_one_progress_comment(gh: &SimGithub, n: u64, id: &str, pr: &SimPull) {
    let link = format!("/pull/{}", pr.number);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = progress_comments(gh, n, id);
        assert!(
            found.len() <= 1,
            "more than one progress comment for run {id}: {found:#?}"
        );
        if let [c] = found.as_slice()
            && c.edits >= 1
            && c.body.contains(&link)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "want one progress comment for run {id}, edited, linking {link}; issue #{n} has \
             {:#?}",
            gh.comments(REPO, n)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The single open pull request of the fake, with GitHub's shape of ours.
fn one_pull(gh: &SimGithub, n: u64) -> SimPull {
    let pulls = gh.pulls(REPO);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let p = pulls[0].clone();
    assert_eq!(p.head, branch(n), "{p:?}");
    assert_eq!(p.base, "main", "{p:?}");
    assert_eq!(p.title, format!("[AI] {TITLE}"), "{p:?}");
    assert!(p.body.contains(&format!("Closes #{n}")), "{}", p.body);
    assert_eq!(p.state, "open", "never merged: {p:?}");
    p
}

/// The stored pull request of the run points at the fake's.
async fn assert_pr_record(srv: &TestServer, id: &str, n: u64, pull: &SimPull) {
    let pr = pull_request(srv, id).await;
    assert_eq!(pr["forge"], "github", "{pr}");
    assert_eq!(pr["number"].as_u64(), Some(pull.number), "{pr}");
    let url = pr["url"].as_str().unwrap_or_default();
    assert!(
        url.ends_with(&format!("{REPO}/pull/{}", pull.number)),
        "{pr}"
    );
    assert_eq!(pr["head"], branch(n).as_str(), "{pr}");
    assert_eq!(pr["base"], "main", "{pr}");
}

/// Commit subjects on `main..branch` of the fake.
fn branch_log(bare: &Path, n: u64) -> String {
    bare_git(
        bare,
        &["log", "--format=%an|%s", &format!("main..{}", branch(n))],
    )
}

// ---------------------------------------------------------------------------------------------

on_both! {
    webhook_to_one_pull_request => webhook_to_one_pull_request;
    review_loop_back_and_rerun_update_the_same_pull_request => review_loop_back_and_rerun;
    installation_tokens_revoked_mid_bolt => installation_tokens_revoked_mid_bolt;
    secondary_rate_limit_mid_bolt => secondary_rate_limit_mid_bolt;
    ci_check_fails_once_through_the_fix_loop => ci_check_fails_once_through_the_fix_loop;
    repository_without_checks => repository_without_checks;
    no_secret_leaks => no_secret_leaks;
    escalation_in_the_progress_comment => escalation_in_the_progress_comment;
}

/// (a) A labelled issue → DONE with exactly one pull request whose branch holds the fix.
async fn webhook_to_one_pull_request(db: Db) {
    let env = setup(db, Auth::Pat, &[]).await;
    let bare = env.gh.git_dir(REPO);
    env.gh.set_branch_checks(
        REPO,
        &branch(7),
        vec![vec![SimCheck::after("ci / test", 1, "success", "OK\n")]],
    );
    let main_before = bare_git(&bare, &["rev-parse", "main"]);
    let id = label_issue(
        &env,
        7,
        TITLE,
        &body(json!({"developer": [edit_to(FIXED_NEW)]})),
        &["bug", "ai:run", "priority:7"],
    )
    .await;
    let (_, run) = env.srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
    assert_eq!(run["priority"], 7, "{run}");
    assert_eq!(run["repo"], REPO, "{run}");
    let done = wait_done(&env, &id).await;
    assert_eq!(done["fix_loops"], 0, "{done}");
    assert_eq!(done["review_loops"], 0, "{done}");

    // One pull request on GitHub, and the run's record of it.
    let pull = one_pull(&env.gh, 7);
    assert_pr_record(&env.srv, &id, 7, &pull).await;

    // The branch holds the fix; main still has the bug and never moved.
    assert!(branch_tests_pass(&bare, &branch(7)));
    assert!(
        !branch_tests_pass(&bare, "main"),
        "the test must be able to fail"
    );
    assert_eq!(bare_git(&bare, &["rev-parse", "main"]), main_before);
    let log = branch_log(&bare, 7);
    assert!(log.contains("(iteration 1)"), "{log}");

    // The tester waited for the checks of a pushed head (in progress, then completed).
    let heads = env.gh.branch_heads(REPO, &branch(7));
    assert!(heads.len() >= 2, "a developer and a writer push: {heads:?}");
    let polled: Vec<usize> = heads
        .iter()
        .map(|h| {
            env.gh
                .check_runs_of(REPO, h)
                .first()
                .map_or(0, |(_, _, polls)| *polls)
        })
        .collect();
    assert!(
        polled.iter().any(|p| *p >= 2),
        "the check runs of a pushed head were polled until they completed: {heads:?} \
         {polled:?}"
    );
    let tests = artifacts(&env.srv, &id, "test_report").await;
    assert_eq!(tests.len(), 1, "{tests:?}");
    assert_eq!(tests[0]["payload"]["passed"], true, "{tests:?}");

    assert_one_progress_comment(&env.gh, 7, &id, &pull).await;
    // Pushes and API calls used the PAT only.
    for r in env
        .gh
        .requests()
        .iter()
        .filter(|r| !r.path.starts_with("/_sim/"))
    {
        assert!(matches!(r.auth.as_str(), "pat"), "{r:?}");
    }
}

/// (b) A review loop-back pushes a second developer commit to the same branch and updates the
/// one pull request; a re-run of the issue continues that branch and that pull request.
async fn review_loop_back_and_rerun(db: Db) {
    let env = setup(db, Auth::Pat, &[]).await;
    let bare = env.gh.git_dir(REPO);
    let main_before = bare_git(&bare, &["rev-parse", "main"]);
    let script = json!({
        "developer": [edit_to(FIXED_NEW), re_edit(FIXED_NEW, SWAPPED)],
        "review": ["changes_required", "approved"],
    });
    let first = run_for_issue(&env, 8, &body(script)).await;
    let done = wait_done(&env, &first).await;
    assert_eq!(done["review_loops"], 1, "{done}");
    let evs = events(&env.srv, &first).await;
    let loops = kinds(&evs, "loop_back");
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["data"]["edge"], "review_to_developer");

    let log = branch_log(&bare, 8);
    assert!(
        log.contains("(iteration 1)") && log.contains("(iteration 2)"),
        "both developer commits are on the branch: {log}"
    );
    let heads = env.gh.branch_heads(REPO, &branch(8));
    assert!(
        heads.len() >= 3,
        "pushed after each developer commit and the writer's: {heads:?}"
    );
    let pull = one_pull(&env.gh, 8);
    assert_pr_record(&env.srv, &first, 8, &pull).await;
    assert!(branch_tests_pass(&bare, &branch(8)));
    assert_one_progress_comment(&env.gh, 8, &first, &pull).await;
    let head_after_first = bare_git(&bare, &["rev-parse", &branch(8)]);

    // The same issue again: the existing branch is continued and the pull request updated.
    let rerun = json!({
        "developer": [[
            {"tool": "write_file", "args": {"path": "calc.py", "content":
                "def add(a, b):\n    \"\"\"Returns the sum of a and b.\"\"\"\n    return a + b\n"}},
            {"tool": "run_command", "args": {"command": "python3 -m unittest -q"}},
        ]],
        "review": ["approved"],
    });
    let run = env
        .srv
        .create_run(json!({"repo": REPO, "issue_number": 8, "title": TITLE, "body": body(rerun)}))
        .await;
    let second = run["id"].as_str().unwrap().to_owned();
    wait_done(&env, &second).await;
    let head = bare_git(&bare, &["rev-parse", &branch(8)]);
    assert_ne!(head, head_after_first, "the re-run pushed to the branch");
    let ancestor = StdCommand::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["merge-base", "--is-ancestor", &head_after_first, &head])
        .status()
        .unwrap();
    assert!(
        ancestor.success(),
        "the re-run continued the branch instead of replacing it"
    );
    let calc = bare_git(&bare, &["show", &format!("{}:calc.py", branch(8))]);
    assert!(calc.contains("Returns the sum"), "{calc}");
    assert!(branch_tests_pass(&bare, &branch(8)));
    let again = one_pull(&env.gh, 8);
    assert_eq!(again.number, pull.number, "the same pull request");
    assert_pr_record(&env.srv, &second, 8, &pull).await;
    assert_one_progress_comment(&env.gh, 8, &second, &pull).await;
    assert_eq!(progress_comments(&env.gh, 8, &first).len(), 1);
    assert_eq!(bare_git(&bare, &["rev-parse", "main"]), main_before);
}

/// (c) App auth: the installation tokens are revoked once the first step completed; the bolt
/// gets a new one and finishes.
async fn installation_tokens_revoked_mid_bolt(db: Db) {
    let env = setup(db, Auth::App, &[]).await;
    let id = run_for_issue(&env, 9, &body(json!({"developer": [edit_to(FIXED_NEW)]}))).await;
    wait_step_completed(&env.srv, &id, "PM").await;
    let before = env.gh.issued_tokens().len();
    assert!(before >= 1);
    env.gh.expire_tokens();
    wait_done(&env, &id).await;
    let issued = env.gh.issued_tokens();
    assert!(
        issued.len() > before,
        "a new installation token after the revocation: {} issued",
        issued.len()
    );
    let pull = one_pull(&env.gh, 9);
    assert_pr_record(&env.srv, &id, 9, &pull).await;
    assert!(branch_tests_pass(&env.gh.git_dir(REPO), &branch(9)));
    assert_one_progress_comment(&env.gh, 9, &id, &pull).await;
    // The App authenticates everything; the PAT configured alongside is not used.
    for r in env
        .gh
        .requests()
        .iter()
        .filter(|r| !r.path.starts_with("/_sim/"))
    {
        assert!(
            matches!(
                r.auth.as_str(),
                "app-jwt" | "installation-token" | "revoked-token"
            ),
            "{r:?}"
        );
    }
}

/// (d) A secondary rate limit (403 with `retry-after`) mid-bolt is waited out.
async fn secondary_rate_limit_mid_bolt(db: Db) {
    let env = setup(db, Auth::Pat, &[]).await;
    let id = run_for_issue(&env, 10, &body(json!({"developer": [edit_to(FIXED_NEW)]}))).await;
    wait_step_completed(&env.srv, &id, "PM").await;
    env.gh.secondary_rate_limit(2, 1);
    wait_done(&env, &id).await;
    let reqs = env.gh.requests();
    let limited: Vec<usize> = reqs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == 403)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(limited.len(), 2, "both limited answers were used up");
    let last = *limited.last().unwrap();
    assert!(
        reqs[last + 1..]
            .iter()
            .any(|r| !r.path.contains(".git/") && (200..300).contains(&r.status)),
        "API calls succeeded after the limit"
    );
    let pull = one_pull(&env.gh, 10);
    assert_pr_record(&env.srv, &id, 10, &pull).await;
    assert_one_progress_comment(&env.gh, 10, &id, &pull).await;
}

/// (e) Local tests pass but CI fails for the first pushed head: the fix loop runs once with
/// the job's log, and the second head's checks pass.
async fn ci_check_fails_once_through_the_fix_loop(db: Db) {
    let env = setup(db, Auth::Pat, &[]).await;
    env.gh.set_branch_checks(
        REPO,
        &branch(11),
        vec![
            vec![SimCheck::after("ci / test", 1, "failure", CI_LOG)],
            vec![SimCheck::after("ci / test", 1, "success", "OK\n")],
        ],
    );
    let id = run_for_issue(
        &env,
        11,
        &body(json!({"developer": [edit_to(FIXED_NEW), re_edit(FIXED_NEW, SWAPPED)]})),
    )
    .await;
    let done = wait_done(&env, &id).await;
    assert_eq!(done["fix_loops"], 1, "{done}");
    let tests = artifacts(&env.srv, &id, "test_report").await;
    assert_eq!(tests.len(), 2, "{tests:#?}");
    let first = &tests[0]["payload"];
    assert_eq!(first["passed"], false, "{first}");
    let commands = first["commands"].as_array().unwrap();
    let ci = commands
        .iter()
        .find(|c| {
            c["command"]
                .as_str()
                .is_some_and(|n| n.starts_with("CI check") && n.contains("ci / test"))
        })
        .unwrap_or_else(|| panic!("no CI check entry: {first}"));
    assert!(
        ci["output_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("CI-ONLY-FAILURE"),
        "the job log is in the report: {ci}"
    );
    assert!(
        commands
            .iter()
            .filter(|c| c["command"] == "python3 -m unittest -q")
            .all(|c| c["exit_code"] == 0),
        "the local tests passed: {first}"
    );
    assert_eq!(tests[1]["payload"]["passed"], true, "{}", tests[1]);
    let evs = events(&env.srv, &id).await;
    let loops = kinds(&evs, "loop_back");
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["data"]["edge"], "tester_to_developer");
    let heads = env.gh.branch_heads(REPO, &branch(11));
    assert!(heads.len() >= 2, "{heads:?}");
    assert_eq!(
        env.gh.check_runs_of(REPO, &heads[0]).len(),
        1,
        "the first pushed head's checks were read"
    );
    assert_eq!(
        env.gh.check_runs_of(REPO, &heads[1]).len(),
        1,
        "the second pushed head's checks were read"
    );
    let pull = one_pull(&env.gh, 11);
    assert_pr_record(&env.srv, &id, 11, &pull).await;
    assert_one_progress_comment(&env.gh, 11, &id, &pull).await;
}

/// (f) No check run appears within the grace period: the local result stands, no fix loop.
async fn repository_without_checks(db: Db) {
    // A long total wait, so only the grace period can end the wait quickly.
    let env = setup(
        db,
        Auth::Pat,
        &[("ATLASIA_GITHUB__CHECK_WAIT_MS", "120000")],
    )
    .await;
    let started = Instant::now();
    let id = run_for_issue(&env, 12, &body(json!({"developer": [edit_to(FIXED_NEW)]}))).await;
    let done = wait_done(&env, &id).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "no checks ⇒ the grace period ends the wait, yet the bolt took {took:?}"
    );
    assert_eq!(done["fix_loops"], 0, "{done}");
    let tests = artifacts(&env.srv, &id, "test_report").await;
    assert_eq!(tests.len(), 1, "{tests:#?}");
    assert_eq!(tests[0]["payload"]["passed"], true);
    assert!(
        tests[0]["payload"]["commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c["command"]
                .as_str()
                .unwrap_or_default()
                .starts_with("CI check")),
        "{}",
        tests[0]
    );
    // The tester did ask GitHub about the pushed head.
    let heads = env.gh.branch_heads(REPO, &branch(12));
    assert!(!heads.is_empty());
    let asked = env
        .gh
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/check-runs") && heads.iter().any(|h| r.path.contains(h)));
    assert!(asked, "the check runs of a pushed head were listed");
    let pull = one_pull(&env.gh, 12);
    assert_pr_record(&env.srv, &id, 12, &pull).await;
}

/// (g) With the server logging at debug, no credential reaches the log, the artifacts, the
/// events, the run or the clone's `.git/config`.
async fn no_secret_leaks(db: Db) {
    let env = setup(db, Auth::App, &[("RUST_LOG", "debug")]).await;
    let data_dir = env.srv.db.dir.path().to_path_buf();
    let id = label_issue(
        &env,
        13,
        TITLE,
        &body(json!({"developer": [edit_to(FIXED_NEW)]})),
        &["ai:run"],
    )
    .await;
    // Watch the clone's `.git/config` while the bolt runs (it may be cleaned up afterwards).
    let mut configs: Vec<(PathBuf, String)> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        for p in git_configs(&data_dir) {
            if let Ok(text) = std::fs::read_to_string(&p)
                && !configs.iter().any(|(q, t)| *q == p && *t == text)
            {
                configs.push((p, text));
            }
        }
        let (_, run) = env.srv.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        if ["DONE", "FAILED", "ESCALATED"]
            .iter()
            .any(|s| run["status"] == *s)
        {
            break;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = wait_done(&env, &id).await;
    assert!(
        !configs.is_empty(),
        "the engine clones into its data dir ({}), yet no .git/config appeared there",
        data_dir.display()
    );

    // What must never appear.
    let mut secrets: Vec<(String, String)> = vec![
        ("the PAT".into(), PAT.into()),
        ("the webhook secret".into(), SECRET.into()),
        (
            "the PAT as git Basic credentials".into(),
            b64(&format!("x-access-token:{PAT}")),
        ),
    ];
    let pem = std::fs::read_to_string(env.key.as_ref().unwrap()).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("a line of the App private key".into(), line.to_owned()));
    }
    let tokens = env.gh.issued_tokens();
    assert!(!tokens.is_empty());
    for t in &tokens {
        secrets.push(("an installation token".into(), t.clone()));
        secrets.push((
            "an installation token as git Basic credentials".into(),
            b64(&format!("x-access-token:{t}")),
        ));
    }

    let mut places: Vec<(String, String)> = vec![("the server log".into(), env.srv.log())];
    for a in all_artifacts(&env.srv, &id).await {
        places.push((format!("artifact {}", a["kind"]), a.to_string()));
    }
    for e in events(&env.srv, &id).await {
        places.push((format!("event {}", e["kind"]), e.to_string()));
    }
    places.push(("the run".into(), done.to_string()));
    places.push(("the run's error".into(), done["error"].to_string()));
    places.push((
        "the pull request record".into(),
        pull_request(&env.srv, &id).await.to_string(),
    ));
    for (p, text) in &configs {
        places.push((format!("{} (during the run)", p.display()), text.clone()));
    }
    for p in git_configs(&data_dir) {
        places.push((
            format!("{} (after the run)", p.display()),
            std::fs::read_to_string(&p).unwrap_or_default(),
        ));
    }
    for (what, text) in &places {
        for (name, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{name} is in {what}");
        }
    }
    let log = env.srv.log();
    assert!(!log.contains("eyJ"), "a JWT is in the server log");
    for (p, text) in &configs {
        assert!(
            !text.contains("x-access-token") && !text.contains("extraheader"),
            "credentials in {}:\n{text}",
            p.display()
        );
    }
    // Nothing under the data dir holds a secret either (database file included on SQLite).
    for p in files(&data_dir) {
        let bytes = std::fs::read(&p).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for (name, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name} is in {}",
                p.display()
            );
        }
    }
}

/// (h) An escalated bolt shows the escalation and its options in its one progress comment;
/// after PROCEED it finishes, and that same comment (never a second one) links the pull
/// request.
async fn escalation_in_the_progress_comment(db: Db) {
    let env = setup(db, Auth::Pat, &[("ATLASIA_ENGINE__FIX_LOOPS", "1")]).await;
    let wrong = "    return a * b\n";
    let wrong2 = "    return (a * b)\n";
    let script = json!({"developer": [
        edit_to(wrong), re_edit(wrong, wrong2), re_edit(wrong2, FIXED_NEW),
    ]});
    let id = run_for_issue(&env, 14, &body(script)).await;
    let esc = wait_status(&env.srv, &id, &["ESCALATED", "DONE", "FAILED"]).await;
    assert_eq!(
        esc["status"],
        "ESCALATED",
        "{esc}\n{}",
        tail(&env.srv.log(), 4000)
    );
    let escalation = artifacts(&env.srv, &id, "escalation").await;
    let options: Vec<String> = escalation[0]["payload"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(options.len() >= 2, "{escalation:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = progress_comments(&env.gh, 14, &id);
        assert!(found.len() <= 1, "{found:#?}");
        if let [c] = found.as_slice()
            && options.iter().all(|o| c.body.contains(o.as_str()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want the escalation options {options:?} in the progress comment of run {id}; \
             issue #14 has {:#?}",
            env.gh.comments(REPO, 14)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = env
        .srv
        .post(
            &format!("/api/runs/{id}/escalation-decision"),
            ADMIN_TOKEN,
            &json!({"decision": "PROCEED", "guidance": "Use + in add()."}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_done(&env, &id).await;
    let pull = one_pull(&env.gh, 14);
    assert_pr_record(&env.srv, &id, 14, &pull).await;
    assert_one_progress_comment(&env.gh, 14, &id, &pull).await;
}

/// Standard base64 with padding (how git's Basic credentials look on the wire).
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every `.git/config` under `dir`.
fn git_configs(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.ends_with(".git/config"))
        .collect()
}
