//! The live picture of the fleet: which agents are connected, what each last
//! reported, and the channel to send each one a command. The fleet's list
//! (`GET /services`, the overview) is read from the database instead, which
//! every server process shares; this is what this process's links know.

use baton_proto::api::{Host, Service, ServiceOnHost};
use baton_proto::link::ServerFrame;
use baton_proto::{ErrorBody, Event, GenerationState, RestartId, RestartReport, ServiceStatus};
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::domain::now_millis;
use crate::store::{HostForgotten, HostRow, LinkedHostRow};

/// What the orchestrator waits on.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A batch of this host's events is committed. `events` are the ones
    /// that were new (a resend stores nothing twice), in sequence order, so a
    /// restart follows its host without reading the events back.
    Events {
        host: String,
        boot_id: String,
        events: Arc<[Event]>,
    },
    /// Events of this agent lifetime are missing from what the host's link
    /// stored (the agent no longer had them): a restart waiting on them may
    /// never see its outcome in the events.
    Gap {
        host: String,
        boot_id: String,
    },
    Online {
        host: String,
    },
    Offline {
        host: String,
    },
}

impl Notice {
    /// The host it is about.
    pub fn host(&self) -> &str {
        match self {
            Notice::Events { host, .. }
            | Notice::Gap { host, .. }
            | Notice::Online { host }
            | Notice::Offline { host } => host,
        }
    }
}

/// The agent's answer to a restart command.
#[derive(Debug)]
pub enum CommandAnswer {
    Started(RestartId),
    Refused(ErrorBody),
    /// The link closed before an answer came; the agent may or may not have
    /// started the restart.
    LinkClosed,
}

pub struct HostState {
    pub agent_version: String,
    pub boot_id: String,
    pub first_seen: u64,
    pub last_seen: u64,
    pub services: Vec<ServiceStatus>,
    /// The `hosts.services_rev` of `services` when they were read from the
    /// database (another replica wrote them); `None` when they came from a
    /// link here, or were never read.
    services_rev: Option<u64>,
    link: Option<LinkHandle>,
    /// The host's link when another replica holds it (and is alive).
    remote: Option<RemoteLink>,
    /// The agent's `last_seq` at its hello: once `stored_seq` reaches it, every
    /// event the agent had before it connected is stored.
    pub announced_seq: u64,
    pub stored_seq: u64,
    pub offline_since: Option<Instant>,
}

struct LinkHandle {
    connection: u64,
    frames: mpsc::UnboundedSender<ServerFrame>,
}

/// A link another replica holds, as the database and the change feed tell.
#[derive(Debug, Clone)]
struct RemoteLink {
    replica: String,
    connection: u64,
    announced_seq: u64,
    stored_seq: u64,
}

impl HostState {
    /// Linked to this replica or to another live one.
    fn online(&self) -> bool {
        self.link.is_some() || self.remote.is_some()
    }
}

/// A host as the orchestrator sees it at one moment.
#[derive(Debug, Clone)]
pub struct LinkState {
    pub online: bool,
    pub boot_id: String,
    pub connection: Option<u64>,
    pub offline_since: Option<Instant>,
    /// Every event the agent had at its hello is stored.
    pub caught_up: bool,
    pub stored_seq: u64,
    /// The link is held by another replica: commands go through the
    /// database (`replicas::Router`).
    pub remote: bool,
    /// That replica's id.
    pub holder: Option<String>,
}

/// A command waiting for its answer, which counts only from the link it
/// was sent on.
struct PendingCommand {
    host: String,
    connection: u64,
    answer: oneshot::Sender<CommandAnswer>,
}

/// A report asked of an agent, which counts only from the link it was
/// asked on.
struct PendingReport {
    host: String,
    connection: u64,
    restart_id: RestartId,
    answer: oneshot::Sender<Option<RestartReport>>,
}

/// What a log stream's reader gets from the agent.
#[derive(Debug)]
pub enum LogChunk {
    Lines(Vec<baton_proto::OutputLine>),
    /// The agent cannot serve the stream (no such service...).
    Failed(ErrorBody),
}

/// Chunks a log stream's reader may be behind before the stream is dropped
/// and cancelled on the agent: a slow client does not grow the server.
const LOG_CHUNKS_QUEUED: usize = 256;

/// A log stream asked of an agent, which counts only from the link it was
/// asked on.
struct PendingLogs {
    host: String,
    connection: u64,
    chunks: mpsc::Sender<LogChunk>,
}

pub struct Fleet {
    hosts: RwLock<BTreeMap<String, HostState>>,
    log_streams: Mutex<HashMap<String, PendingLogs>>,
    /// Follow streams open per token hash.
    log_followers: Mutex<HashMap<String, usize>>,
    commands: Mutex<HashMap<String, PendingCommand>>,
    reports: Mutex<Vec<PendingReport>>,
    notices: broadcast::Sender<Notice>,
    /// Bumped on every change `GET /services` can show, so a reader can tell
    /// whether what it rendered before is still the picture.
    version: AtomicU64,
    /// Signalled on every change a dashboard page can show: the picture
    /// above, stored events, and a restart's progress (`history_changed`).
    /// Live pages re-render when it fires instead of on a timer.
    changes: watch::Sender<()>,
    /// Set on every change of this replica; the change feed tells the
    /// other replicas (`replicas.rs`) and clears it.
    changed_here: AtomicBool,
}

impl Fleet {
    /// Starts from the hosts the database knows, all offline until their
    /// agents reconnect.
    pub fn new(rows: Vec<HostRow>) -> Fleet {
        let now = Instant::now();
        let hosts = rows
            .into_iter()
            .map(|row| {
                (
                    row.name,
                    HostState {
                        agent_version: row.agent_version,
                        boot_id: row.boot_id,
                        first_seen: u64::try_from(row.first_seen).unwrap_or(0),
                        last_seen: u64::try_from(row.last_seen).unwrap_or(0),
                        services: row.services,
                        services_rev: None,
                        link: None,
                        remote: None,
                        announced_seq: 0,
                        stored_seq: 0,
                        offline_since: Some(now),
                    },
                )
            })
            .collect();
        let (notices, _) = broadcast::channel(4096);
        Fleet {
            hosts: RwLock::new(hosts),
            log_streams: Mutex::new(HashMap::new()),
            log_followers: Mutex::new(HashMap::new()),
            commands: Mutex::new(HashMap::new()),
            reports: Mutex::new(Vec::new()),
            notices,
            version: AtomicU64::new(1),
            changes: watch::Sender::new(()),
            changed_here: AtomicBool::new(false),
        }
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
        self.history_changed();
    }

    /// Something the pages read from the database changed (a restart was
    /// written, a host's step moved on).
    pub fn history_changed(&self) {
        self.changed_here.store(true, Ordering::Release);
        self.changes.send_replace(());
    }

    /// Another replica changed something a page shows: pages here
    /// re-render, and nothing is told back.
    pub fn changed_elsewhere(&self) {
        self.version.fetch_add(1, Ordering::Release);
        self.changes.send_replace(());
    }

    /// Whether something changed here since the last call.
    pub fn take_changed_here(&self) -> bool {
        self.changed_here.swap(false, Ordering::AcqRel)
    }

    /// Fires after every change a page can show; a receiver sees a burst of
    /// changes as at least one.
    pub fn watch_changes(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// Changes whenever what [`Fleet::services`] returns may have changed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn notify(&self, notice: Notice) {
        // No receiver simply means no restart is waiting.
        let _ = self.notices.send(notice);
    }

    /// Registers a new link for a host after its hello. A previous link of the
    /// same host (a half-dead socket the agent gave up on) is replaced: its
    /// frame channel closes, which ends its task.
    pub fn connect(
        &self,
        host: &str,
        agent_version: &str,
        boot_id: &str,
        announced_seq: u64,
        stored_seq: u64,
        services: Vec<ServiceStatus>,
    ) -> (u64, mpsc::UnboundedReceiver<ServerFrame>) {
        // Random, so that link ids are unique across replicas; positive as
        // a BIGINT.
        let connection = (rand::random::<u64>() >> 1).max(1);
        let (frames, receiver) = mpsc::unbounded_channel();
        let now = now_millis();
        {
            let mut hosts = self.hosts.write().expect("fleet lock");
            let state = hosts.entry(host.to_string()).or_insert_with(|| HostState {
                agent_version: String::new(),
                boot_id: String::new(),
                first_seen: now,
                last_seen: now,
                services: Vec::new(),
                services_rev: None,
                link: None,
                remote: None,
                announced_seq: 0,
                stored_seq: 0,
                offline_since: None,
            });
            state.agent_version = agent_version.to_string();
            state.boot_id = boot_id.to_string();
            state.last_seen = now;
            state.services = services;
            state.services_rev = None;
            state.link = Some(LinkHandle { connection, frames });
            state.remote = None;
            state.announced_seq = announced_seq;
            state.stored_seq = stored_seq;
            state.offline_since = None;
        }
        self.changed();
        self.notify(Notice::Online {
            host: host.to_string(),
        });
        (connection, receiver)
    }

    /// Marks the host offline if `connection` is still its current link.
    pub fn disconnect(&self, host: &str, connection: u64) -> bool {
        {
            let mut hosts = self.hosts.write().expect("fleet lock");
            let Some(state) = hosts.get_mut(host) else {
                return false;
            };
            if state.link.as_ref().map(|l| l.connection) != Some(connection) {
                return false;
            }
            state.link = None;
            state.offline_since = Some(Instant::now());
        }
        self.changed();
        let mut commands = self.commands.lock().expect("commands lock");
        let closed: Vec<String> = commands
            .iter()
            .filter(|(_, pending)| pending.host == host)
            .map(|(id, _)| id.clone())
            .collect();
        for id in closed {
            if let Some(pending) = commands.remove(&id) {
                let _ = pending.answer.send(CommandAnswer::LinkClosed);
            }
        }
        drop(commands);
        // Dropped: their readers' streams end.
        self.log_streams
            .lock()
            .expect("log streams lock")
            .retain(|_, pending| pending.connection != connection);
        // Dropped: whoever waits on one learns the link is gone.
        self.reports
            .lock()
            .expect("reports lock")
            .retain(|pending| pending.connection != connection);
        self.notify(Notice::Offline {
            host: host.to_string(),
        });
        true
    }

    /// Records a status; false when the link is no longer the host's current one.
    pub fn update_status(&self, host: &str, connection: u64, services: Vec<ServiceStatus>) -> bool {
        let mut hosts = self.hosts.write().expect("fleet lock");
        match hosts.get_mut(host) {
            Some(state) if state.link.as_ref().map(|l| l.connection) == Some(connection) => {
                if state.services != services {
                    state.services = services;
                    state.services_rev = None;
                    self.changed();
                }
                state.last_seen = now_millis();
                true
            }
            _ => false,
        }
    }

    pub fn touch(&self, host: &str, connection: u64) {
        let mut hosts = self.hosts.write().expect("fleet lock");
        if let Some(state) = hosts.get_mut(host)
            && state.link.as_ref().map(|l| l.connection) == Some(connection)
        {
            state.last_seen = now_millis();
        }
    }

    /// A batch up to `max_seq` is committed; `new_events` are the ones it
    /// added.
    pub fn events_stored(
        &self,
        host: &str,
        connection: u64,
        boot_id: &str,
        max_seq: u64,
        new_events: Vec<Event>,
    ) {
        let mut hosts = self.hosts.write().expect("fleet lock");
        if let Some(state) = hosts.get_mut(host)
            && state.link.as_ref().map(|l| l.connection) == Some(connection)
        {
            state.stored_seq = state.stored_seq.max(max_seq);
            state.last_seen = now_millis();
        }
        // Sent under the lock: whoever reads a `LinkState` that counts these
        // events has their notice waiting already.
        self.notify(Notice::Events {
            host: host.to_string(),
            boot_id: boot_id.to_string(),
            events: new_events.into(),
        });
        self.history_changed();
    }

    /// The host's link stored events with a hole in their sequence.
    pub fn events_missing(&self, host: &str, boot_id: &str) {
        self.notify(Notice::Gap {
            host: host.to_string(),
            boot_id: boot_id.to_string(),
        });
    }

    /// Asks the host's agent for the report of its restart `restart_id`,
    /// when its current link is of the agent lifetime `boot_id`. The answer
    /// is `None` when the agent does not know the restart; the receiver
    /// fails when the link closes first. `None` when there is no such link.
    pub fn fetch_report(
        &self,
        host: &str,
        boot_id: &str,
        restart_id: RestartId,
    ) -> Option<oneshot::Receiver<Option<RestartReport>>> {
        let (answer, receiver) = oneshot::channel();
        let hosts = self.hosts.read().expect("fleet lock");
        let state = hosts.get(host).filter(|s| s.boot_id == boot_id)?;
        let link = state.link.as_ref()?;
        // Registered before sending, so an answer cannot overtake it. Fetches
        // whose waiter gave up go now, not only when an answer comes: an agent
        // that never answers (one from before reports) must not grow this.
        let mut reports = self.reports.lock().expect("reports lock");
        reports.retain(|pending| !pending.answer.is_closed());
        reports.push(PendingReport {
            host: host.to_string(),
            connection: link.connection,
            restart_id,
            answer,
        });
        drop(reports);
        if link
            .frames
            .send(ServerFrame::FetchReport { restart_id })
            .is_err()
        {
            return None;
        }
        Some(receiver)
    }

    /// A report that arrived on `host`'s link `connection`: for every fetch
    /// of that restart asked on that very link.
    pub fn report_answered(
        &self,
        host: &str,
        connection: u64,
        restart_id: RestartId,
        report: Option<RestartReport>,
    ) {
        let mut reports = self.reports.lock().expect("reports lock");
        let (asked, others): (Vec<PendingReport>, Vec<PendingReport>) =
            std::mem::take(&mut *reports)
                .into_iter()
                .partition(|pending| {
                    pending.host == host
                        && pending.connection == connection
                        && pending.restart_id == restart_id
                });
        // Fetches whose waiter gave up go too.
        *reports = others
            .into_iter()
            .filter(|pending| !pending.answer.is_closed())
            .collect();
        drop(reports);
        let answered = !asked.is_empty();
        for pending in asked {
            let _ = pending.answer.send(report.clone());
        }
        if !answered {
            tracing::warn!(
                host,
                restart_id,
                "a report no fetch on this link waits for; ignored"
            );
        }
    }

    /// Asks the host's agent for a service's output (`ServerFrame::Logs`).
    /// `None` when the host is offline. The receiver ends when the agent
    /// says the stream is done, the link closes, or the stream is closed.
    pub fn open_logs(
        &self,
        host: &str,
        service: &str,
        generation: Option<u64>,
        lines: usize,
        follow: bool,
    ) -> Option<(String, mpsc::Receiver<LogChunk>)> {
        let stream_id = format!("logs-{:016x}", rand::random::<u64>());
        let (chunks, receiver) = mpsc::channel(LOG_CHUNKS_QUEUED);
        let hosts = self.hosts.read().expect("fleet lock");
        let link = hosts.get(host).and_then(|s| s.link.as_ref())?;
        // Registered before sending, so an answer cannot overtake it.
        self.log_streams.lock().expect("log streams lock").insert(
            stream_id.clone(),
            PendingLogs {
                host: host.to_string(),
                connection: link.connection,
                chunks,
            },
        );
        let sent = link
            .frames
            .send(ServerFrame::Logs {
                stream_id: stream_id.clone(),
                service: service.to_string(),
                generation,
                lines,
                follow,
            })
            .is_ok();
        drop(hosts);
        if !sent {
            self.log_streams
                .lock()
                .expect("log streams lock")
                .remove(&stream_id);
            return None;
        }
        Some((stream_id, receiver))
    }

    /// Lines that arrived on `host`'s link `connection` for `stream_id`. A
    /// reader that fell too far behind (or left) loses its stream, and the
    /// agent is told to stop.
    pub fn logs_arrived(
        &self,
        host: &str,
        connection: u64,
        stream_id: &str,
        lines: Vec<baton_proto::OutputLine>,
        done: bool,
        error: Option<ErrorBody>,
    ) {
        let mut streams = self.log_streams.lock().expect("log streams lock");
        let Some(pending) = streams
            .get(stream_id)
            .filter(|p| p.host == host && p.connection == connection)
        else {
            drop(streams);
            if !done {
                self.cancel_logs_on(host, connection, stream_id);
            }
            return;
        };
        let chunk = match error {
            Some(error) => LogChunk::Failed(error),
            None => LogChunk::Lines(lines),
        };
        let kept = pending.chunks.try_send(chunk).is_ok();
        if done || !kept {
            streams.remove(stream_id);
        }
        drop(streams);
        if !done && !kept {
            tracing::debug!(
                host,
                stream_id,
                "a log reader fell behind or left; stream cancelled"
            );
            self.cancel_logs_on(host, connection, stream_id);
        }
    }

    /// The reader of `stream_id` is gone: forget it and stop it on the agent.
    pub fn close_logs(&self, stream_id: &str) {
        let pending = self
            .log_streams
            .lock()
            .expect("log streams lock")
            .remove(stream_id);
        if let Some(pending) = pending {
            self.cancel_logs_on(&pending.host, pending.connection, stream_id);
        }
    }

    fn cancel_logs_on(&self, host: &str, connection: u64, stream_id: &str) {
        let hosts = self.hosts.read().expect("fleet lock");
        if let Some(link) = hosts
            .get(host)
            .and_then(|s| s.link.as_ref())
            .filter(|l| l.connection == connection)
        {
            let _ = link.frames.send(ServerFrame::CancelLogs {
                stream_id: stream_id.to_string(),
            });
        }
    }

    /// Counts one more follow stream of `token_hash`, unless it has `max`
    /// open already.
    pub fn start_following(&self, token_hash: &str, max: usize) -> bool {
        let mut followers = self.log_followers.lock().expect("log followers lock");
        let count = followers.entry(token_hash.to_string()).or_default();
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    pub fn stop_following(&self, token_hash: &str) {
        let mut followers = self.log_followers.lock().expect("log followers lock");
        if let Some(count) = followers.get_mut(token_hash) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                followers.remove(token_hash);
            }
        }
    }

    /// Events another replica stored for a host (the change feed), in
    /// sequence order: the same notice as a link of this replica gives.
    pub fn events_stored_elsewhere(&self, host: &str, boot_id: &str, events: Vec<Event>) {
        let Some(max_seq) = events.iter().map(|e| e.seq).max() else {
            return;
        };
        let mut hosts = self.hosts.write().expect("fleet lock");
        if let Some(state) = hosts.get_mut(host)
            && state.boot_id == boot_id
            && let Some(remote) = &mut state.remote
        {
            remote.stored_seq = remote.stored_seq.max(max_seq);
        }
        self.notify(Notice::Events {
            host: host.to_string(),
            boot_id: boot_id.to_string(),
            events: events.into(),
        });
        drop(hosts);
        self.changed_elsewhere();
    }

    /// Takes in the hosts' links as the database has them: a host linked
    /// to another replica in `alive` is online through it; one whose
    /// replica died is offline. Hosts linked here are this replica's own
    /// business and left alone.
    pub fn apply_links(
        &self,
        rows: Vec<LinkedHostRow>,
        this_replica: &str,
        alive: &HashSet<String>,
    ) {
        let mut notices = Vec::new();
        let mut changed = false;
        {
            let mut hosts = self.hosts.write().expect("fleet lock");
            for row in rows {
                let remote = row
                    .link
                    .filter(|(replica, _)| replica != this_replica && alive.contains(replica))
                    .map(|(replica, connection)| RemoteLink {
                        replica,
                        connection,
                        announced_seq: row.announced_seq,
                        stored_seq: row.stored_seq,
                    });
                let state = hosts.entry(row.name.clone()).or_insert_with(|| {
                    changed = true;
                    HostState {
                        agent_version: String::new(),
                        boot_id: String::new(),
                        first_seen: row.first_seen,
                        last_seen: row.last_seen,
                        services: Vec::new(),
                        services_rev: None,
                        link: None,
                        remote: None,
                        announced_seq: 0,
                        stored_seq: 0,
                        offline_since: Some(Instant::now()),
                    }
                });
                if state.link.is_some() {
                    continue;
                }
                let before = state
                    .remote
                    .as_ref()
                    .map(|r| (r.replica.clone(), r.connection));
                let after = remote.as_ref().map(|r| (r.replica.clone(), r.connection));
                if before != after {
                    changed = true;
                    if after.is_some() {
                        state.offline_since = None;
                        notices.push(Notice::Online {
                            host: row.name.clone(),
                        });
                    } else {
                        state.offline_since = Some(Instant::now());
                        notices.push(Notice::Offline {
                            host: row.name.clone(),
                        });
                    }
                }
                let stored_seq = match (&state.remote, &remote) {
                    (Some(old), Some(new)) if old.connection == new.connection => {
                        old.stored_seq.max(new.stored_seq)
                    }
                    (_, Some(new)) => new.stored_seq,
                    _ => 0,
                };
                state.remote = remote.map(|r| RemoteLink { stored_seq, ..r });
                if let Some((rev, services)) = row.services {
                    state.services_rev = Some(rev);
                    if state.services != services {
                        changed = true;
                        state.services = services;
                    }
                }
                if state.boot_id != row.boot_id || state.agent_version != row.agent_version {
                    changed = true;
                    state.boot_id = row.boot_id;
                    state.agent_version = row.agent_version;
                }
                state.last_seen = state.last_seen.max(row.last_seen);
            }
        }
        for notice in notices {
            self.notify(notice);
        }
        if changed {
            self.changed_elsewhere();
        }
    }

    /// The `hosts.services_rev` of the services held for each host whose
    /// services were last read from the database.
    pub fn services_revisions(&self) -> HashMap<String, u64> {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts
            .iter()
            .filter_map(|(name, state)| state.services_rev.map(|rev| (name.clone(), rev)))
            .collect()
    }

    /// The hosts whose link this replica holds, with the link's id.
    pub fn links_held_here(&self) -> Vec<(String, u64)> {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts
            .iter()
            .filter_map(|(name, state)| {
                state
                    .link
                    .as_ref()
                    .map(|link| (name.clone(), link.connection))
            })
            .collect()
    }

    pub fn services_of(&self, host: &str) -> Option<Vec<ServiceStatus>> {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts.get(host).map(|s| s.services.clone())
    }

    pub fn link_state(&self, host: &str) -> Option<LinkState> {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts.get(host).map(|s| match (&s.link, &s.remote) {
            (None, Some(remote)) => LinkState {
                online: true,
                boot_id: s.boot_id.clone(),
                connection: Some(remote.connection),
                offline_since: None,
                caught_up: remote.stored_seq >= remote.announced_seq,
                stored_seq: remote.stored_seq,
                remote: true,
                holder: Some(remote.replica.clone()),
            },
            (link, _) => LinkState {
                online: link.is_some(),
                boot_id: s.boot_id.clone(),
                connection: link.as_ref().map(|l| l.connection),
                offline_since: s.offline_since,
                caught_up: link.is_some() && s.stored_seq >= s.announced_seq,
                stored_seq: s.stored_seq,
                remote: false,
                holder: None,
            },
        })
    }

    /// Sends a restart command over the host's current link. `None` when the
    /// host is offline. Only that link's answer to `command_id` counts.
    pub fn send_restart(
        &self,
        host: &str,
        command_id: &str,
        service: &str,
        reason: Option<String>,
    ) -> Option<oneshot::Receiver<CommandAnswer>> {
        let (answer, receiver) = oneshot::channel();
        let hosts = self.hosts.read().expect("fleet lock");
        let link = hosts.get(host).and_then(|s| s.link.as_ref())?;
        // Registered before sending, so an answer cannot overtake it.
        self.commands.lock().expect("commands lock").insert(
            command_id.to_string(),
            PendingCommand {
                host: host.to_string(),
                connection: link.connection,
                answer,
            },
        );
        let sent = link
            .frames
            .send(ServerFrame::Restart {
                command_id: command_id.to_string(),
                service: service.to_string(),
                reason,
            })
            .is_ok();
        drop(hosts);
        if !sent {
            self.commands
                .lock()
                .expect("commands lock")
                .remove(command_id);
            return None;
        }
        Some(receiver)
    }

    pub fn forget_command(&self, command_id: &str) {
        self.commands
            .lock()
            .expect("commands lock")
            .remove(command_id);
    }

    /// An answer that arrived on `host`'s link `connection`. It counts only
    /// if the command was sent on that very link; any other is ignored and
    /// the command keeps waiting for its own link's answer.
    pub fn command_answered(
        &self,
        host: &str,
        connection: u64,
        command_id: &str,
        answer: CommandAnswer,
    ) {
        let mut commands = self.commands.lock().expect("commands lock");
        match commands.get(command_id) {
            Some(pending) if pending.host == host && pending.connection == connection => {
                if let Some(pending) = commands.remove(command_id) {
                    let _ = pending.answer.send(answer);
                }
            }
            Some(pending) => tracing::warn!(
                host,
                command_host = pending.host,
                "an answer to a command sent on another link; ignored"
            ),
            None => tracing::warn!(
                host,
                "an answer to no command this link is waiting on; ignored"
            ),
        }
    }

    /// Hosts whose last report includes the service, by name.
    pub fn hosts_running(&self, service: &str) -> Vec<String> {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts
            .iter()
            .filter(|(_, s)| s.services.iter().any(|svc| svc.name == service))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn services(&self) -> Vec<Service> {
        let hosts = self.hosts.read().expect("fleet lock");
        let mut services: BTreeMap<&str, Vec<ServiceOnHost>> = BTreeMap::new();
        for (name, state) in hosts.iter() {
            for status in &state.services {
                services
                    .entry(status.name.as_str())
                    .or_default()
                    .push(ServiceOnHost::from_status(name, state.online(), status));
            }
        }
        services
            .into_iter()
            .map(|(name, hosts)| Service {
                name: name.to_string(),
                hosts,
            })
            .collect()
    }

    pub fn service(&self, service: &str) -> Option<Service> {
        let hosts = self.hosts.read().expect("fleet lock");
        let on_hosts: Vec<ServiceOnHost> = hosts
            .iter()
            .filter_map(|(name, state)| {
                state
                    .services
                    .iter()
                    .find(|s| s.name == service)
                    .map(|status| ServiceOnHost::from_status(name, state.online(), status))
            })
            .collect();
        (!on_hosts.is_empty()).then(|| Service {
            name: service.to_string(),
            hosts: on_hosts,
        })
    }

    pub fn hosts(&self) -> Vec<Host> {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts
            .iter()
            .map(|(name, state)| Host {
                name: name.clone(),
                agent_version: state.agent_version.clone(),
                boot_id: state.boot_id.clone(),
                online: state.online(),
                first_seen: state.first_seen,
                last_seen: state.last_seen,
                services: state.services.iter().map(|s| s.name.clone()).collect(),
            })
            .collect()
    }

    /// Drops a host from the picture unless its agent is connected.
    pub fn forget(&self, host: &str) -> HostForgotten {
        let forgotten = {
            let mut hosts = self.hosts.write().expect("fleet lock");
            match hosts.get(host) {
                None => HostForgotten::Unknown,
                Some(state) if state.online() => HostForgotten::Online,
                Some(_) => {
                    hosts.remove(host);
                    HostForgotten::Forgotten
                }
            }
        };
        if forgotten == HostForgotten::Forgotten {
            self.changed();
        }
        forgotten
    }

    pub fn agents_online(&self) -> usize {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts.values().filter(|s| s.link.is_some()).count()
    }

    pub fn generations_draining(&self) -> usize {
        let hosts = self.hosts.read().expect("fleet lock");
        hosts
            .values()
            .filter(|s| s.link.is_some())
            .flat_map(|s| s.services.iter())
            .flat_map(|s| s.generations.iter())
            .filter(|g| g.state == GenerationState::Draining)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_link_a_command_went_over_can_answer_it() {
        let fleet = Fleet::new(Vec::new());
        let (old, _old_frames) = fleet.connect("a", "v", "boot", 0, 0, Vec::new());
        let (current, mut frames) = fleet.connect("a", "v", "boot", 0, 0, Vec::new());
        let (other, _other_frames) = fleet.connect("b", "v", "boot-b", 0, 0, Vec::new());
        let mut answer = fleet.send_restart("a", "c1", "web", None).unwrap();
        assert!(matches!(
            frames.try_recv(),
            Ok(ServerFrame::Restart { command_id, .. }) if command_id == "c1"
        ));

        fleet.command_answered("b", other, "c1", CommandAnswer::Started(9));
        fleet.command_answered("a", old, "c1", CommandAnswer::Started(8));
        assert!(
            answer.try_recv().is_err(),
            "an answer from another link counted"
        );

        fleet.command_answered("a", current, "c1", CommandAnswer::Started(1));
        assert!(matches!(answer.try_recv(), Ok(CommandAnswer::Started(1))));
    }

    #[test]
    fn fetches_an_agent_never_answers_do_not_pile_up() {
        let fleet = Fleet::new(Vec::new());
        let (_link, _frames) = fleet.connect("a", "v", "boot", 0, 0, Vec::new());
        for restart in 0..1_000 {
            // The orchestrator gives up on each after a while.
            drop(fleet.fetch_report("a", "boot", restart).unwrap());
        }
        let waiting = fleet.fetch_report("a", "boot", 1_000).unwrap();
        assert_eq!(fleet.reports.lock().unwrap().len(), 1);
        drop(waiting);
    }
}
