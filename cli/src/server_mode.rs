//! Commands run against the server (`--server URL` or `BATON_SERVER`).

use crate::output::clock;
use baton_client::{Error, ServerClient, ServiceFilter};
use baton_proto::api::{HostRestartState, Restart, RestartHost, RestartRequest, RestartState};
use baton_proto::{ServiceName, exit};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one request of `--wait` waits for a change before asking again.
const LONG_POLL: Duration = Duration::from_secs(20);

pub async fn restart(
    client: &ServerClient,
    service: &ServiceName,
    wait: bool,
    timeout: Option<Duration>,
    body: RestartRequest,
) -> Result<u8, Error> {
    let started = Instant::now();
    let restart = client.start_restart(service, &body).await?;
    let hosts: Vec<&str> = restart.hosts.iter().map(|h| h.host.as_str()).collect();
    outln!(
        "restart {} of {service} started on {} host(s): {}",
        restart.id,
        hosts.len(),
        hosts.join(", ")
    );
    if let Some(line) = policy_line(&restart) {
        outln!("{line}");
    }
    if !wait {
        return Ok(exit::SUCCEEDED);
    }
    let id = restart.id;
    let mut printed: HashMap<String, usize> = HashMap::new();
    let mut finished_hosts: HashMap<String, bool> = HashMap::new();
    let mut seen: Option<String> = None;
    let mut pause_shown = false;
    loop {
        // The server answers as soon as the restart changes (a long poll):
        // each step is printed when it is stored, and nothing is asked
        // while nothing happens.
        let wait = match timeout {
            Some(t) => t.saturating_sub(started.elapsed()).min(LONG_POLL),
            None => LONG_POLL,
        };
        let changed = client.restart_change(id, seen.as_deref(), wait).await?;
        if let Some((restart, etag)) = changed {
            seen = Some(etag);
            if !pause_shown && let Some(line) = pause_line(&restart) {
                outln!("{line}");
                pause_shown = true;
            }
            if let Some(code) = print_progress(&restart, &mut printed, &mut finished_hosts) {
                return Ok(code);
            }
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!(
                "baton: gave up waiting after {}; restart {id} is still running",
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            );
            return Ok(exit::TIMEOUT);
        }
    }
}

/// The rollout policy when it is not the default one host at a time.
fn policy_line(restart: &Restart) -> Option<String> {
    let rollout = &restart.rollout;
    let mut parts = Vec::new();
    match rollout.max_parallel {
        baton_proto::api::MaxParallel::Percent(percent) => parts.push(format!(
            "{percent}% of the hosts at a time ({})",
            restart.max_parallel
        )),
        _ if restart.max_parallel > 1 => {
            parts.push(format!("{} hosts at a time", restart.max_parallel))
        }
        _ => {}
    }
    if rollout.canary > 0 {
        let mut canary = format!("canary {} first", hosts_word(rollout.canary));
        if let Some(pause) = rollout.pause {
            canary.push_str(&format!(", then a pause of {pause}"));
        }
        parts.push(canary);
    }
    if rollout.failure_budget > 0 {
        parts.push(format!(
            "failure budget {}",
            hosts_word(rollout.failure_budget)
        ));
    }
    (!parts.is_empty()).then(|| format!("rollout: {}", parts.join("; ")))
}

fn hosts_word(n: u32) -> String {
    if n == 1 {
        "1 host".into()
    } else {
        format!("{n} hosts")
    }
}

/// The pause after the canary batch, once it began: when, for how long,
/// and when it ends, in the form of a step.
fn pause_line(restart: &Restart) -> Option<String> {
    let until = restart.rollout.pause_until?;
    let pause = restart.rollout.pause?;
    let began = until.saturating_sub(pause.as_millis());
    Some(format!(
        "{}  +{:>7.3}s  canary batch done: the rollout pauses for {pause}, until {}",
        clock(began),
        began.saturating_sub(restart.created_at) as f64 / 1000.0,
        clock(until)
    ))
}

/// Prints what is new in `restart` since the last call: each host's new
/// steps, a host's end, the restart's end. The exit code once it ended.
fn print_progress(
    restart: &Restart,
    printed: &mut HashMap<String, usize>,
    finished_hosts: &mut HashMap<String, bool>,
) -> Option<u8> {
    let id = restart.id;
    for host in &restart.hosts {
        let shown = printed.entry(host.host.clone()).or_default();
        for step in host.steps.iter().skip(*shown) {
            outln!("{}", wait_step_line(restart, host, step));
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
            for line in host_finished_lines(host) {
                outln!("{line}");
            }
        }
    }
    if restart.state != RestartState::Finished {
        return None;
    }
    match (&restart.outcome, &restart.outcome_reason) {
        (Some(outcome), Some(reason)) => outln!("restart {id}: {outcome} ({reason})"),
        (Some(outcome), None) => outln!("restart {id}: {outcome}"),
        (None, _) => outln!("restart {id}: finished without an outcome"),
    }
    Some(exit::of_outcome(restart.outcome))
}

/// A step as `--wait` prints it: its own time, and how long after the
/// restart was created it happened (not when this command saw it: steps
/// arrive in batches).
fn wait_step_line(restart: &Restart, host: &RestartHost, step: &baton_proto::Event) -> String {
    format!(
        "{}  +{:>7.3}s  {}: {}",
        clock(step.at),
        step.at.saturating_sub(restart.created_at) as f64 / 1000.0,
        host.host,
        step.kind
    )
}

/// What a host's part of a restart came to once it ended: its outcome, and
/// what became of the old generation's connections when the agent counted
/// them.
fn host_finished_lines(host: &RestartHost) -> Vec<String> {
    let mut lines = Vec::new();
    match (host.state, host.outcome) {
        (HostRestartState::Skipped, _) => match &host.outcome_reason {
            Some(reason) => lines.push(format!("{}: skipped ({reason})", host.host)),
            None => lines.push(format!("{}: skipped", host.host)),
        },
        (_, Some(outcome)) => match &host.outcome_reason {
            Some(reason) => lines.push(format!("{}: {outcome} ({reason})", host.host)),
            None => lines.push(format!("{}: {outcome}", host.host)),
        },
        _ => {}
    }
    if let Some(versions) = &host.versions {
        let new_generation = host.steps.iter().find_map(|step| match step.kind {
            baton_proto::EventKind::GenerationSpawned { generation, .. } => Some(generation),
            _ => None,
        });
        lines.push(format!(
            "{}: {}",
            host.host,
            crate::output::versions_line(new_generation, versions)
        ));
    }
    if let Some(tally) = host.connections {
        lines.push(format!("{}: connections: {tally}", host.host));
    }
    lines
}

/// `baton show ID` against the server: the server's restart `ID`, every
/// host's steps, outcome and connections.
pub async fn show(client: &ServerClient, id: u64, json: bool) -> Result<u8, Error> {
    let restart = client.restart(id).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&restart).unwrap_or_default()
        );
    } else {
        out!("{}", restart_text(&restart));
    }
    Ok(exit::SUCCEEDED)
}

fn restart_text(restart: &Restart) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let outcome = match (restart.state, restart.outcome) {
        (_, Some(outcome)) => outcome.to_string(),
        (RestartState::Running, None) => "running".into(),
        (RestartState::Finished, None) => "finished without an outcome".into(),
    };
    let _ = writeln!(
        out,
        "restart {} of {}: {outcome}",
        restart.id, restart.service
    );
    if let Some(reason) = &restart.outcome_reason {
        let _ = writeln!(out, "  {reason}");
    }
    if let Some(line) = policy_line(restart) {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(line) = pause_line(restart) {
        let _ = writeln!(out, "  {line}");
    }
    for host in &restart.hosts {
        let started = host.started_at.unwrap_or(restart.created_at);
        for step in &host.steps {
            let _ = writeln!(
                out,
                "  {}  +{:>6}ms  {}: {}",
                clock(step.at),
                step.at.saturating_sub(started),
                host.host,
                step.kind
            );
        }
        for line in host_finished_lines(host) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The fleet's services, every page of `GET /services` read in turn: host
/// then service. `--json` prints them as one `{"services": [...]}`, the
/// entries as the API gives them.
pub async fn status(client: &ServerClient, json: bool) -> Result<u8, Error> {
    let services = client.services(&ServiceFilter::default()).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "services": services }))
                .unwrap_or_default()
        );
        return Ok(exit::SUCCEEDED);
    }
    outln!(
        "{:<20} {:<16} {:<8} {:<14} {:>5} {:>8} {:>6} {:>9} {:>8} {:<16}  DRAINING",
        "SERVICE",
        "HOST",
        "ONLINE",
        "STATE",
        "GEN",
        "PID",
        "CONNS",
        "MEM",
        "CPU",
        "VERSION"
    );
    for entry in &services {
        let host = entry;
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
        outln!(
            "{:<20} {:<16} {:<8} {:<14} {:>5} {:>8} {:>6} {:>9} {:>8} {:<16}  {}",
            entry.service,
            host.host,
            if host.online { "yes" } else { "no" },
            host.state.to_string(),
            generation,
            pid,
            connections,
            memory,
            cpu,
            crate::output::version_cell(host.current.as_ref().and_then(|g| g.program.as_ref())),
            if draining.is_empty() {
                "-".to_string()
            } else {
                draining.join(", ")
            }
        );
    }
    for entry in &services {
        if let Some(next) = &entry.next_start {
            outln!(
                "warning: {} on {}: {}",
                entry.service,
                entry.host,
                next.warning()
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
    outln!(
        "{:>6}  {:<20} {:<12} {:>9}  HOSTS",
        "ID",
        "STARTED (UTC)",
        "OUTCOME",
        "DURATION"
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
        outln!(
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

/// `baton logs NAME [--host H]` through the server. Without `--host` the
/// service must run on exactly one host.
pub async fn logs(
    client: &ServerClient,
    service: &ServiceName,
    host: Option<String>,
    generation: Option<u64>,
    lines: usize,
    follow: bool,
) -> Result<u8, Error> {
    let host = match host {
        Some(host) => host,
        None => {
            let hosts: Vec<String> = client
                .service(service)
                .await?
                .hosts
                .into_iter()
                .map(|h| h.host)
                .collect();
            match hosts.as_slice() {
                [one] => one.clone(),
                [] => {
                    eprintln!("baton: no host runs {service}");
                    return Ok(exit::USAGE);
                }
                several => {
                    eprintln!(
                        "baton: {service} runs on {} hosts ({}); choose one with --host",
                        several.len(),
                        several.join(", ")
                    );
                    return Ok(exit::USAGE);
                }
            }
        }
    };
    let lines = lines.min(baton_proto::link::MAX_LOG_LINES);
    let mut stream = client
        .logs(&host, service, generation, lines, follow)
        .await?;
    while let Some(line) = stream.next_line().await? {
        outln!("{}", crate::output::output_line(&line));
    }
    Ok(exit::SUCCEEDED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{ConnectionTally, Event, EventKind, RestartOutcome};

    fn host(connections: Option<ConnectionTally>) -> RestartHost {
        RestartHost {
            host: "alpha".into(),
            state: HostRestartState::Finished,
            outcome: Some(RestartOutcome::Forced),
            outcome_reason: Some("drain timeout".into()),
            agent_restart_id: Some(4),
            started_at: Some(1_700_000_000_000),
            finished_at: Some(1_700_000_002_000),
            steps: vec![Event {
                seq: 9,
                at: 1_700_000_001_500,
                service: "web".into(),
                restart: Some(4),
                kind: EventKind::DrainFinished {
                    generation: 1,
                    handed_over: 12,
                    drained: 3,
                    cut: 1,
                },
            }],
            outcome_from_report: false,
            output_tail: Vec::new(),
            connections,
            versions: None,
        }
    }

    #[test]
    fn a_finished_host_shows_its_connection_tally_when_there_is_one() {
        let tally = ConnectionTally {
            handed_over: 12,
            drained: 3,
            cut: 0,
        };
        assert_eq!(
            host_finished_lines(&host(Some(tally))),
            [
                "alpha: forced (drain timeout)",
                "alpha: connections: 12 handed over, 3 drained, 0 cut",
            ]
        );
        assert_eq!(
            host_finished_lines(&host(None)),
            ["alpha: forced (drain timeout)"]
        );
    }

    #[test]
    fn the_policy_and_the_pause_are_shown_with_the_pauses_end() {
        use baton_proto::api::{MaxParallel, Pause, Rollout};
        let restart = Restart {
            id: 4,
            service: "web".into(),
            reason: None,
            requested_by: None,
            state: RestartState::Running,
            outcome: None,
            outcome_reason: None,
            max_parallel: 3,
            rollout: Rollout {
                max_parallel: MaxParallel::Percent(10),
                canary: 1,
                pause: Some(Pause::parse("60s").unwrap()),
                pause_until: Some(1_700_000_072_000),
                failure_budget: 2,
            },
            created_at: 1_700_000_000_000,
            finished_at: None,
            hosts: Vec::new(),
        };
        assert_eq!(
            policy_line(&restart).as_deref(),
            Some(
                "rollout: 10% of the hosts at a time (3); canary 1 host first, then a pause of 60s; failure budget 2 hosts"
            )
        );
        assert_eq!(
            pause_line(&restart).as_deref(),
            Some(
                "22:13:32.000  + 12.000s  canary batch done: the rollout pauses for 60s, until 22:14:32.000"
            )
        );
        let plain = Restart {
            rollout: Rollout::default(),
            max_parallel: 1,
            ..restart
        };
        assert_eq!(policy_line(&plain), None);
        assert_eq!(pause_line(&plain), None);
    }

    #[test]
    fn show_prints_each_hosts_steps_in_words_and_its_tally() {
        let restart = Restart {
            id: 3,
            service: "web".into(),
            reason: None,
            requested_by: Some("ci".into()),
            state: RestartState::Finished,
            outcome: Some(RestartOutcome::Forced),
            outcome_reason: Some("host alpha: drain timeout".into()),
            max_parallel: 1,
            rollout: Default::default(),
            created_at: 1_700_000_000_000,
            finished_at: Some(1_700_000_002_000),
            hosts: vec![host(Some(ConnectionTally {
                handed_over: 12,
                drained: 3,
                cut: 1,
            }))],
        };
        let text = restart_text(&restart);
        assert!(text.starts_with("restart 3 of web: forced\n"), "{text}");
        assert!(
            text.contains(
                "+  1500ms  alpha: generation 1 drained: 12 connections handed over, 3 drained, 1 cut"
            ),
            "{text}"
        );
        assert!(
            text.contains("  alpha: connections: 12 handed over, 3 drained, 1 cut\n"),
            "{text}"
        );
    }
}
