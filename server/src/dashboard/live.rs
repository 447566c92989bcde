//! Server-sent events for pages that change while someone watches them. Each
//! event carries the re-rendered HTML of the page's live part, produced by
//! the same template as the first render, so the browser script only swaps
//! it in and there is one way to draw a restart, not two.
//!
//! The stream re-renders on a short tick and sends only when the HTML
//! changed: the sources of change (stored events, agent status reports,
//! the orchestrator) are many, and a render costs less than wiring each of
//! them to every open page.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use bytes::Bytes;
use std::convert::Infallible;
use std::time::Duration;

use crate::dashboard::pages::{restart_detail, service_live};
use crate::dashboard::session::Sessions;
use crate::dashboard::views::{RestartLiveFragment, ServiceLiveFragment};
use crate::domain::ServiceName;
use crate::fleet::Fleet;
use crate::store::Db;

const TICK: Duration = Duration::from_millis(250);
/// A comment now and then keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

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

struct LiveState<F> {
    render: F,
    last: Option<String>,
    quiet_for: Duration,
    done: bool,
}

fn event_stream<F, Fut>(render: F) -> HttpResponse
where
    F: FnMut() -> Fut + 'static,
    Fut: Future<Output = Frame>,
{
    let stream = futures::stream::unfold(
        LiveState {
            render,
            last: None,
            quiet_for: Duration::ZERO,
            done: false,
        },
        |mut stream| async move {
            if stream.done {
                return None;
            }
            loop {
                if stream.last.is_some() {
                    tokio::time::sleep(TICK).await;
                }
                match (stream.render)().await {
                    Frame::Gone => return None,
                    Frame::Html { html, finished } => {
                        if finished {
                            stream.done = true;
                            let bytes = message("done", &html);
                            return Some((Ok::<_, Infallible>(bytes), stream));
                        }
                        if stream.last.as_deref() != Some(html.as_str()) {
                            let bytes = message("update", &html);
                            stream.last = Some(html);
                            stream.quiet_for = Duration::ZERO;
                            return Some((Ok(bytes), stream));
                        }
                        stream.quiet_for += TICK;
                        if stream.quiet_for >= KEEP_ALIVE {
                            stream.quiet_for = Duration::ZERO;
                            return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), stream));
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

fn unauthorized() -> HttpResponse {
    // Not 303 to the login page: EventSource would follow it and then fail on
    // the HTML; a plain refusal makes it give up.
    HttpResponse::Unauthorized().body("sign in first")
}

/// `GET /restarts/{id}/live`: the restart's steps until it ends.
pub async fn restart(
    request: HttpRequest,
    path: web::Path<u64>,
    sessions: web::Data<Sessions>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> HttpResponse {
    if sessions.find(&request).is_none() {
        return unauthorized();
    }
    let id = path.into_inner();
    event_stream(move || {
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

/// `GET /services/{name}/live`: the hosts table and the timeline, for as
/// long as the page is open.
pub async fn service(
    request: HttpRequest,
    path: web::Path<String>,
    sessions: web::Data<Sessions>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> HttpResponse {
    if sessions.find(&request).is_none() {
        return unauthorized();
    }
    let Ok(name) = ServiceName::parse(&path) else {
        return HttpResponse::NotFound().finish();
    };
    event_stream(move || {
        let (db, fleet) = (db.clone(), fleet.clone());
        let name = name.clone();
        async move {
            // A session that ended (sign-out elsewhere) stops the stream at
            // the next reconnect; within one stream the page stays readable.
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
