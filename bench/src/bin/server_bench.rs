//! `baton-server-bench`: the control plane under a simulated fleet. `GET`
//! throughput with many services, the time from `POST .../restart` to a real
//! agent's spawn, and a rolling restart across every simulated host, printed
//! as markdown. Progress goes to stderr, the tables to stdout.
#![forbid(unsafe_code)]

#[path = "../server/mod.rs"]
mod server;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use server::fleet::{self, Fleet, FleetSettings};
use server::load::ClientKind;
use server::procs::{Binaries, RealAgent, Server};
use server::report::{self, Results, Setup};
use server::scenarios::{self, RollingSummary};
use server::stats::load_average;

/// The service of the real agent that the POST → spawn scenario restarts.
const REAL_SERVICE: &str = "web";
const REAL_HOST: &str = "real-agent";

#[derive(Parser)]
#[command(
    name = "baton-server-bench",
    about = "Measures baton-server under a simulated fleet"
)]
struct Cli {
    /// Simulated hosts linked to the server.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Services each simulated host reports.
    #[arg(long, default_value_t = 10)]
    services_per_host: usize,
    /// How long a simulated service takes from spawn to ready. At 0 the
    /// whole rolling restart is overhead.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
    service_start: Duration,
    /// Keep-alive connections of the `GET` load.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Threads of the `GET` load, one single-threaded runtime each.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// How long `GET /services` is loaded; the comparison paths get half.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Timed restarts through the server, and as many through the control socket.
    #[arg(long, default_value_t = 50)]
    restarts: usize,
    /// Rolling restarts across the fleet; the median is reported.
    #[arg(long, default_value_t = 3)]
    rolling_runs: usize,
    /// Scenarios to run (all when absent).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Throughput,
    Rolling,
    PostSpawn,
}

fn main() -> ExitCode {
    baton_tls::install_default_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton-server-bench: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(markdown) => {
            print!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("baton-server-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn wants(cli: &Cli, scenario: Scenario) -> bool {
    cli.scenarios.is_empty() || cli.scenarios.contains(&scenario)
}

async fn run(cli: &Cli) -> anyhow::Result<String> {
    let binaries = Binaries::next_to_this_program()?;
    let load_average_before = load_average();
    let server = Server::start(&binaries.server)?;
    progress(&format!(
        "server on port {}; linking {} simulated hosts",
        server.port, cli.hosts
    ));
    let tokens = (0..cli.hosts)
        .map(|index| server.agent_token(&fleet::host_name(index)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fleet = Fleet::start(FleetSettings {
        url: server.url(),
        tokens,
        hosts: cli.hosts,
        services_per_host: cli.services_per_host,
        service_start: cli.service_start,
    })
    .with_context(|| format!("the simulated fleet failed:\n{}", server.log_tail()))?;
    // Every host's first status has landed and the server's first render of
    // the picture is done before anything is timed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut throughput = Vec::new();
    if wants(cli, Scenario::Throughput) {
        let one = format!("/services/{}", fleet::service_name(0));
        for (path, client, duration) in [
            ("/services", ClientKind::Gzip, cli.duration),
            ("/services", ClientKind::Plain, cli.duration / 2),
            ("/services", ClientKind::Revalidating, cli.duration / 2),
            (one.as_str(), ClientKind::Plain, cli.duration / 2),
            ("/metrics", ClientKind::Plain, cli.duration / 2),
            ("/healthz", ClientKind::Plain, cli.duration / 2),
        ] {
            progress(&format!(
                "GET {path} ({}) for {}",
                client.label(),
                humantime::format_duration(duration)
            ));
            let run = scenarios::throughput(
                &server,
                path,
                client,
                cli.connections,
                cli.client_threads,
                duration,
            )?;
            progress(&format!("  {:.0} req/s", run.result.per_second()));
            throughput.push(run);
        }
    }

    let mut rolling = None;
    if wants(cli, Scenario::Rolling) && cli.hosts > 0 && cli.services_per_host > 0 {
        let mut runs = Vec::new();
        for run in 1..=cli.rolling_runs {
            progress(&format!(
                "rolling restart {run}/{} across {} hosts",
                cli.rolling_runs, cli.hosts
            ));
            let result = scenarios::rolling(&server, &fleet, &fleet::service_name(0), cli.hosts)
                .await
                .with_context(|| format!("rolling restart {run}:\n{}", server.log_tail()))?;
            progress(&format!("  {:?}", result.total));
            runs.push(result);
        }
        rolling = RollingSummary::of(runs);
    }

    let mut post_to_spawn = None;
    if wants(cli, Scenario::PostSpawn) && cli.restarts > 0 {
        progress(&format!(
            "one real agent: {} restarts through the server and {} through its control socket",
            cli.restarts, cli.restarts
        ));
        let agent = RealAgent::start(&binaries, REAL_HOST, &server, REAL_SERVICE)?;
        let result =
            scenarios::post_to_spawn(&server, &agent, REAL_SERVICE, &binaries.demo, cli.restarts)
                .await
                .with_context(|| {
                    format!(
                        "agent log:\n{}\nserver log:\n{}",
                        agent.log_tail(),
                        server.log_tail()
                    )
                })?;
        post_to_spawn = Some(result);
    }
    drop(fleet);

    Ok(report::render(&Results {
        setup: Setup {
            command: command_line(),
            hosts: cli.hosts,
            services_per_host: cli.services_per_host,
            service_start: cli.service_start,
            load_average_before,
            load_average_after: load_average(),
        },
        throughput,
        post_to_spawn,
        rolling,
    }))
}

fn progress(message: &str) {
    eprintln!("baton-server-bench: {message}");
}

/// The command as typed, with the program shown relative to the current
/// folder when it lives below it (as `cargo run` places it).
fn command_line() -> String {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    let program = std::env::current_dir()
        .ok()
        .and_then(|dir| {
            std::path::Path::new(&program)
                .strip_prefix(dir)
                .ok()
                .map(|p| p.display().to_string())
        })
        .unwrap_or(program);
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}
