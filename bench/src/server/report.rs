//! The markdown this bench prints, in the style of `baton-bench`'s: the
//! setup, one table per scenario, then the issue's targets with PASS or FAIL.

use std::fmt::Write as _;
use std::time::Duration;

use super::scenarios::{PostToSpawn, RollingSummary, ThroughputRun};
use super::stats::{cpu_model, kernel_release, median, percentile, sorted};

const GET_SERVICES_TARGET: f64 = 20_000.0;
const POST_TO_SPAWN_TARGET: Duration = Duration::from_millis(5);
const ROLLING_OVERHEAD_TARGET: Duration = Duration::from_secs(1);

pub struct Setup {
    pub command: String,
    pub hosts: usize,
    pub services_per_host: usize,
    pub service_start: Duration,
    pub load_average_before: Option<String>,
    pub load_average_after: Option<String>,
}

pub struct Results {
    pub setup: Setup,
    /// `GET /services` first; the others are for comparison.
    pub throughput: Vec<ThroughputRun>,
    pub post_to_spawn: Option<PostToSpawn>,
    pub rolling: Option<RollingSummary>,
}

pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let setup = &results.setup;
    let _ = writeln!(out, "# baton-server-bench\n");
    let _ = writeln!(out, "```sh\n{}\n```\n", setup.command);
    let core_count = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "- Machine: {core_count} cores ({}), Linux {}. The server, the simulated hosts, the real agent and the HTTP load all run on it and share its cores.",
        cpu_model().unwrap_or_else(|| "unknown CPU".to_owned()),
        kernel_release().unwrap_or_else(|| "unknown".to_owned()),
    );
    let _ = writeln!(
        out,
        "- Load average (1, 5, 15 min) before: {}; after: {}.",
        setup.load_average_before.as_deref().unwrap_or("unknown"),
        setup.load_average_after.as_deref().unwrap_or("unknown"),
    );
    let _ = writeln!(
        out,
        "- Server: the release `baton-server` on a fresh SQLite file. Fleet: {} simulated hosts × {} services = {} services, each host a WebSocket client of `proto::link` on one bench thread: a status every second, connection counts that move every 5 s (as the real uplink reads them), and every restart command played as a real agent reports it (restart_started, generation_spawned, generation_ready, generation_draining, generation_exited, restart_finished, each batch followed by a status). A simulated service starts in {}.",
        setup.hosts,
        setup.services_per_host,
        setup.hosts * setup.services_per_host,
        humantime::format_duration(setup.service_start),
    );

    if !results.throughput.is_empty() {
        let _ = writeln!(out, "\n## GET throughput\n");
        let _ = writeln!(
            out,
            "Keep-alive connections, one request in flight each, viewer token; the client reads and counts every body byte (a gzipped body as sent, not unpacked). `GET /services` is served from a copy rendered once per change of the fleet and gzipped once per change for clients that accept gzip; the revalidating client sends the last `ETag` each connection saw as `If-None-Match` and gets a `304` while nothing changed (the simulated counts change about 20 times a second, so some answers are whole lists); `GET /services/svc-0` (one service on every host) is rendered per request; `GET /metrics` is a small body and no query; `GET /healthz` runs `SELECT 1` on the database. Cores are CPU time during the run divided by its length: bench is the load and the simulated hosts; interrupts (softirqs, where much of loopback TCP's receive work runs, charged to no process), other processes and the hypervisor's steal come from `/proc/stat`."
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| request | client | body | connections (client threads) | requests | of them 304 | req/s | p50 / p99 / max | server cores | bench cores | interrupts | other processes | steal |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for run in &results.throughput {
            let result = &run.result;
            let _ = writeln!(
                out,
                "| `GET {}` | {} | {} | {} ({}) | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                result.path,
                result.client.label(),
                bytes(result.body_bytes),
                run.connections,
                run.threads,
                result.requests,
                result.not_modified,
                result.per_second(),
                triple(&result.latencies),
                cores(run.server_cores),
                cores(run.bench_cores),
                cores(run.interrupt_cores),
                cores(run.other_cores),
                cores(run.steal_cores),
            );
        }
    }

    if let Some(post) = &results.post_to_spawn {
        let _ = writeln!(out, "\n## POST → spawn (one real agent, `baton-demo`)\n");
        let _ = writeln!(
            out,
            "Times are on the bench's clock: from sending the request to reading the agent's `generation_spawned` on a `events --follow` stream of its control socket (read by a thread blocked on it); the agent emits that event once the child has exec'd. Restarts through the server and through the control socket alternate; each waits for the previous one to end. One untimed round first."
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "| path | restarts | median | p90 | max |");
        let _ = writeln!(out, "|---|--:|--:|--:|--:|");
        let rows = [
            (
                "`POST /services/web/restart` → `generation_spawned`",
                &post.via_server,
            ),
            (
                "`POST /services/web/restart` → its `202`",
                &post.post_answer,
            ),
            (
                "control socket `restart` → `generation_spawned` (the agent alone)",
                &post.via_control,
            ),
            (
                "fork + exec of `baton-demo` by the bench, nothing else",
                &post.bare_spawn,
            ),
        ];
        for (name, samples) in rows {
            let sorted = sorted(samples);
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} |",
                sorted.len(),
                opt_ms(percentile(&sorted, 0.5)),
                opt_ms(percentile(&sorted, 0.9)),
                opt_ms(sorted.last().copied()),
            );
        }
        let _ = writeln!(
            out,
            "| the server's share (difference of medians) | {} | {} | | |",
            post.runs,
            opt_ms(server_share(post)),
        );
    }

    if let Some(rolling) = &results.rolling {
        let _ = writeln!(
            out,
            "\n## Rolling restart across {} hosts (`max_parallel` 1, `?wait=true`)\n",
            setup.hosts
        );
        let _ = writeln!(
            out,
            "Total: from sending the POST to reading its answer. Overhead: total minus {} hosts × the services' start time. A gap runs from a host sending its `restart_finished` to the next host reading its `restart` command.",
            setup.hosts
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| runs | outcome | total (median) | each run | overhead | per host | POST → first command | on a host, command → `restart_finished`, p50 | gap between hosts p50 / p99 / max | last `restart_finished` → answer |"
        );
        let _ = writeln!(out, "|--:|---|--:|---|--:|--:|--:|--:|--:|--:|");
        let outcomes: Vec<String> = rolling
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{} ({}/{} hosts)",
                    r.outcome.map_or("none", |o| o.as_str()),
                    r.hosts_succeeded,
                    r.hosts
                )
            })
            .collect();
        let each: Vec<String> = rolling.runs.iter().map(|r| ms(r.total)).collect();
        let overhead = rolling_overhead(rolling, setup);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
            rolling.runs.len(),
            outcomes.join(", "),
            ms(rolling.total),
            each.join(", "),
            ms(overhead),
            ms(overhead / setup.hosts.max(1) as u32),
            ms(rolling.first_command),
            ms(rolling.on_host_p50),
            ms(rolling.gap_p50),
            ms(rolling.gap_p99),
            ms(rolling.gap_max),
            ms(rolling.last_to_answer),
        );
    }

    write_targets(&mut out, results);
    out
}

fn write_targets(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | measured | limit | result |");
    let _ = writeln!(out, "|---|--:|--:|---|");
    let services = results.setup.hosts * results.setup.services_per_host;
    for run in results
        .throughput
        .iter()
        .filter(|run| run.result.path == "/services")
    {
        let rate = run.result.per_second();
        let _ = writeln!(
            out,
            "| `GET /services` per second, {services} services on {} hosts, {} client | {rate:.0} | > {GET_SERVICES_TARGET:.0} | {} |",
            results.setup.hosts,
            run.result.client.label(),
            mark(rate > GET_SERVICES_TARGET),
        );
    }
    if let Some(post) = &results.post_to_spawn
        && let Some(spawn) = median(post.via_server.iter().copied())
    {
        let _ = writeln!(
            out,
            "| `POST .../restart` → agent's spawn, median | {} | < {} | {} |",
            ms(spawn),
            ms(POST_TO_SPAWN_TARGET),
            mark(spawn < POST_TO_SPAWN_TARGET),
        );
    }
    if let Some(rolling) = &results.rolling {
        let overhead = rolling_overhead(rolling, &results.setup);
        let _ = writeln!(
            out,
            "| rolling restart of {} hosts, overhead beyond the services' start | {} | < {} | {} |",
            results.setup.hosts,
            ms(overhead),
            ms(ROLLING_OVERHEAD_TARGET),
            mark(overhead < ROLLING_OVERHEAD_TARGET),
        );
    }
}

fn rolling_overhead(rolling: &RollingSummary, setup: &Setup) -> Duration {
    rolling
        .total
        .saturating_sub(setup.service_start * setup.hosts as u32)
}

fn server_share(post: &PostToSpawn) -> Option<Duration> {
    let server = median(post.via_server.iter().copied())?;
    let control = median(post.via_control.iter().copied())?;
    Some(server.saturating_sub(control))
}

fn triple(sorted: &[Duration]) -> String {
    match (
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted.last(),
    ) {
        (Some(p50), Some(p99), Some(max)) => format!("{} / {} / {}", ms(p50), ms(p99), ms(*max)),
        _ => dash(),
    }
}

fn cores(cores: Option<f64>) -> String {
    cores.map_or_else(dash, |c| format!("{c:.2}"))
}

fn ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis >= 100.0 {
        format!("{millis:.0} ms")
    } else if millis >= 10.0 {
        format!("{millis:.1} ms")
    } else {
        format!("{millis:.2} ms")
    }
}

fn opt_ms(duration: Option<Duration>) -> String {
    duration.map_or_else(dash, ms)
}

fn bytes(count: u64) -> String {
    if count >= 10_000 {
        format!("{:.0} kB", count as f64 / 1000.0)
    } else {
        format!("{count} B")
    }
}

fn dash() -> String {
    "–".to_owned()
}

fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}
