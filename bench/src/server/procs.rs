//! The real programs this bench drives, started through [`baton_testkit`]:
//! a release `baton-server` on a fresh SQLite file and, for the POST → spawn
//! scenario, one real `baton-agent` linked to it. Both are taken from the
//! folder this bench was built into, so a stale or debug build is never
//! measured.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use baton_client::AgentClient;
use baton_proto::{Event, Request, Response};

pub struct Binaries {
    pub server: PathBuf,
    pub agent: PathBuf,
    pub demo: PathBuf,
}

impl Binaries {
    pub fn next_to_this_program() -> anyhow::Result<Binaries> {
        let find = |name: &str| {
            baton_testkit::binary(name).map_err(|missing| {
                anyhow::anyhow!(
                    "{missing}; build it in the same profile as the bench: \
                     cargo build --release -p baton-bench -p baton-server -p baton-agent -p baton-demo"
                )
            })
        };
        Ok(Binaries {
            server: find("baton-server")?,
            agent: find("baton-agent")?,
            demo: find("baton-demo")?,
        })
    }
}

pub struct Tokens {
    pub operator: String,
    pub viewer: String,
}

pub struct Server {
    pub port: u16,
    pub tokens: Tokens,
    server: baton_testkit::Server,
}

impl Server {
    /// Creates an operator and a viewer token on a fresh database (agent
    /// tokens, one per host, come from [`Server::agent_token`]), then serves it and
    /// returns once `/healthz` answers.
    pub fn start(binary: &Path) -> anyhow::Result<Server> {
        let mut server = baton_testkit::ServerSetup::new(binary)
            .prefix("baton-server-bench-")
            .env("RUST_LOG", "warn")
            .prepare()?;
        let tokens = Tokens {
            operator: server.create_token("bench-operator", "operator", None)?,
            viewer: server.create_token("bench-viewer", "viewer", None)?,
        };
        server.launch().context("baton-server did not start")?;
        Ok(Server {
            port: server.addr().port(),
            tokens,
            server,
        })
    }

    /// A new agent token for `host` (an agent token speaks for one host).
    pub fn agent_token(&self, host: &str) -> anyhow::Result<String> {
        self.server
            .create_token(&format!("bench-agent-{host}"), "agent", Some(host))
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn log_tail(&self) -> String {
        self.server
            .process()
            .map(|p| p.log_tail())
            .unwrap_or_default()
    }
}

/// One real `baton-agent` with one demo service, linked to the server.
pub struct RealAgent {
    agent: baton_testkit::Agent,
}

impl RealAgent {
    pub fn start(
        binaries: &Binaries,
        host: &str,
        server: &Server,
        service: &str,
    ) -> anyhow::Result<RealAgent> {
        let config = format!(
            r#"host = "{host}"

{server_section}
[[service]]
name = "{service}"
command = ["{demo}"]
# The spawn is what is timed; a lowered priority would only slow the demo's start.
warmup_nice = 0

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
            server_section = server.server.agent_section(&server.agent_token(host)?),
            demo = binaries.demo.display(),
        );
        let agent = baton_testkit::AgentSetup::new(&binaries.agent, config)
            .prefix("baton-server-bench-agent-")
            .env("RUST_LOG", "warn")
            .start()
            .context("baton-agent did not start")?;
        agent
            .wait_all_ready(Duration::from_secs(20))
            .context("baton-agent did not start")?;
        Ok(RealAgent { agent })
    }

    pub fn log_tail(&self) -> String {
        self.agent.process().log_tail()
    }

    /// Asks for a restart without following it (its events arrive on the
    /// [`EventFeed`]); returns once the agent has accepted it.
    pub fn restart(&self, service: &str) -> anyhow::Result<()> {
        let mut client =
            AgentClient::connect(self.agent.socket())?.with_patience(Some(Duration::from_secs(30)));
        client
            .start_restart(
                service,
                Some("baton-server-bench baseline".to_owned()),
                false,
            )
            .with_context(|| format!("restart of {service} not accepted"))?;
        Ok(())
    }

    /// Every event of the agent from now on, each stamped with the moment
    /// this process read it.
    pub fn follow_events(&self) -> anyhow::Result<EventFeed> {
        // A read timeout would end the feed during a quiet stretch.
        let mut client = AgentClient::connect(self.agent.socket())?;
        // The backlog comes first; callers drain it before they time anything.
        client.send(Request::Events {
            after: 0,
            follow: true,
        })?;
        let (sender, receiver) = mpsc::channel();
        // A thread of its own, blocked in read(2): the stamp is taken the
        // moment the line arrives, never delayed by an async scheduler busy
        // with something else.
        std::thread::Builder::new()
            .name("agent-events".to_owned())
            .spawn(move || {
                while let Ok(Some(response)) = client.receive() {
                    if let Response::Event(event) = response
                        && sender.send((Instant::now(), event)).is_err()
                    {
                        return;
                    }
                }
            })
            .context("cannot start the event thread")?;
        Ok(EventFeed { receiver })
    }
}

pub struct EventFeed {
    receiver: mpsc::Receiver<(Instant, Event)>,
}

impl EventFeed {
    /// Forgets whatever arrived so far.
    pub fn drain(&self) {
        while self.receiver.try_recv().is_ok() {}
    }

    /// The first event that `wanted` accepts, with its arrival time.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<(Instant, Event)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok((at, event)) if wanted(&event) => return Ok((at, event)),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("the awaited agent event did not come within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the agent's event stream ended")
                }
            }
        }
    }
}
