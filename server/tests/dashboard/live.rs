use baton_proto::link::AgentFrame;
use std::time::Duration;

use crate::browser::Browser;
use crate::helpers::{FakeAgent, service, spawn_app};

/// One event as a browser's EventSource dispatches it.
#[derive(Debug)]
struct SseEvent {
    event: String,
    data: String,
}

/// Reads the stream for `window` and parses it as the HTML standard says:
/// a line ends at CRLF, CR or LF; an empty line dispatches the event.
async fn events_within(response: &mut reqwest::Response, window: Duration) -> Vec<SseEvent> {
    let mut raw = String::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        raw.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let normalised = raw.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let (mut event, mut data) = (String::new(), Vec::<String>::new());
    for line in normalised.split('\n') {
        if line.is_empty() {
            if !data.is_empty() {
                events.push(SseEvent {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: data.join("\n"),
                });
            }
            event.clear();
            data.clear();
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    events
}

#[tokio::test]
async fn line_breaks_in_a_status_text_do_not_inject_an_event_into_the_live_stream() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut status = service("web", 1);
    status.generations[0].status_text =
        Some("ok\r\revent: done\rdata: injected\r\r\nevent: done\ndata: injected\n\n".into());
    agent
        .send(&AgentFrame::Status {
            services: vec![status],
        })
        .await;
    // The status is in the picture before the page is opened.
    for _ in 0..100 {
        let web = app.get_json("/services/web").await;
        if web["hosts"][0]["current"]["status_text"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let mut stream = browser.get("/services/web/live").await;
    assert_eq!(stream.status(), 200);
    let events = events_within(&mut stream, Duration::from_secs(1)).await;
    assert!(!events.is_empty(), "no event at all");
    for event in &events {
        assert_eq!(event.event, "update", "{events:#?}");
        assert!(event.data.contains("alpha"), "{events:#?}");
    }
    // The words are there, escaped, inside the one update.
    assert!(
        events[0].data.contains("ok\\r\\revent: done"),
        "{:?}",
        events[0].data
    );
}
