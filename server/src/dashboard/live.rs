//! Server-sent events for pages that change while someone watches them. Each
//! event carries the re-rendered HTML of the page's live part, produced by
//! the same template as the first render, so the browser script only swaps
//! it in and there is one way to draw a restart, not two.
//!
//! A stream re-renders when the fleet says something changed (an agent's
//! status, stored events, a restart's step: `Fleet::watch_changes`), and
//! sends only when the HTML changed: a quiet fleet costs no render. Relative
//! times ("up for 3 min") move on a slow clock. Every `--token-recheck` the
//! stream checks that its session is still open and its token not revoked,
//! and ends otherwise; a session holds at most
//! [`STREAMS_PER_SESSION`](crate::dashboard::session::STREAMS_PER_SESSION)
//! streams at once.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use bytes::Bytes;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::auth::TokenCache;
use crate::dashboard::pages::{OverviewQuery, overview_live, restart_detail, service_live};
use crate::dashboard::session::{SessionKey, Sessions, StreamPermit};
use crate::dashboard::views::{RestartLiveFragment, ServiceLiveFragment};
use crate::domain::ServiceName;
use crate::fleet::Fleet;
use crate::log_relay::{LogRelay, OpenError};
use crate::metrics::Metrics;
use crate::store::Db;

/// How often relative times ("up for", "ago", the timeline's right edge) move
/// on when nothing else changes.
const CLOCK: Duration = Duration::from_secs(5);
/// The least time between two renders of one stream: a burst of changes
/// (a drain reporting every 100 ms on many hosts) becomes one render, and a
/// change still shows sooner than the 250 ms tick pages once rendered on.
const COALESCE: Duration = Duration::from_millis(100);
/// A comment now and then keeps proxies from closing a quiet stream, and
/// finds out that a browser went away (only a write does), which gives its
/// place among the session's streams back.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One SSE message; every line of the HTML becomes a `data:` line. A line
/// ends where an SSE parser ends it, at `\r\n`, `\r` or `\n`: splitting on
/// `\n` alone would leave a `\r` that the browser reads as a line end, and
/// text inside the HTML could start a line of its own (`event: done`).
fn message(event: &str, html: &str) -> Bytes {
    let mut out = String::with_capacity(html.len() + 64);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in sse_lines(html) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The lines of `text` as the SSE grammar splits them; a final line end
/// adds no empty line, as with `str::lines`.
fn sse_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(end) => {
                let after = if current[end..].starts_with("\r\n") {
                    end + 2
                } else {
                    end + 1
                };
                rest = (after < current.len()).then(|| &current[after..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                (!current.is_empty()).then_some(current)
            }
        }
    })
}

enum Frame {
    /// The live part as HTML, and whether the page will not change again.
    Html {
        html: String,
        finished: bool,
    },
    Gone,
}

/// What keeps a stream going: its session open, its token live, the fleet
/// telling it when to look again.
struct Watcher {
    sessions: web::Data<Sessions>,
    session: SessionKey,
    tokens: web::Data<TokenCache>,
    token_hash: String,
    changes: watch::Receiver<()>,
    recheck: Interval,
    clock: Interval,
    keep_alive_at: Instant,
    metrics: web::Data<Metrics>,
    _permit: StreamPermit,
}

/// Why the stream woke up.
enum Wake {
    Render,
    KeepAlive,
    End,
}

impl Watcher {
    async fn next(&mut self) -> Wake {
        loop {
            tokio::select! {
                changed = self.changes.changed() => return match changed {
                    Ok(()) => Wake::Render,
                    Err(_) => Wake::End,
                },
                _ = self.clock.tick() => return Wake::Render,
                _ = self.recheck.tick() => {
                    if !self.still_signed_in().await {
                        return Wake::End;
                    }
                }
                _ = tokio::time::sleep_until(self.keep_alive_at) => return Wake::KeepAlive,
            }
        }
    }

    async fn still_signed_in(&self) -> bool {
        match self.sessions.is_open(&self.session).await {
            Ok(true) => {}
            Ok(false) => return false,
            // The database being away says nothing about the session.
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot check a live page's session"
                );
            }
        }
        match self.tokens.check_now(&self.token_hash).await {
            Ok(Some(_)) => true,
            Ok(None) => {
                self.sessions.forget(&self.token_hash).await;
                false
            }
            // The database being away says nothing about the token.
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot check a live page's token"
                );
                true
            }
        }
    }
}

struct LiveState<F> {
    render: F,
    watcher: Watcher,
    last: Option<String>,
    rendered_at: Instant,
    done: bool,
}

fn event_stream<F, Fut>(watcher: Watcher, render: F) -> HttpResponse
where
    F: FnMut() -> Fut + 'static,
    Fut: Future<Output = Frame>,
{
    let stream = futures::stream::unfold(
        LiveState {
            render,
            watcher,
            last: None,
            rendered_at: Instant::now(),
            done: false,
        },
        |mut stream| async move {
            if stream.done {
                return None;
            }
            loop {
                if stream.last.is_some() {
                    match stream.watcher.next().await {
                        Wake::Render => {
                            tokio::time::sleep_until(stream.rendered_at + COALESCE).await;
                            // This render shows every change until now.
                            stream.watcher.changes.borrow_and_update();
                        }
                        Wake::End => return None,
                        Wake::KeepAlive => {
                            stream.watcher.keep_alive_at = Instant::now() + KEEP_ALIVE;
                            return Some((
                                Ok::<_, Infallible>(Bytes::from_static(b": keep-alive\n\n")),
                                stream,
                            ));
                        }
                    }
                }
                stream.rendered_at = Instant::now();
                stream.watcher.metrics.live_part_rendered();
                match (stream.render)().await {
                    Frame::Gone => return None,
                    Frame::Html { html, finished } => {
                        if finished {
                            stream.done = true;
                            let bytes = message("done", &html);
                            return Some((Ok(bytes), stream));
                        }
                        if stream.last.as_deref() != Some(html.as_str()) {
                            let bytes = message("update", &html);
                            stream.last = Some(html);
                            stream.watcher.keep_alive_at = Instant::now() + KEEP_ALIVE;
                            return Some((Ok(bytes), stream));
                        }
                    }
                }
            }
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Tells nginx not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// Why a stream was not opened.
enum Refused {
    SignIn,
    TooManyStreams,
    /// The sessions could not be read.
    Unavailable,
}

impl Refused {
    fn response(&self) -> HttpResponse {
        match self {
            // Not 303 to the login page: EventSource would follow it and then
            // fail on the HTML; a plain refusal makes it give up.
            Refused::SignIn => HttpResponse::Unauthorized().body("sign in first"),
            Refused::TooManyStreams => HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, "5"))
                .body("too many live pages open in this session"),
            Refused::Unavailable => HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "5"))
                .body("the sessions cannot be read right now"),
        }
    }
}

/// The request's session and a place among its streams, or the refusal.
async fn watch(
    request: &HttpRequest,
    sessions: &web::Data<Sessions>,
    tokens: &web::Data<TokenCache>,
    fleet: &Fleet,
    metrics: &web::Data<Metrics>,
) -> Result<Watcher, Refused> {
    let session = match sessions.find(request).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(Refused::SignIn),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot look up a live page's session"
            );
            return Err(Refused::Unavailable);
        }
    };
    let Some(key) = Sessions::key(request) else {
        return Err(Refused::SignIn);
    };
    let Some(permit) = sessions.stream_permit(&session) else {
        return Err(Refused::TooManyStreams);
    };
    let every = |period| {
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    };
    let mut changes = fleet.watch_changes();
    // What the first render shows is the picture as of now.
    changes.borrow_and_update();
    Ok(Watcher {
        sessions: sessions.clone(),
        session: key,
        tokens: tokens.clone(),
        token_hash: session.token_hash().to_owned(),
        changes,
        recheck: every(tokens.recheck()),
        clock: every(CLOCK),
        keep_alive_at: Instant::now() + KEEP_ALIVE,
        metrics: metrics.clone(),
        _permit: permit,
    })
}

/// `GET /restarts/{id}/live`: the restart's steps until it ends.
pub async fn restart(
    request: HttpRequest,
    path: web::Path<u64>,
    sessions: web::Data<Sessions>,
    tokens: web::Data<TokenCache>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let watcher = match watch(&request, &sessions, &tokens, &fleet, &metrics).await {
        Ok(watcher) => watcher,
        Err(refused) => return refused.response(),
    };
    let id = path.into_inner();
    event_stream(watcher, move || {
        let (db, fleet) = (db.clone(), fleet.clone());
        async move {
            match restart_detail(&db, &fleet, id).await {
                Ok(detail) => {
                    let finished = !detail.running;
                    match (RestartLiveFragment { detail }).render() {
                        Ok(html) => Frame::Html { html, finished },
                        Err(_) => Frame::Gone,
                    }
                }
                Err(_) => Frame::Gone,
            }
        }
    })
}

/// `GET /live?page=&search=&state=`: the overview with that page of the
/// fleet's list, re-rendered whenever the fleet or the history changes.
pub async fn overview(
    request: HttpRequest,
    query: web::Query<OverviewQuery>,
    sessions: web::Data<Sessions>,
    tokens: web::Data<TokenCache>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let watcher = match watch(&request, &sessions, &tokens, &fleet, &metrics).await {
        Ok(watcher) => watcher,
        Err(refused) => return refused.response(),
    };
    let list = std::sync::Arc::new(query.read());
    event_stream(watcher, move || {
        let (db, list) = (db.clone(), list.clone());
        async move {
            match overview_live(&db, &list).await {
                Ok(fragment) => match fragment.render() {
                    Ok(html) => Frame::Html {
                        html,
                        finished: false,
                    },
                    Err(_) => Frame::Gone,
                },
                Err(_) => Frame::Gone,
            }
        }
    })
}

/// `GET /services/{name}/live`: the hosts table and the timeline, for as
/// long as the page is open.
pub async fn service(
    request: HttpRequest,
    path: web::Path<String>,
    sessions: web::Data<Sessions>,
    tokens: web::Data<TokenCache>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let Ok(name) = ServiceName::parse(&path) else {
        return HttpResponse::NotFound().finish();
    };
    let watcher = match watch(&request, &sessions, &tokens, &fleet, &metrics).await {
        Ok(watcher) => watcher,
        Err(refused) => return refused.response(),
    };
    event_stream(watcher, move || {
        let (db, fleet) = (db.clone(), fleet.clone());
        let name = name.clone();
        async move {
            match service_live(&db, &fleet, &name).await {
                Ok(live) => match (ServiceLiveFragment { live }).render() {
                    Ok(html) => Frame::Html {
                        html,
                        finished: false,
                    },
                    Err(_) => Frame::Gone,
                },
                Err(_) => Frame::Gone,
            }
        }
    })
}

/// Lines the service page's tail starts with, and keeps.
pub const TAIL_LINES: usize = 50;

#[derive(serde::Deserialize)]
pub struct OutputQuery {
    host: String,
}

/// Ends the agent's stream when the browser goes.
/// `GET /services/{name}/output?host=H`: the live tail of the service's
/// output on one host, read from its agent: an `event: line` per line, its
/// `OutputLine` as JSON (which escapes every control character, so a line
/// cannot end the message). The page's script shows the last
/// [`TAIL_LINES`] as text. It counts among the session's streams and ends,
/// as the other live streams do, when the session closes or its token is
/// revoked.
pub async fn output(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<OutputQuery>,
    sessions: web::Data<Sessions>,
    tokens: web::Data<TokenCache>,
    metrics: web::Data<Metrics>,
    relay: web::Data<LogRelay>,
) -> HttpResponse {
    let Ok(name) = ServiceName::parse(&path) else {
        return HttpResponse::NotFound().finish();
    };
    let watcher = match watch(&request, &sessions, &tokens, relay.fleet(), &metrics).await {
        Ok(watcher) => watcher,
        Err(refused) => return refused.response(),
    };
    // Through the replica holding the host's link when it is another.
    let stream = match relay
        .open(&query.host, name.as_str(), None, TAIL_LINES, true)
        .await
    {
        Ok(stream) => stream,
        // An offline host: 204 tells the browser not to reconnect.
        Err(OpenError::Offline(_)) => return HttpResponse::NoContent().finish(),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot open a live output tail"
            );
            return HttpResponse::ServiceUnavailable().finish();
        }
    };
    let body = futures::stream::unfold((stream, watcher), |(mut stream, mut watcher)| async move {
        let keep_alive_at = Instant::now() + KEEP_ALIVE;
        let bytes = loop {
            tokio::select! {
                chunk = stream.chunks.recv() => match chunk {
                    None | Some(crate::fleet::LogChunk::Failed(_)) => return None,
                    Some(crate::fleet::LogChunk::Lines(lines)) => break sse_output(&lines),
                },
                _ = watcher.recheck.tick() => {
                    if !watcher.still_signed_in().await {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(keep_alive_at) => break Bytes::from_static(b": keep-alive\n\n"),
            }
        };
        Some((Ok::<_, Infallible>(bytes), (stream, watcher)))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

fn sse_output(lines: &[baton_proto::OutputLine]) -> Bytes {
    let mut out = String::new();
    for line in lines {
        if let Ok(json) = serde_json::to_string(line) {
            out.push_str("event: line\ndata: ");
            out.push_str(&json);
            out.push_str("\n\n");
        }
    }
    if out.is_empty() {
        // The agent's first answer, with no line yet.
        out.push_str(": no lines yet\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of a message as an SSE parser reads it.
    fn parsed_lines(message: &Bytes) -> Vec<String> {
        let text = std::str::from_utf8(message).unwrap();
        text.replace("\r\n", "\n")
            .replace('\r', "\n")
            .split('\n')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn no_line_break_in_the_html_starts_a_field_of_its_own() {
        let html = "<p>ok\revent: done\r\ndata: injected\n\nretry: 1</p>";
        let lines = parsed_lines(&message("update", html));
        assert_eq!(
            lines,
            [
                "event: update",
                "data: <p>ok",
                "data: event: done",
                "data: data: injected",
                "data: ",
                "data: retry: 1</p>",
                "",
                "",
            ]
        );
    }

    #[test]
    fn lines_split_as_the_sse_grammar_splits_them() {
        let split = |text| sse_lines(text).collect::<Vec<_>>();
        assert_eq!(split("a\nb\r\nc\rd"), ["a", "b", "c", "d"]);
        assert_eq!(split("a\n"), ["a"]);
        assert_eq!(split("a\r\n\r\nb"), ["a", "", "b"]);
        assert_eq!(split(""), Vec::<&str>::new());
    }
}
