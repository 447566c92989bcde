use anyhow::Context;
use baton_proto::api::{self, MaxParallel, Pause, Restart, RestartHost, RestartPage, Rollout};
use baton_proto::{ConnectionTally, Event, OutputLine, RestartId, RestartOutcome};

use super::db::{Db, Flag, SqlBuilder, text_enum, to_i64, to_u64};
use super::events::restart_steps_by_host;
use crate::domain::now_millis;

/// `restarts.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartState {
    Running,
    Finished,
}

text_enum!(RestartState {
    Running = "running",
    Finished = "finished",
});

/// `restart_hosts.state`: one host's step of a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRestartState {
    /// Not started yet.
    Pending,
    /// The command was sent.
    Running,
    Finished,
    /// Never started: a host before it did not succeed (no reason), or it
    /// had been offline for longer than the grace when its turn came
    /// (reason `offline`), which does not stop the rollout.
    Skipped,
}

text_enum!(HostRestartState {
    Pending = "pending",
    Running = "running",
    Finished = "finished",
    Skipped = "skipped",
});

/// `restarts.outcome` and `restart_hosts.outcome`, named as the agent names
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Forced,
    RolledBack,
    Failed,
    Interrupted,
}

text_enum!(Outcome {
    Succeeded = "succeeded",
    Forced = "forced",
    RolledBack = "rolled_back",
    Failed = "failed",
    Interrupted = "interrupted",
});

impl From<RestartOutcome> for Outcome {
    fn from(outcome: RestartOutcome) -> Self {
        match outcome {
            RestartOutcome::Succeeded => Outcome::Succeeded,
            RestartOutcome::Forced => Outcome::Forced,
            RestartOutcome::RolledBack => Outcome::RolledBack,
            RestartOutcome::Failed => Outcome::Failed,
            RestartOutcome::Interrupted => Outcome::Interrupted,
        }
    }
}

impl From<Outcome> for RestartOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Succeeded => RestartOutcome::Succeeded,
            Outcome::Forced => RestartOutcome::Forced,
            Outcome::RolledBack => RestartOutcome::RolledBack,
            Outcome::Failed => RestartOutcome::Failed,
            Outcome::Interrupted => RestartOutcome::Interrupted,
        }
    }
}

impl From<RestartState> for api::RestartState {
    fn from(state: RestartState) -> Self {
        match state {
            RestartState::Running => api::RestartState::Running,
            RestartState::Finished => api::RestartState::Finished,
        }
    }
}

impl From<HostRestartState> for api::HostRestartState {
    fn from(state: HostRestartState) -> Self {
        match state {
            HostRestartState::Pending => api::HostRestartState::Pending,
            HostRestartState::Running => api::HostRestartState::Running,
            HostRestartState::Finished => api::HostRestartState::Finished,
            HostRestartState::Skipped => api::HostRestartState::Skipped,
        }
    }
}

/// An `Idempotency-Key` as it is scoped: the token that sent it (by hash)
/// and, with the service it is used for, the key itself.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub token_hash: &'a str,
    pub key: &'a str,
    /// Keys stored before this time (Unix ms) have expired.
    pub not_before: u64,
}

pub struct NewRestart<'a> {
    pub service: &'a str,
    pub reason: Option<&'a str>,
    pub requested_by: &'a str,
    pub idempotency_key: Option<IdempotencyKey<'a>>,
    /// The count of hosts at once the restart runs with (a percentage
    /// already resolved against `hosts`).
    pub max_parallel: u32,
    /// The policy as asked (its `pause_until` is not stored here).
    pub rollout: Rollout,
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
        && let Some(id) = restart_by_idempotency_key(db, new.service, key).await?
    {
        return Ok(Created::Replayed(id));
    }
    let created_at = now_millis();
    let mut tx = db.begin_write().await?;
    let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
        "INSERT INTO restarts (service, reason, requested_by, max_parallel, state, created_at,
                               max_parallel_percent, canary, pause_ms, failure_budget)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(new.service)
    .bind(new.reason)
    .bind(new.requested_by)
    .bind(i64::from(new.max_parallel))
    .bind(RestartState::Running)
    .bind(to_i64(created_at))
    .bind(max_parallel_percent(new.rollout.max_parallel))
    .bind(i64::from(new.rollout.canary))
    .bind(new.rollout.pause.map(|pause| to_i64(pause.as_millis())))
    .bind(i64::from(new.rollout.failure_budget))
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok((id,)) => id,
        Err(e) if is_unique_violation(&e) => {
            tx.rollback().await;
            if let Some(key) = new.idempotency_key
                && let Some(id) = restart_by_idempotency_key(db, new.service, key).await?
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
            "INSERT INTO restart_hosts (restart_id, host, position, state) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(host)
        .bind(position as i64)
        .bind(HostRestartState::Pending)
        .execute(&mut *tx)
        .await
        .context("failed to store the restart's hosts")?;
    }
    if let Some(key) = new.idempotency_key {
        // Expired keys go as new ones come: the table holds one lifetime's.
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(to_i64(key.not_before))
            .execute(&mut *tx)
            .await
            .context("failed to forget expired idempotency keys")?;
        let stored = sqlx::query(
            "INSERT INTO idempotency_keys (token_hash, service, idempotency_key, restart_id, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.token_hash)
        .bind(new.service)
        .bind(key.key)
        .bind(id)
        .bind(to_i64(created_at))
        .execute(&mut *tx)
        .await;
        match stored {
            Ok(_) => {}
            // A retry with the same key won the race: this restart never was.
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                return match restart_by_idempotency_key(db, new.service, key).await? {
                    Some(id) => Ok(Created::Replayed(id)),
                    None => Box::pin(create_restart(db, new)).await,
                };
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("failed to store the idempotency key"));
            }
        }
    }
    tx.commit().await.context("failed to commit the restart")?;
    Ok(Created::New(Box::new(NewlyCreated {
        row: RestartRow {
            id,
            service: new.service.to_owned(),
            reason: new.reason.map(str::to_owned),
            requested_by: Some(new.requested_by.to_owned()),
            max_parallel: i64::from(new.max_parallel),
            state: RestartState::Running,
            outcome: None,
            outcome_reason: None,
            created_at: to_i64(created_at),
            finished_at: None,
            max_parallel_percent: max_parallel_percent(new.rollout.max_parallel),
            canary: i64::from(new.rollout.canary),
            pause_ms: new.rollout.pause.map(|pause| to_i64(pause.as_millis())),
            pause_until: None,
            failure_budget: i64::from(new.rollout.failure_budget),
        },
        hosts: new
            .hosts
            .iter()
            .enumerate()
            .map(|(position, host)| RestartHostRow {
                restart_id: id,
                host: host.clone(),
                position: position as i64,
                state: HostRestartState::Pending,
                outcome: None,
                outcome_reason: None,
                command_id: None,
                boot_id: None,
                seq_at_command: None,
                agent_restart_id: None,
                started_at: None,
                finished_at: None,
                from_report: false,
                connections_handed_over: None,
                connections_drained: None,
                connections_cut: None,
            })
            .collect(),
    })))
}

/// The restart this token started for this service with this key, while
/// the key has not expired.
pub async fn restart_by_idempotency_key(
    db: &Db,
    service: &str,
    key: IdempotencyKey<'_>,
) -> anyhow::Result<Option<u64>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT restart_id FROM idempotency_keys
         WHERE token_hash = $1 AND service = $2 AND idempotency_key = $3 AND created_at >= $4",
    )
    .bind(key.token_hash)
    .bind(service)
    .bind(key.key)
    .bind(to_i64(key.not_before))
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
    pub state: RestartState,
    pub outcome: Option<Outcome>,
    pub outcome_reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Set when `max_parallel` was asked for as a percentage.
    pub max_parallel_percent: Option<i64>,
    pub canary: i64,
    pub pause_ms: Option<i64>,
    /// When the pause after the canary batch ends; set when it begins.
    pub pause_until: Option<i64>,
    pub failure_budget: i64,
}

fn max_parallel_percent(max_parallel: MaxParallel) -> Option<i64> {
    match max_parallel {
        MaxParallel::Percent(percent) => Some(i64::from(percent)),
        MaxParallel::Hosts(_) => None,
    }
}

impl RestartRow {
    /// The policy the restart runs by, as it was asked for.
    pub fn rollout(&self) -> Rollout {
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        Rollout {
            max_parallel: match self.max_parallel_percent {
                Some(percent) => MaxParallel::Percent(count(percent)),
                None => MaxParallel::Hosts(count(self.max_parallel)),
            },
            canary: count(self.canary),
            pause: self
                .pause_ms
                .and_then(|ms| Pause::from_duration(std::time::Duration::from_millis(to_u64(ms)))),
            pause_until: self.pause_until.map(to_u64),
            failure_budget: count(self.failure_budget),
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RestartHostRow {
    pub restart_id: i64,
    pub host: String,
    pub position: i64,
    pub state: HostRestartState,
    pub outcome: Option<Outcome>,
    pub outcome_reason: Option<String>,
    pub command_id: Option<String>,
    pub boot_id: Option<String>,
    pub seq_at_command: Option<i64>,
    pub agent_restart_id: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The outcome came from a report fetched from the agent.
    #[sqlx(try_from = "Flag")]
    pub from_report: bool,
    /// The drain's tally, written together once it is known.
    pub connections_handed_over: Option<i64>,
    pub connections_drained: Option<i64>,
    pub connections_cut: Option<i64>,
}

impl RestartHostRow {
    pub fn connections(&self) -> Option<ConnectionTally> {
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        match (
            self.connections_handed_over,
            self.connections_drained,
            self.connections_cut,
        ) {
            (Some(handed_over), Some(drained), Some(cut)) => Some(ConnectionTally {
                handed_over: count(handed_over),
                drained: count(drained),
                cut: count(cut),
            }),
            _ => None,
        }
    }
}

const RESTART_COLUMNS: &str = "id, service, reason, requested_by, max_parallel, state, outcome, outcome_reason, created_at, finished_at, max_parallel_percent, canary, pause_ms, pause_until, failure_budget";

pub async fn restart_row(db: &Db, id: u64) -> anyhow::Result<Option<RestartRow>> {
    sqlx::query_as(
        "SELECT id, service, reason, requested_by, max_parallel, state, outcome, outcome_reason, created_at, finished_at,
                max_parallel_percent, canary, pause_ms, pause_until, failure_budget
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
                seq_at_command, agent_restart_id, started_at, finished_at,
                fetched_steps IS NOT NULL AS from_report,
                connections_handed_over, connections_drained, connections_cut
         FROM restart_hosts WHERE restart_id = $1 ORDER BY position",
    )
    .bind(to_i64(id))
    .fetch_all(&db.reads)
    .await
    .context("failed to read a restart's hosts")
}

fn restart_view(row: RestartRow, hosts: Vec<RestartHost>) -> Restart {
    let rollout = row.rollout();
    Restart {
        rollout,
        id: to_u64(row.id),
        service: row.service,
        reason: row.reason,
        requested_by: row.requested_by,
        state: row.state.into(),
        outcome: row.outcome.map(Into::into),
        outcome_reason: row.outcome_reason,
        max_parallel: u32::try_from(row.max_parallel).unwrap_or(1),
        created_at: to_u64(row.created_at),
        finished_at: row.finished_at.map(to_u64),
        hosts,
    }
}

fn host_view(row: RestartHostRow, steps: Vec<Event>) -> RestartHost {
    let connections = row.connections();
    RestartHost {
        output_tail: Vec::new(),
        host: row.host,
        state: row.state.into(),
        outcome: row.outcome.map(Into::into),
        outcome_reason: row.outcome_reason,
        agent_restart_id: row.agent_restart_id.map(to_u64),
        started_at: row.started_at.map(to_u64),
        finished_at: row.finished_at.map(to_u64),
        versions: crate::domain::versions_of(&steps),
        steps,
        outcome_from_report: row.from_report,
        connections,
    }
}

/// One restart with every host's steps.
pub async fn get_restart(db: &Db, id: u64) -> anyhow::Result<Option<Restart>> {
    let Some(row) = restart_row(db, id).await? else {
        return Ok(None);
    };
    // A statement per kind of thing, not per host: a rollout has thousands.
    let rows = restart_host_rows(db, id).await?;
    let mut steps = restart_steps_by_host(db, id).await?;
    let mut tails = output_tails(db, id).await?;
    let mut hosts = Vec::with_capacity(rows.len());
    for host in rows {
        let mut steps = steps.remove(&host.host).unwrap_or_default();
        if host.from_report {
            merge_steps(&mut steps, fetched_steps(db, id, &host.host).await?);
        }
        let output_tail = tails.remove(&host.host).unwrap_or_default();
        let mut view = host_view(host, steps);
        view.output_tail = output_tail;
        hosts.push(view);
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
            let mut query = SqlBuilder::new(format!(
                "SELECT {columns} FROM restart_hosts h JOIN restarts r ON r.id = h.restart_id
                 WHERE h.host = "
            ));
            query.push_bind(host.clone());
            (query, "h.restart_id")
        }
        None => (
            SqlBuilder::new(format!("SELECT {columns} FROM restarts r WHERE 1 = 1")),
            "r.id",
        ),
    };
    if let Some(service) = &filter.service {
        query.push(" AND r.service = ").push_bind(service.clone());
    }
    if let Some(outcome) = filter.outcome {
        query
            .push(" AND r.outcome = ")
            .push_bind(Outcome::from(outcome));
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
        .build_query_as()?
        .fetch_all(&db.reads)
        .await
        .context("failed to list restarts")?;

    let mut hosts_by_restart: std::collections::HashMap<i64, Vec<RestartHost>> =
        std::collections::HashMap::new();
    if !rows.is_empty() {
        let mut query = SqlBuilder::new(
            "SELECT restart_id, host, position, state, outcome, outcome_reason, command_id, boot_id,
                    seq_at_command, agent_restart_id, started_at, finished_at,
                    fetched_steps IS NOT NULL AS from_report,
                    connections_handed_over, connections_drained, connections_cut
             FROM restart_hosts WHERE restart_id IN (",
        );
        query.push_binds(rows.iter().map(|row| row.id));
        query.push(") ORDER BY restart_id, position");
        let host_rows: Vec<RestartHostRow> = query
            .build_query_as()?
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

/// Records a host's outcome, and with it the drain's tally when the same
/// events brought both (as [`record_connections`]: a tally written before
/// stands).
pub async fn finish_host(
    db: &Db,
    restart_id: u64,
    host: &str,
    outcome: RestartOutcome,
    reason: Option<&str>,
    tally: Option<ConnectionTally>,
) -> anyhow::Result<()> {
    // The right-hand sides all read the row as it was: the three counts
    // are written together, only if none was.
    sqlx::query(
        "UPDATE restart_hosts SET state = 'finished', outcome = $3, outcome_reason = $4,
                finished_at = $5, started_at = COALESCE(started_at, $5),
                connections_handed_over = COALESCE(connections_handed_over, $6),
                connections_drained = CASE WHEN connections_handed_over IS NULL
                                           THEN $7 ELSE connections_drained END,
                connections_cut = CASE WHEN connections_handed_over IS NULL
                                       THEN $8 ELSE connections_cut END
         WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(Outcome::from(outcome))
    .bind(reason)
    .bind(to_i64(now_millis()))
    .bind(tally.map(|t| i64::from(t.handed_over)))
    .bind(tally.map(|t| i64::from(t.drained)))
    .bind(tally.map(|t| i64::from(t.cut)))
    .execute(&db.writes)
    .await
    .context("failed to record a host's outcome")?;
    Ok(())
}

/// Records a host's outcome taken from the restart's report, fetched from
/// its agent, with the report's steps: the events that carried them were
/// lost. Those steps are kept with the host, not as events, so the event
/// history (and the generations derived from it) keeps its gap.
pub async fn finish_host_from_report(
    db: &Db,
    restart_id: u64,
    host: &str,
    outcome: RestartOutcome,
    reason: Option<&str>,
    steps: &[Event],
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE restart_hosts SET state = 'finished', outcome = $3, outcome_reason = $4,
                finished_at = $5, started_at = COALESCE(started_at, $5), fetched_steps = $6
         WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(Outcome::from(outcome))
    .bind(reason)
    .bind(to_i64(now_millis()))
    .bind(serde_json::to_string(steps)?)
    .execute(&db.writes)
    .await
    .context("failed to record a host's outcome from its report")?;
    Ok(())
}

/// Records what became of the old generation's connections on a host.
/// Written once: the first tally stands (the same `drain_finished` seen
/// again, or the report's tally after the event's, changes nothing).
/// Returns whether this call wrote it.
pub async fn record_connections(
    db: &Db,
    restart_id: u64,
    host: &str,
    tally: ConnectionTally,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE restart_hosts SET connections_handed_over = $3, connections_drained = $4,
                connections_cut = $5
         WHERE restart_id = $1 AND host = $2 AND connections_handed_over IS NULL",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(i64::from(tally.handed_over))
    .bind(i64::from(tally.drained))
    .bind(i64::from(tally.cut))
    .execute(&db.writes)
    .await
    .context("failed to record a host's connection tally")?;
    Ok(done.rows_affected() == 1)
}

/// Most lines, and bytes of text, stored of a host's failed generation:
/// the agent's own bounds, held again here (an agent is not trusted about
/// sizes).
const OUTPUT_TAIL_LINES: usize = baton_proto::OUTPUT_TAIL_LINES;
const OUTPUT_TAIL_BYTES: usize = baton_proto::OUTPUT_TAIL_BYTES;
const OUTPUT_LINE_BYTES: usize = 1024;

/// Records the last lines a host's new generation wrote before its restart
/// rolled back or failed. Written once. Returns whether this call wrote it.
pub async fn record_output_tail(
    db: &Db,
    restart_id: u64,
    host: &str,
    lines: &[OutputLine],
) -> anyhow::Result<bool> {
    let mut kept: Vec<OutputLine> = Vec::new();
    let mut bytes = 0;
    for line in lines.iter().rev().take(OUTPUT_TAIL_LINES) {
        let mut line = line.clone();
        if line.text.len() > OUTPUT_LINE_BYTES {
            let mut cut = OUTPUT_LINE_BYTES;
            while !line.text.is_char_boundary(cut) {
                cut -= 1;
            }
            line.text.truncate(cut);
        }
        bytes += line.text.len();
        if bytes > OUTPUT_TAIL_BYTES {
            break;
        }
        kept.push(line);
    }
    if kept.is_empty() {
        return Ok(false);
    }
    kept.reverse();
    let json = serde_json::to_string(&kept).context("output lines serialize")?;
    let done = sqlx::query(
        "UPDATE restart_hosts SET output_tail = $3
         WHERE restart_id = $1 AND host = $2 AND output_tail IS NULL",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(json)
    .execute(&db.writes)
    .await
    .context("failed to record a host's output tail")?;
    Ok(done.rows_affected() == 1)
}

/// The output tails recorded in the restart `restart_id`, by host.
async fn output_tails(
    db: &Db,
    restart_id: u64,
) -> anyhow::Result<std::collections::HashMap<String, Vec<OutputLine>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT host, output_tail FROM restart_hosts
         WHERE restart_id = $1 AND output_tail IS NOT NULL",
    )
    .bind(to_i64(restart_id))
    .fetch_all(&db.reads)
    .await
    .context("failed to read the restart's output tails")?;
    rows.into_iter()
        .map(|(host, json)| {
            let lines =
                serde_json::from_str(&json).context("a stored output tail does not parse")?;
            Ok((host, lines))
        })
        .collect()
}

async fn fetched_steps(db: &Db, restart_id: u64, host: &str) -> anyhow::Result<Vec<Event>> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT fetched_steps FROM restart_hosts WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .fetch_optional(&db.reads)
    .await
    .context("failed to read a report's steps")?;
    match row.and_then(|(steps,)| steps) {
        Some(json) => serde_json::from_str(&json).context("stored report steps do not parse"),
        None => Ok(Vec::new()),
    }
}

/// The stored events of a restart and the steps of its report, once each,
/// in sequence order.
fn merge_steps(steps: &mut Vec<Event>, from_report: Vec<Event>) {
    let known: std::collections::HashSet<u64> = steps.iter().map(|e| e.seq).collect();
    steps.extend(from_report.into_iter().filter(|e| !known.contains(&e.seq)));
    steps.sort_by_key(|e| e.seq);
}

/// Passes a host by without sending it anything; `reason` says why.
pub async fn skip_host(db: &Db, restart_id: u64, host: &str, reason: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE restart_hosts SET state = 'skipped', outcome_reason = $3, finished_at = $4
         WHERE restart_id = $1 AND host = $2",
    )
    .bind(to_i64(restart_id))
    .bind(host)
    .bind(reason)
    .bind(to_i64(now_millis()))
    .execute(&db.writes)
    .await
    .context("failed to record a skipped host")?;
    Ok(())
}

/// Starts the pause after the canary batch, to end at `until` (Unix ms),
/// unless it began already: the end first written stands, so a server that
/// takes the restart over waits for that pause, not a new one. Returns the
/// stored end.
pub async fn begin_pause(db: &Db, restart_id: u64, until: u64) -> anyhow::Result<u64> {
    sqlx::query("UPDATE restarts SET pause_until = $2 WHERE id = $1 AND pause_until IS NULL")
        .bind(to_i64(restart_id))
        .bind(to_i64(until))
        .execute(&db.writes)
        .await
        .context("failed to record the rollout's pause")?;
    let (stored,): (Option<i64>,) =
        sqlx::query_as("SELECT pause_until FROM restarts WHERE id = $1")
            .bind(to_i64(restart_id))
            .fetch_one(&db.writes)
            .await
            .context("failed to read the rollout's pause")?;
    Ok(stored.map_or(until, to_u64))
}

/// Passes by every host not started yet, with `reason`: the rollout
/// stopped before their turn.
pub async fn skip_pending_hosts(db: &Db, restart_id: u64, reason: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE restart_hosts SET state = 'skipped', outcome_reason = $2, finished_at = $3
         WHERE restart_id = $1 AND state = 'pending'",
    )
    .bind(to_i64(restart_id))
    .bind(reason)
    .bind(to_i64(now_millis()))
    .execute(&db.writes)
    .await
    .context("failed to skip the hosts after the rollout stopped")?;
    Ok(())
}

/// Ends a restart: hosts never started become `skipped`.
pub async fn finish_restart(
    db: &Db,
    restart_id: u64,
    outcome: RestartOutcome,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
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
    .bind(Outcome::from(outcome))
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
    let rows: Vec<(Outcome, i64)> = sqlx::query_as(
        "SELECT outcome, COUNT(*) FROM restarts WHERE outcome IS NOT NULL GROUP BY outcome",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to count restarts")?;
    Ok(rows
        .into_iter()
        .map(|(outcome, n)| (outcome.into(), to_u64(n)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_both_engines;

    async fn a_state_no_variant_names_is_an_error_not_a_default(db: &Db) {
        let known: (RestartState, HostRestartState, Outcome) =
            sqlx::query_as("SELECT 'finished', 'skipped', 'rolled_back'")
                .fetch_one(&db.reads)
                .await
                .unwrap();
        assert_eq!(
            known,
            (
                RestartState::Finished,
                HostRestartState::Skipped,
                Outcome::RolledBack
            )
        );
        for unknown in ["SELECT 'paused'", "SELECT ''", "SELECT 'Running'"] {
            let read = sqlx::query_as::<_, (RestartState,)>(unknown)
                .fetch_one(&db.reads)
                .await;
            assert!(read.is_err(), "{unknown} read as {read:?}");
        }
    }

    async fn a_restart_with_an_unknown_outcome_fails_to_read(db: &Db) {
        sqlx::query(
            "INSERT INTO restarts (id, service, max_parallel, state, outcome, created_at)
             VALUES (7, 'web', 1, 'finished', 'sideways', 0)",
        )
        .execute(&db.writes)
        .await
        .unwrap();
        let error = get_restart(db, 7).await.unwrap_err();
        assert!(format!("{error:#}").contains("sideways"), "{error:#}");
        assert!(count_restarts_by_outcome(db).await.is_err());
        assert!(
            list_restarts(
                db,
                &RestartFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .is_err()
        );
    }

    async fn a_hosts_tally_is_written_once_and_read_back_whole(db: &Db) {
        let hosts = vec!["alpha".to_string(), "beta".to_string()];
        let id = restart_of(db, &hosts).await;
        let tally = ConnectionTally {
            handed_over: 12,
            drained: 3,
            cut: 1,
        };
        assert!(record_connections(db, id, "alpha", tally).await.unwrap());
        // The same drain seen again, or another account of it, changes nothing.
        assert!(!record_connections(db, id, "alpha", tally).await.unwrap());
        let other = ConnectionTally {
            handed_over: 0,
            drained: 15,
            cut: 1,
        };
        assert!(!record_connections(db, id, "alpha", other).await.unwrap());
        // Nor does one that comes with the outcome.
        let ok = baton_proto::RestartOutcome::Succeeded;
        finish_host(db, id, "alpha", ok, None, Some(other))
            .await
            .unwrap();

        let restart = get_restart(db, id).await.unwrap().unwrap();
        assert_eq!(restart.hosts[0].connections, Some(tally));
        assert_eq!(restart.hosts[1].connections, None);
        // A host's first tally may come with its outcome; none keeps none.
        finish_host(db, id, "beta", ok, None, None).await.unwrap();
        let restart = get_restart(db, id).await.unwrap().unwrap();
        assert_eq!(restart.hosts[1].connections, None);
        finish_host(db, id, "beta", ok, None, Some(other))
            .await
            .unwrap();
        let restart = get_restart(db, id).await.unwrap().unwrap();
        assert_eq!(restart.hosts[0].connections, Some(tally));
        assert_eq!(restart.hosts[1].connections, Some(other));
        let page = list_restarts(
            db,
            &RestartFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(page.restarts[0].hosts[0].connections, Some(tally));
        assert_eq!(page.restarts[0].hosts[1].connections, Some(other));
    }

    /// A new restart of `web` on `hosts`: its id.
    async fn restart_of(db: &Db, hosts: &[String]) -> u64 {
        let Created::New(created) = create_restart(
            db,
            &NewRestart {
                service: "web",
                reason: None,
                requested_by: "ci",
                idempotency_key: None,
                max_parallel: 1,
                rollout: Rollout::default(),
                hosts,
            },
        )
        .await
        .unwrap() else {
            panic!("not created")
        };
        created.id()
    }

    async fn each_host_of_a_restart_reads_its_own_steps_and_output_tail(db: &Db) {
        let hosts = vec!["alpha".to_string(), "beta".to_string(), "gamma".to_string()];
        let id = restart_of(db, &hosts).await;
        let event = |seq: u64, restart: u64| baton_proto::Event {
            seq,
            at: seq,
            service: "web".into(),
            restart: Some(restart),
            kind: baton_proto::EventKind::RestartStarted {
                reason: None,
                requested_by: None,
            },
        };
        // Alpha's agent restart 5 and beta's 9; each also has an event of
        // another restart, and another lifetime's restart 5 on alpha.
        for (host, agent_id) in [("alpha", 5), ("beta", 9)] {
            crate::store::store_events(
                db,
                host,
                "boot",
                &[event(1, 1), event(2, agent_id), event(3, agent_id)],
                &[],
            )
            .await
            .unwrap();
            mark_host_running(
                db,
                &CommandSent {
                    restart_id: id,
                    host,
                    command_id: "c",
                    boot_id: "boot",
                    seq_at_command: 1,
                },
            )
            .await
            .unwrap();
            set_agent_restart_id(db, id, host, agent_id).await.unwrap();
        }
        crate::store::store_events(db, "alpha", "old-boot", &[event(7, 5)], &[])
            .await
            .unwrap();
        let line = baton_proto::OutputLine {
            time: 1,
            generation: 2,
            stream: baton_proto::OutputStream::Stderr,
            text: "beta says why".into(),
        };
        assert!(
            record_output_tail(db, id, "beta", std::slice::from_ref(&line))
                .await
                .unwrap()
        );

        let restart = get_restart(db, id).await.unwrap().unwrap();
        let seqs: Vec<Vec<u64>> = restart
            .hosts
            .iter()
            .map(|h| h.steps.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![2, 3], vec![2, 3], vec![]]);
        assert_eq!(restart.hosts[0].steps[0].restart, Some(5));
        assert_eq!(restart.hosts[1].steps[0].restart, Some(9));
        let tails: Vec<usize> = restart.hosts.iter().map(|h| h.output_tail.len()).collect();
        assert_eq!(tails, vec![0, 1, 0]);
        assert_eq!(restart.hosts[1].output_tail[0].text, "beta says why");
    }

    on_both_engines!(
        each_host_of_a_restart_reads_its_own_steps_and_output_tail,
        a_state_no_variant_names_is_an_error_not_a_default,
        a_restart_with_an_unknown_outcome_fails_to_read,
        a_hosts_tally_is_written_once_and_read_back_whole,
    );
}
