//! The agent's own share of a restart. A restart through the agent takes the
//! service's start time plus whatever the agent adds (reading the command,
//! forking, routing `READY=1`, telling the client). The service's start time
//! is measured on its own, by starting the same binary without the agent and
//! timing exec to `READY=1` on a notify socket of the bench; the overhead is
//! the difference of the two medians.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::agent::Agent;
use crate::binaries::Binaries;
use crate::standalone::{NotifySocket, Standalone};
use crate::stats::median;

const SERVICE: &str = "web";

#[derive(Debug, Clone)]
pub struct Overhead {
    pub restarts: usize,
    /// From sending the restart command to receiving `generation_ready`.
    pub via_agent: Duration,
    pub via_agent_p90: Duration,
    /// From exec to `READY=1`, the same binary started by the bench.
    pub standalone: Duration,
    pub standalone_p90: Duration,
    /// The agent's own measure of the new generation's start, from its
    /// spawn returning to `READY=1`.
    pub agent_reported_startup: Duration,
    pub outcomes: BTreeMap<String, u64>,
}

impl Overhead {
    /// The median restart through the agent minus the median standalone start.
    pub fn per_restart(&self) -> Duration {
        self.via_agent.saturating_sub(self.standalone)
    }
}

pub fn measure(binaries: &Binaries, restarts: usize) -> anyhow::Result<Overhead> {
    if restarts == 0 {
        bail!("the overhead scenario needs at least one restart");
    }
    let services = format!(
        r#"
[[service]]
name = "{SERVICE}"
command = ["{demo}"]
# Like the standalone start it is compared with.
warmup_nice = 0

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        demo = binaries.demo.display(),
    );
    let agent = Agent::start(&binaries.agent, &services)?;
    agent.wait_all_ready(Duration::from_secs(30))?;
    let notify = NotifySocket::bind()?;

    let mut via_agent = Vec::with_capacity(restarts);
    let mut standalone = Vec::with_capacity(restarts);
    let mut reported = Vec::with_capacity(restarts);
    let mut outcomes = BTreeMap::new();
    // Alternating the two keeps a slow drift of the machine (another
    // process, the CPU's clock) out of their difference.
    for _ in 0..restarts {
        let record = agent
            .restart(SERVICE)
            .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
        let outcome = record
            .outcome
            .map_or_else(|| "unknown".to_owned(), |o| o.to_string());
        *outcomes.entry(outcome).or_default() += 1;
        if let (Some(ready), Some(startup)) = (record.ready, record.startup) {
            via_agent.push(ready - record.sent);
            reported.push(startup);
        }

        let service = Standalone::start(&binaries.demo, "127.0.0.1:0", Duration::ZERO, &notify)?;
        standalone.push(service.startup());
        service.stop()?;
    }
    if via_agent.is_empty() {
        bail!("no restart reached a ready generation: {outcomes:?}");
    }
    Ok(Overhead {
        restarts,
        via_agent: median(via_agent.iter().copied()).unwrap_or_default(),
        via_agent_p90: percentile(&mut via_agent, 0.9),
        standalone: median(standalone.iter().copied()).unwrap_or_default(),
        standalone_p90: percentile(&mut standalone, 0.9),
        agent_reported_startup: median(reported).unwrap_or_default(),
        outcomes,
    })
}

fn percentile(values: &mut [Duration], q: f64) -> Duration {
    values.sort_unstable();
    let index = (q * values.len() as f64).ceil() as usize;
    values
        .get(index.clamp(1, values.len().max(1)) - 1)
        .copied()
        .unwrap_or_default()
}
