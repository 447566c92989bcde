use baton_proto::RestartOutcome;
use reqwest::header;
use std::time::Duration;

use crate::browser::{Browser, csrf_token};
use crate::helpers::{FakeAgent, TestApp, service, spawn_app};

async fn restart_count(app: &TestApp) -> usize {
    app.get_json("/restarts").await["restarts"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn an_operator_confirms_a_restart_and_lands_on_its_page() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.operator).await;

    let page = browser.page("/services/web").await;
    assert!(
        page.contains("href=\"/services/web/restart/confirm\""),
        "{page}"
    );
    assert!(page.contains("<dialog id=\"restart-dialog\""));
    // Without JavaScript the button leads to a confirmation page.
    let confirm = browser.page("/services/web/restart/confirm").await;
    assert!(confirm.contains("Restart web?"));
    let csrf = csrf_token(&confirm);
    assert_eq!(csrf, csrf_token(&page), "one token per session");

    let response = browser
        .post_form(
            "/services/web/restart/confirm",
            &[("csrf", &csrf), ("reason", "deploy 1.4.2")],
        )
        .await;
    assert_eq!(response.status(), 303);
    let location = response.headers()[header::LOCATION].to_str().unwrap();
    assert_eq!(location, "/restarts/1");

    let running = browser.page(location).await;
    assert!(
        running.contains("data-live=\"/restarts/1/live\""),
        "{running}"
    );
    assert!(running.contains("running"));

    agent
        .serve_restart("web", 1, RestartOutcome::Succeeded)
        .await;
    let restart = app.wait_restart(1).await;
    assert_eq!(restart["requested_by"], "ci");
    assert_eq!(restart["reason"], "deploy 1.4.2");

    let finished = browser.page("/restarts/1").await;
    assert!(finished.contains("succeeded"));
    assert!(
        !finished.contains("data-live="),
        "a finished restart has nothing to follow"
    );
    for phase in ["spawned", "ready", "draining", "old exited"] {
        assert!(finished.contains(phase), "{phase} missing");
    }
    assert!(finished.contains("generation 2 spawned"));

    // A second confirmation while one runs takes the person to the running one.
    let history = browser.page("/services/web").await;
    assert!(history.contains("href=\"/restarts/1\""));
    assert!(history.contains("data-generation=\"2\""), "{history}");
}

#[tokio::test]
async fn a_restart_post_without_the_csrf_token_is_refused() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.operator).await;
    let page = browser.page("/services/web").await;
    let csrf = csrf_token(&page);

    let missing = browser
        .post_form("/services/web/restart/confirm", &[("reason", "x")])
        .await;
    assert_eq!(missing.status(), 403);
    let wrong = browser
        .post_form(
            "/services/web/restart/confirm",
            &[("csrf", &csrf[..csrf.len() - 1])],
        )
        .await;
    assert_eq!(wrong.status(), 403);
    // Another session's token is no good either.
    let mut other = Browser::new(&app);
    other.sign_in(&app.operator).await;
    let stolen = other
        .post_form("/services/web/restart/confirm", &[("csrf", &csrf)])
        .await;
    assert_eq!(stolen.status(), 403);
    // And no session at all is a sign-in, not a restart.
    let anonymous = Browser::new(&app)
        .post_form("/services/web/restart/confirm", &[("csrf", &csrf)])
        .await;
    assert_eq!(anonymous.status(), 303);

    assert_eq!(restart_count(&app).await, 0);
    assert!(
        agent
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the agent got a command"
    );
}

#[tokio::test]
async fn a_viewer_sees_the_button_disabled_and_cannot_restart() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;

    let page = browser.page("/services/web").await;
    assert!(page.contains("id=\"restart-button\" disabled"), "{page}");
    assert!(page.contains("Viewers cannot restart"));
    assert!(!page.contains("<dialog"));
    assert_eq!(
        browser.get("/services/web/restart/confirm").await.status(),
        403
    );
    let csrf = csrf_token(&page);
    let refused = browser
        .post_form("/services/web/restart/confirm", &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("operator token"));
    assert_eq!(restart_count(&app).await, 0);
    assert!(
        agent
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

/// Reads server-sent events until one of `kind` arrives; its data.
pub async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
    kind: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut event = "";
            let mut data = Vec::new();
            for line in message.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name;
                } else if let Some(line) = line.strip_prefix("data: ") {
                    data.push(line);
                }
            }
            if event == kind {
                return data.join("\n");
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within 10 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before a {kind} event"));
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn a_running_restart_streams_its_steps_until_it_ends() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let started = app
        .post_restart("web", Some(&app.operator), None, None, false)
        .await;
    assert_eq!(started.status(), 202);

    let mut stream = browser.get("/restarts/1/live").await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut buffer = String::new();
    let first = next_event(&mut stream, &mut buffer, "update").await;
    assert!(first.contains("running"), "{first}");

    agent
        .serve_restart("web", 1, RestartOutcome::Succeeded)
        .await;
    let last = next_event(&mut stream, &mut buffer, "done").await;
    assert!(last.contains("succeeded"), "{last}");
    assert!(last.contains("generation 2 ready"), "{last}");
    // After `done` the server closes the stream.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // The service page streams too: its hosts and timeline.
    let mut service_stream = browser.get("/services/web/live").await;
    let mut buffer = String::new();
    let update = next_event(&mut service_stream, &mut buffer, "update").await;
    assert!(
        update.contains("alpha") && update.contains("<svg"),
        "{update}"
    );
}

#[tokio::test]
async fn a_forced_restart_shows_the_old_generation_killed_not_exited() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let mut events = agent.restart_events("web", 1, 1, RestartOutcome::Forced);
    // The old generation outlived its drain: killed, then reaped.
    let exited = events
        .iter()
        .position(|e| matches!(e.kind, baton_proto::EventKind::GenerationExited { .. }))
        .unwrap();
    events[exited].kind = baton_proto::EventKind::GenerationExited {
        generation: 1,
        pid: 1001,
        status: "killed by SIGKILL".into(),
        unexpected: false,
        program: None,
    };
    let killed = agent.event(
        "web",
        Some(1),
        baton_proto::EventKind::GenerationKilled {
            generation: 1,
            pid: 1001,
            connections_cut: 2,
        },
    );
    events.insert(exited, killed);
    let first = events[0].seq;
    for (n, event) in events.iter_mut().enumerate() {
        event.seq = first + n as u64;
    }
    agent.send_events(events).await;
    app.wait_restart(id).await;

    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let page = browser.page(&format!("/restarts/{id}")).await;
    let phases = &page[page.find("<ol class=\"phases\">").unwrap()..];
    let phases = &phases[..phases.find("</ol>").unwrap()];
    let last = &phases[phases.rfind("<li").unwrap()..];
    assert!(last.contains("class=\"killed\""), "{last}");
    assert!(last.contains("old killed"), "{last}");
    assert!(!last.contains('✓'), "a killed process has no check: {last}");
    assert!(last.contains("2 connections cut"), "{last}");
}
