//! The write/read path policy against a real temporary tree with symlinks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::symlink;

use atlasia_engine::policy::{PathPolicy, PolicyError, SecretKind, find_secret};

/// A repository-like tree plus a directory outside it, with the symlinks the tests need.
fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join(".github/workflows")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("src/lib.rs"), "fn main() {}").unwrap();
    std::fs::write(outside.join("passwd"), "x").unwrap();
    symlink(outside.join("passwd"), root.join("src/evil.txt")).unwrap();
    symlink(&outside, root.join("outdir")).unwrap();
    symlink(root.join("src"), root.join("src_link")).unwrap();
    symlink(root.join(".github/workflows"), root.join("wf")).unwrap();
    symlink(tmp.path().join("nowhere"), root.join("dangling")).unwrap();
    (tmp, root)
}

fn kind(result: &Result<std::path::PathBuf, PolicyError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(PolicyError::Absolute { .. }) => "absolute",
        Err(PolicyError::ParentTraversal { .. }) => "traversal",
        Err(PolicyError::OutsideAllowlist { .. }) => "allowlist",
        Err(PolicyError::Protected { .. }) => "protected",
        Err(PolicyError::SymlinkEscape { .. }) => "symlink",
        Err(PolicyError::TooLarge { .. }) => "too_large",
        Err(PolicyError::Secret { .. }) => "secret",
        Err(PolicyError::InvalidPath { .. }) => "invalid",
    }
}

#[test]
fn write_paths_table() {
    let (_tmp, root) = tree();
    let policy = PathPolicy::default();
    let cases: &[(&str, &str)] = &[
        ("src/lib.rs", "ok"),
        ("src/new/deep/file.rs", "ok"),
        ("./README.md", "ok"),
        ("src_link/inner.rs", "ok"),
        ("/etc/passwd", "absolute"),
        ("~/x", "absolute"),
        ("../escape.txt", "traversal"),
        ("src/../../escape.txt", "traversal"),
        ("src/evil.txt", "symlink"),
        ("outdir/file.txt", "symlink"),
        ("outdir/new/deeper.txt", "symlink"),
        ("dangling", "symlink"),
        (".github/workflows/ci.yml", "protected"),
        ("wf/ci.yml", "protected"),
        (".github/CODEOWNERS", "ok"),
        ("", "invalid"),
        (".", "invalid"),
        (".git/config", "invalid"),
        ("src", "invalid"),
        ("a\\..\\b", "invalid"),
    ];
    for (rel, expected) in cases {
        let result = policy.check_write(&root, rel, b"hello");
        assert_eq!(kind(&result), *expected, "{rel}: {result:?}");
        if let Ok(path) = result {
            assert!(
                path.starts_with(root.canonicalize().unwrap()),
                "{rel} -> {path:?}"
            );
        }
    }
}

#[test]
fn protected_is_an_escalation() {
    let (_tmp, root) = tree();
    let err = PathPolicy::default()
        .check_write(&root, ".github/workflows/deploy.yml", b"on: push")
        .unwrap_err();
    assert!(err.is_escalation());
    let err = PathPolicy::default()
        .check_write(&root, "../x", b"")
        .unwrap_err();
    assert!(!err.is_escalation());
}

#[test]
fn allowlist_and_custom_protection_from_values() {
    let (_tmp, root) = tree();
    let policy = PathPolicy::from_values(Some("src/, docs"), Some("deploy/, .github/workflows/"));
    assert_eq!(policy.allowlist, vec!["src/", "docs"]);
    let cases: &[(&str, &str)] = &[
        ("src/a.rs", "ok"),
        ("docs/guide.md", "ok"),
        ("docsx/guide.md", "allowlist"),
        ("README.md", "allowlist"),
        ("deploy/k8s.yml", "protected"),
        (".github/workflows/ci.yml", "protected"),
    ];
    for (rel, expected) in cases {
        let result = policy.check_write(&root, rel, b"x");
        assert_eq!(kind(&result), *expected, "{rel}: {result:?}");
    }
    // An explicitly empty WORKFLOW_PROTECT turns protection off.
    let open = PathPolicy::from_values(None, Some(""));
    assert!(
        open.check_write(&root, ".github/workflows/ci.yml", b"x")
            .is_ok()
    );
}

#[test]
fn size_limit() {
    let (_tmp, root) = tree();
    let policy = PathPolicy {
        max_file_bytes: 10,
        ..PathPolicy::default()
    };
    assert!(policy.check_write(&root, "src/a.rs", &[b'a'; 10]).is_ok());
    let err = policy
        .check_write(&root, "src/a.rs", &[b'a'; 11])
        .unwrap_err();
    assert_eq!(kind(&Err(err)), "too_large");
    // The default is 1 MiB.
    let big = vec![b'a'; 1024 * 1024 + 1];
    assert_eq!(
        kind(&PathPolicy::default().check_write(&root, "src/a.rs", &big)),
        "too_large"
    );
}

#[test]
fn secrets_table() {
    let cases: &[(String, Option<SecretKind>)] = &[
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE...".into(),
            Some(SecretKind::PemPrivateKey),
        ),
        (
            "-----BEGIN PRIVATE KEY-----\n".into(),
            Some(SecretKind::PemPrivateKey),
        ),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----".into(),
            Some(SecretKind::PemPrivateKey),
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl".into(),
            Some(SecretKind::OpenSshPrivateKey),
        ),
        ("-----BEGIN PUBLIC KEY-----\n".into(), None),
        ("-----BEGIN CERTIFICATE-----\n".into(), None),
        (
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE".into(),
            Some(SecretKind::AwsAccessKey),
        ),
        ("AKIA_NOT_A_KEY".into(), None),
        (
            format!("token: ghp_{}", "a1".repeat(18)),
            Some(SecretKind::GitHubToken),
        ),
        (
            format!("gho_{}", "B".repeat(36)),
            Some(SecretKind::GitHubToken),
        ),
        (
            format!("ghs_{}", "c".repeat(36)),
            Some(SecretKind::GitHubToken),
        ),
        (
            format!("github_pat_{}", "A1_".repeat(20)),
            Some(SecretKind::GitHubToken),
        ),
        ("ghp_short".into(), None),
        (
            "xoxb-123456789012-abcdefghij".into(),
            Some(SecretKind::SlackToken),
        ),
        ("xoxp-1234567890-x".into(), Some(SecretKind::SlackToken)),
        ("xoxz-1234567890123".into(), None),
        (
            format!("OPENAI_API_KEY=sk-{}", "a".repeat(48)),
            Some(SecretKind::OpenAiKey),
        ),
        (
            format!("sk-proj-{}", "Ab9_".repeat(10)),
            Some(SecretKind::OpenAiKey),
        ),
        (
            format!("key = \"sk-ant-api03-{}\"", "x".repeat(40)),
            Some(SecretKind::AnthropicKey),
        ),
        ("sk-short".into(), None),
        (format!("task-{}", "a".repeat(40)), None),
        ("fn main() { println!(\"hello\"); }".into(), None),
    ];
    for (content, expected) in cases {
        assert_eq!(find_secret(content.as_bytes()), *expected, "{content}");
    }
}

#[test]
fn secret_content_refused_on_write() {
    let (_tmp, root) = tree();
    let content = format!("const KEY: &str = \"sk-ant-{}\";", "z".repeat(30));
    let err = PathPolicy::default()
        .check_write(&root, "src/k.rs", content.as_bytes())
        .unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Secret {
                kind: SecretKind::AnthropicKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Anthropic"));
}

#[test]
fn read_paths_table() {
    let (_tmp, root) = tree();
    let policy = PathPolicy::from_values(Some("docs/"), None);
    let cases: &[(&str, &str)] = &[
        ("src/lib.rs", "ok"),
        (".github/workflows/ci.yml", "ok"),
        ("src_link/lib.rs", "ok"),
        ("src/evil.txt", "symlink"),
        ("outdir/passwd", "symlink"),
        ("../outside/passwd", "traversal"),
        ("/etc/passwd", "absolute"),
        (".git/config", "invalid"),
    ];
    for (rel, expected) in cases {
        let result = policy.check_read(&root, rel);
        assert_eq!(kind(&result), *expected, "{rel}: {result:?}");
    }
}

#[test]
fn a_write_holding_a_secret_of_this_server_is_refused() {
    let (_tmp, root) = tree();
    let secret = "whsec-0123456789";
    let secrets = atlasia_core::Redactor::new([("GITHUB_WEBHOOK_SECRET", secret)]).unwrap();
    let policy = PathPolicy::default().with_known_secrets(secrets);
    let reversed: String = secret.chars().rev().collect();
    for content in [format!("x = '{secret}'"), reversed] {
        let r = policy.check_write(&root, "src/dump.txt", content.as_bytes());
        assert!(
            matches!(
                r,
                Err(PolicyError::Secret {
                    kind: SecretKind::ServerSecret,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert_eq!(
        kind(&policy.check_write(&root, "src/dump.txt", b"ordinary text")),
        "ok"
    );
    // Without known secrets the same content is an ordinary write.
    let plain = PathPolicy::default().check_write(&root, "src/dump.txt", secret.as_bytes());
    assert_eq!(kind(&plain), "ok");
}
