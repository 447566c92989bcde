//! The local control socket: newline-delimited JSON of `baton_proto`, one
//! request at a time per connection. Mode 0600 and a peer uid check: only the
//! agent's own user (and root) may drive it.

use crate::view::{AgentView, Counting};
use baton_proto::{
    AgentMessage, ClientMessage, ErrorBody, ErrorKind, EventKind, PROTOCOL_VERSION, Request,
    Response,
};
use futures::{SinkExt, StreamExt};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::codec::{Framed, LinesCodec};

const MAX_LINE: usize = 64 * 1024;
/// A `status` shows connections counted at most this long before it was
/// asked: a burst of requests (a script polling, several operators) costs
/// one count of every service.
const STATUS_COUNT_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);

/// Binds the control socket, replacing a stale one but never a live agent's.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another agent is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, agent: Arc<AgentView>) {
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            _ = agent.shutting_down.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "control connection from another user refused"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control connection without credentials refused");
                continue;
            }
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, agent).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

type Conn = Framed<UnixStream, LinesCodec>;

async fn send(conn: &mut Conn, body: Response) -> io::Result<()> {
    let line = serde_json::to_string(&AgentMessage::new(body)).map_err(io::Error::other)?;
    conn.send(line).await.map_err(io::Error::other)
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorBody {
        kind,
        message: message.into(),
        running_restart: None,
    })
}

async fn handle_connection(stream: UnixStream, agent: Arc<AgentView>) -> io::Result<()> {
    let mut conn = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    while let Some(line) = conn.next().await {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                send(&mut conn, error(ErrorKind::BadRequest, e.to_string())).await?;
                return Ok(());
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: ClientMessage = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                // Tell a newer client the version problem rather than a parse error.
                let version = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("version").and_then(|v| v.as_u64()));
                let response = match version {
                    Some(v) if v != u64::from(PROTOCOL_VERSION) => error(
                        ErrorKind::UnsupportedVersion,
                        format!(
                            "protocol version {v} is not supported; this agent speaks {PROTOCOL_VERSION}"
                        ),
                    ),
                    _ => error(ErrorKind::BadRequest, format!("malformed request: {e}")),
                };
                send(&mut conn, response).await?;
                continue;
            }
        };
        if message.version != PROTOCOL_VERSION {
            let response = error(
                ErrorKind::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this agent speaks {PROTOCOL_VERSION}",
                    message.version
                ),
            );
            send(&mut conn, response).await?;
            continue;
        }
        handle_request(&mut conn, &agent, message.request).await?;
    }
    Ok(())
}

async fn handle_request(conn: &mut Conn, agent: &AgentView, request: Request) -> io::Result<()> {
    match request {
        Request::Status => {
            let status = agent.status(Counting::Fresh(STATUS_COUNT_MAX_AGE)).await;
            send(conn, Response::Status(status)).await
        }
        Request::Reload => match agent.reload().await {
            Ok(summary) => send(conn, Response::Reloaded(summary)).await,
            Err(body) => send(conn, Response::Error(body)).await,
        },
        Request::GetRestart { id } => match agent.events.restart(id) {
            Some(report) => send(conn, Response::Restart(report)).await,
            None => {
                send(
                    conn,
                    error(
                        ErrorKind::UnknownRestart,
                        format!("no restart with id {id}"),
                    ),
                )
                .await
            }
        },
        Request::Restart {
            service,
            follow,
            reason,
        } => {
            // Subscribed before the restart starts, so no step can be missed.
            let mut live = agent.events.subscribe();
            let id = match agent.restart(&service, reason).await {
                Ok(id) => id,
                Err(body) => return send(conn, Response::Error(body)).await,
            };
            send(conn, Response::RestartAccepted { id }).await?;
            if !follow {
                return Ok(());
            }
            loop {
                match live.recv().await {
                    Ok(event) if event.restart == Some(id) => {
                        let done = matches!(event.kind, EventKind::RestartFinished { .. });
                        send(conn, Response::Event(event)).await?;
                        if done {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        // Too slow a reader: the report still has every step.
                        if agent
                            .events
                            .restart(id)
                            .is_some_and(|r| r.outcome.is_some())
                        {
                            break;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            match agent.events.restart(id) {
                Some(report) => send(conn, Response::Restart(report)).await,
                None => Ok(()),
            }
        }
        Request::Logs {
            service,
            generation,
            lines,
            follow,
        } => follow_logs(conn, agent, &service, generation, lines, follow).await,
        Request::Events { after, follow } => {
            let (backlog, mut live) = agent.events.since(after);
            let mut last = after;
            for event in backlog {
                last = event.seq;
                send(conn, Response::Event(event)).await?;
            }
            if !follow {
                return Ok(());
            }
            loop {
                match live.recv().await {
                    Ok(event) if event.seq > last => {
                        last = event.seq;
                        send(conn, Response::Event(event)).await?;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let (missed, _) = agent.events.since(last);
                        for event in missed {
                            last = event.seq;
                            send(conn, Response::Event(event)).await?;
                        }
                    }
                    Err(RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

/// Most lines one `logs` request is answered from the past.
const MAX_LOG_LINES: usize = 100_000;

/// `baton logs`: the last lines, then (with `follow`) every new one.
async fn follow_logs(
    conn: &mut Conn,
    agent: &AgentView,
    service: &str,
    generation: Option<u64>,
    lines: usize,
    follow: bool,
) -> io::Result<()> {
    let (past, mut reader) =
        match crate::log_reader::open(agent, service, generation, lines.min(MAX_LOG_LINES)).await {
            Ok(opened) => opened,
            Err(body) => return send(conn, Response::Error(body)).await,
        };
    for line in past {
        send(conn, Response::Output(line)).await?;
    }
    if !follow {
        return Ok(());
    }
    while let Some(line) = reader.next().await {
        send(conn, Response::Output(line)).await?;
    }
    Ok(())
}
