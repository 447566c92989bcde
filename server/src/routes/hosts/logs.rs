//! `GET /hosts/{host}/services/{name}/logs`: a service's output on one host,
//! read from its agent over the link, as JSON lines (`application/x-ndjson`,
//! one `OutputLine` per line). With `follow=true` the stream stays open and
//! new lines follow; a blank line every 5 s keeps idle proxies and tells
//! the server a client has left. A host linked to another replica is read
//! through it (`log_relay.rs`).

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use baton_proto::ErrorKind;
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Reader;
use crate::domain::validate_host_name;
use crate::error::ApiError;
use crate::fleet::{Fleet, LogChunk};
use crate::log_relay::{LogRelay, LogStream, OpenError};

/// Lines a request may ask of the past (the link's own bound).
pub const MAX_LINES: usize = baton_proto::link::MAX_LOG_LINES;
const DEFAULT_LINES: usize = 100;
/// Follow streams one token may hold open at once.
pub const MAX_FOLLOWS_PER_TOKEN: usize = 8;
/// An agent that does not answer within this long predates log streams or
/// is stuck.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    pub lines: Option<usize>,
    pub generation: Option<u64>,
    #[serde(default)]
    pub follow: bool,
}

/// Frees a follow slot taken before the stream exists.
struct FollowSlot {
    fleet: Arc<Fleet>,
    token: Option<String>,
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        if let Some(token) = &self.token {
            self.fleet.stop_following(token);
        }
    }
}

pub async fn logs(
    reader: Reader,
    path: web::Path<(String, String)>,
    query: web::Query<LogsQuery>,
    fleet: web::Data<Fleet>,
    relay: web::Data<LogRelay>,
) -> Result<HttpResponse, ApiError> {
    let (host, service) = path.into_inner();
    validate_host_name(&host).map_err(ApiError::Unprocessable)?;
    let lines = query.lines.unwrap_or(DEFAULT_LINES);
    if lines > MAX_LINES {
        return Err(ApiError::BadRequest(format!(
            "lines is at most {MAX_LINES}"
        )));
    }
    let fleet: Arc<Fleet> = fleet.into_inner();
    let services = fleet
        .services_of(&host)
        .ok_or_else(|| ApiError::NotFound(format!("no host named {host:?}")))?;
    if !services.iter().any(|s| s.name == service) {
        return Err(ApiError::NotFound(format!(
            "host {host:?} runs no service named {service:?}"
        )));
    }
    let mut slot = FollowSlot {
        fleet: Arc::clone(&fleet),
        token: None,
    };
    if query.follow {
        if !fleet.start_following(&reader.0.token_hash, MAX_FOLLOWS_PER_TOKEN) {
            return Err(ApiError::TooManyRequests(format!(
                "this token follows {MAX_FOLLOWS_PER_TOKEN} log streams already; close one first"
            )));
        }
        slot.token = Some(reader.0.token_hash.clone());
    }
    let mut stream = relay
        .open(&host, &service, query.generation, lines, query.follow)
        .await
        .map_err(|error| match error {
            OpenError::Offline(_) | OpenError::Busy(_) => ApiError::Unavailable(error.to_string()),
            OpenError::Unexpected(error) => ApiError::Unexpected(error),
        })?;
    let first = match tokio::time::timeout(ANSWER_DEADLINE, stream.chunks.recv()).await {
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "the agent of host {host:?} did not answer within {}s (an agent older than log streaming does not)",
                ANSWER_DEADLINE.as_secs()
            )));
        }
        Ok(None) => {
            return Err(ApiError::Unavailable(format!(
                "the link to host {host:?} closed before its agent answered"
            )));
        }
        Ok(Some(LogChunk::Failed(error))) => {
            return Err(match error.kind {
                ErrorKind::UnknownService => ApiError::NotFound(error.message),
                _ => ApiError::Unavailable(error.message),
            });
        }
        Ok(Some(LogChunk::Lines(lines))) => lines,
    };
    let body = futures::stream::unfold(
        Stream {
            first: Some(first),
            stream,
            _slot: slot,
            follow: query.follow,
        },
        |mut state| async move {
            let bytes = state.next().await?;
            Some((Ok::<_, std::convert::Infallible>(bytes), state))
        },
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/x-ndjson"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The response's body. Dropped (finished, or its client gone), it ends
/// the agent's stream and then frees the follow slot.
struct Stream {
    first: Option<Vec<baton_proto::OutputLine>>,
    stream: LogStream,
    _slot: FollowSlot,
    follow: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(lines) = self.first.take().filter(|lines| !lines.is_empty()) {
            return Some(ndjson(&lines));
        }
        loop {
            let chunk = if self.follow {
                match tokio::time::timeout(KEEPALIVE_EVERY, self.stream.chunks.recv()).await {
                    Ok(chunk) => chunk,
                    Err(_) => return Some(Bytes::from_static(b"\n")),
                }
            } else {
                self.stream.chunks.recv().await
            };
            match chunk? {
                LogChunk::Lines(lines) if lines.is_empty() => continue,
                LogChunk::Lines(lines) => return Some(ndjson(&lines)),
                LogChunk::Failed(_) => return None,
            }
        }
    }
}

fn ndjson(lines: &[baton_proto::OutputLine]) -> Bytes {
    let mut out = Vec::new();
    for line in lines {
        if serde_json::to_writer(&mut out, line).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}
