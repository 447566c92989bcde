//! The markdown the bench prints: what was run, the tables, and the targets
//! of the issue with a PASS or FAIL each.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cli::Scenario;
use crate::handoff::IdleHandoff;
use crate::many_services::ManyServices;
use crate::memory::Memory;
use crate::overhead::Overhead;
use crate::stats::{Latencies, LoadStats, median};
use crate::under_load::LoadSettings;

/// A restart may make the whole run's p99 at most this much worse.
const P99_RATIO_LIMIT: f64 = 1.5;
const OVERHEAD_LIMIT: Duration = Duration::from_millis(5);
const MEMORY_LIMIT_BYTES: u64 = 15_000_000;
/// The targets of many services on one agent (issue 10, section 5).
const MANY_IDLE_CPU_LIMIT: f64 = 0.02;
const MANY_STATUS_LIMIT: Duration = Duration::from_millis(300);
const MANY_HELLO_LIMIT: Duration = Duration::from_secs(1);
const MANY_RESTART_ALL_LIMIT: Duration = Duration::from_secs(30);
const MANY_MEMORY_LIMIT_BYTES: u64 = 40_000_000;
/// The server's limit on one frame from an agent.
const FRAME_LIMIT_BYTES: usize = 1024 * 1024;
/// Connection handoff (issue 11): the old generation's time per connection,
/// and a restart handing over `--idle-connections` idle ones.
const HANDOFF_PER_CONNECTION_LIMIT: Duration = Duration::from_micros(50);
const HANDOFF_IDLE_RESTART_LIMIT: Duration = Duration::from_secs(1);

pub struct Results {
    pub settings: LoadSettings,
    pub runs: u32,
    pub warmup_nice: i32,
    pub load: Vec<(Scenario, LoadStats)>,
    pub overhead: Option<Overhead>,
    pub memory: Option<Memory>,
    pub many_services: Vec<ManyServices>,
    /// One table each: a run hands over thousands of connections.
    pub idle_handoffs: Vec<IdleHandoff>,
    /// `/proc/loadavg`'s first three fields before and after the scenarios,
    /// to tell a quiet machine from one that was busy with something else.
    pub load_average_before: Option<String>,
    pub load_average_after: Option<String>,
}

pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let baseline = results
        .load
        .iter()
        .find(|(scenario, _)| *scenario == Scenario::Baseline)
        .map(|(_, stats)| stats);

    let _ = writeln!(out, "# baton-bench\n");
    write_setup(&mut out, results);

    if !results.load.is_empty() {
        let _ = writeln!(out, "\n## Restarts under load\n");
        let _ = writeln!(
            out,
            "| scenario | restarts | outcomes | restart window (median) | requests ok | failed | req/s | req/s vs baseline |"
        );
        let _ = writeln!(out, "|---|--:|---|--:|--:|---|--:|--:|");
        for (scenario, stats) in &results.load {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} |",
                scenario.name(),
                stats.restarts,
                outcomes(stats),
                stats.window.map_or_else(dash, ms),
                stats.ok,
                failures(stats),
                stats.requests_per_second,
                baseline.map_or_else(dash, |b| ratio(
                    stats.requests_per_second,
                    b.requests_per_second
                )),
            );
        }

        let _ = writeln!(out, "\n## Connections through restarts\n");
        let _ = writeln!(
            out,
            "| scenario | connections the load generator opened again | handed over | drained | cut |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|");
        for (scenario, stats) in &results.load {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                scenario.name(),
                stats.reconnects,
                stats.connections.handed_over,
                stats.connections.drained,
                stats.connections.cut,
            );
        }

        let _ = writeln!(out, "\n## Latency and stalls\n");
        let _ = writeln!(
            out,
            "| scenario | restart windows p50 / p99 / max | steady state p50 / p99 / max | whole run p99 | p99 vs baseline | longest gap, restart windows | longest gap, steady state | gap vs baseline's longest |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|");
        for (scenario, stats) in &results.load {
            let whole_p99 = stats.whole_run.map(|l| l.p99);
            let worst_gap = stats.gap_in_restarts.unwrap_or(stats.gap_steady);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                scenario.name(),
                triple(stats.in_restarts),
                triple(stats.steady),
                whole_p99.map_or_else(dash, ms),
                match (whole_p99, baseline.and_then(|b| b.whole_run)) {
                    (Some(p99), Some(base)) => ratio_durations(p99, base.p99),
                    _ => dash(),
                },
                stats.gap_in_restarts.map_or_else(dash, ms),
                ms(stats.gap_steady),
                baseline.map_or_else(dash, |b| ratio_durations(worst_gap, b.gap_steady)),
            );
        }
    }

    if let Some(overhead) = &results.overhead {
        let _ = writeln!(out, "\n## Agent overhead per restart (no load)\n");
        let _ = writeln!(
            out,
            "| restarts | outcomes | command → ready via agent, median / p90 | service alone, exec → READY=1, median / p90 | agent overhead (difference of medians) | agent's own spawn → ready, median |"
        );
        let _ = writeln!(out, "|--:|---|--:|--:|--:|--:|");
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} | {} / {} | {} | {} |",
            overhead.restarts,
            join_counts(overhead.outcomes.iter().map(|(k, v)| (k.as_str(), *v))),
            ms(overhead.via_agent),
            ms(overhead.via_agent_p90),
            ms(overhead.standalone),
            ms(overhead.standalone_p90),
            ms(overhead.per_restart()),
            ms(overhead.agent_reported_startup),
        );
    }

    if let Some(memory) = &results.memory {
        let _ = writeln!(out, "\n## Agent memory\n");
        let _ = writeln!(
            out,
            "| services | VmRSS, all ready | VmRSS, after one restart of each | VmHWM (peak) |"
        );
        let _ = writeln!(out, "|--:|--:|--:|--:|");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            memory.services,
            megabytes(memory.after_start),
            megabytes(memory.after_restarts),
            megabytes(memory.peak),
        );
    }

    for many in &results.many_services {
        write_many_services(&mut out, many);
    }
    for idle in &results.idle_handoffs {
        write_idle_handoff(&mut out, idle);
    }

    write_targets(&mut out, results, baseline);
    out
}

fn write_many_services(out: &mut String, many: &ManyServices) {
    let _ = writeln!(
        out,
        "\n## Many services on one agent ({} `baton-demo` services, linked to a server)\n",
        many.services
    );
    let _ = writeln!(out, "| measure | value |");
    let _ = writeln!(out, "|---|--:|");
    let rows = [
        (
            "agent start → every service ready".to_owned(),
            seconds(many.all_ready),
        ),
        (
            "agent start → host online on the server".to_owned(),
            seconds(many.online_after_start),
        ),
        (
            "idle CPU, every service ready (share of one core)".to_owned(),
            percent(many.idle_cpu),
        ),
        (
            "idle CPU, after restarting every service".to_owned(),
            percent(many.idle_cpu_after_restarts),
        ),
        (
            "host online on the server, 1 s samples while idle".to_owned(),
            format!("{} of {}", many.online_samples.0, many.online_samples.1),
        ),
        (
            "links the server closed before its restart (reasons)".to_owned(),
            if many.link_drops.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({})", many.link_drops.len(), many.link_drops.join("; "))
            },
        ),
        (
            format!(
                "`baton status`, whole command, {} runs each counting afresh: median / max",
                many.status_times.len()
            ),
            format!("{} / {}", ms(many.status_median()), ms(many.status_max())),
        ),
        (
            "status through the control socket alone (no command line): median / max".to_owned(),
            format!(
                "{} / {}",
                ms(median(many.socket_status_times.iter().copied()).unwrap_or_default()),
                ms(many
                    .socket_status_times
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or_default())
            ),
        ),
        (
            "restart every service one after another, each to its end".to_owned(),
            format!(
                "{} ({})",
                seconds(many.restart_all),
                join_counts(many.restart_outcomes.iter().map(|(k, v)| (k.as_str(), *v)))
            ),
        ),
        (
            "link hello: building it → the server's welcome (agent's log)".to_owned(),
            many.hello.map_or_else(dash, ms),
        ),
        (
            "server restarted → host online (includes the agent's reconnect backoff)".to_owned(),
            seconds(many.online_after_server_restart),
        ),
        (
            "agent VmRSS after the restarts".to_owned(),
            megabytes(many.rss),
        ),
        ("agent VmHWM (peak)".to_owned(), megabytes(many.peak_rss)),
        (
            "status frame to the server, every service restarted once".to_owned(),
            kibibytes(many.status_frame_bytes),
        ),
        (
            "the same with each last restart and its steps, as sent before".to_owned(),
            kibibytes(many.status_frame_bytes_with_steps),
        ),
    ];
    for (measure, value) in rows {
        let _ = writeln!(out, "| {measure} | {value} |");
    }
}

fn write_setup(out: &mut String, results: &Results) {
    let settings = &results.settings;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "- Machine: {} cores ({}), Linux {}, `{}` build. The agent, the services and the load generator all run on it and compete for the same cores; the load generator drives every connection from one thread.",
        cores,
        cpu_model().unwrap_or_else(|| "unknown CPU".to_owned()),
        kernel_release().unwrap_or_else(|| "unknown".to_owned()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    let _ = writeln!(
        out,
        "- Load average (1, 5, 15 min) before: {}; after: {}. Anything else running on the machine during the bench skews every number.",
        results.load_average_before.as_deref().unwrap_or("unknown"),
        results.load_average_after.as_deref().unwrap_or("unknown"),
    );
    if results.load.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "- Load: {} keep-alive connections, one request in flight each, `GET /` on `baton-demo --warmup {}` (a warm-up that burns every core before READY=1); {} per scenario, a restart every {}.",
        settings.connections,
        humantime::format_duration(settings.warmup),
        humantime::format_duration(settings.duration),
        humantime::format_duration(settings.restart_every),
    );
    let _ = writeln!(
        out,
        "- Scenarios: `baseline` agent, no restarts; `agent` hot restarts through the control socket; `agent+nice` the same with `warmup_nice = {}`; `naive` no agent, SIGTERM, wait for the exit, start a process that binds the port itself.",
        results.warmup_nice
    );
    let _ = writeln!(
        out,
        "- A restart window runs from the restart command (naive: the SIGTERM) to the end of the restart (agent: its report, after the old generation exited; naive: the new process's READY=1). Restart-window latencies are those of requests in flight at any moment of a window; steady state is every other request. A gap is the time between two consecutive responses across all connections."
    );
    if results.runs > 1 {
        let _ = writeln!(
            out,
            "- {} runs: counts (requests, failures, restarts) are totals; rates, latencies, gaps and memory are medians of the runs.",
            results.runs
        );
    }
}

fn write_targets(out: &mut String, results: &Results, baseline: Option<&LoadStats>) {
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | scenario | measured | limit | result |");
    let _ = writeln!(out, "|---|---|--:|--:|---|");
    for (scenario, stats) in &results.load {
        if !matches!(
            scenario,
            Scenario::Agent | Scenario::AgentNice | Scenario::Handoff
        ) {
            continue;
        }
        let name = scenario.name();
        if *scenario == Scenario::Handoff {
            let _ = writeln!(
                out,
                "| no connection closed | {name} | {} reopened, {} cut | 0 | {} |",
                stats.reconnects,
                stats.connections.cut,
                mark(stats.reconnects == 0 && stats.connections.cut == 0)
            );
        }
        let _ = writeln!(
            out,
            "| no failed request | {name} | {} over {} restarts | 0 | {} |",
            stats.failed,
            stats.restarts,
            mark(stats.failed == 0)
        );
        // Without a baseline, the run's own steady state is the reference.
        let (reference, reference_name) = match baseline {
            Some(b) => (b.gap_steady, "baseline's longest gap"),
            None => (stats.gap_steady, "own steady state's longest gap"),
        };
        if let Some(gap) = stats.gap_in_restarts {
            let _ = writeln!(
                out,
                "| no client stall | {name} | longest gap {} | ≤ {} ({reference_name}) | {} |",
                ms(gap),
                ms(reference),
                mark(gap <= reference)
            );
        }
        if let (Some(whole), Some(base)) = (stats.whole_run, baseline.and_then(|b| b.whole_run)) {
            let limit = base.p99.mul_f64(P99_RATIO_LIMIT);
            let _ = writeln!(
                out,
                "| p99 within {P99_RATIO_LIMIT}x of no restarts | {name} | {} ({}) | ≤ {} | {} |",
                ms(whole.p99),
                ratio_durations(whole.p99, base.p99),
                ms(limit),
                mark(whole.p99 <= limit)
            );
        }
    }
    if let Some(overhead) = &results.overhead {
        let _ = writeln!(
            out,
            "| agent overhead per restart | overhead | {} | < {} | {} |",
            ms(overhead.per_restart()),
            ms(OVERHEAD_LIMIT),
            mark(overhead.per_restart() < OVERHEAD_LIMIT)
        );
    }
    for many in &results.many_services {
        write_many_services_targets(out, many);
    }
    for idle in &results.idle_handoffs {
        write_idle_handoff_targets(out, idle);
    }
    if let Some(memory) = &results.memory {
        let worst = memory.after_start.max(memory.after_restarts);
        let _ = writeln!(
            out,
            "| agent resident memory with {} services | memory | {} | < {} | {} |",
            memory.services,
            megabytes(worst),
            megabytes(MEMORY_LIMIT_BYTES),
            mark(worst < MEMORY_LIMIT_BYTES)
        );
    }
}

/// The figures of issue 10 with the agent before one count served every
/// service (same machine), for 1,000 services.
fn many_services_before(services: usize, target: &str) -> &'static str {
    if services != 1000 {
        return "–";
    }
    match target {
        "cpu" => "67 %",
        "status" => "33.5 s",
        "hello" => "never linked",
        "online" => "never",
        _ => "–",
    }
}

fn write_many_services_targets(out: &mut String, many: &ManyServices) {
    let n = many.services;
    let name = "many-services";
    let idle = many.idle_cpu.max(many.idle_cpu_after_restarts);
    let _ = writeln!(
        out,
        "| idle agent CPU, {n} services (worse of the two windows; before: {}) | {name} | {} | < {} | {} |",
        many_services_before(n, "cpu"),
        percent(idle),
        percent(MANY_IDLE_CPU_LIMIT),
        mark(idle < MANY_IDLE_CPU_LIMIT)
    );
    let _ = writeln!(
        out,
        "| `baton status`, median / max (before: {}) | {name} | {} / {} | < {} | {} |",
        many_services_before(n, "status"),
        ms(many.status_median()),
        ms(many.status_max()),
        ms(MANY_STATUS_LIMIT),
        mark(many.status_max() < MANY_STATUS_LIMIT)
    );
    let _ = writeln!(
        out,
        "| link hello round trip (before: {}) | {name} | {} | < {} | {} |",
        many_services_before(n, "hello"),
        many.hello.map_or_else(dash, ms),
        ms(MANY_HELLO_LIMIT),
        mark(many.hello.is_some_and(|hello| hello < MANY_HELLO_LIMIT))
    );
    let (up, sampled) = many.online_samples;
    let _ = writeln!(
        out,
        "| link online while idle (before: {}) | {name} | {up} of {sampled} samples | all | {} |",
        many_services_before(n, "online"),
        mark(up == sampled)
    );
    let _ = writeln!(
        out,
        "| restart all {n}, one after another | {name} | {} | < {} | {} |",
        seconds(many.restart_all),
        seconds(MANY_RESTART_ALL_LIMIT),
        mark(many.restart_all < MANY_RESTART_ALL_LIMIT)
    );
    let _ = writeln!(
        out,
        "| agent resident memory, {n} services | {name} | {} | < {} | {} |",
        megabytes(many.rss),
        megabytes(MANY_MEMORY_LIMIT_BYTES),
        mark(many.rss < MANY_MEMORY_LIMIT_BYTES)
    );
    let _ = writeln!(
        out,
        "| status frame to the server | {name} | {} ({:.0} % of the limit) | < {} | {} |",
        kibibytes(many.status_frame_bytes),
        many.status_frame_bytes as f64 * 100.0 / FRAME_LIMIT_BYTES as f64,
        kibibytes(FRAME_LIMIT_BYTES),
        mark(many.status_frame_bytes < FRAME_LIMIT_BYTES)
    );
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn percent(share: f64) -> String {
    format!("{:.2} %", share * 100.0)
}

fn kibibytes(bytes: usize) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn outcomes(stats: &LoadStats) -> String {
    if stats.outcomes.is_empty() {
        return dash();
    }
    join_counts(stats.outcomes.iter().map(|(k, v)| (k.as_str(), *v)))
}

fn failures(stats: &LoadStats) -> String {
    if stats.failed == 0 {
        return "0".to_owned();
    }
    format!(
        "{} ({})",
        stats.failed,
        join_counts(stats.failures.iter().map(|(k, v)| (k.as_str(), *v)))
    )
}

fn join_counts<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    counts
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn triple(latencies: Option<Latencies>) -> String {
    latencies.map_or_else(dash, |l| {
        format!("{} / {} / {}", ms(l.p50), ms(l.p99), ms(l.max))
    })
}

/// Milliseconds with as many decimals as the size deserves.
fn ms(duration: Duration) -> String {
    let value = duration.as_secs_f64() * 1000.0;
    if value < 10.0 {
        format!("{value:.2} ms")
    } else if value < 100.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.0} ms")
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn ratio(value: f64, reference: f64) -> String {
    if reference <= 0.0 {
        return dash();
    }
    format!("{:.2}x", value / reference)
}

fn ratio_durations(value: Duration, reference: Duration) -> String {
    ratio(value.as_secs_f64(), reference.as_secs_f64())
}

fn mark(pass: bool) -> String {
    if pass { "PASS" } else { "FAIL" }.to_owned()
}

fn dash() -> String {
    "–".to_owned()
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

pub fn load_average() -> Option<String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|release| release.trim().to_owned())
}

fn write_idle_handoff(out: &mut String, idle: &IdleHandoff) {
    let _ = writeln!(
        out,
        "\n## {} idle keep-alive connections handed over in one restart\n",
        idle.connections
    );
    let _ = writeln!(out, "| measure | value |");
    let _ = writeln!(out, "|---|--:|");
    let tally = idle.tally.map_or_else(dash, |t| t.to_string());
    let rows = [
        ("outcome".to_owned(), idle.outcome.clone()),
        ("restart command → report".to_owned(), ms(idle.restart)),
        ("connections (the agent's tally)".to_owned(), tally),
        (
            "handoff brokered → old generation done (agent's clock, ms events)".to_owned(),
            idle.handoff.map_or_else(dash, |(span, _)| ms(span)),
        ),
        (
            "per connection handed over".to_owned(),
            idle.per_connection().map_or_else(dash, micros),
        ),
        (
            "connections answering afterwards / from the new generation".to_owned(),
            format!(
                "{} / {} of {}",
                idle.answered_after, idle.from_new_generation, idle.connections
            ),
        ),
    ];
    for (measure, value) in rows {
        let _ = writeln!(out, "| {measure} | {value} |");
    }
}

fn write_idle_handoff_targets(out: &mut String, idle: &IdleHandoff) {
    let n = idle.connections;
    let _ = writeln!(
        out,
        "| restart with {n} idle keep-alive connections | handoff-idle | {} | < {} | {} |",
        ms(idle.restart),
        ms(HANDOFF_IDLE_RESTART_LIMIT),
        mark(idle.outcome == "succeeded" && idle.restart < HANDOFF_IDLE_RESTART_LIMIT)
    );
    if let Some(per) = idle.per_connection() {
        let _ = writeln!(
            out,
            "| handoff cost per connection | handoff-idle | {} | < {} | {} |",
            micros(per),
            micros(HANDOFF_PER_CONNECTION_LIMIT),
            mark(per < HANDOFF_PER_CONNECTION_LIMIT)
        );
    } else {
        let _ = writeln!(
            out,
            "| handoff cost per connection | handoff-idle | nothing handed over | < {} | {} |",
            micros(HANDOFF_PER_CONNECTION_LIMIT),
            mark(false)
        );
    }
    let _ = writeln!(
        out,
        "| every connection answers from the new generation | handoff-idle | {} of {n} | {n} | {} |",
        idle.from_new_generation,
        mark(idle.from_new_generation == n)
    );
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(ms(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(ms(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(ms(Duration::from_micros(512_345)), "512 ms");
    }
}
