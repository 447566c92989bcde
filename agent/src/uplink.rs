//! The agent's link to the server: it dials out (the server never reaches
//! into hosts), says who it is, sends every event the server has not stored
//! yet, a status picture every second, and takes restart commands. A
//! command heard again (its id seen before: the server lost the answer and
//! sent it again) gets the first answer and starts nothing.
//!
//! Exactly-once delivery as the server sees it: the server answers `Hello`
//! with the highest sequence number it stored for this agent's `boot_id`, and
//! the agent sends everything after it. Whatever happened while the server was
//! away is still in the agent's event log and goes out on reconnect.
//!
//! The event history is bounded (`event_history`): after a long outage the
//! oldest events may be gone, and the server records the hole. The restart
//! reports are kept apart from it, so the server fetches the report of a
//! restart whose outcome it missed (`FetchReport`, answered with `Report`).
//!
//! A refusal that no retry can cure (the token speaks for another host) ends
//! the link for good, logged as an error; the services run on regardless.
//!
//! Several servers on one database (`urls`) are one control plane: the
//! agent links to one of them at a time, trying them in turn, and resumes
//! its events on whichever it reaches from what that database stored.

use crate::config::ServerConfig;
use crate::connections::Counts;
use crate::view::AgentView;
use baton_proto::link::{AgentFrame, LINK_VERSION, Refusal, ServerFrame};
use baton_proto::{ErrorBody, Event, RestartId, ServerLink, ServiceStatus};
use futures::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The link's heartbeat: a ping, and a status if it changed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Every change of a service is an event, and events bring a status; so do
/// new connection counts. The whole picture is read again this often only
/// in case something changed without either.
const STATUS_REBUILD_EVERY: Duration = Duration::from_secs(10);
/// Generations' memory and CPU are read again for the server this often
/// (at a rebuild): each reading opens a few files per process, which with a
/// thousand services is most of an idle agent's work.
const USAGE_EVERY: Duration = Duration::from_secs(30);
/// Connection counts of serving generations are read this often for the
/// server (one count for every service, off this loop); draining ones are
/// counted every 100 ms anyway.
const COUNT_EVERY_N_STATUS: u32 = 5;
/// A status that did not change is sent again after this long, so the
/// server's copy never drifts for good.
const STATUS_UNCHANGED_RESEND: Duration = Duration::from_secs(60);
/// Events change the server's picture of generations: a status follows
/// them within this long, and a burst of events (one restart after another
/// across many services) is followed by one status per this long, not one
/// per batch.
const STATUS_AFTER_EVENTS: Duration = Duration::from_millis(200);
/// And no sooner than this many times what the last status took to build
/// and send: with thousands of services, statuses after events take at most
/// a tenth of the agent's time.
const STATUS_COST_SHARE: u32 = 10;
const BATCH_MAX: usize = 500;
/// And at most this much JSON per frame: the server refuses frames over
/// 1 MiB, and an event can carry a reason of up to 64 KiB.
const BATCH_BYTES: usize = 256 * 1024;
/// A server that sends nothing for this long (the agent pings it every
/// second, so a live one always answers) is gone, even if the TCP
/// connection looks open: a frozen proxy or a dead peer behind a NAT.
const SERVER_SILENCE: Duration = Duration::from_secs(5);
/// A frame the server does not take within this long means the same.
const SEND_DEADLINE: Duration = Duration::from_secs(5);
/// How long a stopping agent waits for the server to answer its close.
const CLOSE_ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Log streams one link serves at once; the server bounds its own readers
/// well below this.
const MAX_LOG_STREAMS: usize = 64;
/// Frames of log lines waiting for the link; a stream that finds it full
/// waits, and its follower misses lines rather than grow the agent.
const LOG_FRAMES_QUEUED: usize = 64;
/// Restart commands whose answers are kept for a command heard again.
const COMMANDS_REMEMBERED: usize = 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A link that stayed up this long was a working one: what follows starts
/// the backoff again from the beginning.
const LINK_HELD: Duration = Duration::from_secs(10);

/// One server of the config, as the link dials it.
struct Target {
    /// As the config names it, for the status and the log.
    url: String,
    /// Its `ws(s)://.../agent/v1/connect`.
    connect: String,
}

/// Links to the servers of the config, one at a time, for as long as the
/// agent runs. Servers are tried in the config's order: a server that
/// cannot be reached, or whose link closes, is followed by the next one at
/// once; after a round in which none held a link, the agent waits (100 ms,
/// doubling to 5 s) before it begins the next round.
pub async fn run(server: ServerConfig, agent: Arc<AgentView>) {
    let targets: Vec<Target> = server
        .urls
        .iter()
        .map(|url| Target {
            url: url.clone(),
            connect: format!("{}/agent/v1/connect", websocket_url(url)),
        })
        .collect();
    // Built once: the roots do not change while the agent runs, and a bad CA
    // file was refused when the config was read.
    let tls = if targets.iter().any(|t| t.connect.starts_with("wss://")) {
        match baton_tls::client_config(server.ca_file.as_deref()) {
            Ok(config) => Some(Arc::new(config)),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS for the server link; not connecting");
                return;
            }
        }
    } else {
        None
    };
    let mut backoff = BACKOFF_FIRST;
    let mut position = 0;
    // Kept across links: a command is sent again on whichever link the
    // agent holds next.
    let mut heard = CommandsHeard::default();
    // Servers tried since the last wait, or since a link that held.
    let mut tried = 0;
    loop {
        if agent.shutting_down.is_cancelled() {
            return;
        }
        let target = &targets[position];
        show_link(&agent, &server.urls, &target.url, false);
        let mut linked_at = None;
        let target_tls = tls.clone().filter(|_| target.connect.starts_with("wss://"));
        let ended = session(
            &target.connect,
            &server.token,
            target_tls,
            &agent,
            &mut heard,
            || {
                linked_at = Some(tokio::time::Instant::now());
                show_link(&agent, &server.urls, &target.url, true);
            },
        )
        .await;
        if agent.shutting_down.is_cancelled() {
            return;
        }
        if linked_at.is_some_and(|at| at.elapsed() >= LINK_HELD) {
            backoff = BACKOFF_FIRST;
            tried = 0;
        }
        tried += 1;
        position = (position + 1) % targets.len();
        let next = &targets[position].url;
        match ended {
            Ok(()) => backoff = BACKOFF_FIRST,
            Err(e) => match e.downcast_ref::<Refused>() {
                Some(refused) if refused.refusal.is_final() => {
                    tracing::error!(
                        server = %target.connect,
                        reason = %refused.message,
                        "the server refuses this agent for good; no longer linking \
                         (the services keep running; fix the token or host in the config and restart the agent)"
                    );
                    show_link(&agent, &server.urls, &target.url, false);
                    return;
                }
                _ if targets.len() == 1 => {
                    tracing::warn!(server = %target.connect, error = %e, "server link down; retrying")
                }
                _ => tracing::warn!(
                    server = %target.connect,
                    next = %next,
                    error = %e,
                    "server link down; trying the next server"
                ),
            },
        }
        if tried < targets.len() {
            continue;
        }
        tried = 0;
        tokio::select! {
            _ = agent.shutting_down.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Puts where the link stands in the agent's status.
fn show_link(agent: &AgentView, urls: &[String], url: &str, linked: bool) {
    *agent.server_link.lock().expect("server link lock") = Some(ServerLink {
        url: url.to_owned(),
        linked,
        since: baton_proto::now_millis(),
        urls: urls.to_vec(),
    });
}

type LinkError = Box<dyn std::error::Error + Send + Sync>;

/// The server's `Refused` frame.
#[derive(Debug, thiserror::Error)]
#[error("server refused the link: {message}")]
struct Refused {
    message: String,
    refusal: Refusal,
}

/// Splits events into frames of at most `BATCH_MAX` events and about
/// `BATCH_BYTES` of JSON (an event bigger than that goes alone).
fn batches(events: &[Event]) -> Vec<&[Event]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, event) in events.iter().enumerate() {
        let size = serde_json::to_vec(event).map_or(0, |json| json.len() + 1);
        if i > start && (i - start >= BATCH_MAX || bytes + size > BATCH_BYTES) {
            out.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// Sends one message, or gives up on the link after `SEND_DEADLINE`.
async fn send<S>(sink: &mut S, message: Message) -> Result<(), LinkError>
where
    S: futures::Sink<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(SEND_DEADLINE, sink.send(message)).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(format!(
            "the server took no data for {}s; reconnecting",
            SEND_DEADLINE.as_secs()
        )
        .into()),
    }
}

fn frame(frame: &AgentFrame) -> Result<Message, LinkError> {
    Ok(Message::text(serde_json::to_string(frame)?))
}

/// `http(s)://` becomes `ws(s)://`; `ws(s)://` stays.
fn websocket_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url.to_string()
    }
}

/// One link to one server, from the dial to its end; `on_linked` runs once
/// the server has welcomed the agent.
async fn session(
    url: &str,
    token: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    agent: &Arc<AgentView>,
    heard: &mut CommandsHeard,
    on_linked: impl FnOnce(),
) -> Result<(), LinkError> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        // Nagle would hold a small frame (a restart's answer, an event
        // batch) behind the server's delayed ACK for up to 40 ms.
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            true,
            tls.map(tokio_tungstenite::Connector::Rustls),
        ),
    )
    .await
    .map_err(|_| "connect timed out")??;
    let (mut sink, mut stream) = socket.split();

    // The last counts, however old: a hello never waits for the kernel.
    // The first status after it brings fresh ones.
    let hello_started = tokio::time::Instant::now();
    agent.connections.refresh();
    let services = agent.services_for_the_server(false).await;
    send(
        &mut sink,
        frame(&AgentFrame::Hello {
            version: LINK_VERSION,
            host: agent.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: agent.boot_id.clone(),
            last_seq: agent.events.last_seq(),
            services,
        })?,
    )
    .await?;

    let welcome = tokio::time::timeout(SERVER_SILENCE, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<ServerFrame>(&text)? {
                        ServerFrame::Welcome { resume_after } => return Ok(resume_after),
                        ServerFrame::Refused { message, refusal } => {
                            return Err(Refused { message, refusal }.into());
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Err(format!("closed before welcome: {}", frame.reason).into());
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Err("closed before welcome".into());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(LinkError::from(e)),
            }
        }
    });
    let resume_after: u64 = match welcome.await {
        Ok(answer) => answer?,
        Err(_) => return Err("no welcome from the server within 5s".into()),
    };
    // From building the hello to the welcome: what grows with the services.
    let hello_ms = hello_started.elapsed().as_millis() as u64;
    tracing::info!(server = %url, resume_after, hello_ms, "linked to the server");
    on_linked();

    // Backlog and live stream come from one lock, so nothing falls between.
    let (backlog, mut live) = agent.events.since(resume_after);
    let mut sent = resume_after;
    for chunk in batches(&backlog) {
        sent = chunk.last().map(|e| e.seq).unwrap_or(sent);
        send(
            &mut sink,
            frame(&AgentFrame::Events {
                events: chunk.to_vec(),
            })?,
        )
        .await?;
    }

    let mut ticker = tokio::time::interval(STATUS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut usage_read_at = tokio::time::Instant::now();
    let mut last_status = StatusSent::default();
    // When a status is due after events.
    let mut status_due: Option<tokio::time::Instant> = None;
    let mut last_heard = tokio::time::Instant::now();
    let (log_frames, mut log_frames_out) =
        tokio::sync::mpsc::channel::<AgentFrame>(LOG_FRAMES_QUEUED);
    let mut log_streams = LogStreams::default();
    loop {
        tokio::select! {
            Some(log_frame) = log_frames_out.recv() => {
                send(&mut sink, frame(&log_frame)?).await?;
            }
            _ = agent.shutting_down.cancelled() => {
                // The link ends when the server's close answers ours: a
                // connection cut right after the close frame can reach the
                // server before the frame is read, as a broken link.
                if send(&mut sink, Message::Close(None)).await.is_ok() {
                    let answered = async {
                        while let Some(Ok(message)) = stream.next().await {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(CLOSE_ANSWER_WITHIN, answered).await;
                }
                return Ok(());
            }
            received = live.recv() => {
                let mut batch: Vec<Event> = Vec::new();
                match received {
                    Ok(event) => batch.push(event),
                    Err(RecvError::Lagged(_)) => {
                        let (missed, _) = agent.events.since(sent);
                        batch.extend(missed);
                    }
                    Err(RecvError::Closed) => return Ok(()),
                }
                while batch.len() < BATCH_MAX {
                    match live.try_recv() {
                        Ok(event) => batch.push(event),
                        Err(_) => break,
                    }
                }
                batch.retain(|e| e.seq > sent);
                if let Some(last) = batch.last() {
                    sent = last.seq;
                    for chunk in batches(&batch) {
                        send(&mut sink, frame(&AgentFrame::Events {
                            events: chunk.to_vec(),
                        })?).await?;
                    }
                    // The server's picture of generations changes with these
                    // events; don't leave it a second behind.
                    let gap = STATUS_AFTER_EVENTS.max(last_status.cost * STATUS_COST_SHARE);
                    let soonest = last_status.at.map_or_else(tokio::time::Instant::now, |at| at + gap);
                    status_due.get_or_insert(soonest);
                }
            }
            _ = sleep_until(status_due) => {
                status_due = None;
                let began = tokio::time::Instant::now();
                let services = agent.services_for_the_server(false).await;
                last_status.send_if_changed(&mut sink, services, Duration::MAX).await?;
                last_status.cost = began.elapsed();
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > SERVER_SILENCE {
                    return Err(format!(
                        "the server sent nothing for {}s; reconnecting",
                        SERVER_SILENCE.as_secs()
                    )
                    .into());
                }
                send(&mut sink, Message::Ping(Default::default())).await?;
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(COUNT_EVERY_N_STATUS) {
                    // Counted off this loop; the next ticks' statuses carry it.
                    agent.connections.refresh();
                }
                let counts = agent.connections.latest();
                let recounted = !counts.same_as(&last_status.counts);
                let rebuild = last_status.built_at.elapsed() >= STATUS_REBUILD_EVERY;
                if recounted || rebuild {
                    let fresh_usage = rebuild && usage_read_at.elapsed() >= USAGE_EVERY;
                    if fresh_usage {
                        usage_read_at = tokio::time::Instant::now();
                    }
                    let services = agent.services_for_the_server(fresh_usage).await;
                    last_status.counts = counts;
                    last_status.send_if_changed(&mut sink, services, STATUS_UNCHANGED_RESEND).await?;
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    last_heard = tokio::time::Instant::now();
                    match serde_json::from_str::<ServerFrame>(&text) {
                        Ok(ServerFrame::Restart { command_id, service, reason }) => {
                            let result = match heard.answer(&command_id) {
                                Some(answer) => {
                                    tracing::info!(command_id, service, "restart command heard again; answered as before");
                                    answer
                                }
                                None => {
                                    let result = agent.restart(&service, reason).await;
                                    heard.remember(&command_id, &result);
                                    result
                                }
                            };
                            send(&mut sink, frame(&AgentFrame::RestartStarted { command_id, result })?).await?;
                        }
                        Ok(ServerFrame::FetchReport { restart_id }) => {
                            let report = agent.events.restart(restart_id);
                            send(&mut sink, frame(&AgentFrame::Report { restart_id, report })?).await?;
                        }
                        Ok(ServerFrame::Logs { stream_id, service, generation, lines, follow }) => {
                            log_streams.start(agent, &log_frames, stream_id, service, generation, lines, follow);
                        }
                        Ok(ServerFrame::CancelLogs { stream_id }) => log_streams.cancel(&stream_id),
                        Ok(ServerFrame::Ack { .. }) | Ok(ServerFrame::Welcome { .. }) => {}
                        Ok(ServerFrame::Refused { message, refusal }) => {
                            return Err(Refused { message, refusal }.into());
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable frame from the server"),
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Err("server closed the link".into()),
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
                Some(Err(e)) => return Err(e.into()),
            },
        }
    }
}

/// The answers to the restart commands heard, by command id. A server
/// whose answer was lost (with the link it came over, or with the replica
/// that sent the command) sends the command again under the same id; the
/// agent answers as it did the first time and starts nothing, so a command
/// heard twice is one restart. The oldest are forgotten past
/// [`COMMANDS_REMEMBERED`]; the server sends again within seconds.
#[derive(Default)]
struct CommandsHeard {
    order: VecDeque<String>,
    answers: HashMap<String, Result<RestartId, ErrorBody>>,
}

impl CommandsHeard {
    fn answer(&self, command_id: &str) -> Option<Result<RestartId, ErrorBody>> {
        self.answers.get(command_id).cloned()
    }

    fn remember(&mut self, command_id: &str, answer: &Result<RestartId, ErrorBody>) {
        if self.answers.contains_key(command_id) {
            return;
        }
        self.answers.insert(command_id.to_owned(), answer.clone());
        self.order.push_back(command_id.to_owned());
        while self.order.len() > COMMANDS_REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
    }
}

/// The log streams a link serves, each a task of its own; they end with
/// the link.
#[derive(Default)]
struct LogStreams {
    running: std::collections::HashMap<String, tokio::task::AbortHandle>,
}

impl LogStreams {
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        agent: &Arc<AgentView>,
        frames: &tokio::sync::mpsc::Sender<AgentFrame>,
        stream_id: String,
        service: String,
        generation: Option<u64>,
        lines: usize,
        follow: bool,
    ) {
        self.running.retain(|_, task| !task.is_finished());
        let frames = frames.clone();
        if self.running.len() >= MAX_LOG_STREAMS || self.running.contains_key(&stream_id) {
            let error = baton_proto::ErrorBody {
                kind: baton_proto::ErrorKind::BadRequest,
                message: format!("this agent serves at most {MAX_LOG_STREAMS} log streams at once"),
                running_restart: None,
            };
            let _ = frames.try_send(AgentFrame::Logs {
                stream_id,
                lines: Vec::new(),
                done: true,
                error: Some(error),
            });
            return;
        }
        let agent = Arc::clone(agent);
        let id = stream_id.clone();
        let lines = lines.min(baton_proto::link::MAX_LOG_LINES);
        let task = tokio::spawn(async move {
            let (past, mut reader) =
                match crate::log_reader::open(&agent, &service, generation, lines).await {
                    Ok(opened) => opened,
                    Err(error) => {
                        let _ = frames
                            .send(AgentFrame::Logs {
                                stream_id: id,
                                lines: Vec::new(),
                                done: true,
                                error: Some(error),
                            })
                            .await;
                        return;
                    }
                };
            let chunks = line_batches(past);
            let count = chunks.len();
            for (index, chunk) in chunks.into_iter().enumerate() {
                let done = !follow && index + 1 == count;
                let sent = frames
                    .send(AgentFrame::Logs {
                        stream_id: id.clone(),
                        lines: chunk,
                        done,
                        error: None,
                    })
                    .await;
                if sent.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            while let Some(line) = reader.next().await {
                let sent = frames
                    .send(AgentFrame::Logs {
                        stream_id: id.clone(),
                        lines: vec![line],
                        done: false,
                        error: None,
                    })
                    .await;
                if sent.is_err() {
                    return;
                }
            }
            let _ = frames
                .send(AgentFrame::Logs {
                    stream_id: id,
                    lines: Vec::new(),
                    done: true,
                    error: None,
                })
                .await;
        });
        self.running.insert(stream_id, task.abort_handle());
    }

    fn cancel(&mut self, stream_id: &str) {
        if let Some(task) = self.running.remove(stream_id) {
            task.abort();
        }
    }
}

impl Drop for LogStreams {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

/// Splits lines into frames of about `BATCH_BYTES` (always at least one
/// frame, the answer, even when there is no line).
fn line_batches(lines: Vec<baton_proto::OutputLine>) -> Vec<Vec<baton_proto::OutputLine>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for line in lines {
        let size = line.weight() + 64;
        if bytes + size > BATCH_BYTES && !out.last().is_none_or(Vec::is_empty) {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = out.last_mut() {
            last.push(line);
        }
    }
    out
}

/// The last status sent to the server, to send only what changed.
struct StatusSent {
    services: Vec<ServiceStatus>,
    at: Option<tokio::time::Instant>,
    /// When the picture was last read from the services.
    built_at: tokio::time::Instant,
    /// The connection counts it was read with.
    counts: Arc<Counts>,
    /// What reading and sending the last status after events took.
    cost: Duration,
}

impl Default for StatusSent {
    fn default() -> Self {
        StatusSent {
            services: Vec::new(),
            at: None,
            built_at: tokio::time::Instant::now(),
            counts: Arc::default(),
            cost: Duration::ZERO,
        }
    }
}

impl StatusSent {
    /// Sends a status when it differs from the last one sent, or when the
    /// last one is older than `resend_after`.
    async fn send_if_changed<S>(
        &mut self,
        sink: &mut S,
        services: Vec<ServiceStatus>,
        resend_after: Duration,
    ) -> Result<(), LinkError>
    where
        S: futures::Sink<Message> + Unpin,
        S::Error: std::error::Error + Send + Sync + 'static,
    {
        self.built_at = tokio::time::Instant::now();
        let stale = self.at.is_none_or(|at| at.elapsed() >= resend_after);
        if services == self.services && !stale {
            return Ok(());
        }
        // Serialized from the frame, then taken back out of it: a thousand
        // services' statuses are not copied for one send.
        let status = AgentFrame::Status { services };
        let message = frame(&status)?;
        if let AgentFrame::Status { services } = status {
            self.services = services;
        }
        send(sink, message).await?;
        self.at = Some(tokio::time::Instant::now());
        Ok(())
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::EventKind;

    #[test]
    fn a_command_heard_again_has_its_first_answer_and_the_oldest_are_forgotten() {
        let mut heard = CommandsHeard::default();
        heard.remember("c0", &Ok(7));
        let busy = ErrorBody {
            kind: baton_proto::ErrorKind::RestartInProgress,
            message: "web is already restarting".into(),
            running_restart: Some(7),
        };
        heard.remember("c1", &Err(busy.clone()));
        assert_eq!(heard.answer("c0"), Some(Ok(7)));
        assert_eq!(heard.answer("c1"), Some(Err(busy)));
        assert_eq!(heard.answer("c2"), None);
        // Remembering an id again keeps its place and its first answer.
        heard.remember("c0", &Ok(8));
        assert_eq!(heard.answer("c0"), Some(Ok(7)));
        for n in 2..=COMMANDS_REMEMBERED {
            heard.remember(&format!("c{n}"), &Ok(n as u64));
        }
        assert_eq!(heard.answers.len(), COMMANDS_REMEMBERED);
        assert_eq!(heard.answer("c0"), None, "the oldest is forgotten");
        assert_eq!(heard.answer("c1").map(|a| a.is_err()), Some(true));
    }

    fn event(seq: u64, reason_bytes: usize) -> Event {
        Event {
            seq,
            at: 0,
            service: "web".into(),
            restart: Some(seq),
            kind: EventKind::RestartStarted {
                reason: Some("r".repeat(reason_bytes)),
                requested_by: None,
            },
        }
    }

    fn json_len(events: &[Event]) -> usize {
        serde_json::to_string(&AgentFrame::Events {
            events: events.to_vec(),
        })
        .unwrap()
        .len()
    }

    #[test]
    fn a_backlog_of_long_reasons_goes_in_frames_the_server_accepts() {
        // The agent's whole log, each event with a 64 KiB reason.
        let events: Vec<Event> = (1..=64).map(|seq| event(seq, 64 * 1024)).collect();
        let frames = batches(&events);
        assert!(frames.len() > 1);
        assert_eq!(frames.iter().map(|f| f.len()).sum::<usize>(), events.len());
        for chunk in &frames {
            assert!(json_len(chunk) < 1024 * 1024, "{} bytes", json_len(chunk));
        }
    }

    #[test]
    fn small_events_go_five_hundred_to_a_frame() {
        let events: Vec<Event> = (1..=1_200).map(|seq| event(seq, 10)).collect();
        let sizes: Vec<usize> = batches(&events).iter().map(|f| f.len()).collect();
        assert_eq!(sizes, [500, 500, 200]);
        assert!(batches(&[]).is_empty());
    }

    /// A thousand services, each restarted once, as `status` shows them.
    fn restarted_services(count: u64) -> Vec<ServiceStatus> {
        use baton_proto::{GenerationInfo, GenerationState, RestartOutcome, RestartReport};
        (0..count)
            .map(|index| {
                let name = format!("service-{index:04}");
                let step = |seq: u64, kind: EventKind| Event {
                    seq: 7 * index + seq,
                    at: 1_764_770_000_000 + seq,
                    service: name.clone(),
                    restart: Some(index + 1),
                    kind,
                };
                let pid = 100_000 + index as u32;
                let steps = vec![
                    step(
                        1,
                        EventKind::RestartStarted {
                            reason: Some("deploy 4711".into()),
                            requested_by: None,
                        },
                    ),
                    step(
                        2,
                        EventKind::GenerationSpawned {
                            generation: 2,
                            pid,
                            program: None,
                        },
                    ),
                    step(
                        3,
                        EventKind::GenerationReady {
                            generation: 2,
                            pid,
                            startup_us: 51_875,
                            program: None,
                        },
                    ),
                    step(
                        4,
                        EventKind::DrainProgress {
                            generation: 1,
                            connections: 3,
                        },
                    ),
                    step(
                        5,
                        EventKind::DrainProgress {
                            generation: 1,
                            connections: 1,
                        },
                    ),
                    step(
                        6,
                        EventKind::DrainProgress {
                            generation: 1,
                            connections: 0,
                        },
                    ),
                    step(
                        7,
                        EventKind::RestartFinished {
                            outcome: RestartOutcome::Succeeded,
                            reason: None,
                            versions: None,
                        },
                    ),
                ];
                ServiceStatus {
                    name: name.clone(),
                    state: baton_proto::ServiceState::Ready,
                    sockets: vec![baton_proto::SocketInfo {
                        name: "http".into(),
                        listen: "tcp://127.0.0.1:40000".into(),
                    }],
                    generations: vec![GenerationInfo {
                        generation: 2,
                        pid,
                        main_pid: None,
                        state: GenerationState::Ready,
                        started_at: 1_764_770_000_000,
                        ready_at: Some(1_764_770_000_052),
                        status_text: Some("serving".into()),
                        connections: Some(12),
                        memory_bytes: Some(52_428_800),
                        memory_source: Some(baton_proto::UsageSource::Processes),
                        cpu_usec: Some(1_234_567_890),
                        cpu_source: Some(baton_proto::UsageSource::Cgroup),
                        instances: Vec::new(),
                        program: None,
                    }],
                    consecutive_crashes: 0,
                    running_restart: None,
                    blocked: None,
                    last_restart: Some(RestartReport {
                        id: index + 1,
                        service: name,
                        reason: Some("deploy 4711".into()),
                        started_at: 1_764_770_000_000,
                        finished_at: Some(1_764_770_000_400),
                        outcome: Some(RestartOutcome::Succeeded),
                        outcome_reason: None,
                        old_generation: Some(1),
                        new_generation: Some(2),
                        connections_cut: None,
                        connections: None,
                        steps,
                        versions: None,
                        output_tail: Vec::new(),
                    }),
                    next_start: None,
                }
            })
            .collect()
    }

    fn status_frame_bytes(services: Vec<ServiceStatus>) -> usize {
        serde_json::to_string(&AgentFrame::Status { services })
            .unwrap()
            .len()
    }

    #[test]
    fn a_thousand_restarted_services_fit_well_within_one_server_frame() {
        let mut services = restarted_services(1_000);
        // With their last restarts, as the link sent them before: past the
        // server's limit, and the link closed.
        assert!(status_frame_bytes(services.clone()) > 1024 * 1024);
        // As `AgentView::services_for_the_server` reads them.
        for service in &mut services {
            service.last_restart = None;
        }
        let bytes = status_frame_bytes(services);
        assert!(bytes < 512 * 1024, "{bytes} bytes");
    }
}
