//! One task per service owns everything about it: its generations, the
//! restart in progress, crash backoff. Every change of state happens in this
//! task's loop, in response to one message or one deadline, so there are no
//! locks around a service and no two transitions can interleave.
//!
//! A hot restart, as this task drives it:
//!
//! ```text
//! restart ─▶ spawn N+1 ─▶ Starting ──READY=1 / probe──▶ Ready ─▶ signal N ─▶ N Draining
//!                           │  exit or ready_timeout                         │ exit      │ drain_timeout
//!                           ▼                                                ▼           ▼
//!                     stop N+1: rolled_back                             succeeded   SIGKILL: forced
//! ```

use crate::config::{ListenAddr, Readiness, ServiceConfig};
use crate::connections::{self, ListenAddrs};
use crate::events::{EventLog, now_millis};
use crate::handover::{GenerationHandover, HandedPhase, ServiceHandover, SocketHandover};
use crate::notify::{NotifyDatagram, NotifyMessage};
use crate::reaper::{ExitInfo, Reaper, wait_exit};
use crate::sockets::BoundSocket;
use crate::spawn::{self, GenerationLaunch};
use baton_proto::{
    ErrorBody, ErrorKind, EventKind, GenerationInfo, GenerationState, RestartId, RestartOutcome,
    ServiceState, ServiceStatus, SocketInfo,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a draining generation's connections are counted.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often a generation whose main process exited is checked for
/// surviving members of its process group.
const LINGER_POLL: Duration = Duration::from_millis(50);
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A generation that stayed up this long resets the crash count.
const CRASH_FORGIVEN_AFTER: Duration = Duration::from_secs(10);
/// Most fds one service may keep in the fd store.
const FDSTORE_MAX: usize = 64;

/// What every service shares with the rest of the agent.
pub struct Shared {
    pub reaper: Arc<Reaper>,
    pub events: Arc<EventLog>,
    pub directory: Directory,
    pub notify_socket: PathBuf,
}

/// Which generation a process group belongs to, for routing notify messages.
///
/// A generation's pid is known only once its exec has happened, and a fast
/// service can send `READY=1` before the spawning thread has registered it.
/// So while a spawn is in flight, a message from an unknown sender is parked
/// and routed again when the spawn registers its pid; only when no spawn is
/// in flight is an unknown sender really nobody's.
#[derive(Default)]
pub struct Directory {
    inner: Mutex<DirectoryInner>,
}

#[derive(Default)]
struct DirectoryInner {
    routes: HashMap<i32, Route>,
    spawns_in_flight: usize,
    parked: Vec<Parked>,
    /// Groups of generations that ended lately, newest last. A message sent
    /// just before the exit can be read after it (`STOPPING=1` of a drain
    /// that finished at once): it is late, not a stranger's.
    gone: std::collections::VecDeque<(std::time::Instant, i32)>,
}

/// How long, and for how many ended generations, a late message is known
/// for one of ours.
const GONE_KEPT_FOR: Duration = Duration::from_secs(5);
const GONE_KEPT_MAX: usize = 1024;

struct Parked {
    /// The sender's process group when the message came, if it still had one.
    pgid: Option<i32>,
    datagram: NotifyDatagram,
}

/// More would only come from a local flood of the notify socket.
const MAX_PARKED: usize = 256;

#[derive(Clone)]
pub struct Route {
    pub service: String,
    pub generation: u64,
    pub tx: mpsc::UnboundedSender<Msg>,
}

impl Route {
    pub fn deliver(&self, datagram: NotifyDatagram) {
        let _ = self.tx.send(Msg::Notify {
            generation: self.generation,
            pid: datagram.pid,
            messages: datagram.messages,
            fds: datagram.fds,
        });
    }
}

/// What became of a notify message.
pub enum Routed {
    Delivered,
    /// Kept until the spawns in flight have registered their pids.
    Parked,
    /// From a generation that has just ended; nothing is left to act on it.
    Late,
    /// From no generation of ours.
    Nobody(NotifyDatagram),
}

impl DirectoryInner {
    fn recently_gone(&self, pid: i32, pgid: Option<i32>) -> bool {
        let now = std::time::Instant::now();
        self.gone.iter().any(|(at, group)| {
            now.duration_since(*at) < GONE_KEPT_FOR && (*group == pid || Some(*group) == pgid)
        })
    }

    fn find(&self, pid: i32, pgid: Option<i32>) -> Option<&Route> {
        self.routes
            .get(&pid)
            .or_else(|| pgid.and_then(|g| self.routes.get(&g)))
    }
}

impl Directory {
    /// Sends a message to the generation of its sender: found by the
    /// sender's pid or its process group.
    pub fn route(&self, datagram: NotifyDatagram) -> Routed {
        let pid = datagram.pid;
        if pid <= 0 {
            return Routed::Nobody(datagram);
        }
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid)))
            .ok()
            .map(Pid::as_raw);
        let mut inner = self.inner.lock().expect("directory lock");
        if let Some(route) = inner.find(pid, pgid) {
            route.deliver(datagram);
            return Routed::Delivered;
        }
        if inner.recently_gone(pid, pgid) {
            return Routed::Late;
        }
        if inner.spawns_in_flight > 0 && inner.parked.len() < MAX_PARKED {
            inner.parked.push(Parked { pgid, datagram });
            return Routed::Parked;
        }
        Routed::Nobody(datagram)
    }

    /// Opens a spawn window; `SpawnWindow::register` then records the pid.
    pub fn begin_spawn(&self) -> SpawnWindow<'_> {
        self.inner.lock().expect("directory lock").spawns_in_flight += 1;
        SpawnWindow {
            directory: self,
            closed: false,
            ignored: Vec::new(),
        }
    }

    fn insert(&self, pgid: Pid, route: Route) {
        self.inner
            .lock()
            .expect("directory lock")
            .routes
            .insert(pgid.as_raw(), route);
    }

    fn remove(&self, pgid: Pid) {
        let mut inner = self.inner.lock().expect("directory lock");
        if inner.routes.remove(&pgid.as_raw()).is_some() {
            let now = std::time::Instant::now();
            while inner.gone.len() >= GONE_KEPT_MAX
                || inner
                    .gone
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) >= GONE_KEPT_FOR)
            {
                inner.gone.pop_front();
            }
            inner.gone.push_back((now, pgid.as_raw()));
        }
    }
}

/// One spawn in flight. Registering its pid delivers the messages its
/// generation sent before; closing the window (on drop) gives back the
/// parked messages that no generation claimed once no spawn is left.
pub struct SpawnWindow<'a> {
    directory: &'a Directory,
    closed: bool,
    ignored: Vec<NotifyDatagram>,
}

impl SpawnWindow<'_> {
    pub fn register(&mut self, pgid: Pid, route: Route) {
        let mut inner = self.directory.inner.lock().expect("directory lock");
        inner.routes.insert(pgid.as_raw(), route);
        Self::replay(&mut inner);
    }

    /// Closes the window and returns what was parked for nobody.
    pub fn close(mut self) -> Vec<NotifyDatagram> {
        self.finish();
        std::mem::take(&mut self.ignored)
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let mut inner = self.directory.inner.lock().expect("directory lock");
        inner.spawns_in_flight -= 1;
        Self::replay(&mut inner);
        if inner.spawns_in_flight == 0 {
            let parked = std::mem::take(&mut inner.parked);
            let strangers = parked
                .into_iter()
                .filter(|p| !inner.recently_gone(p.datagram.pid, p.pgid))
                .map(|p| p.datagram);
            self.ignored.extend(strangers);
        }
    }

    fn replay(inner: &mut DirectoryInner) {
        let parked = std::mem::take(&mut inner.parked);
        for parked in parked {
            match inner.find(parked.datagram.pid, parked.pgid) {
                Some(route) => route.deliver(parked.datagram),
                None => inner.parked.push(parked),
            }
        }
    }
}

impl Drop for SpawnWindow<'_> {
    /// A window dropped without `close` (a panic in the spawn) still ends,
    /// and whatever it held for nobody is dropped with a warning.
    fn drop(&mut self) {
        self.finish();
        for datagram in self.ignored.drain(..) {
            tracing::warn!(
                pid = datagram.pid,
                "notify message from a process of no generation ignored"
            );
        }
    }
}

/// Logs and records a notify message that no generation sent.
pub fn ignore_notification(events: &EventLog, datagram: NotifyDatagram) {
    let message: String = datagram.text.chars().take(200).collect();
    tracing::warn!(pid = datagram.pid, %message, "notify message from a process of no generation ignored");
    events.emit(
        "-",
        None,
        EventKind::NotifyIgnored {
            pid: datagram.pid.max(0) as u32,
            message,
        },
    );
}

pub enum Msg {
    Restart {
        reason: Option<String>,
        reply: oneshot::Sender<Result<RestartId, ErrorBody>>,
    },
    Status {
        reply: oneshot::Sender<ServiceStatus>,
    },
    /// A reload changed this service: restart it with the new configuration.
    Replace {
        config: Arc<ServiceConfig>,
        sockets: Arc<Vec<Arc<BoundSocket>>>,
    },
    /// Stop every generation gracefully; the task ends when all are gone.
    Stop {
        reply: oneshot::Sender<()>,
    },
    Exited {
        generation: u64,
        pid: Pid,
        exit: ExitInfo,
    },
    Notify {
        generation: u64,
        pid: i32,
        messages: Vec<NotifyMessage>,
        fds: Vec<OwnedFd>,
    },
    ProbeReady {
        generation: u64,
    },
    /// The agent is about to re-exec itself: describe the service so the
    /// next image can adopt it. Refused while a restart or a start runs.
    Handover {
        reply: oneshot::Sender<Result<ServiceHandover, String>>,
    },
    /// The re-exec failed: carry on.
    Thaw,
    Connections {
        generation: u64,
        count: Option<u32>,
    },
}

#[derive(Clone)]
pub struct ServiceHandle {
    pub name: String,
    tx: mpsc::UnboundedSender<Msg>,
}

impl ServiceHandle {
    pub async fn restart(&self, reason: Option<String>) -> Result<RestartId, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Restart { reason, reply });
        answer
            .await
            .unwrap_or_else(|_| Err(shutting_down(&self.name)))
    }

    pub async fn status(&self) -> Option<ServiceStatus> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Status { reply });
        answer.await.ok()
    }

    /// Resumes after a failed re-exec.
    pub fn thaw(&self) {
        self.send(Msg::Thaw);
    }

    pub fn replace(&self, config: Arc<ServiceConfig>, sockets: Arc<Vec<Arc<BoundSocket>>>) {
        self.send(Msg::Replace { config, sockets });
    }

    pub async fn handover(&self) -> Result<ServiceHandover, String> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Handover { reply });
        answer
            .await
            .unwrap_or_else(|_| Err(format!("service {:?} is stopping", self.name)))
    }

    /// Resolves when every generation of the service has exited.
    pub async fn stop(&self) {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Stop { reply });
        let _ = answer.await;
    }

    fn send(&self, msg: Msg) {
        // A closed channel means the task already stopped; every reply
        // channel then reports that by being dropped.
        let _ = self.tx.send(msg);
    }
}

fn shutting_down(service: &str) -> ErrorBody {
    ErrorBody {
        kind: ErrorKind::ShuttingDown,
        message: format!("service {service:?} is stopping"),
        running_restart: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting {
        deadline: Instant,
    },
    Ready,
    Draining {
        deadline: Instant,
    },
    /// Stopped without draining, SIGKILL at `kill_at`.
    Stopping {
        kill_at: Instant,
    },
}

struct Generation {
    number: u64,
    pid: Pid,
    phase: Phase,
    started_at: u64,
    spawned: Instant,
    ready_at: Option<u64>,
    ready_instant: Option<Instant>,
    status_text: Option<String>,
    connections: Option<u32>,
    /// The process `MAINPID=` named, when not `pid` (a service that forks its
    /// real server and lets the first process exit). Its exit, not `pid`'s,
    /// is the generation's main exit.
    main_pid: Option<Pid>,
    /// Set once the main process is reaped; the generation is gone when its
    /// process group is empty too.
    main_exit: Option<ExitInfo>,
    /// The sockets it was started with stay open while it lives, even when a
    /// reload replaced them.
    _sockets: Arc<Vec<Arc<BoundSocket>>>,
    tasks: CancellationToken,
}

impl Generation {
    fn state(&self) -> GenerationState {
        match self.phase {
            Phase::Starting { .. } => GenerationState::Starting,
            Phase::Ready => GenerationState::Ready,
            Phase::Draining { .. } => GenerationState::Draining,
            Phase::Stopping { .. } => GenerationState::Stopping,
        }
    }
}

struct RestartRun {
    id: RestartId,
    old: Option<u64>,
    new: Option<u64>,
    /// Decided but not final until the generation it waits for is gone.
    verdict: Option<(RestartOutcome, Option<String>)>,
    connections_cut: Option<u32>,
}

pub struct Service {
    name: String,
    config: Arc<ServiceConfig>,
    sockets: Arc<Vec<Arc<BoundSocket>>>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    generations: BTreeMap<u64, Generation>,
    next_generation: u64,
    /// The generation that serves.
    current: Option<u64>,
    restart: Option<RestartRun>,
    /// A reload arrived during a restart: restart again once it ends.
    restart_queued: bool,
    consecutive_crashes: u32,
    backoff_until: Option<Instant>,
    fd_store: Vec<(String, OwnedFd)>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    stopping: bool,
    /// Handed over to the next image: start nothing new until thawed.
    frozen: bool,
}

/// Starts the service's task; with `adopted`, it takes over the generations
/// the agent's previous image ran instead of starting one.
pub fn start(
    config: Arc<ServiceConfig>,
    sockets: Arc<Vec<Arc<BoundSocket>>>,
    shared: Arc<Shared>,
    adopted: Option<ServiceHandover>,
) -> (ServiceHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let name = config.name.clone();
    let service = Service {
        name: name.clone(),
        config,
        sockets,
        shared,
        tx: tx.clone(),
        generations: BTreeMap::new(),
        next_generation: 1,
        current: None,
        restart: None,
        restart_queued: false,
        consecutive_crashes: 0,
        backoff_until: None,
        fd_store: Vec::new(),
        stop_waiters: Vec::new(),
        stopping: false,
        frozen: false,
    };
    let task = tokio::spawn(service.run(rx, adopted));
    (ServiceHandle { name, tx }, task)
}

impl Service {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, adopted: Option<ServiceHandover>) {
        if let Some(handed) = adopted {
            self.adopt(handed);
        }
        if self.current.is_none()
            && let Err(reason) = self.start_generation().await
        {
            tracing::error!(service = %self.name, %reason, "first generation did not start");
            self.on_crash(None);
        }
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = sleep_until(deadline) => self.on_timer().await,
            }
            if self.stopping && self.generations.is_empty() {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                break;
            }
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Restart { reason, reply } => {
                let _ = reply.send(self.begin_restart(reason).await);
            }
            Msg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Msg::Replace { config, sockets } => {
                self.config = config;
                self.sockets = sockets;
                if self.restart.is_some() {
                    self.restart_queued = true;
                } else if !self.stopping {
                    let _ = self
                        .begin_restart(Some("configuration changed".into()))
                        .await;
                }
            }
            Msg::Stop { reply } => {
                self.stop_waiters.push(reply);
                self.stop_all();
            }
            Msg::Exited {
                generation,
                pid,
                exit,
            } => self.on_exit(generation, pid, exit),
            Msg::Notify {
                generation,
                pid,
                messages,
                fds,
            } => self.on_notify(generation, pid, messages, fds),
            Msg::ProbeReady { generation } => self.on_ready(generation).await,
            Msg::Handover { reply } => {
                let handover = self.handover();
                self.frozen = handover.is_ok();
                let _ = reply.send(handover);
            }
            Msg::Thaw => self.frozen = false,
            Msg::Connections { generation, count } => {
                if let Some(generation_state) = self.generations.get_mut(&generation)
                    && let Some(count) = count
                    && generation_state.connections != Some(count)
                {
                    generation_state.connections = Some(count);
                    if matches!(generation_state.phase, Phase::Draining { .. }) {
                        let restart = self.restart_of(generation);
                        self.shared.events.emit(
                            &self.name,
                            restart,
                            EventKind::DrainProgress {
                                generation,
                                connections: count,
                            },
                        );
                    }
                }
            }
        }
    }

    fn handover(&self) -> Result<ServiceHandover, String> {
        if let Some(run) = &self.restart {
            return Err(format!("restart {} of {:?} is running", run.id, self.name));
        }
        if self
            .generations
            .values()
            .any(|g| matches!(g.phase, Phase::Starting { .. }))
        {
            return Err(format!("a generation of {:?} is starting", self.name));
        }
        let now = Instant::now();
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        Ok(ServiceHandover {
            name: self.name.clone(),
            sockets: self
                .sockets
                .iter()
                .map(|s| SocketHandover {
                    name: s.name.clone(),
                    configured: s.configured.to_string(),
                    fd: s.raw_fd(),
                })
                .collect(),
            generations: self
                .generations
                .values()
                .filter(|g| g.main_exit.is_none())
                .map(|g| GenerationHandover {
                    number: g.number,
                    pid: g.pid.as_raw(),
                    main_pid: g.main_pid.map(Pid::as_raw),
                    phase: match g.phase {
                        Phase::Draining { deadline } => HandedPhase::Draining {
                            left_ms: left(deadline),
                        },
                        Phase::Stopping { kill_at } => HandedPhase::Stopping {
                            left_ms: left(kill_at),
                        },
                        Phase::Ready | Phase::Starting { .. } => HandedPhase::Ready,
                    },
                    started_at: g.started_at,
                    ready_at: g.ready_at,
                    status_text: g.status_text.clone(),
                })
                .collect(),
            current: self.current,
            next_generation: self.next_generation,
            consecutive_crashes: self.consecutive_crashes,
            fd_store: self
                .fd_store
                .iter()
                .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
                .collect(),
        })
    }

    /// Turns the reaper's news of the generation's main process into a message.
    fn report_exit(&self, number: u64, pid: Pid, exit_watch: crate::reaper::ExitWatch) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let exit = wait_exit(exit_watch).await;
            let _ = tx.send(Msg::Exited {
                generation: number,
                pid,
                exit,
            });
        });
    }

    /// Takes over what the agent's previous image ran.
    fn adopt(&mut self, handed: ServiceHandover) {
        self.next_generation = handed.next_generation;
        self.consecutive_crashes = handed.consecutive_crashes;
        for (name, fd) in handed.fd_store {
            match crate::sys::adopt_inherited_fd(fd) {
                Ok(fd) => self.fd_store.push((name, fd)),
                Err(e) => {
                    tracing::warn!(service = %self.name, fd, error = %e, "stored fd lost in the upgrade")
                }
            }
        }
        let now = Instant::now();
        let listen = self.listen_addrs();
        for handed in handed.generations {
            let pid = Pid::from_raw(handed.pid);
            let number = handed.number;
            let exit_watch = self.shared.reaper.adopt(pid);
            self.shared.directory.insert(
                pid,
                Route {
                    service: self.name.clone(),
                    generation: number,
                    tx: self.tx.clone(),
                },
            );
            self.report_exit(number, pid, exit_watch);
            let main_pid = handed.main_pid.map(Pid::from_raw);
            if let Some(main) = main_pid {
                let main_watch = self.shared.reaper.adopt(main);
                self.report_exit(number, main, main_watch);
            }
            let tasks = CancellationToken::new();
            let phase = match handed.phase {
                HandedPhase::Ready => Phase::Ready,
                HandedPhase::Draining { left_ms } => {
                    tokio::spawn(count_while_draining(
                        pid,
                        listen.clone(),
                        number,
                        self.tx.clone(),
                        tasks.clone(),
                    ));
                    Phase::Draining {
                        deadline: now + Duration::from_millis(left_ms),
                    }
                }
                HandedPhase::Stopping { left_ms } => Phase::Stopping {
                    kill_at: now + Duration::from_millis(left_ms),
                },
            };
            self.generations.insert(
                number,
                Generation {
                    number,
                    pid,
                    phase,
                    started_at: handed.started_at,
                    spawned: now,
                    ready_at: handed.ready_at,
                    ready_instant: handed.ready_at.map(|_| now),
                    status_text: handed.status_text,
                    connections: None,
                    main_pid,
                    main_exit: None,
                    _sockets: self.sockets.clone(),
                    tasks,
                },
            );
        }
        self.current = handed.current.filter(|n| self.generations.contains_key(n));
        tracing::info!(service = %self.name, generations = self.generations.len(), current = ?self.current, "adopted from the previous agent image");
    }

    async fn begin_restart(&mut self, reason: Option<String>) -> Result<RestartId, ErrorBody> {
        if let Some(run) = &self.restart {
            return Err(ErrorBody {
                kind: ErrorKind::RestartInProgress,
                message: format!(
                    "a restart of {:?} is already running (restart {})",
                    self.name, run.id
                ),
                running_restart: Some(run.id),
            });
        }
        if self.stopping {
            return Err(shutting_down(&self.name));
        }
        if self.frozen {
            return Err(ErrorBody {
                kind: ErrorKind::ShuttingDown,
                message: "the agent is upgrading itself; try again in a moment".into(),
                running_restart: None,
            });
        }
        let id = self
            .shared
            .events
            .begin_restart(&self.name, reason, self.current);
        self.backoff_until = None;
        // A crash restart already on its way is superseded by this one.
        let crash_starts: Vec<u64> = self
            .generations
            .values()
            .filter(|g| matches!(g.phase, Phase::Starting { .. }))
            .map(|g| g.number)
            .collect();
        for number in crash_starts {
            self.stop_generation(number);
        }
        self.restart = Some(RestartRun {
            id,
            old: self.current,
            new: None,
            verdict: None,
            connections_cut: None,
        });
        match self.start_generation().await {
            Ok(number) => {
                if let Some(run) = &mut self.restart {
                    run.new = Some(number);
                }
                self.shared
                    .events
                    .update_restart(id, |report| report.new_generation = Some(number));
                if self.config.ready == Readiness::Exec {
                    self.on_ready(number).await;
                }
            }
            Err(reason) => {
                if let Some(run) = &mut self.restart {
                    run.verdict = Some((
                        RestartOutcome::Failed,
                        Some(format!("could not start a new generation: {reason}")),
                    ));
                }
                self.check_restart_done();
            }
        }
        Ok(id)
    }

    async fn start_generation(&mut self) -> Result<u64, String> {
        let number = self.next_generation;
        self.next_generation += 1;
        let probe_port = if self.config.ready.uses_probe_port() {
            Some(spawn::free_loopback_port().map_err(|e| format!("no free probe port: {e}"))?)
        } else {
            None
        };
        let launch = GenerationLaunch {
            config: self.config.clone(),
            sockets: self.sockets.clone(),
            stored_fds: self
                .fd_store
                .iter()
                .filter_map(|(name, fd)| fd.try_clone().ok().map(|fd| (name.clone(), fd)))
                .collect(),
            generation: number,
            notify_socket: self.shared.notify_socket.clone(),
            probe_port,
        };
        let shared = self.shared.clone();
        let route = Route {
            service: self.name.clone(),
            generation: number,
            tx: self.tx.clone(),
        };
        let spawned = tokio::task::spawn_blocking(move || {
            // Notify messages that beat the registration wait for it.
            let mut window = shared.directory.begin_spawn();
            let launched = spawn::launch(&shared.reaper, launch, |pid| window.register(pid, route));
            for datagram in window.close() {
                ignore_notification(&shared.events, datagram);
            }
            launched
        })
        .await
        .map_err(|e| format!("spawn task failed: {e}"))?;
        let (pid, exit_watch) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                if let spawn::LaunchError::Spawn(crate::sys::SpawnError::Child { pid, .. }) = &e {
                    self.shared.directory.remove(*pid);
                }
                return Err(e.to_string());
            }
        };

        let now = Instant::now();
        let tasks = CancellationToken::new();
        self.report_exit(number, pid, exit_watch);
        if let Some(target) = probe_target(&self.config.ready, number, probe_port) {
            tokio::spawn(probe_until_ready(
                target,
                number,
                self.tx.clone(),
                tasks.clone(),
            ));
        }
        self.generations.insert(
            number,
            Generation {
                number,
                pid,
                phase: Phase::Starting {
                    deadline: now + self.config.ready_timeout,
                },
                started_at: now_millis(),
                spawned: now,
                ready_at: None,
                ready_instant: None,
                status_text: None,
                connections: None,
                main_pid: None,
                main_exit: None,
                _sockets: self.sockets.clone(),
                tasks,
            },
        );
        let restart = self.restart.as_ref().map(|r| r.id);
        tracing::info!(service = %self.name, generation = number, pid = pid.as_raw(), "generation spawned");
        self.shared.events.emit(
            &self.name,
            restart,
            EventKind::GenerationSpawned {
                generation: number,
                pid: pid.as_raw() as u32,
            },
        );
        if self.config.ready == Readiness::Exec && self.restart.is_none() {
            self.on_ready(number).await;
        }
        Ok(number)
    }

    async fn on_ready(&mut self, number: u64) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if !matches!(generation.phase, Phase::Starting { .. }) || generation.main_exit.is_some() {
            return;
        }
        let now = Instant::now();
        generation.phase = Phase::Ready;
        generation.ready_at = Some(now_millis());
        generation.ready_instant = Some(now);
        let startup_us = now.duration_since(generation.spawned).as_micros() as u64;
        let pid = generation.pid;
        if self.config.warmup_nice != 0
            && let Err(errno) = crate::sys::set_group_nice(pid, 0)
        {
            tracing::warn!(service = %self.name, generation = number, %errno, "could not restore the priority of a ready generation");
        }
        tracing::info!(service = %self.name, generation = number, pid = pid.as_raw(), startup_us, "generation ready");
        let restart = self.restart_of(number);
        self.shared.events.emit(
            &self.name,
            restart,
            EventKind::GenerationReady {
                generation: number,
                pid: pid.as_raw() as u32,
                startup_us,
            },
        );
        let previous = self.current.replace(number);
        if let Some(old) = previous
            && old != number
        {
            self.begin_drain(old).await;
        }
        self.check_restart_done();
    }

    async fn begin_drain(&mut self, number: u64) {
        let listen = self.listen_addrs();
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if !matches!(generation.phase, Phase::Ready) || generation.main_exit.is_some() {
            return;
        }
        let pid = generation.pid;
        let connections = count_blocking(pid, listen.clone()).await;
        let generation = self
            .generations
            .get_mut(&number)
            .expect("generation is still present");
        generation.connections = connections;
        generation.phase = Phase::Draining {
            deadline: Instant::now() + self.config.drain_timeout,
        };
        let signal = self.config.stop_signal;
        if let Err(errno) = killpg(pid, signal) {
            tracing::warn!(service = %self.name, generation = number, %errno, "could not signal the old generation");
        }
        tokio::spawn(count_while_draining(
            pid,
            listen,
            number,
            self.tx.clone(),
            generation.tasks.clone(),
        ));
        tracing::info!(service = %self.name, generation = number, ?connections, "draining");
        let restart = self.restart_of(number);
        self.shared.events.emit(
            &self.name,
            restart,
            EventKind::GenerationDraining {
                generation: number,
                pid: pid.as_raw() as u32,
                signal: signal.as_str().to_string(),
                connections,
            },
        );
    }

    /// Stops a generation without draining: rollback, superseded start, stop.
    fn stop_generation(&mut self, number: u64) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if matches!(generation.phase, Phase::Stopping { .. }) {
            return;
        }
        let grace = self.config.drain_timeout.min(Duration::from_secs(10));
        let was_draining = matches!(generation.phase, Phase::Draining { .. });
        generation.phase = Phase::Stopping {
            kill_at: Instant::now() + grace,
        };
        if !was_draining && generation.main_exit.is_none() {
            let _ = killpg(generation.pid, self.config.stop_signal);
        }
        if self.current == Some(number) {
            self.current = None;
        }
    }

    fn stop_all(&mut self) {
        self.stopping = true;
        self.backoff_until = None;
        let now = Instant::now();
        let drain_timeout = self.config.drain_timeout;
        let signal = self.config.stop_signal;
        for generation in self.generations.values_mut() {
            if generation.main_exit.is_some() {
                continue;
            }
            match generation.phase {
                Phase::Starting { .. } | Phase::Ready => {
                    let _ = killpg(generation.pid, signal);
                    generation.phase = Phase::Stopping {
                        kill_at: now + drain_timeout,
                    };
                }
                Phase::Draining { .. } | Phase::Stopping { .. } => {}
            }
        }
        self.current = None;
        if let Some(run) = &mut self.restart
            && run.verdict.is_none()
        {
            run.verdict = Some((
                RestartOutcome::Failed,
                Some("the service was stopped during the restart".into()),
            ));
        }
        self.check_restart_done();
    }

    fn on_exit(&mut self, number: u64, pid: Pid, exit: ExitInfo) {
        let signal = self.config.stop_signal;
        let drain_timeout = self.config.drain_timeout;
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let main = generation.main_pid.unwrap_or(generation.pid);
        if pid != main {
            if pid != generation.pid {
                // A process an earlier MAINPID= named, replaced since.
                return;
            }
            // The first process handed over to `main` and exited. If `main`
            // died first, while still its child, nobody will report that.
            if in_group(main, generation.pid) {
                tracing::info!(service = %self.name, generation = number, first = pid.as_raw(), main = main.as_raw(), %exit, "first process exited; the main process serves on");
                return;
            }
            tracing::warn!(service = %self.name, generation = number, main = main.as_raw(), "the main process named by MAINPID is gone");
        }
        generation.main_exit = Some(exit);
        let phase = generation.phase;
        let pid = generation.pid;
        let unexpected = matches!(phase, Phase::Starting { .. } | Phase::Ready);
        let was_current = self.current == Some(number);
        let stayed_up = generation
            .ready_instant
            .map(|t| t.elapsed() >= CRASH_FORGIVEN_AFTER)
            .unwrap_or(false);
        if unexpected {
            // Workers left behind by a dead main process would keep serving
            // with nobody to manage them.
            let _ = killpg(pid, signal);
            generation.phase = Phase::Stopping {
                kill_at: Instant::now() + drain_timeout,
            };
        }
        if unexpected {
            tracing::warn!(service = %self.name, generation = number, %exit, "generation died");
        } else {
            tracing::info!(service = %self.name, generation = number, %exit, "generation exited");
        }
        let restart = self.restart_of(number);
        self.shared.events.emit(
            &self.name,
            restart,
            EventKind::GenerationExited {
                generation: number,
                pid: pid.as_raw() as u32,
                status: exit.to_string(),
                unexpected,
            },
        );
        self.remove_if_gone(number);

        match phase {
            Phase::Starting { .. } => {
                let in_restart = self.restart.as_ref().and_then(|r| r.new) == Some(number);
                if in_restart {
                    self.roll_back(format!("generation {number} {exit} before it was ready"));
                } else if !self.stopping {
                    self.on_crash(Some(number));
                }
            }
            Phase::Ready => {
                if was_current {
                    self.current = None;
                    if stayed_up {
                        self.consecutive_crashes = 0;
                    }
                    let new_on_its_way = self
                        .restart
                        .as_ref()
                        .and_then(|r| r.new)
                        .is_some_and(|n| self.generations.contains_key(&n));
                    if !new_on_its_way && !self.stopping {
                        self.on_crash(Some(number));
                    }
                }
            }
            Phase::Draining { .. } | Phase::Stopping { .. } => {}
        }
        self.check_restart_done();
    }

    fn roll_back(&mut self, reason: String) {
        let Some(run) = &mut self.restart else { return };
        let new = run.new;
        let outcome = if run
            .old
            .is_some_and(|old| self.generations.contains_key(&old))
        {
            RestartOutcome::RolledBack
        } else {
            RestartOutcome::Failed
        };
        if run.verdict.is_none() {
            run.verdict = Some((outcome, Some(reason)));
        }
        if let Some(new) = new {
            self.stop_generation(new);
        }
        if self.current.is_none() && !self.stopping {
            // Nothing serves: the old generation died during the restart.
            self.on_crash(None);
        }
    }

    fn on_crash(&mut self, generation: Option<u64>) {
        if self.stopping || !self.config.restart_on_crash {
            return;
        }
        self.consecutive_crashes += 1;
        let exponent = (self.consecutive_crashes - 1).min(16);
        let backoff = (BACKOFF_FIRST * 2u32.pow(exponent)).min(BACKOFF_MAX);
        self.backoff_until = Some(Instant::now() + backoff);
        self.shared.events.emit(
            &self.name,
            None,
            EventKind::CrashRestartScheduled {
                generation: generation.unwrap_or(0),
                backoff_ms: backoff.as_millis() as u64,
                consecutive_crashes: self.consecutive_crashes,
            },
        );
    }

    /// Removes a generation whose main process exited once no process of its
    /// group is left. Returns whether it is gone.
    fn remove_if_gone(&mut self, number: u64) -> bool {
        let Some(generation) = self.generations.get(&number) else {
            return true;
        };
        if generation.main_exit.is_none() || group_alive(generation.pid) {
            return false;
        }
        let generation = self.generations.remove(&number).expect("present");
        generation.tasks.cancel();
        self.shared.directory.remove(generation.pid);
        if self.current == Some(number) {
            self.current = None;
        }
        true
    }

    fn check_restart_done(&mut self) {
        let Some(run) = &self.restart else { return };
        let alive = |n: Option<u64>| n.is_some_and(|n| self.generations.contains_key(&n));
        let finished = match &run.verdict {
            // Final once the new generation is gone, so the report shows it stopped.
            Some(_) => !alive(run.new),
            None => {
                let new_serving = run.new.is_some() && self.current == run.new;
                new_serving && !alive(run.old)
            }
        };
        if !finished {
            return;
        }
        let run = self.restart.take().expect("checked above");
        let (outcome, reason) = match run.verdict {
            Some(verdict) => verdict,
            None => match run.connections_cut {
                Some(cut) => (
                    RestartOutcome::Forced,
                    Some(format!(
                        "generation {} did not exit within the drain timeout of {}; {cut} connections were cut",
                        run.old.unwrap_or(0),
                        humantime::format_duration(self.config.drain_timeout)
                    )),
                ),
                None => (RestartOutcome::Succeeded, None),
            },
        };
        tracing::info!(service = %self.name, restart = run.id, %outcome, reason = reason.as_deref().unwrap_or(""), "restart finished");
        self.shared
            .events
            .finish_restart(&self.name, run.id, outcome, reason, run.connections_cut);
        if self.restart_queued && !self.stopping {
            self.restart_queued = false;
            let tx = self.tx.clone();
            let (reply, _) = oneshot::channel();
            let _ = tx.send(Msg::Restart {
                reason: Some("configuration changed".into()),
                reply,
            });
        }
    }

    fn on_notify(
        &mut self,
        number: u64,
        pid: i32,
        messages: Vec<NotifyMessage>,
        fds: Vec<OwnedFd>,
    ) {
        let mut fds = fds;
        for message in messages {
            match message {
                NotifyMessage::Ready => {
                    if self.config.ready == Readiness::Notify {
                        let tx = self.tx.clone();
                        // Through the queue, so readiness is handled like a probe's.
                        let _ = tx.send(Msg::ProbeReady { generation: number });
                    }
                }
                NotifyMessage::Status(text) => {
                    let restart = self.restart_of(number);
                    if let Some(generation) = self.generations.get_mut(&number) {
                        generation.status_text = Some(text.clone());
                    }
                    self.shared.events.emit(
                        &self.name,
                        restart,
                        EventKind::GenerationStatus {
                            generation: number,
                            status: text,
                        },
                    );
                }
                NotifyMessage::ExtendTimeout(extra) => {
                    if let Some(generation) = self.generations.get_mut(&number) {
                        let wanted = Instant::now() + extra;
                        match &mut generation.phase {
                            Phase::Starting { deadline } | Phase::Draining { deadline } => {
                                *deadline = (*deadline).max(wanted);
                            }
                            _ => {}
                        }
                    }
                }
                NotifyMessage::FdStore { name } => {
                    let name = name.unwrap_or_else(|| "stored".into());
                    for fd in fds.drain(..) {
                        if self.fd_store.len() >= FDSTORE_MAX {
                            tracing::warn!(service = %self.name, "fd store is full; fd dropped");
                            break;
                        }
                        self.fd_store.push((name.clone(), fd));
                    }
                }
                NotifyMessage::FdStoreRemove { name } => {
                    let name = name.unwrap_or_else(|| "stored".into());
                    self.fd_store.retain(|(n, _)| *n != name);
                }
                NotifyMessage::MainPid(main) => self.set_main_pid(number, pid, Pid::from_raw(main)),
                NotifyMessage::Barrier => {
                    // Closing the fds tells the sender that everything it
                    // sent before has been acted on.
                    fds.clear();
                }
                NotifyMessage::Stopping => {
                    tracing::debug!(service = %self.name, generation = number, "generation reports it is stopping");
                }
                other => {
                    tracing::debug!(service = %self.name, generation = number, message = ?other, "notify message ignored");
                }
            }
        }
    }

    /// `MAINPID=`: from now on the generation lives as long as `main` does.
    /// Only a process of the generation's own process group can be named, as
    /// systemd accepts only one of the unit's processes.
    fn set_main_pid(&mut self, number: u64, sender: i32, main: Pid) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if generation.main_exit.is_some() || generation.main_pid == Some(main) {
            return;
        }
        if main == generation.pid {
            generation.main_pid = None;
            return;
        }
        if !in_group(main, generation.pid) {
            tracing::warn!(service = %self.name, generation = number, main = main.as_raw(), "MAINPID names a process outside the generation; ignored");
            return;
        }
        generation.main_pid = Some(main);
        tracing::info!(service = %self.name, generation = number, sender, main = main.as_raw(), "main process is now the one MAINPID named");
        // It becomes the agent's child (the agent is a subreaper) once its
        // parent exits, and is reaped and reported like any generation.
        let watch = self.shared.reaper.adopt(main);
        self.report_exit(number, main, watch);
    }

    async fn on_timer(&mut self) {
        if self.frozen {
            // Deadlines are handed over; the next image acts on them.
            return;
        }
        let now = Instant::now();
        if self.backoff_until.is_some_and(|t| t <= now) {
            self.backoff_until = None;
            if self.current.is_none()
                && !self.stopping
                && self.restart.is_none()
                && let Err(reason) = self.start_generation().await
            {
                tracing::error!(service = %self.name, %reason, "crash restart did not start");
                self.on_crash(None);
            }
        }
        let due: Vec<(u64, Phase)> = self
            .generations
            .values()
            .filter(|g| match g.phase {
                Phase::Starting { deadline } | Phase::Draining { deadline } => deadline <= now,
                Phase::Stopping { kill_at } => kill_at <= now,
                Phase::Ready => false,
            })
            .map(|g| (g.number, g.phase))
            .collect();
        for (number, phase) in due {
            match phase {
                Phase::Starting { .. } => {
                    let reason = format!(
                        "generation {number} was not ready within {}",
                        humantime::format_duration(self.config.ready_timeout)
                    );
                    tracing::warn!(service = %self.name, generation = number, "{reason}");
                    if self.restart.as_ref().and_then(|r| r.new) == Some(number) {
                        self.roll_back(reason);
                    } else {
                        self.stop_generation(number);
                        self.on_crash(Some(number));
                    }
                }
                Phase::Draining { .. } => self.force_kill(number).await,
                Phase::Stopping { .. } => {
                    if let Some(generation) = self.generations.get_mut(&number) {
                        let _ = killpg(generation.pid, Signal::SIGKILL);
                        generation.phase = Phase::Stopping {
                            kill_at: now + Duration::from_secs(3600),
                        };
                    }
                }
                Phase::Ready => {}
            }
        }
        let lingering: Vec<u64> = self
            .generations
            .values()
            .filter(|g| g.main_exit.is_some())
            .map(|g| g.number)
            .collect();
        let mut removed = false;
        for number in lingering {
            removed |= self.remove_if_gone(number);
        }
        if removed {
            self.check_restart_done();
        }
    }

    async fn force_kill(&mut self, number: u64) {
        let listen = self.listen_addrs();
        let Some(generation) = self.generations.get(&number) else {
            return;
        };
        let pid = generation.pid;
        // Counted right before the kill: these are the connections it cuts.
        let cut = count_blocking(pid, listen).await.unwrap_or(0);
        let _ = killpg(pid, Signal::SIGKILL);
        if let Some(generation) = self.generations.get_mut(&number) {
            generation.phase = Phase::Stopping {
                kill_at: Instant::now() + Duration::from_secs(3600),
            };
            generation.connections = Some(cut);
        }
        tracing::warn!(service = %self.name, generation = number, connections_cut = cut, "killed at the drain deadline");
        let restart = self.restart_of(number);
        if let Some(run) = &mut self.restart
            && run.old == Some(number)
        {
            run.connections_cut = Some(cut);
        }
        self.shared.events.emit(
            &self.name,
            restart,
            EventKind::GenerationKilled {
                generation: number,
                pid: pid.as_raw() as u32,
                connections_cut: cut,
            },
        );
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.frozen {
            return None;
        }
        let mut next = self.backoff_until;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for generation in self.generations.values() {
            match generation.phase {
                Phase::Starting { deadline } | Phase::Draining { deadline } => consider(deadline),
                Phase::Stopping { kill_at } => consider(kill_at),
                Phase::Ready => {}
            }
            if generation.main_exit.is_some() {
                consider(Instant::now() + LINGER_POLL);
            }
        }
        next
    }

    /// The restart a generation takes part in, so its events become steps.
    fn restart_of(&self, number: u64) -> Option<RestartId> {
        self.restart
            .as_ref()
            .filter(|r| r.new == Some(number) || r.old == Some(number))
            .map(|r| r.id)
    }

    fn listen_addrs(&self) -> ListenAddrs {
        listen_addrs_of(self.sockets.iter().map(|s| &s.bound))
    }

    fn status(&self) -> ServiceStatus {
        let state = if self.restart.is_some() {
            ServiceState::Restarting
        } else if self.current.is_some() {
            ServiceState::Ready
        } else if self.backoff_until.is_some() || self.consecutive_crashes > 0 && !self.stopping {
            ServiceState::CrashLooping
        } else if self
            .generations
            .values()
            .any(|g| matches!(g.phase, Phase::Starting { .. }))
        {
            ServiceState::Starting
        } else {
            ServiceState::Stopped
        };
        ServiceStatus {
            name: self.name.clone(),
            state,
            sockets: self
                .sockets
                .iter()
                .map(|s| SocketInfo {
                    name: s.name.clone(),
                    listen: s.bound.to_string(),
                })
                .collect(),
            generations: self
                .generations
                .values()
                .filter(|g| g.main_exit.is_none())
                .map(|g| GenerationInfo {
                    generation: g.number,
                    pid: g.pid.as_raw() as u32,
                    main_pid: g.main_pid.map(|p| p.as_raw() as u32),
                    state: g.state(),
                    started_at: g.started_at,
                    ready_at: g.ready_at,
                    status_text: g.status_text.clone(),
                    connections: g.connections,
                })
                .collect(),
            consecutive_crashes: self.consecutive_crashes,
            running_restart: self.restart.as_ref().map(|r| r.id),
            last_restart: self.shared.events.last_restart_of(&self.name),
        }
    }
}

pub fn listen_addrs_of<'a>(addrs: impl Iterator<Item = &'a ListenAddr>) -> ListenAddrs {
    let mut listen = ListenAddrs::default();
    for addr in addrs {
        match addr {
            ListenAddr::Tcp(a) => listen.tcp.push(*a),
            ListenAddr::Unix(p) => listen.unix.push(p.clone()),
            ListenAddr::Udp(_) => {}
        }
    }
    listen
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

pub async fn count_blocking(pgid: Pid, listen: ListenAddrs) -> Option<u32> {
    tokio::task::spawn_blocking(move || connections::count_connections(pgid.as_raw(), &listen))
        .await
        .ok()
        .and_then(|r| r.ok())
}

async fn count_while_draining(
    pgid: Pid,
    listen: ListenAddrs,
    generation: u64,
    tx: mpsc::UnboundedSender<Msg>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DRAIN_POLL) => {}
        }
        let count = count_blocking(pgid, listen.clone()).await;
        if tx.send(Msg::Connections { generation, count }).is_err() {
            return;
        }
    }
}

enum ProbeTarget {
    Http {
        addr: String,
        host: String,
        path: String,
    },
    Tcp {
        addr: String,
    },
}

fn probe_target(ready: &Readiness, generation: u64, port: Option<u16>) -> Option<ProbeTarget> {
    let fill = |template: &str| {
        let filled = template.replace("{generation}", &generation.to_string());
        match port {
            Some(port) => filled.replace("{port}", &port.to_string()),
            None => filled,
        }
    };
    match ready {
        Readiness::Http { url } => {
            let url = fill(url);
            let rest = url.trim_start_matches("http://");
            let (host, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            Some(ProbeTarget::Http {
                addr: host.to_string(),
                host: host.to_string(),
                path: path.to_string(),
            })
        }
        Readiness::Tcp { addr } => Some(ProbeTarget::Tcp { addr: fill(addr) }),
        Readiness::Notify | Readiness::Exec => None,
    }
}

async fn probe_until_ready(
    target: ProbeTarget,
    generation: u64,
    tx: mpsc::UnboundedSender<Msg>,
    stop: CancellationToken,
) {
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            ok = tokio::time::timeout(Duration::from_secs(2), probe_once(&target)) => ok.unwrap_or(false),
        };
        if ok {
            let _ = tx.send(Msg::ProbeReady { generation });
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

async fn probe_once(target: &ProbeTarget) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    match target {
        ProbeTarget::Tcp { addr } => tokio::net::TcpStream::connect(addr.as_str()).await.is_ok(),
        ProbeTarget::Http { addr, host, path } => {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr.as_str()).await else {
                return false;
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-agent\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = [0u8; 32];
            let mut filled = 0;
            while filled < 12 {
                match stream.read(&mut head[filled..]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => filled += n,
                }
            }
            // "HTTP/1.x 2xx"
            head.starts_with(b"HTTP/1.") && head[9] == b'2'
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    fn datagram(pid: i32) -> NotifyDatagram {
        NotifyDatagram {
            pid,
            uid: 0,
            gid: 0,
            text: "READY=1".into(),
            messages: vec![NotifyMessage::Ready],
            fds: Vec::new(),
            truncated: false,
        }
    }

    fn route(generation: u64) -> (Route, mpsc::UnboundedReceiver<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Route {
                service: "web".into(),
                generation,
                tx,
            },
            rx,
        )
    }

    fn notified(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Option<(u64, i32)> {
        match rx.try_recv().ok()? {
            Msg::Notify {
                generation, pid, ..
            } => Some((generation, pid)),
            _ => None,
        }
    }

    /// Pids far above any real one, so `getpgid` finds no such process.
    const CHILD: i32 = 0x3fff_fff0;
    const STRANGER: i32 = 0x3fff_fff1;

    #[test]
    fn a_message_that_beats_the_registration_is_delivered_once_it_lands() {
        let directory = Directory::default();
        let (route, mut rx) = route(7);
        let mut window = directory.begin_spawn();
        assert!(matches!(directory.route(datagram(CHILD)), Routed::Parked));
        assert!(notified(&mut rx).is_none());
        window.register(Pid::from_raw(CHILD), route);
        assert_eq!(notified(&mut rx), Some((7, CHILD)));
        assert!(window.close().is_empty());
        // Registered now: later messages go straight through.
        assert!(matches!(
            directory.route(datagram(CHILD)),
            Routed::Delivered
        ));
        assert_eq!(notified(&mut rx), Some((7, CHILD)));
    }

    #[test]
    fn a_message_nobody_claims_is_given_back_when_the_last_spawn_ends() {
        let directory = Directory::default();
        let (route, _rx) = route(1);
        let mut first = directory.begin_spawn();
        let second = directory.begin_spawn();
        assert!(matches!(
            directory.route(datagram(STRANGER)),
            Routed::Parked
        ));
        first.register(Pid::from_raw(CHILD), route);
        assert!(first.close().is_empty(), "another spawn is still in flight");
        let ignored = second.close();
        assert_eq!(
            ignored.iter().map(|d| d.pid).collect::<Vec<_>>(),
            [STRANGER]
        );
        assert!(matches!(
            directory.route(datagram(STRANGER)),
            Routed::Nobody(_)
        ));
    }

    #[test]
    fn a_message_from_a_generation_that_just_ended_is_late_not_a_strangers() {
        let directory = Directory::default();
        let (route, mut rx) = route(3);
        let mut window = directory.begin_spawn();
        window.register(Pid::from_raw(CHILD), route);
        assert!(window.close().is_empty());
        directory.remove(Pid::from_raw(CHILD));
        assert!(matches!(directory.route(datagram(CHILD)), Routed::Late));
        assert!(notified(&mut rx).is_none());
        // During a spawn it is not parked either, so it is never reported.
        let window = directory.begin_spawn();
        assert!(matches!(directory.route(datagram(CHILD)), Routed::Late));
        assert!(window.close().is_empty());
        assert!(matches!(
            directory.route(datagram(STRANGER)),
            Routed::Nobody(_)
        ));
    }

    #[test]
    fn without_a_spawn_in_flight_an_unknown_sender_is_nobody() {
        let directory = Directory::default();
        assert!(matches!(
            directory.route(datagram(STRANGER)),
            Routed::Nobody(_)
        ));
        assert!(matches!(directory.route(datagram(0)), Routed::Nobody(_)));
    }
}
