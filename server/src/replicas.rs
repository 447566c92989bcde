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
//! The loops poll the database. On PostgreSQL the writers of what the
//! loops look for also `NOTIFY` (`store::CHANGES_CHANNEL`), and each replica
//! holds one `LISTEN`ing connection ([`listen_loop`]) that wakes the loop
//! concerned at once; polling stays as the fallback, and is the only way on
//! SQLite. [`Replica::wake`] wakes them all.

use anyhow::Context;
use baton_proto::{ErrorBody, RestartId, RestartReport};
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::now_millis;
use crate::fleet::{CommandAnswer, Fleet, LinkState};
use crate::store::{self, Change, Db, FeedCursor, HostCommandKind, HostCommandRow, NewHostCommand};

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
/// Looks of the change feed woken by notifications start at least this far
/// apart: a burst of writes elsewhere costs a look per this, not per write.
pub const FEED_SPACING: Duration = Duration::from_millis(20);
/// Events read per look of the feed.
pub const FEED_BATCH: u32 = 500;
/// The hosts' links are read again at least this often.
pub const LINKS_EVERY: Duration = Duration::from_secs(2);
/// And, when another replica changed something, at most this often: a
/// rollout changes something on every replica many times a second, and
/// each read takes every host's row.
pub const LINKS_SPACING: Duration = Duration::from_millis(250);
/// A replica's change count (which wakes the others' pages, long polls and
/// link reads) moves at most this often.
pub const CHANGES_SPACING: Duration = Duration::from_millis(250);
/// How often queued commands are looked for, and answers waited on.
pub const DELIVERY_EVERY: Duration = Duration::from_millis(100);
/// How often an answer is looked for while notifications come (on
/// PostgreSQL, with the listener connected): each answer's notification
/// wakes its sender, and this is only the fallback.
const ANSWER_POLL_WHILE_LISTENING: Duration = Duration::from_secs(1);
/// Commands taken per look of the delivery.
pub const DELIVERY_BATCH: u32 = 64;
/// Commands named by notifications that wait to be taken by id.
const NAMED_MAX: usize = 1024;
/// Commands that may wait for one host; more are refused.
pub const PENDING_COMMANDS_PER_HOST: u32 = 16;
/// A command not delivered and answered in this time has expired.
pub const COMMAND_LIFETIME: Duration = Duration::from_secs(30);
/// How long an agent has to send a fetched report.
const REPORT_ANSWER: Duration = Duration::from_secs(5);
/// Dead replicas' rows are kept this long, for the operator's eyes.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);
/// A listener that hears nothing of its own replica's heartbeat (a
/// notification every [`HEARTBEAT_EVERY`]) for this long takes its
/// connection for dead (a peer gone without a word) and connects again.
const LISTEN_SILENCE: Duration = Duration::from_secs(5);
/// How long a listener may take to connect and `LISTEN`.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait before connecting the listener again, doubled after each
/// failure up to [`LISTEN_RETRY_MAX`]; back to the first after a
/// connection that lasted [`LISTEN_HEALTHY`].
const LISTEN_RETRY_FIRST: Duration = Duration::from_millis(250);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);
const LISTEN_HEALTHY: Duration = Duration::from_secs(30);

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
    wakes: Wakes,
    stop: CancellationToken,
}

/// What wakes the loops before their next tick.
struct Wakes {
    /// The change feed; a wake during a look makes one more look.
    feed: Notify,
    /// The delivery of queued commands; likewise.
    delivery: Notify,
    /// Commands for hosts linked here that notifications named, to be
    /// taken by id without looking for them (at most [`NAMED_MAX`]; past
    /// that, the next look finds them).
    named: Mutex<Vec<u64>>,
    /// The next delivery looks for every command of the hosts linked here,
    /// woken or not.
    look_all: AtomicBool,
    /// Each sender waiting for a relayed answer, by the queued command's id:
    /// an answer wakes its own sender, not every one (a rollout has dozens
    /// waiting at once, and each wake is a read).
    answers: Mutex<HashMap<u64, Arc<Notify>>>,
    /// Every relayed log stream read here.
    logs: watch::Sender<()>,
    /// A listener is connected: notifications come, and the waits for
    /// answers poll only as a fallback.
    listening: AtomicBool,
}

impl Wakes {
    fn new() -> Wakes {
        Wakes {
            feed: Notify::new(),
            delivery: Notify::new(),
            named: Mutex::new(Vec::new()),
            look_all: AtomicBool::new(true),
            answers: Mutex::new(HashMap::new()),
            logs: watch::Sender::new(()),
            listening: AtomicBool::new(false),
        }
    }

    fn all(&self) {
        self.feed.notify_one();
        self.look_all.store(true, Ordering::Relaxed);
        self.delivery.notify_one();
        for waiter in self.answers.lock().expect("answers lock").values() {
            waiter.notify_one();
        }
        self.logs.send_replace(());
    }

    /// Registers a wait for the answer to the queued command `id`, until
    /// the returned guard drops.
    fn wait_answer(&self, id: u64) -> AnswerWait<'_> {
        let notify = Arc::new(Notify::new());
        self.answers
            .lock()
            .expect("answers lock")
            .insert(id, notify.clone());
        AnswerWait {
            wakes: self,
            id,
            notify,
        }
    }

    fn answered(&self, id: u64) {
        if let Some(waiter) = self.answers.lock().expect("answers lock").get(&id) {
            // A permit is kept: a wait that starts after this returns at once.
            waiter.notify_one();
        }
    }
}

struct AnswerWait<'a> {
    wakes: &'a Wakes,
    id: u64,
    notify: Arc<Notify>,
}

impl Drop for AnswerWait<'_> {
    fn drop(&mut self) {
        self.wakes
            .answers
            .lock()
            .expect("answers lock")
            .remove(&self.id);
    }
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
        let cursor = FeedCursor::after(store::last_event_id(&db).await?);
        let replica = Arc::new(Replica {
            id,
            db,
            fleet,
            wakes: Wakes::new(),
            stop: CancellationToken::new(),
        });
        let mut feed = Feed {
            cursor,
            change_seqs: HashMap::new(),
            alive: HashSet::new(),
            links_read_at: None,
            links_stale: false,
            counted_at: None,
        };
        feed.look(&replica).await?;
        tracing::info!(replica = replica.id, "replica registered");
        runtime.spawn(heartbeat_loop(replica.clone()));
        runtime.spawn(housekeeping_loop(replica.clone()));
        runtime.spawn(feed_loop(replica.clone(), feed));
        runtime.spawn(delivery_loop(replica.clone()));
        if let Some(url) = replica.db.postgres_url() {
            runtime.spawn(listen_loop(replica.clone(), url.to_owned()));
        }
        Ok(replica)
    }

    /// This replica's id, as `hosts.link_replica` and `restarts.driver`
    /// name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Something changed in the database: the feed and the delivery look
    /// now rather than at their next tick, and the senders waiting for
    /// relayed answers read them again.
    pub fn wake(&self) {
        self.wakes.all();
    }

    /// Changes at each [`Replica::wake`] and each notification that a log
    /// chunk was relayed: a relayed log stream reads at once rather than at
    /// its next poll.
    pub fn log_wakes(&self) -> watch::Receiver<()> {
        self.wakes.logs.subscribe()
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

    /// Waits for the next tick of a loop `every`, or for `wake`; false
    /// once the replica stops.
    async fn tick(&self, every: Duration, wake: &Notify) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(every) => true,
            _ = wake.notified() => true,
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
    // Nothing wakes the heartbeat early.
    let never = Notify::new();
    while replica.tick(HEARTBEAT_EVERY, &never).await {
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
    /// Where it is in the events.
    cursor: FeedCursor,
    /// Each other replica's change sequence, as last read.
    change_seqs: HashMap<String, u64>,
    /// The replicas alive at the last look.
    alive: HashSet<String>,
    links_read_at: Option<Instant>,
    /// Another replica changed something since the links were last read.
    links_stale: bool,
    /// When this replica last moved its change sequence.
    counted_at: Option<Instant>,
}

impl Feed {
    async fn look(&mut self, replica: &Replica) -> anyhow::Result<()> {
        let now = now_millis();
        // Other replicas' events, in bounded batches.
        loop {
            let read = self
                .cursor
                .read(&replica.db, &replica.id, now, FEED_BATCH)
                .await?;
            let mut batch: Vec<baton_proto::Event> = Vec::new();
            let mut of: Option<(String, String)> = None;
            for fed in read.events {
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
            if !read.more {
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
        self.links_stale |= changed_elsewhere;
        // A replica that died or came changes the links at once; changes
        // elsewhere are taken in at most every LINKS_SPACING, as during a
        // rollout they come with every look.
        let since_read = self.links_read_at.map(|at| at.elapsed());
        let links_due = since_read.is_none_or(|since| {
            since >= LINKS_EVERY || (self.links_stale && since >= LINKS_SPACING)
        });
        if alive != self.alive || links_due {
            let known = replica.fleet.services_revisions();
            let hosts = store::linked_hosts(&replica.db, &replica.id, &known).await?;
            replica.fleet.apply_links(hosts, &replica.id, &alive);
            self.links_read_at = Some(Instant::now());
            self.alive = alive;
            if std::mem::take(&mut self.links_stale) {
                replica.fleet.changed_elsewhere();
            }
        }
        // This replica's changes, for the others: their count moves at most
        // every CHANGES_SPACING, since each move wakes every other replica.
        let count_due = self
            .counted_at
            .is_none_or(|at| at.elapsed() >= CHANGES_SPACING);
        if count_due && replica.fleet.take_changed_here() {
            store::heartbeat(&replica.db, &replica.id, now, true).await?;
            self.counted_at = Some(Instant::now());
        }
        Ok(())
    }
}

async fn feed_loop(replica: Arc<Replica>, mut feed: Feed) {
    let mut looked_at = tokio::time::Instant::now();
    while replica.tick(FEED_EVERY, &replica.wakes.feed).await {
        let spaced = looked_at + FEED_SPACING;
        if tokio::time::Instant::now() < spaced {
            tokio::select! {
                _ = replica.stop.cancelled() => return,
                _ = tokio::time::sleep_until(spaced) => {}
            }
        }
        looked_at = tokio::time::Instant::now();
        if let Err(error) = feed.look(&replica).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "the change feed failed; retrying"
            );
        }
    }
}

async fn delivery_loop(replica: Arc<Replica>) {
    let mut looked_at = Instant::now();
    while replica.tick(DELIVERY_EVERY, &replica.wakes.delivery).await {
        let now = now_millis();
        // Commands a notification named: one statement each, no look.
        let named = std::mem::take(&mut *replica.wakes.named.lock().expect("named lock"));
        for id in named {
            match store::take_host_command_named(&replica.db, id, now).await {
                Ok(Some(row)) => {
                    tokio::spawn(deliver(replica.clone(), row));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "cannot take a queued command")
                }
            }
        }
        // The look for every command of the hosts here: at each tick, and
        // when a wake asked for it.
        let look_all = replica.wakes.look_all.swap(false, Ordering::Relaxed);
        if !look_all && looked_at.elapsed() < DELIVERY_EVERY {
            continue;
        }
        looked_at = Instant::now();
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
    // A log stream runs as long as its reader reads, with its own end.
    if row.kind == HostCommandKind::OpenLogs {
        crate::log_relay::serve(&replica.db, &replica.fleet, row).await;
        return;
    }
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
            HostCommandKind::OpenLogs => None,
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
                holder: link.holder.as_deref(),
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
                holder: link.holder.as_deref(),
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
    // Registered before the first read: an answer notified in between is
    // not missed.
    let wait = replica.wakes.wait_answer(id);
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
        let poll = if replica.wakes.listening.load(Ordering::Relaxed) {
            ANSWER_POLL_WHILE_LISTENING
        } else {
            DELIVERY_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = wait.notify.notified() => {}
        }
    }
    None
}

/// Holds one `LISTEN`ing connection to PostgreSQL for as long as the
/// replica runs, and wakes the loops each notification concerns. A lost
/// connection is made again, after a wait that grows with each failure;
/// whatever was notified meanwhile is found by the loops' polling, and by
/// one look of each once the listener is back.
async fn listen_loop(replica: Arc<Replica>, url: String) {
    let mut retry = LISTEN_RETRY_FIRST;
    let mut failed_before = false;
    loop {
        let began = Instant::now();
        let listened = listen(&replica, &url, failed_before).await;
        replica.wakes.listening.store(false, Ordering::Relaxed);
        let error = match listened {
            Ok(()) => return,
            Err(error) => error,
        };
        if began.elapsed() >= LISTEN_HEALTHY {
            retry = LISTEN_RETRY_FIRST;
        }
        tracing::warn!(
            error = format!("{error:#}"),
            retry_in_ms = retry.as_millis() as u64,
            "not listening for the other replicas' changes; polling meanwhile"
        );
        failed_before = true;
        tokio::select! {
            _ = replica.stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LISTEN_RETRY_MAX);
    }
}

/// One listening connection, until it fails (an error) or the replica
/// stops (`Ok`).
async fn listen(replica: &Replica, url: &str, failed_before: bool) -> anyhow::Result<()> {
    let connect = async {
        let mut listener = PgListener::connect(url).await?;
        listener.listen(store::CHANGES_CHANNEL).await?;
        anyhow::Ok(listener)
    };
    let mut listener = tokio::select! {
        _ = replica.stop.cancelled() => return Ok(()),
        connected = tokio::time::timeout(LISTEN_CONNECT_TIMEOUT, connect) => connected
            .context("connecting took too long")?
            .context("cannot listen")?,
    };
    if failed_before {
        tracing::info!("listening for the other replicas' changes again");
    } else {
        tracing::info!(
            channel = store::CHANGES_CHANNEL,
            "listening for the other replicas' changes"
        );
    }
    // What was notified before this connection listened.
    replica.wakes.listening.store(true, Ordering::Relaxed);
    replica.wake();
    let mut heard_self = tokio::time::Instant::now();
    loop {
        let notification = tokio::select! {
            _ = replica.stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(heard_self + LISTEN_SILENCE) => {
                anyhow::bail!(
                    "heard nothing of this replica's own heartbeat for {} s",
                    LISTEN_SILENCE.as_secs()
                )
            }
            received = listener.try_recv() => received.context("the listening connection failed")?,
        };
        let Some(notification) = notification else {
            // The connection was lost and made again: what was notified in
            // between is gone.
            tracing::info!("the listening connection was lost and made again");
            replica.wake();
            continue;
        };
        match Change::parse(notification.payload()) {
            Some(Change::Feed { from } | Change::Beat { from }) if from == replica.id => {
                heard_self = tokio::time::Instant::now();
            }
            Some(Change::Feed { .. }) => replica.wakes.feed.notify_one(),
            Some(Change::Command { to: None }) => {
                replica.wakes.look_all.store(true, Ordering::Relaxed);
                replica.wakes.delivery.notify_one();
            }
            Some(Change::Command {
                to: Some((to, command)),
            }) if to == replica.id => {
                let mut named = replica.wakes.named.lock().expect("named lock");
                if named.len() < NAMED_MAX {
                    named.push(command);
                } else {
                    replica.wakes.look_all.store(true, Ordering::Relaxed);
                }
                drop(named);
                replica.wakes.delivery.notify_one();
            }
            Some(Change::Command { .. }) => {}
            Some(Change::Answer { id }) => replica.wakes.answered(id),
            Some(Change::Logs) => {
                replica.wakes.logs.send_replace(());
            }
            Some(Change::Beat { .. }) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of the session `LISTEN`ing on this database, once there is
    /// exactly one, other than `not`.
    async fn listening_session(db: &Db, not: Option<i32>) -> i32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_all(db.reads())
            .await
            .unwrap();
            if let [(pid,)] = pids[..]
                && Some(pid) != not
            {
                return pid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no listening session: {pids:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether answering the queued command `id` wakes the replica's
    /// answer waiters: only a notification does (polling reads the row
    /// without being woken).
    async fn an_answer_wakes(replica: &Replica, id: u64) -> bool {
        // Past the wake of a listener that just connected.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let wait = replica.wakes.wait_answer(id);
        // Not the wake of every waiter when the listener connected.
        let _ = tokio::time::timeout(Duration::from_millis(1), wait.notify.notified()).await;
        store::answer_host_command(&replica.db, id, "{}")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), wait.notify.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_replica_on_postgresql_is_woken_by_notifications_and_listens_again_after_its_connection_is_cut()
     {
        let db = crate::store::testing::postgres().await;
        let replica = Replica::start(
            db.db.clone(),
            Arc::new(Fleet::new(Vec::new())),
            &tokio::runtime::Handle::current(),
        )
        .await
        .unwrap();
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
            expires_at: now_millis() + 30_000,
        };
        let id = store::queue_host_command(&db.db, &command, now_millis(), 16)
            .await
            .unwrap()
            .unwrap();
        let first = listening_session(&db.db, None).await;
        assert!(an_answer_wakes(&replica, id).await);

        // The server ends the listening session, as a restart of
        // PostgreSQL or a proxy would.
        let ended: Vec<(bool,)> = sqlx::query_as("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_all(db.db.reads())
            .await
            .unwrap();
        assert_eq!(ended, vec![(true,)]);
        listening_session(&db.db, Some(first)).await;
        assert!(an_answer_wakes(&replica, id).await);
        replica.stop().await;
    }
}
