//! When the server runs as root, commands run as an unprivileged uid, which must be able to
//! write the worktree and the build cache. The simplest correct way: those trees are owned by
//! that uid (re-owned before each command, since the forge's git and the Developer's tools write
//! as root in between). Root reads and writes them regardless; the forge's git passes
//! `safe.directory` for the worktree it works in, so the changed owner does not stop it. The
//! worktree's `.git` entry stays root's and is bound read-only in the sandbox.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The effective uid of this process (the owner of `/proc/self`), without `unsafe`.
pub fn effective_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The effective gid of this process (the group of `/proc/self`).
pub fn effective_gid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.gid())
}

/// Gives every entry under `root` (and `root` itself) to `uid:gid`, symlinks included (never
/// followed); a top-level `.git` is left alone. Entries that vanish meanwhile are skipped.
pub fn give_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.uid() != uid || meta.gid() != gid {
            match std::os::unix::fs::lchown(&path, Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                if path == root && entry.file_name() == ".git" {
                    continue;
                }
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}
