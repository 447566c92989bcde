//! What became of the old generation's connections on each host of a
//! restart: stored from the agent's `drain_finished` (or the fetched
//! report), shown on the restart and its lists, counted in `/metrics`.

use baton_proto::link::{AgentFrame, ServerFrame};
use baton_proto::{ConnectionTally, EventKind, RestartOutcome, RestartReport, api};
use serde_json::json;

use crate::helpers::{FakeAgent, TestApp, service, spawn_app};

const TALLY: ConnectionTally = ConnectionTally {
    handed_over: 12,
    drained: 3,
    cut: 1,
};

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics", None).await.text().await.unwrap()
}

#[track_caller]
fn assert_counted(metrics: &str, service: &str, tally: ConnectionTally) {
    for (name, n) in [
        ("baton_connections_handed_over_total", tally.handed_over),
        ("baton_connections_drained_total", tally.drained),
        ("baton_connections_cut_total", tally.cut),
    ] {
        let line = format!("{name}{{service=\"{service}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn a_hosts_connection_tally_is_on_its_restart_in_the_lists_and_in_the_metrics() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let events = agent.handoff_restart_events("web", 1, 1, TALLY, RestartOutcome::Succeeded);
    agent.send_events(events).await;

    let restart = app.wait_restart(id).await;
    assert_eq!(
        restart["hosts"][0]["connections"],
        json!({"handed_over": 12, "drained": 3, "cut": 1}),
        "{restart}"
    );
    let typed: api::Restart = serde_json::from_value(restart.clone()).unwrap();
    assert_eq!(typed.hosts[0].connections, Some(TALLY));
    let steps: Vec<&str> = restart["hosts"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"handoff_brokered")
            && steps.contains(&"connections_handed_over")
            && steps.contains(&"drain_finished"),
        "{steps:?}"
    );
    for list in ["/restarts", "/restarts?host=alpha", "/restarts?service=web"] {
        let page: api::RestartPage = serde_json::from_value(app.get_json(list).await).unwrap();
        assert_eq!(page.restarts[0].hosts[0].connections, Some(TALLY), "{list}");
    }
    let metrics = metrics(&app).await;
    assert_counted(&metrics, "web", TALLY);
    assert!(
        metrics.contains("# TYPE baton_connections_cut_total counter"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_host_whose_restart_replaced_no_draining_generation_has_no_tally() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent
        .serve_restart("web", 1, RestartOutcome::RolledBack)
        .await;
    let restart = app.wait_restart(id).await;
    assert!(
        restart["hosts"][0].get("connections").is_none(),
        "{restart}"
    );
    assert!(
        !metrics(&app)
            .await
            .contains("baton_connections_handed_over_total{"),
        "no drain, no series"
    );
}

#[tokio::test]
async fn a_drain_sent_twice_is_stored_and_counted_once() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let events = agent.handoff_restart_events("web", 1, 1, TALLY, RestartOutcome::Succeeded);
    agent.send_events(events[..8].to_vec()).await;
    // The agent sends the same events again, as after a lost acknowledgement.
    agent.send_events(events.clone()).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(
        restart["hosts"][0]["connections"],
        json!({"handed_over": 12, "drained": 3, "cut": 1}),
        "{restart}"
    );
    assert_counted(&metrics(&app).await, "web", TALLY);

    // A restart the agent ran by itself (a service asked for it) is counted
    // too, added to the same service's.
    let events = agent.handoff_restart_events(
        "web",
        2,
        2,
        ConnectionTally {
            handed_over: 5,
            drained: 0,
            cut: 0,
        },
        RestartOutcome::Succeeded,
    );
    agent.send_events(events).await;
    assert_counted(
        &metrics(&app).await,
        "web",
        ConnectionTally {
            handed_over: 17,
            drained: 3,
            cut: 1,
        },
    );
}

/// The restart's events before its end reach the server, the rest are lost
/// while the link is down (the agent keeps none of them), so the host is
/// settled from the report the server fetches: `report` given the steps.
/// The agent linked again, to be kept until the restart has ended.
async fn settle_from_report(
    app: &TestApp,
    agent: FakeAgent,
    steps: &[baton_proto::Event],
    report: impl FnOnce(Vec<baton_proto::Event>) -> RestartReport,
) -> FakeAgent {
    agent.close().await;
    app.wait_offline("alpha").await;
    let mut agent = FakeAgent::connect_with_seq(
        app,
        "alpha",
        "boot-1",
        steps.last().unwrap().seq + 50,
        vec![service("web", 2)],
    )
    .await;
    agent.next_seq = steps.last().unwrap().seq + 30;
    let kept: Vec<_> = (0..21)
        .map(|_| {
            agent.event(
                "other",
                None,
                EventKind::GenerationStatus {
                    generation: 1,
                    status: "busy".into(),
                },
            )
        })
        .collect();
    agent.send(&AgentFrame::Events { events: kept }).await;
    let restart_id = agent.expect_fetch_report().await;
    assert_eq!(restart_id, 1);
    agent
        .send(&AgentFrame::Report {
            restart_id,
            report: Some(report(steps.to_vec())),
        })
        .await;
    agent
}

fn finished_report(
    steps: Vec<baton_proto::Event>,
    connections: Option<ConnectionTally>,
) -> RestartReport {
    RestartReport {
        id: 1,
        service: "web".into(),
        reason: None,
        started_at: steps[0].at,
        finished_at: Some(steps.last().unwrap().at),
        outcome: Some(RestartOutcome::Succeeded),
        outcome_reason: None,
        old_generation: Some(1),
        new_generation: Some(2),
        connections_cut: None,
        connections,
        steps,
        versions: None,
        output_tail: Vec::new(),
    }
}

#[tokio::test]
async fn the_tally_of_a_restart_settled_from_its_report_comes_from_the_report() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let steps = agent.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    agent.send_events(steps[..1].to_vec()).await;
    let _agent = settle_from_report(&app, agent, &steps, |steps| {
        finished_report(steps, Some(TALLY))
    })
    .await;

    let restart = app.wait_restart(id).await;
    let host = &restart["hosts"][0];
    assert_eq!(host["outcome_from_report"], true, "{restart}");
    assert_eq!(
        host["connections"],
        json!({"handed_over": 12, "drained": 3, "cut": 1}),
        "{restart}"
    );
    // Its drain_finished never reached the server: the report's tally is
    // what it counts.
    assert_counted(&metrics(&app).await, "web", TALLY);
}

#[tokio::test]
async fn a_drain_stored_before_the_rest_was_lost_is_not_counted_again_from_the_report() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let steps = agent.handoff_restart_events("web", 1, 1, TALLY, RestartOutcome::Succeeded);
    // Up to drain_finished; restart_finished is lost.
    agent.send_events(steps[..8].to_vec()).await;
    let _agent = settle_from_report(&app, agent, &steps, |steps| {
        finished_report(steps, Some(TALLY))
    })
    .await;

    let restart = app.wait_restart(id).await;
    assert_eq!(
        restart["hosts"][0]["outcome_from_report"], true,
        "{restart}"
    );
    assert_eq!(
        restart["hosts"][0]["connections"],
        json!({"handed_over": 12, "drained": 3, "cut": 1}),
        "{restart}"
    );
    assert_counted(&metrics(&app).await, "web", TALLY);
}

#[tokio::test]
async fn the_drain_of_an_agent_that_took_over_a_restart_is_counted_once() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let steps = agent.handoff_restart_events("web", 1, 1, TALLY, RestartOutcome::Succeeded);
    agent.send_events(steps[..1].to_vec()).await;
    agent.close().await;

    // The agent that took over finishes the drain and says so at once,
    // before the server knows it carries the restart on.
    let mut next = FakeAgent::connect(&app, "alpha", "boot-2", vec![service("web", 2)]).await;
    let drained = next.event(
        "web",
        Some(1),
        EventKind::DrainFinished {
            generation: 1,
            handed_over: TALLY.handed_over,
            drained: TALLY.drained,
            cut: TALLY.cut,
        },
    );
    // Not waiting for its acknowledgement: the server's fetch may come first.
    next.send(&AgentFrame::Events {
        events: vec![drained.clone()],
    })
    .await;
    let mut report = RestartReport {
        finished_at: None,
        outcome: None,
        steps: vec![drained.clone()],
        output_tail: Vec::new(),
        ..finished_report(steps[..1].to_vec(), Some(TALLY))
    };
    let restart_id = next.expect_fetch_report().await;
    next.send(&AgentFrame::Report {
        restart_id,
        report: Some(report.clone()),
    })
    .await;
    let finished = next.event(
        "web",
        Some(1),
        EventKind::RestartFinished {
            outcome: RestartOutcome::Succeeded,
            reason: None,
            versions: None,
        },
    );
    next.send(&AgentFrame::Events {
        events: vec![finished.clone()],
    })
    .await;
    let restart_id = loop {
        match next.recv().await {
            ServerFrame::FetchReport { restart_id } => break restart_id,
            ServerFrame::Ack { .. } => continue,
            other => panic!("expected a fetch of the report, got {other:?}"),
        }
    };
    report.finished_at = Some(finished.at);
    report.outcome = Some(RestartOutcome::Succeeded);
    report.steps.push(finished);
    next.send(&AgentFrame::Report {
        restart_id,
        report: Some(report),
    })
    .await;

    let restart = app.wait_restart(id).await;
    assert_eq!(restart["hosts"][0]["outcome"], "succeeded", "{restart}");
    assert_eq!(
        restart["hosts"][0]["connections"],
        json!({"handed_over": 12, "drained": 3, "cut": 1}),
        "{restart}"
    );
    assert_counted(&metrics(&app).await, "web", TALLY);
}

#[tokio::test]
async fn the_drain_of_an_agent_that_took_over_a_restart_is_recorded_as_it_comes() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let steps = agent.handoff_restart_events("web", 1, 1, TALLY, RestartOutcome::Succeeded);
    agent.send_events(steps[..1].to_vec()).await;
    agent.close().await;

    // The agent that took over is still draining when the server learns it
    // carries the restart on (asked once, then at once again).
    let mut next = FakeAgent::connect(&app, "alpha", "boot-2", vec![service("web", 2)]).await;
    let mut report = RestartReport {
        finished_at: None,
        outcome: None,
        steps: Vec::new(),
        output_tail: Vec::new(),
        ..finished_report(steps[..1].to_vec(), None)
    };
    for _ in 0..2 {
        let restart_id = next.expect_fetch_report().await;
        next.send(&AgentFrame::Report {
            restart_id,
            report: Some(report.clone()),
        })
        .await;
    }
    let drained = next.event(
        "web",
        Some(1),
        EventKind::DrainFinished {
            generation: 1,
            handed_over: TALLY.handed_over,
            drained: TALLY.drained,
            cut: TALLY.cut,
        },
    );
    next.send_events(vec![drained.clone()]).await;
    let mut shown = serde_json::Value::Null;
    for _ in 0..100 {
        shown = app.get_json(&format!("/restarts/{id}")).await["hosts"][0]["connections"].clone();
        if !shown.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        shown,
        json!({"handed_over": 12, "drained": 3, "cut": 1}),
        "the tally is shown while the restart still runs"
    );

    let finished = next.event(
        "web",
        Some(1),
        EventKind::RestartFinished {
            outcome: RestartOutcome::Succeeded,
            reason: None,
            versions: None,
        },
    );
    next.send(&AgentFrame::Events {
        events: vec![finished.clone()],
    })
    .await;
    let restart_id = next.expect_fetch_report().await;
    report.finished_at = Some(finished.at);
    report.outcome = Some(RestartOutcome::Succeeded);
    report.connections = Some(TALLY);
    report.steps = vec![drained, finished];
    next.send(&AgentFrame::Report {
        restart_id,
        report: Some(report),
    })
    .await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["hosts"][0]["outcome"], "succeeded", "{restart}");
    assert_counted(&metrics(&app).await, "web", TALLY);
}
