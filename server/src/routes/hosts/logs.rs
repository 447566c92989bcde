//! `GET /hosts/{host}/services/{name}/logs`: a service's output on one host,
//! read from its agent over the link, as JSON lines (`application/x-ndjson`,
//! one `OutputLine` per line). With `follow=true` the stream stays open and
//! new lines follow; a blank line every 5 s keeps idle proxies and tells
//! the server a client has left.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use baton_proto::ErrorKind;
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::auth::Reader;
use crate::domain::validate_host_name;
use crate::error::ApiError;
use crate::fleet::{Fleet, LogChunk};

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

/// Ends the agent's stream and frees the follow slot when the response is
/// dropped: finished, or its client gone.
struct StreamGuard {
    fleet: Arc<Fleet>,
    stream_id: String,
    follower: Option<String>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.fleet.close_logs(&self.stream_id);
        if let Some(token) = &self.follower {
            self.fleet.stop_following(token);
        }
    }
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
    let (stream_id, mut chunks) = fleet
        .open_logs(&host, &service, query.generation, lines, query.follow)
        .ok_or_else(|| ApiError::Unavailable(format!("host {host:?} is offline")))?;
    let guard = StreamGuard {
        fleet: Arc::clone(&fleet),
        stream_id,
        follower: slot.token.take(),
    };
    let first = match tokio::time::timeout(ANSWER_DEADLINE, chunks.recv()).await {
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
            chunks,
            _guard: guard,
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

struct Stream {
    first: Option<Vec<baton_proto::OutputLine>>,
    chunks: mpsc::Receiver<LogChunk>,
    _guard: StreamGuard,
    follow: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(lines) = self.first.take().filter(|lines| !lines.is_empty()) {
            return Some(ndjson(&lines));
        }
        loop {
            let chunk = if self.follow {
                match tokio::time::timeout(KEEPALIVE_EVERY, self.chunks.recv()).await {
                    Ok(chunk) => chunk,
                    Err(_) => return Some(Bytes::from_static(b"\n")),
                }
            } else {
                self.chunks.recv().await
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
