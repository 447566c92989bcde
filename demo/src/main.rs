#![forbid(unsafe_code)]

mod cli;

use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use baton_demo::app::{self, Settings};
use baton_demo::behaviour::Behaviour;
use baton_demo::sockets::{self, NamedSocket, ServiceSocket};
use baton_sdk::notify::Notifier;
use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::Instrument as _;

/// Exit code for an unusable configuration (an invalid mode file or
/// BATON_PROBE_PORT), the project-wide code for configuration errors.
const EXIT_CONFIG: u8 = 64;
/// Exit code when there is nothing to serve on, like a usage error.
const EXIT_NO_SOCKETS: u8 = 2;
/// Exit code after a second SIGINT cut a drain short (128 + SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // First, while there is only one thread: taking the fds edits the environment.
    let inherited = sockets::take_inherited();
    let channel = if cli.no_handoff {
        Ok(None)
    } else {
        baton_sdk::handoff::Channel::from_env()
    };
    init_tracing();

    let generation = std::env::var("BATON_GENERATION").unwrap_or_else(|_| "0".to_owned());
    let pid = std::process::id();
    let span = tracing::info_span!("baton-demo", generation = %generation, pid);
    let _entered = span.enter();
    for note in &inherited.notes {
        tracing::warn!("{note}");
    }
    let channel = channel.unwrap_or_else(|error| {
        tracing::warn!(%error, "no handoff: the channel to the agent is unusable");
        None
    });
    if let Ok(Some(started)) = baton_sdk::generation::Generation::from_env()
        && let Some(predecessor) = started.predecessor
    {
        tracing::info!(
            predecessor,
            "hot restart: taking over from a serving generation"
        );
    }

    let behaviour = match Behaviour::resolve(cli.flag_behaviour(), cli.mode_file.as_deref()) {
        Ok(behaviour) => behaviour,
        Err(error) => {
            tracing::error!(%error, "invalid mode");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if behaviour.crash_at_start {
        tracing::error!("crashing at start (crash mode)");
        return ExitCode::FAILURE;
    }

    let mut probe_addresses = cli.probe.clone();
    if let Ok(port) = std::env::var("BATON_PROBE_PORT") {
        match port.trim().parse::<u16>() {
            Ok(port) => probe_addresses.push(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            Err(_) => {
                tracing::error!(value = %port, "BATON_PROBE_PORT is not a port number");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }

    let mut service_sockets = inherited.sockets;
    for address in &cli.bind {
        match sockets::bind_tcp(address) {
            Ok(listener) => service_sockets.push(NamedSocket {
                name: "bind".to_owned(),
                socket: ServiceSocket::Tcp(listener),
            }),
            Err(error) => {
                tracing::error!(%address, %error, "cannot bind");
                return ExitCode::FAILURE;
            }
        }
    }
    if service_sockets.is_empty() {
        eprintln!(
            "baton-demo: no sockets to serve on: start it with socket activation \
             (LISTEN_FDS, LISTEN_PID=<its pid>, fds from 3), or pass --bind HOST:PORT"
        );
        return ExitCode::from(EXIT_NO_SOCKETS);
    }
    for socket in &service_sockets {
        tracing::info!(socket = %socket.name, address = %socket.describe(), "socket");
    }

    // Held until main returns.
    let _held_memory = baton_demo::warmup::hold_memory(cli.hold_memory);
    if cli.busy > 0 {
        let percent = cli.busy;
        std::thread::spawn(move || baton_demo::warmup::keep_busy(percent));
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings {
        generation,
        pid,
        behaviour,
        warmup: cli.warmup,
        drain_idle_grace: cli.drain_idle_grace,
        probe_addresses,
        print_addresses: cli.print_addr,
        handoff: !cli.no_handoff,
    };
    let result = runtime.block_on(
        async move {
            let signals = StopSignals::install()?;
            let notifier = Notifier::from_env()?;
            let stop = signals.stop_requested(settings.behaviour.ignore_sigterm);
            app::run(settings, service_sockets, notifier, channel, stop).await
        }
        .instrument(span.clone()),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // The agent keeps our stderr in its logs: no colour codes there.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Installed before start-up, so that a stop during a slow start is handled
/// rather than killing us by default.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT, unless they are to be ignored.
    /// After that, a second SIGINT (an impatient operator) exits at once.
    async fn stop_requested(mut self, ignore: bool) {
        loop {
            let name = tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            };
            if ignore {
                tracing::warn!(signal = name, "ignoring stop signal (ignore-sigterm mode)");
                continue;
            }
            tracing::info!(signal = name, "stop requested");
            break;
        }
        let mut interrupt = self.interrupt;
        let mut terminate = self.terminate;
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = interrupt.recv() => break,
                        _ = terminate.recv() => tracing::info!("SIGTERM again; still draining"),
                    }
                }
                tracing::warn!("second SIGINT: exiting without finishing the drain");
                std::process::exit(EXIT_INTERRUPTED);
            }
            .in_current_span(),
        );
    }
}
