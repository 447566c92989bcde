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

#[tokio::test]
async fn the_overview_pages_and_searches_and_a_page_updates_itself_live() {
    let app = spawn_app().await;
    let mut agents = Vec::new();
    for index in 0..60 {
        let mut web = service("web", 1);
        if index % 20 == 3 {
            web.state = baton_proto::ServiceState::CrashLooping;
        }
        let host = format!("host-{index:03}");
        agents.push(FakeAgent::connect(&app, &host, "boot-1", vec![web]).await);
    }
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;

    let first = browser.page("/").await;
    assert!(first.contains("1–50 of 60"), "{first}");
    assert!(first.contains("host-049") && !first.contains("host-050"));
    assert!(first.contains("href=\"/?page=2\" rel=\"next\""), "{first}");
    let second = browser.page("/?page=2").await;
    assert!(second.contains("51–60 of 60"), "{second}");
    assert!(second.contains("host-059") && !second.contains("host-000"));
    assert!(second.contains("rel=\"prev\"") && !second.contains("rel=\"next\""));
    // The counts are the whole fleet's, whatever the page.
    assert!(second.contains("<span class=\"stat\">60/60</span> hosts online"));

    let search = browser.page("/?search=ST-01").await;
    assert!(search.contains("1–10 of 10"), "{search}");
    assert!(
        search.contains("data-live=\"/live?search=ST-01\""),
        "{search}"
    );
    let looping = browser.page("/services?state=crash_looping").await;
    assert!(looping.contains("1–3 of 3"), "{looping}");
    for host in ["host-003", "host-023", "host-043"] {
        assert!(looping.contains(host), "{host}: {looping}");
    }
    let nothing = browser.page("/?search=nope").await;
    assert!(nothing.contains("No service on any host matches this search."));
    let refused = browser.get("/?search=a%25b&state=dozing").await;
    assert_eq!(refused.status(), 422);

    // The live stream of page 2 shows page 2, and what changes on it.
    let mut stream = browser.get("/live?page=2").await;
    assert_eq!(stream.status(), 200);
    let events = events_within(&mut stream, Duration::from_millis(500)).await;
    let html = &events.first().expect("a first render").data;
    assert!(
        html.contains("host-059") && !html.contains("host-000"),
        "{html}"
    );
    let mut web = service("web", 7);
    web.generations[0].pid = 4242;
    agents[55]
        .send(&AgentFrame::Status {
            services: vec![web],
        })
        .await;
    let events = events_within(&mut stream, Duration::from_secs(2)).await;
    assert!(
        events.iter().any(|e| e.data.contains("4242")),
        "page 2 did not show host-055's new generation: {events:?}"
    );
}
