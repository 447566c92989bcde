//! The service's tokio task: it turns messages and deadlines into inputs of
//! the core, and carries out the effects the core returns. It decides
//! nothing; where an effect asks a question (a count, whether a process
//! group is empty), the answer goes back into the core as the next input,
//! before any other message.

use super::core::{Effect, Input, Now, Predecessor, ServiceCore};
use super::versions::Found;
use super::{Adopted, Msg, Shared};
use crate::channel::{self, Batch, Channel};
use crate::config::{OutputMode, ServiceConfig};
use crate::connections::{self, ListenAddrs, Members, Registration};
use crate::events::now_millis;
use crate::handover::{HandedPhase, OutputHandover, ServiceHandover, SocketHandover};
use crate::notify_router::{Route, ignore_notification};
use crate::output::capture::Captured;
use crate::probe::{self, ProbeTarget};
use crate::reaper::{ExitWatch, wait_exit};
use crate::sockets::BoundSocket;
use crate::spawn::{self, GenerationLaunch};
use baton_proto::{
    ErrorBody, EventKind, GenerationState, RestartId, RestartOutcome, ServiceStatus, SocketInfo,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long a failed restart's report waits for its new generation's last
/// output to be read.
const OUTPUT_TAIL_PATIENCE: Duration = Duration::from_millis(500);

/// Most fds one service may keep in the fd store.
const FDSTORE_MAX: usize = 64;

/// What a generation holds while it lives.
struct Held {
    /// The sockets it was started with stay open while it lives, even when
    /// a reload replaced them.
    _sockets: Arc<Vec<Arc<BoundSocket>>>,
    /// Its probe.
    tasks: CancellationToken,
    /// Its place in the agent's connection counts (a draining generation's
    /// periodic count too); dropped when the generation is forgotten.
    counted: Option<Registration>,
}

pub(super) struct Actor {
    name: String,
    core: ServiceCore,
    sockets: Arc<Vec<Arc<BoundSocket>>>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    held: HashMap<u64, Held>,
    fd_store: Vec<(String, OwnedFd)>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Each generation's last memory and CPU reading.
    usage: crate::usage::Cache,
    /// Converts the core's deadlines to wall-clock times for the state file,
    /// the same way every time.
    anchor: Now,
    /// What the state file last got from this service.
    last_state: Option<ServiceHandover>,
    /// When each generation's first process started (`/proc/PID/stat`).
    start_times: HashMap<u64, u64>,
    /// Generations taken over from a killed agent: not the agent's
    /// children, so their exits are watched on pidfds.
    strangers: HashSet<u64>,
    /// Why the service cannot run (its address is held by a stranger).
    blocked: Option<String>,
    /// The newest restart this task opened: its report is the status's
    /// `last_restart`, found without looking through every service's.
    last_restart: Option<RestartId>,
    /// The agent's end of each generation's channel (`channel.rs`), read
    /// on this task.
    channels: BTreeMap<u64, Channel>,
    /// The generation whose channel was read last: the next read starts
    /// after it, so one that floods its channel does not starve another's.
    last_channel_read: u64,
    /// What each generation runs (`versions.rs`).
    versions: super::versions::Versions,
    /// The service's captured output, and each generation's pipes.
    output: Arc<crate::output::ServiceOutput>,
    captured: BTreeMap<(u64, u32), Captured>,
}

/// What one input led to, beyond its effects.
#[derive(Default)]
struct Outcome {
    /// The answer to a restart request, if the input was one.
    restart: Option<Result<RestartId, ErrorBody>>,
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: now_millis(),
    }
}

impl Actor {
    pub(super) fn new(
        config: Arc<ServiceConfig>,
        sockets: Arc<Vec<Arc<BoundSocket>>>,
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<Msg>,
        blocked: Option<String>,
    ) -> Self {
        Actor {
            output: shared.output.service(&config.name),
            captured: BTreeMap::new(),
            name: config.name.clone(),
            core: ServiceCore::new(config),
            sockets,
            shared,
            tx,
            held: HashMap::new(),
            fd_store: Vec::new(),
            stop_waiters: Vec::new(),
            usage: crate::usage::Cache::default(),
            anchor: now(),
            last_state: None,
            start_times: HashMap::new(),
            strangers: HashSet::new(),
            blocked,
            last_restart: None,
            channels: BTreeMap::new(),
            last_channel_read: 0,
            versions: Default::default(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        adopted: Option<Adopted>,
    ) {
        if let Some(adopted) = adopted {
            self.adopt(adopted).await;
        }
        if self.blocked.is_none() {
            self.drive(Input::Start, Vec::new()).await;
        }
        loop {
            let deadline = self.core.poll_timeout(Instant::now());
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = sleep_until(deadline) => {
                    self.drive(Input::Timer, Vec::new()).await;
                }
                (generation, batch) = next_batch(&mut self.channels, &self.name, self.last_channel_read) => {
                    self.last_channel_read = generation;
                    self.on_batch(generation, batch).await;
                }
            }
            if self.core.is_done() {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                break;
            }
        }
        // A blocked service never wrote a state; a service of its name may
        // already run in its place.
        if let Some(state) = &self.shared.state
            && self.blocked.is_none()
        {
            state.forget(&self.name);
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Restart { reply, .. } if self.blocked.is_some() => {
                let _ = reply.send(Err(ErrorBody {
                    kind: baton_proto::ErrorKind::InvalidConfig,
                    message: format!(
                        "service {:?} cannot run: {}",
                        self.name,
                        self.blocked.as_deref().unwrap_or_default()
                    ),
                    running_restart: None,
                }));
            }
            Msg::Restart { reason, reply } => {
                let outcome = self.drive(Input::Restart { reason }, Vec::new()).await;
                if let Some(answer) = outcome.restart {
                    let _ = reply.send(answer);
                }
            }
            Msg::Status { ask, reply } => self.status(ask, reply),
            Msg::Replace { config, sockets } => {
                self.sockets = sockets;
                self.drive(Input::Replace { config }, Vec::new()).await;
            }
            Msg::Stop { reply } => {
                self.stop_waiters.push(reply);
                self.drive(Input::Stop, Vec::new()).await;
            }
            Msg::Handover { reply } => {
                let mut answer = self.handover();
                if let Ok(service) = &mut answer {
                    // Nothing read may be in flight when the read ends go
                    // across the exec; a line begun goes with them.
                    for captured in self.captured.values_mut() {
                        captured.pause().await;
                    }
                    for generation in &mut service.generations {
                        if let (Some(output), Some(captured)) = (
                            &mut generation.output,
                            self.captured.get(&(generation.number, 0)),
                        ) {
                            output.partial = captured.partial();
                        }
                        for instance in &mut generation.instances {
                            if let (Some(output), Some(captured)) = (
                                &mut instance.output,
                                self.captured.get(&(generation.number, instance.index)),
                            ) {
                                output.partial = captured.partial();
                            }
                        }
                    }
                }
                let _ = reply.send(answer);
            }
            Msg::Thaw => {
                for ((generation, _), captured) in &mut self.captured {
                    captured.start(&self.output, *generation);
                }
                self.drive(Input::Thaw, Vec::new()).await;
            }
            Msg::Exited {
                generation,
                pid,
                exit,
            } => {
                // What it said before it exited (its `HANDED_OVER=`) counts
                // for the drain its exit may end.
                self.read_channel_now(generation).await;
                let input = Input::Exited {
                    generation,
                    pid,
                    exit,
                };
                self.drive(input, Vec::new()).await;
            }
            Msg::Notify {
                generation,
                mut sender,
                messages,
                fds,
            } => {
                // An instance is its process group: a message from any of
                // its processes is the instance's.
                if self.core.runs_instances_in(generation)
                    && let Ok(pgid) = nix::unistd::getpgid(Some(Pid::from_raw(sender)))
                {
                    sender = pgid.as_raw();
                }
                self.versions.notified(generation, &messages);
                let input = Input::Notify {
                    generation,
                    sender,
                    messages,
                };
                self.drive(input, fds).await;
            }
            Msg::Ready { generation } => {
                self.read_channel_now(generation).await;
                self.drive(Input::Ready { generation }, Vec::new()).await;
            }
            Msg::Connections { generation, count } => {
                self.drive(Input::Connections { generation, count }, Vec::new())
                    .await;
            }
            Msg::Requeued(input) => {
                if let Input::Ready { generation } = input {
                    self.read_channel_now(generation).await;
                }
                self.drive(input, Vec::new()).await;
            }
            Msg::Identified {
                generation,
                program,
            } => self.versions.identified(generation, program),
        }
    }

    /// Reads a generation's channel without waiting, before acting on its
    /// readiness or exit: a generation sends `HANDOFF=1` before `READY=1`
    /// (and `HANDED_OVER=` before it exits) on two different sockets, and
    /// the first must be seen first.
    async fn read_channel_now(&mut self, generation: u64) {
        let Some(channel) = self.channels.get_mut(&generation) else {
            return;
        };
        let batch = channel.read_now(&self.name, generation);
        self.on_batch(generation, batch).await;
    }

    async fn on_batch(&mut self, generation: u64, batch: Batch) {
        if batch.closed {
            tracing::debug!(service = %self.name, generation, "the generation closed its channel");
        }
        if !batch.messages.is_empty() {
            let input = Input::Channel {
                generation,
                messages: batch.messages,
            };
            self.drive(input, Vec::new()).await;
        }
    }

    /// Feeds one input to the core and carries out its effects, answering
    /// the core's questions before anything else reaches it. `fds` came with
    /// a notify message; what the core does not store is closed at the end.
    async fn drive(&mut self, input: Input, mut fds: Vec<OwnedFd>) -> Outcome {
        let mut outcome = Outcome::default();
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for effect in self.core.on(now(), input) {
                if let Some(next) = self.carry_out(effect, &mut fds, &mut outcome).await {
                    inputs.push_back(next);
                }
            }
        }
        self.record_state();
        self.output.set_serving(self.core.current());
        outcome
    }

    /// Records the service's state and waits until the file holds it.
    async fn persist_state(&mut self) {
        let Some(state) = self.shared.state.clone() else {
            return;
        };
        self.record_state();
        // Written even when this service's part did not change: the writer
        // task may not have written the last change yet.
        let written = tokio::task::spawn_blocking(move || state.write_now()).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(service = %self.name, error = %e, "could not write the state file");
        }
    }

    /// Hands the service's state to the state file when it changed.
    fn record_state(&mut self) {
        let Some(state) = &self.shared.state else {
            return;
        };
        if self.blocked.is_some() {
            return;
        }
        let core = self.core.snapshot(Instant::now(), self.anchor);
        let mut snapshot = self.describe(core);
        for generation in &mut snapshot.generations {
            // A status text is no state that matters, and a service may
            // send many: each would be a write.
            generation.status_text = None;
            // The file keeps the wall-clock deadline; time left would make
            // every snapshot differ.
            generation.phase = match generation.phase {
                HandedPhase::Starting { .. } => HandedPhase::Starting { left_ms: 0 },
                HandedPhase::Draining { .. } => HandedPhase::Draining { left_ms: 0 },
                HandedPhase::Stopping { .. } => HandedPhase::Stopping { left_ms: 0 },
                HandedPhase::Ready => HandedPhase::Ready,
            };
        }
        if self.last_state.as_ref() != Some(&snapshot) {
            state.update(snapshot.clone());
            self.last_state = Some(snapshot);
        }
    }

    /// The service as the core describes it, with what only the actor
    /// knows: sockets, start times, cgroups, the fd store.
    fn describe(&self, core: super::core::HandedCore) -> ServiceHandover {
        let mut generations = core.generations;
        for generation in &mut generations {
            generation.start_time = self.start_times.get(&generation.number).copied();
            generation.cgroup = self.shared.router.cgroup_of(Pid::from_raw(generation.pid));
            generation.channel_fd = self.channels.get(&generation.number).map(Channel::raw_fd);
            generation.program = self.versions.program(generation.number);
            // Instance 0's pipes are the generation's; every other instance
            // has its own.
            generation.output = self.output_handover(generation.number, 0);
            for instance in generation.instances.iter_mut().filter(|i| i.index != 0) {
                instance.output = self.output_handover(generation.number, instance.index);
            }
        }
        ServiceHandover {
            name: self.name.clone(),
            sockets: self
                .sockets
                .iter()
                .map(|s| SocketHandover {
                    name: s.name.clone(),
                    configured: s.configured.to_string(),
                    fd: s.raw_fd(),
                    inode: nix::sys::stat::fstat(s.fd()).ok().map(|st| st.st_ino),
                })
                .collect(),
            generations,
            current: core.current,
            next_generation: core.next_generation,
            consecutive_crashes: core.consecutive_crashes,
            fd_store: self
                .fd_store
                .iter()
                .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
                .collect(),
            restart: core.restart,
            last_report: None,
        }
    }

    async fn carry_out(
        &mut self,
        effect: Effect,
        fds: &mut Vec<OwnedFd>,
        outcome: &mut Outcome,
    ) -> Option<Input> {
        match effect {
            Effect::Emit { restart, mut kind } => {
                self.versions.stamp(&mut kind);
                self.shared.events.emit(&self.name, restart, kind);
            }
            Effect::OpenRestart {
                reason,
                old,
                requested_by,
            } => {
                let id = self
                    .shared
                    .events
                    .begin_restart(&self.name, reason, old, requested_by);
                self.record_versions(id);
                self.last_restart = Some(id);
                outcome.restart = Some(Ok(id));
                return Some(Input::RestartOpened { id });
            }
            Effect::Refuse(body) => outcome.restart = Some(Err(body)),
            Effect::RestartRequestRefused { requester, refusal } => {
                super::requests::note_refused(&self.name, requester, refusal)
            }
            Effect::RecordNewGeneration {
                restart,
                generation,
            } => {
                self.shared
                    .events
                    .update_restart(restart, |report| report.new_generation = Some(generation));
                self.record_versions(restart);
            }
            Effect::FinishRestart {
                restart,
                outcome,
                reason,
                connections_cut,
            } => {
                let change = self.record_versions(restart);
                let reason = match (outcome, change) {
                    (baton_proto::RestartOutcome::RolledBack, Some(change)) => {
                        self.versions.rolled_back(change.1);
                        Some(super::versions::rolled_back_reason(reason, &change.0))
                    }
                    _ => reason,
                };
                if matches!(outcome, RestartOutcome::RolledBack | RestartOutcome::Failed) {
                    self.emit_output_tail(restart).await;
                }
                self.shared.events.finish_restart(
                    &self.name,
                    restart,
                    outcome,
                    reason,
                    connections_cut,
                )
            }
            Effect::Spawn {
                generation,
                probe_port,
            } => return Some(self.spawn(generation, probe_port, None).await),
            Effect::SpawnInstance {
                generation,
                instance,
                instances,
                probe_port,
            } => {
                return Some(
                    self.spawn(generation, probe_port, Some((instance, instances)))
                        .await,
                );
            }
            Effect::ProbeInstance {
                generation,
                instance,
                port,
            } => {
                let ready = &self.core.config().ready;
                if let Some(target) = ProbeTarget::of(ready, generation, port) {
                    let stop = self.tasks_of(generation);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        if probe::until_ready(target, stop).await {
                            let _ = tx.send(Msg::Requeued(Input::InstanceReady {
                                generation,
                                instance,
                            }));
                        }
                    });
                }
            }
            Effect::SignalInstance { pgid, signal } => {
                self.persist_state().await;
                if let Err(errno) = killpg(pgid, signal) {
                    tracing::debug!(service = %self.name, pgid = pgid.as_raw(), %errno, "could not signal an instance");
                }
            }
            Effect::KillInstance { pgid } => {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            Effect::ForgetInstance { pgid } => {
                self.shared.router.remove_member(pgid);
                if let Some(lineage) = &self.shared.lineage {
                    lineage.forget(pgid);
                }
            }
            Effect::SignalInstances { pgids, signal } => {
                self.persist_state().await;
                for pgid in &pgids {
                    if let Err(errno) = killpg(*pgid, signal) {
                        tracing::debug!(service = %self.name, pgid = pgid.as_raw(), %errno, "could not signal an instance");
                    }
                }
                // Then, once each, whatever of the generation left the
                // instances' groups.
                match pgids
                    .first()
                    .and_then(|p| self.shared.router.cgroup_folder(*p))
                {
                    Some(folder) => {
                        for pid in crate::cgroup::procs_of(&folder) {
                            let pid = Pid::from_raw(pid);
                            if !pgids.iter().any(|pgid| in_group(pid, *pgid)) {
                                let _ = nix::sys::signal::kill(pid, signal);
                            }
                        }
                    }
                    None => {
                        for pgid in pgids {
                            self.signal_escaped(pgid, signal).await;
                        }
                    }
                }
            }
            Effect::Probe { generation, port } => {
                let ready = &self.core.config().ready;
                if let Some(target) = ProbeTarget::of(ready, generation, port) {
                    let stop = self.tasks_of(generation);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        if probe::until_ready(target, stop).await {
                            let _ = tx.send(Msg::Ready { generation });
                        }
                    });
                }
            }
            Effect::Signal { pgid, signal } => {
                // A signalled generation stops serving: the state file must
                // say so before it happens, or an agent killed right after
                // would take it back as the serving one.
                self.persist_state().await;
                if let Err(errno) = killpg(pgid, signal) {
                    tracing::debug!(service = %self.name, pgid = pgid.as_raw(), %errno, "could not signal a generation");
                }
                // The group first, as it always was; then whatever of the
                // generation left the group (a `setsid` daemon).
                if let Some(folder) = self.shared.router.cgroup_folder(pgid) {
                    for pid in crate::cgroup::procs_of(&folder) {
                        let pid = Pid::from_raw(pid);
                        if !in_group(pid, pgid) {
                            let _ = nix::sys::signal::kill(pid, signal);
                        }
                    }
                } else {
                    self.signal_escaped(pgid, signal).await;
                }
            }
            Effect::Kill { pgid } => {
                let _ = killpg(pgid, Signal::SIGKILL);
                if let Some(folder) = self.shared.router.cgroup_folder(pgid) {
                    if let Err(e) = crate::cgroup::kill_all(&folder) {
                        tracing::warn!(service = %self.name, pgid = pgid.as_raw(), error = %e, "could not kill a generation's cgroup");
                    }
                } else {
                    self.signal_escaped(pgid, Signal::SIGKILL).await;
                }
            }
            Effect::RestorePriority { generation, pgid } => {
                if let Err(errno) = crate::sys::set_group_nice(pgid, 0) {
                    tracing::warn!(service = %self.name, generation, %errno, "could not restore the priority of a ready generation");
                }
            }
            Effect::Count {
                generation,
                pgid,
                purpose,
            } => {
                let listen = self.listen_addrs_of(generation);
                let count = connections::count(self.members(pgid), listen).await;
                return Some(Input::Counted {
                    generation,
                    count,
                    purpose,
                });
            }
            Effect::WatchDrain { generation, pgid } => {
                let tx = self.tx.clone();
                let report = move |count| tx.send(Msg::Connections { generation, count }).is_ok();
                if let Some(counted) = self.counted(generation, pgid) {
                    counted.watch_drain(report);
                }
            }
            Effect::WatchExit { generation, pid } => {
                let watch = if self.strangers.contains(&generation) {
                    let started = self
                        .core
                        .first_pid(generation)
                        .filter(|first| *first == pid)
                        .and_then(|_| self.start_times.get(&generation).copied());
                    crate::recovery::watch_stranger(pid.as_raw(), started)
                } else {
                    self.shared.reaper.adopt(pid)
                };
                self.report_exit(generation, pid, watch);
            }
            Effect::LocateMain {
                generation,
                main,
                pgid,
                after,
            } => {
                return Some(Input::MainLocated {
                    generation,
                    main,
                    in_group: in_group(main, pgid),
                    after,
                });
            }
            Effect::CheckGroup { generation, pgid } if self.strangers.contains(&generation) => {
                // Not the agent's children: their zombies wait for someone
                // else to reap them, and are gone as far as the generation
                // is concerned.
                let living = match self.shared.router.cgroup_folder(pgid) {
                    Some(folder) => crate::cgroup::procs_of(&folder)
                        .into_iter()
                        .any(crate::recovery::running),
                    None => false,
                } || crate::recovery::group_has_running(pgid.as_raw());
                if !living {
                    return Some(Input::GroupEmpty { generation });
                }
            }
            Effect::CheckGroup { generation, pgid } => {
                let alive = match self.shared.router.cgroup_folder(pgid) {
                    // Zombies are still in the cgroup until reaped, as in
                    // the group.
                    Some(folder) => crate::cgroup::populated(&folder) || group_alive(pgid),
                    None => group_alive(pgid) || self.escaped_alive(pgid).await,
                };
                if !alive {
                    return Some(Input::GroupEmpty { generation });
                }
            }
            Effect::Route { generation, pgid } => {
                self.shared.router.insert(pgid, self.route(generation));
                if let Some(lineage) = &self.shared.lineage {
                    lineage.register(pgid, &self.name, generation);
                }
                // An adopted generation: counted from now on.
                self.counted(generation, pgid);
            }
            Effect::Forget { generation, pgid } => {
                if let Some(held) = self.held.remove(&generation) {
                    held.tasks.cancel();
                }
                self.channels.remove(&generation);
                self.versions.forget(generation);
                // Its readers go on until its last writer is gone.
                self.captured.retain(|(number, _), _| *number != generation);
                self.output.forget(generation);
                self.start_times.remove(&generation);
                self.strangers.remove(&generation);
                self.shared.router.remove(pgid);
                if let Some(lineage) = &self.shared.lineage {
                    lineage.forget(pgid);
                }
            }
            Effect::StoreFds { name } => {
                for fd in fds.drain(..) {
                    if self.fd_store.len() >= FDSTORE_MAX {
                        tracing::warn!(service = %self.name, "fd store is full; fd dropped");
                        break;
                    }
                    self.fd_store.push((name.clone(), fd));
                }
            }
            Effect::RemoveFds { name } => self.fd_store.retain(|(n, _)| *n != name),
            Effect::CloseFds => fds.clear(),
            Effect::Requeue(input) => {
                let _ = self.tx.send(Msg::Requeued(input));
            }
            Effect::BrokerHandoff { restart, from, to } => self.broker(restart, from, to),
            Effect::ChannelMessageIgnored {
                generation,
                message,
                why,
            } => channel::note(
                &self.name,
                generation,
                &format!("{message:?} ignored: {why}"),
            ),
        }
        None
    }

    /// Spawns a generation and answers `Effect::Spawn`.
    async fn spawn(
        &mut self,
        generation: u64,
        wants_port: bool,
        instance: Option<(u32, u32)>,
    ) -> Input {
        let failed = |reason: String| match instance {
            Some((instance, _)) => Input::InstanceSpawnFailed {
                generation,
                instance,
                reason,
            },
            None => Input::SpawnFailed { generation, reason },
        };
        let probe_port = if wants_port {
            match spawn::free_loopback_port() {
                Ok(port) => Some(port),
                Err(e) => return failed(format!("no free probe port: {e}")),
            }
        } else {
            None
        };
        let launch = GenerationLaunch {
            config: self.core.config().clone(),
            sockets: self.sockets.clone(),
            stored_fds: self
                .fd_store
                .iter()
                .filter_map(|(name, fd)| fd.try_clone().ok().map(|fd| (name.clone(), fd)))
                .collect(),
            generation,
            // Serving while a new generation is spawned only in a hot
            // restart; a first start or a crash restart has none.
            predecessor: self.core.current().filter(|current| *current != generation),
            notify_socket: self.shared.notify_socket.clone(),
            probe_port,
            cgroup: None,
            channel: None,
            instance,
            output: None,
        };
        let cgroup = match self.shared.router.cgroups() {
            Some(cgroups) => match cgroups.create(&self.name, generation) {
                Ok(cgroup) => Some(cgroup),
                Err(e) => return failed(format!("no cgroup for the generation: {e}")),
            },
            None => None,
        };
        let cgroup_name = cgroup.as_ref().map(|c| c.relative.clone());
        // A generation without a channel still runs; it only cannot take
        // part in a handoff. Instances have none: they drain
        // (`docs/handoff.md`).
        let (channel_end, child_end) = match channel::pair() {
            _ if instance.is_some() => (None, None),
            Ok((agent, child)) => (Some(agent), Some(child)),
            Err(e) => {
                tracing::warn!(service = %self.name, generation, error = %e, "no channel for the generation; it will not take part in a handoff");
                (None, None)
            }
        };
        // A generation whose pipes cannot be made writes to the agent's
        // own output rather than not run.
        let (captured, output_ends) = match self.core.config().output {
            OutputMode::Inherit => (None, None),
            OutputMode::Capture => match crate::output::capture::pipes() {
                Ok((captured, ends)) => (Some(captured), Some(ends)),
                Err(e) => {
                    tracing::warn!(service = %self.name, generation, error = %e, "no pipes for the generation's output; it writes to the agent's");
                    (None, None)
                }
            },
        };
        let launch = GenerationLaunch {
            cgroup,
            channel: child_end,
            output: output_ends,
            ..launch
        };
        let shared = self.shared.clone();
        let route = self.route(generation);
        let unused_cgroup = cgroup_name.clone();
        if let Some(lineage) = &self.shared.lineage {
            lineage.spawning(&self.name, generation);
        }
        let spawned = tokio::task::spawn_blocking(move || {
            // Notify messages that beat the registration wait for it.
            let mut window = shared.router.begin_spawn();
            let config = launch.config.clone();
            let launched = spawn::launch(&shared.reaper, launch, |pid| {
                window.register(pid, cgroup_name, route)
            });
            for datagram in window.close() {
                ignore_notification(datagram);
            }
            // Once the child runs: its start never waits for this.
            let found = launched.is_ok().then(|| Found::now(&config)).flatten();
            launched.map(|launched| (launched, found))
        })
        .await;
        if spawned.as_ref().map_or(true, |r| r.is_err())
            && let Some(lineage) = &self.shared.lineage
        {
            lineage.spawn_failed(&self.name, generation);
        }
        let ((pid, exit_watch), found) = match spawned {
            Ok(Ok(spawned)) => spawned,
            Ok(Err(e)) => {
                if let spawn::LaunchError::Spawn(crate::sys::SpawnError::Child { pid, .. }) = &e {
                    self.shared.router.remove(*pid);
                } else if let (Some(cgroups), Some(cgroup), None) =
                    (self.shared.router.cgroups(), &unused_cgroup, instance)
                {
                    cgroups.remove(cgroup);
                }
                return failed(e.to_string());
            }
            Err(e) => return failed(format!("spawn task failed: {e}")),
        };
        if let Some(lineage) = &self.shared.lineage {
            lineage.register(pid, &self.name, generation);
        }
        if let Some(found) = found {
            self.versions.spawned(generation, &found);
            if !found.is_complete() {
                let tx = self.tx.clone();
                super::versions::complete_later(found, move |program| {
                    let _ = tx.send(Msg::Identified {
                        generation,
                        program,
                    });
                });
            }
        }
        self.report_exit(generation, pid, exit_watch);
        if let Some(mut captured) = captured {
            captured.start(&self.output, generation);
            self.captured.insert(
                (generation, instance.map_or(0, |(index, _)| index)),
                captured,
            );
        }
        if let Some(index) = instance.map(|(index, _)| index)
            && self.held.contains_key(&generation)
        {
            // Its generation is held and counted by its first instance.
            return Input::InstanceSpawned {
                generation,
                instance: index,
                pid,
                probe_port,
            };
        }
        if let Some(started) = crate::recovery::start_time(pid.as_raw()) {
            self.start_times.insert(generation, started);
        }
        self.held.insert(
            generation,
            Held {
                _sockets: self.sockets.clone(),
                tasks: CancellationToken::new(),
                counted: None,
            },
        );
        self.counted(generation, pid);
        if let Some((index, _)) = instance {
            return Input::InstanceSpawned {
                generation,
                instance: index,
                pid,
                probe_port,
            };
        }
        let channel = channel_end.and_then(|fd| match Channel::new(fd) {
            Ok(channel) => Some(channel),
            Err(e) => {
                tracing::warn!(service = %self.name, generation, error = %e, "could not watch the generation's channel");
                None
            }
        });
        let has_channel = channel.is_some();
        if let Some(channel) = channel {
            self.channels.insert(generation, channel);
        }
        Input::Spawned {
            generation,
            pid,
            probe_port,
            channel: has_channel,
        }
    }

    fn route(&self, generation: u64) -> Route {
        let tx = self.tx.clone();
        Route::new(generation, move |notification| {
            let datagram = notification.datagram;
            let _ = tx.send(Msg::Notify {
                generation: notification.generation,
                sender: datagram.pid,
                messages: datagram.messages,
                fds: datagram.fds,
            });
        })
    }

    /// Gives generation `to` and its predecessor `from` a handoff pair, and
    /// records it. A failure leaves a plain drain.
    fn broker(&self, restart: Option<RestartId>, from: u64, to: u64) {
        let (Some(old), Some(new)) = (self.channels.get(&from), self.channels.get(&to)) else {
            tracing::warn!(service = %self.name, from, to, "a generation's channel is gone; no handoff, the old generation drains");
            return;
        };
        match channel::broker((old, from), (new, to)) {
            Ok(()) => {
                tracing::info!(service = %self.name, from, to, "handoff brokered");
                self.shared.events.emit(
                    &self.name,
                    restart,
                    EventKind::HandoffBrokered {
                        from_generation: from,
                        to_generation: to,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(service = %self.name, from, to, error = %e, "could not broker the handoff; the old generation drains");
            }
        }
    }

    /// The token that ends a generation's tasks when it is forgotten.
    fn tasks_of(&mut self, generation: u64) -> CancellationToken {
        let sockets = &self.sockets;
        self.held
            .entry(generation)
            .or_insert_with(|| Held {
                _sockets: sockets.clone(),
                tasks: CancellationToken::new(),
                counted: None,
            })
            .tasks
            .clone()
    }

    /// The generation's place in the agent's connection counts, made on
    /// first use; `None` for a generation already forgotten.
    fn counted(&mut self, generation: u64, pgid: Pid) -> Option<&Registration> {
        let members = self.members(pgid);
        let listen = self.listen_addrs_of(generation);
        let held = self.held.get_mut(&generation)?;
        let counted = held.counted.get_or_insert_with(|| {
            self.shared
                .connections
                .register(&self.name, generation, members, listen)
        });
        Some(counted)
    }

    /// Turns the reaper's news of a process of the generation into a message.
    fn report_exit(&self, generation: u64, pid: Pid, watch: ExitWatch) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let exit = wait_exit(watch).await;
            let _ = tx.send(Msg::Exited {
                generation,
                pid,
                exit,
            });
        });
    }

    /// Whose sockets are the generation's: its cgroup's processes where it
    /// has one, else its process group's and those traced to it.
    fn members(&self, pgid: Pid) -> Members {
        match (self.shared.router.cgroup_folder(pgid), &self.shared.lineage) {
            (Some(folder), _) => Members::Cgroup(folder),
            (None, Some(lineage)) => Members::Traced(lineage.traced(pgid)),
            (None, None) => Members::Group(pgid.as_raw()),
        }
    }

    /// Without cgroups: signals the generation's processes that left its
    /// process group, found by lineage. A SIGKILL is sent again to what the
    /// next walks find, for a process forked between a walk and its
    /// parent's death (no `cgroup.kill` here to do it at once).
    async fn signal_escaped(&self, pgid: Pid, signal: Signal) {
        let Some(lineage) = self.shared.lineage.clone() else {
            return;
        };
        let rounds = if signal == Signal::SIGKILL { 3 } else { 1 };
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let walker = lineage.clone();
            let escaped = tokio::task::spawn_blocking(move || walker.escaped(pgid))
                .await
                .unwrap_or_default();
            if escaped.is_empty() {
                return;
            }
            for pid in escaped {
                if !in_group(pid, pgid) {
                    tracing::info!(service = %self.name, pgid = pgid.as_raw(), pid = pid.as_raw(), signal = signal.as_str(), "signalling a process that left its generation's group");
                    let _ = nix::sys::signal::kill(pid, signal);
                }
            }
        }
    }

    /// Without cgroups: whether a process that left the generation's process
    /// group lives on.
    async fn escaped_alive(&self, pgid: Pid) -> bool {
        let Some(lineage) = self.shared.lineage.clone() else {
            return false;
        };
        tokio::task::spawn_blocking(move || lineage.escaped_alive(pgid))
            .await
            .unwrap_or(false)
    }

    /// The stream listeners a generation accepts from: those it was
    /// started with, which a reload may since have replaced.
    fn listen_addrs_of(&self, generation: u64) -> ListenAddrs {
        let sockets = self
            .held
            .get(&generation)
            .map_or(&self.sockets, |held| &held._sockets);
        ListenAddrs::of(sockets.iter().map(|s| &s.bound))
    }

    /// Takes over what the agent's previous image ran, or what a killed
    /// agent left running.
    async fn adopt(&mut self, adopted: Adopted) {
        let Adopted {
            service: mut handed,
            from,
        } = adopted;
        self.adopt_channels(&mut handed, from);
        self.adopt_output(&handed, from);
        for (name, fd) in &handed.fd_store {
            match crate::sys::adopt_inherited_fd(*fd) {
                Ok(fd) => self.fd_store.push((name.clone(), fd)),
                Err(e) => {
                    tracing::warn!(service = %self.name, fd, error = %e, "stored fd lost in the upgrade")
                }
            }
        }
        let own_pid = std::process::id() as i32;
        for generation in &handed.generations {
            self.tasks_of(generation.number);
            if let Some(program) = &generation.program {
                self.versions.adopted(generation.number, program.clone());
            }
            if let Some(started) = generation.start_time {
                self.start_times.insert(generation.number, started);
            }
            // After a killed agent nothing is the agent's child; after an
            // upgrade, only what an earlier recovery took over is not.
            let stranger = match from {
                Predecessor::Dead => true,
                Predecessor::Image => crate::recovery::parent_of(generation.pid)
                    .is_some_and(|parent| parent != own_pid),
            };
            if stranger {
                self.strangers.insert(generation.number);
                if let (Some(cgroups), Some(cgroup)) =
                    (self.shared.router.cgroups(), &generation.cgroup)
                {
                    cgroups.adopt(cgroup);
                }
            }
        }
        if from == Predecessor::Dead {
            self.kill_unrecorded(&handed);
        }
        if let Some(report) = &handed.last_report {
            self.last_restart = Some(report.id);
            self.shared.events.resume_restart(report.clone());
        }
        if from == Predecessor::Dead
            && let Some(restart) = &handed.restart
        {
            self.last_restart = Some(restart.id);
            self.shared
                .events
                .resume_restart(baton_proto::RestartReport {
                    id: restart.id,
                    service: self.name.clone(),
                    reason: restart.reason.clone(),
                    started_at: restart.started_at,
                    finished_at: None,
                    outcome: None,
                    outcome_reason: None,
                    old_generation: restart.old,
                    new_generation: restart.new,
                    connections_cut: None,
                    connections: None,
                    steps: Vec::new(),
                    versions: None,
                    output_tail: Vec::new(),
                });
        }
        let mut fds = Vec::new();
        let mut outcome = Outcome::default();
        let mut inputs = VecDeque::new();
        for effect in self.core.adopt(&handed, now(), from) {
            if let Some(next) = self.carry_out(effect, &mut fds, &mut outcome).await {
                inputs.push_back(next);
            }
        }
        // The questions adopting asks (the counts of a drain that ended the
        // restart) are answered like any other.
        while let Some(input) = inputs.pop_front() {
            self.drive(input, Vec::new()).await;
        }
        self.record_state();
    }

    /// Takes over the channels the previous image passed across its exec. A
    /// killed agent's ends died with it: its generations have none, and
    /// their successors get no handoff.
    fn adopt_channels(&mut self, handed: &mut ServiceHandover, from: Predecessor) {
        for generation in &mut handed.generations {
            let Some(fd) = generation.channel_fd.take() else {
                continue;
            };
            if from == Predecessor::Dead {
                continue;
            }
            let adopted = crate::sys::adopt_inherited_fd(fd).and_then(Channel::new);
            match adopted {
                Ok(channel) => {
                    self.channels.insert(generation.number, channel);
                    generation.channel_fd = Some(fd);
                }
                Err(e) => {
                    tracing::warn!(service = %self.name, generation = generation.number, fd, error = %e, "channel lost in the upgrade; this generation will not hand over")
                }
            }
        }
    }

    /// Records the last lines the new generation of restart `id` wrote,
    /// before the restart's outcome: the lines that say why it failed. Its
    /// last words may still be in its pipes: they are read first, for a
    /// moment at most (a process it left behind may hold them open).
    async fn emit_output_tail(&self, id: RestartId) {
        let Some(generation) = self
            .shared
            .events
            .restart(id)
            .and_then(|report| report.new_generation)
        else {
            return;
        };
        self.output.drained(generation, OUTPUT_TAIL_PATIENCE).await;
        let lines = self
            .output
            .last(Some(generation), baton_proto::OUTPUT_TAIL_LINES);
        let lines = crate::output::bound_bytes(lines, baton_proto::OUTPUT_TAIL_BYTES);
        if lines.is_empty() {
            return;
        }
        self.shared.events.emit(
            &self.name,
            Some(id),
            EventKind::OutputTail { generation, lines },
        );
    }

    /// What the next image needs of one process's pipes. The state file
    /// holds no half lines: the upgrade adds them once the readers paused.
    fn output_handover(&self, generation: u64, instance: u32) -> Option<OutputHandover> {
        let mut output = self.captured.get(&(generation, instance))?.handover();
        output.partial = Default::default();
        Some(output)
    }

    /// Takes over the read ends of the generations' output: passed across
    /// the exec by the previous image, or copied out of the generations
    /// themselves (their spare read ends) after a killed agent.
    fn adopt_output(&mut self, handed: &ServiceHandover, from: Predecessor) {
        for generation in &handed.generations {
            let first = generation.instances.iter().find(|i| i.index == 0);
            let pipes = std::iter::once((
                0,
                generation.output.as_ref(),
                std::iter::once(generation.pid)
                    .chain(generation.main_pid)
                    .chain(first.and_then(|i| i.pid))
                    .collect::<Vec<i32>>(),
            ))
            .chain(
                generation
                    .instances
                    .iter()
                    .filter(|i| i.index != 0)
                    .map(|i| (i.index, i.output.as_ref(), i.pid.into_iter().collect())),
            );
            for (instance, output, pids) in pipes {
                let Some(output) = output else {
                    continue;
                };
                let adopted = match from {
                    Predecessor::Image => Captured::adopt_inherited(output),
                    Predecessor::Dead => Captured::take_from(&pids, output),
                };
                match adopted {
                    Ok(mut captured) => {
                        captured.start(&self.output, generation.number);
                        self.captured
                            .insert((generation.number, instance), captured);
                    }
                    Err(e) => {
                        tracing::warn!(service = %self.name, generation = generation.number, instance, error = %e, "the generation's output is no longer captured")
                    }
                }
            }
        }
    }

    /// A generation spawned just before the killed agent could write it
    /// down is in the state file of nobody: found as a cgroup of this
    /// service numbered from the recorded next generation on, in the killed
    /// agent's folder, and killed (it was not serving yet as far as anyone
    /// knows). Without cgroups it cannot be found.
    fn kill_unrecorded(&self, handed: &ServiceHandover) {
        let Some(cgroups) = self.shared.router.cgroups() else {
            return;
        };
        let folders: HashSet<&str> = handed
            .generations
            .iter()
            .filter_map(|g| g.cgroup.as_deref()?.rsplit_once('/').map(|(f, _)| f))
            .collect();
        let prefix = format!("{}.", self.name);
        for folder in folders {
            let Ok(entries) = std::fs::read_dir(cgroups.folder(folder)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(number) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if number < handed.next_generation {
                    continue;
                }
                let path = entry.path();
                tracing::warn!(service = %self.name, generation = number, cgroup = %path.display(), "a generation the state file does not know (spawned as the agent was killed); killing it");
                if let Err(e) = crate::cgroup::kill_all(&path) {
                    tracing::warn!(service = %self.name, error = %e, "could not kill it");
                    continue;
                }
                tokio::spawn(async move {
                    for _ in 0..100 {
                        if !crate::cgroup::populated(&path) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = std::fs::remove_dir(&path);
                });
            }
        }
    }

    /// Writes what the restart's old and new generations run into its
    /// report; answers the change with the new generation's number.
    fn record_versions(
        &self,
        restart: RestartId,
    ) -> Option<(baton_proto::VersionChange, Option<u64>)> {
        let report = self.shared.events.restart(restart)?;
        let change = self
            .versions
            .change(report.old_generation, report.new_generation);
        let versions = change.clone();
        self.shared
            .events
            .update_restart(restart, |report| report.versions = Some(Box::new(versions)));
        Some((change, report.new_generation))
    }

    fn handover(&mut self) -> Result<ServiceHandover, super::HandoverRefused> {
        let core = self.core.hand_over(Instant::now())?;
        let mut service = self.describe(core);
        service.last_report = self
            .last_restart
            .and_then(|id| self.shared.events.restart(id));
        Ok(service)
    }

    /// Answers a status request. Connections are those the core knows
    /// (a draining generation's, counted every tick); the agent's view adds
    /// the others from its one count of every service.
    fn status(&self, ask: super::StatusAsk, reply: oneshot::Sender<ServiceStatus>) {
        let mut status = ServiceStatus {
            name: self.name.clone(),
            state: self.core.state(),
            sockets: self
                .sockets
                .iter()
                .map(|s| SocketInfo {
                    name: s.name.clone(),
                    listen: s.bound.to_string(),
                })
                .collect(),
            generations: self.core.generations(),
            consecutive_crashes: self.core.consecutive_crashes(),
            running_restart: self.core.running_restart(),
            last_restart: self
                .last_restart
                .filter(|_| ask.last_restart)
                .and_then(|id| self.shared.events.restart(id)),
            blocked: self.blocked.clone(),
            next_start: None,
        };
        self.versions.fill(&mut status.generations);
        status.next_start = self
            .core
            .current()
            .and_then(|serving| self.versions.next_start(self.core.config(), serving));
        let usage = self.usage.clone();
        // A fresh status reads every generation; any other reads only one
        // never read since it became ready (a reading of a generation still
        // starting would show what it held before it loaded), so none shows
        // nothing for long.
        let unread: Vec<(u64, Members)> = status
            .generations
            .iter()
            .filter(|g| {
                ask.fresh_usage
                    || (!usage.has(g.generation) && g.state != GenerationState::Starting)
            })
            .map(|g| (g.generation, self.members(Pid::from_raw(g.pid as i32))))
            .collect();
        if unread.is_empty() {
            usage.fill(&mut status.generations);
            let _ = reply.send(status);
            return;
        }
        // Read off the task, so a status never holds up a transition.
        tokio::spawn(async move {
            let (numbers, members): (Vec<u64>, Vec<Members>) = unread.into_iter().unzip();
            let readings = crate::usage::sample_all(members).await;
            for (generation, reading) in numbers.into_iter().zip(readings) {
                usage.remember(generation, reading);
            }
            usage.fill(&mut status.generations);
            let _ = reply.send(status);
        });
    }
}

/// True while `pid` runs (or is a zombie not yet reaped) in process group
/// `pgid`; a pid reused by a process elsewhere does not count.
fn in_group(pid: Pid, pgid: Pid) -> bool {
    nix::unistd::getpgid(Some(pid)) == Ok(pgid)
}

fn group_alive(pgid: Pid) -> bool {
    // Signal 0 checks existence; zombies count until the reaper collects them.
    killpg(pgid, None).is_ok()
}

/// The next batch any generation's channel has, starting after the
/// generation `after`.
async fn next_batch(
    channels: &mut BTreeMap<u64, Channel>,
    service: &str,
    after: u64,
) -> (u64, Batch) {
    std::future::poll_fn(|cx| {
        let (later, earlier): (Vec<_>, Vec<_>) = channels
            .iter_mut()
            .partition(|(number, _)| **number > after);
        for (&number, channel) in later.into_iter().chain(earlier) {
            if let Poll::Ready(batch) = channel.poll_read(cx, service, number) {
                return Poll::Ready((number, batch));
            }
        }
        Poll::Pending
    })
    .await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
