//! Forges: where a bolt's branch lives and where its pull request is opened. The local forge
//! (embedded default) works on a local git path with one worktree per bolt.

pub mod local;

pub use local::{BOT_EMAIL, BOT_NAME, ForgeError, LocalForge, Workspace, branch_name};
