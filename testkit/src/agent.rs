//! A `baton-agent` started on a config written for it, observed only
//! through its control socket, as the `baton` command line does.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_client::AgentClient;
use baton_proto::{AgentStatus, Event, ServiceState, ServiceStatus};

use crate::{Folder, Process, Spawn, write_private};

/// How long a control-socket request may wait for its answer: a restart
/// that follows a slow service answers late.
const PATIENCE: Duration = Duration::from_secs(120);

/// A `[[service]]` block running `baton-demo` (at `demo`, with `args`) on
/// one TCP socket on a free loopback port, with `extra` lines in its table.
pub fn demo_service(demo: &Path, name: &str, args: &[&str], extra: &str) -> String {
    let args: String = args.iter().map(|a| format!(", \"{a}\"")).collect();
    format!(
        r#"
[[service]]
name = "{name}"
command = ["{demo}", "--drain-idle-grace", "300ms"{args}]
{extra}

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        demo = demo.display()
    )
}

/// [`demo_service`] with a second TCP socket, `echo`, on which the demo
/// serves its line-echo protocol.
pub fn demo_service_with_echo(demo: &Path, name: &str, args: &[&str], extra: &str) -> String {
    format!(
        r#"{}
[[service.socket]]
name = "echo"
listen = "tcp://127.0.0.1:0"
"#,
        demo_service(demo, name, args, extra)
    )
}

/// What to start: the agent binary, the config after its `control_socket`
/// line, and where.
#[derive(Debug)]
pub struct AgentSetup {
    binary: PathBuf,
    config: String,
    folder: Option<PathBuf>,
    prefix: String,
    env: Vec<(OsString, OsString)>,
    own_process_group: bool,
    stop_grace: Duration,
}

impl AgentSetup {
    /// `config` may begin with top-level keys (`host = ...`) and hold a
    /// `[server]` table and `[[service]]` blocks; the control socket is put
    /// in the agent's folder.
    pub fn new(binary: impl Into<PathBuf>, config: impl Into<String>) -> AgentSetup {
        AgentSetup {
            binary: binary.into(),
            config: config.into(),
            folder: None,
            prefix: "baton-agent-".to_owned(),
            env: Vec::new(),
            own_process_group: false,
            stop_grace: Duration::from_secs(15),
        }
    }

    /// Keeps the config, socket and log in `folder` rather than in a
    /// temporary folder.
    pub fn in_folder(mut self, folder: impl Into<PathBuf>) -> AgentSetup {
        self.folder = Some(folder.into());
        self
    }

    /// The start of the temporary folder's name.
    pub fn prefix(mut self, prefix: impl Into<String>) -> AgentSetup {
        self.prefix = prefix.into();
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> AgentSetup {
        self.env.push((key.into(), value.into()));
        self
    }

    /// See [`Spawn::own_process_group`].
    pub fn own_process_group(mut self) -> AgentSetup {
        self.own_process_group = true;
        self
    }

    /// How long the agent may take to drain its services when stopped.
    pub fn stop_grace(mut self, grace: Duration) -> AgentSetup {
        self.stop_grace = grace;
        self
    }

    /// Writes the config, starts the agent and returns once its control
    /// socket accepts connections.
    pub fn start(self) -> anyhow::Result<Agent> {
        let folder = match &self.folder {
            Some(path) => Folder::Kept(path.clone()),
            None => Folder::temporary(&self.prefix)?,
        };
        let socket = folder.path().join("agent.sock");
        let config_path = folder.path().join("agent.toml");
        write_private(
            &config_path,
            &format!("control_socket = \"{}\"\n{}", socket.display(), self.config),
        )?;
        let mut spawn =
            Spawn::new("baton-agent", folder.path().join("agent.log")).stop_grace(self.stop_grace);
        if self.own_process_group {
            spawn = spawn.own_process_group();
        }
        let mut command = Command::new(&self.binary);
        command.arg("--config").arg(&config_path).envs(self.env);
        let mut process = spawn.spawn(&mut command)?;
        process.wait_until(
            "its control socket accepted a connection",
            Duration::from_secs(20),
            || UnixStream::connect(&socket).is_ok(),
        )?;
        Ok(Agent {
            process,
            socket,
            config_path,
            folder,
        })
    }
}

pub struct Agent {
    // Before the folder: the process stops before its files go.
    process: Process,
    socket: PathBuf,
    config_path: PathBuf,
    folder: Folder,
}

impl Agent {
    pub fn folder(&self) -> &Path {
        self.folder.path()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    /// A client of its control socket, patient enough for a slow restart.
    pub fn client(&self) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::connect(&self.socket)?.with_patience(Some(PATIENCE)))
    }

    pub fn status(&self) -> anyhow::Result<AgentStatus> {
        Ok(self.client()?.status()?)
    }

    pub fn service(&self, name: &str) -> anyhow::Result<ServiceStatus> {
        self.status()?
            .services
            .into_iter()
            .find(|s| s.name == name)
            .with_context(|| format!("the agent has no service {name:?}"))
    }

    /// Polls the status until `done` accepts it. A status that cannot be
    /// had (the agent re-executes itself during an upgrade) is asked again.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&AgentStatus) -> bool,
    ) -> anyhow::Result<AgentStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = match self.status() {
                Ok(status) if done(&status) => return Ok(status),
                other => other,
            };
            if Instant::now() > deadline {
                let last = match status {
                    Ok(status) => format!("{status:#?}"),
                    Err(error) => format!("no status ({error:#})"),
                };
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last status: {last}\n\
                     agent log, {}:\n{}",
                    self.process.log_path().display(),
                    self.process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_all_ready(&self, timeout: Duration) -> anyhow::Result<AgentStatus> {
        self.wait_for("every service ready", timeout, |status| {
            status
                .services
                .iter()
                .all(|service| service.state == ServiceState::Ready)
        })
    }

    /// Where a service's socket is bound (configs ask for port 0): the one
    /// named `socket`, or its first.
    pub fn address(&self, service: &str, socket: Option<&str>) -> anyhow::Result<SocketAddr> {
        let status = self.service(service)?;
        let found = match socket {
            Some(name) => status.sockets.iter().find(|s| s.name == name),
            None => status.sockets.first(),
        };
        let listen = &found
            .with_context(|| format!("service {service:?} has no socket {socket:?}"))?
            .listen;
        listen
            .strip_prefix("tcp://")
            .or_else(|| listen.strip_prefix("udp://"))
            .and_then(|address| address.parse().ok())
            .with_context(|| format!("socket {listen:?} is not an IP address"))
    }

    /// Restarts a service and follows it to its report, handing each event
    /// to `on_event` as it arrives.
    pub fn restart(
        &self,
        service: &str,
        requested_by: Option<String>,
        on_event: impl FnMut(Event),
    ) -> anyhow::Result<baton_proto::RestartReport> {
        let mut client = self.client()?;
        client
            .start_restart(service, requested_by, true)
            .with_context(|| format!("restart of {service} not accepted"))?;
        client
            .follow_restart(None, on_event)
            .with_context(|| format!("following the restart of {service}"))
    }

    /// SIGTERM, then waits for the agent to drain and exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_with_a_broken_config_fails_to_start_naming_its_log() {
        let Ok(binary) = crate::binary("baton-agent") else {
            panic!("baton-agent is missing: run `cargo build --workspace` first");
        };
        let error = AgentSetup::new(binary, "[[service]]\nname = \n")
            .start()
            .err()
            .expect("an agent without a valid config does not start");
        let message = format!("{error:#}");
        assert!(message.contains("baton-agent exited with"), "{message}");
        assert!(message.contains("agent.log"), "{message}");
    }
}
