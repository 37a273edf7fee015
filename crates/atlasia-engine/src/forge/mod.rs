//! Forges: where a bolt's branch lives and where its pull request is opened. The local forge
//! (embedded default) works on a local git path with one worktree per bolt; the GitHub forge
//! keeps a clone per repository and pushes the bolt's branch, opening the pull request there.

pub mod access;
pub mod github;
pub mod local;

pub use access::{ImportLimits, RepoAccess, RepoRefused};
pub use local::{BOT_EMAIL, BOT_NAME, ForgeError, LocalForge, Workspace, branch_name};
