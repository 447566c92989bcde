//! The three measurements of the server: `GET` throughput against the
//! simulated fleet, the time from `POST .../restart` to a real agent's spawn,
//! and a rolling restart across every simulated host.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use baton_client::ServerClient;
use baton_proto::api::{RestartRequest, RestartState};
use baton_proto::{EventKind, RestartOutcome, ServiceName};

use super::fleet::{Fleet, HostRestart};
use super::load::{self, ClientKind, LoadSettings, Throughput};
use super::procs::{EventFeed, RealAgent, Server};
use super::stats::{cpu_seconds, machine_times, median, percentile};

/// `GET` throughput, with the CPU time the server and this process used.
pub struct ThroughputRun {
    pub result: Throughput,
    pub connections: usize,
    pub threads: usize,
    /// Cores busy on average during the run.
    pub server_cores: Option<f64>,
    pub bench_cores: Option<f64>,
    pub interrupt_cores: Option<f64>,
    /// Every other process on the machine: a busy neighbour shows here.
    pub other_cores: Option<f64>,
    pub steal_cores: Option<f64>,
}

pub fn throughput(
    server: &Server,
    path: &str,
    client: ClientKind,
    connections: usize,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<ThroughputRun> {
    let settings = LoadSettings {
        address: ([127, 0, 0, 1], server.port).into(),
        path: path.to_owned(),
        token: server.tokens.viewer.clone(),
        connections,
        threads,
        duration,
        client,
    };
    let server_before = server.pid().and_then(cpu_seconds);
    let bench_before = cpu_seconds(std::process::id());
    let machine_before = machine_times();
    let result = load::run(&settings).with_context(|| format!("GET {path}"))?;
    let cores = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) / result.elapsed.as_secs_f64())
    };
    let server_cores = cores(server_before, server.pid().and_then(cpu_seconds));
    let bench_cores = cores(bench_before, cpu_seconds(std::process::id()));
    let machine_after = machine_times();
    let machine = |pick: fn(&super::stats::MachineTimes) -> f64| {
        cores(
            machine_before.as_ref().map(pick),
            machine_after.as_ref().map(pick),
        )
    };
    let processes = machine(|m| m.processes);
    Ok(ThroughputRun {
        other_cores: (|| Some((processes? - server_cores? - bench_cores?).max(0.0)))(),
        interrupt_cores: machine(|m| m.interrupts),
        steal_cores: machine(|m| m.steal),
        server_cores,
        bench_cores,
        result,
        connections,
        threads,
    })
}

pub struct PostToSpawn {
    pub runs: usize,
    /// POST sent → `generation_spawned` read on the agent's control socket.
    pub via_server: Vec<Duration>,
    /// POST sent → its `202` read.
    pub post_answer: Vec<Duration>,
    /// Restart asked on the control socket → `generation_spawned` read there.
    pub via_control: Vec<Duration>,
    /// `Command::spawn` of the same program by this bench: fork and exec,
    /// which the agent's spawn also waits for, with nothing else.
    pub bare_spawn: Vec<Duration>,
}

/// Restarts `service` of one real agent alternately through the server and
/// through the agent's control socket, `runs` times each, after one untimed
/// round that warms connections and caches.
pub async fn post_to_spawn(
    server: &Server,
    agent: &RealAgent,
    service: &str,
    program: &Path,
    runs: usize,
) -> anyhow::Result<PostToSpawn> {
    let viewer = ServerClient::new(&server.url(), Some(server.tokens.viewer.clone()), None)?;
    let operator = viewer.with_token(server.tokens.operator.clone());
    let name = ServiceName::parse(service)?;
    let feed = agent.follow_events()?;
    wait_until_listed(&viewer, server, &name).await?;
    let mut result = PostToSpawn {
        runs,
        via_server: Vec::with_capacity(runs),
        post_answer: Vec::with_capacity(runs),
        via_control: Vec::with_capacity(runs),
        bare_spawn: Vec::with_capacity(runs),
    };
    for run in 0..=runs {
        let (spawn, answer) = restart_via_server(&viewer, &operator, &feed, &name)
            .await
            .with_context(|| format!("restart {run} through the server"))?;
        let control = restart_via_control(agent, &feed, service)
            .with_context(|| format!("restart {run} through the control socket"))?;
        if run > 0 {
            result.via_server.push(spawn);
            result.post_answer.push(answer);
            result.via_control.push(control);
        }
    }
    for _ in 0..runs {
        result.bare_spawn.push(bare_spawn(program)?);
    }
    Ok(result)
}

fn bare_spawn(program: &Path) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    // std waits for the exec to succeed (a close-on-exec pipe), as the agent does.
    let mut child = std::process::Command::new(program)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let spawned = sent.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    Ok(spawned)
}

async fn wait_until_listed(
    viewer: &ServerClient,
    server: &Server,
    service: &ServiceName,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match viewer.service(service).await {
            Ok(listed) if listed.hosts.iter().any(|h| h.online) => return Ok(()),
            // Not listed yet.
            Ok(_) | Err(baton_client::Error::Status { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            bail!(
                "the server never listed {service} as online:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_spawn(service: &str) -> impl FnMut(&baton_proto::Event) -> bool + '_ {
    move |event| {
        event.service == service && matches!(event.kind, EventKind::GenerationSpawned { .. })
    }
}

fn wait_finished(feed: &EventFeed, service: &str) -> anyhow::Result<()> {
    let (_, event) = feed.wait_for(Duration::from_secs(60), |event| {
        event.service == service && matches!(event.kind, EventKind::RestartFinished { .. })
    })?;
    match event.kind {
        EventKind::RestartFinished {
            outcome: RestartOutcome::Succeeded,
            ..
        } => Ok(()),
        other => bail!("the agent's restart did not succeed: {other:?}"),
    }
}

async fn restart_via_server(
    viewer: &ServerClient,
    operator: &ServerClient,
    feed: &EventFeed,
    service: &ServiceName,
) -> anyhow::Result<(Duration, Duration)> {
    feed.drain();
    let sent = Instant::now();
    let restart = operator
        .start_restart(service, &RestartRequest::default())
        .await
        .with_context(|| format!("POST /services/{service}/restart"))?;
    let answered = Instant::now();
    let service = service.as_str();
    // The feed's thread stamped the event when it arrived, whether that was
    // before or after the answer above was read.
    let (spawned, _) = feed.wait_for(Duration::from_secs(10), is_spawn(service))?;
    wait_finished(feed, service)?;
    // The next POST would get a 409 until the server has recorded the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = viewer.restart(restart.id).await?;
        if state.state == RestartState::Finished {
            ensure!(
                state.outcome == Some(RestartOutcome::Succeeded),
                "restart {} ended {:?}: {:?}",
                restart.id,
                state.outcome,
                state.outcome_reason
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("the server never finished restart {}", restart.id);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok((spawned - sent, answered - sent))
}

fn restart_via_control(
    agent: &RealAgent,
    feed: &EventFeed,
    service: &str,
) -> anyhow::Result<Duration> {
    feed.drain();
    let sent = Instant::now();
    agent.restart(service)?;
    let (spawned, _) = feed.wait_for(Duration::from_secs(10), is_spawn(service))?;
    wait_finished(feed, service)?;
    Ok(spawned - sent)
}

pub struct RollingRun {
    pub total: Duration,
    pub outcome: Option<RestartOutcome>,
    pub hosts: usize,
    pub hosts_succeeded: usize,
    /// POST sent → the first host's command read.
    pub first_command: Duration,
    /// One host's `restart_finished` sent → the next host's command read.
    pub gaps: Vec<Duration>,
    /// The last host's `restart_finished` sent → the `?wait=true` answer read.
    pub last_to_answer: Duration,
    /// Each simulated host's own time: command read → `restart_finished` sent.
    pub on_hosts: Vec<Duration>,
}

pub async fn rolling(
    server: &Server,
    fleet: &Fleet,
    service: &str,
    expected_hosts: usize,
) -> anyhow::Result<RollingRun> {
    let operator = ServerClient::new(&server.url(), Some(server.tokens.operator.clone()), None)?
        // The answer waits for every host.
        .with_timeout(Duration::from_secs(600));
    let name = ServiceName::parse(service)?;
    let body = RestartRequest {
        max_parallel: Some(baton_proto::api::MaxParallel::Hosts(1)),
        reason: Some("baton-server-bench rolling restart".to_owned()),
        ..RestartRequest::default()
    };
    fleet.clear_restarts();
    let sent = Instant::now();
    let restart = operator
        .restart_and_wait(&name, &body)
        .await
        .with_context(|| format!("POST /services/{service}/restart?wait=true"))?;
    let answered = Instant::now();
    let mut hosts: Vec<HostRestart> = fleet
        .restarts()
        .into_iter()
        .filter(|r| r.service == service)
        .collect();
    hosts.sort_by_key(|r| r.command);
    ensure!(
        hosts.len() == expected_hosts,
        "{} of {expected_hosts} simulated hosts saw the restart (outcome {:?}: {:?})",
        hosts.len(),
        restart.outcome,
        restart.outcome_reason
    );
    // The orchestrator takes hosts by name; any other order means the
    // commands were not one after another as the timing below assumes.
    ensure!(
        hosts.windows(2).all(|pair| pair[0].host < pair[1].host),
        "the hosts did not restart one by one in name order"
    );
    let gaps = hosts
        .windows(2)
        .map(|pair| pair[1].command.saturating_duration_since(pair[0].finished))
        .collect();
    Ok(RollingRun {
        total: answered - sent,
        outcome: restart.outcome,
        hosts: restart.hosts.len(),
        hosts_succeeded: restart
            .hosts
            .iter()
            .filter(|h| h.outcome == Some(RestartOutcome::Succeeded))
            .count(),
        first_command: hosts[0].command.saturating_duration_since(sent),
        gaps,
        last_to_answer: answered.saturating_duration_since(hosts[hosts.len() - 1].finished),
        on_hosts: hosts
            .iter()
            .map(|r| r.finished.saturating_duration_since(r.command))
            .collect(),
    })
}

/// The median run by total time, and the medians of the per-run figures.
pub struct RollingSummary {
    pub runs: Vec<RollingRun>,
    pub total: Duration,
    pub first_command: Duration,
    pub gap_p50: Duration,
    pub gap_p99: Duration,
    pub gap_max: Duration,
    pub last_to_answer: Duration,
    pub on_host_p50: Duration,
}

impl RollingSummary {
    pub fn of(runs: Vec<RollingRun>) -> Option<RollingSummary> {
        let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.clone()).collect();
        gaps.sort_unstable();
        Some(RollingSummary {
            total: median(runs.iter().map(|r| r.total))?,
            first_command: median(runs.iter().map(|r| r.first_command))?,
            gap_p50: percentile(&gaps, 0.50)?,
            gap_p99: percentile(&gaps, 0.99)?,
            gap_max: *gaps.last()?,
            last_to_answer: median(runs.iter().map(|r| r.last_to_answer))?,
            on_host_p50: median(runs.iter().flat_map(|r| r.on_hosts.iter().copied()))?,
            runs,
        })
    }
}
