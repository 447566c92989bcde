//! Every SQL statement of the server. Statements use `$N` parameters and
//! standard SQL (ON CONFLICT, partial indexes, RETURNING) so that a
//! PostgreSQL pool can follow without rewriting them.

use anyhow::Context;
use baton_proto::api::{
    GenerationPage, GenerationPhase, GenerationRecord, HostRestartState, Restart, RestartHost,
    RestartPage, RestartState,
};
use baton_proto::{Event, EventKind, RestartId, RestartOutcome, ServiceStatus};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::domain::{Role, now_millis};

/// The database, through two pools: every write goes through one
/// connection, so writers queue here instead of colliding inside SQLite,
/// whose busy handler would make the loser sleep (1, 2, 5, ... 50 ms) and
/// stall whatever waits on that write. Reads run beside it (WAL).
#[derive(Clone, Debug)]
pub struct Db {
    reads: SqlitePool,
    writes: SqlitePool,
}

impl Db {
    /// For statements outside this module: health checks, tests.
    pub fn reads(&self) -> &SqlitePool {
        &self.reads
    }

    /// The writer, for bulk loads outside this module (benchmarks).
    pub fn writes(&self) -> &SqlitePool {
        &self.writes
    }

    pub async fn close(&self) {
        self.reads.close().await;
        self.writes.close().await;
    }
}

/// Opens (creating if needed) the database and applies the migrations.
pub async fn open(path: &Path) -> anyhow::Result<Db> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL still never corrupts the database; a power loss may
        // drop the last transactions, but a killed process loses nothing.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let writes = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .with_context(|| format!("failed to open the database {}", path.display()))?;
    sqlx::migrate!("../migrations")
        .run(&writes)
        .await
        .context("failed to apply the database migrations")?;
    let reads = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("failed to open the database {}", path.display()))?;
    Ok(Db { reads, writes })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

// ---------------------------------------------------------------- tokens

pub async fn insert_token(db: &Db, name: &str, role: Role, token_hash: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(token_hash)
    .bind(to_i64(now_millis()))
    .execute(&db.writes)
    .await
    .context("failed to store the token")?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn list_tokens(db: &Db) -> anyhow::Result<Vec<TokenRow>> {
    sqlx::query_as("SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY id")
        .fetch_all(&db.reads)
        .await
        .context("failed to list the tokens")
}

/// Which tokens to revoke: every live one of a name, or one by id.
pub enum TokenSelector<'a> {
    Name(&'a str),
    Id(i64),
}

/// Revokes the live tokens selected and returns how many there were.
pub async fn revoke_tokens(db: &Db, which: TokenSelector<'_>) -> anyhow::Result<u64> {
    let now = to_i64(now_millis());
    let query = match which {
        TokenSelector::Name(name) => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(name.to_owned()),
        TokenSelector::Id(id) => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id),
    };
    let done = query
        .execute(&db.writes)
        .await
        .context("failed to revoke tokens")?;
    Ok(done.rows_affected())
}

pub async fn find_token(db: &Db, token_hash: &str) -> anyhow::Result<Option<(String, Role)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(&db.reads)
    .await
    .context("failed to look up a token")?;
    Ok(match row {
        Some((name, role)) => Some((name, Role::from_str(&role).map_err(anyhow::Error::msg)?)),
        None => None,
    })
}

// ---------------------------------------------------------------- hosts

#[derive(Debug, sqlx::FromRow)]
pub struct HostRow {
    pub name: String,
    pub agent_version: String,
    pub boot_id: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub online: bool,
    pub services: String,
}

impl HostRow {
    pub fn services(&self) -> Vec<ServiceStatus> {
        serde_json::from_str(&self.services).unwrap_or_default()
    }
}

pub async fn load_hosts(db: &Db) -> anyhow::Result<Vec<HostRow>> {
    sqlx::query_as(
        "SELECT name, agent_version, boot_id, first_seen, last_seen, online, services FROM hosts ORDER BY name",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to load the hosts")
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

// ---------------------------------------------------------------- events

/// The highest event sequence stored for one agent lifetime; 0 if none.
pub async fn max_seq(db: &Db, host: &str, boot_id: &str) -> anyhow::Result<u64> {
    let (max,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(seq) FROM events WHERE host = $1 AND boot_id = $2")
            .bind(host)
            .bind(boot_id)
            .fetch_one(&db.reads)
            .await
            .context("failed to read the last event sequence")?;
    Ok(max.map(to_u64).unwrap_or(0))
}

fn event_kind_name(kind: &EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Stores a batch in one transaction. Events already stored (a resend after
/// a reconnect) are skipped, so the generation history derived from them is
/// updated exactly once per event. Returns the events that were new.
pub async fn store_events(
    db: &Db,
    host: &str,
    boot_id: &str,
    events: &[Event],
) -> anyhow::Result<Vec<Event>> {
    let mut tx = db
        .writes
        .begin()
        .await
        .context("failed to begin a transaction")?;
    let mut new_events = Vec::new();
    for event in events {
        let inserted = sqlx::query(
            "INSERT INTO events (host, boot_id, seq, at, service, agent_restart_id, kind, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (host, boot_id, seq) DO NOTHING",
        )
        .bind(host)
        .bind(boot_id)
        .bind(to_i64(event.seq))
        .bind(to_i64(event.at))
        .bind(&event.service)
        .bind(event.restart.map(to_i64))
        .bind(event_kind_name(&event.kind))
        .bind(serde_json::to_string(event)?)
        .execute(&mut *tx)
        .await
        .context("failed to store an event")?
        .rows_affected();
        if inserted == 1 {
            derive_generation(&mut tx, host, boot_id, event).await?;
            new_events.push(event.clone());
        }
    }
    tx.commit().await.context("failed to commit events")?;
    Ok(new_events)
}

#[derive(Default)]
struct GenerationUpdate {
    generation: u64,
    pid: Option<u32>,
    phase: Option<&'static str>,
    spawned_at: Option<u64>,
    ready_at: Option<u64>,
    draining_at: Option<u64>,
    exited_at: Option<u64>,
    exit_status: Option<String>,
    connections_cut: Option<u32>,
    agent_restart_id: Option<RestartId>,
}

async fn derive_generation(
    tx: &mut Transaction<'_, Sqlite>,
    host: &str,
    boot_id: &str,
    event: &Event,
) -> anyhow::Result<()> {
    let at = Some(event.at);
    let update = match &event.kind {
        EventKind::GenerationSpawned { generation, pid } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some("starting"),
            spawned_at: at,
            agent_restart_id: event.restart,
            ..Default::default()
        },
        EventKind::GenerationReady {
            generation, pid, ..
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some("ready"),
            ready_at: at,
            ..Default::default()
        },
        EventKind::GenerationDraining {
            generation, pid, ..
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some("draining"),
            draining_at: at,
            ..Default::default()
        },
        EventKind::GenerationKilled {
            generation,
            pid,
            connections_cut,
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            connections_cut: Some(*connections_cut),
            ..Default::default()
        },
        EventKind::GenerationExited {
            generation,
            pid,
            status,
            ..
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some("exited"),
            exited_at: at,
            exit_status: Some(status.clone()),
            ..Default::default()
        },
        _ => return Ok(()),
    };
    // A generation first seen through a later event (its spawn happened
    // before this server knew the agent) still gets a row.
    sqlx::query(
        "INSERT INTO generations (host, boot_id, service, generation, pid, phase, spawned_at,
                ready_at, draining_at, exited_at, exit_status, connections_cut, agent_restart_id)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'starting'), $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (host, boot_id, service, generation) DO UPDATE SET
            pid = COALESCE(excluded.pid, generations.pid),
            phase = COALESCE($6, generations.phase),
            spawned_at = COALESCE(excluded.spawned_at, generations.spawned_at),
            ready_at = COALESCE(excluded.ready_at, generations.ready_at),
            draining_at = COALESCE(excluded.draining_at, generations.draining_at),
            exited_at = COALESCE(excluded.exited_at, generations.exited_at),
            exit_status = COALESCE(excluded.exit_status, generations.exit_status),
            connections_cut = COALESCE(excluded.connections_cut, generations.connections_cut),
            agent_restart_id = COALESCE(generations.agent_restart_id, excluded.agent_restart_id)",
    )
    .bind(host)
    .bind(boot_id)
    .bind(&event.service)
    .bind(to_i64(update.generation))
    .bind(update.pid.map(i64::from).unwrap_or(0))
    .bind(update.phase)
    .bind(update.spawned_at.map(to_i64))
    .bind(update.ready_at.map(to_i64))
    .bind(update.draining_at.map(to_i64))
    .bind(update.exited_at.map(to_i64))
    .bind(update.exit_status)
    .bind(update.connections_cut.map(i64::from))
    .bind(update.agent_restart_id.map(to_i64))
    .execute(&mut **tx)
    .await
    .context("failed to update the generation history")?;
    Ok(())
}

/// The agent restart that a command started, found from the event stream:
/// the first `restart_started` of that service after the given sequence.
pub async fn find_restart_started_after(
    db: &Db,
    host: &str,
    boot_id: &str,
    service: &str,
    after_seq: u64,
) -> anyhow::Result<Option<RestartId>> {
    let row: Option<(Option<i64>,)> = sqlx::query_as(
        "SELECT agent_restart_id FROM events
         WHERE host = $1 AND boot_id = $2 AND service = $3 AND kind = 'restart_started' AND seq > $4
         ORDER BY seq LIMIT 1",
    )
    .bind(host)
    .bind(boot_id)
    .bind(service)
    .bind(to_i64(after_seq))
    .fetch_optional(&db.reads)
    .await
    .context("failed to look for a restart_started event")?;
    Ok(row.and_then(|(id,)| id).map(to_u64))
}

/// The agent's verdict on one of its restarts, once its `restart_finished`
/// event is stored.
pub async fn find_restart_finished(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<Option<(RestartOutcome, Option<String>)>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT body FROM events
         WHERE host = $1 AND boot_id = $2 AND agent_restart_id = $3 AND kind = 'restart_finished'
         ORDER BY seq LIMIT 1",
    )
    .bind(host)
    .bind(boot_id)
    .bind(to_i64(agent_restart_id))
    .fetch_optional(&db.reads)
    .await
    .context("failed to look for a restart_finished event")?;
    let Some((body,)) = row else { return Ok(None) };
    let event: Event = serde_json::from_str(&body).context("a stored event does not parse")?;
    match event.kind {
        EventKind::RestartFinished { outcome, reason } => Ok(Some((outcome, reason))),
        _ => Ok(None),
    }
}

async fn agent_restart_steps(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<Vec<Event>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT body FROM events WHERE host = $1 AND boot_id = $2 AND agent_restart_id = $3 ORDER BY seq",
    )
    .bind(host)
    .bind(boot_id)
    .bind(to_i64(agent_restart_id))
    .fetch_all(&db.reads)
    .await
    .context("failed to read a restart's events")?;
    rows.into_iter()
        .map(|(body,)| serde_json::from_str(&body).context("a stored event does not parse"))
        .collect()
}

// ---------------------------------------------------------------- generations

#[derive(sqlx::FromRow)]
struct GenerationRow {
    id: i64,
    host: String,
    service: String,
    generation: i64,
    pid: i64,
    phase: String,
    spawned_at: Option<i64>,
    ready_at: Option<i64>,
    draining_at: Option<i64>,
    exited_at: Option<i64>,
    exit_status: Option<String>,
    connections_cut: Option<i64>,
    agent_restart_id: Option<i64>,
}

impl From<GenerationRow> for GenerationRecord {
    fn from(row: GenerationRow) -> Self {
        GenerationRecord {
            id: to_u64(row.id),
            host: row.host,
            service: row.service,
            generation: to_u64(row.generation),
            pid: u32::try_from(row.pid).unwrap_or(0),
            phase: match row.phase.as_str() {
                "ready" => GenerationPhase::Ready,
                "draining" => GenerationPhase::Draining,
                "exited" => GenerationPhase::Exited,
                _ => GenerationPhase::Starting,
            },
            spawned_at: row.spawned_at.map(to_u64),
            ready_at: row.ready_at.map(to_u64),
            draining_at: row.draining_at.map(to_u64),
            exited_at: row.exited_at.map(to_u64),
            exit_status: row.exit_status,
            connections_cut: row.connections_cut.and_then(|n| u32::try_from(n).ok()),
            agent_restart_id: row.agent_restart_id.map(to_u64),
        }
    }
}

pub async fn list_generations(
    db: &Db,
    service: &str,
    before: Option<u64>,
    limit: u32,
) -> anyhow::Result<GenerationPage> {
    let rows: Vec<GenerationRow> = sqlx::query_as(
        "SELECT id, host, service, generation, pid, phase, spawned_at, ready_at, draining_at,
                exited_at, exit_status, connections_cut, agent_restart_id
         FROM generations WHERE service = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(service)
    .bind(before.map(to_i64).unwrap_or(i64::MAX))
    .bind(i64::from(limit))
    .fetch_all(&db.reads)
    .await
    .context("failed to list generations")?;
    let generations: Vec<GenerationRecord> = rows.into_iter().map(Into::into).collect();
    let next_before = if generations.len() == limit as usize {
        generations.last().map(|g| g.id)
    } else {
        None
    };
    Ok(GenerationPage {
        generations,
        next_before,
    })
}

// ---------------------------------------------------------------- restarts

pub struct NewRestart<'a> {
    pub service: &'a str,
    pub reason: Option<&'a str>,
    pub requested_by: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub max_parallel: u32,
    /// In restart order.
    pub hosts: &'a [String],
}

pub enum Created {
    /// The rows as stored, so the first command can go out without reading
    /// them back.
    New(Box<NewlyCreated>),
    /// The service already has a running restart.
    AlreadyRunning(u64),
    /// The idempotency key was used before, by this restart.
    Replayed(u64),
}

pub struct NewlyCreated {
    pub row: RestartRow,
    pub hosts: Vec<RestartHostRow>,
}

impl NewlyCreated {
    pub fn id(&self) -> u64 {
        to_u64(self.row.id)
    }

    /// The restart as it starts: every host pending, no step yet.
    pub fn view(&self) -> Restart {
        restart_view(
            self.row.clone(),
            self.hosts
                .iter()
                .map(|h| host_view(h.clone(), Vec::new()))
                .collect(),
        )
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Creates a restart with its hosts pending, in one transaction. The unique
/// indexes decide races: two requests for one service, or two retries with
/// one idempotency key, never both create a restart.
pub async fn create_restart(db: &Db, new: &NewRestart<'_>) -> anyhow::Result<Created> {
    if let Some(key) = new.idempotency_key
        && let Some(id) = restart_by_idempotency_key(db, key).await?
    {
        return Ok(Created::Replayed(id));
    }
    let created_at = now_millis();
    let mut tx = db
        .writes
        .begin()
        .await
        .context("failed to begin a transaction")?;
    let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
        "INSERT INTO restarts (service, reason, requested_by, idempotency_key, max_parallel, state, created_at)
         VALUES ($1, $2, $3, $4, $5, 'running', $6) RETURNING id",
    )
    .bind(new.service)
    .bind(new.reason)
    .bind(new.requested_by)
    .bind(new.idempotency_key)
    .bind(i64::from(new.max_parallel))
    .bind(to_i64(created_at))
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok((id,)) => id,
        Err(e) if is_unique_violation(&e) => {
            drop(tx);
            if let Some(key) = new.idempotency_key
                && let Some(id) = restart_by_idempotency_key(db, key).await?
            {
                return Ok(Created::Replayed(id));
            }
            if let Some(id) = running_restart_of(db, new.service).await? {
                return Ok(Created::AlreadyRunning(id));
            }
            // The running restart ended between the insert and the look
            // for it: the service is free again.
            return Box::pin(create_restart(db, new)).await;
        }
        Err(e) => return Err(anyhow::Error::new(e).context("failed to create the restart")),
    };
    for (position, host) in new.hosts.iter().enumerate() {
        sqlx::query(
            "INSERT INTO restart_hosts (restart_id, host, position, state) VALUES ($1, $2, $3, 'pending')",
        )
        .bind(id)
        .bind(host)
        .bind(position as i64)
        .execute(&mut *tx)
        .await
        .context("failed to store the restart's hosts")?;
    }
    tx.commit().await.context("failed to commit the restart")?;
    Ok(Created::New(Box::new(NewlyCreated {
        row: RestartRow {
            id,
            service: new.service.to_owned(),
            reason: new.reason.map(str::to_owned),
            requested_by: Some(new.requested_by.to_owned()),
            max_parallel: i64::from(new.max_parallel),
            state: "running".to_owned(),
            outcome: None,
            outcome_reason: None,
            created_at: to_i64(created_at),
            finished_at: None,
        },
        hosts: new
            .hosts
            .iter()
            .enumerate()
            .map(|(position, host)| RestartHostRow {
                restart_id: id,
                host: host.clone(),
                position: position as i64,
                state: "pending".to_owned(),
                outcome: None,
                outcome_reason: None,
                command_id: None,
                boot_id: None,
                seq_at_command: None,
                agent_restart_id: None,
                started_at: None,
                finished_at: None,
            })
            .collect(),
    })))
}

pub async fn restart_by_idempotency_key(db: &Db, key: &str) -> anyhow::Result<Option<u64>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM restarts WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(&db.reads)
        .await
        .context("failed to look up an idempotency key")?;
    Ok(row.map(|(id,)| to_u64(id)))
}

pub async fn running_restart_of(db: &Db, service: &str) -> anyhow::Result<Option<u64>> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM restarts WHERE service = $1 AND state = 'running'")
            .bind(service)
            .fetch_optional(&db.reads)
            .await
            .context("failed to look up the running restart")?;
    Ok(row.map(|(id,)| to_u64(id)))
}

pub async fn running_restarts(db: &Db) -> anyhow::Result<Vec<u64>> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM restarts WHERE state = 'running' ORDER BY id")
            .fetch_all(&db.reads)
            .await
            .context("failed to list running restarts")?;
    Ok(rows.into_iter().map(|(id,)| to_u64(id)).collect())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RestartRow {
    pub id: i64,
    pub service: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub max_parallel: i64,
    pub state: String,
    pub outcome: Option<String>,
    pub outcome_reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RestartHostRow {
    pub restart_id: i64,
    pub host: String,
    pub position: i64,
    pub state: String,
    pub outcome: Option<String>,
    pub outcome_reason: Option<String>,
    pub command_id: Option<String>,
    pub boot_id: Option<String>,
    pub seq_at_command: Option<i64>,
    pub agent_restart_id: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const RESTART_COLUMNS: &str = "id, service, reason, requested_by, max_parallel, state, outcome, outcome_reason, created_at, finished_at";

pub async fn restart_row(db: &Db, id: u64) -> anyhow::Result<Option<RestartRow>> {
    sqlx::query_as(
        "SELECT id, service, reason, requested_by, max_parallel, state, outcome, outcome_reason, created_at, finished_at
         FROM restarts WHERE id = $1",
    )
    .bind(to_i64(id))
    .fetch_optional(&db.reads)
    .await
    .context("failed to read a restart")
}

pub async fn restart_host_rows(db: &Db, id: u64) -> anyhow::Result<Vec<RestartHostRow>> {
    sqlx::query_as(
        "SELECT restart_id, host, position, state, outcome, outcome_reason, command_id, boot_id,
                seq_at_command, agent_restart_id, started_at, finished_at
         FROM restart_hosts WHERE restart_id = $1 ORDER BY position",
    )
    .bind(to_i64(id))
    .fetch_all(&db.reads)
    .await
    .context("failed to read a restart's hosts")
}

fn parse_outcome(outcome: Option<&str>) -> Option<RestartOutcome> {
    outcome.and_then(|o| o.parse().ok())
}

fn restart_view(row: RestartRow, hosts: Vec<RestartHost>) -> Restart {
    Restart {
        id: to_u64(row.id),
        service: row.service,
        reason: row.reason,
        requested_by: row.requested_by,
        state: if row.state == "finished" {
            RestartState::Finished
        } else {
            RestartState::Running
        },
        outcome: parse_outcome(row.outcome.as_deref()),
        outcome_reason: row.outcome_reason,
        max_parallel: u32::try_from(row.max_parallel).unwrap_or(1),
        created_at: to_u64(row.created_at),
        finished_at: row.finished_at.map(to_u64),
        hosts,
    }
}

fn host_view(row: RestartHostRow, steps: Vec<Event>) -> RestartHost {
    RestartHost {
        host: row.host,
        state: match row.state.as_str() {
            "running" => HostRestartState::Running,
            "finished" => HostRestartState::Finished,
            "skipped" => HostRestartState::Skipped,
            _ => HostRestartState::Pending,
        },
        outcome: parse_outcome(row.outcome.as_deref()),
        outcome_reason: row.outcome_reason,
        agent_restart_id: row.agent_restart_id.map(to_u64),
        started_at: row.started_at.map(to_u64),
        finished_at: row.finished_at.map(to_u64),
        steps,
    }
}

/// One restart with every host's steps.
pub async fn get_restart(db: &Db, id: u64) -> anyhow::Result<Option<Restart>> {
    let Some(row) = restart_row(db, id).await? else {
        return Ok(None);
    };
    let mut hosts = Vec::new();
    for host in restart_host_rows(db, id).await? {
        let steps = match (&host.boot_id, host.agent_restart_id) {
            (Some(boot_id), Some(agent_id)) => {
                agent_restart_steps(db, &host.host, boot_id, to_u64(agent_id)).await?
            }
            _ => Vec::new(),
        };
        hosts.push(host_view(host, steps));
    }
    Ok(Some(restart_view(row, hosts)))
}

#[derive(Debug, Default)]
pub struct RestartFilter {
    pub service: Option<String>,
    pub outcome: Option<RestartOutcome>,
    pub host: Option<String>,
    pub before: Option<u64>,
    pub limit: u32,
}

/// Newest first. Only the conditions asked for are in the statement, so
/// each filter can use its `(column, id)` index. A host filter walks
/// `restart_hosts_by_host` backwards from the cursor and stops at the page's
/// end, so even a host with no restart at all costs one index probe, not a
/// look at every restart.
pub async fn list_restarts(db: &Db, filter: &RestartFilter) -> anyhow::Result<RestartPage> {
    let columns = RESTART_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (mut query, id_column) = match &filter.host {
        Some(host) => {
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(format!(
                "SELECT {columns} FROM restart_hosts h JOIN restarts r ON r.id = h.restart_id
                 WHERE h.host = "
            ));
            query.push_bind(host.clone());
            (query, "h.restart_id")
        }
        None => (
            sqlx::QueryBuilder::<Sqlite>::new(format!(
                "SELECT {columns} FROM restarts r WHERE 1 = 1"
            )),
            "r.id",
        ),
    };
    if let Some(service) = &filter.service {
        query.push(" AND r.service = ").push_bind(service.clone());
    }
    if let Some(outcome) = filter.outcome {
        query.push(" AND r.outcome = ").push_bind(outcome.as_str());
    }
    if let Some(before) = filter.before {
        query
            .push(format!(" AND {id_column} < "))
            .push_bind(to_i64(before));
    }
    query
        .push(format!(" ORDER BY {id_column} DESC LIMIT "))
        .push_bind(i64::from(filter.limit));
    let rows: Vec<RestartRow> = query
        .build_query_as()
        .fetch_all(&db.reads)
        .await
        .context("failed to list restarts")?;

    let mut hosts_by_restart: std::collections::HashMap<i64, Vec<RestartHost>> =
        std::collections::HashMap::new();
    if !rows.is_empty() {
        let mut query = sqlx::QueryBuilder::<Sqlite>::new(
            "SELECT restart_id, host, position, state, outcome, outcome_reason, command_id, boot_id,
                    seq_at_command, agent_restart_id, started_at, finished_at
             FROM restart_hosts WHERE restart_id IN (",
        );
        let mut ids = query.separated(", ");
        for row in &rows {
            ids.push_bind(row.id);
        }
        query.push(") ORDER BY restart_id, position");
        let host_rows: Vec<RestartHostRow> = query
            .build_query_as()
            .fetch_all(&db.reads)
            .await
            .context("failed to list the restarts' hosts")?;
        for host in host_rows {
            hosts_by_restart
                .entry(host.restart_id)
                .or_default()
                .push(host_view(host, Vec::new()));
        }
    }
    let full_page = rows.len() == filter.limit as usize;
    let restarts: Vec<Restart> = rows
        .into_iter()
        .map(|row| {
            let hosts = hosts_by_restart.remove(&row.id).unwrap_or_default();
            restart_view(row, hosts)
        })
        .collect();
    let next_before = if full_page {
        restarts.last().map(|r| r.id)
    } else {
        None
    };
    Ok(RestartPage {
        restarts,
        next_before,
    })
}

pub struct CommandSent<'a> {
    pub restart_id: u64,
    pub host: &'a str,
    pub command_id: &'a str,
    pub boot_id: &'a str,
    pub seq_at_command: u64,
}

pub async fn mark_host_running(db: &Db, sent: &CommandSent<'_>) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE restart_hosts SET state = 'running', command_id = $3, boot_id = $4,
                seq_at_command = $5, started_at = $6
         WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(sent.restart_id))
    .bind(sent.host)
    .bind(sent.command_id)
    .bind(sent.boot_id)
    .bind(to_i64(sent.seq_at_command))
    .bind(to_i64(now_millis()))
    .execute(&db.writes)
    .await
    .context("failed to record the restart command")?;
    Ok(())
}

pub async fn set_agent_restart_id(
    db: &Db,
    restart_id: u64,
    host: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE restart_hosts SET agent_restart_id = $3 WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(to_i64(agent_restart_id))
    .execute(&db.writes)
    .await
    .context("failed to record the agent's restart id")?;
    Ok(())
}

pub async fn finish_host(
    db: &Db,
    restart_id: u64,
    host: &str,
    outcome: RestartOutcome,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE restart_hosts SET state = 'finished', outcome = $3, outcome_reason = $4,
                finished_at = $5, started_at = COALESCE(started_at, $5)
         WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(outcome.as_str())
    .bind(reason)
    .bind(to_i64(now_millis()))
    .execute(&db.writes)
    .await
    .context("failed to record a host's outcome")?;
    Ok(())
}

/// Ends a restart: hosts never started become `skipped`.
pub async fn finish_restart(
    db: &Db,
    restart_id: u64,
    outcome: RestartOutcome,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let mut tx = db
        .writes
        .begin()
        .await
        .context("failed to begin a transaction")?;
    sqlx::query(
        "UPDATE restart_hosts SET state = 'skipped' WHERE restart_id = $1 AND state = 'pending'",
    )
    .bind(to_i64(restart_id))
    .execute(&mut *tx)
    .await
    .context("failed to skip the remaining hosts")?;
    sqlx::query(
        "UPDATE restarts SET state = 'finished', outcome = $2, outcome_reason = $3, finished_at = $4
         WHERE id = $1",
    )
    .bind(to_i64(restart_id))
    .bind(outcome.as_str())
    .bind(reason)
    .bind(to_i64(now_millis()))
    .execute(&mut *tx)
    .await
    .context("failed to record the restart's outcome")?;
    tx.commit()
        .await
        .context("failed to commit the restart's outcome")?;
    Ok(())
}

pub async fn count_restarts_by_outcome(db: &Db) -> anyhow::Result<Vec<(RestartOutcome, u64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, COUNT(*) FROM restarts WHERE outcome IS NOT NULL GROUP BY outcome",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to count restarts")?;
    Ok(rows
        .into_iter()
        .filter_map(|(outcome, n)| Some((outcome.parse().ok()?, to_u64(n))))
        .collect())
}
