//! A `baton-agent` started for one scenario, and a blocking client of its
//! control socket. The bench only observes the agent through the same
//! protocol the `baton` command line uses.

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::child::{tail, wait_until_ready};
use baton_client::AgentClient;
use baton_proto::{AgentStatus, EventKind, RestartOutcome, ServiceState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A restart as the bench saw it, on its own monotonic clock.
#[derive(Debug, Clone)]
pub struct RestartRecord {
    /// Just before connecting to the control socket to ask for the restart.
    pub sent: Instant,
    /// When the new generation's `generation_ready` event arrived.
    pub ready: Option<Instant>,
    /// When the restart's report arrived, which ends the followed stream.
    pub finished: Instant,
    /// `None` when the report arrived without one, which the agent never
    /// does for a finished restart.
    pub outcome: Option<RestartOutcome>,
    /// The agent's own spawn-to-ready time for the new generation.
    pub startup: Option<Duration>,
}

pub struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    socket: PathBuf,
}

impl Agent {
    /// Writes a config with these `[[service]]` blocks into a fresh folder
    /// and starts an agent on it; returns once its control socket answers.
    pub fn start(agent_binary: &Path, services: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let socket = dir.path().join("agent.sock");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!("control_socket = \"{}\"\n{services}", socket.display()),
        )
        .context("cannot write the agent's config")?;
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .context("cannot create the agent's log")?;
        let child = Command::new(agent_binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", agent_binary.display()))?;
        let mut agent = Agent {
            dir,
            child: Some(child),
            socket,
        };
        let log = agent.dir.path().join("agent.log");
        if let Some(child) = agent.child.as_mut() {
            wait_until_ready(
                child,
                &log,
                "the agent's control socket never appeared",
                || UnixStream::connect(&agent.socket).is_ok(),
            )
            .context("baton-agent did not start")?;
        }
        Ok(agent)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the agent's log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("agent.log"))
    }

    fn client(&self) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::connect(&self.socket)?.with_patience(Some(Duration::from_secs(120))))
    }

    pub fn status(&self) -> anyhow::Result<AgentStatus> {
        Ok(self.client()?.status()?)
    }

    pub fn wait_all_ready(&self, timeout: Duration) -> anyhow::Result<AgentStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status()?;
            if status
                .services
                .iter()
                .all(|service| service.state == ServiceState::Ready)
            {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let states: Vec<String> = status
                    .services
                    .iter()
                    .filter(|service| service.state != ServiceState::Ready)
                    .map(|service| format!("{} {}", service.name, service.state))
                    .collect();
                bail!(
                    "services not ready after {timeout:?}: {}\n{}",
                    states.join(", "),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where a service's socket is bound (configs ask for port 0).
    pub fn tcp_address(&self, service: &str) -> anyhow::Result<SocketAddr> {
        let status = self.status()?;
        let service_status = status
            .services
            .iter()
            .find(|s| s.name == service)
            .with_context(|| format!("the agent has no service {service:?}"))?;
        let listen = &service_status
            .sockets
            .first()
            .with_context(|| format!("service {service:?} has no socket"))?
            .listen;
        listen
            .strip_prefix("tcp://")
            .and_then(|address| address.parse().ok())
            .with_context(|| format!("socket {listen:?} is not a TCP address"))
    }

    /// Restarts a service, follows it to its report, and times the steps.
    pub fn restart(&self, service: &str) -> anyhow::Result<RestartRecord> {
        let sent = Instant::now();
        let mut client = self.client()?;
        client
            .start_restart(service, Some("baton-bench".to_owned()), true)
            .with_context(|| format!("restart of {service} not accepted"))?;
        let mut ready = None;
        let mut startup = None;
        let report = client
            .follow_restart(None, |event| {
                if let EventKind::GenerationReady { startup_us, .. } = event.kind
                    && ready.is_none()
                {
                    ready = Some(Instant::now());
                    startup = Some(Duration::from_micros(startup_us));
                }
            })
            .with_context(|| format!("following the restart of {service}"))?;
        Ok(RestartRecord {
            sent,
            ready,
            finished: Instant::now(),
            outcome: report.outcome,
            startup,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The agent stops its services on SIGTERM; give it time to, so that
        // no generation outlives the scenario and skews the next one.
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
