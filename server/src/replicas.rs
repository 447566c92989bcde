//! Several `baton-server` processes on one database (`docs/replicas.md`).
//!
//! Each process is a replica with a random id and a row it refreshes every
//! [`HEARTBEAT_EVERY`]; one not heard from for [`DEAD_AFTER`] is dead, and
//! the hosts whose links it held count as offline. Four loops run here:
//!
//! - the heartbeat, alone in its loop so that nothing slow delays it, and
//!   the housekeeping, which releases the hosts of dead replicas, records
//!   again the links of this one if others took it for dead, and prunes
//!   expired commands;
//! - the change feed, which reads the events other replicas stored (by id,
//!   in bounded batches) and hands them to the [`Fleet`] as the same notices
//!   a link of this replica gives, follows the other replicas' change
//!   sequences so live pages and long polls here re-render, and reads the
//!   hosts' links again when they may have moved;
//! - the delivery of commands other replicas queued for hosts whose link
//!   this one holds (the `host_commands` outbox), whose answers go back in
//!   the same row.
//!
//! The [`Router`] sends a command or a report fetch on the host's link when
//! this replica holds it, and through the outbox when another does.
//!
//! The loops poll the database. [`Replica::wake`] is the one place where a
//! push from the database (PostgreSQL's `LISTEN`/`NOTIFY`) plugs in: whoever
//! receives one calls it, and the feed and the delivery look at once.

use baton_proto::{ErrorBody, RestartId, RestartReport};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::domain::now_millis;
use crate::fleet::{CommandAnswer, Fleet, LinkState};
use crate::store::{self, Db, HostCommandKind, HostCommandRow, NewHostCommand};

/// How often a replica says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica not heard from for this long is dead: its hosts are offline
/// and the restarts it drove are taken over once their leases run out.
/// Not longer than [`LEASE`]: a driver resuming a dead replica's rollout
/// must see that replica's hosts offline rather than queue their commands
/// for a replica that never delivers them. A replica that was only stalled
/// records its links again on its return (`reassert_links`).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// How long a restart's driver holds it without renewing (every
/// [`HEARTBEAT_EVERY`]).
pub const LEASE: Duration = Duration::from_secs(3);
/// How often the change feed looks, when nothing wakes it.
pub const FEED_EVERY: Duration = Duration::from_millis(150);
/// Events read per look of the feed.
pub const FEED_BATCH: u32 = 500;
/// The hosts' links are read again at least this often.
pub const LINKS_EVERY: Duration = Duration::from_secs(2);
/// How often queued commands are looked for, and answers waited on.
pub const DELIVERY_EVERY: Duration = Duration::from_millis(100);
/// Commands taken per look of the delivery.
pub const DELIVERY_BATCH: u32 = 64;
/// Commands that may wait for one host; more are refused.
pub const PENDING_COMMANDS_PER_HOST: u32 = 16;
/// A command not delivered and answered in this time has expired.
pub const COMMAND_LIFETIME: Duration = Duration::from_secs(30);
/// How long an agent has to send a fetched report.
const REPORT_ANSWER: Duration = Duration::from_secs(5);
/// Dead replicas' rows are kept this long, for the operator's eyes.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);

/// The answer to a relayed command, as the replica holding the link writes
/// it in `host_commands.answer`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum RelayedAnswer {
    Started {
        restart_id: RestartId,
    },
    Refused {
        error: ErrorBody,
    },
    /// The link closed (or was not the one the command was for) before an
    /// answer came.
    LinkClosed,
    Report {
        report: Option<RestartReport>,
    },
}

/// This process's replica id, for the agent links (`web::Data`).
#[derive(Debug, Clone)]
pub struct ReplicaId(pub Arc<str>);

pub struct Replica {
    id: String,
    db: Db,
    fleet: Arc<Fleet>,
    wake: Notify,
    stop: CancellationToken,
}

impl Replica {
    /// Registers this process as a replica, takes in the hosts other
    /// replicas hold, and starts the heartbeat, the change feed and the
    /// delivery of queued commands on `runtime`.
    pub async fn start(
        db: Db,
        fleet: Arc<Fleet>,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<Replica>> {
        let id = format!("{:016x}", rand::random::<u64>());
        let now = now_millis();
        store::register_replica(&db, &id, now).await?;
        store::release_dead_replicas(&db, alive_after(now), forget_before(now)).await?;
        let cursor = store::last_event_id(&db).await?;
        let replica = Arc::new(Replica {
            id,
            db,
            fleet,
            wake: Notify::new(),
            stop: CancellationToken::new(),
        });
        let mut feed = Feed {
            cursor,
            change_seqs: HashMap::new(),
            alive: HashSet::new(),
            links_read_at: None,
        };
        feed.look(&replica).await?;
        tracing::info!(replica = replica.id, "replica registered");
        runtime.spawn(heartbeat_loop(replica.clone()));
        runtime.spawn(housekeeping_loop(replica.clone()));
        runtime.spawn(feed_loop(replica.clone(), feed));
        runtime.spawn(delivery_loop(replica.clone()));
        Ok(replica)
    }

    /// This replica's id, as `hosts.link_replica` and `restarts.driver`
    /// name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Something changed in the database: the feed and the delivery look
    /// now rather than at their next tick.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Stops the loops and leaves: the hosts it held are offline at once
    /// for the other replicas.
    pub async fn stop(&self) {
        self.stop.cancel();
        if let Err(error) = store::remove_replica(&self.db, &self.id).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot remove the replica's row"
            );
        }
    }

    async fn tick(&self, every: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(every) => true,
            _ = self.wake.notified() => true,
        }
    }
}

fn alive_after(now: u64) -> u64 {
    now.saturating_sub(DEAD_AFTER.as_millis() as u64)
}

fn forget_before(now: u64) -> u64 {
    now.saturating_sub(FORGET_DEAD_AFTER.as_millis() as u64)
}

/// Only the heartbeat: nothing slow runs before it in its loop, so a slow
/// release or prune does not make this replica look dead to the others.
async fn heartbeat_loop(replica: Arc<Replica>) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = replica.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = store::heartbeat(&replica.db, &replica.id, now_millis(), false).await {
            tracing::warn!(error = format!("{error:#}"), "replica heartbeat failed");
        }
    }
}

/// Releases the hosts of dead replicas, records again the links of this
/// one that others released while it looked dead, and prunes expired
/// commands.
async fn housekeeping_loop(replica: Arc<Replica>) {
    let mut beats: u64 = 0;
    while replica.tick(HEARTBEAT_EVERY).await {
        let now = now_millis();
        let work = async {
            let released =
                store::release_dead_replicas(&replica.db, alive_after(now), forget_before(now))
                    .await?;
            if released > 0 {
                tracing::info!(hosts = released, "hosts of a dead replica are offline");
            }
            reassert_links(&replica).await?;
            if beats.is_multiple_of(60) {
                store::prune_host_commands(
                    &replica.db,
                    now.saturating_sub(COMMAND_LIFETIME.as_millis() as u64),
                )
                .await?;
            }
            anyhow::Ok(())
        };
        if let Err(error) = work.await {
            tracing::warn!(error = format!("{error:#}"), "replica housekeeping failed");
        }
        beats += 1;
    }
}

/// A replica that stalled longer than [`DEAD_AFTER`] (a slow database, a
/// pause of the process) finds on its return that the others released
/// the hosts it holds, though their agents' links here never closed;
/// nothing else would record them again until those agents reconnect, so
/// every other replica would show them offline and skip them. The links
/// still open here are recorded again, where no newer link took their
/// place.
async fn reassert_links(replica: &Replica) -> anyhow::Result<()> {
    let held = replica.fleet.links_held_here();
    if held.is_empty() {
        return Ok(());
    }
    let recorded: HashMap<String, u64> = store::links_of_replica(&replica.db, &replica.id)
        .await?
        .into_iter()
        .collect();
    let mut reasserted = 0;
    for (host, link_id) in held {
        if recorded.contains_key(&host) {
            continue;
        }
        // Closed or replaced since it was read: its own release or hold
        // writes the row.
        if replica
            .fleet
            .link_state(&host)
            .is_none_or(|link| link.remote || link.connection != Some(link_id))
        {
            continue;
        }
        if store::reassert_host_link(&replica.db, &host, &replica.id, link_id).await? {
            reasserted += 1;
        }
    }
    if reasserted > 0 {
        tracing::warn!(
            hosts = reasserted,
            "this replica was taken for dead; the links it holds are recorded again"
        );
        // The others read the links again when this replica's change
        // sequence moves.
        store::heartbeat(&replica.db, &replica.id, now_millis(), true).await?;
    }
    Ok(())
}

/// What the change feed has seen so far.
struct Feed {
    /// The last event id read.
    cursor: u64,
    /// Each other replica's change sequence, as last read.
    change_seqs: HashMap<String, u64>,
    /// The replicas alive at the last look.
    alive: HashSet<String>,
    links_read_at: Option<Instant>,
}

impl Feed {
    async fn look(&mut self, replica: &Replica) -> anyhow::Result<()> {
        let now = now_millis();
        // Other replicas' events, in bounded batches.
        loop {
            let (events, last) =
                store::events_stored_elsewhere(&replica.db, self.cursor, &replica.id, FEED_BATCH)
                    .await?;
            // Ids may have holes (pruned events): a wide read is looked past
            // once more, at worst for nothing.
            let full = last.saturating_sub(self.cursor) >= u64::from(FEED_BATCH);
            self.cursor = last;
            let mut batch: Vec<baton_proto::Event> = Vec::new();
            let mut of: Option<(String, String)> = None;
            for fed in events {
                let key = (fed.host, fed.boot_id);
                if of.as_ref() != Some(&key) {
                    if let Some((host, boot_id)) = of.take()
                        && !batch.is_empty()
                    {
                        replica.fleet.events_stored_elsewhere(
                            &host,
                            &boot_id,
                            std::mem::take(&mut batch),
                        );
                    }
                    of = Some(key);
                }
                batch.push(fed.event);
            }
            if let Some((host, boot_id)) = of
                && !batch.is_empty()
            {
                replica
                    .fleet
                    .events_stored_elsewhere(&host, &boot_id, batch);
            }
            if !full {
                break;
            }
        }
        // The other replicas: which are alive, and whether they changed
        // something a page shows.
        let rows = store::replica_rows(&replica.db).await?;
        let mut changed_elsewhere = false;
        let mut alive = HashSet::new();
        for row in rows {
            if row.id == replica.id {
                continue;
            }
            if row.heartbeat_at >= alive_after(now) {
                alive.insert(row.id.clone());
            }
            if self.change_seqs.insert(row.id.clone(), row.change_seq) != Some(row.change_seq) {
                changed_elsewhere = true;
            }
        }
        let links_due = self
            .links_read_at
            .is_none_or(|at| at.elapsed() >= LINKS_EVERY);
        if changed_elsewhere || alive != self.alive || links_due {
            let hosts = store::linked_hosts(&replica.db).await?;
            replica.fleet.apply_links(hosts, &replica.id, &alive);
            self.links_read_at = Some(Instant::now());
            self.alive = alive;
        }
        if changed_elsewhere {
            replica.fleet.changed_elsewhere();
        }
        // This replica's changes, for the others.
        if replica.fleet.take_changed_here() {
            store::heartbeat(&replica.db, &replica.id, now, true).await?;
        }
        Ok(())
    }
}

async fn feed_loop(replica: Arc<Replica>, mut feed: Feed) {
    while replica.tick(FEED_EVERY).await {
        if let Err(error) = feed.look(&replica).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "the change feed failed; retrying"
            );
        }
    }
}

async fn delivery_loop(replica: Arc<Replica>) {
    while replica.tick(DELIVERY_EVERY).await {
        let now = now_millis();
        let rows =
            match store::commands_to_deliver(&replica.db, &replica.id, now, DELIVERY_BATCH).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "cannot read queued commands");
                    continue;
                }
            };
        for row in rows {
            let id = u64::try_from(row.id).unwrap_or(0);
            match store::take_host_command(&replica.db, id).await {
                Ok(true) => {
                    tokio::spawn(deliver(replica.clone(), row));
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "cannot take a queued command")
                }
            }
        }
    }
}

/// Sends one queued command on this replica's link of the host, if it is
/// still the link the command was for, and writes the answer back.
async fn deliver(replica: Arc<Replica>, row: HostCommandRow) {
    let id = u64::try_from(row.id).unwrap_or(0);
    let link_id = u64::try_from(row.link_id).unwrap_or(0);
    let on_this_link = replica
        .fleet
        .link_state(&row.host)
        .is_some_and(|link| !link.remote && link.connection == Some(link_id));
    let expires_at = u64::try_from(row.expires_at).unwrap_or(0);
    let left = Duration::from_millis(expires_at.saturating_sub(now_millis()));
    let answer = if !on_this_link {
        Some(RelayedAnswer::LinkClosed)
    } else {
        match row.kind {
            HostCommandKind::Restart => {
                let command_id = row.command_id.clone().unwrap_or_default();
                match replica.fleet.send_restart(
                    &row.host,
                    &command_id,
                    row.service.as_deref().unwrap_or_default(),
                    row.reason.clone(),
                ) {
                    None => Some(RelayedAnswer::LinkClosed),
                    Some(answer) => match tokio::time::timeout(left, answer).await {
                        Ok(Ok(CommandAnswer::Started(restart_id))) => {
                            Some(RelayedAnswer::Started { restart_id })
                        }
                        Ok(Ok(CommandAnswer::Refused(error))) => {
                            Some(RelayedAnswer::Refused { error })
                        }
                        Ok(Ok(CommandAnswer::LinkClosed)) | Ok(Err(_)) => {
                            Some(RelayedAnswer::LinkClosed)
                        }
                        // The asking replica gave up by now.
                        Err(_) => {
                            replica.fleet.forget_command(&command_id);
                            None
                        }
                    },
                }
            }
            HostCommandKind::FetchReport => {
                let restart_id = row
                    .agent_restart_id
                    .and_then(|id| u64::try_from(id).ok())
                    .unwrap_or(0);
                match replica.fleet.fetch_report(
                    &row.host,
                    row.boot_id.as_deref().unwrap_or_default(),
                    restart_id,
                ) {
                    None => Some(RelayedAnswer::LinkClosed),
                    Some(answer) => {
                        match tokio::time::timeout(left.min(REPORT_ANSWER), answer).await {
                            Ok(Ok(report)) => Some(RelayedAnswer::Report { report }),
                            Ok(Err(_)) => Some(RelayedAnswer::LinkClosed),
                            Err(_) => None,
                        }
                    }
                }
            }
        }
    };
    let Some(answer) = answer else {
        return;
    };
    let written = match serde_json::to_string(&answer) {
        Ok(json) => store::answer_host_command(&replica.db, id, &json).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = written {
        tracing::warn!(
            host = row.host,
            error = format!("{error:#}"),
            "cannot write a command's answer"
        );
    }
}

/// Where a command for a host goes: its link here, or the outbox for the
/// replica that holds it.
#[derive(Clone)]
pub struct Router {
    replica: Arc<Replica>,
}

impl Router {
    pub fn new(replica: Arc<Replica>) -> Router {
        Router { replica }
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Sends a restart command over the host's link `link` (as the caller
    /// read it). `None` when it cannot be sent (offline, or too many
    /// commands wait for the host already). Only that link's answer counts.
    pub async fn send_restart(
        &self,
        host: &str,
        link: &LinkState,
        command_id: &str,
        service: &str,
        reason: Option<String>,
    ) -> anyhow::Result<Option<oneshot::Receiver<CommandAnswer>>> {
        if !link.remote {
            return Ok(self
                .replica
                .fleet
                .send_restart(host, command_id, service, reason));
        }
        let Some(link_id) = link.connection else {
            return Ok(None);
        };
        let Some(id) = self
            .queue(&NewHostCommand {
                host,
                link_id,
                kind: HostCommandKind::Restart,
                command_id: Some(command_id),
                service: Some(service),
                reason: reason.as_deref(),
                boot_id: None,
                agent_restart_id: None,
                expires_at: 0,
            })
            .await?
        else {
            return Ok(None);
        };
        let (sender, receiver) = oneshot::channel();
        let replica = self.replica.clone();
        tokio::spawn(async move {
            let answer = match wait_for_answer(&replica, id, &sender).await {
                Some(RelayedAnswer::Started { restart_id }) => CommandAnswer::Started(restart_id),
                Some(RelayedAnswer::Refused { error }) => CommandAnswer::Refused(error),
                Some(RelayedAnswer::LinkClosed) => CommandAnswer::LinkClosed,
                Some(RelayedAnswer::Report { .. }) | None => return,
            };
            let _ = sender.send(answer);
        });
        Ok(Some(receiver))
    }

    /// Asks the host's agent for the report of its restart `restart_id`,
    /// when its link is of the agent lifetime `boot_id`; as
    /// [`Fleet::fetch_report`], wherever the link is held.
    pub async fn fetch_report(
        &self,
        host: &str,
        boot_id: &str,
        restart_id: RestartId,
    ) -> anyhow::Result<Option<oneshot::Receiver<Option<RestartReport>>>> {
        let Some(link) = self.replica.fleet.link_state(host) else {
            return Ok(None);
        };
        if !link.remote {
            return Ok(self.replica.fleet.fetch_report(host, boot_id, restart_id));
        }
        let (true, Some(link_id)) = (link.boot_id == boot_id, link.connection) else {
            return Ok(None);
        };
        let Some(id) = self
            .queue(&NewHostCommand {
                host,
                link_id,
                kind: HostCommandKind::FetchReport,
                command_id: None,
                service: None,
                reason: None,
                boot_id: Some(boot_id),
                agent_restart_id: Some(restart_id),
                expires_at: 0,
            })
            .await?
        else {
            return Ok(None);
        };
        let (sender, receiver) = oneshot::channel();
        let replica = self.replica.clone();
        tokio::spawn(async move {
            // Any other answer drops the sender: the link closed.
            if let Some(RelayedAnswer::Report { report }) =
                wait_for_answer(&replica, id, &sender).await
            {
                let _ = sender.send(report);
            }
        });
        Ok(Some(receiver))
    }

    async fn queue(&self, command: &NewHostCommand<'_>) -> anyhow::Result<Option<u64>> {
        let now = now_millis();
        let command = NewHostCommand {
            expires_at: now + COMMAND_LIFETIME.as_millis() as u64,
            ..*command
        };
        let id =
            store::queue_host_command(&self.replica.db, &command, now, PENDING_COMMANDS_PER_HOST)
                .await?;
        if id.is_none() {
            tracing::warn!(
                host = command.host,
                "too many commands wait for the host; refused"
            );
        }
        Ok(id)
    }
}

/// Polls a queued command's row until it is answered, it expires, or the
/// waiter is gone.
async fn wait_for_answer<T>(
    replica: &Replica,
    id: u64,
    waiter: &oneshot::Sender<T>,
) -> Option<RelayedAnswer> {
    let deadline = tokio::time::Instant::now() + COMMAND_LIFETIME;
    while tokio::time::Instant::now() < deadline && !waiter.is_closed() {
        match store::host_command_answer(&replica.db, id).await {
            Ok(Some(json)) => match serde_json::from_str(&json) {
                Ok(answer) => return Some(answer),
                Err(error) => {
                    tracing::warn!(id, %error, "a relayed answer does not parse");
                    return None;
                }
            },
            Ok(None) => {}
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "cannot read a command's answer"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(DELIVERY_EVERY) => {}
            _ = replica.wake.notified() => {}
        }
    }
    None
}
