use baton_agent::config::Config;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Holds the listening sockets of this host's services and hot-restarts them.
#[derive(Parser)]
#[command(name = "baton-agent", version)]
struct Args {
    /// The agent's TOML configuration.
    #[arg(long, short, env = "BATON_AGENT_CONFIG")]
    config: PathBuf,
    /// Check the configuration, create the runtime folders it names if
    /// missing, and exit.
    #[arg(long)]
    check: bool,
    /// How the agent's own log is written to standard error: text (coloured
    /// only on a terminal) or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "BATON_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// sysexits' EX_CONFIG would be 78; baton uses EX_USAGE (64) for every bad input.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        // A log file or journald shows escape codes as garbage.
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log.json().init(),
    }

    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("baton-agent: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for file in config.token_readable_by_others(&args.config) {
        tracing::warn!(
            file = %file.display(),
            "this file holds the server token and others than its owner may read it; \
             `chmod 600` it"
        );
    }
    // Before anything binds: a folder that cannot be made fails the check too.
    if let Err(e) = baton_agent::runtime_dir::create_all(&config) {
        eprintln!("baton-agent: {e}");
        return ExitCode::FAILURE;
    }
    if args.check {
        println!(
            "{}: ok ({} services)",
            args.config.display(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    baton_agent::sys::limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking work (a spawn's fork and exec, a count) takes well under
        // a millisecond; a thousand services starting at once queue for
        // these threads instead of each getting one (and its stack, and its
        // share of the allocator's arenas).
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton-agent: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(baton_agent::agent::run(args.config, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
