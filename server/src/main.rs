#![forbid(unsafe_code)]

use anyhow::Context;
use baton_server::domain::Role;
use baton_server::settings::{Settings, TlsFiles};
use baton_server::startup::Application;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "baton-server", version, about = "The control plane of baton")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the agent link.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080", env = "BATON_LISTEN")]
        listen: SocketAddr,
        /// SQLite file, created on first start.
        #[arg(long, env = "BATON_DATABASE")]
        database: PathBuf,
        /// How long a host may stay offline during its restart before it fails there.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        offline_grace: Duration,
        /// The longest one host's restart may take.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        host_restart_timeout: Duration,
        /// Serve HTTPS (and wss:// for agents) with this PEM certificate
        /// chain, leaf first. Needs --tls-key.
        #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Manage API and agent tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it; it is stored hashed and cannot be shown again.
    Create {
        #[arg(long, env = "BATON_DATABASE")]
        database: PathBuf,
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (reads and restarts) or agent (the agent link).
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            database,
            offline_grace,
            host_restart_timeout,
            tls_cert,
            tls_key,
        } => {
            let mut settings = Settings::new(listen, database);
            settings.tls = tls_cert
                .zip(tls_key)
                .map(|(certificate, key)| TlsFiles { certificate, key });
            settings.timeouts.offline_grace = offline_grace;
            settings.timeouts.host_restart = host_restart_timeout;
            let application = Application::build(settings).await?;
            tracing::info!(
                port = application.port(),
                tls = application.tls(),
                "baton-server listening"
            );
            application
                .run_until_stopped()
                .await
                .context("the server failed")?;
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    database,
                    name,
                    role,
                },
        } => {
            let db = baton_server::store::open(&database).await?;
            let token = baton_server::auth::create_token(&db, &name, role).await?;
            println!("{token}");
        }
    }
    Ok(())
}
