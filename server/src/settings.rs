use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::{Location, PoolSize};
use std::time::Duration;

/// Everything the server needs to start. Built by `main.rs` from the command
/// line, and by tests with short timeouts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port 0 picks a free port; `Application::port` tells which.
    pub listen: SocketAddr,
    /// The SQLite file (created on first start) or the PostgreSQL
    /// database; migrated on start.
    pub database: Location,
    /// Connections kept to PostgreSQL at most; SQLite has its own.
    pub database_pool: PoolSize,
    pub timeouts: Timeouts,
    /// Largest accepted request body; bigger ones get `413`.
    pub body_limit: usize,
    /// HTTPS instead of HTTP, for the API, the dashboard and the agent link.
    pub tls: Option<TlsFiles>,
    pub housekeeping: Housekeeping,
    /// Connections one client address may hold open at once; more are
    /// answered `429` and closed. Agents behind one NAT share an address.
    pub connections_per_ip: usize,
}

/// What the server forgets, and how often it looks. Everything an agent
/// sends is kept only this long, so no agent can fill the disk.
#[derive(Debug, Clone)]
pub struct Housekeeping {
    /// Events older than this (by their time) are deleted.
    pub event_retention: Duration,
    /// At most this many events are kept, the newest.
    pub event_max_rows: u64,
    /// A host offline for longer than this (since it was last seen) is
    /// forgotten, as by `DELETE /hosts/{name}`.
    pub forget_offline_hosts_after: Duration,
    /// How often the background task prunes and forgets.
    pub interval: Duration,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping {
            event_retention: Duration::from_secs(30 * 24 * 3600),
            event_max_rows: 1_000_000,
            forget_offline_hosts_after: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// An agent that sends nothing for this long is offline (agents send a
    /// status every second).
    pub agent_silence: Duration,
    /// How long a host may stay offline in the middle of its restart before
    /// the restart fails there with "host offline". Long enough for an agent
    /// to reconnect after a server restart or a network blip. A host that
    /// has been offline for longer when its turn in a rollout comes is gone,
    /// not blinking: it is skipped (`skipped`, reason `offline`) and the
    /// rollout goes on; one offline for less fails there.
    pub offline_grace: Duration,
    /// How long the agent may take to answer a restart command.
    pub command_answer: Duration,
    /// The longest a host's restart may run before it counts as failed; the
    /// server does not know the service's ready and drain timeouts.
    pub host_restart: Duration,
    /// How soon a revoked token stops working: cached tokens, agent links
    /// and dashboard sessions are checked against the database this often.
    pub token_recheck: Duration,
    /// How long a client may take to send a request's head, and then its
    /// body; a slower one is cut. Also how long an idle keep-alive
    /// connection stays open.
    pub request_timeout: Duration,
    /// How long an `Idempotency-Key` names its restart; after that the same
    /// key starts a new one.
    pub idempotency_key_lifetime: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            agent_silence: Duration::from_secs(5),
            offline_grace: Duration::from_secs(60),
            command_answer: Duration::from_secs(10),
            host_restart: Duration::from_secs(600),
            token_recheck: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            idempotency_key_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

impl Settings {
    pub fn new(listen: SocketAddr, database: impl Into<Location>) -> Self {
        Settings {
            listen,
            database: database.into(),
            database_pool: PoolSize::DEFAULT,
            timeouts: Timeouts::default(),
            body_limit: 16 * 1024,
            tls: None,
            housekeeping: Housekeeping::default(),
            connections_per_ip: 256,
        }
    }
}
