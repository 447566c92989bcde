#![forbid(unsafe_code)]

use anyhow::Context;
use baton_server::domain::Role;
use baton_server::settings::{Settings, TlsFiles};
use baton_server::startup::Application;
use baton_server::store::{self, Location, PoolSize, TokenSelector};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "baton-server", version, about = "The control plane of baton")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the server's log is written to standard error: text (coloured
    /// only on a terminal) or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BATON_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the agent link.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080", env = "BATON_LISTEN")]
        listen: SocketAddr,
        /// The database: a SQLite file (a path or sqlite://PATH, created on
        /// first start) or postgres://USER:PASSWORD@HOST/NAME. Migrated on
        /// start.
        #[arg(long, env = "BATON_DATABASE")]
        database: Location,
        /// Connections kept to PostgreSQL at most (1 to 256; default 16),
        /// shared by reads and writes. Not for SQLite, which has one writer.
        #[arg(long, env = "BATON_DATABASE_POOL")]
        database_pool: Option<PoolSize>,
        /// How long a host may stay offline during its restart before it
        /// fails there; a host offline for longer when its turn in a
        /// rollout comes is skipped (`skipped: offline`).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        offline_grace: Duration,
        /// Events older than this are deleted.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        event_retention: Duration,
        /// At most this many events are kept, the newest.
        #[arg(long, default_value_t = 1_000_000)]
        event_max_rows: u64,
        /// A host offline for longer than this is forgotten.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        forget_offline_hosts_after: Duration,
        /// The longest one host's restart may take.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        host_restart_timeout: Duration,
        /// How soon a revoked token stops working, agent links and dashboard
        /// sessions included.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        token_recheck: Duration,
        /// Serve HTTPS (and wss:// for agents) with this PEM certificate
        /// chain, leaf first. Needs --tls-key.
        #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// How long a client may take to send a request's head, and then its
        /// body, before it is cut; also how long an idle connection stays open.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        request_timeout: Duration,
        /// Connections one client address may hold at once; more are answered
        /// 429 and closed. Agents behind one NAT share an address.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        connections_per_ip: u32,
        /// How long an Idempotency-Key names its restart; after that the same
        /// key starts a new restart.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        idempotency_key_lifetime: Duration,
    },
    /// Manage API and agent tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the hosts the server knows.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Apply the database migrations this version has and the database
    /// lacks, and print them. `serve` does the same on start.
    Migrate {
        #[arg(long, env = "BATON_DATABASE")]
        database: Location,
        /// Only print the pending migrations; apply nothing.
        #[arg(long)]
        check: bool,
    },
    /// Copy a whole history into a fresh database, ids kept, in one
    /// transaction: from a SQLite file to PostgreSQL when one server is no
    /// longer enough. Stop the server on --from first.
    Copy {
        /// The database to read, e.g. sqlite:///var/lib/baton/baton.db.
        #[arg(long)]
        from: Location,
        /// The database to fill, migrated first; refused if it holds any
        /// history.
        #[arg(long)]
        to: Location,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Forget an offline host: it leaves the host list, the services it ran
    /// and the rollouts that have not reached it; its history stays. A
    /// running server drops it within a minute.
    Forget {
        #[arg(long, env = "BATON_DATABASE")]
        database: Location,
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it; it is stored hashed and cannot be shown again.
    Create {
        #[arg(long, env = "BATON_DATABASE")]
        database: Location,
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (reads and restarts) or agent (the agent link).
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        /// The one host an agent token speaks for (the `host` of that
        /// agent's config); required for an agent token, refused for others.
        #[arg(long)]
        host: Option<String>,
    },
    /// List every token: id, name, role, host, when it was created and revoked.
    List {
        #[arg(long, env = "BATON_DATABASE")]
        database: Location,
    },
    /// Revoke tokens: a running server refuses them within its
    /// --token-recheck, and closes agent links and dashboard sessions opened
    /// with them.
    Revoke {
        #[arg(long, env = "BATON_DATABASE")]
        database: Location,
        /// Every live token of this name.
        #[arg(long, required_unless_present = "id", conflicts_with = "id")]
        name: Option<String>,
        /// The one token with this id (see `token list`).
        #[arg(long)]
        id: Option<i64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        // A log file or journald shows escape codes as garbage.
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log.json().init(),
    }
    match cli.command {
        Command::Serve {
            listen,
            database,
            database_pool,
            offline_grace,
            event_retention,
            event_max_rows,
            forget_offline_hosts_after,
            host_restart_timeout,
            token_recheck,
            tls_cert,
            tls_key,
            request_timeout,
            connections_per_ip,
            idempotency_key_lifetime,
        } => {
            if let (Some(_), Location::Sqlite(_)) = (database_pool, &database) {
                anyhow::bail!(
                    "--database-pool sizes the PostgreSQL pool; a SQLite database has one writer and needs none"
                );
            }
            let mut settings = Settings::new(listen, database);
            settings.database_pool = database_pool.unwrap_or_default();
            settings.tls = tls_cert
                .zip(tls_key)
                .map(|(certificate, key)| TlsFiles { certificate, key });
            settings.timeouts.offline_grace = offline_grace;
            settings.timeouts.host_restart = host_restart_timeout;
            settings.timeouts.token_recheck = token_recheck;
            settings.housekeeping.event_retention = event_retention;
            settings.housekeeping.event_max_rows = event_max_rows;
            settings.housekeeping.forget_offline_hosts_after = forget_offline_hosts_after;
            settings.timeouts.request_timeout = request_timeout;
            settings.timeouts.idempotency_key_lifetime = idempotency_key_lifetime;
            settings.connections_per_ip = connections_per_ip as usize;
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
                    host,
                },
        } => {
            let db = baton_server::store::open(&database).await?;
            let token = baton_server::auth::create_token(&db, &name, role, host.as_deref()).await?;
            println!("{token}");
        }
        Command::Token {
            command: TokenCommand::List { database },
        } => {
            let db = baton_server::store::open(&database).await?;
            println!(
                "{:>5}  {:<24} {:<9} {:<24} {:<21} REVOKED",
                "ID", "NAME", "ROLE", "HOST", "CREATED"
            );
            for token in store::list_tokens(&db).await? {
                // An agent token from before tokens named their host binds
                // to the first host its agent names.
                let host = match (token.role, token.host) {
                    (_, Some(host)) => host,
                    (Role::Agent, None) => "(first to connect)".into(),
                    (_, None) => "-".into(),
                };
                println!(
                    "{:>5}  {:<24} {:<9} {:<24} {:<21} {}",
                    token.id,
                    token.name,
                    token.role.as_str(),
                    host,
                    time(token.created_at),
                    token.revoked_at.map(time).unwrap_or_else(|| "-".into()),
                );
            }
        }
        Command::Token {
            command: TokenCommand::Revoke { database, name, id },
        } => {
            let db = baton_server::store::open(&database).await?;
            let which = match (&name, id) {
                (_, Some(id)) => TokenSelector::Id(id),
                (Some(name), None) => TokenSelector::Name(name),
                (None, None) => anyhow::bail!("give --name or --id"),
            };
            let revoked = store::revoke_tokens(&db, which).await?;
            if revoked == 0 {
                anyhow::bail!("no live token matches; `baton-server token list` shows them");
            }
            println!(
                "revoked {revoked} token{}",
                if revoked == 1 { "" } else { "s" }
            );
        }
        Command::Host {
            command: HostCommand::Forget { database, name },
        } => {
            baton_server::domain::validate_host_name(&name).map_err(|e| anyhow::anyhow!(e))?;
            let db = baton_server::store::open(&database).await?;
            match store::forget_host(&db, &name).await? {
                store::HostForgotten::Forgotten => println!("forgot host {name}"),
                store::HostForgotten::Online => anyhow::bail!(
                    "host {name} is connected; stop its agent (or revoke its token) first"
                ),
                store::HostForgotten::Unknown => {
                    anyhow::bail!("no host is named {name}; `GET /hosts` lists them")
                }
            }
        }
        Command::Migrate { database, check } => {
            let db = store::connect(&database).await?;
            if check {
                let pending = store::pending_migrations(&db).await?;
                if pending.is_empty() {
                    println!("{database} is up to date");
                }
                for step in pending {
                    println!("pending {} {}", step.version, step.description);
                }
            } else {
                let applied = store::apply_migrations(&db).await?;
                if applied.is_empty() {
                    println!("{database} is up to date");
                }
                for step in applied {
                    println!("applied {} {}", step.version, step.description);
                }
            }
            db.close().await;
        }
        Command::Copy { from, to } => {
            anyhow::ensure!(from != to, "--from and --to are the same database");
            let source = store::open(&from)
                .await
                .with_context(|| format!("cannot open {from}"))?;
            let target = store::open(&to)
                .await
                .with_context(|| format!("cannot open {to}"))?;
            let copied = store::copy_database(&source, &target).await?;
            for table in &copied {
                println!("{:<18} {:>10} rows", table.table, table.rows);
            }
            println!("copied {from} to {to}");
            source.close().await;
            target.close().await;
        }
    }
    Ok(())
}

fn time(millis: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}
