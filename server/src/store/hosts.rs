use anyhow::Context;
use baton_proto::ServiceStatus;

use super::db::{Db, Flag, to_i64};
use super::fleet_services::{replace_host_services, update_host_services};

/// A host as the last run of the server left it.
#[derive(Debug)]
pub struct HostRow {
    pub name: String,
    pub agent_version: String,
    pub boot_id: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub online: bool,
    pub services: Vec<ServiceStatus>,
}

#[derive(sqlx::FromRow)]
struct StoredHost {
    name: String,
    agent_version: String,
    boot_id: String,
    first_seen: i64,
    last_seen: i64,
    #[sqlx(try_from = "Flag")]
    online: bool,
    services: String,
}

pub async fn load_hosts(db: &Db) -> anyhow::Result<Vec<HostRow>> {
    let rows: Vec<StoredHost> = sqlx::query_as(
        "SELECT name, agent_version, boot_id, first_seen, last_seen, online, services FROM hosts ORDER BY name",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to load the hosts")?;
    rows.into_iter()
        .map(|row| {
            let services = serde_json::from_str(&row.services).with_context(|| {
                format!("the stored services of host {} do not parse", row.name)
            })?;
            Ok(HostRow {
                name: row.name,
                agent_version: row.agent_version,
                boot_id: row.boot_id,
                first_seen: row.first_seen,
                last_seen: row.last_seen,
                online: row.online,
                services,
            })
        })
        .collect()
}

/// At start no agent is connected, whatever the last run wrote.
pub async fn mark_all_hosts_offline(db: &Db) -> anyhow::Result<()> {
    sqlx::query("UPDATE hosts SET online = FALSE")
        .execute(&db.writes)
        .await
        .context("failed to mark hosts offline")?;
    Ok(())
}

pub async fn upsert_host(
    db: &Db,
    name: &str,
    agent_version: &str,
    boot_id: &str,
    now: u64,
    services: &[ServiceStatus],
) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO hosts (name, agent_version, boot_id, first_seen, last_seen, online, services)
         VALUES ($1, $2, $3, $4, $4, TRUE, $5)
         ON CONFLICT (name) DO UPDATE SET
            agent_version = excluded.agent_version,
            boot_id = excluded.boot_id,
            last_seen = excluded.last_seen,
            online = TRUE,
            services = excluded.services,
            services_rev = hosts.services_rev + 1",
    )
    .bind(name)
    .bind(agent_version)
    .bind(boot_id)
    .bind(to_i64(now))
    .bind(serde_json::to_string(services)?)
    .execute(&mut *tx)
    .await
    .context("failed to store the host")?;
    replace_host_services(&mut tx, name, services).await?;
    tx.commit().await.context("failed to commit the host")?;
    Ok(())
}

pub async fn save_host_status(
    db: &Db,
    name: &str,
    now: u64,
    online: bool,
    services: &[ServiceStatus],
) -> anyhow::Result<()> {
    save_host_statuses(
        db,
        &[HostStatus {
            host: name,
            now,
            online,
            services,
            previous: None,
        }],
    )
    .await
}

/// One host's status to write: with `previous` (what the caller last
/// saved for this host), only the services that differ from it go to the
/// fleet's list; all of them without.
#[derive(Debug, Clone, Copy)]
pub struct HostStatus<'a> {
    pub host: &'a str,
    pub now: u64,
    pub online: bool,
    pub services: &'a [ServiceStatus],
    pub previous: Option<&'a [ServiceStatus]>,
}

/// Writes the statuses of many hosts in one transaction: all or none. On
/// SQLite every write waits its turn on one connection, and a rollout's
/// writes wait behind the statuses of a whole fleet; one transaction for
/// the statuses that arrived together costs one turn.
pub async fn save_host_statuses(db: &Db, statuses: &[HostStatus<'_>]) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    for status in statuses {
        let updated = sqlx::query(
            "UPDATE hosts SET last_seen = $2, online = $3, services = $4,
                    services_rev = services_rev + 1
             WHERE name = $1",
        )
        .bind(status.host)
        .bind(to_i64(status.now))
        .bind(status.online)
        .bind(serde_json::to_string(status.services)?)
        .execute(&mut *tx)
        .await
        .context("failed to store the host's status")?
        .rows_affected();
        // A host forgotten meanwhile has no row for its services to refer to.
        if updated > 0 {
            match status.previous {
                Some(previous) => {
                    update_host_services(&mut tx, status.host, status.services, previous).await?
                }
                None => replace_host_services(&mut tx, status.host, status.services).await?,
            }
        }
    }
    tx.commit()
        .await
        .context("failed to commit the host's status")?;
    Ok(())
}

/// What [`forget_host`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostForgotten {
    Forgotten,
    /// Its agent is connected; a connected host is not forgotten.
    Online,
    Unknown,
}

/// Deletes a host that is offline, and its rows in `fleet_services` with it
/// (`ON DELETE CASCADE`). Its events, generations and restarts stay: they
/// are history, pruned with the rest of it.
pub async fn forget_host(db: &Db, name: &str) -> anyhow::Result<HostForgotten> {
    let deleted = sqlx::query("DELETE FROM hosts WHERE name = $1 AND online = FALSE")
        .bind(name)
        .execute(&db.writes)
        .await
        .context("failed to forget the host")?
        .rows_affected();
    if deleted > 0 {
        return Ok(HostForgotten::Forgotten);
    }
    let online: Option<(Flag,)> = sqlx::query_as("SELECT online FROM hosts WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.writes)
        .await
        .context("failed to read the host")?;
    Ok(match online {
        Some(_) => HostForgotten::Online,
        None => HostForgotten::Unknown,
    })
}

/// The hosts offline and last seen before `last_seen_before` (Unix
/// milliseconds).
pub async fn hosts_offline_since(db: &Db, last_seen_before: u64) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM hosts WHERE online = FALSE AND last_seen < $1 ORDER BY name",
    )
    .bind(to_i64(last_seen_before))
    .fetch_all(&db.reads)
    .await
    .context("failed to list long-offline hosts")?;
    Ok(rows.into_iter().map(|(name,)| name).collect())
}

/// Every host's name.
pub async fn host_names(db: &Db) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM hosts ORDER BY name")
        .fetch_all(&db.reads)
        .await
        .context("failed to list the hosts")?;
    Ok(rows.into_iter().map(|(name,)| name).collect())
}
