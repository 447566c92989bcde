use baton_proto::{ConnectionTally, RestartOutcome};

use crate::browser::Browser;
use crate::helpers::{FakeAgent, service, spawn_app};

#[tokio::test]
async fn a_restart_page_shows_what_became_of_each_hosts_connections_and_the_cut_stand_out() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;

    let cut = ConnectionTally {
        handed_over: 12,
        drained: 3,
        cut: 2,
    };
    let first = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let events = agent.handoff_restart_events("web", 1, 1, cut, RestartOutcome::Succeeded);
    agent.send_events(events).await;
    app.wait_restart(first).await;

    let page = browser.page(&format!("/restarts/{first}")).await;
    assert!(
        page.contains(
            "<span class=\"tally-handed-over\">12 handed over</span> · <span class=\"tally-drained\">3 drained</span> · <strong class=\"tally-cut\">2 cut</strong>"
        ),
        "{page}"
    );
    // Every step in words.
    for words in [
        "handoff channel opened: generation 1 may hand its connections over to generation 2",
        "generation 1 handed 12 connections over to generation 2",
        "drain ended: 12 handed over · 3 drained · 2 cut",
    ] {
        assert!(page.contains(words), "{words} missing from:\n{page}");
    }
    assert!(page.contains("class=\"step-handoff\""), "{page}");
    // The draining milestone tells the agent's account, not the count at
    // the drain's start.
    assert!(
        page.contains("generation 1: 12 handed over · 3 drained · 2 cut"),
        "{page}"
    );

    let clean = ConnectionTally {
        handed_over: 1,
        drained: 0,
        cut: 0,
    };
    let second = app.start_restart("web").await;
    agent.accept_restart(2).await;
    let events = agent.handoff_restart_events("web", 2, 2, clean, RestartOutcome::Succeeded);
    agent.send_events(events).await;
    app.wait_restart(second).await;
    let page = browser.page(&format!("/restarts/{second}")).await;
    assert!(page.contains("1 handed over"), "{page}");
    assert!(
        page.contains("generation 2 handed 1 connection over"),
        "{page}"
    );
    assert!(
        !page.contains("tally-cut"),
        "nothing cut, nothing flagged:\n{page}"
    );

    // The history lists each restart's connections.
    for path in ["/restarts", "/services/web", "/"] {
        let history = browser.page(path).await;
        assert!(
            history.contains("<strong class=\"tally-cut\">2 cut</strong>"),
            "{path}:\n{history}"
        );
        assert!(
            history.contains("<span class=\"tally-handed-over\">1 handed over</span>"),
            "{path}:\n{history}"
        );
    }
}
