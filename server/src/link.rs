//! The server's end of the agent link (`proto::link`): one WebSocket per
//! agent, JSON text frames. The first frame must be `Hello`; the server
//! answers `Welcome` with the highest sequence it has stored for that agent
//! lifetime, stores the events that follow (duplicates dropped), and
//! acknowledges each batch once it is committed.

use actix_ws::{AggregatedMessage, AggregatedMessageStream, Session};
use baton_proto::ServiceStatus;
use baton_proto::link::{AgentFrame, LINK_VERSION, ServerFrame};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent_input::{self, FrameError};
use crate::auth::TokenCache;
use crate::domain::{now_millis, validate_host_name};
use crate::fleet::{CommandAnswer, Fleet};
use crate::settings::Timeouts;
use crate::store::{self, Db};

/// The largest frame an agent may send. An agent sends events in batches of
/// at most 500 (a few hundred bytes each; reasons the server sends are at
/// most 1024 characters) and a status of a few KiB per service (its
/// `STATUS=` text is capped at 256 bytes), so a bigger frame is not an
/// agent's; the link closes before the frame is read.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Agents report every second; the database needs a copy only for
/// `GET /services` after a server restart, so connection-count churn is
/// written at most this often.
const STATUS_PERSIST_INTERVAL: Duration = Duration::from_secs(5);

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

async fn refuse(mut session: Session, message: String) {
    tracing::warn!(%message, "agent link refused");
    let _ = send(&mut session, &ServerFrame::Refused { message }).await;
    let _ = session.close(None).await;
}

/// What a link works with.
pub struct LinkContext {
    pub db: Db,
    pub fleet: Arc<Fleet>,
    pub tokens: Arc<TokenCache>,
    pub timeouts: Timeouts,
}

/// `token_hash` is the agent token the link was opened with; the link ends
/// once that token is revoked.
pub async fn run(
    context: LinkContext,
    token_hash: String,
    mut session: Session,
    mut stream: AggregatedMessageStream,
) {
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

    let mut persisted_services = services;
    let mut persisted_at = Instant::now();
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
            incoming = receive(&mut session, &mut stream, &host) => {
                deadline = tokio::time::Instant::now() + silence;
                match incoming {
                    Incoming::Closed => break "closed",
                    Incoming::Refused(message) => {
                        tracing::warn!(host, %message, "agent frame refused");
                        let _ = send(&mut session, &ServerFrame::Refused { message }).await;
                        break "frame refused";
                    }
                    Incoming::Noise => context.fleet.touch(&host, connection),
                    Incoming::Frame(AgentFrame::Hello { .. }) => break "second hello",
                    Incoming::Frame(AgentFrame::Events { events }) => {
                        let Some(max_seq) = events.iter().map(|e| e.seq).max() else {
                            continue;
                        };
                        match store::store_events(&context.db, &host, &boot_id, &events).await {
                            Ok(new_events) => {
                                tracing::debug!(host, received = events.len(), new = new_events.len(), max_seq, "events stored");
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
                        if services != persisted_services || persisted_at.elapsed() >= STATUS_PERSIST_INTERVAL {
                            persist_status(&context, &host, true, &services).await;
                            persisted_services = services;
                            persisted_at = Instant::now();
                        }
                    }
                    Incoming::Frame(AgentFrame::RestartStarted { command_id, result }) => {
                        context.fleet.touch(&host, connection);
                        let answer = match result {
                            Ok(id) => CommandAnswer::Started(id),
                            Err(error) => CommandAnswer::Refused(error),
                        };
                        context.fleet.command_answered(&command_id, answer);
                    }
                }
            }
        }
    };
    tracing::info!(host, reason, "agent link closed");
    if context.fleet.disconnect(&host, connection) {
        let services = context.fleet.services_of(&host).unwrap_or_default();
        persist_status(&context, &host, false, &services).await;
    }
    let _ = session.close(None).await;
}

async fn persist_status(
    context: &LinkContext,
    host: &str,
    online: bool,
    services: &[ServiceStatus],
) {
    if let Err(error) =
        store::save_host_status(&context.db, host, now_millis(), online, services).await
    {
        tracing::warn!(
            host,
            error = format!("{error:#}"),
            "cannot store the host's status"
        );
    }
}
