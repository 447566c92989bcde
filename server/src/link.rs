//! The server's end of the agent link (`proto::link`): one WebSocket per
//! agent, JSON text frames. The first frame must be `Hello`; the server
//! answers `Welcome` with the highest sequence it has stored for that agent
//! lifetime, stores the events that follow (duplicates dropped), and
//! acknowledges each batch once it is committed.
//!
//! An agent token speaks for one host: a hello naming another is refused
//! before anything is stored or any link replaced. Within a link, the
//! events must follow on from what this host stored: a hole below the
//! sequence the agent announced in its hello (events it evicted while the
//! server was away) is recorded as a gap; a jump beyond it is refused, since
//! the agent cannot have produced that event without the ones before it.

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use baton_proto::link::{AgentFrame, LINK_VERSION, Refusal, ServerFrame};
use baton_proto::{Event, ServiceStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent_input::{self, FrameError};
use crate::auth::{Principal, TokenCache};
use crate::domain::{now_millis, validate_host_name};
use crate::fleet::{CommandAnswer, Fleet};
use crate::metrics::{Metrics, SequenceAnomaly};
use crate::settings::Timeouts;
use crate::status_writer::StatusWriter;
use crate::store::{self, Db, EventGap};
use tokio::sync::oneshot;

/// The largest frame an agent may send. An agent sends events in batches of
/// at most 500 (a few hundred bytes each; reasons the server sends are at
/// most 1024 characters) and a status of a few KiB per service (its
/// `STATUS=` text is capped at 256 bytes), so a bigger frame is not an
/// agent's; the link closes before the frame is read.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Agents report every second, and connection counts change with most
/// readings; `GET /services` and the other replicas read the database, so a
/// changed status is written at once and an unchanged one refreshed at most
/// this often.
const STATUS_PERSIST_INTERVAL: Duration = Duration::from_secs(5);

/// A status write carries only the services that changed since the link's
/// last one; this often it carries them all, so the fleet's list cannot
/// stay apart from the agent's word for long (an older link of the same
/// host on another replica may have written in between).
const STATUS_REWRITE_INTERVAL: Duration = Duration::from_secs(60);

// One value at a time per link, moved once: boxing the frame would cost an
// allocation per frame to save stack nobody misses.
#[allow(clippy::large_enum_variant)]
enum Incoming {
    Frame(AgentFrame),
    /// A ping, pong or unparsable message: proof of life, nothing to do.
    Noise,
    /// A frame no honest agent sends (too large, a forged service name):
    /// the link closes with this reason.
    Refused(String),
    Closed,
}

async fn receive(
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
    host: &str,
) -> Incoming {
    match stream.recv().await {
        None => Incoming::Closed,
        Some(Err(actix_ws::ProtocolError::Overflow)) => Incoming::Refused(format!(
            "a frame is larger than the limit of {MAX_FRAME_BYTES} bytes"
        )),
        Some(Err(error)) => {
            tracing::warn!(host, %error, "agent link protocol error");
            Incoming::Closed
        }
        Some(Ok(message)) => {
            let bytes: &[u8] = match &message {
                AggregatedMessage::Text(text) => text.as_bytes(),
                AggregatedMessage::Binary(bytes) => bytes,
                AggregatedMessage::Ping(payload) => {
                    let _ = session.pong(payload).await;
                    return Incoming::Noise;
                }
                AggregatedMessage::Pong(_) => return Incoming::Noise,
                AggregatedMessage::Close(_) => return Incoming::Closed,
            };
            match agent_input::parse_frame(bytes) {
                Ok(frame) => Incoming::Frame(frame),
                Err(FrameError::Refused(reason)) => Incoming::Refused(reason),
                Err(error) => {
                    tracing::warn!(host, %error, "unparsable frame from an agent; ignored");
                    Incoming::Noise
                }
            }
        }
    }
}

async fn send(session: &mut Session, frame: &ServerFrame) -> bool {
    match serde_json::to_string(frame) {
        Ok(text) => session.text(text).await.is_ok(),
        Err(_) => false,
    }
}

async fn refuse(session: Session, message: String) {
    refuse_because(session, message, Refusal::Other).await
}

/// Says why in a `Refused` frame and again as the close frame's reason, so
/// an agent that reads only one of them still learns it.
async fn refuse_because(mut session: Session, message: String, refusal: Refusal) {
    tracing::warn!(%message, ?refusal, "agent link refused");
    let reason = CloseReason {
        code: CloseCode::Policy,
        description: Some(close_description(&message)),
    };
    let _ = send(&mut session, &ServerFrame::Refused { message, refusal }).await;
    let _ = session.close(Some(reason)).await;
}

/// A close frame is a control frame: its payload (2 bytes of code and the
/// reason) must fit in 125 bytes.
fn close_description(message: &str) -> String {
    let mut end = message.len().min(123);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// What a link works with.
pub struct LinkContext {
    pub db: Db,
    pub fleet: Arc<Fleet>,
    pub tokens: Arc<TokenCache>,
    pub metrics: Arc<Metrics>,
    pub timeouts: Timeouts,
    /// This replica's id: the database says which replica holds each
    /// host's link, and which stored each event.
    pub replica_id: Arc<str>,
    pub statuses: StatusWriter,
}

/// The host the agent token speaks for. A token from before tokens named
/// their host is bound to the first host it names, and pinned there.
async fn host_of_token(
    context: &LinkContext,
    token: &Principal,
    hello_host: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(host) = &token.host {
        return Ok(Some(host.clone()));
    }
    let bound = context
        .tokens
        .bind_host(&token.token_hash, hello_host)
        .await?;
    if bound.as_deref() == Some(hello_host) {
        tracing::warn!(
            host = hello_host,
            token = token.name,
            "an agent token that names no host is now bound to this host, the first it named; \
             other hosts sharing it are refused: give each host its own token \
             (baton-server token create --role agent --host NAME)"
        );
    }
    Ok(bound)
}

/// `token` is the agent token the link was opened with; the link speaks only
/// for its host and ends once the token is revoked.
pub async fn run(
    context: LinkContext,
    token: Principal,
    mut session: Session,
    mut stream: AggregatedMessageStream,
) {
    let token_hash = token.token_hash.clone();
    let silence = context.timeouts.agent_silence;
    let hello = match tokio::time::timeout(silence, receive(&mut session, &mut stream, "?")).await {
        Ok(Incoming::Frame(frame)) => frame,
        Ok(Incoming::Refused(reason)) => return refuse(session, reason).await,
        Ok(_) => return refuse(session, "the first frame must be hello".into()).await,
        Err(_) => return refuse(session, "no hello in time".into()).await,
    };
    let AgentFrame::Hello {
        version,
        host,
        agent_version,
        boot_id,
        last_seq,
        services,
    } = hello
    else {
        return refuse(session, "the first frame must be hello".into()).await;
    };
    if version != LINK_VERSION {
        return refuse(
            session,
            format!("link version {version} is not supported (this server speaks {LINK_VERSION})"),
        )
        .await;
    }
    if let Err(message) = validate_host_name(&host) {
        return refuse(session, message).await;
    }
    if boot_id.is_empty() {
        return refuse(session, "empty boot_id".into()).await;
    }
    // Checked before anything is stored or a link replaced: a refused hello
    // leaves the real host's link alone.
    match host_of_token(&context, &token, &host).await {
        Ok(Some(own)) if own == host => {}
        Ok(Some(own)) => {
            tracing::warn!(
                host,
                token = token.name,
                token_host = own,
                "an agent token spoke for another host than its own"
            );
            return refuse_because(
                session,
                format!("this agent token speaks for host {own:?}, not {host:?}"),
                Refusal::WrongHost,
            )
            .await;
        }
        Ok(None) => return refuse(session, "the token was revoked".into()).await,
        Err(error) => {
            tracing::error!(
                host,
                error = format!("{error:#}"),
                "cannot read the agent token's host"
            );
            let _ = session.close(None).await;
            return;
        }
    }

    let stored = match store::max_seq(&context.db, &host, &boot_id).await {
        Ok(seq) => seq,
        Err(error) => {
            tracing::error!(
                host,
                error = format!("{error:#}"),
                "cannot read the agent's last event"
            );
            let _ = session.close(None).await;
            return;
        }
    };
    // The agent is the authority on its own sequence: rows of this lifetime
    // beyond the last event it says it produced were not sent by it (forged
    // before tokens named their host). Resuming after them would drop its
    // next events, and a command's restart could be looked up among them:
    // they go, loudly.
    let stored = if stored > last_seq {
        context
            .metrics
            .sequence_anomaly(SequenceAnomaly::AheadOfAgent);
        match store::forget_events_after(&context.db, &host, &boot_id, last_seq).await {
            Ok(forgotten) => tracing::error!(
                host,
                boot_id,
                stored,
                last_seq,
                forgotten,
                "the server held events of this agent lifetime beyond the last the agent produced; \
                 they were forgotten and the agent resumes after its own last event"
            ),
            Err(error) => {
                tracing::error!(
                    host,
                    error = format!("{error:#}"),
                    "cannot forget events the agent never produced"
                );
                let _ = session.close(None).await;
                return;
            }
        }
        last_seq
    } else {
        stored
    };
    let now = now_millis();
    if let Err(error) =
        store::upsert_host(&context.db, &host, &agent_version, &boot_id, now, &services).await
    {
        tracing::error!(host, error = format!("{error:#}"), "cannot store the host");
        let _ = session.close(None).await;
        return;
    }
    let (connection, mut frames) = context.fleet.connect(
        &host,
        &agent_version,
        &boot_id,
        last_seq,
        stored,
        services.clone(),
    );
    if let Err(error) = store::hold_host_link(
        &context.db,
        &host,
        &context.replica_id,
        connection,
        last_seq,
        stored,
    )
    .await
    {
        tracing::error!(
            host,
            error = format!("{error:#}"),
            "cannot record the host's link"
        );
        context.fleet.disconnect(&host, connection);
        let _ = session.close(None).await;
        return;
    }
    tracing::info!(
        host,
        agent_version,
        boot_id,
        last_seq,
        resume_after = stored,
        "agent connected"
    );
    if !send(
        &mut session,
        &ServerFrame::Welcome {
            resume_after: stored,
        },
    )
    .await
    {
        context.fleet.disconnect(&host, connection);
        return;
    }

    let mut sequence = Sequence::new(stored, last_seq);
    let mut statuses = StatusWrites::new(services);
    let mut deadline = tokio::time::Instant::now() + silence;
    let mut token_check = tokio::time::interval(context.timeouts.token_recheck);
    token_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = token_check.tick() => match context.tokens.check(&token_hash).await {
                Ok(Some(_)) => {}
                Ok(None) => break "its token was revoked",
                // The database being away says nothing about the token.
                Err(error) => tracing::warn!(host, error = format!("{error:#}"), "cannot check the agent's token"),
            },
            frame = frames.recv() => match frame {
                Some(frame) => {
                    if !send(&mut session, &frame).await {
                        break "send failed";
                    }
                }
                None => break "replaced by a newer link",
            },
            _ = tokio::time::sleep_until(deadline) => break "silent for too long",
            written = statuses.written(), if statuses.writing() => {
                statuses.answered(written, &context.statuses, &host).await;
            }
            incoming = receive(&mut session, &mut stream, &host) => {
                deadline = tokio::time::Instant::now() + silence;
                match incoming {
                    Incoming::Closed => break "closed",
                    Incoming::Refused(message) => {
                        tracing::warn!(host, %message, "agent frame refused");
                        let _ = send(&mut session, &ServerFrame::Refused {
                            message,
                            refusal: baton_proto::link::Refusal::Other,
                        }).await;
                        break "frame refused";
                    }
                    Incoming::Noise => context.fleet.touch(&host, connection),
                    Incoming::Frame(AgentFrame::Hello { .. }) => break "second hello",
                    Incoming::Frame(AgentFrame::Events { events }) => {
                        let Some(max_seq) = events.iter().map(|e| e.seq).max() else {
                            continue;
                        };
                        let gaps = match sequence.take(&events) {
                            Ok(gaps) => gaps,
                            Err(jump) => {
                                context.metrics.sequence_anomaly(SequenceAnomaly::Jump);
                                tracing::warn!(host, boot_id, after = jump.after_seq, got = jump.next_seq, announced = last_seq, "an event sequence jumped beyond what the agent announced; batch refused");
                                break "its event sequence jumped ahead";
                            }
                        };
                        for gap in &gaps {
                            context.metrics.sequence_anomaly(SequenceAnomaly::Gap);
                            tracing::warn!(host, boot_id, after = gap.after_seq, next = gap.next_seq, "events missing from the agent's sequence; gap recorded");
                        }
                        match store::store_events_by(&context.db, Some(&context.replica_id), &host, &boot_id, &events, &gaps).await {
                            Ok(new_events) => {
                                tracing::debug!(host, received = events.len(), new = new_events.len(), max_seq, "events stored");
                                // Counted only as first stored: a resend is no new drain.
                                for event in &new_events {
                                    if let Some(tally) = crate::domain::drain_tally(&event.kind) {
                                        context.metrics.connections_tallied(&event.service, tally);
                                    }
                                }
                                if !gaps.is_empty() {
                                    context.fleet.events_missing(&host, &boot_id);
                                }
                                context.fleet.events_stored(&host, connection, &boot_id, max_seq, new_events);
                                if !send(&mut session, &ServerFrame::Ack { seq: max_seq }).await {
                                    break "send failed";
                                }
                            }
                            Err(error) => {
                                // Not acknowledged: the agent resends after it reconnects.
                                tracing::error!(host, error = format!("{error:#}"), "cannot store events");
                                break "storage error";
                            }
                        }
                    }
                    Incoming::Frame(AgentFrame::Status { services }) => {
                        if !context.fleet.update_status(&host, connection, services.clone()) {
                            break "replaced by a newer link";
                        }
                        statuses.offer(services, &context.statuses, &host).await;
                    }
                    Incoming::Frame(AgentFrame::RestartStarted { command_id, result }) => {
                        context.fleet.touch(&host, connection);
                        let answer = match result {
                            Ok(id) => CommandAnswer::Started(id),
                            Err(error) => CommandAnswer::Refused(error),
                        };
                        context.fleet.command_answered(&host, connection, &command_id, answer);
                    }
                    Incoming::Frame(AgentFrame::Logs { stream_id, lines, done, error }) => {
                        context.fleet.touch(&host, connection);
                        context.fleet.logs_arrived(&host, connection, &stream_id, lines, done, error);
                    }
                    Incoming::Frame(AgentFrame::Report { restart_id, report }) => {
                        context.fleet.touch(&host, connection);
                        context.fleet.report_answered(&host, connection, restart_id, report);
                    }
                }
            }
        }
    };
    tracing::info!(host, reason, "agent link closed");
    // Its status written after the release would mark the host online.
    statuses.finish().await;
    if context.fleet.disconnect(&host, connection) {
        let services = context.fleet.services_of(&host).unwrap_or_default();
        // Offline only if no newer link (on any replica) holds the host.
        if let Err(error) =
            store::release_host_link(&context.db, &host, connection, now_millis(), &services).await
        {
            tracing::warn!(
                host,
                error = format!("{error:#}"),
                "cannot store the host's status"
            );
        }
    }
    let _ = session.close(None).await;
}

/// What a link wrote of its host's status, and the write under way. The
/// link goes on reading while a status is written: a database that is slow
/// for a while must not keep it from answering the agent's pings (the
/// agent would drop the link after 5 s) or from relaying a command.
struct StatusWrites {
    /// What the database holds, as far as this link knows.
    persisted: Vec<ServiceStatus>,
    persisted_at: Instant,
    written_whole_at: Instant,
    /// The write under way, what it writes, and whether whole.
    writing: Option<(oneshot::Receiver<bool>, Vec<ServiceStatus>, bool)>,
    /// The newest status that came during it, offered once it is answered.
    next: Option<Vec<ServiceStatus>>,
}

impl StatusWrites {
    /// The hello wrote every service.
    fn new(services: Vec<ServiceStatus>) -> StatusWrites {
        StatusWrites {
            persisted: services,
            persisted_at: Instant::now(),
            written_whole_at: Instant::now(),
            writing: None,
            next: None,
        }
    }

    fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Whether the write under way was written; pending when there is none.
    async fn written(&mut self) -> bool {
        match &mut self.writing {
            Some((written, _, _)) => written.await.unwrap_or(false),
            None => std::future::pending().await,
        }
    }

    /// A status the agent sent: written when it changed, or when the last
    /// write is older than [`STATUS_PERSIST_INTERVAL`]; kept for later
    /// while a write is under way.
    async fn offer(&mut self, services: Vec<ServiceStatus>, writer: &StatusWriter, host: &str) {
        if self.writing.is_some() {
            self.next = Some(services);
            return;
        }
        if services == self.persisted && self.persisted_at.elapsed() < STATUS_PERSIST_INTERVAL {
            return;
        }
        let whole = self.written_whole_at.elapsed() >= STATUS_REWRITE_INTERVAL;
        let previous = (!whole).then_some(self.persisted.as_slice());
        let written = writer.submit(host, &services, previous).await;
        self.writing = Some((written, services, whole));
    }

    async fn answered(&mut self, written: bool, writer: &StatusWriter, host: &str) {
        let Some((_, services, whole)) = self.writing.take() else {
            return;
        };
        if written {
            self.persisted = services;
            if whole {
                self.written_whole_at = Instant::now();
            }
        }
        self.persisted_at = Instant::now();
        if let Some(next) = self.next.take() {
            self.offer(next, writer, host).await;
        }
    }

    /// Waits for the write under way; the status kept for later is dropped.
    async fn finish(&mut self) {
        if let Some((written, _, _)) = self.writing.take() {
            let _ = written.await;
        }
    }
}

/// One link's view of the agent's event sequence, without I/O.
#[derive(Debug)]
struct Sequence {
    /// The highest sequence stored for this agent lifetime, or received on
    /// this link.
    last: u64,
    /// The agent's `last_seq` at its hello: it may have evicted events up to
    /// there, never beyond.
    announced: u64,
}

impl Sequence {
    fn new(stored: u64, announced: u64) -> Sequence {
        Sequence {
            last: stored,
            announced,
        }
    }

    /// Takes a batch in; the gaps it leaves (to record), or the jump that
    /// refuses it whole. An event at or below the last one is a resend,
    /// which the store drops.
    fn take(&mut self, events: &[Event]) -> Result<Vec<EventGap>, EventGap> {
        let mut last = self.last;
        let mut gaps = Vec::new();
        for event in events {
            if event.seq <= last {
                continue;
            }
            if event.seq > last + 1 {
                let gap = EventGap {
                    after_seq: last,
                    next_seq: event.seq,
                };
                if event.seq > self.announced {
                    return Err(gap);
                }
                gaps.push(gap);
            }
            last = event.seq;
        }
        self.last = last;
        Ok(gaps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::EventKind;

    fn events(seqs: &[u64]) -> Vec<Event> {
        seqs.iter()
            .map(|&seq| Event {
                seq,
                at: seq,
                service: "web".into(),
                restart: None,
                kind: EventKind::RestartStarted {
                    reason: None,
                    requested_by: None,
                },
            })
            .collect()
    }

    fn gap(after_seq: u64, next_seq: u64) -> EventGap {
        EventGap {
            after_seq,
            next_seq,
        }
    }

    #[test]
    fn events_that_follow_on_leave_no_gap() {
        let mut sequence = Sequence::new(3, 5);
        assert_eq!(sequence.take(&events(&[4, 5, 6, 7])), Ok(vec![]));
        assert_eq!(sequence.take(&events(&[8])), Ok(vec![]));
    }

    #[test]
    fn a_resend_is_no_gap_and_no_jump() {
        let mut sequence = Sequence::new(6, 6);
        assert_eq!(sequence.take(&events(&[1, 2, 3, 7])), Ok(vec![]));
    }

    #[test]
    fn a_hole_below_the_announced_sequence_is_a_gap() {
        let mut sequence = Sequence::new(2, 100);
        assert_eq!(
            sequence.take(&events(&[40, 41, 99])),
            Ok(vec![gap(2, 40), gap(41, 99)])
        );
        assert_eq!(sequence.take(&events(&[100, 101])), Ok(vec![]));
    }

    #[test]
    fn a_jump_beyond_the_announced_sequence_is_refused_and_moves_nothing() {
        let mut sequence = Sequence::new(5, 5);
        assert_eq!(
            sequence.take(&events(&[6, 1_000_001])),
            Err(gap(6, 1_000_001))
        );
        assert_eq!(sequence.take(&events(&[6, 7])), Ok(vec![]));
    }
}
