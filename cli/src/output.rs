//! How the command line prints what the agent says.

use baton_proto::{
    AgentStatus, ConnectionTally, Event, EventKind, ReloadSummary, RestartReport, UnixMillis,
    now_millis,
};
use std::fmt::Write;
use std::time::Instant;

/// Writes to standard output; when the reader has gone (`baton events |
/// head`), the command ends at once with success and says nothing, as
/// there is nobody left to tell.
pub fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Anything else (a full disk behind a redirect) is worth a word.
        eprintln!("baton: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `HH:MM:SS.mmm` in UTC: CI logs are read next to other UTC timestamps.
pub fn clock(at: UnixMillis) -> String {
    let ms = at % 1000;
    let secs = at / 1000;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

pub fn step_line(event: &Event, started: Instant) -> String {
    format!(
        "{}  +{:>7.3}s  {}",
        clock(event.at),
        started.elapsed().as_secs_f64(),
        event.kind
    )
}

/// A step of a restart `--wait` follows; the drain's end adds what became
/// of the old generation's connections on a line of its own.
pub fn restart_step(event: &Event, started: Instant) -> String {
    let mut out = step_line(event, started);
    out.push('\n');
    if let EventKind::DrainFinished {
        handed_over,
        drained,
        cut,
        ..
    } = event.kind
    {
        let tally = ConnectionTally {
            handed_over,
            drained,
            cut,
        };
        let _ = writeln!(out, "connections: {tally}");
    }
    out
}

/// One line of a service's output: `21:33:25.123 [7 err] the text`.
pub fn output_line(line: &baton_proto::OutputLine) -> String {
    format!(
        "{} [{} {}] {}",
        clock(line.time),
        line.generation,
        line.stream.as_str(),
        line.text
    )
}

pub fn event_line(event: &Event) -> String {
    let restart = event
        .restart
        .map(|r| format!(" [restart {r}]"))
        .unwrap_or_default();
    format!(
        "{:>6}  {}  {}{restart}  {}",
        event.seq,
        clock(event.at),
        event.service,
        event.kind
    )
}

/// A generation's state, with how many of its instances are ready when it
/// runs several: `ready 3/4`.
fn generation_state(generation: &baton_proto::GenerationInfo) -> String {
    if generation.instances.is_empty() {
        return generation.state.to_string();
    }
    let ready = generation
        .instances
        .iter()
        .filter(|i| i.state == baton_proto::InstanceState::Ready)
        .count();
    format!(
        "{} {ready}/{}",
        generation.state,
        generation.instances.len()
    )
}

fn age(since: UnixMillis) -> String {
    let secs = now_millis().saturating_sub(since) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

pub fn status_table(status: &AgentStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host {} (agent {}, pid {})",
        status.host, status.agent_version, status.pid
    );
    let _ = writeln!(
        out,
        "{:<20} {:<14} {:>5} {:>8} {:<10} {:>6} {:>9} {:>8} {:<12} {:<16}  LAST RESTART",
        "SERVICE", "STATE", "GEN", "PID", "UPTIME", "CONNS", "MEM", "CPU", "GEN STATE", "VERSION"
    );
    for service in &status.services {
        let last = service
            .last_restart
            .as_ref()
            .map(|r| match r.outcome {
                Some(outcome) => format!("#{} {outcome} {} ago", r.id, age(r.started_at)),
                None => format!("#{} running", r.id),
            })
            .unwrap_or_else(|| "-".into());
        if service.generations.is_empty() {
            let _ = writeln!(
                out,
                "{:<20} {:<14} {:>5} {:>8} {:<10} {:>6} {:>9} {:>8} {:<12} {:<16}  {last}",
                service.name,
                service.state.to_string(),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            );
        }
        for generation in &service.generations {
            let _ = writeln!(
                out,
                "{:<20} {:<14} {:>5} {:>8} {:<10} {:>6} {:>9} {:>8} {:<12} {:<16}  {last}",
                service.name,
                service.state.to_string(),
                generation.generation,
                generation.main_pid(),
                age(generation.started_at),
                generation
                    .connections
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                generation.memory_bytes.map_or_else(|| "?".into(), memory),
                generation.cpu_usec.map_or_else(|| "?".into(), cpu_time),
                generation_state(generation),
                version_cell(generation.program.as_ref())
            );
            for instance in &generation.instances {
                let _ = writeln!(
                    out,
                    "  instance {:<3} {:<9} pid {:<8} ready for {:<10} restarts {}",
                    instance.index,
                    instance.state.to_string(),
                    instance
                        .pid
                        .map_or_else(|| "-".into(), |pid| pid.to_string()),
                    instance.ready_at.map_or_else(|| "-".into(), age),
                    instance.restarts
                );
            }
        }
    }
    for service in &status.services {
        if let Some(reason) = &service.blocked {
            let _ = writeln!(out, "{} does not run: {reason}", service.name);
        }
        if let Some(next) = &service.next_start {
            let _ = writeln!(out, "warning: {}: {}", service.name, next.warning());
        }
    }
    if status.process_tracking == Some(baton_proto::ProcessTracking::Session) {
        let _ = writeln!(
            out,
            "warning: no writable cgroup v2 hierarchy; a process that starts a session of its own is traced back to its generation by its ancestry or its BATON_* environment, but one that also cleared its environment escapes its generation and is not stopped with it"
        );
    }
    for process in &status.untracked {
        let _ = writeln!(
            out,
            "warning: process {} ({}) was left to the agent by no generation it can trace; it is not tracked or stopped",
            process.pid, process.command
        );
    }
    if status.notify_strangers > 0 {
        let _ = writeln!(
            out,
            "{} notify message(s) from processes of no generation ignored",
            status.notify_strangers
        );
    }
    if status.restart_requests_refused > 0 {
        let _ = writeln!(
            out,
            "{} restart request(s) from generations refused (not the serving generation, a restart running, or sooner than 10 s after the last one)",
            status.restart_requests_refused
        );
    }
    if let Some(link) = &status.server_link {
        let _ = writeln!(out, "{}", server_link_line(link));
    }
    out
}

/// Which server the agent is linked to, or tries now (and its place among
/// the servers it tries in turn).
fn server_link_line(link: &baton_proto::ServerLink) -> String {
    let place = match link.urls.iter().position(|url| *url == link.url) {
        Some(index) if link.urls.len() > 1 => {
            format!(", server {} of {}", index + 1, link.urls.len())
        }
        _ => String::new(),
    };
    if link.linked {
        format!(
            "server: linked to {} for {}{place}",
            link.url,
            age(link.since)
        )
    } else {
        format!(
            "server: not linked; trying {} for {}{place}",
            link.url,
            age(link.since)
        )
    }
}

pub use baton_proto::units::bytes as memory;

/// The VERSION column: the declared version, else the short build id or
/// hash; at most 16 characters, so the table keeps its shape.
pub fn version_cell(program: Option<&baton_proto::Program>) -> String {
    let label = program.map_or_else(|| "-".to_string(), |p| p.label());
    match label.char_indices().nth(15) {
        Some((cut, _)) => format!("{}~", &label[..cut]),
        None => label,
    }
}

/// CPU time: `0.42s`, `75.3s`, `12m05s`, `3h07m`.
pub fn cpu_time(usec: u64) -> String {
    let secs = usec / 1_000_000;
    match secs {
        0..10 => format!("{:.2}s", usec as f64 / 1e6),
        10..600 => format!("{:.1}s", usec as f64 / 1e6),
        600..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs / 60) % 60),
    }
}

pub fn reload(summary: &ReloadSummary) -> String {
    let mut out = String::new();
    let lists = [
        ("added", &summary.added),
        ("removed", &summary.removed),
        ("restarted", &summary.changed),
        ("carried over", &summary.carried),
    ];
    for (what, names) in lists {
        if !names.is_empty() {
            let _ = writeln!(out, "{what}: {}", names.join(", "));
        }
    }
    if out.is_empty() {
        out.push_str("reloaded; nothing changed\n");
    }
    out
}

/// `generation 7: 1.4.2 → 1.4.3`, with each side's files when the
/// versions alone do not tell them apart.
pub fn versions_line(new_generation: Option<u64>, versions: &baton_proto::VersionChange) -> String {
    let mut line = match new_generation {
        Some(generation) => format!("generation {generation}: {}", versions.arrow()),
        None => versions.arrow(),
    };
    if let Some(to) = &versions.to {
        let path = to.script.as_deref().unwrap_or(&to.executable);
        line.push_str(&format!(" ({path}"));
        if let Some(id) = to.short_id() {
            line.push_str(&format!(", {id}"));
        }
        line.push(')');
    }
    line
}

pub fn report(report: &RestartReport) -> String {
    let mut out = String::new();
    let outcome = report
        .outcome
        .map(|o| o.to_string())
        .unwrap_or_else(|| "running".into());
    let _ = writeln!(
        out,
        "restart {} of {}: {outcome}",
        report.id, report.service
    );
    if let Some(reason) = &report.outcome_reason {
        let _ = writeln!(out, "  {reason}");
    }
    if let Some(versions) = &report.versions {
        let _ = writeln!(
            out,
            "  {}",
            versions_line(report.new_generation, versions.as_ref())
        );
    }
    if let Some(tally) = &report.connections {
        let _ = writeln!(out, "  connections: {tally}");
    }
    for step in &report.steps {
        let offset = step.at.saturating_sub(report.started_at);
        let _ = writeln!(out, "  {}  +{:>6}ms  {}", clock(step.at), offset, step.kind);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        // 2023-11-14T22:13:20.123Z
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123");
    }

    #[test]
    fn the_end_of_a_drain_and_a_report_say_what_became_of_the_connections() {
        let kind = EventKind::DrainFinished {
            generation: 4,
            handed_over: 12,
            drained: 3,
            cut: 0,
        };
        let event = Event {
            seq: 9,
            at: 1_700_000_000_123,
            service: "web".into(),
            restart: Some(2),
            kind: kind.clone(),
        };
        let step = restart_step(&event, Instant::now());
        assert!(
            step.ends_with("\nconnections: 12 handed over, 3 drained, 0 cut\n"),
            "{step}"
        );
        let report = RestartReport {
            id: 2,
            service: "web".into(),
            reason: None,
            started_at: 1_700_000_000_000,
            finished_at: Some(1_700_000_000_200),
            outcome: Some(baton_proto::RestartOutcome::Succeeded),
            outcome_reason: None,
            old_generation: Some(4),
            new_generation: Some(5),
            connections_cut: None,
            connections: Some(ConnectionTally {
                handed_over: 12,
                drained: 3,
                cut: 0,
            }),
            steps: vec![event],
            versions: None,
            output_tail: Vec::new(),
        };
        let shown = super::report(&report);
        assert!(
            shown.contains("\n  connections: 12 handed over, 3 drained, 0 cut\n"),
            "{shown}"
        );
        // Any other step is one line.
        let other = Event {
            kind: EventKind::HandoffBrokered {
                from_generation: 4,
                to_generation: 5,
            },
            ..report.steps[0].clone()
        };
        assert_eq!(restart_step(&other, Instant::now()).lines().count(), 1);
    }

    #[test]
    fn the_status_says_which_server_the_agent_is_linked_to() {
        let urls = vec!["http://a:8080".to_string(), "http://b:8080".to_string()];
        let linked = baton_proto::ServerLink {
            url: "http://b:8080".into(),
            linked: true,
            since: now_millis() - 65_000,
            urls: urls.clone(),
        };
        assert_eq!(
            server_link_line(&linked),
            "server: linked to http://b:8080 for 1m 5s, server 2 of 2"
        );
        let trying = baton_proto::ServerLink {
            url: "http://a:8080".into(),
            linked: false,
            since: now_millis(),
            urls: vec!["http://a:8080".into()],
        };
        assert_eq!(
            server_link_line(&trying),
            "server: not linked; trying http://a:8080 for 0s"
        );
    }

    #[test]
    fn cpu_time_reads_at_a_glance() {
        assert_eq!(cpu_time(420_000), "0.42s");
        assert_eq!(cpu_time(75_300_000), "75.3s");
        assert_eq!(cpu_time(725_000_000), "12m05s");
        assert_eq!(cpu_time(11_220_000_000), "3h07m");
    }
}
