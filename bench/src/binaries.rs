//! The programs under test, taken from the folder this bench was built into so
//! that the bench never measures a stale or differently optimised build.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub demo: PathBuf,
}

impl Binaries {
    pub fn next_to_this_program() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("cannot find the path of baton-bench")?;
        let dir = exe
            .parent()
            .context("baton-bench's path has no parent folder")?;
        Ok(Binaries {
            agent: find(dir, "baton-agent")?,
            demo: find(dir, "baton-demo")?,
        })
    }
}

fn find(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing; build it in the same profile as the bench: \
             cargo build --release -p baton-bench -p baton-agent -p baton-demo",
            path.display()
        );
    }
    Ok(path)
}

/// An absolute path for a program on `PATH`, because the agent's config
/// wants one we can check before it runs.
pub fn on_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not on PATH"))
}
