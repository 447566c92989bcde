use baton_proto::{EventKind, RestartOutcome};

use crate::browser::Browser;
use crate::helpers::{FakeAgent, service, spawn_app};

#[tokio::test]
async fn a_restart_page_shows_the_overlap_of_both_generations_as_steps_and_on_the_ready_milestone()
{
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;

    let restart = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let kinds = [
        EventKind::RestartStarted {
            reason: None,
            requested_by: None,
        },
        EventKind::GenerationSpawned {
            generation: 2,
            pid: 2002,
            program: None,
        },
        EventKind::GenerationReady {
            generation: 2,
            pid: 2002,
            startup_us: 1500,
            program: None,
        },
        EventKind::OverlapStarted {
            generation: 2,
            old_generation: 1,
            overlap_ms: 3_000,
        },
        EventKind::OverlapFinished {
            generation: 2,
            old_generation: 1,
        },
        EventKind::GenerationDraining {
            generation: 1,
            pid: 1001,
            signal: "SIGTERM".into(),
            connections: Some(0),
        },
        EventKind::GenerationExited {
            generation: 1,
            pid: 1001,
            status: "exited with status 0".into(),
            unexpected: false,
            program: None,
        },
        EventKind::RestartFinished {
            outcome: RestartOutcome::Succeeded,
            reason: None,
            versions: None,
        },
    ];
    let events = kinds
        .into_iter()
        .map(|kind| agent.event("web", Some(1), kind))
        .collect();
    agent.send_events(events).await;
    app.wait_restart(restart).await;

    let page = browser.page(&format!("/restarts/{restart}")).await;
    for words in [
        "generation 1 keeps serving beside generation 2 for 3000 ms (min_overlap)",
        "overlap over: generation 2 takes over from generation 1",
        "generation 2 serves, after overlapping generation 1",
    ] {
        assert!(page.contains(words), "{words} missing from:\n{page}");
    }
    assert!(page.contains("class=\"step-overlap\""), "{page}");
}
