#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use baton_loadgen::{LoadConfig, Target};
use clap::Parser;

/// Drive an HTTP/1.1 service with keep-alive connections and count every
/// request that did not get a complete 200. Exits 1 when any failed.
#[derive(Debug, Parser)]
#[command(name = "baton-loadgen", version)]
struct Cli {
    /// IP:PORT, unix:/path or /path
    target: Target,
    /// Concurrent connections
    #[arg(short, long, default_value_t = 4)]
    connections: usize,
    /// Request target
    #[arg(long, default_value = "/")]
    path: String,
    /// How long to run (Ctrl-C stops earlier)
    #[arg(short, long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    request_timeout: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    connect_timeout: Duration,
    /// Count a 200 whose body does not start with this as a failure
    #[arg(long)]
    expect_body_prefix: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = LoadConfig {
        connections: cli.connections,
        path: cli.path,
        request_timeout: cli.request_timeout,
        connect_timeout: cli.connect_timeout,
        expect_body_prefix: cli.expect_body_prefix,
        max_duration: cli.duration,
        ..LoadConfig::new(cli.target)
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = baton_loadgen::run(config, stop).await;
    println!("{report}");
    if report.failed == 0 && report.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
