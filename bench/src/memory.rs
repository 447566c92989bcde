//! The agent's resident memory with many services. The services are `sleep`
//! with one TCP socket each: what is measured is the agent's bookkeeping per
//! service, socket and generation, not the services.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::agent::Agent;
use crate::binaries::{self, Binaries};

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub services: usize,
    /// `VmRSS` in bytes once every service is ready.
    pub after_start: u64,
    /// `VmRSS` after one restart of every service.
    pub after_restarts: u64,
    /// `VmHWM`: the most the agent was resident at any time.
    pub peak: u64,
}

pub fn measure(binaries: &Binaries, services: usize) -> anyhow::Result<Memory> {
    if services == 0 {
        bail!("the memory scenario needs at least one service");
    }
    let sleep = binaries::on_path("sleep")?;
    let config: String = (0..services)
        .map(|index| {
            format!(
                r#"
[[service]]
name = "idle-{index}"
command = ["{sleep}", "infinity"]
ready = "exec"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
                sleep = sleep.display()
            )
        })
        .collect();
    let agent = Agent::start(&binaries.agent, &config)?;
    agent.wait_all_ready(Duration::from_secs(120))?;
    let pid = agent.pid().context("the agent is not running")?;
    let after_start = status_bytes(pid, "VmRSS")?;
    for index in 0..services {
        let record = agent
            .restart(&format!("idle-{index}"))
            .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
        if record.outcome != Some(baton_proto::RestartOutcome::Succeeded) {
            bail!(
                "restart of idle-{index} ended {:?}:\n{}",
                record.outcome,
                agent.log_tail()
            );
        }
    }
    Ok(Memory {
        services,
        after_start,
        after_restarts: status_bytes(pid, "VmRSS")?,
        peak: status_bytes(pid, "VmHWM")?,
    })
}

/// A `kB` field of `/proc/PID/status`, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status_kilobytes(&status, field)
        .map(|kilobytes| kilobytes * 1024)
        .with_context(|| format!("{path} has no {field}"))
}

fn parse_status_kilobytes(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name != field {
            return None;
        }
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kilobyte_fields_of_proc_status() {
        let status = "Name:\tbaton-agent\nVmHWM:\t   9876 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(parse_status_kilobytes(status, "VmRSS"), Some(8192));
        assert_eq!(parse_status_kilobytes(status, "VmHWM"), Some(9876));
        assert_eq!(parse_status_kilobytes(status, "VmSwap"), None);
    }
}
