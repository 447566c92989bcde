//! A host's log stream on any replica (`docs/replicas.md`).
//!
//! The replicas share only the database. When the host's link is held by
//! another replica, the one a client asked writes the request
//! (`log_relays`) and an `open_logs` command in the `host_commands` outbox
//! for the link holder; the holder opens the stream with the agent as it
//! does for its own clients and appends what comes to `log_relay_chunks`
//! ([`serve`]); the asker polls the chunks, deletes what it read and renews
//! the request's lease. When its client goes away it deletes the request,
//! and the holder, seeing it gone (or its lease lapsed, if the asker died),
//! stops the stream on the agent. When the link closes the holder writes
//! the stream's end; when the link moves or its replica dies the asker
//! ends the stream itself.
//!
//! Everything is bounded: a chunk row holds at most [`CHUNK_BYTES`] of
//! lines (or one line), a stream at most [`MAX_UNREAD`] bytes its reader
//! has not taken (then the holder stops it), and housekeeping deletes
//! requests whose lease lapsed and chunks older than [`CHUNK_LIFETIME`].

use baton_proto::{ErrorBody, OutputLine};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::domain::now_millis;
use crate::fleet::{Fleet, LogChunk};
use crate::replicas::{COMMAND_LIFETIME, PENDING_COMMANDS_PER_HOST, Replica};
use crate::store::{self, Appended, Db, HostCommandKind, HostCommandRow, LogRelayRequest};

/// How long a request holds without its reader renewing it.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the reader renews the lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often the reader looks for chunks, when nothing wakes it.
pub const READ_EVERY: Duration = Duration::from_millis(120);
/// Chunk rows read per look.
const READ_BATCH: u32 = 64;
/// Lines per chunk row, as JSON: more go in the next row. A single line
/// (16 KiB at most, escaped) gets a row of its own when larger.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// What a stream may hold that its reader has not taken; beyond it the
/// reader fell behind and the holder ends the stream, as a slow reader
/// on the holder's own link loses its stream.
pub const MAX_UNREAD: u64 = 1024 * 1024;
/// How often the holder checks the lease when the agent sends nothing.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Chunks older than this are deleted by housekeeping, read or not.
pub const CHUNK_LIFETIME: Duration = Duration::from_secs(60);
/// Chunks the reader hands to its response ahead of the client.
const CHUNKS_QUEUED: usize = 16;
/// Agent chunks the holder gathers into one round of rows.
const GATHER_MAX: usize = 256;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("host {0:?} is offline")]
    Offline(String),
    #[error("too many commands wait for host {0:?}; try again")]
    Busy(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A stream being read: its chunks, and, when the link is this replica's,
/// the stream to close on the agent when it is dropped (a relayed one is
/// closed by its reader task, which sees the receiver go).
pub struct LogStream {
    pub chunks: mpsc::Receiver<LogChunk>,
    local: Option<(Arc<Fleet>, String)>,
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if let Some((fleet, stream_id)) = &self.local {
            fleet.close_logs(stream_id);
        }
    }
}

/// Opens log streams wherever the host's link is (`web::Data`).
pub struct LogRelay {
    db: Db,
    fleet: Arc<Fleet>,
    replica: Arc<Replica>,
}

impl LogRelay {
    pub fn new(db: Db, fleet: Arc<Fleet>, replica: Arc<Replica>) -> LogRelay {
        LogRelay { db, fleet, replica }
    }

    /// The picture of the links it opens streams by.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Asks the host's agent for a service's output, over this replica's
    /// link or through the replica holding it. The stream ends as
    /// [`Fleet::open_logs`]'s does.
    pub async fn open(
        &self,
        host: &str,
        service: &str,
        generation: Option<u64>,
        lines: usize,
        follow: bool,
    ) -> Result<LogStream, OpenError> {
        let offline = || OpenError::Offline(host.to_owned());
        let link = self
            .fleet
            .link_state(host)
            .filter(|link| link.online)
            .ok_or_else(offline)?;
        if !link.remote {
            let (stream_id, chunks) = self
                .fleet
                .open_logs(host, service, generation, lines, follow)
                .ok_or_else(offline)?;
            return Ok(LogStream {
                chunks,
                local: Some((Arc::clone(&self.fleet), stream_id)),
            });
        }
        let link_id = link.connection.ok_or_else(offline)?;
        let request = LogRelayRequest {
            stream_id: format!("logs-{:016x}", rand::random::<u64>()),
            host: host.to_owned(),
            link_id,
            service: service.to_owned(),
            generation,
            lines,
            follow,
        };
        let now = now_millis();
        store::open_log_relay(&self.db, &request, now, now + millis(LEASE)).await?;
        let queued = store::queue_host_command(
            &self.db,
            &store::NewHostCommand {
                host,
                holder: link.holder.as_deref(),
                link_id,
                kind: HostCommandKind::OpenLogs,
                command_id: Some(&request.stream_id),
                service: Some(service),
                reason: None,
                boot_id: None,
                agent_restart_id: None,
                expires_at: now + millis(COMMAND_LIFETIME),
            },
            now,
            PENDING_COMMANDS_PER_HOST,
        )
        .await;
        if !matches!(queued, Ok(Some(_))) {
            if let Err(error) = store::close_log_relay(&self.db, &request.stream_id).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot delete a log stream's request"
                );
            }
            return Err(match queued {
                Err(error) => error.into(),
                _ => OpenError::Busy(host.to_owned()),
            });
        }
        let (sender, chunks) = mpsc::channel(CHUNKS_QUEUED);
        tokio::spawn(read(
            self.db.clone(),
            Arc::clone(&self.fleet),
            Arc::clone(&self.replica),
            request,
            sender,
        ));
        Ok(LogStream {
            chunks,
            local: None,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The asking replica's side: hands the relayed chunks to the response
/// until the stream ends, the link it was asked on is gone, or the
/// response is dropped; then deletes the request.
async fn read(
    db: Db,
    fleet: Arc<Fleet>,
    replica: Arc<Replica>,
    request: LogRelayRequest,
    sender: mpsc::Sender<LogChunk>,
) {
    let stream_id = request.stream_id.as_str();
    let mut after = 0;
    let mut renewed_at = Instant::now();
    let mut ended = false;
    let mut wakes = replica.log_wakes();
    while !ended && !sender.is_closed() {
        // Seen gone before this read: what its holder wrote before the
        // link closed is read once more, then the stream ends.
        let link_gone = !fleet.link_state(&request.host).is_some_and(|link| {
            link.online && link.remote && link.connection == Some(request.link_id)
        });
        match store::log_chunks(&db, stream_id, after, READ_BATCH).await {
            Ok(rows) => {
                for row in &rows {
                    after = row.id;
                    if let Some(chunk) = decode(row)
                        && sender.send(chunk).await.is_err()
                    {
                        ended = true;
                        break;
                    }
                    if row.done {
                        ended = true;
                        break;
                    }
                }
                let renew = renewed_at.elapsed() >= RENEW_EVERY;
                if !rows.is_empty() || renew {
                    let lease = renew.then(|| now_millis() + millis(LEASE));
                    match store::took_log_chunks(&db, stream_id, after, lease).await {
                        Ok(true) if renew => renewed_at = Instant::now(),
                        Ok(true) => {}
                        // Deleted by housekeeping: the holder stopped.
                        Ok(false) => ended = true,
                        Err(error) => tracing::warn!(
                            error = format!("{error:#}"),
                            "cannot take relayed log chunks"
                        ),
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot read relayed log chunks"
                );
                // The holder has stopped by now.
                if renewed_at.elapsed() >= LEASE {
                    ended = true;
                }
            }
        }
        if link_gone {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(READ_EVERY) => {}
            _ = wakes.changed() => {}
            _ = sender.closed() => {}
        }
    }
    if let Err(error) = store::close_log_relay(&db, stream_id).await {
        // Housekeeping deletes it once its lease lapses.
        tracing::warn!(
            error = format!("{error:#}"),
            "cannot delete a log stream's request"
        );
    }
}

/// A row as the chunk the response reads; `None` for a bare end.
fn decode(row: &store::LogChunkRow) -> Option<LogChunk> {
    if let Some(error) = &row.error {
        return Some(LogChunk::Failed(
            serde_json::from_str::<ErrorBody>(error).unwrap_or_else(|_| ErrorBody {
                kind: baton_proto::ErrorKind::BadRequest,
                message: "the agent refused the log stream".into(),
                running_restart: None,
            }),
        ));
    }
    if row.lines.is_empty() {
        return None;
    }
    match serde_json::from_str::<Vec<OutputLine>>(&row.lines) {
        Ok(lines) => Some(LogChunk::Lines(lines)),
        Err(error) => {
            tracing::warn!(%error, "relayed log lines do not parse; left out");
            None
        }
    }
}

/// The link holder's side of an `open_logs` command: opens the stream on
/// the link the request was for and appends what the agent sends, until
/// the stream ends, the link closes, or nobody reads it any more.
pub async fn serve(db: &Db, fleet: &Arc<Fleet>, row: HostCommandRow) {
    let Some(stream_id) = row.command_id else {
        return;
    };
    let request = match store::log_relay_request(db, &stream_id, now_millis()).await {
        Ok(Some(request)) => request,
        // Its reader gave up already.
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot read a log stream's request"
            );
            return;
        }
    };
    let on_this_link = fleet
        .link_state(&request.host)
        .is_some_and(|link| !link.remote && link.connection == Some(request.link_id));
    let opened = if on_this_link {
        fleet.open_logs(
            &request.host,
            &request.service,
            request.generation,
            request.lines,
            request.follow,
        )
    } else {
        None
    };
    let Some((local_id, mut chunks)) = opened else {
        // The reader's stream ends before any answer: the link closed.
        append(db, &stream_id, "", true, None).await;
        return;
    };
    let _close = CloseOnDrop {
        fleet: Arc::clone(fleet),
        stream_id: local_id,
    };
    loop {
        let first = tokio::select! {
            chunk = chunks.recv() => chunk,
            _ = tokio::time::sleep(CHECK_EVERY) => {
                match store::log_relay_wanted(db, &stream_id, now_millis()).await {
                    Ok(false) => {
                        reader_gone(&stream_id);
                        return;
                    }
                    Ok(true) => continue,
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "cannot read a log stream's lease");
                        continue;
                    }
                }
            }
        };
        let Some(first) = first else {
            // The agent ended the stream, or the link closed.
            append(db, &stream_id, "", true, None).await;
            return;
        };
        // What else waits goes in the same rows.
        let mut gathered = vec![first];
        let mut closed = false;
        while gathered.len() < GATHER_MAX {
            match chunks.try_recv() {
                Ok(chunk) => gathered.push(chunk),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        let mut failure = None;
        for chunk in gathered {
            match chunk {
                LogChunk::Lines(more) => lines.extend(more),
                LogChunk::Failed(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        // At least one row, even empty: the first is the agent's answer.
        for json in rows_of(&lines) {
            match append(db, &stream_id, &json, false, None).await {
                Some(Appended::Stored) => {}
                Some(Appended::Behind) => {
                    tracing::debug!(stream_id, "a relayed log reader fell behind; stream ended");
                    append(db, &stream_id, "", true, None).await;
                    return;
                }
                Some(Appended::Abandoned) => {
                    reader_gone(&stream_id);
                    return;
                }
                None => return,
            }
        }
        if let Some(error) = failure {
            let error = serde_json::to_string(&error).unwrap_or_default();
            append(db, &stream_id, "", true, Some(&error)).await;
            return;
        }
        if closed {
            append(db, &stream_id, "", true, None).await;
            return;
        }
    }
}

fn reader_gone(stream_id: &str) {
    tracing::info!(
        stream_id,
        "a relayed log stream's reader is gone; stopped on the agent"
    );
}

async fn append(
    db: &Db,
    stream_id: &str,
    lines: &str,
    done: bool,
    error: Option<&str>,
) -> Option<Appended> {
    match store::append_log_chunk(db, stream_id, lines, done, error, now_millis(), MAX_UNREAD).await
    {
        Ok(appended) => Some(appended),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot relay log lines; stream ended"
            );
            None
        }
    }
}

/// `lines` as JSON arrays of at most [`CHUNK_BYTES`] each (a longer line
/// alone); one empty array when there are none.
fn rows_of(lines: &[OutputLine]) -> Vec<String> {
    let mut rows = Vec::new();
    let mut row = String::from("[");
    for line in lines {
        let Ok(json) = serde_json::to_string(line) else {
            continue;
        };
        if row.len() > 1 && row.len() + json.len() + 2 > CHUNK_BYTES {
            row.push(']');
            rows.push(std::mem::replace(&mut row, String::from("[")));
        }
        if row.len() > 1 {
            row.push(',');
        }
        row.push_str(&json);
    }
    if row.len() > 1 || rows.is_empty() {
        row.push(']');
        rows.push(row);
    }
    rows
}

/// Stops the holder's stream on the agent however [`serve`] ends.
struct CloseOnDrop {
    fleet: Arc<Fleet>,
    stream_id: String,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.fleet.close_logs(&self.stream_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn line(text: &str) -> OutputLine {
        OutputLine {
            time: 0,
            generation: 1,
            stream: baton_proto::OutputStream::Stdout,
            text: text.to_owned(),
        }
    }

    #[test]
    fn lines_are_cut_into_bounded_rows_in_order() {
        let long = "x".repeat(10 * 1024);
        let lines: Vec<OutputLine> = (0..20).map(|i| line(&format!("{i} {long}"))).collect();
        let rows = rows_of(&lines);
        assert!(rows.len() >= 3, "{}", rows.len());
        let mut back = Vec::new();
        for row in &rows {
            assert!(row.len() <= CHUNK_BYTES, "{}", row.len());
            back.extend(serde_json::from_str::<Vec<OutputLine>>(row).unwrap());
        }
        assert_eq!(back, lines);
        assert_eq!(rows_of(&[]), vec!["[]".to_string()]);
    }
}
