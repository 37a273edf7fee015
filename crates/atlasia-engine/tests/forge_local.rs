//! The local forge against real temporary git repositories: the user's checkout is never
//! touched, worktrees are reused across loop-backs, plain folders are imported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use atlasia_engine::forge::{
    BOT_EMAIL, BOT_NAME, ForgeError, ImportLimits, LocalForge, RepoAccess, RepoRefused, branch_name,
};

/// Runs git as the "user" would, with an identity of its own and no global config.
fn user_git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Some User",
            "-c",
            "user.email=user@example.com",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=trunk",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A user repository on branch `trunk` with one commit and uncommitted changes (a modified
/// tracked file, a staged new file and an untracked file).
fn user_repo(root: &Path) -> std::path::PathBuf {
    let repo = root.join("user-repo");
    std::fs::create_dir_all(&repo).unwrap();
    user_git(&repo, &["init", "--quiet"]);
    std::fs::write(repo.join("README.md"), "# Demo\n").unwrap();
    std::fs::write(repo.join("lib.txt"), "one\n").unwrap();
    user_git(&repo, &["add", "."]);
    user_git(&repo, &["commit", "--quiet", "-m", "initial"]);
    std::fs::write(repo.join("README.md"), "# Demo\nwork in progress\n").unwrap();
    std::fs::write(repo.join("staged.txt"), "staged\n").unwrap();
    user_git(&repo, &["add", "staged.txt"]);
    std::fs::write(repo.join("untracked.txt"), "mine\n").unwrap();
    repo
}

/// Everything about the user's checkout the forge must never change.
fn user_state(repo: &Path) -> (String, String, String, String) {
    (
        user_git(repo, &["status", "--porcelain"]),
        user_git(repo, &["rev-parse", "HEAD"]),
        user_git(repo, &["symbolic-ref", "HEAD"]),
        std::fs::read_to_string(repo.join("README.md")).unwrap(),
    )
}

#[test]
fn prepare_commit_diff_without_touching_the_user_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = user_repo(tmp.path());
    let before = user_state(&repo);
    let forge = LocalForge::new(tmp.path().join("data"));

    let ws = forge
        .prepare(&repo, "0190abcd-0000-7000-8000-000000000001", "ai/issue-7")
        .unwrap();
    assert_eq!(ws.branch, "ai/issue-7");
    assert_eq!(ws.base_branch_name, "trunk");
    assert_eq!(ws.base_commit, before.1);
    assert!(
        ws.path
            .starts_with(tmp.path().join("data/worktrees").canonicalize().unwrap())
    );
    // The worktree has the committed content, not the user's uncommitted changes.
    assert_eq!(
        std::fs::read_to_string(ws.path.join("README.md")).unwrap(),
        "# Demo\n"
    );
    assert!(!ws.path.join("untracked.txt").exists());
    assert!(!ws.path.join("staged.txt").exists());
    assert_eq!(user_state(&repo), before);

    // Nothing changed yet: no commit.
    assert_eq!(forge.commit(&ws, "Developer: nothing").unwrap(), None);

    std::fs::write(ws.path.join("lib.txt"), "one\ntwo\n").unwrap();
    std::fs::write(ws.path.join("new.rs"), "fn f() {}\n").unwrap();
    let sha = forge
        .commit(&ws, "Developer iteration 1: add f")
        .unwrap()
        .unwrap();
    assert_eq!(sha.len(), 40);
    let author = user_git(&ws.path, &["log", "-1", "--format=%an <%ae>|%cn <%ce>|%s"]);
    assert_eq!(
        author,
        format!("{BOT_NAME} <{BOT_EMAIL}>|{BOT_NAME} <{BOT_EMAIL}>|Developer iteration 1: add f")
    );
    // The branch exists in the user's repository; their checkout is unchanged.
    assert_eq!(
        user_git(&repo, &["rev-parse", "refs/heads/ai/issue-7"]),
        sha
    );
    assert_eq!(user_state(&repo), before);

    let stat = forge.diff_stat(&ws).unwrap();
    assert!(stat.contains("lib.txt"), "{stat}");
    assert!(stat.contains("new.rs"), "{stat}");
    assert!(stat.contains("2 files changed"), "{stat}");
    let diff = forge.unified_diff(&ws).unwrap();
    assert!(diff.contains("diff --git a/lib.txt b/lib.txt"), "{diff}");
    assert!(diff.contains("+two"), "{diff}");
    assert!(diff.contains("+fn f() {}"), "{diff}");

    forge.remove(&ws).unwrap();
    assert!(!ws.path.exists());
    assert!(!user_git(&repo, &["worktree", "list"]).contains("worktrees"));
    // The branch outlives the worktree: the pull request points at it.
    assert_eq!(
        user_git(&repo, &["rev-parse", "refs/heads/ai/issue-7"]),
        sha
    );
    assert_eq!(user_state(&repo), before);
}

#[test]
fn user_hooks_do_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = user_repo(tmp.path());
    let marker = tmp.path().join("hook-ran");
    let hook = repo.join(".git/hooks/pre-commit");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let forge = LocalForge::new(tmp.path().join("data"));
    let ws = forge
        .prepare(&repo, "run-hooks", "ai/run-0000beef")
        .unwrap();
    std::fs::write(ws.path.join("x.txt"), "x").unwrap();
    assert!(
        forge
            .commit(&ws, "Developer iteration 1")
            .unwrap()
            .is_some()
    );
    assert!(!marker.exists());
}

#[test]
fn prepare_again_reuses_worktree_and_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = user_repo(tmp.path());
    let forge = LocalForge::new(tmp.path().join("data"));
    let run_id = "0190abcd-0000-7000-8000-000000000002";
    let ws = forge.prepare(&repo, run_id, "ai/issue-8").unwrap();
    std::fs::write(ws.path.join("a.txt"), "a").unwrap();
    let first = forge.commit(&ws, "Developer iteration 1").unwrap().unwrap();
    // Uncommitted work in progress survives a loop-back.
    std::fs::write(ws.path.join("wip.txt"), "wip").unwrap();

    // The user moves on meanwhile; the bolt's base must not move with them.
    std::fs::write(repo.join("later.txt"), "later").unwrap();
    user_git(&repo, &["add", "later.txt"]);
    user_git(&repo, &["commit", "--quiet", "-m", "user keeps working"]);

    let again = LocalForge::new(tmp.path().join("data"))
        .prepare(&repo, run_id, "ai/issue-8")
        .unwrap();
    assert_eq!(again, ws);
    assert!(again.path.join("wip.txt").exists());
    std::fs::write(again.path.join("b.txt"), "b").unwrap();
    let second = forge
        .commit(&again, "Developer iteration 2")
        .unwrap()
        .unwrap();
    assert_ne!(first, second);
    let log = user_git(
        &again.path,
        &[
            "log",
            "--format=%s",
            &format!("{}..HEAD", again.base_commit),
        ],
    );
    assert_eq!(log, "Developer iteration 2\nDeveloper iteration 1");
    assert!(!forge.diff_stat(&again).unwrap().contains("later.txt"));

    // After the worktree is removed (e.g. a resume on another machine state), preparing again
    // checks the existing branch out with its commits and the same base.
    forge.remove(&again).unwrap();
    let resumed = forge.prepare(&repo, run_id, "ai/issue-8").unwrap();
    assert_eq!(user_git(&resumed.path, &["rev-parse", "HEAD"]), second);
    assert_eq!(resumed.base_commit, ws.base_commit);
    assert!(resumed.path.join("b.txt").exists());
}

#[test]
fn two_runs_get_separate_worktrees_and_branches() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = user_repo(tmp.path());
    let forge = LocalForge::new(tmp.path().join("data"));
    let a_id = "0190aaaa-0000-7000-8000-000000000001";
    let b_id = "0190bbbb-0000-7000-8000-000000000002";
    let a = forge
        .prepare(&repo, a_id, &branch_name(None, a_id))
        .unwrap();
    let b = forge
        .prepare(&repo, b_id, &branch_name(None, b_id))
        .unwrap();
    assert_ne!(a.path, b.path);
    assert_eq!(a.branch, "ai/run-00000001");
    assert_eq!(b.branch, "ai/run-00000002");
    std::fs::write(a.path.join("only-a.txt"), "a").unwrap();
    forge.commit(&a, "a").unwrap().unwrap();
    assert!(!b.path.join("only-a.txt").exists());
    assert!(forge.diff_stat(&b).unwrap().is_empty());
    let branches = user_git(&repo, &["branch", "--list", "ai/*"]);
    assert!(
        branches.contains("ai/run-00000001") && branches.contains("ai/run-00000002"),
        "{branches}"
    );
}

#[test]
fn plain_folder_is_imported_into_a_scratch_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("plain");
    std::fs::create_dir_all(folder.join("src")).unwrap();
    std::fs::create_dir_all(folder.join("target/debug")).unwrap();
    std::fs::create_dir_all(folder.join("node_modules/x")).unwrap();
    std::fs::create_dir_all(folder.join("src/__pycache__")).unwrap();
    std::fs::write(folder.join("src/app.py"), "print('hi')\n").unwrap();
    std::fs::write(folder.join("target/debug/big.bin"), "bin").unwrap();
    std::fs::write(folder.join("node_modules/x/i.js"), "js").unwrap();
    std::fs::write(folder.join("src/__pycache__/app.pyc"), "pyc").unwrap();
    let forge = LocalForge::new(tmp.path().join("data"));

    let ws = forge.prepare(&folder, "run-plain-1", "ai/issue-1").unwrap();
    assert!(
        ws.repo
            .starts_with(tmp.path().join("data/imports").canonicalize().unwrap())
    );
    assert_eq!(ws.source, folder.canonicalize().unwrap());
    assert_eq!(ws.base_branch_name, "main");
    assert!(ws.path.join("src/app.py").exists());
    assert!(!ws.path.join("target").exists());
    assert!(!ws.path.join("node_modules").exists());
    assert!(!ws.path.join("src/__pycache__").exists());
    let author = user_git(&ws.repo, &["log", "-1", "--format=%an <%ae>", "main"]);
    assert_eq!(author, format!("{BOT_NAME} <{BOT_EMAIL}>"));
    // The plain folder itself gains no repository.
    assert!(!folder.join(".git").exists());

    std::fs::write(ws.path.join("src/app.py"), "print('hello')\n").unwrap();
    forge.commit(&ws, "Developer iteration 1").unwrap().unwrap();
    assert!(forge.unified_diff(&ws).unwrap().contains("+print('hello')"));
    assert_eq!(
        std::fs::read_to_string(folder.join("src/app.py")).unwrap(),
        "print('hi')\n"
    );

    // A later bolt on the same folder reuses the import and sees the folder's current content.
    std::fs::write(folder.join("src/app.py"), "print('edited')\n").unwrap();
    let ws2 = forge.prepare(&folder, "run-plain-2", "ai/issue-2").unwrap();
    assert_eq!(ws2.repo, ws.repo);
    assert_eq!(
        std::fs::read_to_string(ws2.path.join("src/app.py")).unwrap(),
        "print('edited')\n"
    );
}

#[test]
fn folder_inside_another_repository_is_imported_not_branched() {
    // The bundled examples live inside a clone of this project: a bolt on them must not create
    // branches or worktrees in the project's own repository.
    let tmp = tempfile::tempdir().unwrap();
    let outer = user_repo(tmp.path());
    let example = outer.join("examples/demo");
    std::fs::create_dir_all(&example).unwrap();
    std::fs::write(example.join("main.rs"), "fn main() {}\n").unwrap();
    let before = user_state(&outer);
    let forge = LocalForge::new(tmp.path().join("data"));
    let ws = forge
        .prepare(&example, "run-example", "ai/issue-3")
        .unwrap();
    assert!(
        ws.repo
            .starts_with(tmp.path().join("data/imports").canonicalize().unwrap())
    );
    assert!(ws.path.join("main.rs").exists());
    assert_eq!(user_git(&outer, &["branch", "--list", "ai/*"]), "");
    assert_eq!(user_state(&outer).1, before.1);
}

#[test]
fn invalid_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = user_repo(tmp.path());
    let forge = LocalForge::new(tmp.path().join("data"));
    assert!(forge.prepare(&repo, "../escape", "ai/issue-1").is_err());
    assert!(forge.prepare(&repo, "ok-run", "bad..branch").is_err());
    assert!(forge.prepare(&repo, "ok-run", "-x").is_err());
    assert!(
        forge
            .prepare(&tmp.path().join("missing"), "ok-run", "ai/issue-1")
            .is_err()
    );

    let empty = tmp.path().join("empty-repo");
    std::fs::create_dir_all(&empty).unwrap();
    user_git(&empty, &["init", "--quiet"]);
    let err = forge.prepare(&empty, "ok-run", "ai/issue-1").unwrap_err();
    assert!(err.to_string().contains("no commits"), "{err}");
}

#[test]
fn imports_are_capped_before_anything_is_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("plain");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    for i in 0..5 {
        std::fs::write(folder.join(format!("sub/f{i}.txt")), "0123456789").unwrap();
    }
    let capped = |max_files, max_bytes| {
        LocalForge::with_access(
            tmp.path().join("data"),
            RepoAccess {
                roots: None,
                import: ImportLimits {
                    max_files,
                    max_bytes,
                },
            },
        )
    };
    for (forge, what) in [
        (capped(4, 1_000), "more than 4 files"),
        (capped(100, 49), "more than 49 bytes"),
    ] {
        let err = forge.prepare(&folder, "run-big", "ai/issue-1").unwrap_err();
        assert!(matches!(err, ForgeError::ImportTooLarge { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(
            err.to_string().contains("storage.import_max_files"),
            "{err}"
        );
        assert!(!tmp.path().join("data/imports").exists(), "nothing copied");
    }
    // At the caps exactly: imported.
    let ws = capped(5, 50)
        .prepare(&folder, "run-fits", "ai/issue-1")
        .unwrap();
    assert!(ws.path.join("sub/f4.txt").exists());
}

#[test]
fn imports_keep_no_way_out_of_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("plain");
    std::fs::create_dir_all(folder.join("src")).unwrap();
    std::fs::write(folder.join("src/app.py"), "print('hi')\n").unwrap();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, folder.join(name)).unwrap();
    };
    link("/etc/passwd", "abs-out");
    link("../../../../etc", "src/rel-out");
    link("src/app.py", "inside");
    link("../app.py", "src/up-inside");
    let fifo = folder.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let forge = LocalForge::new(tmp.path().join("data"));
    let ws = forge.prepare(&folder, "run-links", "ai/issue-1").unwrap();
    let present = |name: &str| std::fs::symlink_metadata(ws.path.join(name)).is_ok();
    assert!(!present("abs-out"), "absolute symlink out of the folder");
    assert!(!present("src/rel-out"), "relative symlink climbing out");
    assert!(present("inside"));
    assert!(!present("pipe"), "special files are never imported");
    // `src/up-inside` → `../app.py` is `app.py` at the top: inside (even if dangling).
    assert!(present("src/up-inside"));
}

#[test]
fn the_data_directory_is_never_a_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("imports")).unwrap();
    let forge = LocalForge::new(&data);
    for repo in [data.clone(), data.join("imports"), tmp.path().to_path_buf()] {
        let err = forge.prepare(&repo, "run-data", "ai/issue-1").unwrap_err();
        assert!(
            matches!(err, ForgeError::Refused(RepoRefused::DataDir { .. })),
            "{}: {err}",
            repo.display()
        );
    }
    // A forge limited to roots refuses everything else, however it was stored.
    let root = tmp.path().join("repos");
    std::fs::create_dir_all(&root).unwrap();
    let limited = LocalForge::with_access(
        &data,
        RepoAccess::under(std::slice::from_ref(&root), ImportLimits::default()),
    );
    let repo = user_repo(tmp.path());
    let before = user_state(&repo);
    let err = limited.prepare(&repo, "run-out", "ai/issue-1").unwrap_err();
    assert!(err.to_string().contains("server.repo_roots"), "{err}");
    assert_eq!(user_state(&repo), before);
    assert_eq!(user_git(&repo, &["branch", "--list", "ai/*"]), "");
}
