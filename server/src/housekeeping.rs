//! What the server forgets. Everything an agent sends is kept for a while,
//! never forever: a background task deletes events past their retention and
//! beyond the row cap, and forgets hosts that have been offline for too
//! long. An operator forgets one host at once with `DELETE /hosts/{name}`
//! or `baton-server host forget NAME`; both come here.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::now_millis;
use crate::fleet::Fleet;
use crate::settings::Housekeeping;
use crate::store::{self, Db, HostForgotten};

/// Why a host was not forgotten.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("no host is named {0}")]
    Unknown(String),
    /// Its agent would only report it again; stop the agent (or revoke its
    /// token) first.
    #[error("host {0} is connected; stop its agent first")]
    Connected(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Forgets an offline host: gone from `GET /hosts`, from the services it
/// ran, and from the rollouts that have not reached it yet. Its history
/// stays. The database decides first, so a host whose agent reconnects at
/// the same moment stays known.
pub async fn forget_host(db: &Db, fleet: &Fleet, name: &str) -> Result<(), ForgetError> {
    match store::forget_host(db, name).await? {
        HostForgotten::Forgotten => {
            fleet.forget(name);
        }
        HostForgotten::Online => return Err(ForgetError::Connected(name.to_owned())),
        // Forgotten in the database already (`baton-server host forget`
        // while the server runs): only the picture remains.
        HostForgotten::Unknown => match fleet.forget(name) {
            HostForgotten::Forgotten => {}
            HostForgotten::Online => return Err(ForgetError::Connected(name.to_owned())),
            HostForgotten::Unknown => return Err(ForgetError::Unknown(name.to_owned())),
        },
    }
    tracing::info!(host = name, "host forgotten");
    Ok(())
}

/// What one round deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub events_deleted: u64,
    pub hosts_forgotten: Vec<String>,
}

/// One round of pruning and forgetting.
pub async fn run_once(db: &Db, fleet: &Fleet, settings: &Housekeeping) -> anyhow::Result<Round> {
    let now = now_millis();
    let before =
        |age: Duration| now.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    let events_deleted = store::prune_events(
        db,
        before(settings.event_retention),
        settings.event_max_rows,
    )
    .await?;
    store::prune_event_gaps(
        db,
        before(settings.event_retention),
        settings.event_max_rows,
    )
    .await?;
    // Log streams relayed for replicas that died meanwhile; a live reader
    // renews its lease every second.
    store::prune_log_relays(
        db,
        before(crate::log_relay::LEASE),
        before(crate::log_relay::CHUNK_LIFETIME),
    )
    .await?;
    let mut hosts_forgotten = Vec::new();
    for name in store::hosts_offline_since(db, before(settings.forget_offline_hosts_after)).await? {
        match forget_host(db, fleet, &name).await {
            Ok(()) => hosts_forgotten.push(name),
            // Reconnected since it was listed.
            Err(ForgetError::Connected(_) | ForgetError::Unknown(_)) => {}
            Err(ForgetError::Unexpected(error)) => return Err(error),
        }
    }
    // Hosts forgotten in the database by the command line while this server ran.
    let stored = store::host_names(db).await?;
    for host in fleet.hosts() {
        if !host.online
            && !stored.contains(&host.name)
            && fleet.forget(&host.name) == HostForgotten::Forgotten
        {
            tracing::info!(host = %host.name, "host forgotten");
            hosts_forgotten.push(host.name);
        }
    }
    if events_deleted > 0 || !hosts_forgotten.is_empty() {
        tracing::info!(events_deleted, hosts_forgotten = ?hosts_forgotten, "housekeeping");
    }
    Ok(Round {
        events_deleted,
        hosts_forgotten,
    })
}

/// Runs a round at start and then every `settings.interval`, until aborted.
pub fn spawn(
    db: Db,
    fleet: Arc<Fleet>,
    settings: Housekeeping,
    runtime: &tokio::runtime::Handle,
) -> tokio::task::JoinHandle<()> {
    runtime.spawn(async move {
        let mut every = tokio::time::interval(settings.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(error) = run_once(&db, &fleet, &settings).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "housekeeping failed; next round retries"
                );
            }
        }
    })
}
