//! The writing tools: `write_file` (create or overwrite) and `edit_file` (replace exactly one
//! occurrence). Both pass the write policy first — containment, the allow-list, protected
//! workflows (which escalate to a human), the size limit and secrets — so a refused write never
//! touches the tree.

use super::{EditArgs, Executed, WRITE, Workdir, WriteArgs, done, policy_refusal, refused};
use crate::policy::PolicyError;
use std::path::Path;

async fn write_resolved(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::write(path, content).await
}

pub(super) async fn write(wd: &Workdir, a: WriteArgs) -> Executed {
    let target = a.path.clone();
    let resolved = match wd
        .policy
        .check_write(&wd.root, &a.path, a.content.as_bytes())
    {
        Ok(p) => p,
        Err(e) => return policy_refusal(target, &e),
    };
    let existed = tokio::fs::try_exists(&resolved).await.unwrap_or(false);
    match write_resolved(&resolved, a.content.as_bytes()).await {
        Ok(()) => {
            let verb = if existed { "overwrote" } else { "created" };
            let n = a.content.len();
            done(
                target,
                format!("{verb} {} ({n} bytes)", a.path),
                format!("{verb} {n} bytes"),
            )
        }
        Err(e) => refused(target, format!("cannot write {}: {e}", a.path)),
    }
}

pub(super) async fn edit(wd: &Workdir, a: EditArgs) -> Executed {
    let target = a.path.clone();
    if a.old_text.is_empty() {
        return refused(
            target,
            format!("old_text is empty; use {WRITE} to create or overwrite a file"),
        );
    }
    // The policy on the path and on the new text first: a protected path escalates whether or
    // not the file exists, and a secret in `new_text` is refused before anything is read.
    let resolved = match wd
        .policy
        .check_write(&wd.root, &a.path, a.new_text.as_bytes())
    {
        Ok(p) => p,
        Err(e) => return policy_refusal(target, &e),
    };
    let current = match tokio::fs::read(&resolved).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refused(
                target,
                format!("{} does not exist; use {WRITE} to create it", a.path),
            );
        }
        Err(e) => return refused(target, format!("cannot read {}: {e}", a.path)),
    };
    let Ok(current) = String::from_utf8(current) else {
        return refused(target, format!("{} is not UTF-8 text", a.path));
    };
    let count = current.matches(a.old_text.as_str()).count();
    if count != 1 {
        let why = if count == 0 {
            "old_text was not found (it occurred 0 times); read the file and copy the exact text, \
             including whitespace"
                .to_owned()
        } else {
            format!(
                "old_text occurred {count} times; it must occur exactly once — include more \
                 surrounding lines to make it unique"
            )
        };
        return refused(target, format!("{}: {why}", a.path));
    }
    let updated = current.replacen(a.old_text.as_str(), &a.new_text, 1);
    let size = updated.len() as u64;
    if size > wd.policy.max_file_bytes {
        let e = PolicyError::TooLarge {
            path: a.path.clone(),
            size,
            max: wd.policy.max_file_bytes,
        };
        return policy_refusal(target, &e);
    }
    match tokio::fs::write(&resolved, updated.as_bytes()).await {
        Ok(()) => {
            let (old_lines, new_lines) = (a.old_text.lines().count(), a.new_text.lines().count());
            done(
                target,
                format!(
                    "edited {}: replaced {old_lines} line(s) with {new_lines} line(s)",
                    a.path
                ),
                format!("replaced {old_lines} with {new_lines} lines"),
            )
        }
        Err(e) => refused(target, format!("cannot write {}: {e}", a.path)),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::super::tests::{exec, ok_text, refused_text, repo};
    use super::super::{EDIT, ToolResult};
    use super::*;
    use crate::policy::PathPolicy;
    use serde_json::json;

    #[tokio::test]
    async fn write_file_creates_parents_and_overwrites() {
        let (_d, wd) = repo();
        let r = ok_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "new/dir/file.txt", "content": "one\n"}),
            )
            .await,
        );
        assert!(r.starts_with("created"), "{r}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("new/dir/file.txt")).unwrap(),
            "one\n"
        );
        let r = ok_text(exec(&wd, WRITE, json!({"path": "README.md", "content": "two"})).await);
        assert!(r.starts_with("overwrote"), "{r}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("README.md")).unwrap(),
            "two"
        );
    }

    #[tokio::test]
    async fn edit_file_replaces_exactly_one_occurrence() {
        let (_d, wd) = repo();
        let ok = exec(
            &wd,
            EDIT,
            json!({"path": "src/lib.py", "old_text": "def add(a, b):\n    return a - b",
                   "new_text": "def add(a, b):\n    return a + b"}),
        )
        .await;
        ok_text(ok);
        let now = std::fs::read_to_string(wd.root.join("src/lib.py")).unwrap();
        assert!(now.contains("return a + b"));
        assert!(now.contains("def sub(a, b):\n    return a - b"), "{now}");

        let zero = refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "src/lib.py", "old_text": "not there", "new_text": "x"}),
            )
            .await,
        );
        assert!(zero.contains("0 times"), "{zero}");
        std::fs::write(wd.root.join("two.txt"), "same\nsame\n").unwrap();
        let two = refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "two.txt", "old_text": "same", "new_text": "x"}),
            )
            .await,
        );
        assert!(two.contains("2 times"), "{two}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("two.txt")).unwrap(),
            "same\nsame\n",
            "unchanged"
        );
        let missing = refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "nope.txt", "old_text": "a", "new_text": "b"}),
            )
            .await,
        );
        assert!(missing.contains("does not exist"), "{missing}");
        refused_text(
            exec(
                &wd,
                EDIT,
                json!({"path": "two.txt", "old_text": "", "new_text": "b"}),
            )
            .await,
        );
    }

    #[tokio::test]
    async fn writes_outside_the_tree_are_refused() {
        let (_d, wd) = repo();
        let outside = tempfile::tempdir().unwrap();
        let abs = outside.path().join("x.txt");
        for path in [
            abs.to_string_lossy().into_owned(),
            "../x.txt".into(),
            "a/../../x.txt".into(),
            ".git/hooks/pre-commit".into(),
        ] {
            let r = exec(&wd, WRITE, json!({"path": path, "content": "x"})).await;
            assert!(matches!(r, ToolResult::Refused(_)), "{path}: {r:?}");
            let r = exec(
                &wd,
                EDIT,
                json!({"path": path, "old_text": "a", "new_text": "x"}),
            )
            .await;
            assert!(matches!(r, ToolResult::Refused(_)), "{path}: {r:?}");
        }
        assert!(!abs.exists());
        // A symlink planted in the repository that points outside.
        std::os::unix::fs::symlink(outside.path(), wd.root.join("escape")).unwrap();
        std::fs::write(outside.path().join("victim.txt"), "original").unwrap();
        let r = exec(
            &wd,
            WRITE,
            json!({"path": "escape/victim.txt", "content": "pwned"}),
        )
        .await;
        assert!(refused_text(r).contains("symlink"));
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "escape/victim.txt", "old_text": "original", "new_text": "pwned"}),
        )
        .await;
        assert!(refused_text(r).contains("symlink"));
        let r = exec(
            &wd,
            WRITE,
            json!({"path": "escape/new.txt", "content": "x"}),
        )
        .await;
        refused_text(r);
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim.txt")).unwrap(),
            "original"
        );
        assert!(!outside.path().join("new.txt").exists());
        // A file symlink too.
        std::os::unix::fs::symlink(outside.path().join("victim.txt"), wd.root.join("f")).unwrap();
        refused_text(exec(&wd, WRITE, json!({"path": "f", "content": "pwned"})).await);
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim.txt")).unwrap(),
            "original"
        );
    }

    #[tokio::test]
    async fn protected_workflows_escalate() {
        let (_d, wd) = repo();
        let r = exec(
            &wd,
            WRITE,
            json!({"path": ".github/workflows/x.yml", "content": "on: push"}),
        )
        .await;
        assert!(
            matches!(&r, ToolResult::Escalate(m) if m.contains("protected")),
            "{r:?}"
        );
        assert!(!wd.root.join(".github/workflows/x.yml").exists());
        // Edits too, even of a file that does not exist.
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "./.github/workflows/ci.yml", "old_text": "a", "new_text": "b"}),
        )
        .await;
        assert!(matches!(r, ToolResult::Escalate(_)), "{r:?}");
        // An in-tree symlink into the protected directory does not smuggle the write.
        std::fs::create_dir_all(wd.root.join(".github/workflows")).unwrap();
        std::os::unix::fs::symlink(wd.root.join(".github/workflows"), wd.root.join("wf")).unwrap();
        let r = exec(
            &wd,
            WRITE,
            json!({"path": "wf/y.yml", "content": "on: push"}),
        )
        .await;
        assert!(matches!(r, ToolResult::Escalate(_)), "{r:?}");
        assert!(!wd.root.join(".github/workflows/y.yml").exists());
    }

    #[tokio::test]
    async fn secrets_are_refused() {
        let (_d, wd) = repo();
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";
        let r = refused_text(exec(&wd, WRITE, json!({"path": "key.pem", "content": pem})).await);
        assert!(r.contains("secret"), "{r}");
        assert!(!wd.root.join("key.pem").exists());
        let token = format!("TOKEN = \"ghp_{}\"\n", "a1B2".repeat(9));
        refused_text(exec(&wd, WRITE, json!({"path": "conf.py", "content": token})).await);
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "README.md", "old_text": "hello world",
                   "new_text": format!("key: AKIA{}", "ABCDEFGHIJ234567")}),
        )
        .await;
        refused_text(r);
        assert!(
            std::fs::read_to_string(wd.root.join("README.md"))
                .unwrap()
                .contains("hello world")
        );
    }

    #[tokio::test]
    async fn allowlist_prefixes_and_size_limit() {
        let (_d, mut wd) = repo();
        wd.policy = PathPolicy::from_values(Some("src/, docs"), None);
        ok_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "src/new.py", "content": "x = 1\n"}),
            )
            .await,
        );
        ok_text(exec(&wd, WRITE, json!({"path": "docs/a.md", "content": "a"})).await);
        let r = refused_text(exec(&wd, WRITE, json!({"path": "setup.py", "content": "x"})).await);
        assert!(r.contains("outside the allowed prefixes"), "{r}");
        refused_text(exec(&wd, WRITE, json!({"path": "srcfoo/a.py", "content": "x"})).await);
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "README.md", "old_text": "hello", "new_text": "bye"}),
        )
        .await;
        refused_text(r);
        // Protection still wins inside an allow-listed tree.
        wd.policy = PathPolicy::from_values(Some(".github"), None);
        let r = exec(
            &wd,
            WRITE,
            json!({"path": ".github/workflows/a.yml", "content": "x"}),
        )
        .await;
        assert!(matches!(r, ToolResult::Escalate(_)), "{r:?}");

        wd.policy = PathPolicy {
            max_file_bytes: 16,
            ..PathPolicy::default()
        };
        let r = refused_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "big.txt", "content": "x".repeat(17)}),
            )
            .await,
        );
        assert!(r.contains("limit"), "{r}");
        ok_text(
            exec(
                &wd,
                WRITE,
                json!({"path": "ok.txt", "content": "abcdefghijklmnop"}),
            )
            .await,
        );
        // An edit that grows the file past the limit.
        let r = exec(
            &wd,
            EDIT,
            json!({"path": "ok.txt", "old_text": "abcd", "new_text": "abcdefgh"}),
        )
        .await;
        let why = refused_text(r);
        assert!(why.contains("limit"), "{why}");
        assert_eq!(
            std::fs::read_to_string(wd.root.join("ok.txt")).unwrap(),
            "abcdefghijklmnop"
        );
    }
}
