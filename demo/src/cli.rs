//! Command-line flags of `baton-demo`.

use std::path::PathBuf;
use std::time::Duration;

use baton_demo::behaviour::Behaviour;
use clap::Parser;

/// A demo service for baton: HTTP/1.1 on inherited TCP and unix stream
/// sockets, UDP echo on inherited datagram sockets, systemd-style readiness
/// and a graceful drain on SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "baton-demo", version)]
pub struct Cli {
    /// Bind a TCP listener ourselves (host:port, repeatable) instead of, or
    /// besides, inherited sockets: the "naive restart" baseline.
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Vec<String>,

    /// Also serve HTTP on this address once warmed up, for an HTTP readiness
    /// probe that must reach this generation only (repeatable; env
    /// BATON_PROBE_PORT adds 127.0.0.1:PORT).
    #[arg(long = "probe", value_name = "ADDR")]
    pub probe: Vec<std::net::SocketAddr>,

    /// Print `listening on ADDR` on stdout for each socket once serving.
    #[arg(long)]
    pub print_addr: bool,

    /// A file whose content (normal, crash, never-ready, ignore-sigterm,
    /// slow:<ms>; several may be comma separated) replaces the mode flags when
    /// it exists.
    #[arg(long, value_name = "PATH")]
    pub mode_file: Option<PathBuf>,

    /// Exit 1 at start, before READY.
    #[arg(long)]
    pub crash_at_start: bool,

    /// Serve, but never send READY=1.
    #[arg(long)]
    pub never_ready: bool,

    /// Ignore SIGTERM and SIGINT: keep serving and never exit on our own.
    #[arg(long)]
    pub ignore_sigterm: bool,

    /// Sleep this long before READY (e.g. 500ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
    pub start_delay: Duration,

    /// Burn CPU on every core this long before READY, like a JIT warm-up.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
    pub warmup: Duration,

    /// Allocate and touch this many MiB at start and hold them until exit,
    /// as a service with a large cache would.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub hold_memory: u64,

    /// Keep one thread burning this share of a core (0-100) while running.
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub busy: u8,

    /// While draining, how long an idle keep-alive connection may still send
    /// one last request (answered with Connection: close).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    pub drain_idle_grace: Duration,

    /// Neither take connections from the previous generation nor hand ours
    /// to the next: established connections drain (to compare).
    #[arg(long)]
    pub no_handoff: bool,
}

impl Cli {
    pub fn flag_behaviour(&self) -> Behaviour {
        Behaviour {
            crash_at_start: self.crash_at_start,
            never_ready: self.never_ready,
            ignore_sigterm: self.ignore_sigterm,
            start_delay: self.start_delay,
        }
    }
}
