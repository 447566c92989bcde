//! The markdown this bench prints: the setup, one table whose rows are the
//! measurements and whose columns are the setups, then the issue's targets
//! with PASS or FAIL.

use std::fmt::Write as _;
use std::time::Duration;

use super::scenarios::{KillRun, PageRun, RollingRun, Split};
use super::stats::{Memory, cpu_model, kernel_release, percentile};

const ROLLING_OVERHEAD_TARGET: Duration = Duration::from_secs(2);
const RESUME_TARGET: Duration = Duration::from_secs(5);

pub struct Setup {
    pub command: String,
    pub profile: &'static str,
    pub hosts: usize,
    pub services_per_host: usize,
    pub service_start: Duration,
    pub max_parallel: u32,
    pub postgres_version: Option<String>,
    pub load_average_before: Option<String>,
    pub load_average_after: Option<String>,
}

/// What one setup measured; a measurement not taken is `None` or empty.
pub struct Column {
    pub name: String,
    pub servers: usize,
    /// Why the setup stopped early, if it did.
    pub error: Option<String>,
    pub memory_settled: Vec<Option<Memory>>,
    pub memory_end: Vec<Option<Memory>>,
    pub pages: Option<PageRun>,
    /// Sorted.
    pub post_to_link_holder: Vec<Duration>,
    /// Sorted; only with several servers.
    pub post_to_another: Vec<Duration>,
    pub rolling: Option<RollingRun>,
    pub kill: Option<KillRun>,
}

impl Column {
    pub fn new(name: impl Into<String>, servers: usize) -> Column {
        Column {
            name: name.into(),
            servers,
            error: None,
            memory_settled: Vec::new(),
            memory_end: Vec::new(),
            pages: None,
            post_to_link_holder: Vec::new(),
            post_to_another: Vec::new(),
            rolling: None,
            kill: None,
        }
    }

    /// The rollout whose driver was killed did not finish with every host
    /// restarted, or some host restarted twice for it: the bench fails.
    pub fn broken(&self) -> bool {
        self.error.is_some() || self.kill.as_ref().is_some_and(|k| !k.sound())
    }
}

pub fn render(setup: &Setup, columns: &[Column]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# baton-server-bench\n");
    let _ = writeln!(out, "```sh\n{}\n```\n", setup.command);
    let core_count = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "- Machine: {core_count} cores ({}), Linux {}. The servers, PostgreSQL, the simulated hosts and the HTTP load all run on it and share its cores.",
        cpu_model().unwrap_or_else(|| "unknown CPU".to_owned()),
        kernel_release().unwrap_or_else(|| "unknown".to_owned()),
    );
    let postgres = match &setup.postgres_version {
        Some(version) => format!(
            "PostgreSQL {version}, started by the bench (`initdb` in a temporary folder, `fsync` off), a fresh database per setup."
        ),
        None => "No PostgreSQL.".to_owned(),
    };
    let _ = writeln!(
        out,
        "- Build: {} (`baton-server` and this bench). {postgres}",
        setup.profile,
    );
    let _ = writeln!(
        out,
        "- Load average (1, 5, 15 min) before: {}; after: {}.",
        setup.load_average_before.as_deref().unwrap_or("unknown"),
        setup.load_average_after.as_deref().unwrap_or("unknown"),
    );
    let _ = writeln!(
        out,
        "- Fleet: {} simulated hosts × {} services = {} services. Each host is a WebSocket client of `proto::link` on one bench thread (a status every second, every restart command played as an agent reports it, events resent after a new link's welcome, reports answered); it knows every server's URL, links to server `i % n` first and to the next one when its link drops. A simulated service starts in {}. Rolling restarts: `max_parallel` {}.",
        setup.hosts,
        setup.services_per_host,
        setup.hosts * setup.services_per_host,
        humantime::format_duration(setup.service_start),
        setup.max_parallel,
    );
    let _ = writeln!(out);

    let _ = write!(out, "| measurement |");
    for column in columns {
        let _ = write!(out, " {} |", column.name);
    }
    let _ = write!(out, "\n|---|");
    for _ in columns {
        let _ = write!(out, "--:|");
    }
    let _ = writeln!(out);
    let mut row = |name: &str, cell: &dyn Fn(&Column) -> String| {
        let _ = write!(out, "| {name} |");
        for column in columns {
            let _ = write!(out, " {} |", cell(column));
        }
        let _ = writeln!(out);
    };
    row("servers", &|c| match c.servers {
        1 => "1".to_owned(),
        n => format!("{n} replicas"),
    });
    row(
        "memory per server once linked and settled, `VmRSS` (`VmHWM`)",
        &|c| memories(&c.memory_settled),
    );
    row("memory per server at the end, `VmRSS` (`VmHWM`)", &|c| {
        memories(&c.memory_end)
    });
    row("`GET /services?page=N` per second", &|c| {
        c.pages.as_ref().map_or_else(dash, |p| {
            format!(
                "{:.0} ({} pages of {}, up to {} gzipped, {} connections)",
                p.result.per_second(),
                p.pages,
                p.per_page,
                kb(p.result.body_bytes),
                p.connections
            )
        })
    });
    row("`GET /services?page=N` latency p50 / p99", &|c| {
        c.pages
            .as_ref()
            .map_or_else(dash, |p| pair(&p.result.latencies))
    });
    row("cores during the `GET` load: servers / bench", &|c| {
        c.pages.as_ref().map_or_else(dash, |p| {
            format!("{} / {}", cores(p.server_cores), cores(p.bench_cores))
        })
    });
    row(
        "`POST /services/{svc}/restart` (one host) → the host reads the command, median / p99: to the server holding its link",
        &|c| samples(&c.post_to_link_holder),
    );
    row(
        "the same, to another replica (through the `host_commands` outbox)",
        &|c| samples(&c.post_to_another),
    );
    row("rolling restart of every host: total", &|c| {
        c.rolling.as_ref().map_or_else(dash, |r| {
            format!(
                "{} ({}, {}/{} hosts succeeded{})",
                ms(r.total),
                r.outcome.map_or("no outcome", |o| o.as_str()),
                r.hosts_succeeded,
                r.hosts,
                others(&r.others)
            )
        })
    });
    row(
        "the hosts' own time (their measured restarts, `max_parallel` at a time; ideal ⌈hosts / max_parallel⌉ × start)",
        &|c| {
            c.rolling.as_ref().map_or_else(dash, |r| {
                format!("{} (ideal {})", ms(r.on_hosts), ms(r.on_hosts_ideal))
            })
        },
    );
    row(
        "control-plane overhead (total − the hosts' own time)",
        &|c| c.rolling.as_ref().map_or_else(dash, |r| ms(r.overhead())),
    );
    row(
        "per host, median: server records the command → host reads it (linked to the driving server / to another)",
        &|c| c.rolling.as_ref().map_or_else(dash, |r| split(&r.delivery)),
    );
    row(
        "per host, median: host finishes → server records the outcome (linked to the driving server / to another)",
        &|c| c.rolling.as_ref().map_or_else(dash, |r| split(&r.reported)),
    );
    row(
        "driver SIGKILLed once half the hosts finished: hosts then",
        &|c| {
            c.kill.as_ref().map_or_else(dash, |k| {
                format!(
                    "{} finished, {} not yet commanded (server {} killed)",
                    k.finished_at_kill, k.pending_at_kill, k.killed
                )
            })
        },
    );
    row(
        "kill → another replica drives it (`restarts.driver`)",
        &|c| c.kill.as_ref().map_or_else(dash, |k| opt_ms(k.takeover)),
    );
    row(
        "kill → rollout resumes (a host not commanded before the kill reads its command)",
        &|c| c.kill.as_ref().map_or_else(dash, resume),
    );
    row(
        "commands sent again under their id (answered as before)",
        &|c| {
            c.kill
                .as_ref()
                .map_or_else(dash, |k| k.commands_again.to_string())
        },
    );
    row("hosts restarted twice for that restart", &|c| {
        c.kill.as_ref().map_or_else(dash, |k| {
            if k.commanded_twice.is_empty() {
                "0".to_owned()
            } else {
                format!(
                    "{} ({})",
                    k.commanded_twice.len(),
                    k.commanded_twice.join(", ")
                )
            }
        })
    });
    row("that restart's end", &|c| {
        c.kill.as_ref().map_or_else(dash, |k| {
            format!(
                "{} {} after the POST, {} ({}/{} hosts succeeded{})",
                if k.finished() {
                    "finished"
                } else {
                    "NOT finished"
                },
                ms(k.total),
                k.outcome.map_or("no outcome", |o| o.as_str()),
                k.hosts_succeeded,
                k.hosts,
                others(&k.others)
            )
        })
    });
    row("error", &|c| {
        c.error
            .as_deref()
            .map_or_else(dash, |e| e.lines().next().unwrap_or("").replace('|', "\\|"))
    });

    write_targets(&mut out, columns);
    out
}

fn write_targets(out: &mut String, columns: &[Column]) {
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | setup | measured | limit | result |");
    let _ = writeln!(out, "|---|---|--:|--:|---|");
    for column in columns {
        if let Some(rolling) = &column.rolling {
            let overhead = rolling.overhead();
            // A rollout that skipped hosts did less work: its overhead
            // does not count.
            let every_host = rolling.hosts_succeeded == rolling.hosts;
            let _ = writeln!(
                out,
                "| rolling restart, control-plane overhead{} | {} | {} | < {} | {} |",
                if every_host {
                    ""
                } else {
                    " (not every host succeeded)"
                },
                column.name,
                ms(overhead),
                ms(ROLLING_OVERHEAD_TARGET),
                mark(every_host && overhead < ROLLING_OVERHEAD_TARGET),
            );
        }
        if let Some(kill) = &column.kill {
            let result = if kill.pending_at_kill == 0 {
                "not measured"
            } else {
                mark(kill.resume.is_some_and(|r| r < RESUME_TARGET))
            };
            let _ = writeln!(
                out,
                "| driver killed: kill → rollout resumes | {} | {} | < {} | {result} |",
                column.name,
                resume(kill),
                ms(RESUME_TARGET),
            );
            let _ = writeln!(
                out,
                "| driver killed: no host restarted twice, every host restarted | {} | {} twice, {}, {}/{} succeeded | 0, finished, all | {} |",
                column.name,
                kill.commanded_twice.len(),
                if kill.finished() {
                    "finished"
                } else {
                    "not finished"
                },
                kill.hosts_succeeded,
                kill.hosts,
                mark(kill.sound()),
            );
        }
    }
}

fn split(split: &Split) -> String {
    format!("{} / {}", opt_ms(split.direct), opt_ms(split.elsewhere))
}

fn resume(kill: &KillRun) -> String {
    if kill.pending_at_kill == 0 {
        // max_parallel is at least half the hosts.
        "– (every host was commanded before the kill)".to_owned()
    } else {
        opt_ms(kill.resume)
    }
}

fn others(others: &str) -> String {
    if others.is_empty() {
        String::new()
    } else {
        format!("; {others}")
    }
}

fn memories(memories: &[Option<Memory>]) -> String {
    if memories.is_empty() {
        return dash();
    }
    memories
        .iter()
        .map(|m| {
            m.map_or_else(
                || "gone".to_owned(),
                |m| format!("{} ({})", mb(m.resident), mb(m.peak)),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn samples(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return dash();
    }
    format!("{} ({} restarts)", pair(sorted), sorted.len())
}

fn pair(sorted: &[Duration]) -> String {
    match (percentile(sorted, 0.5), percentile(sorted, 0.99)) {
        (Some(p50), Some(p99)) => format!("{} / {}", ms(p50), ms(p99)),
        _ => dash(),
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn kb(bytes: u64) -> String {
    format!("{:.1} kB", bytes as f64 / 1e3)
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

fn dash() -> String {
    "–".to_owned()
}

fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}
