//! The programs under test, taken from the folder this bench was built into so
//! that the bench never measures a stale or differently optimised build.

use std::path::PathBuf;

use anyhow::Context as _;

#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub demo: PathBuf,
}

impl Binaries {
    pub fn next_to_this_program() -> anyhow::Result<Binaries> {
        Ok(Binaries {
            agent: find("baton-agent")?,
            demo: find("baton-demo")?,
        })
    }
}

fn find(name: &str) -> anyhow::Result<PathBuf> {
    baton_testkit::binary(name).map_err(|missing| {
        anyhow::anyhow!(
            "{missing}; build it in the same profile as the bench: \
             cargo build --release -p baton-bench -p baton-agent -p baton-demo"
        )
    })
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
