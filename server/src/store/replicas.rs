//! Several servers on one database: each replica's heartbeat, which
//! replica holds each host's link, the lease of the replica driving each
//! running restart, the outbox of commands for hosts linked elsewhere, and
//! the change feed (events stored by other replicas).

use anyhow::Context;
use baton_proto::{Event, ServiceStatus};
use sqlx::{AnyConnection, Executor};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::db::{Backend, Db, SqlBuilder, text_enum, to_i64, to_u64};
use super::restarts::CommandSent;

/// A replica as its row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    pub heartbeat_at: u64,
    pub change_seq: u64,
}

pub async fn register_replica(db: &Db, id: &str, now: u64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO replicas (id, started_at, heartbeat_at, change_seq) VALUES ($1, $2, $2, 0)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
    )
    .bind(id)
    .bind(to_i64(now))
    .execute(&db.writes)
    .await
    .context("failed to register the replica")?;
    Ok(())
}

/// Says this replica is alive; `changed` moves its change sequence too.
pub async fn heartbeat(db: &Db, id: &str, now: u64, changed: bool) -> anyhow::Result<()> {
    let done = sqlx::query(
        "UPDATE replicas SET heartbeat_at = $2, change_seq = change_seq + $3 WHERE id = $1",
    )
    .bind(id)
    .bind(to_i64(now))
    .bind(i64::from(changed))
    .execute(&db.writes)
    .await
    .context("failed to write the replica's heartbeat")?;
    // Forgotten as dead by another replica after a long stall: back again.
    if done.rows_affected() == 0 {
        register_replica(db, id, now).await?;
    }
    let from = id.to_owned();
    let change = if changed {
        Change::Feed { from }
    } else {
        Change::Beat { from }
    };
    notify_after(db, &change).await;
    Ok(())
}

/// A replica that stops on purpose leaves at once: its hosts count as
/// offline without waiting for its heartbeat to age.
pub async fn remove_replica(db: &Db, id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM replicas WHERE id = $1")
        .bind(id)
        .execute(&db.writes)
        .await
        .context("failed to remove the replica")?;
    notify_after(
        db,
        &Change::Feed {
            from: id.to_owned(),
        },
    )
    .await;
    Ok(())
}

pub async fn replica_rows(db: &Db) -> anyhow::Result<Vec<ReplicaRow>> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT id, heartbeat_at, change_seq FROM replicas ORDER BY id")
            .fetch_all(&db.reads)
            .await
            .context("failed to read the replicas")?;
    Ok(rows
        .into_iter()
        .map(|(id, heartbeat_at, change_seq)| ReplicaRow {
            id,
            heartbeat_at: to_u64(heartbeat_at),
            change_seq: to_u64(change_seq),
        })
        .collect())
}

/// Hosts whose link replica is gone or silent since before `alive_after`
/// are offline, and so are hosts marked online with no link recorded since
/// before `alive_after` (a hello whose link was never recorded: a younger
/// one may be between its row and its link); replicas silent since before
/// `forget_before` are forgotten. Returns how many hosts went offline.
///
/// It runs every second on every replica, next to the hosts' status writes:
/// it looks first, on the read pool and without locking anything, and
/// writes only when something is to be released, each statement checking
/// again that the replica is still silent so that one back in the meantime
/// keeps its hosts.
pub async fn release_dead_replicas(
    db: &Db,
    alive_after: u64,
    forget_before: u64,
) -> anyhow::Result<u64> {
    let candidates: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT DISTINCT link_replica FROM hosts
         WHERE (link_replica IS NULL AND online = TRUE AND last_seen < $1)
            OR (link_replica IS NOT NULL
                AND link_replica NOT IN (SELECT id FROM replicas WHERE heartbeat_at >= $1))",
    )
    .bind(to_i64(alive_after))
    .fetch_all(&db.reads)
    .await
    .context("failed to look for the hosts of dead replicas")?;
    let mut released = 0;
    for (replica,) in candidates {
        let done = match replica {
            Some(replica) => sqlx::query(
                "UPDATE hosts SET online = FALSE, link_replica = NULL, link_id = NULL
                 WHERE link_replica = $1
                   AND NOT EXISTS (SELECT 1 FROM replicas WHERE id = $1 AND heartbeat_at >= $2)",
            )
            .bind(replica)
            .bind(to_i64(alive_after)),
            None => sqlx::query(
                "UPDATE hosts SET online = FALSE
                 WHERE link_replica IS NULL AND online = TRUE AND last_seen < $1",
            )
            .bind(to_i64(alive_after)),
        };
        released += done
            .execute(&db.writes)
            .await
            .context("failed to release the hosts of dead replicas")?
            .rows_affected();
    }
    sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
        .bind(to_i64(forget_before))
        .execute(&db.writes)
        .await
        .context("failed to forget dead replicas")?;
    Ok(released)
}

/// The hosts whose link the database says `replica` holds, with the link's
/// id.
pub async fn links_of_replica(db: &Db, replica: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT name, link_id FROM hosts WHERE link_replica = $1")
            .bind(replica)
            .fetch_all(&db.reads)
            .await
            .context("failed to read the links a replica holds")?;
    Ok(rows
        .into_iter()
        .map(|(name, link_id)| (name, link_id.map(to_u64).unwrap_or(0)))
        .collect())
}

/// Records again that `replica` holds the host's link `link_id` after the
/// other replicas took it for dead and released it (a stall longer than
/// the time a replica may stay silent), only while no link is recorded:
/// one an agent made since, here or elsewhere, is newer and stays.
/// Whether it was recorded.
pub async fn reassert_host_link(
    db: &Db,
    host: &str,
    replica: &str,
    link_id: u64,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE hosts SET link_replica = $2, link_id = $3, online = TRUE
         WHERE name = $1 AND link_replica IS NULL",
    )
    .bind(host)
    .bind(replica)
    .bind(to_i64(link_id))
    .execute(&db.writes)
    .await
    .context("failed to record the host's link again")?;
    Ok(done.rows_affected() == 1)
}

/// Records that `replica` holds the host's link `link_id`, right after its
/// hello.
pub async fn hold_host_link(
    db: &Db,
    host: &str,
    replica: &str,
    link_id: u64,
    announced_seq: u64,
    stored_seq: u64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE hosts SET link_replica = $2, link_id = $3, link_announced_seq = $4,
                link_stored_seq = $5, online = TRUE
         WHERE name = $1",
    )
    .bind(host)
    .bind(replica)
    .bind(to_i64(link_id))
    .bind(to_i64(announced_seq))
    .bind(to_i64(stored_seq))
    .execute(&db.writes)
    .await
    .context("failed to record the host's link")?;
    Ok(())
}

/// The link `link_id` closed: the host is offline, unless a newer link (on
/// any replica) holds it already. Whether this call marked it offline.
pub async fn release_host_link(
    db: &Db,
    host: &str,
    link_id: u64,
    now: u64,
    services: &[ServiceStatus],
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE hosts SET online = FALSE, link_replica = NULL, link_id = NULL, last_seen = $3,
                services = $4, services_rev = services_rev + 1
         WHERE name = $1 AND link_id = $2",
    )
    .bind(host)
    .bind(to_i64(link_id))
    .bind(to_i64(now))
    .bind(serde_json::to_string(services)?)
    .execute(&db.writes)
    .await
    .context("failed to release the host's link")?;
    Ok(done.rows_affected() == 1)
}

/// A host with the link it has, as the database says.
#[derive(Debug)]
pub struct LinkedHostRow {
    pub name: String,
    pub agent_version: String,
    pub boot_id: String,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Its services and their `services_rev`, when read (see
    /// [`linked_hosts`]).
    pub services: Option<(u64, Vec<ServiceStatus>)>,
    /// The replica holding its link and the link's id.
    pub link: Option<(String, u64)>,
    pub announced_seq: u64,
    pub stored_seq: u64,
}

#[derive(sqlx::FromRow)]
struct StoredLinkedHost {
    name: String,
    agent_version: String,
    boot_id: String,
    first_seen: i64,
    last_seen: i64,
    services_rev: i64,
    link_replica: Option<String>,
    link_id: Option<i64>,
    link_announced_seq: Option<i64>,
    link_stored_seq: Option<i64>,
}

/// Every host with its link. The services, the bulk of a row, only of the
/// hosts whose services another replica wrote (`link_replica` is not
/// `this_replica`) and whose `services_rev` is not the one in `known`: the
/// revision of the services the caller holds for each host.
pub async fn linked_hosts(
    db: &Db,
    this_replica: &str,
    known: &HashMap<String, u64>,
) -> anyhow::Result<Vec<LinkedHostRow>> {
    let rows: Vec<StoredLinkedHost> = sqlx::query_as(
        "SELECT name, agent_version, boot_id, first_seen, last_seen, services_rev, link_replica,
                link_id, link_announced_seq, link_stored_seq
         FROM hosts ORDER BY name",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to read the hosts' links")?;
    let wanted: Vec<&str> = rows
        .iter()
        .filter(|row| {
            row.link_replica.as_deref() != Some(this_replica)
                && known.get(&row.name) != Some(&to_u64(row.services_rev))
        })
        .map(|row| row.name.as_str())
        .collect();
    let mut services: HashMap<String, (u64, Vec<ServiceStatus>)> = HashMap::new();
    for chunk in wanted.chunks(SERVICES_PER_READ) {
        let mut query =
            SqlBuilder::new("SELECT name, services_rev, services FROM hosts WHERE name IN (");
        query
            .push_binds(chunk.iter().map(|name| (*name).to_owned()))
            .push(")");
        let read: Vec<(String, i64, String)> = query
            .build_query_as()?
            .fetch_all(&db.reads)
            .await
            .context("failed to read the hosts' services")?;
        for (name, rev, json) in read {
            let list = serde_json::from_str(&json)
                .with_context(|| format!("the stored services of host {name} do not parse"))?;
            services.insert(name, (to_u64(rev), list));
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| LinkedHostRow {
            link: row.link_replica.zip(row.link_id.map(to_u64)),
            services: services.remove(&row.name),
            name: row.name,
            agent_version: row.agent_version,
            boot_id: row.boot_id,
            first_seen: to_u64(row.first_seen),
            last_seen: to_u64(row.last_seen),
            announced_seq: row.link_announced_seq.map(to_u64).unwrap_or(0),
            stored_seq: row.link_stored_seq.map(to_u64).unwrap_or(0),
        })
        .collect())
}

/// Hosts whose services one statement of [`linked_hosts`] reads.
const SERVICES_PER_READ: usize = 200;

/// Makes `driver` the driver of a running restart until `until`, if no
/// other replica drives it with a live lease. A restart that never had a
/// driver is claimable only if it was created before `unclaimed_before`:
/// the replica that created it passes `u64::MAX` and claims it first.
pub async fn claim_restart(
    db: &Db,
    restart_id: u64,
    driver: &str,
    now: u64,
    until: u64,
    unclaimed_before: u64,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE restarts SET driver = $2, lease_until = $4
         WHERE id = $1 AND state = 'running'
           AND (driver = $2
                OR (lease_until IS NOT NULL AND lease_until < $3)
                OR (lease_until IS NULL AND created_at < $5))",
    )
    .bind(to_i64(restart_id))
    .bind(driver)
    .bind(to_i64(now))
    .bind(to_i64(until))
    .bind(to_i64(unclaimed_before))
    .execute(&db.writes)
    .await
    .context("failed to claim a restart")?;
    Ok(done.rows_affected() == 1)
}

/// Running restarts with no live driver: a lease that ran out, or none
/// taken since `unclaimed_before`. At most `limit`, oldest first.
pub async fn orphaned_restarts(
    db: &Db,
    now: u64,
    unclaimed_before: u64,
    limit: u32,
) -> anyhow::Result<Vec<u64>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM restarts
         WHERE state = 'running'
           AND ((lease_until IS NOT NULL AND lease_until < $1)
                OR (lease_until IS NULL AND created_at < $2))
         ORDER BY id LIMIT $3",
    )
    .bind(to_i64(now))
    .bind(to_i64(unclaimed_before))
    .bind(i64::from(limit))
    .fetch_all(&db.reads)
    .await
    .context("failed to look for restarts without a driver")?;
    Ok(rows.into_iter().map(|(id,)| to_u64(id)).collect())
}

/// Extends the leases `driver` holds; the running restarts it still drives.
pub async fn renew_leases(db: &Db, driver: &str, until: u64) -> anyhow::Result<Vec<u64>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "UPDATE restarts SET lease_until = $2 WHERE driver = $1 AND state = 'running' RETURNING id",
    )
    .bind(driver)
    .bind(to_i64(until))
    .fetch_all(&db.writes)
    .await
    .context("failed to renew the restarts' leases")?;
    Ok(rows.into_iter().map(|(id,)| to_u64(id)).collect())
}

/// A replica that stops lets others take its restarts at once.
pub async fn release_leases(db: &Db, driver: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE restarts SET lease_until = 0 WHERE driver = $1 AND state = 'running'")
        .bind(driver)
        .execute(&db.writes)
        .await
        .context("failed to release the restarts' leases")?;
    Ok(())
}

/// Records that the command is about to go to the host, only while
/// `driver` drives the restart and the host has not been commanded: the
/// fence that keeps a replica that lost its lease from commanding a host
/// its successor commands. The sequence recorded is the highest of
/// `sent.seq_at_command` and the host's events stored so far (by whichever
/// replica holds its link: some may not have reached this one yet); `None`
/// when nothing was recorded.
pub async fn mark_host_running_as_driver(
    db: &Db,
    sent: &CommandSent<'_>,
    driver: &str,
) -> anyhow::Result<Option<u64>> {
    let recorded: Option<(i64,)> = sqlx::query_as(
        "UPDATE restart_hosts SET state = 'running', command_id = $3, boot_id = $4,
                seq_at_command = (SELECT CASE WHEN MAX(seq) > $5 THEN MAX(seq) ELSE $5 END
                                  FROM events WHERE host = $2 AND boot_id = $4),
                started_at = $6
         WHERE restart_id = $1 AND host = $2 AND state = 'pending'
           AND EXISTS (SELECT 1 FROM restarts WHERE id = $1 AND driver = $7 AND state = 'running')
         RETURNING seq_at_command",
    )
    .bind(to_i64(sent.restart_id))
    .bind(sent.host)
    .bind(sent.command_id)
    .bind(sent.boot_id)
    .bind(to_i64(sent.seq_at_command))
    .bind(to_i64(crate::domain::now_millis()))
    .bind(driver)
    .fetch_optional(&db.writes)
    .await
    .context("failed to record the restart command")?;
    Ok(recorded.map(|(seq,)| to_u64(seq)))
}

/// Whether `driver` still drives the restart and the host still waits on
/// the command `command_id`: the fence before a command goes out again.
pub async fn still_commanding(
    db: &Db,
    restart_id: u64,
    host: &str,
    command_id: &str,
    driver: &str,
) -> anyhow::Result<bool> {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM restart_hosts
         WHERE restart_id = $1 AND host = $2 AND state = 'running' AND command_id = $3
           AND EXISTS (SELECT 1 FROM restarts WHERE id = $1 AND driver = $4 AND state = 'running')",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(command_id)
    .bind(driver)
    .fetch_one(&db.reads)
    .await
    .context("failed to read the restart command")?;
    Ok(count > 0)
}

/// The highest event id stored; the change feed starts after it.
pub async fn last_event_id(db: &Db) -> anyhow::Result<u64> {
    let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM events")
        .fetch_one(&db.reads)
        .await
        .context("failed to read the last event id")?;
    Ok(max.map(to_u64).unwrap_or(0))
}

/// An event another replica stored.
#[derive(Debug, Clone)]
pub struct FedEvent {
    pub id: u64,
    pub host: String,
    pub boot_id: String,
    pub event: Event,
}

/// How long an id the change feed skipped over is looked for again.
pub const FEED_HOLE_LIFETIME: Duration = Duration::from_secs(30);
/// At most this many skipped ids are looked for again; beyond, the lowest
/// are given up.
pub const FEED_MAX_HOLES: usize = 1024;
/// Skipped ids looked for in one statement.
const HOLES_PER_READ: usize = 512;

/// Where the change feed is in `events`.
///
/// Ids are handed out when a row is inserted but the row is seen only once
/// its transaction commits, and on PostgreSQL transactions commit in any
/// order: a transaction holding id 10 may commit after id 11 was read. So
/// the ids below the highest read that were not there yet are kept as holes
/// and looked for again at every read, until they show up or are older than
/// [`FEED_HOLE_LIFETIME`] (an id no row will ever have: a rolled back
/// insert, or on PostgreSQL an insert that conflicted), at most
/// [`FEED_MAX_HOLES`] of them. On SQLite one writer commits at a time, so
/// ids show up in order and a hole is only ever an id never used; the same
/// code runs on both.
#[derive(Debug, Clone)]
pub struct FeedCursor {
    /// The highest id read.
    last: u64,
    /// Ids below `last` not seen yet, with when they were first missed
    /// (Unix ms).
    holes: BTreeMap<u64, u64>,
}

/// One read of the change feed.
#[derive(Debug, Default)]
pub struct FeedRead {
    /// Events other replicas stored: the late ones (holes filled) first,
    /// then the new ones, each part by id.
    pub events: Vec<FedEvent>,
    /// The read was full: more may follow at once.
    pub more: bool,
}

impl FeedCursor {
    /// A feed that reads the events after `last`.
    pub fn after(last: u64) -> FeedCursor {
        FeedCursor {
            last,
            holes: BTreeMap::new(),
        }
    }

    /// The highest id read.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The skipped ids still looked for.
    pub fn holes(&self) -> usize {
        self.holes.len()
    }

    /// The events a replica other than `replica` stored that this cursor
    /// has not read: those committed late below the highest id read, then
    /// at most `limit` after it. `now` (Unix ms) ages the holes.
    pub async fn read(
        &mut self,
        db: &Db,
        replica: &str,
        now: u64,
        limit: u32,
    ) -> anyhow::Result<FeedRead> {
        let lifetime = FEED_HOLE_LIFETIME.as_millis() as u64;
        self.holes
            .retain(|_, missed_at| missed_at.saturating_add(lifetime) >= now);
        let mut read = FeedRead::default();

        let holes: Vec<u64> = self.holes.keys().copied().collect();
        for chunk in holes.chunks(HOLES_PER_READ) {
            let mut sql = SqlBuilder::new(
                "SELECT id, host, boot_id, replica, body FROM events WHERE id IN (",
            );
            sql.push_binds(chunk.iter().map(|id| to_i64(*id)));
            sql.push(") ORDER BY id");
            let rows: Vec<FeedRow> = sql
                .build_query_as()?
                .fetch_all(&db.reads)
                .await
                .context("failed to read the change feed's late events")?;
            for row in rows {
                self.holes.remove(&to_u64(row.0));
                take_into(row, replica, &mut read.events);
            }
        }

        let rows: Vec<FeedRow> = sqlx::query_as(
            "SELECT id, host, boot_id, replica, body FROM events WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(to_i64(self.last))
        .bind(i64::from(limit))
        .fetch_all(&db.reads)
        .await
        .context("failed to read the change feed")?;
        read.more = rows.len() >= limit as usize;
        for row in rows {
            let id = to_u64(row.0);
            // Only the top of a wide jump is kept: the cap would drop the
            // rest at once.
            let skipped_from = (self.last + 1).max(id.saturating_sub(FEED_MAX_HOLES as u64));
            for hole in skipped_from..id {
                self.holes.insert(hole, now);
            }
            self.last = self.last.max(id);
            take_into(row, replica, &mut read.events);
        }
        let mut given_up = 0;
        while self.holes.len() > FEED_MAX_HOLES {
            self.holes.pop_first();
            given_up += 1;
        }
        if given_up > 0 {
            tracing::warn!(
                ids = given_up,
                "the change feed stopped looking for ids not committed yet; a late event among them is seen only through a report fetch"
            );
        }
        Ok(read)
    }
}

/// `id, host, boot_id, replica, body` of an event.
type FeedRow = (i64, String, String, Option<String>, String);

/// The row's event, unless `replica` stored it itself; one that does not
/// parse is skipped.
fn take_into(row: FeedRow, replica: &str, events: &mut Vec<FedEvent>) {
    let (id, host, boot_id, stored_by, body) = row;
    if stored_by.as_deref() == Some(replica) {
        return;
    }
    match serde_json::from_str::<Event>(&body) {
        Ok(event) => events.push(FedEvent {
            id: to_u64(id),
            host,
            boot_id,
            event,
        }),
        Err(error) => tracing::warn!(id, %error, "a stored event does not parse; skipped"),
    }
}

/// The channel writers `NOTIFY` on PostgreSQL and every replica `LISTEN`s
/// to (`replicas::listen`).
pub const CHANGES_CHANNEL: &str = "baton_replicas";

/// What a notification on [`CHANGES_CHANNEL`] says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `from` stored events, or moved its change sequence, or left: the
    /// change feed of the others has something to read.
    Feed { from: String },
    /// A command was queued for a host: the replica holding its link
    /// delivers it. `to` names that replica and the command's id; when not
    /// said, every replica looks for commands of its hosts.
    Command { to: Option<(String, u64)> },
    /// The queued command `id` was answered: its sender reads the answer.
    Answer { id: u64 },
    /// A log chunk was relayed: the replicas reading relayed streams read.
    Logs,
    /// `from` is alive; tells its own listener that notifications arrive.
    Beat { from: String },
}

impl Change {
    fn payload(&self) -> String {
        // Replica ids are ours (hex), but a payload is spliced into the
        // statement: nothing but these characters goes in.
        let id = |from: &str| -> String {
            from.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        };
        match self {
            Change::Feed { from } => format!("feed {}", id(from)),
            Change::Command { to: None } => "command".to_owned(),
            Change::Command {
                to: Some((replica, command)),
            } => format!("command {} {command}", id(replica)),
            Change::Answer { id } => format!("answer {id}"),
            Change::Logs => "logs".to_owned(),
            Change::Beat { from } => format!("beat {}", id(from)),
        }
    }

    /// A notification's payload; `None` for one this version does not know.
    pub fn parse(payload: &str) -> Option<Change> {
        let (kind, from) = payload.split_once(' ').unwrap_or((payload, ""));
        match (kind, from) {
            ("feed", from) if !from.is_empty() => Some(Change::Feed {
                from: from.to_owned(),
            }),
            ("command", "") => Some(Change::Command { to: None }),
            ("command", to) => {
                let (replica, command) = to.split_once(' ')?;
                Some(Change::Command {
                    to: Some((replica.to_owned(), command.parse().ok()?)),
                })
            }
            ("answer", id) => id.parse().ok().map(|id| Change::Answer { id }),
            ("logs", "") => Some(Change::Logs),
            ("beat", from) if !from.is_empty() => Some(Change::Beat {
                from: from.to_owned(),
            }),
            _ => None,
        }
    }
}

/// On PostgreSQL, `NOTIFY`s the change on `conn`: inside a transaction it
/// is delivered at its commit, with what it wrote; outside one, right away.
/// Nothing on SQLite, whose replicas poll.
pub(super) async fn notify(
    db: &Db,
    conn: &mut AnyConnection,
    change: &Change,
) -> anyhow::Result<()> {
    if db.backend() != Backend::Postgres {
        return Ok(());
    }
    // NOTIFY takes no parameters; `pg_notify` would, but returns `void`,
    // which the `Any` driver cannot read.
    let statement = format!("NOTIFY {CHANGES_CHANNEL}, '{}'", change.payload());
    conn.execute(sqlx::AssertSqlSafe(statement))
        .await
        .context("failed to notify the other replicas")?;
    Ok(())
}

/// [`notify`] on a connection of the pool, after a write that committed on
/// its own. A failure only costs the others a tick of their polling: it is
/// logged, not returned, since the write itself is done.
pub(super) async fn notify_after(db: &Db, change: &Change) {
    if db.backend() != Backend::Postgres {
        return;
    }
    let notified = async {
        let mut conn = db
            .writes
            .acquire()
            .await
            .context("the database writer is unavailable")?;
        notify(db, &mut conn, change).await
    };
    if let Err(error) = notified.await {
        tracing::debug!(
            error = format!("{error:#}"),
            "cannot notify the other replicas"
        );
    }
}

/// `host_commands.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCommandKind {
    Restart,
    FetchReport,
    /// A log stream relayed through the database; `command_id` names it
    /// (`store::log_relay`).
    OpenLogs,
}

text_enum!(HostCommandKind {
    Restart = "restart",
    FetchReport = "fetch_report",
    OpenLogs = "open_logs",
});

/// `host_commands.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCommandState {
    Pending,
    Sent,
    Answered,
}

text_enum!(HostCommandState {
    Pending = "pending",
    Sent = "sent",
    Answered = "answered",
});

/// A command for a host whose link another replica holds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostCommandRow {
    pub id: i64,
    pub host: String,
    pub link_id: i64,
    pub kind: HostCommandKind,
    pub command_id: Option<String>,
    pub service: Option<String>,
    pub reason: Option<String>,
    pub boot_id: Option<String>,
    pub agent_restart_id: Option<i64>,
    pub expires_at: i64,
}

pub struct NewHostCommand<'a> {
    pub host: &'a str,
    /// The replica holding the host's link: only its delivery is woken
    /// (every replica's when `None`).
    pub holder: Option<&'a str>,
    pub link_id: u64,
    pub kind: HostCommandKind,
    pub command_id: Option<&'a str>,
    pub service: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub boot_id: Option<&'a str>,
    pub agent_restart_id: Option<u64>,
    pub expires_at: u64,
}

/// Queues a command, unless `max_pending` wait for the host already: its
/// id, or `None`.
pub async fn queue_host_command(
    db: &Db,
    new: &NewHostCommand<'_>,
    now: u64,
    max_pending: u32,
) -> anyhow::Result<Option<u64>> {
    let mut tx = db.begin_write().await?;
    let (pending,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM host_commands WHERE host = $1 AND state = 'pending' AND expires_at >= $2",
    )
    .bind(new.host)
    .bind(to_i64(now))
    .fetch_one(&mut *tx)
    .await
    .context("failed to count a host's waiting commands")?;
    if pending >= i64::from(max_pending) {
        tx.rollback().await;
        return Ok(None);
    }
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO host_commands (host, link_id, kind, command_id, service, reason, boot_id,
                agent_restart_id, state, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10) RETURNING id",
    )
    .bind(new.host)
    .bind(to_i64(new.link_id))
    .bind(new.kind)
    .bind(new.command_id)
    .bind(new.service)
    .bind(new.reason)
    .bind(new.boot_id)
    .bind(new.agent_restart_id.map(to_i64))
    .bind(to_i64(now))
    .bind(to_i64(new.expires_at))
    .fetch_one(&mut *tx)
    .await
    .context("failed to queue a host command")?;
    let to = new.holder.map(|holder| (holder.to_owned(), to_u64(id)));
    notify(db, &mut tx, &Change::Command { to }).await?;
    tx.commit()
        .await
        .context("failed to commit a host command")?;
    Ok(Some(to_u64(id)))
}

/// Commands waiting for hosts whose link `replica` holds, at most `limit`.
pub async fn commands_to_deliver(
    db: &Db,
    replica: &str,
    now: u64,
    limit: u32,
) -> anyhow::Result<Vec<HostCommandRow>> {
    sqlx::query_as(
        "SELECT c.id, c.host, c.link_id, c.kind, c.command_id, c.service, c.reason, c.boot_id,
                c.agent_restart_id, c.expires_at
         FROM host_commands c JOIN hosts h ON h.name = c.host
         WHERE c.state = 'pending' AND c.expires_at >= $2 AND h.link_replica = $1
         ORDER BY c.id LIMIT $3",
    )
    .bind(replica)
    .bind(to_i64(now))
    .bind(i64::from(limit))
    .fetch_all(&db.reads)
    .await
    .context("failed to read the commands to deliver")
}

/// Takes the waiting command `id` for delivery, named by a notification:
/// its row, or `None` when it was taken, answered or expired already.
pub async fn take_host_command_named(
    db: &Db,
    id: u64,
    now: u64,
) -> anyhow::Result<Option<HostCommandRow>> {
    sqlx::query_as(
        "UPDATE host_commands SET state = 'sent'
         WHERE id = $1 AND state = 'pending' AND expires_at >= $2
         RETURNING id, host, link_id, kind, command_id, service, reason, boot_id,
                   agent_restart_id, expires_at",
    )
    .bind(to_i64(id))
    .bind(to_i64(now))
    .fetch_optional(&db.writes)
    .await
    .context("failed to take a host command")
}

/// Takes a waiting command for delivery; false when another took it.
pub async fn take_host_command(db: &Db, id: u64) -> anyhow::Result<bool> {
    let done =
        sqlx::query("UPDATE host_commands SET state = 'sent' WHERE id = $1 AND state = 'pending'")
            .bind(to_i64(id))
            .execute(&db.writes)
            .await
            .context("failed to take a host command")?;
    Ok(done.rows_affected() == 1)
}

pub async fn answer_host_command(db: &Db, id: u64, answer: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE host_commands SET state = 'answered', answer = $2 WHERE id = $1")
        .bind(to_i64(id))
        .bind(answer)
        .execute(&db.writes)
        .await
        .context("failed to answer a host command")?;
    notify_after(db, &Change::Answer { id }).await;
    Ok(())
}

/// The answer's JSON, once there is one.
pub async fn host_command_answer(db: &Db, id: u64) -> anyhow::Result<Option<String>> {
    let row: Option<(HostCommandState, Option<String>)> =
        sqlx::query_as("SELECT state, answer FROM host_commands WHERE id = $1")
            .bind(to_i64(id))
            .fetch_optional(&db.reads)
            .await
            .context("failed to read a host command")?;
    Ok(match row {
        Some((HostCommandState::Answered, answer)) => answer,
        _ => None,
    })
}

/// Commands expired before `before` go.
pub async fn prune_host_commands(db: &Db, before: u64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM host_commands WHERE expires_at < $1")
        .bind(to_i64(before))
        .execute(&db.writes)
        .await
        .context("failed to prune host commands")?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_say_what_changed_and_an_answer_names_its_command() {
        for change in [
            Change::Feed { from: "a1".into() },
            Change::Command { to: None },
            Change::Command {
                to: Some(("c3".into(), 17)),
            },
            Change::Answer { id: 42 },
            Change::Logs,
            Change::Beat { from: "b2".into() },
        ] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        assert_eq!(Change::Answer { id: 7 }.payload(), "answer 7");
        for unknown in [
            "answer",
            "answer x",
            "feed",
            "command c3",
            "command c3 x",
            "later 1",
        ] {
            assert_eq!(Change::parse(unknown), None, "{unknown}");
        }
    }
    use crate::replicas::FEED_BATCH;
    use crate::store::testing::{on_both_engines, restart_on};

    fn sent<'a>(restart_id: u64, host: &'a str, command_id: &'a str) -> CommandSent<'a> {
        CommandSent {
            restart_id,
            host,
            command_id,
            boot_id: "boot",
            seq_at_command: 0,
        }
    }

    async fn one_replica_drives_a_restart_until_its_lease_runs_out(db: &Db) {
        let id = restart_on(db, &["alpha".to_string()]).await;
        let now = crate::domain::now_millis();
        // Fresh and unclaimed: the replica that created it claims it, no
        // other may yet.
        assert!(
            orphaned_restarts(db, now, now - 3_000, 16)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !claim_restart(db, id, "b", now, now + 3_000, now - 3_000)
                .await
                .unwrap()
        );
        assert!(
            claim_restart(db, id, "a", now, now + 3_000, u64::MAX)
                .await
                .unwrap()
        );
        assert!(
            !claim_restart(db, id, "b", now + 1_000, now + 4_000, now - 2_000)
                .await
                .unwrap()
        );
        assert_eq!(renew_leases(db, "a", now + 3_000).await.unwrap(), vec![id]);
        assert!(renew_leases(db, "b", now + 3_000).await.unwrap().is_empty());

        // A's lease ran out: B takes it over, and A's renewal finds it gone.
        let later = now + 3_001;
        assert_eq!(
            orphaned_restarts(db, later, later - 3_000, 16)
                .await
                .unwrap(),
            vec![id]
        );
        assert!(
            claim_restart(db, id, "b", later, later + 3_000, later - 3_000)
                .await
                .unwrap()
        );
        assert!(
            renew_leases(db, "a", later + 3_000)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn a_replica_that_lost_its_lease_cannot_command_a_host(db: &Db) {
        let id = restart_on(db, &["alpha".to_string(), "beta".to_string()]).await;
        let now = crate::domain::now_millis();
        assert!(
            claim_restart(db, id, "a", now, now + 3_000, u64::MAX)
                .await
                .unwrap()
        );
        assert_eq!(
            mark_host_running_as_driver(db, &sent(id, "alpha", "c1"), "a")
                .await
                .unwrap(),
            Some(0),
            "no event stored: the sequence given"
        );
        let later = now + 3_001;
        assert!(
            claim_restart(db, id, "b", later, later + 3_000, later - 3_000)
                .await
                .unwrap()
        );

        // A has not noticed yet: its command for beta is not recorded, so
        // it is not sent.
        assert!(
            mark_host_running_as_driver(db, &sent(id, "beta", "c2"), "a")
                .await
                .unwrap()
                .is_none()
        );
        // B resumes: alpha was commanded already and is not commanded again.
        assert!(
            mark_host_running_as_driver(db, &sent(id, "alpha", "c3"), "b")
                .await
                .unwrap()
                .is_none()
        );
        // Beta's link is elsewhere and its events up to 7 are stored: the
        // sequence recorded is 7, whatever this replica has seen.
        let event = |seq: u64| baton_proto::Event {
            seq,
            at: seq,
            service: "web".into(),
            restart: None,
            kind: baton_proto::EventKind::RestartStarted {
                reason: None,
                requested_by: None,
            },
        };
        crate::store::store_events(db, "beta", "boot", &[event(6), event(7)], &[])
            .await
            .unwrap();
        crate::store::store_events(db, "beta", "old-boot", &[event(9)], &[])
            .await
            .unwrap();
        assert_eq!(
            mark_host_running_as_driver(db, &sent(id, "beta", "c4"), "b")
                .await
                .unwrap(),
            Some(7)
        );
        let hosts = crate::store::restart_host_rows(db, id).await.unwrap();
        let commands: Vec<Option<&str>> = hosts.iter().map(|h| h.command_id.as_deref()).collect();
        assert_eq!(commands, vec![Some("c1"), Some("c4")]);

        // A command goes again only from the driver, under its own id.
        assert!(still_commanding(db, id, "alpha", "c1", "b").await.unwrap());
        assert!(!still_commanding(db, id, "alpha", "c1", "a").await.unwrap());
        assert!(!still_commanding(db, id, "alpha", "c3", "b").await.unwrap());
        assert!(!still_commanding(db, id, "gamma", "c1", "b").await.unwrap());
    }

    async fn a_host_goes_offline_only_if_its_link_is_still_the_one_that_closed(db: &Db) {
        crate::store::upsert_host(db, "alpha", "1", "boot", 1, &[])
            .await
            .unwrap();
        hold_host_link(db, "alpha", "a", 11, 0, 0).await.unwrap();
        // The agent linked to B before A saw its old link close.
        hold_host_link(db, "alpha", "b", 22, 0, 0).await.unwrap();
        assert!(!release_host_link(db, "alpha", 11, 2, &[]).await.unwrap());
        let hosts = linked_hosts(db, "x", &HashMap::new()).await.unwrap();
        assert_eq!(hosts[0].link, Some(("b".to_string(), 22)));
        assert!(release_host_link(db, "alpha", 22, 3, &[]).await.unwrap());
        assert_eq!(
            linked_hosts(db, "x", &HashMap::new()).await.unwrap()[0].link,
            None
        );
    }

    async fn services_are_read_only_of_hosts_linked_elsewhere_whose_revision_moved(db: &Db) {
        let web = |crashes: u32| ServiceStatus {
            name: "web".into(),
            state: baton_proto::ServiceState::Ready,
            sockets: Vec::new(),
            generations: Vec::new(),
            consecutive_crashes: crashes,
            running_restart: None,
            last_restart: None,
            blocked: None,
            next_start: None,
        };
        for host in ["alpha", "beta"] {
            crate::store::upsert_host(db, host, "1", "boot", 1, &[web(1)])
                .await
                .unwrap();
        }
        hold_host_link(db, "alpha", "a", 1, 0, 0).await.unwrap();
        hold_host_link(db, "beta", "b", 2, 0, 0).await.unwrap();
        let read = |hosts: Vec<LinkedHostRow>| {
            hosts
                .into_iter()
                .map(|h| {
                    (
                        h.name,
                        h.services
                            .map(|(rev, list)| (rev, list[0].consecutive_crashes)),
                    )
                })
                .collect::<Vec<_>>()
        };
        // A holds alpha's link: only beta's services are read, at its revision.
        let first = read(linked_hosts(db, "a", &HashMap::new()).await.unwrap());
        assert_eq!(
            first,
            vec![("alpha".into(), None), ("beta".into(), Some((0, 1)))]
        );
        let known = HashMap::from([("beta".to_string(), 0)]);
        let unchanged = read(linked_hosts(db, "a", &known).await.unwrap());
        assert_eq!(
            unchanged,
            vec![("alpha".into(), None), ("beta".into(), None)]
        );
        // B writes beta's status: its revision moves and A reads it again.
        crate::store::save_host_status(db, "beta", 2, true, &[web(2)])
            .await
            .unwrap();
        let moved = read(linked_hosts(db, "a", &known).await.unwrap());
        assert_eq!(
            moved,
            vec![("alpha".into(), None), ("beta".into(), Some((1, 2)))]
        );
    }

    async fn the_hosts_of_a_dead_replica_go_offline(db: &Db) {
        register_replica(db, "a", 1_000).await.unwrap();
        register_replica(db, "b", 5_000).await.unwrap();
        for (host, replica) in [("alpha", "a"), ("beta", "b")] {
            crate::store::upsert_host(db, host, "1", "boot", 1, &[])
                .await
                .unwrap();
            hold_host_link(db, host, replica, 1, 0, 0).await.unwrap();
        }
        // At 5 s, A was last heard of 4 s ago: dead.
        assert_eq!(release_dead_replicas(db, 2_000, 0).await.unwrap(), 1);
        let links: Vec<Option<(String, u64)>> = linked_hosts(db, "x", &HashMap::new())
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.link)
            .collect();
        assert_eq!(links, vec![None, Some(("b".to_string(), 1))]);
    }

    async fn a_host_between_its_hello_and_its_link_is_not_released(db: &Db) {
        register_replica(db, "a", 5_000).await.unwrap();
        // Its hello wrote the row at 4.5 s; the link is not recorded yet.
        crate::store::upsert_host(db, "alpha", "1", "boot", 4_500, &[])
            .await
            .unwrap();
        assert_eq!(release_dead_replicas(db, 2_000, 0).await.unwrap(), 0);
        hold_host_link(db, "alpha", "a", 7, 0, 0).await.unwrap();
        assert_eq!(
            linked_hosts(db, "x", &HashMap::new()).await.unwrap()[0].link,
            Some(("a".to_string(), 7))
        );
        // One whose link was never recorded, long ago, is offline.
        crate::store::upsert_host(db, "beta", "1", "boot", 1_000, &[])
            .await
            .unwrap();
        assert_eq!(release_dead_replicas(db, 2_000, 0).await.unwrap(), 1);
        let online: Vec<(String, bool)> = sqlx::query_as::<_, (String, super::super::db::Flag)>(
            "SELECT name, online FROM hosts ORDER BY name",
        )
        .fetch_all(&db.reads)
        .await
        .unwrap()
        .into_iter()
        .map(|(name, online)| (name, online.into()))
        .collect();
        assert_eq!(
            online,
            vec![("alpha".to_string(), true), ("beta".to_string(), false)]
        );
    }

    async fn a_replica_back_from_a_stall_records_its_links_again_but_not_over_newer_ones(db: &Db) {
        register_replica(db, "a", 5_000).await.unwrap();
        register_replica(db, "b", 1_000).await.unwrap();
        for host in ["alpha", "beta"] {
            crate::store::upsert_host(db, host, "1", "boot", 1, &[])
                .await
                .unwrap();
            hold_host_link(db, host, "b", 1, 0, 0).await.unwrap();
        }
        // B stalled: A takes it for dead and releases its hosts.
        assert_eq!(release_dead_replicas(db, 2_000, 0).await.unwrap(), 2);
        assert!(links_of_replica(db, "b").await.unwrap().is_empty());
        // Meanwhile beta's agent linked to A.
        hold_host_link(db, "beta", "a", 9, 0, 0).await.unwrap();

        // B is back: alpha's link is recorded again, beta's newer one stays.
        heartbeat(db, "b", 6_000, false).await.unwrap();
        assert!(reassert_host_link(db, "alpha", "b", 1).await.unwrap());
        assert!(!reassert_host_link(db, "beta", "b", 1).await.unwrap());
        assert_eq!(
            links_of_replica(db, "b").await.unwrap(),
            vec![("alpha".to_string(), 1)]
        );
        let links: Vec<Option<(String, u64)>> = linked_hosts(db, "x", &HashMap::new())
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.link)
            .collect();
        assert_eq!(
            links,
            vec![Some(("b".to_string(), 1)), Some(("a".to_string(), 9))]
        );
        // Alive again, it keeps them.
        assert_eq!(release_dead_replicas(db, 3_000, 0).await.unwrap(), 0);
    }

    async fn a_host_holds_only_so_many_waiting_commands(db: &Db) {
        let command = NewHostCommand {
            host: "alpha",
            holder: None,
            link_id: 1,
            kind: HostCommandKind::FetchReport,
            command_id: None,
            service: None,
            reason: None,
            boot_id: Some("boot"),
            agent_restart_id: Some(1),
            expires_at: 10_000,
        };
        for _ in 0..3 {
            assert!(
                queue_host_command(db, &command, 1, 3)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(
            queue_host_command(db, &command, 1, 3)
                .await
                .unwrap()
                .is_none()
        );
        // Expired ones no longer count, and go.
        let fresh = NewHostCommand {
            expires_at: 20_000,
            holder: None,
            ..command
        };
        assert!(
            queue_host_command(db, &fresh, 10_001, 3)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(prune_host_commands(db, 10_001).await.unwrap(), 3);
    }

    async fn a_command_named_by_a_notification_is_taken_once_and_not_once_expired(db: &Db) {
        let command = NewHostCommand {
            host: "alpha",
            holder: Some("b"),
            link_id: 7,
            kind: HostCommandKind::Restart,
            command_id: Some("c1"),
            service: Some("web"),
            reason: None,
            boot_id: None,
            agent_restart_id: None,
            expires_at: 10_000,
        };
        let id = queue_host_command(db, &command, 1, 16)
            .await
            .unwrap()
            .unwrap();
        let expired = queue_host_command(db, &command, 1, 16)
            .await
            .unwrap()
            .unwrap();
        let row = take_host_command_named(db, id, 2).await.unwrap().unwrap();
        assert_eq!((row.link_id, row.command_id.as_deref()), (7, Some("c1")));
        assert!(take_host_command_named(db, id, 3).await.unwrap().is_none());
        assert!(!take_host_command(db, id).await.unwrap());
        assert!(
            take_host_command_named(db, expired, 10_001)
                .await
                .unwrap()
                .is_none()
        );
    }

    fn spawned(seq: u64) -> Event {
        Event {
            seq,
            at: 1_000 + seq,
            service: "web".into(),
            restart: None,
            kind: baton_proto::EventKind::GenerationSpawned {
                generation: seq,
                pid: 100,
                program: None,
            },
        }
    }

    /// Inserts an event as replica `b` stored it, with the id given or the
    /// next one, on `conn` (maybe inside a transaction left open).
    async fn insert_event(conn: &mut AnyConnection, id: Option<u64>, host: &str, seq: u64) {
        let body = serde_json::to_string(&spawned(seq)).unwrap();
        let columns = "host, boot_id, seq, at, service, kind, body, replica";
        let values = "$1, 'boot', $2, 1000, 'web', 'generation_spawned', $3, 'b'";
        let statement = match id {
            Some(id) => format!("INSERT INTO events (id, {columns}) VALUES ({id}, {values})"),
            None => format!("INSERT INTO events ({columns}) VALUES ({values})"),
        };
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(host)
            .bind(to_i64(seq))
            .bind(body)
            .execute(conn)
            .await
            .unwrap();
    }

    fn hosts_of(read: FeedRead) -> Vec<String> {
        read.events.into_iter().map(|e| e.host).collect()
    }

    async fn the_change_feed_reads_an_event_committed_after_a_higher_id(db: &Db) {
        let mut feed = FeedCursor::after(last_event_id(db).await.unwrap());
        match db.backend() {
            Backend::Postgres => {
                // One transaction takes the next id and holds it while
                // another takes the one after and commits first.
                let mut slow = db.begin_write().await.unwrap();
                insert_event(&mut slow, None, "alpha", 1).await;
                let stored = crate::store::store_events_by(
                    db,
                    Some("b"),
                    "beta",
                    "boot",
                    &[spawned(1)],
                    &[],
                )
                .await
                .unwrap();
                assert_eq!(stored.len(), 1);
                let read = feed.read(db, "a", 1_000, FEED_BATCH).await.unwrap();
                assert_eq!(hosts_of(read), vec!["beta"]);
                slow.commit().await.unwrap();
            }
            Backend::Sqlite => {
                // One writer at a time takes ids in commit order: a lower
                // id committed later can only be given explicitly.
                let mut tx = db.begin_write().await.unwrap();
                insert_event(&mut tx, Some(2), "beta", 1).await;
                tx.commit().await.unwrap();
                let read = feed.read(db, "a", 1_000, FEED_BATCH).await.unwrap();
                assert_eq!(hosts_of(read), vec!["beta"]);
                let mut tx = db.begin_write().await.unwrap();
                insert_event(&mut tx, Some(1), "alpha", 1).await;
                tx.commit().await.unwrap();
            }
        }
        let read = feed.read(db, "a", 1_100, FEED_BATCH).await.unwrap();
        assert_eq!(hosts_of(read), vec!["alpha"]);
        // Read once, and looked for no more.
        assert_eq!(feed.holes(), 0);
        let read = feed.read(db, "a", 1_200, FEED_BATCH).await.unwrap();
        assert!(read.events.is_empty(), "{read:?}");
        // A replica is not fed its own events.
        let mut own = FeedCursor::after(0);
        assert!(
            own.read(db, "b", 1_300, FEED_BATCH)
                .await
                .unwrap()
                .events
                .is_empty()
        );
    }

    async fn the_change_feed_looks_for_a_bounded_number_of_missing_ids_for_a_while(db: &Db) {
        let mut feed = FeedCursor::after(last_event_id(db).await.unwrap());
        // Ids 1 to 4,999 are missing (as after inserts rolled back).
        let mut tx = db.begin_write().await.unwrap();
        insert_event(&mut tx, Some(5_000), "beta", 1).await;
        tx.commit().await.unwrap();
        let read = feed.read(db, "a", 1_000, FEED_BATCH).await.unwrap();
        assert_eq!(hosts_of(read), vec!["beta"]);
        assert_eq!(feed.holes(), FEED_MAX_HOLES);
        // The highest missing ids are the ones looked for.
        let mut tx = db.begin_write().await.unwrap();
        insert_event(&mut tx, Some(4_999), "alpha", 1).await;
        insert_event(&mut tx, Some(10), "gamma", 1).await;
        tx.commit().await.unwrap();
        let read = feed.read(db, "a", 2_000, FEED_BATCH).await.unwrap();
        assert_eq!(hosts_of(read), vec!["alpha"]);
        assert_eq!(feed.holes(), FEED_MAX_HOLES - 1);
        // Given up once old.
        let later = 2_000 + FEED_HOLE_LIFETIME.as_millis() as u64;
        feed.read(db, "a", later, FEED_BATCH).await.unwrap();
        assert_eq!(feed.holes(), 0);
    }

    /// Two replicas on one SQLite file: one reads inside a write
    /// transaction, the other writes meanwhile, then the first writes.
    #[tokio::test]
    async fn a_write_transaction_on_sqlite_waits_for_another_replicas_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        let a = crate::store::open(&path).await.unwrap();
        let b = crate::store::open(&path).await.unwrap();
        let mut tx = a.begin_write().await.unwrap();
        let (_,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM host_commands")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let other = tokio::spawn(async move { register_replica(&b, "b", 1).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let written =
            sqlx::query("INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ('a', 1, 1)")
                .execute(&mut *tx)
                .await;
        assert!(written.is_ok(), "{written:?}");
        tx.commit().await.unwrap();
        other.await.unwrap().unwrap();
        assert_eq!(replica_rows(&a).await.unwrap().len(), 2);
    }

    on_both_engines!(
        the_change_feed_reads_an_event_committed_after_a_higher_id,
        the_change_feed_looks_for_a_bounded_number_of_missing_ids_for_a_while,
        one_replica_drives_a_restart_until_its_lease_runs_out,
        a_replica_that_lost_its_lease_cannot_command_a_host,
        a_host_goes_offline_only_if_its_link_is_still_the_one_that_closed,
        services_are_read_only_of_hosts_linked_elsewhere_whose_revision_moved,
        the_hosts_of_a_dead_replica_go_offline,
        a_host_holds_only_so_many_waiting_commands,
        a_command_named_by_a_notification_is_taken_once_and_not_once_expired,
        a_host_between_its_hello_and_its_link_is_not_released,
        a_replica_back_from_a_stall_records_its_links_again_but_not_over_newer_ones,
    );
}
