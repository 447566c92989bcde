//! `fleet_services`: one row per host and service, what the host's agent
//! last reported, so the fleet's list pages, filters and counts in SQL and
//! every server replica answers it from the one database. The rows are
//! written with their host row (`hosts.rs`), in its transaction.

use super::db::{Db, Flag, SqlBuilder, WriteTx, to_i64, to_u64};
use anyhow::Context;
use baton_proto::api::ServiceOnHost;
use baton_proto::{ServiceState, ServiceStatus};

/// `fleet_services.state`, as the agent's `ServiceState` is named in JSON.
pub fn state_name(state: ServiceState) -> &'static str {
    state.as_str()
}

/// Replaces the host's rows by `services`, inside the host row's transaction.
pub(super) async fn replace_host_services(
    tx: &mut WriteTx,
    host: &str,
    services: &[ServiceStatus],
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM fleet_services WHERE host = $1")
        .bind(host)
        .execute(&mut **tx)
        .await
        .context("failed to clear the host's services")?;
    insert_rows(tx, host, services, OnConflict::Replace).await
}

/// Writes only what changed since `previous`, the services this link last
/// wrote for the host: a restart changes one service of many, and every
/// host's status is written every few seconds.
pub(super) async fn update_host_services(
    tx: &mut WriteTx,
    host: &str,
    services: &[ServiceStatus],
    previous: &[ServiceStatus],
) -> anyhow::Result<()> {
    // By name: an agent may run a thousand services, written every few seconds.
    let before: std::collections::HashMap<&str, &ServiceStatus> = previous
        .iter()
        .map(|old| (old.name.as_str(), old))
        .collect();
    let now: std::collections::HashSet<&str> =
        services.iter().map(|new| new.name.as_str()).collect();
    let gone: Vec<String> = previous
        .iter()
        .filter(|old| !now.contains(old.name.as_str()))
        .map(|old| old.name.clone())
        .collect();
    for chunk in gone.chunks(ROWS_PER_STATEMENT) {
        let mut query = SqlBuilder::new("DELETE FROM fleet_services WHERE host = ");
        query
            .push_bind(host.to_owned())
            .push(" AND service IN (")
            .push_binds(chunk.iter().cloned())
            .push(")");
        query
            .build()?
            .execute(&mut **tx)
            .await
            .context("failed to clear the host's services")?;
    }
    let changed: Vec<ServiceStatus> = services
        .iter()
        .filter(|new| before.get(new.name.as_str()) != Some(new))
        .cloned()
        .collect();
    insert_rows(tx, host, &changed, OnConflict::Replace).await
}

/// What an insert does to a row that exists.
#[derive(Clone, Copy)]
enum OnConflict {
    Replace,
    Keep,
}

/// Rows written by one statement: a host's services in one round trip to
/// the database rather than one each (its status is written every few
/// seconds by every host), well under both engines' parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

async fn insert_rows(
    tx: &mut WriteTx,
    host: &str,
    services: &[ServiceStatus],
    on_conflict: OnConflict,
) -> anyhow::Result<()> {
    // One statement may not upsert a row twice (PostgreSQL refuses it): a
    // service listed twice keeps its last entry, as writing them one by one
    // did.
    let mut seen = std::collections::HashSet::with_capacity(services.len());
    let mut last_of_each: Vec<&ServiceStatus> = services
        .iter()
        .rev()
        .filter(|status| seen.insert(status.name.as_str()))
        .collect();
    last_of_each.reverse();
    for chunk in last_of_each.chunks(ROWS_PER_STATEMENT) {
        let mut query = SqlBuilder::new(
            "INSERT INTO fleet_services (host, service, state, draining, troubled, status) VALUES ",
        );
        for (i, status) in chunk.iter().enumerate() {
            let on_host = ServiceOnHost::from_status(host, true, status);
            query
                .push(if i == 0 { "(" } else { ", (" })
                .push_bind(host.to_owned())
                .push(", ")
                .push_bind(status.name.clone())
                .push(", ")
                .push_bind(state_name(status.state))
                .push(", ")
                .push_bind(i64::try_from(on_host.draining.len()).unwrap_or(i64::MAX))
                // Online here: whether the host is is `hosts.online`, joined on read.
                .push(", ")
                .push_bind(on_host.needs_attention())
                .push(", ")
                .push_bind(serde_json::to_string(status)?)
                .push(")");
        }
        query.push(match on_conflict {
            OnConflict::Replace => {
                " ON CONFLICT (host, service) DO UPDATE SET
                    state = excluded.state,
                    draining = excluded.draining,
                    troubled = excluded.troubled,
                    status = excluded.status"
            }
            OnConflict::Keep => " ON CONFLICT (host, service) DO NOTHING",
        });
        query
            .build()?
            .execute(&mut **tx)
            .await
            .context("failed to store the host's services")?;
    }
    Ok(())
}

/// Which rows of the fleet's list a page shows. Names are matched exactly;
/// `search` matches a host or service name containing it, ignoring case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFilter {
    pub service: Option<String>,
    pub host: Option<String>,
    pub state: Option<ServiceState>,
    pub search: Option<String>,
}

impl FleetFilter {
    fn push_where(&self, query: &mut SqlBuilder) {
        query.push(" WHERE 1 = 1");
        if let Some(service) = &self.service {
            query.push(" AND f.service = ").push_bind(service.clone());
        }
        if let Some(host) = &self.host {
            query.push(" AND f.host = ").push_bind(host.clone());
        }
        if let Some(state) = self.state {
            query.push(" AND f.state = ").push_bind(state_name(state));
        }
        if let Some(search) = &self.search {
            let pattern = like_pattern(search);
            query
                .push(" AND (LOWER(f.host) LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR LOWER(f.service) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
    }
}

/// `%text%`, lower case, with LIKE's wildcards in `text` taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// One page of the fleet's list, host then service, and how many rows match.
#[derive(Debug)]
pub struct FleetPage {
    pub total: u64,
    pub services: Vec<FleetServiceRow>,
}

#[derive(Debug)]
pub struct FleetServiceRow {
    pub host: String,
    pub online: bool,
    pub status: ServiceStatus,
}

#[derive(sqlx::FromRow)]
struct StoredFleetService {
    host: String,
    #[sqlx(try_from = "Flag")]
    online: bool,
    status: String,
}

/// The rows `filter` selects from `offset` on, at most `limit`, ordered by
/// host then service (the primary key: the same order on every replica).
pub async fn list_fleet_services(
    db: &Db,
    filter: &FleetFilter,
    offset: u64,
    limit: u32,
) -> anyhow::Result<FleetPage> {
    let mut count =
        SqlBuilder::new("SELECT COUNT(*) FROM fleet_services f JOIN hosts h ON h.name = f.host");
    filter.push_where(&mut count);
    let (total,): (i64,) = count
        .build_query_as()?
        .fetch_one(&db.reads)
        .await
        .context("failed to count the fleet's services")?;
    let mut query = SqlBuilder::new(
        "SELECT f.host, h.online, f.status FROM fleet_services f JOIN hosts h ON h.name = f.host",
    );
    filter.push_where(&mut query);
    query
        .push(" ORDER BY f.host, f.service LIMIT ")
        .push_bind(i64::from(limit))
        .push(" OFFSET ")
        .push_bind(to_i64(offset));
    let rows: Vec<StoredFleetService> = query
        .build_query_as()?
        .fetch_all(&db.reads)
        .await
        .context("failed to list the fleet's services")?;
    let services = rows
        .into_iter()
        .map(|row| {
            let status = serde_json::from_str(&row.status).with_context(|| {
                format!(
                    "a stored service status of host {} does not parse",
                    row.host
                )
            })?;
            Ok(FleetServiceRow {
                host: row.host,
                online: row.online,
                status,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(FleetPage {
        total: to_u64(total),
        services,
    })
}

/// The fleet in numbers, for the overview.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Distinct service names.
    pub services: u64,
    pub hosts: u64,
    pub hosts_online: u64,
    /// Generations draining, over every host and service.
    pub draining: u64,
    /// Services on a host that need someone to look: offline, blocked,
    /// crash-looping or stopped.
    pub attention: u64,
}

pub async fn fleet_counts(db: &Db) -> anyhow::Result<FleetCounts> {
    let (hosts, hosts_online): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), CAST(SUM(CASE WHEN online = TRUE THEN 1 ELSE 0 END) AS BIGINT) FROM hosts",
    )
    .fetch_one(&db.reads)
    .await
    .context("failed to count the hosts")?;
    let (services, draining, attention): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(DISTINCT f.service), CAST(SUM(f.draining) AS BIGINT),
                CAST(SUM(CASE WHEN f.troubled = TRUE OR h.online = FALSE THEN 1 ELSE 0 END) AS BIGINT)
         FROM fleet_services f JOIN hosts h ON h.name = f.host",
    )
    .fetch_one(&db.reads)
    .await
    .context("failed to count the fleet's services")?;
    Ok(FleetCounts {
        services: to_u64(services),
        hosts: to_u64(hosts),
        hosts_online: to_u64(hosts_online.unwrap_or(0)),
        draining: to_u64(draining.unwrap_or(0)),
        attention: to_u64(attention.unwrap_or(0)),
    })
}

/// Hosts stored before `fleet_services` existed have their services only in
/// `hosts.services`: their rows are written once, at start. A row that
/// exists is left alone (another replica may have written a newer one since
/// this one looked), so running it again changes nothing.
pub async fn backfill_fleet_services(db: &Db) -> anyhow::Result<usize> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, services FROM hosts h
         WHERE services <> '[]'
           AND NOT EXISTS (SELECT 1 FROM fleet_services f WHERE f.host = h.name)
         ORDER BY name",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to find hosts without fleet rows")?;
    let mut filled = 0;
    for (host, services) in rows {
        let services: Vec<ServiceStatus> = serde_json::from_str(&services)
            .with_context(|| format!("the stored services of host {host} do not parse"))?;
        let mut tx = db.begin_write().await?;
        insert_rows(&mut tx, &host, &services, OnConflict::Keep).await?;
        tx.commit()
            .await
            .context("failed to commit the host's services")?;
        filled += 1;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_takes_like_wildcards_literally() {
        assert_eq!(like_pattern("Web_1"), "%web\\_1%");
        assert_eq!(like_pattern("a%b\\c"), "%a\\%b\\\\c%");
    }
}
