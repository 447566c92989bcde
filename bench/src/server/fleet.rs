//! Simulated hosts: WebSocket clients that speak `proto::link` the way the
//! real agent's uplink does (hello, a status every second, events followed
//! by a fresh status and resent after the welcome's `resume_after`, restart
//! commands answered with the agent's id, reports fetched by id), with no
//! process behind them. Each host knows every server URL and links to the
//! next one when its link drops, as the agent's `[server] urls` does. The
//! server cannot tell them from agents, so what is measured is the server
//! alone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_proto::link::{AgentFrame, LINK_VERSION, ServerFrame};
use baton_proto::{
    ErrorBody, ErrorKind, Event, EventKind, GenerationInfo, GenerationState, RestartId,
    RestartOutcome, RestartReport, ServiceState, ServiceStatus, SocketInfo, now_millis,
};
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The real uplink reads connection counts on every fifth status and repeats
/// the last reading in between, so counts change at most this often.
const COUNT_EVERY_N_STATUS: u32 = 5;
/// The agent's uplink waits this long before it tries the next URL after a
/// failed attempt; a link that was up and dropped is retried at once.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long the first link of every host may take, all hosts together.
const LINK_ALL_WITHIN: Duration = Duration::from_secs(300);
/// How long the links get to close when the fleet stops.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

pub struct FleetSettings {
    /// Every server's base URL. Host `i` links to `urls[i % n]` first and
    /// goes on down the list from there.
    pub urls: Vec<String>,
    /// One agent token per host, by host index: a token speaks for one host.
    pub tokens: Vec<String>,
    pub services_per_host: usize,
    /// From `generation_spawned` to `generation_ready`: the service's own start.
    pub service_start: Duration,
}

/// A `restart` command frame as a simulated host read it.
#[derive(Debug, Clone)]
pub struct CommandRead {
    pub host: String,
    /// The server's restart names itself here: the bench gives each restart
    /// a reason of its own.
    pub reason: Option<String>,
    pub at: Instant,
    /// Its id was heard before: answered as then, and nothing started.
    pub repeat: bool,
}

/// One host's part in a restart, on the bench's monotonic clock.
#[derive(Debug, Clone)]
pub struct HostRestart {
    pub host: String,
    pub reason: Option<String>,
    /// When the `restart` command frame was read.
    pub command: Instant,
    /// When the host emitted `restart_finished` (sent at once when linked).
    pub finished: Instant,
    /// The same two on the wall clock (Unix ms), to set beside the
    /// server's record of the host's restart.
    pub command_ms: u64,
    pub finished_ms: u64,
    /// Where the host was linked when it finished ([`link_url`]).
    pub linked_to: Option<String>,
}

#[derive(Default)]
struct Logs {
    commands: Vec<CommandRead>,
    finished: Vec<HostRestart>,
}

pub struct Fleet {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    logs: Arc<Mutex<Logs>>,
}

/// Where a host links to the server at `url`; [`HostRestart::linked_to`]
/// names it so.
pub fn link_url(url: &str) -> String {
    format!("{}/agent/v1/connect", url.replacen("http://", "ws://", 1))
}

pub fn host_name(index: usize) -> String {
    format!("sim-{index:04}")
}

pub fn service_name(index: usize) -> String {
    format!("svc-{index}")
}

impl Fleet {
    /// Connects every host and returns once the server has welcomed them all.
    pub fn start(settings: FleetSettings) -> anyhow::Result<Fleet> {
        let (stop, stop_requested) = oneshot::channel::<()>();
        let (ready_sender, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let logs = Arc::new(Mutex::new(Logs::default()));
        let shared = logs.clone();
        // A thread and a single-threaded runtime of its own, like the HTTP
        // load: the whole fleet costs the machine at most one core.
        let thread = std::thread::Builder::new()
            .name("fleet".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the fleet's runtime")?;
                runtime.block_on(run(settings, shared, ready_sender, stop_requested))
            })
            .context("cannot start the fleet thread")?;
        let mut fleet = Fleet {
            stop: Some(stop),
            thread: Some(thread),
            logs,
        };
        match ready.recv() {
            Ok(Ok(())) => Ok(fleet),
            Ok(Err(error)) => Err(error),
            Err(_) => match fleet.thread.take().map(JoinHandle::join) {
                Some(Ok(Err(error))) => Err(error),
                _ => bail!("the fleet thread ended before connecting"),
            },
        }
    }

    /// The commands of the restart with this reason.
    pub fn commands_for(&self, reason: &str) -> Vec<CommandRead> {
        let logs = self.logs.lock().expect("fleet log");
        logs.commands
            .iter()
            .filter(|c| c.reason.as_deref() == Some(reason))
            .cloned()
            .collect()
    }

    /// The hosts that finished the restart with this reason.
    pub fn finished_for(&self, reason: &str) -> Vec<HostRestart> {
        let logs = self.logs.lock().expect("fleet log");
        logs.finished
            .iter()
            .filter(|r| r.reason.as_deref() == Some(reason))
            .cloned()
            .collect()
    }

    pub fn finished_count(&self, reason: &str) -> usize {
        let logs = self.logs.lock().expect("fleet log");
        logs.finished
            .iter()
            .filter(|r| r.reason.as_deref() == Some(reason))
            .count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(
    settings: FleetSettings,
    logs: Arc<Mutex<Logs>>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let urls: Vec<String> = settings.urls.iter().map(|url| link_url(url)).collect();
    if urls.is_empty() {
        let _ = ready.send(Err(anyhow::anyhow!("no server URL for the fleet")));
        return Ok(());
    }
    let deadline = Instant::now() + LINK_ALL_WITHIN;
    let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(settings.tokens.len());
    // One host after the other, as hosts whose agents start over a few
    // seconds do: a thousand hellos at once measure the accept queue.
    for (index, token) in settings.tokens.iter().enumerate() {
        let host = SimHost::new(index, &settings, logs.clone(), stopping_seen.clone());
        let (linked, first_link) = oneshot::channel();
        let mut order: Vec<String> = urls.clone();
        order.rotate_left(index % urls.len());
        tasks.push(tokio::spawn(host.run(order, token.clone(), linked)));
        let left = deadline.saturating_duration_since(Instant::now());
        let failure = match tokio::time::timeout(left, first_link).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(error))) => Some(error),
            Ok(Err(_)) => Some(anyhow::anyhow!("its task ended before linking")),
            Err(_) => Some(anyhow::anyhow!(
                "not every host linked within {LINK_ALL_WITHIN:?}"
            )),
        };
        if let Some(error) = failure {
            let _ = ready.send(Err(error.context(format!("host {}", host_name(index)))));
            for task in tasks {
                task.abort();
            }
            return Ok(());
        }
    }
    let _ = ready.send(Ok(()));
    let _ = stop.await;
    // Each link closed with a close frame, as agents that stop do; then
    // whatever is left is cut.
    let _ = stopping.send(true);
    let closing = futures::future::join_all(tasks.iter_mut());
    let _ = tokio::time::timeout(CLOSE_WITHIN, closing).await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A restart between `generation_spawned` and `generation_ready`.
struct Starting {
    service: usize,
    id: RestartId,
    reason: Option<String>,
    command: Instant,
    ready_at: Instant,
    started_at: u64,
    steps: Vec<Event>,
}

struct SimHost {
    name: String,
    boot_id: String,
    next_seq: u64,
    /// Events the server has not acknowledged yet, oldest first: sent again
    /// on the next link after its welcome's `resume_after`.
    unacked: VecDeque<Event>,
    next_restart: RestartId,
    services: Vec<ServiceStatus>,
    starting: Vec<Starting>,
    reports: HashMap<RestartId, RestartReport>,
    /// Stands in for the pids the kernel would hand out.
    next_pid: u32,
    ticks: u32,
    service_start: Duration,
    logs: Arc<Mutex<Logs>>,
    /// The answer to every command id heard, as the real agent keeps them:
    /// a command sent again under its id is answered the same, and starts
    /// nothing. A bench run sends fewer commands per host than the agent
    /// remembers, so these are not bounded here.
    heard: HashMap<String, Result<RestartId, ErrorBody>>,
    /// The URL of the server holding the link, while linked.
    linked_to: Option<String>,
    /// Turns true when the fleet stops: the link is closed as an agent
    /// that stops closes it.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Why a link ended.
enum LinkEnd {
    /// The fleet stops; the link was closed.
    Stopped,
    /// The server refused the host: another URL would refuse it too.
    Refused(String),
    /// Closed or broken: try the next URL.
    Dropped,
}

impl SimHost {
    fn new(
        index: usize,
        settings: &FleetSettings,
        logs: Arc<Mutex<Logs>>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> SimHost {
        let started = now_millis().saturating_sub(3_600_000);
        let mut next_pid = 10_000 + index as u32 * 1_000;
        let services = (0..settings.services_per_host)
            .map(|s| {
                next_pid += 1;
                ServiceStatus {
                    name: service_name(s),
                    state: ServiceState::Ready,
                    sockets: vec![SocketInfo {
                        name: "http".to_owned(),
                        listen: format!("tcp://0.0.0.0:{}", 8000 + s),
                    }],
                    generations: vec![GenerationInfo {
                        generation: 1,
                        pid: next_pid,
                        main_pid: None,
                        state: GenerationState::Ready,
                        started_at: started,
                        ready_at: Some(started + 180),
                        status_text: Some("serving".to_owned()),
                        connections: Some(((index * 7 + s * 13) % 50) as u32),
                        memory_bytes: None,
                        memory_source: None,
                        cpu_usec: None,
                        cpu_source: None,
                        instances: Vec::new(),
                        program: None,
                    }],
                    consecutive_crashes: 0,
                    running_restart: None,
                    last_restart: None,
                    blocked: None,
                    next_start: None,
                }
            })
            .collect();
        SimHost {
            name: host_name(index),
            boot_id: format!("bench-{:016x}-{index}", now_millis()),
            next_seq: 1,
            unacked: VecDeque::new(),
            next_restart: 1,
            services,
            starting: Vec::new(),
            reports: HashMap::new(),
            next_pid,
            ticks: 0,
            service_start: settings.service_start,
            logs,
            heard: HashMap::new(),
            linked_to: None,
            stopping,
        }
    }

    /// Links to the URLs in turn for as long as the fleet runs; `linked`
    /// hears of the first welcome or the reason there was none.
    async fn run(
        mut self,
        urls: Vec<String>,
        token: String,
        linked: oneshot::Sender<anyhow::Result<()>>,
    ) {
        let mut linked = Some(linked);
        for url in urls.iter().cycle() {
            match self.connect(url, &token).await {
                Ok(mut ws) => {
                    if let Some(linked) = linked.take() {
                        let _ = linked.send(Ok(()));
                    }
                    self.linked_to = Some(url.clone());
                    let end = self.serve(&mut ws).await;
                    self.linked_to = None;
                    match end {
                        LinkEnd::Stopped => return,
                        LinkEnd::Dropped => continue,
                        LinkEnd::Refused(message) => {
                            eprintln!("baton-server-bench: {} refused: {message}", self.name);
                            return;
                        }
                    }
                }
                Err(LinkError::Refused(message)) => {
                    eprintln!("baton-server-bench: {} refused: {message}", self.name);
                    if let Some(linked) = linked.take() {
                        let _ = linked.send(Err(anyhow::anyhow!("refused: {message}")));
                    }
                    return;
                }
                Err(LinkError::Failed) => {}
            }
            // Between two failed attempts the restarts in flight go on.
            let pause = tokio::time::sleep(RETRY_AFTER);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    _ = self.next_ready() => {
                        let _ = self.make_ready(None).await;
                    }
                }
            }
        }
    }

    async fn connect(&mut self, url: &str, token: &str) -> Result<Ws, LinkError> {
        self.try_connect(url, token)
            .await
            .map_err(|error| match error.downcast::<Refusal>() {
                Ok(Refusal(message)) => LinkError::Refused(message),
                Err(_) => LinkError::Failed,
            })
    }

    async fn try_connect(&mut self, url: &str, token: &str) -> anyhow::Result<Ws> {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        // As the real agent's uplink: no Nagle on the link.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .context("cannot open the link")?;
        send(
            &mut ws,
            &AgentFrame::Hello {
                version: LINK_VERSION,
                host: self.name.clone(),
                agent_version: "0.1.0-bench".to_owned(),
                boot_id: self.boot_id.clone(),
                last_seq: self.next_seq - 1,
                services: self.services.clone(),
            },
        )
        .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(&text)? {
                    ServerFrame::Welcome { resume_after } => {
                        self.forget_acked(resume_after);
                        if !self.unacked.is_empty() {
                            let events = self.unacked.iter().cloned().collect();
                            send(&mut ws, &AgentFrame::Events { events }).await?;
                        }
                        return Ok(ws);
                    }
                    ServerFrame::Refused { message, .. } => return Err(Refusal(message).into()),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => bail!("closed before welcome"),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }

    fn forget_acked(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|e| e.seq <= seq) {
            self.unacked.pop_front();
        }
    }

    async fn serve(&mut self, ws: &mut Ws) -> LinkEnd {
        let mut stopping = self.stopping.clone();
        let mut ticker = tokio::time::interval(STATUS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sent = tokio::select! {
                _ = ticker.tick() => {
                    self.ticks = self.ticks.wrapping_add(1);
                    if self.ticks % COUNT_EVERY_N_STATUS == 1 {
                        self.drift_counts();
                    }
                    self.send_status(ws).await
                }
                _ = self.next_ready() => self.make_ready(Some(ws)).await,
                // It only ever turns true: any change is the stop.
                _ = stopping.changed() => {
                    // The server's close answers ours; the link ends once
                    // it came, not with a connection cut under the server.
                    if ws.close(None).await.is_ok() {
                        let drained = async { while let Some(Ok(_)) = ws.next().await {} };
                        let _ = tokio::time::timeout(CLOSE_WITHIN, drained).await;
                    }
                    return LinkEnd::Stopped;
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                        Ok(frame) => match self.on_frame(ws, frame).await {
                            Ok(Some(end)) => return end,
                            Ok(None) => Ok(()),
                            Err(error) => Err(error),
                        },
                        Err(error) => Err(error.into()),
                    },
                    Some(Ok(Message::Close(_))) | None => return LinkEnd::Dropped,
                    Some(Ok(_)) => Ok(()),
                    Some(Err(_)) => return LinkEnd::Dropped,
                }
            };
            if sent.is_err() {
                return LinkEnd::Dropped;
            }
        }
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        frame: ServerFrame,
    ) -> anyhow::Result<Option<LinkEnd>> {
        match frame {
            ServerFrame::Restart {
                command_id,
                service,
                reason,
            } => {
                let command = Instant::now();
                let before = self.heard.get(&command_id).cloned();
                self.logs
                    .lock()
                    .expect("fleet log")
                    .commands
                    .push(CommandRead {
                        host: self.name.clone(),
                        reason: reason.clone(),
                        at: command,
                        repeat: before.is_some(),
                    });
                match before {
                    Some(result) => {
                        send(ws, &AgentFrame::RestartStarted { command_id, result }).await?;
                    }
                    None => {
                        let started = self.start_restart(&service, reason, command);
                        let result = started.as_ref().map(|(id, _)| *id).map_err(Clone::clone);
                        self.heard.insert(command_id.clone(), result.clone());
                        send(ws, &AgentFrame::RestartStarted { command_id, result }).await?;
                        if let Ok((_, events)) = started {
                            send(ws, &AgentFrame::Events { events }).await?;
                            self.send_status(ws).await?;
                        }
                    }
                }
            }
            ServerFrame::FetchReport { restart_id } => {
                let report = self.reports.get(&restart_id).cloned();
                send(ws, &AgentFrame::Report { restart_id, report }).await?;
            }
            ServerFrame::Ack { seq } => self.forget_acked(seq),
            ServerFrame::Refused { message, .. } => return Ok(Some(LinkEnd::Refused(message))),
            _ => {}
        }
        Ok(None)
    }

    /// Live connection counts move a little between readings, as they do on
    /// a host that serves traffic; each move is a change the server's
    /// `GET /services` must show.
    fn drift_counts(&mut self) {
        let seed = self.ticks as usize;
        for (index, service) in self.services.iter_mut().enumerate() {
            for generation in &mut service.generations {
                if let Some(count) = generation.connections.as_mut() {
                    let step = (seed + index * 3) % 5;
                    *count = (*count + step as u32).saturating_sub(2);
                }
            }
        }
    }

    async fn send_status(&self, ws: &mut Ws) -> anyhow::Result<()> {
        send(
            ws,
            &AgentFrame::Status {
                services: self.services.clone(),
            },
        )
        .await
    }

    fn event(&mut self, service: &str, restart: RestartId, kind: EventKind) -> Event {
        let event = Event {
            seq: self.next_seq,
            at: now_millis(),
            service: service.to_owned(),
            restart: Some(restart),
            kind,
        };
        self.next_seq += 1;
        event
    }

    /// Starts a restart and plays it up to `generation_spawned` (kept as
    /// unacknowledged events, to be sent); [`SimHost::make_ready`] plays the
    /// rest once the service has started. The answer to the command.
    fn start_restart(
        &mut self,
        service: &str,
        reason: Option<String>,
        command: Instant,
    ) -> Result<(RestartId, Vec<Event>), ErrorBody> {
        let Some(index) = self.services.iter().position(|s| s.name == service) else {
            return Err(ErrorBody {
                kind: ErrorKind::UnknownService,
                message: format!("no service named {service:?} on this agent"),
                running_restart: None,
            });
        };
        if let Some(running) = self.services[index].running_restart {
            return Err(ErrorBody {
                kind: ErrorKind::RestartInProgress,
                message: format!("{service} is already restarting"),
                running_restart: Some(running),
            });
        }
        let id = self.next_restart;
        self.next_restart += 1;
        let started_at = now_millis();
        let old = self.services[index].generations[0].clone();
        self.next_pid += 1;
        let new = GenerationInfo {
            generation: old.generation + 1,
            pid: self.next_pid,
            main_pid: None,
            state: GenerationState::Starting,
            started_at,
            ready_at: None,
            status_text: None,
            connections: Some(0),
            memory_bytes: None,
            memory_source: None,
            cpu_usec: None,
            cpu_source: None,
            instances: Vec::new(),
            program: None,
        };
        let steps = vec![
            self.event(
                service,
                id,
                EventKind::RestartStarted {
                    reason: reason.clone(),
                    requested_by: None,
                },
            ),
            self.event(
                service,
                id,
                EventKind::GenerationSpawned {
                    generation: new.generation,
                    pid: new.pid,
                    program: None,
                },
            ),
        ];
        {
            let status = &mut self.services[index];
            status.state = ServiceState::Restarting;
            status.running_restart = Some(id);
            status.generations = vec![old, new];
        }
        self.starting.push(Starting {
            service: index,
            id,
            reason,
            command,
            ready_at: Instant::now() + self.service_start,
            started_at,
            steps: steps.clone(),
        });
        self.unacked.extend(steps.iter().cloned());
        Ok((id, steps))
    }

    /// Resolves when the earliest starting service is ready; never when
    /// none is starting.
    async fn next_ready(&self) {
        match self.starting.iter().map(|s| s.ready_at).min() {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    }

    /// Plays the rest of every restart whose service is ready: ready,
    /// draining, exited, finished. Sent on `ws` when linked; kept for the
    /// next link otherwise, and on a failed send.
    async fn make_ready(&mut self, mut ws: Option<&mut Ws>) -> anyhow::Result<()> {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.starting)
            .into_iter()
            .partition(|s| s.ready_at <= now);
        self.starting = waiting;
        let mut result = Ok(());
        for starting in due {
            if let Err(error) = self.finish(ws.as_deref_mut(), starting).await {
                ws = None;
                result = Err(error);
            }
        }
        result
    }

    async fn finish(&mut self, mut ws: Option<&mut Ws>, starting: Starting) -> anyhow::Result<()> {
        let Starting {
            service: index,
            id,
            reason,
            command,
            started_at,
            mut steps,
            ..
        } = starting;
        let service = self.services[index].name.clone();
        let old = self.services[index].generations[0].clone();
        let mut new = self.services[index].generations[1].clone();
        new.state = GenerationState::Ready;
        new.ready_at = Some(now_millis());
        new.status_text = Some("serving".to_owned());
        let mut draining = old.clone();
        draining.state = GenerationState::Draining;
        let batch = vec![
            self.event(
                &service,
                id,
                EventKind::GenerationReady {
                    generation: new.generation,
                    pid: new.pid,
                    startup_us: self.service_start.as_micros() as u64,
                    program: None,
                },
            ),
            self.event(
                &service,
                id,
                EventKind::GenerationDraining {
                    generation: old.generation,
                    pid: old.pid,
                    signal: "SIGTERM".to_owned(),
                    connections: old.connections,
                },
            ),
        ];
        steps.extend(batch.iter().cloned());
        self.services[index].generations = vec![draining, new.clone()];
        let mut sent = self.emit(ws.as_deref_mut(), batch).await;
        if sent.is_err() {
            ws = None;
        }

        let batch = vec![
            self.event(
                &service,
                id,
                EventKind::GenerationExited {
                    generation: old.generation,
                    pid: old.pid,
                    status: "exited with status 0".to_owned(),
                    unexpected: false,
                    program: None,
                },
            ),
            self.event(
                &service,
                id,
                EventKind::RestartFinished {
                    outcome: RestartOutcome::Succeeded,
                    reason: None,
                    versions: None,
                },
            ),
        ];
        steps.extend(batch.iter().cloned());
        let finished_at = now_millis();
        let report = RestartReport {
            id,
            service: service.clone(),
            reason: reason.clone(),
            started_at,
            finished_at: Some(finished_at),
            outcome: Some(RestartOutcome::Succeeded),
            outcome_reason: None,
            old_generation: Some(old.generation),
            new_generation: Some(new.generation),
            connections_cut: None,
            connections: None,
            steps,
            versions: None,
            output_tail: Vec::new(),
        };
        self.reports.insert(id, report.clone());
        {
            let status = &mut self.services[index];
            status.state = ServiceState::Ready;
            status.running_restart = None;
            status.generations = vec![new];
            status.last_restart = Some(report);
        }
        let finished = Instant::now();
        if sent.is_ok() {
            sent = self.emit(ws, batch).await;
        } else {
            self.unacked.extend(batch);
        }
        self.logs
            .lock()
            .expect("fleet log")
            .finished
            .push(HostRestart {
                host: self.name.clone(),
                reason,
                command,
                finished,
                command_ms: started_at,
                finished_ms: finished_at,
                linked_to: self.linked_to.clone(),
            });
        sent
    }

    /// Keeps `events` until the server acknowledges them and, when linked,
    /// sends them followed by a fresh status, as the uplink does.
    async fn emit(&mut self, ws: Option<&mut Ws>, events: Vec<Event>) -> anyhow::Result<()> {
        self.unacked.extend(events.iter().cloned());
        let Some(ws) = ws else {
            return Ok(());
        };
        send(ws, &AgentFrame::Events { events }).await?;
        self.send_status(ws).await
    }
}

/// The server's `refused` frame: another URL would refuse the host too.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refusal {}

enum LinkError {
    Refused(String),
    /// Unreachable, or closed before the welcome: try the next URL.
    Failed,
}

async fn send(ws: &mut Ws, frame: &AgentFrame) -> anyhow::Result<()> {
    ws.send(Message::text(serde_json::to_string(frame)?))
        .await
        .context("cannot send on the link")
}
