//! A `baton-agent` started for one scenario through [`baton_testkit`], and
//! a restart timed on the bench's own clock. The bench only observes the
//! agent through the same protocol the `baton` command line uses.

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use baton_proto::{ConnectionTally, EventKind, RestartOutcome};

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
    /// What became of the old generation's connections (the report's tally).
    pub connections: Option<ConnectionTally>,
    /// From the agent brokering the handoff to the old generation's
    /// `HANDED_OVER=`, on the agent's clock (milliseconds), and the count.
    pub handoff: Option<(Duration, u32)>,
}

pub struct Agent(baton_testkit::Agent);

impl Deref for Agent {
    type Target = baton_testkit::Agent;

    fn deref(&self) -> &baton_testkit::Agent {
        &self.0
    }
}

impl Agent {
    /// Writes a config with these `[[service]]` blocks into a fresh folder
    /// and starts an agent on it; returns once its control socket answers.
    /// Dropping it gives the agent time to stop its services, so that no
    /// generation outlives the scenario and skews the next one.
    pub fn start(agent_binary: &Path, services: &str) -> anyhow::Result<Agent> {
        Agent::start_with(agent_binary, services, |setup| setup)
    }

    /// [`Agent::start`] with more said about how (environment, grace).
    pub fn start_with(
        agent_binary: &Path,
        config: &str,
        setup: impl FnOnce(baton_testkit::AgentSetup) -> baton_testkit::AgentSetup,
    ) -> anyhow::Result<Agent> {
        setup(baton_testkit::AgentSetup::new(agent_binary, config).prefix("baton-bench-"))
            .start()
            .map(Agent)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process().pid()
    }

    /// The last lines of the agent's log, for error messages.
    pub fn log_tail(&self) -> String {
        self.process().log_tail()
    }

    /// Where a service's first socket is bound (configs ask for port 0).
    pub fn tcp_address(&self, service: &str) -> anyhow::Result<std::net::SocketAddr> {
        self.address(service, None)
    }

    /// Restarts a service, follows it to its report, and times the steps.
    pub fn restart(&self, service: &str) -> anyhow::Result<RestartRecord> {
        let sent = Instant::now();
        let mut ready = None;
        let mut startup = None;
        let mut brokered_at = None;
        let mut handoff = None;
        let report = self.0.restart(
            service,
            Some("baton-bench".to_owned()),
            |event| match event.kind {
                EventKind::GenerationReady { startup_us, .. } if ready.is_none() => {
                    ready = Some(Instant::now());
                    startup = Some(Duration::from_micros(startup_us));
                }
                EventKind::HandoffBrokered { .. } => brokered_at = Some(event.at),
                EventKind::ConnectionsHandedOver { connections, .. } => {
                    if let Some(from) = brokered_at {
                        let span = Duration::from_millis(event.at.saturating_sub(from));
                        handoff = Some((span, connections));
                    }
                }
                _ => {}
            },
        )?;
        Ok(RestartRecord {
            sent,
            ready,
            finished: Instant::now(),
            outcome: report.outcome,
            startup,
            connections: report.connections,
            handoff,
        })
    }
}
