use anyhow::Context;
use baton_proto::ServiceStatus;

use super::db::{Db, to_i64};

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
    sqlx::query(
        "INSERT INTO hosts (name, agent_version, boot_id, first_seen, last_seen, online, services)
         VALUES ($1, $2, $3, $4, $4, TRUE, $5)
         ON CONFLICT (name) DO UPDATE SET
            agent_version = excluded.agent_version,
            boot_id = excluded.boot_id,
            last_seen = excluded.last_seen,
            online = TRUE,
            services = excluded.services",
    )
    .bind(name)
    .bind(agent_version)
    .bind(boot_id)
    .bind(to_i64(now))
    .bind(serde_json::to_string(services)?)
    .execute(&db.writes)
    .await
    .context("failed to store the host")?;
    Ok(())
}

pub async fn save_host_status(
    db: &Db,
    name: &str,
    now: u64,
    online: bool,
    services: &[ServiceStatus],
) -> anyhow::Result<()> {
    sqlx::query("UPDATE hosts SET last_seen = $2, online = $3, services = $4 WHERE name = $1")
        .bind(name)
        .bind(to_i64(now))
        .bind(online)
        .bind(serde_json::to_string(services)?)
        .execute(&db.writes)
        .await
        .context("failed to store the host's status")?;
    Ok(())
}
