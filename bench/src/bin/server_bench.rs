//! `baton-server-bench`: the control plane under a simulated fleet, on one
//! server with SQLite, one with PostgreSQL, and three replicas on one
//! PostgreSQL database: memory, `GET /services?page=N` per second, the time
//! from `POST .../restart` to the host reading its command, a rolling
//! restart's control-plane overhead, and (replicas) a rolling restart whose
//! driving replica is SIGKILLed halfway. Progress goes to stderr, the
//! markdown to stdout. Exits non-zero when a setup failed, a host was
//! restarted twice for one restart, or the killed rollout did not finish.
#![forbid(unsafe_code)]

#[path = "../server/mod.rs"]
mod server;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use server::database::Database;
use server::fleet::{self, Fleet, FleetSettings};
use server::procs::{Servers, server_binary};
use server::report::{self, Column, Setup};
use server::scenarios::{self, PageSettings, PostTo};
use server::stats::load_average;

/// The replicas of the replicas setup.
const REPLICAS: usize = 3;

#[derive(Parser)]
#[command(
    name = "baton-server-bench",
    about = "Measures baton-server under a simulated fleet: SQLite, PostgreSQL, and replicas on PostgreSQL"
)]
struct Cli {
    /// Simulated hosts linked to the servers.
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    /// Services each simulated host reports.
    #[arg(long, default_value_t = 10)]
    services_per_host: usize,
    /// How long a simulated service takes from spawn to ready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    service_start: Duration,
    /// Setups to measure, in this order (all when absent).
    #[arg(long = "setup", value_enum)]
    setups: Vec<SetupKind>,
    /// Services per page of the `GET /services?page=N` load.
    #[arg(long, default_value_t = 100)]
    per_page: u32,
    /// Keep-alive connections of the `GET` load, spread over the servers.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Threads of the `GET` load, one single-threaded runtime each.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// How long `GET /services?page=N` is loaded on each setup.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Timed single-host restarts per case (one untimed first).
    #[arg(long, default_value_t = 30)]
    restarts: usize,
    /// Hosts restarting at once in the rolling restarts.
    #[arg(long, default_value_t = 50)]
    max_parallel: u32,
    /// How long after the last host linked before anything is measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    settle: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SetupKind {
    Sqlite,
    Postgres,
    Replicas,
}

impl SetupKind {
    const ALL: [SetupKind; 3] = [SetupKind::Sqlite, SetupKind::Postgres, SetupKind::Replicas];

    fn label(self) -> String {
        match self {
            SetupKind::Sqlite => "1 server, SQLite".to_owned(),
            SetupKind::Postgres => "1 server, PostgreSQL".to_owned(),
            SetupKind::Replicas => format!("{REPLICAS} replicas, PostgreSQL"),
        }
    }

    fn servers(self) -> usize {
        match self {
            SetupKind::Replicas => REPLICAS,
            _ => 1,
        }
    }
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
        Ok((markdown, broken)) => {
            print!("{markdown}");
            if broken {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("baton-server-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<(String, bool)> {
    anyhow::ensure!(
        cli.hosts > 0 && cli.services_per_host > 0,
        "--hosts and --services-per-host must be at least 1"
    );
    let binary = server_binary()?;
    let setups: Vec<SetupKind> = if cli.setups.is_empty() {
        SetupKind::ALL.to_vec()
    } else {
        cli.setups.clone()
    };
    let load_average_before = load_average();
    let postgres = if setups.iter().any(|s| *s != SetupKind::Sqlite) {
        progress("starting PostgreSQL");
        Some(baton_testkit::Postgres::start().context("cannot start PostgreSQL")?)
    } else {
        None
    };
    let mut postgres_version = None;
    let mut columns = Vec::new();
    for kind in setups {
        let mut column = Column::new(kind.label(), kind.servers());
        progress(&format!("setup: {}", column.name));
        let database = match (&postgres, kind) {
            (Some(postgres), SetupKind::Postgres | SetupKind::Replicas) => {
                let url = postgres.create_database()?;
                let database = Database::connect(&url).await?;
                if postgres_version.is_none() {
                    postgres_version = database.server_version().await.ok();
                }
                Some((url, database))
            }
            _ => None,
        };
        if let Err(error) = measure(cli, &binary, kind, database, &mut column).await {
            eprintln!("baton-server-bench: {}: {error:#}", column.name);
            column.error = Some(format!("{error:#}"));
        }
        columns.push(column);
    }
    drop(postgres);

    let setup = Setup {
        command: command_line(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        hosts: cli.hosts,
        services_per_host: cli.services_per_host,
        service_start: cli.service_start,
        max_parallel: cli.max_parallel,
        postgres_version,
        load_average_before,
        load_average_after: load_average(),
    };
    let broken = columns.iter().any(Column::broken);
    Ok((report::render(&setup, &columns), broken))
}

/// Everything measured on one setup, written into `column` as it comes, so
/// that a failure keeps what came before it.
async fn measure(
    cli: &Cli,
    binary: &Path,
    kind: SetupKind,
    database: Option<(String, Database)>,
    column: &mut Column,
) -> anyhow::Result<()> {
    progress(&format!(
        "starting {} server(s) and {} agent tokens",
        kind.servers(),
        cli.hosts
    ));
    let url = database.as_ref().map(|(url, _)| url.as_str());
    let mut servers = Servers::start(binary, url, kind.servers(), cli.hosts)?;
    let replica_ids = match &database {
        Some((_, database)) => database.replicas_by_start().await?,
        None => Vec::new(),
    };
    anyhow::ensure!(
        database.is_none() || replica_ids.len() == kind.servers(),
        "{} replicas registered for {} servers",
        replica_ids.len(),
        kind.servers()
    );
    progress(&format!("linking {} simulated hosts", cli.hosts));
    let fleet = Fleet::start(FleetSettings {
        urls: servers.urls(),
        tokens: std::mem::take(&mut servers.agent_tokens),
        services_per_host: cli.services_per_host,
        service_start: cli.service_start,
    })
    .with_context(|| format!("the simulated fleet failed:\n{}", servers.log_tails()))?;
    // Every host's first status has landed, and every replica has read the
    // links of the others, before anything is measured.
    tokio::time::sleep(cli.settle).await;
    column.memory_settled = servers.memory();

    // What failed comes first: the table shows an error's first line.
    let with_logs = |error: anyhow::Error, servers: &Servers| {
        anyhow::anyhow!("{error:#}\nserver logs:\n{}", servers.log_tails())
    };

    progress(&format!(
        "GET /services?page=N for {}",
        humantime::format_duration(cli.duration)
    ));
    let pages = scenarios::pages(
        &servers,
        &PageSettings {
            services: cli.hosts * cli.services_per_host,
            per_page: cli.per_page,
            connections: cli.connections,
            threads: cli.client_threads,
            duration: cli.duration,
        },
    )
    .map_err(|e| with_logs(e, &servers))?;
    progress(&format!("  {:.0} req/s", pages.result.per_second()));
    column.pages = Some(pages);

    let mut cases = vec![(PostTo::LinkHolder, "post to the link holder")];
    if kind.servers() > 1 {
        cases.push((PostTo::Another, "post to another replica"));
    }
    for (post_to, label) in cases {
        progress(&format!("{} single-host restarts, {label}", cli.restarts));
        let latencies = scenarios::post_to_command(
            &servers,
            &fleet,
            cli.hosts,
            cli.services_per_host,
            cli.restarts,
            post_to,
            label,
        )
        .await
        .map_err(|e| with_logs(e, &servers))?;
        match post_to {
            PostTo::LinkHolder => column.post_to_link_holder = latencies,
            PostTo::Another => column.post_to_another = latencies,
        }
    }

    progress(&format!("rolling restart across {} hosts", cli.hosts));
    let rolling = scenarios::rolling(
        &servers,
        &fleet,
        &fleet::service_name(0),
        cli.hosts,
        cli.max_parallel,
        cli.service_start,
        "rolling restart",
    )
    .await
    .map_err(|e| with_logs(e, &servers))?;
    progress(&format!(
        "  {:?}, overhead {:?}",
        rolling.total,
        rolling.overhead()
    ));
    column.rolling = Some(rolling);

    if kind == SetupKind::Replicas
        && let Some((_, database)) = &database
    {
        progress("rolling restart with its driving replica killed halfway");
        let service = fleet::service_name(1 % cli.services_per_host);
        let kill = scenarios::driver_kill(
            &mut servers,
            database,
            &replica_ids,
            &fleet,
            &service,
            cli.hosts,
            cli.max_parallel,
        )
        .await
        .map_err(|e| with_logs(e, &servers))?;
        progress(&format!(
            "  resumed after {:?}, {} commands sent again, {} hosts restarted twice",
            kill.resume,
            kill.commands_again,
            kill.commanded_twice.len()
        ));
        column.kill = Some(kill);
    }
    column.memory_end = servers.memory();
    drop(fleet);
    Ok(())
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
            Path::new(&program)
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
