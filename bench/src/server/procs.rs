//! The real `baton-server` processes this bench drives, started through
//! [`baton_testkit`]: one on a fresh SQLite file, one on a fresh PostgreSQL
//! database, or several replicas on one PostgreSQL database. The binary is
//! taken from the folder this bench was built into, so a stale build of
//! another profile is never measured.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::fleet;
use super::stats::{Memory, memory};

/// Token commands run at once while the fleet's agent tokens are made: each
/// is a process of its own that opens the database.
const TOKEN_COMMANDS_AT_ONCE: usize = 4;

pub fn server_binary() -> anyhow::Result<PathBuf> {
    baton_testkit::binary("baton-server").map_err(|missing| {
        anyhow::anyhow!(
            "{missing}; build it in the same profile as the bench: \
             cargo build --release -p baton-bench -p baton-server"
        )
    })
}

/// The servers of one setup, on one database, with the tokens of the bench
/// and of every simulated host.
pub struct Servers {
    /// In the order started; a killed one stays, without a process.
    pub replicas: Vec<baton_testkit::Server>,
    pub operator: String,
    pub viewer: String,
    /// One per simulated host, by host index.
    pub agent_tokens: Vec<String>,
}

impl Servers {
    /// `count` servers on `database` (a `postgres://` URL; a SQLite file of
    /// the first server's folder when `None`), each answering `/healthz`.
    pub fn start(
        binary: &Path,
        database: Option<&str>,
        count: usize,
        hosts: usize,
    ) -> anyhow::Result<Servers> {
        let setup = |prefix: &str| {
            let setup = baton_testkit::ServerSetup::new(binary)
                .prefix(prefix)
                .env("RUST_LOG", "warn")
                // Every simulated host links from 127.0.0.1.
                .arg("--connections-per-ip")
                .arg("1000000");
            match database {
                Some(url) => setup.database(url),
                None => setup,
            }
        };
        let mut first = setup("baton-server-bench-").prepare()?;
        let operator = first.create_token("bench-operator", "operator", None)?;
        let viewer = first.create_token("bench-viewer", "viewer", None)?;
        let agent_tokens = agent_tokens(binary, &first.database(), hosts)?;
        first.launch().context("baton-server did not start")?;
        let mut replicas = vec![first];
        for number in 1..count {
            let mut replica = setup("baton-server-bench-replica-")
                .database(replicas[0].database())
                .prepare()?;
            replica
                .launch()
                .with_context(|| format!("replica {number} did not start"))?;
            replicas.push(replica);
        }
        Ok(Servers {
            replicas,
            operator,
            viewer,
            agent_tokens,
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.url()).collect()
    }

    /// The servers still running, with their index.
    pub fn running(&self) -> impl Iterator<Item = (usize, &baton_testkit::Server)> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pid().is_some())
    }

    /// `VmRSS` and `VmHWM` of each running server.
    pub fn memory(&self) -> Vec<Option<Memory>> {
        self.replicas
            .iter()
            .map(|r| r.pid().and_then(memory))
            .collect()
    }

    /// SIGKILL to one server.
    pub fn kill(&mut self, index: usize) {
        self.replicas[index].kill();
    }

    /// The last lines of every server's log, for an error.
    pub fn log_tails(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                let log = replica.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("server {index} ({}):\n{tail}", replica.log_path().display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One agent token per host (a token speaks for one host), made a few at a
/// time by `baton-server token create`.
fn agent_tokens(binary: &Path, database: &Path, hosts: usize) -> anyhow::Result<Vec<String>> {
    let mut tokens: Vec<Option<String>> = vec![None; hosts];
    let chunk = hosts.div_ceil(TOKEN_COMMANDS_AT_ONCE).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = tokens
            .chunks_mut(chunk)
            .enumerate()
            .map(|(part, slots)| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for (offset, slot) in slots.iter_mut().enumerate() {
                        let host = fleet::host_name(part * chunk + offset);
                        *slot = Some(baton_testkit::create_token(
                            binary,
                            database,
                            &format!("bench-agent-{host}"),
                            "agent",
                            Some(&host),
                        )?);
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => anyhow::bail!("a token thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(tokens.into_iter().flatten().collect())
}
