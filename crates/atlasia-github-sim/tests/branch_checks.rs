//! Check runs that follow pushes (`set_branch_checks`) over real HTTP and real git: each
//! distinct head pushed to the branch gets the next scripted list (the last repeats), a commit
//! keeps its checks after the branch moves on, failed checks are jobs with logs behind a
//! redirect, branch names and abbreviations resolve like GitHub's `{ref}`; and comment edits
//! are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use atlasia_github_sim::{SimCheck, SimConfig, SimGithub};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAT: &str = "ghp_sim_branch_checks_token_0123456789";
const REPO: &str = "acme/widgets";

/// A minimal HTTP/1.1 client (one request per connection): status, headers, body.
async fn http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {PAT}\r\n\
         Accept: application/vnd.github+json\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, headers, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let (status, _, body) = http(base, "GET", path, None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let header = format!(
        "Authorization: Basic {}",
        base64_encode(&format!("x-access-token:{PAT}"))
    );
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env("GIT_CONFIG_VALUE_0", header)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn base64_encode(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn sim(root: &Path) -> SimGithub {
    let sim = SimGithub::start(SimConfig {
        app_id: "1".into(),
        installation_id: 1,
        public_key_pem: None,
        pat: Some(PAT.into()),
        token_ttl: Duration::from_secs(3600),
        git_root: root.join("git"),
    })
    .await
    .unwrap();
    sim.add_repo(REPO, "main").unwrap();
    sim
}

/// Commits a change to `file` in the working copy and pushes it to `branch`; returns the SHA.
fn commit_and_push(work: &Path, branch: &str, file: &str, content: &str) -> String {
    std::fs::write(work.join(file), content).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", content]);
    git(
        work,
        &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
    );
    git(work, &["rev-parse", "HEAD"])
}

/// `(name, status, conclusion, id)` of each run in a listing.
fn runs(v: &Value) -> Vec<(String, String, Option<String>, u64)> {
    v["check_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["conclusion"].as_str().map(str::to_owned),
                r["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_follow_the_heads_pushed_to_a_branch() {
    let root = tempfile::tempdir().unwrap();
    let sim = sim(root.path()).await;
    let base = sim.base();
    sim.set_branch_checks(
        REPO,
        "ai/issue-7",
        vec![
            vec![
                SimCheck::after(
                    "ci / test",
                    1,
                    "failure",
                    "FAIL: test_add\nAssertionError: -1 != 5\n",
                ),
                SimCheck::after("ci / lint", 0, "success", "lint ok\n"),
            ],
            vec![SimCheck::after("ci / test", 0, "success", "ok\n")],
        ],
    );
    let work = root.path().join("work");
    let out = std::process::Command::new("git")
        .args(["clone", "-q", &format!("{base}/{REPO}.git")])
        .arg(&work)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env(
            "GIT_CONFIG_VALUE_0",
            format!(
                "Authorization: Basic {}",
                base64_encode(&format!("x-access-token:{PAT}"))
            ),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let main_sha = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "-b", "ai/issue-7"]);

    // The first head: the failing list, advancing one state per listing.
    let first = commit_and_push(&work, "ai/issue-7", "a.txt", "one\n");
    let path = |r: &str| format!("/repos/{REPO}/commits/{r}/check-runs");
    let (s, v) = get_json(&base, &path(&first)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total_count"], 2, "{v}");
    assert_eq!(v["check_runs"][0]["head_sha"], first.as_str());
    assert_eq!(v["check_runs"][0]["app"]["slug"], "github-actions");
    let r = runs(&v);
    assert_eq!((r[0].1.as_str(), r[0].2.as_deref()), ("in_progress", None));
    assert_eq!(
        (r[1].1.as_str(), r[1].2.as_deref()),
        ("completed", Some("success"))
    );
    let (_, v) = get_json(&base, &path(&first)).await;
    let r = runs(&v);
    assert_eq!(
        (r[0].1.as_str(), r[0].2.as_deref()),
        ("completed", Some("failure"))
    );
    let failed_id = r[0].3;

    // A failed check is a job whose log sits behind a redirect.
    let (s, headers, _) = http(
        &base,
        "GET",
        &format!("/repos/{REPO}/actions/jobs/{failed_id}/logs"),
        None,
    )
    .await;
    assert_eq!(s, 302);
    let location = &headers.iter().find(|(k, _)| k == "location").unwrap().1;
    let blob = location.strip_prefix(&base).unwrap();
    let (s, _, log) = http(&base, "GET", blob, None).await;
    assert_eq!(s, 200);
    assert!(log.contains("AssertionError: -1 != 5"), "{log}");

    // The second head: the second list; the first head keeps its own (failed) checks.
    let second = commit_and_push(&work, "ai/issue-7", "a.txt", "two\n");
    let (_, v) = get_json(&base, &path(&second)).await;
    let r = runs(&v);
    assert_eq!(r.len(), 1, "{v}");
    assert_eq!(
        (r[0].1.as_str(), r[0].2.as_deref()),
        ("completed", Some("success"))
    );
    let (_, v) = get_json(&base, &path(&first)).await;
    assert_eq!(runs(&v)[0].2.as_deref(), Some("failure"), "{v}");

    // Two pushes before anyone looks: each still gets its own position; the last list repeats.
    let third = commit_and_push(&work, "ai/issue-7", "a.txt", "three\n");
    let fourth = commit_and_push(&work, "ai/issue-7", "a.txt", "four\n");
    let (_, v3) = get_json(&base, &path(&third)).await;
    let (_, v4) = get_json(&base, &path(&fourth)).await;
    assert_eq!(runs(&v3)[0].2.as_deref(), Some("success"));
    assert_eq!(runs(&v4)[0].2.as_deref(), Some("success"));
    assert_ne!(
        runs(&v3)[0].3,
        runs(&v4)[0].3,
        "each commit has its own runs"
    );

    // A branch name and an abbreviated SHA resolve to the commit, as on GitHub.
    let (_, by_name) = get_json(&base, &path("ai/issue-7")).await;
    assert_eq!(by_name["check_runs"][0]["head_sha"], fourth.as_str());
    assert_eq!(runs(&by_name)[0].3, runs(&v4)[0].3);
    let (_, by_abbrev) = get_json(&base, &path(&first[..10])).await;
    assert_eq!(by_abbrev["check_runs"][0]["head_sha"], first.as_str());

    // Commits never at the head of a scripted branch have no checks; unknown ones are a 422.
    let (s, v) = get_json(&base, &path(&main_sha)).await;
    assert_eq!((s, v["total_count"].as_u64()), (200, Some(0)), "{v}");
    let (s, v) = get_json(&base, &path(&"0".repeat(40))).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("No commit found"));

    assert_eq!(
        sim.branch_heads(REPO, "ai/issue-7"),
        vec![first.clone(), second, third, fourth.clone()]
    );
    assert_eq!(sim.branch_heads(REPO, "main"), vec![main_sha]);
    assert!(sim.branch_heads(REPO, "nope").is_empty());
    let seen = sim.check_runs_of(REPO, &first);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].2, 4, "four listings of the first head: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_on_disk_count_and_a_deleted_branch_keeps_its_checks() {
    let root = tempfile::tempdir().unwrap();
    let sim = sim(root.path()).await;
    let base = sim.base();
    sim.set_branch_checks(
        REPO,
        "topic",
        vec![
            vec![SimCheck::after("ci", 0, "failure", "broken\n")],
            vec![SimCheck::after("ci", 0, "success", "")],
        ],
    );
    // A plain clone and push over the filesystem, as a test seeds a repository.
    let work = root.path().join("w");
    let bare = sim.git_dir(REPO);
    let out = std::process::Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg(&bare)
        .arg(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = commit_and_push(&work, "topic", "f", "1\n");
    let second = commit_and_push(&work, "topic", "f", "2\n");
    // Deleted before anyone asked: the reflog went with it, so the listing of the first head
    // must come from what was seen. Ask about the second first, then delete, then the first.
    let path = |r: &str| format!("/repos/{REPO}/commits/{r}/check-runs");
    let (_, v) = get_json(&base, &path(&second)).await;
    assert_eq!(runs(&v)[0].2.as_deref(), Some("success"), "{v}");
    git(&work, &["push", "-q", "origin", "--delete", "topic"]);
    let (_, v) = get_json(&base, &path(&first)).await;
    assert_eq!(runs(&v)[0].2.as_deref(), Some("failure"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_edits_are_counted() {
    let root = tempfile::tempdir().unwrap();
    let sim = sim(root.path()).await;
    let base = sim.base();
    sim.add_issue(REPO, 3, "t", "b", &[]);
    let (s, _, body) = http(
        &base,
        "POST",
        &format!("/repos/{REPO}/issues/3/comments"),
        Some(r#"{"body":"first"}"#),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(sim.comments(REPO, 3)[0].edits, 0);
    for text in ["second", "third"] {
        let (s, _, body) = http(
            &base,
            "PATCH",
            &format!("/repos/{REPO}/issues/comments/{id}"),
            Some(&format!(r#"{{"body":"{text}"}}"#)),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    let c = &sim.comments(REPO, 3)[0];
    assert_eq!((c.body.as_str(), c.edits), ("third", 2));
    assert!(!c.updated_at.is_empty());
}
