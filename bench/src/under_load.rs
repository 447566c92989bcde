//! The load scenarios: the same service and the same load, restarted through
//! the agent, through the agent with a reniced warm-up, by stopping and
//! starting it, or not at all.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::agent::Agent;
use crate::binaries::Binaries;
use crate::load;
use crate::standalone::{NotifySocket, Standalone};
use crate::stats::LoadRun;

const SERVICE: &str = "web";

/// After the last restart, the load keeps running at least this long, so
/// that what the restart left behind is measured too.
const TAIL_AFTER_LAST_RESTART: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub duration: Duration,
    pub restart_every: Duration,
    pub connections: usize,
    pub warmup: Duration,
}

impl LoadSettings {
    /// Restarts at every multiple of the interval that leaves half an
    /// interval before the end of the run, as offsets from its start.
    fn restart_times(&self) -> Vec<Duration> {
        if self.restart_every.is_zero() {
            return Vec::new();
        }
        let last = self.duration.saturating_sub(self.restart_every / 2);
        (1u32..)
            .map(|k| self.restart_every * k)
            .take_while(|at| *at < last)
            .collect()
    }
}

/// How the demo service treats its established connections when replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Hands them over to the next generation (`docs/handoff.md`).
    HandOver,
    /// Finishes them itself: `Connection: close` on the next response.
    Drain,
}

/// The demo service under the agent; `restarts` false is the baseline.
pub fn through_agent(
    binaries: &Binaries,
    settings: &LoadSettings,
    restarts: bool,
    warmup_nice: Option<i32>,
    connections: Connections,
) -> anyhow::Result<LoadRun> {
    // Explicit even when off: the agent's default depends on its privileges.
    let nice_line = format!("warmup_nice = {}\n", warmup_nice.unwrap_or(0));
    let services = format!(
        r#"
[[service]]
name = "{SERVICE}"
command = ["{demo}", "--warmup", "{warmup}"{handoff}]
{nice_line}
[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        demo = binaries.demo.display(),
        warmup = humantime::format_duration(settings.warmup),
        handoff = match connections {
            Connections::HandOver => "",
            Connections::Drain => r#", "--no-handoff""#,
        },
    );
    let agent = Agent::start(&binaries.agent, &services)?;
    agent.wait_all_ready(Duration::from_secs(60))?;
    let address = agent.tcp_address(SERVICE)?;

    let running = load::start(address, settings.connections)?;
    let started = running.started;
    let mut run = LoadRun::default();
    let mut end = started + settings.duration;
    if restarts {
        for at in settings.restart_times() {
            sleep_until(started + at);
            let record = agent
                .restart(SERVICE)
                .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
            run.windows.push(
                record.sent.saturating_duration_since(started)
                    ..record.finished.saturating_duration_since(started),
            );
            let outcome = record
                .outcome
                .map_or_else(|| "unknown".to_owned(), |o| o.to_string());
            *run.outcomes.entry(outcome).or_default() += 1;
            if let Some(tally) = record.connections {
                run.connections = crate::stats::add(run.connections, tally);
            }
            end = end.max(record.finished + TAIL_AFTER_LAST_RESTART);
        }
    }
    sleep_until(end);
    run.report = running.finish()?;
    drop(agent);
    Ok(run)
}

/// No agent: the service binds the port itself; a restart is SIGTERM, wait
/// for the exit, start a new process.
pub fn naive(binaries: &Binaries, settings: &LoadSettings) -> anyhow::Result<LoadRun> {
    let address = free_port()?;
    let bind = address.to_string();
    let notify = NotifySocket::bind()?;
    let mut service = Standalone::start(&binaries.demo, &bind, settings.warmup, &notify)?;

    let running = load::start(address, settings.connections)?;
    let started = running.started;
    let mut run = LoadRun::default();
    let mut end = started + settings.duration;
    for at in settings.restart_times() {
        sleep_until(started + at);
        let (signalled, status) = service.stop()?;
        service = Standalone::start(&binaries.demo, &bind, settings.warmup, &notify)
            .context("the naive restart could not start the new process")?;
        run.windows.push(
            signalled.saturating_duration_since(started)
                ..service.ready.saturating_duration_since(started),
        );
        let outcome = if status.success() {
            "restarted".to_owned()
        } else {
            format!("restarted (old: {status})")
        };
        *run.outcomes.entry(outcome).or_default() += 1;
        end = end.max(service.ready + TAIL_AFTER_LAST_RESTART);
    }
    sleep_until(end);
    run.report = running.finish()?;
    drop(service);
    Ok(run)
}

/// A port nobody listens on now. Another program could take it before the
/// service binds it; on a machine running a benchmark that is unlikely, and
/// the service's bind would fail loudly.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

fn sleep_until(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_leave_half_an_interval_before_the_end() {
        let settings = LoadSettings {
            duration: Duration::from_secs(20),
            restart_every: Duration::from_secs(4),
            connections: 1,
            warmup: Duration::ZERO,
        };
        let seconds: Vec<u64> = settings
            .restart_times()
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(seconds, [4, 8, 12, 16]);
    }
}
