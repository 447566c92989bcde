//! One agent with many `baton-demo` services, linked to a real server: what
//! an agent costs per service when nothing happens, how fast it answers
//! `baton status`, how long its link's hello takes, how long restarting
//! every service one after another takes, and how much memory it holds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_proto::ServiceStatus;
use baton_proto::link::AgentFrame;

use crate::agent::Agent;
use crate::binaries::Binaries;
use crate::memory::status_bytes;
use crate::stats::median;

const HOST: &str = "bench-many";
/// How long the agent's idle CPU is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// `baton status` requests timed, each after the agent's count cache (500 ms)
/// expired, so that every one counts every service's connections.
const STATUS_REQUESTS: usize = 9;
const STATUS_SPACING: Duration = Duration::from_millis(700);

#[derive(Debug, Clone)]
pub struct ManyServices {
    pub services: usize,
    /// From starting the agent to every service ready.
    pub all_ready: Duration,
    /// From starting the agent to the server showing the host online.
    pub online_after_start: Duration,
    /// The agent's CPU, share of one core, idle with every service ready.
    pub idle_cpu: f64,
    /// The same after every service was restarted once (bigger statuses).
    pub idle_cpu_after_restarts: f64,
    /// Seconds the server showed the host online, of those sampled during
    /// both idle windows.
    pub online_samples: (usize, usize),
    /// `baton status`, the command line's whole run, each counting afresh.
    pub status_times: Vec<Duration>,
    /// The status request alone, through the control socket.
    pub socket_status_times: Vec<Duration>,
    /// Why the server closed the agent's link, each time it did before the
    /// server's own restart.
    pub link_drops: Vec<String>,
    /// Restarts of every service, one after another, each followed to its end.
    pub restart_all: Duration,
    pub restart_outcomes: Vec<(String, u64)>,
    /// The agent's own hello round trip (building the hello to the
    /// server's welcome), as it logs it, after the server restarted.
    pub hello: Option<Duration>,
    /// From the restarted server answering `/healthz` to the host online;
    /// includes the agent's reconnect backoff (at most 5 s).
    pub online_after_server_restart: Duration,
    /// `VmRSS` after the restarts, and the peak.
    pub rss: u64,
    pub peak_rss: u64,
    /// The status frame the agent sends the server, as it sends it
    /// (without last restarts), with every service restarted once.
    pub status_frame_bytes: usize,
    /// The same with every last restart and its steps, as agents sent it
    /// before.
    pub status_frame_bytes_with_steps: usize,
}

pub fn measure(binaries: &Binaries, services: usize) -> anyhow::Result<ManyServices> {
    if services == 0 {
        bail!("the many-services scenario needs at least one service");
    }
    raise_open_file_limit()?;
    let server_binary = baton_testkit::binary("baton-server")
        .map_err(|missing| anyhow::anyhow!("{missing}; build the workspace first"))?;
    let cli_binary = baton_testkit::binary("baton")
        .map_err(|missing| anyhow::anyhow!("{missing}; build the workspace first"))?;
    let mut server = baton_testkit::ServerSetup::new(&server_binary)
        .prefix("baton-bench-server-")
        .env("NO_COLOR", "1")
        .start()?;
    let agent_token = server.create_token("bench-agent", "agent", Some(HOST))?;
    let viewer_token = server.create_token("bench-viewer", "viewer", None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = server.client(Some(&viewer_token))?;
    let online = || -> bool {
        // Asked twice before taken for offline: a pooled connection the
        // server closed while the bench was busy elsewhere fails once.
        (0..2).any(|_| {
            runtime
                .block_on(client.get_json::<baton_proto::api::HostList>("/hosts"))
                .is_ok_and(|list| list.hosts.iter().any(|h| h.name == HOST && h.online))
        })
    };

    let mut config = format!("host = \"{HOST}\"\n{}", server.agent_section(&agent_token));
    for index in 0..services {
        config.push_str(&baton_testkit::demo_service(
            &binaries.demo,
            &format!("svc-{index}"),
            &[],
            "",
        ));
    }
    eprintln!("baton-bench:   starting an agent with {services} demo services");
    let started = Instant::now();
    let agent = Agent::start_with(&binaries.agent, &config, |setup| {
        setup
            .env("NO_COLOR", "1")
            .stop_grace(Duration::from_secs(60))
    })?;
    agent
        .wait_all_ready(Duration::from_secs(600))
        .context("not every service became ready")?;
    let all_ready = started.elapsed();
    wait(Duration::from_secs(60), "the host online", online)
        .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
    let online_after_start = started.elapsed();
    let pid = agent.pid().context("the agent is not running")?;

    // Let the start settle: the first counts, the first statuses.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("baton-bench:   idle CPU over {IDLE_WINDOW:?}");
    let mut online_samples = (0, 0);
    let idle_cpu = measure_idle_cpu(pid, online, &mut online_samples)?;

    eprintln!("baton-bench:   {STATUS_REQUESTS} runs of `baton status`");
    let mut status_times = Vec::with_capacity(STATUS_REQUESTS);
    let mut socket_status_times = Vec::with_capacity(STATUS_REQUESTS);
    for _ in 0..STATUS_REQUESTS {
        std::thread::sleep(STATUS_SPACING);
        status_times.push(time_cli_status(&cli_binary, agent.socket())?);
        std::thread::sleep(STATUS_SPACING);
        let asked = Instant::now();
        agent.status()?;
        socket_status_times.push(asked.elapsed());
    }

    eprintln!("baton-bench:   restarting {services} services one after another");
    let restarts_started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for index in 0..services {
        let record = agent
            .restart(&format!("svc-{index}"))
            .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
        let outcome = record
            .outcome
            .map_or_else(|| "unknown".to_owned(), |o| o.to_string());
        *outcomes.entry(outcome).or_default() += 1;
    }
    let restart_all = restarts_started.elapsed();
    let rss = status_bytes(pid, "VmRSS")?;

    let status = agent.status()?;
    let status_frame_bytes_with_steps = frame_bytes(status.services.clone())?;
    let status_frame_bytes = frame_bytes(without_last_restarts(status.services))?;

    std::thread::sleep(Duration::from_secs(3));
    eprintln!("baton-bench:   idle CPU after the restarts");
    let idle_cpu_after_restarts = measure_idle_cpu(pid, online, &mut online_samples)?;

    let link_drops = link_drops(&server.log());
    eprintln!("baton-bench:   restarting the server for a new hello");
    server.kill();
    server.launch()?;
    let relaunched = Instant::now();
    wait(Duration::from_secs(60), "the host online again", online)
        .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
    let online_after_server_restart = relaunched.elapsed();
    let hello = last_hello(&agent.process().log());
    let peak_rss = status_bytes(pid, "VmHWM")?;

    Ok(ManyServices {
        services,
        all_ready,
        online_after_start,
        idle_cpu,
        idle_cpu_after_restarts,
        online_samples,
        status_times,
        socket_status_times,
        link_drops,
        restart_all,
        restart_outcomes: outcomes.into_iter().collect(),
        hello,
        online_after_server_restart,
        rss,
        peak_rss,
        status_frame_bytes,
        status_frame_bytes_with_steps,
    })
}

impl ManyServices {
    pub fn status_median(&self) -> Duration {
        median(self.status_times.iter().copied()).unwrap_or_default()
    }

    pub fn status_max(&self) -> Duration {
        self.status_times.iter().copied().max().unwrap_or_default()
    }
}

/// Every service's socket, its generations' pidfds and cgroups: an agent
/// with a thousand services needs more descriptors than a default soft
/// limit of 1024. The agent inherits the raised limit.
fn raise_open_file_limit() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .context("cannot raise the open-file limit")?;
    }
    Ok(())
}

fn wait(timeout: Duration, what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The agent's CPU time over [`IDLE_WINDOW`] as a share of one core, with
/// the host's online state sampled every second meanwhile.
fn measure_idle_cpu(
    pid: u32,
    online: impl Fn() -> bool,
    samples: &mut (usize, usize),
) -> anyhow::Result<f64> {
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    for second in 1..=IDLE_WINDOW.as_secs() {
        let next = started + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        samples.1 += 1;
        if online() {
            samples.0 += 1;
        }
    }
    let ticks = cpu_ticks(pid)? - before;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(ticks as f64 / clock_ticks_per_second() / elapsed)
}

/// `utime + stime` of `/proc/PID/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("{path} is not as expected: {stat}"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces; fields after
    // it start with the state (field 3), so utime (14) and stime (15) are
    // the 12th and 13th after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

/// One run of `baton --agent SOCKET status`, start to exit.
fn time_cli_status(cli: &Path, socket: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(cli)
        .arg("--agent")
        .arg(socket)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", cli.display()))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "baton status failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(took)
}

fn without_last_restarts(mut services: Vec<ServiceStatus>) -> Vec<ServiceStatus> {
    for service in &mut services {
        service.last_restart = None;
    }
    services
}

fn frame_bytes(services: Vec<ServiceStatus>) -> anyhow::Result<usize> {
    Ok(serde_json::to_string(&AgentFrame::Status { services })?.len())
}

/// The reasons of the server's "agent link closed" lines.
fn link_drops(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("agent link closed"))
        .map(|line| {
            line.find("reason=").map_or_else(
                || line.to_owned(),
                |at| line[at + "reason=".len()..].trim().to_owned(),
            )
        })
        .collect()
}

/// The `hello_ms` of the agent's last "linked to the server" line.
fn last_hello(log: &str) -> Option<Duration> {
    log.lines()
        .filter(|line| line.contains("linked to the server"))
        .filter_map(|line| {
            let rest = &line[line.find("hello_ms=")? + "hello_ms=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok().map(Duration::from_millis)
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (baton agent) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    120 35 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(155));
    }

    #[test]
    fn the_last_hello_of_the_log_is_read() {
        let log = "2026 INFO baton_agent::uplink: linked to the server server=ws://x resume_after=0 hello_ms=12\n\
                   2026 WARN server link down; retrying\n\
                   2026 INFO baton_agent::uplink: linked to the server server=ws://x resume_after=9 hello_ms=345\n";
        assert_eq!(last_hello(log), Some(Duration::from_millis(345)));
        assert_eq!(last_hello("nothing"), None);
    }
}
