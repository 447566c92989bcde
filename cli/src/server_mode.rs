//! Commands run against the server (`--server URL` or `BATON_SERVER`).

use crate::output::clock;
use baton_client::{Error, ServerClient};
use baton_proto::api::{HostRestartState, RestartRequest, RestartState};
use baton_proto::{ServiceName, exit};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const POLL_EVERY: Duration = Duration::from_millis(200);

pub async fn restart(
    client: &ServerClient,
    service: &ServiceName,
    wait: bool,
    timeout: Option<Duration>,
    reason: Option<String>,
) -> Result<u8, Error> {
    let started = Instant::now();
    let body = RestartRequest {
        reason,
        ..RestartRequest::default()
    };
    let restart = client.start_restart(service, &body).await?;
    let hosts: Vec<&str> = restart.hosts.iter().map(|h| h.host.as_str()).collect();
    println!(
        "restart {} of {service} started on {} host(s): {}",
        restart.id,
        hosts.len(),
        hosts.join(", ")
    );
    if !wait {
        return Ok(exit::SUCCEEDED);
    }
    let id = restart.id;
    let mut printed: HashMap<String, usize> = HashMap::new();
    let mut finished_hosts: HashMap<String, bool> = HashMap::new();
    loop {
        let restart = client.restart(id).await?;
        for host in &restart.hosts {
            let shown = printed.entry(host.host.clone()).or_default();
            for step in host.steps.iter().skip(*shown) {
                println!(
                    "{}  +{:>7.3}s  {}: {}",
                    clock(step.at),
                    started.elapsed().as_secs_f64(),
                    host.host,
                    step.kind
                );
            }
            *shown = host.steps.len().max(*shown);
            let done = matches!(
                host.state,
                HostRestartState::Finished | HostRestartState::Skipped
            );
            if done
                && !finished_hosts
                    .insert(host.host.clone(), true)
                    .unwrap_or(false)
            {
                match (host.state, host.outcome) {
                    (HostRestartState::Skipped, _) => println!("{}: skipped", host.host),
                    (_, Some(outcome)) => match &host.outcome_reason {
                        Some(reason) => println!("{}: {outcome} ({reason})", host.host),
                        None => println!("{}: {outcome}", host.host),
                    },
                    _ => {}
                }
            }
        }
        if restart.state == RestartState::Finished {
            match (&restart.outcome, &restart.outcome_reason) {
                (Some(outcome), Some(reason)) => println!("restart {id}: {outcome} ({reason})"),
                (Some(outcome), None) => println!("restart {id}: {outcome}"),
                (None, _) => println!("restart {id}: finished without an outcome"),
            }
            return Ok(exit::of_outcome(restart.outcome));
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!(
                "baton: gave up waiting after {}; restart {id} is still running",
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            );
            return Ok(exit::TIMEOUT);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

pub async fn status(client: &ServerClient) -> Result<u8, Error> {
    let list = client.services().await?;
    println!(
        "{:<20} {:<16} {:<8} {:<14} {:>5} {:>8} {:>6} {:>9} {:>8}  DRAINING",
        "SERVICE", "HOST", "ONLINE", "STATE", "GEN", "PID", "CONNS", "MEM", "CPU"
    );
    for service in &list.services {
        for host in &service.hosts {
            let (generation, pid, connections, memory, cpu) = match &host.current {
                Some(g) => (
                    g.generation.to_string(),
                    g.main_pid().to_string(),
                    g.connections
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "?".into()),
                    g.memory_bytes
                        .map_or_else(|| "?".into(), crate::output::memory),
                    g.cpu_usec
                        .map_or_else(|| "?".into(), crate::output::cpu_time),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let draining: Vec<String> = host
                .draining
                .iter()
                .map(|g| {
                    format!(
                        "gen {} ({} conns)",
                        g.generation,
                        g.connections.unwrap_or(0)
                    )
                })
                .collect();
            println!(
                "{:<20} {:<16} {:<8} {:<14} {:>5} {:>8} {:>6} {:>9} {:>8}  {}",
                service.name,
                host.host,
                if host.online { "yes" } else { "no" },
                host.state.to_string(),
                generation,
                pid,
                connections,
                memory,
                cpu,
                if draining.is_empty() {
                    "-".to_string()
                } else {
                    draining.join(", ")
                }
            );
        }
    }
    Ok(exit::SUCCEEDED)
}

pub async fn history(
    client: &ServerClient,
    service: &ServiceName,
    limit: u32,
) -> Result<u8, Error> {
    let page = client.history(service, limit).await?;
    println!(
        "{:>6}  {:<20} {:<12} {:>9}  HOSTS",
        "ID", "STARTED (UTC)", "OUTCOME", "DURATION"
    );
    for restart in &page.restarts {
        let outcome = restart
            .outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "running".into());
        let duration = restart
            .finished_at
            .map(|f| {
                format!(
                    "{:.1}s",
                    f.saturating_sub(restart.created_at) as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "-".into());
        let hosts: Vec<String> = restart
            .hosts
            .iter()
            .map(|h| match h.outcome {
                Some(o) => format!("{}={o}", h.host),
                None => format!("{}={:?}", h.host, h.state).to_lowercase(),
            })
            .collect();
        println!(
            "{:>6}  {:<20} {:<12} {:>9}  {}",
            restart.id,
            clock(restart.created_at),
            outcome,
            duration,
            hosts.join(" ")
        );
    }
    Ok(exit::SUCCEEDED)
}
