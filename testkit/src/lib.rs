//! Starts baton's real binaries as child processes and drives them, for the
//! end-to-end tests, both benches and `baton demo`:
//!
//! - [`binary`] finds `baton-agent`, `baton-server` and `baton-demo` next to
//!   the running program (or, for a test executable, one folder up).
//! - [`Process`] is one child with its output in a log file: waiting for it
//!   to be ready fails early when it exits and names the log, and dropping it
//!   stops it (SIGTERM, then SIGKILL), so nothing outlives its owner.
//! - [`Agent`] writes an agent config into a folder, starts `baton-agent` on
//!   it and talks to it through [`baton_client::AgentClient`].
//! - [`Server`] runs `baton-server` on a fresh SQLite file, creates tokens,
//!   and waits for `/healthz` through [`baton_client::ServerClient`].
//! - [`Postgres`] starts a PostgreSQL server of the tests' own and creates
//!   a fresh database per test.
//!
//! Errors are `anyhow` with the context a person needs; the tests wrap this
//! in panicking helpers of their own.
#![forbid(unsafe_code)]

mod agent;
mod binaries;
mod postgres;
mod process;
mod server;

pub use agent::{Agent, AgentSetup, demo_service, demo_service_with_echo};
pub use binaries::{MissingBinary, binary};
pub use postgres::Postgres;
pub use process::{Process, Spawn};
pub use server::{Server, ServerSetup, create_token, free_port};

use std::path::{Path, PathBuf};

/// Where a started program keeps its config, log and data: a temporary
/// folder removed when its owner goes, or one the caller keeps.
#[derive(Debug)]
pub enum Folder {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Folder {
    /// A fresh temporary folder named `{prefix}XXXXXX`.
    pub fn temporary(prefix: &str) -> anyhow::Result<Folder> {
        use anyhow::Context as _;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot create a temporary folder")?;
        Ok(Folder::Temporary(dir))
    }

    pub fn path(&self) -> &Path {
        match self {
            Folder::Temporary(dir) => dir.path(),
            Folder::Kept(path) => path,
        }
    }
}

/// Writes a file only its owner may read: configs hold tokens.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An older file keeps its mode through `open`; tighten it.
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
