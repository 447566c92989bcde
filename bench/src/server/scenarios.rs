//! What is measured on each setup: `GET /services?page=N` throughput, the
//! time from `POST .../restart` to the simulated host reading the command,
//! a rolling restart of one service on every host, and (replicas only) the
//! same rolling restart with its driving replica killed halfway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use baton_client::ServerClient;
use baton_proto::api::{MaxParallel, RestartHost, RestartRequest, RestartState};
use baton_proto::{RestartOutcome, ServiceName};

use super::database::Database;
use super::fleet::{self, Fleet, HostRestart};
use super::load::{self, LoadSettings, Throughput};
use super::procs::Servers;
use super::stats::{cpu_seconds, percentile};

/// The longest a restart driven by the bench may take, driver kill included.
const RESTART_PATIENCE: Duration = Duration::from_secs(600);

fn client(url: &str, token: &str) -> anyhow::Result<ServerClient> {
    Ok(ServerClient::new(url, Some(token.to_owned()), None)?.with_timeout(RESTART_PATIENCE))
}

/// `GET /services?page=N` throughput, with the CPU time the servers and this
/// process used.
pub struct PageRun {
    pub result: Throughput,
    pub pages: u32,
    pub per_page: u32,
    pub connections: usize,
    /// Cores busy on average during the run: every server together.
    pub server_cores: Option<f64>,
    /// The load and the simulated hosts.
    pub bench_cores: Option<f64>,
}

pub struct PageSettings {
    pub services: usize,
    pub per_page: u32,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
}

/// Every page of the fleet, asked round-robin of every server.
pub fn pages(servers: &Servers, settings: &PageSettings) -> anyhow::Result<PageRun> {
    let per_page = settings.per_page.max(1);
    let pages = u32::try_from(settings.services.div_ceil(per_page as usize))
        .unwrap_or(u32::MAX)
        .max(1);
    let load = LoadSettings {
        addresses: servers.running().map(|(_, s)| s.addr()).collect(),
        paths: (1..=pages)
            .map(|page| format!("/services?page={page}&per_page={per_page}"))
            .collect(),
        token: servers.viewer.clone(),
        connections: settings.connections,
        threads: settings.threads,
        duration: settings.duration,
    };
    let server_cpu = || -> Option<f64> {
        servers
            .running()
            .map(|(_, s)| s.pid().and_then(cpu_seconds))
            .sum()
    };
    let server_before = server_cpu();
    let bench_before = cpu_seconds(std::process::id());
    let result = load::run(&load).context("GET /services?page=N")?;
    let cores = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) / result.elapsed.as_secs_f64())
    };
    Ok(PageRun {
        server_cores: cores(server_before, server_cpu()),
        bench_cores: cores(bench_before, cpu_seconds(std::process::id())),
        pages,
        per_page,
        connections: settings.connections,
        result,
    })
}

/// Which server a single-host restart is posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTo {
    /// The one holding the host's link: the command goes straight out.
    LinkHolder,
    /// Another one: the command goes through the `host_commands` outbox.
    Another,
}

/// `samples` restarts of one service on one host each, one after the other,
/// each from sending the POST to the simulated host reading its command.
/// Host `i` holds its link on server `i % n` (the fleet links it there
/// first, and nothing has dropped it yet).
pub async fn post_to_command(
    servers: &Servers,
    fleet: &Fleet,
    hosts: usize,
    services_per_host: usize,
    samples: usize,
    post_to: PostTo,
    label: &str,
) -> anyhow::Result<Vec<Duration>> {
    let urls = servers.urls();
    let mut latencies = Vec::with_capacity(samples);
    // One untimed round warms the connections and caches.
    for sample in 0..=samples {
        // Spread over the fleet; a prime stride visits every host.
        let host = sample * 7919 % hosts;
        let service = fleet::service_name(sample % services_per_host);
        let server = match post_to {
            PostTo::LinkHolder => host % urls.len(),
            PostTo::Another => (host + 1) % urls.len(),
        };
        let reason = format!("baton-server-bench {label} {sample}");
        let body = RestartRequest {
            hosts: Some(vec![fleet::host_name(host)]),
            reason: Some(reason.clone()),
            ..RestartRequest::default()
        };
        let operator = client(&urls[server], &servers.operator)?;
        let sent = Instant::now();
        // The answer comes once the host finished, so the next POST of the
        // same service finds none running.
        let restart = operator
            .restart_and_wait(&ServiceName::parse(&service)?, &body)
            .await
            .with_context(|| format!("POST /services/{service}/restart ({reason})"))?;
        ensure!(
            restart.outcome == Some(RestartOutcome::Succeeded),
            "restart {} ({reason}) ended {:?}: {:?}",
            restart.id,
            restart.outcome,
            restart.outcome_reason
        );
        // A command sent again under its id (answered as before) is no
        // second restart; the first one read is the latency.
        let commands: Vec<_> = fleet
            .commands_for(&reason)
            .into_iter()
            .filter(|c| !c.repeat)
            .collect();
        ensure!(
            commands.len() == 1,
            "{} restarts for one restart of one host ({reason})",
            commands.len()
        );
        if sample > 0 {
            latencies.push(commands[0].at.saturating_duration_since(sent));
        }
    }
    latencies.sort_unstable();
    Ok(latencies)
}

pub struct RollingRun {
    pub total: Duration,
    pub outcome: Option<RestartOutcome>,
    pub hosts: usize,
    pub hosts_succeeded: usize,
    /// What became of the hosts that did not succeed.
    pub others: String,
    /// The hosts' own time, as the server's policy would have it with no
    /// overhead at all: each host's measured command → `restart_finished`,
    /// started in host order, `max_parallel` at a time, each slot taken again
    /// the moment it frees.
    pub on_hosts: Duration,
    /// `ceil(hosts / max_parallel)` × the service's start.
    pub on_hosts_ideal: Duration,
    /// Per host, the server's record of its command → the host reads it.
    pub delivery: Split,
    /// Per host, the host's `restart_finished` → the server's record of
    /// its outcome.
    pub reported: Split,
}

/// Medians per host, apart for the hosts linked to the server driving the
/// rollout and those linked to another replica.
#[derive(Debug, Default)]
pub struct Split {
    pub direct: Option<Duration>,
    pub elsewhere: Option<Duration>,
}

impl Split {
    fn of(samples: Vec<(bool, Duration)>) -> Split {
        let median = |direct: bool| {
            let mut picked: Vec<Duration> = samples
                .iter()
                .filter(|(d, _)| *d == direct)
                .map(|(_, sample)| *sample)
                .collect();
            picked.sort_unstable();
            percentile(&picked, 0.5)
        };
        Split {
            direct: median(true),
            elsewhere: median(false),
        }
    }
}

impl RollingRun {
    pub fn overhead(&self) -> Duration {
        self.total.saturating_sub(self.on_hosts)
    }
}

/// A rolling restart of `service` on every host, posted with `?wait=true`
/// to the first server.
pub async fn rolling(
    servers: &Servers,
    fleet: &Fleet,
    service: &str,
    hosts: usize,
    max_parallel: u32,
    service_start: Duration,
    label: &str,
) -> anyhow::Result<RollingRun> {
    let operator = client(&servers.urls()[0], &servers.operator)?;
    let reason = format!("baton-server-bench {label}");
    let body = RestartRequest {
        max_parallel: Some(MaxParallel::Hosts(max_parallel)),
        reason: Some(reason.clone()),
        ..RestartRequest::default()
    };
    let sent = Instant::now();
    let restart = operator
        .restart_and_wait(&ServiceName::parse(service)?, &body)
        .await
        .with_context(|| format!("POST /services/{service}/restart?wait=true"))?;
    let total = sent.elapsed();
    let finished = fleet.finished_for(&reason);
    let (delivery, reported) = hops(
        &restart.hosts,
        &finished,
        &fleet::link_url(&servers.urls()[0]),
    );
    ensure!(
        !finished.is_empty(),
        "no simulated host finished the rolling restart (outcome {:?}: {:?})",
        restart.outcome,
        restart.outcome_reason
    );
    Ok(RollingRun {
        total,
        outcome: restart.outcome,
        hosts: restart.hosts.len(),
        hosts_succeeded: succeeded(&restart),
        others: not_succeeded(&restart),
        on_hosts: own_time(finished, max_parallel),
        on_hosts_ideal: service_start * hosts.div_ceil(max_parallel.max(1) as usize) as u32,
        delivery,
        reported,
    })
}

/// The two hops of each host's restart between the driving server and the
/// host, on the wall clock (milliseconds): the server recorded the command
/// (`started_at`) → the host read it, and the host finished → the server
/// recorded the outcome (`finished_at`).
fn hops(hosts: &[RestartHost], finished: &[HostRestart], driver_link: &str) -> (Split, Split) {
    let by_host: HashMap<&str, &HostRestart> =
        finished.iter().map(|h| (h.host.as_str(), h)).collect();
    let mut delivery = Vec::new();
    let mut outcome = Vec::new();
    for host in hosts {
        let Some(sim) = by_host.get(host.host.as_str()) else {
            continue;
        };
        let direct = sim.linked_to.as_deref() == Some(driver_link);
        let ms = |from: u64, to: u64| Duration::from_millis(to.saturating_sub(from));
        if let Some(started) = host.started_at {
            delivery.push((direct, ms(started, sim.command_ms)));
        }
        if let Some(done) = host.finished_at {
            outcome.push((direct, ms(sim.finished_ms, done)));
        }
    }
    (Split::of(delivery), Split::of(outcome))
}

fn succeeded(restart: &baton_proto::api::Restart) -> usize {
    restart
        .hosts
        .iter()
        .filter(|h| h.outcome == Some(RestartOutcome::Succeeded))
        .count()
}

/// The hosts that did not succeed, counted by state, outcome and reason:
/// `3 skipped (offline)`.
fn not_succeeded(restart: &baton_proto::api::Restart) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for host in &restart.hosts {
        if host.outcome == Some(RestartOutcome::Succeeded) {
            continue;
        }
        let what = match (&host.outcome, &host.outcome_reason) {
            (Some(outcome), Some(reason)) => format!("{} ({reason})", outcome.as_str()),
            (Some(outcome), None) => outcome.as_str().to_owned(),
            (None, Some(reason)) => format!("{:?} ({reason})", host.state).to_lowercase(),
            (None, None) => format!("{:?}", host.state).to_lowercase(),
        };
        *counts.entry(what).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(what, count)| format!("{count} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The makespan of the hosts' own times in host-name order (the order the
/// server takes them) on `max_parallel` slots; hosts skipped take none.
fn own_time(mut hosts: Vec<HostRestart>, max_parallel: u32) -> Duration {
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    let mut slots = vec![Duration::ZERO; max_parallel.max(1) as usize];
    for host in &hosts {
        let own = host.finished.saturating_duration_since(host.command);
        let earliest = slots.iter_mut().min().expect("at least one slot");
        *earliest += own;
    }
    slots.into_iter().max().unwrap_or_default()
}

pub struct KillRun {
    /// Which server drove the rollout and was killed.
    pub killed: usize,
    /// Hosts finished when it was killed.
    pub finished_at_kill: usize,
    /// Hosts not yet commanded when it was killed: the rollout resumes
    /// when the first of them reads its command.
    pub pending_at_kill: usize,
    /// Kill → `restarts.driver` names another replica.
    pub takeover: Option<Duration>,
    /// Kill → a host not commanded before the kill reads its command.
    pub resume: Option<Duration>,
    pub total: Duration,
    pub state: Option<RestartState>,
    pub outcome: Option<RestartOutcome>,
    pub hosts: usize,
    pub hosts_succeeded: usize,
    /// What became of the hosts that did not succeed.
    pub others: String,
    /// Commands a host heard again under their id (answered as before).
    pub commands_again: usize,
    /// Hosts that started two or more restarts for this one restart.
    pub commanded_twice: Vec<String>,
}

impl KillRun {
    pub fn finished(&self) -> bool {
        self.state == Some(RestartState::Finished)
    }

    /// Finished with every host restarted, none twice.
    pub fn sound(&self) -> bool {
        self.finished() && self.hosts_succeeded == self.hosts && self.commanded_twice.is_empty()
    }
}

/// Starts a rolling restart of `service` on the first server, SIGKILLs the
/// replica driving it once half the hosts have finished, and follows it to
/// its end on the others.
pub async fn driver_kill(
    servers: &mut Servers,
    database: &Database,
    replica_ids: &[String],
    fleet: &Fleet,
    service: &str,
    hosts: usize,
    max_parallel: u32,
) -> anyhow::Result<KillRun> {
    let urls = servers.urls();
    let reason = "baton-server-bench rolling restart, driver killed".to_owned();
    let body = RestartRequest {
        max_parallel: Some(MaxParallel::Hosts(max_parallel)),
        reason: Some(reason.clone()),
        ..RestartRequest::default()
    };
    let sent = Instant::now();
    let restart = client(&urls[0], &servers.operator)?
        .start_restart(&ServiceName::parse(service)?, &body)
        .await
        .with_context(|| format!("POST /services/{service}/restart"))?;
    let half = hosts.div_ceil(2);
    let deadline = Instant::now() + RESTART_PATIENCE;
    while fleet.finished_count(&reason) < half {
        ensure!(
            Instant::now() < deadline,
            "half the hosts did not finish within {RESTART_PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let driver = database
        .driver(restart.id)
        .await?
        .context("the restart has no driver")?;
    let killed = replica_ids
        .iter()
        .position(|id| *id == driver)
        .with_context(|| format!("replica {driver} drives the restart and is none of ours"))?;
    let finished_at_kill = fleet.finished_count(&reason);
    let killed_at = Instant::now();
    servers.kill(killed);
    let pending: BTreeSet<String> = database
        .pending_hosts(restart.id)
        .await?
        .into_iter()
        .collect();

    let survivor = servers
        .running()
        .map(|(index, _)| index)
        .next()
        .context("no server left")?;
    let viewer = client(&urls[survivor], &servers.viewer)?;
    // The database alone is read while waiting: an API answer listing
    // every host would delay seeing the new driver.
    let mut takeover = None;
    let mut finished = false;
    while !finished && Instant::now() < deadline {
        let (now_driver, done) = database.driver_and_finished(restart.id).await?;
        if takeover.is_none() && now_driver.is_some_and(|d| d != driver) {
            takeover = Some(killed_at.elapsed());
        }
        finished = done;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = sent.elapsed();
    // A rollout that never finished is reported as such, with what it got to.
    let state = viewer.restart(restart.id).await?;
    let commands = fleet.commands_for(&reason);
    let resume = commands
        .iter()
        .filter(|c| c.at > killed_at && pending.contains(&c.host))
        .map(|c| c.at - killed_at)
        .min();
    // A command heard again under its id starts nothing: only the others
    // are restarts.
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for command in commands.iter().filter(|c| !c.repeat) {
        *per_host.entry(command.host.as_str()).or_default() += 1;
    }
    Ok(KillRun {
        killed,
        finished_at_kill,
        pending_at_kill: pending.len(),
        takeover,
        resume,
        total,
        state: Some(state.state),
        outcome: state.outcome,
        hosts: state.hosts.len(),
        hosts_succeeded: succeeded(&state),
        others: not_succeeded(&state),
        commands_again: commands.iter().filter(|c| c.repeat).count(),
        commanded_twice: per_host
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .map(|(host, _)| host.to_owned())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(own_times_ms: &[u64]) -> Vec<HostRestart> {
        let start = Instant::now();
        own_times_ms
            .iter()
            .enumerate()
            .map(|(index, ms)| HostRestart {
                host: fleet::host_name(index),
                reason: None,
                command: start,
                finished: start + Duration::from_millis(*ms),
                command_ms: 1_000,
                finished_ms: 1_000 + ms,
                linked_to: Some(format!("http://server-{}", index % 2)),
            })
            .collect()
    }

    #[test]
    fn hops_are_split_by_whether_the_host_is_linked_to_the_driver() {
        let sims = hosts(&[200, 200, 200, 200]);
        let restart: Vec<RestartHost> = (0..4)
            .map(|index| {
                serde_json::from_value(serde_json::json!({
                    "host": fleet::host_name(index), "state": "finished",
                    "started_at": 990 - index as u64, "finished_at": 1_210 + 10 * index as u64,
                }))
                .unwrap()
            })
            .collect();
        let (delivery, reported) = hops(&restart, &sims, "http://server-0");
        // Hosts 0 and 2 are linked to the driver: 10 and 12 ms; 11 and 13 ms.
        assert_eq!(delivery.direct, Some(Duration::from_millis(10)));
        assert_eq!(delivery.elsewhere, Some(Duration::from_millis(11)));
        // 10 and 30 ms; 20 and 40 ms (nearest rank: the lower of two).
        assert_eq!(reported.direct, Some(Duration::from_millis(10)));
        assert_eq!(reported.elsewhere, Some(Duration::from_millis(20)));
    }

    #[test]
    fn equal_hosts_take_one_service_start_per_batch() {
        let own = own_time(hosts(&[200; 120]), 50);
        assert_eq!(own, Duration::from_millis(600));
    }

    #[test]
    fn a_slow_host_holds_only_its_own_slot() {
        // Two slots: the slow first host keeps one while the other three
        // pass through the second.
        let own = own_time(hosts(&[900, 200, 200, 200]), 2);
        assert_eq!(own, Duration::from_millis(900));
    }

    #[test]
    fn hosts_start_in_name_order_whatever_order_they_finished_in() {
        let mut restarts = hosts(&[300, 100, 100]);
        restarts.reverse();
        // In name order the slow first host overlaps both others (300 ms);
        // taken as listed it would start last, after a short one (400 ms).
        assert_eq!(own_time(restarts, 2), Duration::from_millis(300));
    }
}
