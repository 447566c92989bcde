//! Simulated hosts: WebSocket clients that speak `proto::link` the way the
//! real agent's uplink does (hello, a status every second, events followed
//! by a fresh status, restart commands answered with the agent's id), with no
//! process behind them. The server cannot tell them from agents, so what is
//! measured is the server alone.

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

pub struct FleetSettings {
    pub url: String,
    /// One agent token per host, by host index: a token speaks for one host.
    pub tokens: Vec<String>,
    pub hosts: usize,
    pub services_per_host: usize,
    /// From `generation_spawned` to `generation_ready`: the service's own start.
    pub service_start: Duration,
}

/// One host's part in a restart, on the bench's monotonic clock.
#[derive(Debug, Clone)]
pub struct HostRestart {
    pub host: String,
    pub service: String,
    /// When the `restart` command frame was read.
    pub command: Instant,
    /// When the frame carrying `restart_finished` was handed to the socket.
    pub finished: Instant,
}

pub struct Fleet {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    restarts: Arc<Mutex<Vec<HostRestart>>>,
}

pub fn host_name(index: usize) -> String {
    format!("sim-{index:03}")
}

pub fn service_name(index: usize) -> String {
    format!("svc-{index}")
}

impl Fleet {
    /// Connects every host and returns once the server has welcomed them all.
    pub fn start(settings: FleetSettings) -> anyhow::Result<Fleet> {
        let (stop, stop_requested) = oneshot::channel::<()>();
        let (ready_sender, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let restarts = Arc::new(Mutex::new(Vec::new()));
        let log = restarts.clone();
        // A thread and a single-threaded runtime of its own, like the HTTP
        // load: the whole fleet costs the machine at most one core.
        let thread = std::thread::Builder::new()
            .name("fleet".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the fleet's runtime")?;
                runtime.block_on(run(settings, log, ready_sender, stop_requested))
            })
            .context("cannot start the fleet thread")?;
        let mut fleet = Fleet {
            stop: Some(stop),
            thread: Some(thread),
            restarts,
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

    /// Forgets the restarts recorded so far.
    pub fn clear_restarts(&self) {
        self.restarts.lock().expect("restart log").clear();
    }

    pub fn restarts(&self) -> Vec<HostRestart> {
        self.restarts.lock().expect("restart log").clone()
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
    log: Arc<Mutex<Vec<HostRestart>>>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let url = format!(
        "{}/agent/v1/connect",
        settings.url.replacen("http://", "ws://", 1)
    );
    let mut hosts = Vec::with_capacity(settings.hosts);
    for index in 0..settings.hosts {
        let host = SimHost::new(index, &settings, log.clone());
        let token = settings
            .tokens
            .get(index)
            .with_context(|| format!("no agent token for host {}", host_name(index)))?;
        match host.connect(&url, token).await {
            Ok(connected) => hosts.push(connected),
            Err(error) => {
                let _ = ready.send(Err(error.context(format!("host {}", host_name(index)))));
                return Ok(());
            }
        }
    }
    let tasks: Vec<_> = hosts
        .into_iter()
        .map(|(host, ws)| tokio::spawn(host.serve(ws)))
        .collect();
    let _ = ready.send(Ok(()));
    let _ = stop.await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct SimHost {
    name: String,
    boot_id: String,
    next_seq: u64,
    next_restart: RestartId,
    services: Vec<ServiceStatus>,
    /// Stands in for the pids the kernel would hand out.
    next_pid: u32,
    ticks: u32,
    service_start: Duration,
    log: Arc<Mutex<Vec<HostRestart>>>,
}

impl SimHost {
    fn new(index: usize, settings: &FleetSettings, log: Arc<Mutex<Vec<HostRestart>>>) -> SimHost {
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
            next_restart: 1,
            services,
            next_pid,
            ticks: 0,
            service_start: settings.service_start,
            log,
        }
    }

    async fn connect(self, url: &str, token: &str) -> anyhow::Result<(SimHost, Ws)> {
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
                    ServerFrame::Welcome { .. } => return Ok((self, ws)),
                    ServerFrame::Refused { message, .. } => bail!("refused: {message}"),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => bail!("closed before welcome"),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }

    async fn serve(mut self, mut ws: Ws) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(STATUS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.ticks = self.ticks.wrapping_add(1);
                    if self.ticks % COUNT_EVERY_N_STATUS == 1 {
                        self.drift_counts();
                    }
                    self.send_status(&mut ws).await?;
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let ServerFrame::Restart { command_id, service, reason } = serde_json::from_str(&text)? {
                            let command = Instant::now();
                            self.restart(&mut ws, command_id, &service, reason, command).await?;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => bail!("the server closed the link"),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error.into()),
                }
            }
        }
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

    /// Plays a whole successful restart, in the batches the real uplink
    /// sends: each group of events as it happens, then a fresh status.
    async fn restart(
        &mut self,
        ws: &mut Ws,
        command_id: String,
        service: &str,
        reason: Option<String>,
        command: Instant,
    ) -> anyhow::Result<()> {
        let Some(index) = self.services.iter().position(|s| s.name == service) else {
            return send(
                ws,
                &AgentFrame::RestartStarted {
                    command_id,
                    result: Err(ErrorBody {
                        kind: ErrorKind::UnknownService,
                        message: format!("no service named {service:?} on this agent"),
                        running_restart: None,
                    }),
                },
            )
            .await;
        };
        let id = self.next_restart;
        self.next_restart += 1;
        send(
            ws,
            &AgentFrame::RestartStarted {
                command_id,
                result: Ok(id),
            },
        )
        .await?;

        let started_at = now_millis();
        let old = self.services[index].generations[0].clone();
        self.next_pid += 1;
        let mut new = GenerationInfo {
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
        let mut steps = vec![
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
            status.generations = vec![old.clone(), new.clone()];
        }
        self.send_events(ws, steps.clone()).await?;

        if !self.service_start.is_zero() {
            tokio::time::sleep(self.service_start).await;
        }
        new.state = GenerationState::Ready;
        new.ready_at = Some(now_millis());
        new.status_text = Some("serving".to_owned());
        let mut draining = old.clone();
        draining.state = GenerationState::Draining;
        let batch = vec![
            self.event(
                service,
                id,
                EventKind::GenerationReady {
                    generation: new.generation,
                    pid: new.pid,
                    startup_us: self.service_start.as_micros() as u64,
                    program: None,
                },
            ),
            self.event(
                service,
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
        self.send_events(ws, batch).await?;

        let batch = vec![
            self.event(
                service,
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
                service,
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
        {
            let status = &mut self.services[index];
            status.state = ServiceState::Ready;
            status.running_restart = None;
            status.generations = vec![new.clone()];
            status.last_restart = Some(RestartReport {
                id,
                service: service.to_owned(),
                reason,
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
            });
        }
        send(ws, &AgentFrame::Events { events: batch }).await?;
        let finished = Instant::now();
        self.send_status(ws).await?;
        self.log.lock().expect("restart log").push(HostRestart {
            host: self.name.clone(),
            service: service.to_owned(),
            command,
            finished,
        });
        Ok(())
    }

    async fn send_events(&self, ws: &mut Ws, events: Vec<Event>) -> anyhow::Result<()> {
        send(ws, &AgentFrame::Events { events }).await?;
        self.send_status(ws).await
    }
}

async fn send(ws: &mut Ws, frame: &AgentFrame) -> anyhow::Result<()> {
    ws.send(Message::text(serde_json::to_string(frame)?))
        .await
        .context("cannot send on the link")
}
