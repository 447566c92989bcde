use baton_proto::link::{AgentFrame, ServerFrame};
use baton_proto::{ErrorBody, ErrorKind, EventKind, RestartOutcome, RestartReport};
use std::time::Duration;

use crate::helpers::{FakeAgent, service, spawn_app};

#[tokio::test]
async fn a_restart_flows_to_the_agent_and_its_outcome_settles_it() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let post = app.post_restart(
        "web",
        Some(&app.operator),
        Some(r#"{"reason": "deploy 42"}"#),
        None,
        true,
    );
    let serve = agent.serve_restart("web", 1, RestartOutcome::Succeeded);
    let (response, agent_restart) = tokio::join!(post, serve);
    assert_eq!(response.status(), 200);
    let restart: serde_json::Value = response.json().await.unwrap();
    assert_eq!(restart["state"], "finished");
    assert_eq!(restart["outcome"], "succeeded");
    assert_eq!(restart["reason"], "deploy 42");
    let host = &restart["hosts"][0];
    assert_eq!(host["outcome"], "succeeded");
    assert_eq!(host["agent_restart_id"], agent_restart);
    let steps: Vec<&str> = host["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "restart_started",
            "generation_spawned",
            "generation_ready",
            "generation_draining",
            "generation_exited",
            "restart_finished"
        ]
    );

    let list = app
        .get_json("/restarts?service=web&outcome=succeeded&host=alpha")
        .await;
    assert_eq!(list["restarts"][0]["id"], restart["id"]);
    let none = app.get_json("/restarts?outcome=failed").await;
    assert_eq!(none["restarts"].as_array().unwrap().len(), 0);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("baton_restarts_total{outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_same_restart() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let first = app
        .post_restart("web", Some(&app.operator), None, Some("deploy-42"), false)
        .await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let retry = app
        .post_restart("web", Some(&app.operator), None, Some("deploy-42"), false)
        .await;
    assert_eq!(retry.status(), 202);
    let retry: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(first["id"], retry["id"]);
    let list = app.get_json("/restarts").await;
    assert_eq!(list["restarts"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_second_restart_while_one_runs_is_409() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let first: serde_json::Value = app
        .post_restart("web", Some(&app.operator), None, None, false)
        .await
        .json()
        .await
        .unwrap();
    let second = app
        .post_restart("web", Some(&app.operator), None, None, false)
        .await;
    assert_eq!(second.status(), 409);
    let error: serde_json::Value = second.json().await.unwrap();
    assert_eq!(error["restart_id"], first["id"]);
    assert!(error["error"].as_str().unwrap().contains("already running"));
}

#[tokio::test]
async fn concurrent_requests_create_one_restart() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let requests = (0..8).map(|_| app.post_restart("web", Some(&app.operator), None, None, false));
    let statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_while_restarts_finish_fast_are_never_a_server_error() {
    // Each restart ends as soon as its command arrives, so a request may
    // meet the running restart when it inserts and finds it ended when it
    // looks for it: the service is free again, never a 500.
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let posts = async {
        let mut requests = Vec::new();
        // 300 rounds 10 ms apart, four requests at a time: the window
        // between the two looks is narrow.
        for _ in 0..300 {
            for _ in 0..4 {
                requests.push(tokio::spawn({
                    let client = app.client.clone();
                    let url = format!("{}/services/web/restart", app.address);
                    let operator = app.operator.clone();
                    async move {
                        let response = client.post(url).bearer_auth(operator).send().await.unwrap();
                        let status = response.status().as_u16();
                        (status, response.text().await.unwrap())
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        futures::future::join_all(requests).await
    };
    let serve = async {
        let mut generation = 1;
        loop {
            agent
                .serve_restart("web", generation, RestartOutcome::Succeeded)
                .await;
            generation += 1;
        }
    };
    let answers = tokio::select! {
        answers = posts => answers,
        _ = serve => unreachable!(),
    };
    let statuses: Vec<u16> = answers.iter().map(|a| a.as_ref().unwrap().0).collect();
    for answer in &answers {
        let (status, body) = answer.as_ref().unwrap();
        assert!(
            *status == 202 || *status == 409,
            "answered {status} {body}; all: {statuses:?}"
        );
    }
    assert!(
        statuses.contains(&202) && statuses.contains(&409),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_rolling_restart_stops_at_the_first_host_that_does_not_succeed() {
    let app = spawn_app().await;
    let mut first = FakeAgent::connect(&app, "host-a", "boot-a", vec![service("web", 1)]).await;
    let mut second = FakeAgent::connect(&app, "host-b", "boot-b", vec![service("web", 1)]).await;
    let post = app.post_restart("web", Some(&app.operator), None, None, true);
    let serve = first.serve_restart("web", 1, RestartOutcome::RolledBack);
    let (response, _) = tokio::join!(post, serve);
    let restart: serde_json::Value = response.json().await.unwrap();
    assert_eq!(restart["outcome"], "rolled_back", "{restart}");
    assert!(
        restart["outcome_reason"]
            .as_str()
            .unwrap()
            .contains("host-a")
    );
    assert_eq!(restart["hosts"][0]["outcome"], "rolled_back");
    assert_eq!(restart["hosts"][0]["outcome_reason"], "not ready within 1s");
    assert_eq!(restart["hosts"][1]["host"], "host-b");
    assert_eq!(restart["hosts"][1]["state"], "skipped");
    assert!(restart["hosts"][1].get("outcome").is_none());
    assert!(
        second
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the second host must never get a command"
    );
}

#[tokio::test]
async fn hosts_restart_one_at_a_time_in_name_order() {
    let app = spawn_app().await;
    let mut b = FakeAgent::connect(&app, "b", "boot-b", vec![service("web", 1)]).await;
    let mut a = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    assert!(
        b.recv_within(Duration::from_millis(200)).await.is_none(),
        "b goes after a"
    );
    a.serve_restart("web", 1, RestartOutcome::Succeeded).await;
    b.serve_restart("web", 1, RestartOutcome::Succeeded).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded");
    assert_eq!(restart["hosts"][0]["host"], "a");
    assert_eq!(restart["hosts"][1]["host"], "b");
}

#[tokio::test]
async fn an_offline_host_is_waited_for_until_the_grace_then_skipped() {
    let app = spawn_app().await;
    let agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    agent.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = std::time::Instant::now();
    let response = app
        .post_restart("web", Some(&app.operator), None, None, true)
        .await;
    assert_eq!(response.status(), 200);
    // The test server's grace is 2 s, counted from when the host went away.
    assert!(asked.elapsed() >= Duration::from_millis(1_800));
    let restart: serde_json::Value = response.json().await.unwrap();
    assert_eq!(restart["outcome"], "failed");
    assert_eq!(restart["outcome_reason"], "every host was offline");
    assert_eq!(restart["hosts"][0]["state"], "skipped", "{restart}");
    assert_eq!(
        restart["hosts"][0]["outcome_reason"], "offline",
        "{restart}"
    );
}

#[tokio::test]
async fn a_host_that_goes_away_mid_restart_fails_after_the_grace() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    agent.close().await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "failed");
    assert_eq!(restart["hosts"][0]["outcome_reason"], "host offline");
}

#[tokio::test]
async fn an_agent_refusal_fails_the_host_with_its_message() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    let command_id = agent.expect_restart_command().await;
    agent
        .send(&AgentFrame::RestartStarted {
            command_id,
            result: Err(ErrorBody {
                kind: ErrorKind::RestartInProgress,
                message: "web is already restarting".into(),
                running_restart: Some(9),
            }),
        })
        .await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "failed");
    assert_eq!(
        restart["hosts"][0]["outcome_reason"],
        "web is already restarting"
    );
}

/// The server dies after sending the command; the agent finishes on its own,
/// reconnects to the new server and resends its events: the restart ends
/// with the agent's true outcome.
#[tokio::test]
async fn a_restart_survives_a_server_restart() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    let command_id = agent.expect_restart_command().await;
    // The answer is never delivered: the server is gone first.
    let app = app.restart_server().await;
    drop(command_id);
    let events = agent.restart_events("web", 1, 1, RestartOutcome::Forced);
    let last_seq = events.last().unwrap().seq;
    let mut agent =
        FakeAgent::connect_with_seq(&app, "alpha", "boot-1", last_seq, vec![service("web", 2)])
            .await;
    assert_eq!(agent.resume_after, 0);
    assert_eq!(
        app.get_json(&format!("/restarts/{id}")).await["state"],
        "running"
    );
    agent.send_events(events).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "forced", "{restart}");
    assert_eq!(restart["hosts"][0]["agent_restart_id"], 1);
    assert_eq!(restart["hosts"][0]["steps"].as_array().unwrap().len(), 6);
}

/// The server dies right after sending the command, which never reached
/// the agent: once the agent is back and its events are all in, none of
/// them a restart, the command goes again under the same id.
#[tokio::test]
async fn a_command_lost_with_its_link_goes_again_under_its_id_once_the_agent_caught_up() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    let first = agent.expect_restart_command().await;
    let app = app.restart_server().await;
    let mut agent =
        FakeAgent::connect_with_seq(&app, "alpha", "boot-1", 0, vec![service("web", 1)]).await;
    let again = agent.expect_restart_command().await;
    assert_eq!(again, first, "the same command, under its id");
    agent
        .send(&AgentFrame::RestartStarted {
            command_id: again,
            result: Ok(1),
        })
        .await;
    let events = agent.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    agent.send_events(events).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded", "{restart}");
    assert_eq!(restart["hosts"][0]["agent_restart_id"], 1);
}

/// An agent that never answers hears the command three times, under one
/// id, and the host fails.
#[tokio::test]
async fn a_command_never_answered_goes_three_times_then_the_host_fails() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "heard {heard:?}");
        // A live agent: it sends a status every second.
        agent
            .send(&AgentFrame::Status {
                services: vec![service("web", 1)],
            })
            .await;
        if let Some(ServerFrame::Restart { command_id, .. }) =
            agent.recv_within(Duration::from_secs(1)).await
        {
            heard.push(command_id);
        }
        let restart = app.get_json(&format!("/restarts/{id}")).await;
        if restart["state"] == "finished" {
            assert_eq!(restart["outcome"], "failed");
            assert!(
                restart["hosts"][0]["outcome_reason"]
                    .as_str()
                    .unwrap()
                    .contains("never started"),
                "{restart}"
            );
            break;
        }
    }
    assert_eq!(heard.len(), 3, "{heard:?}");
    assert!(heard.iter().all(|c| *c == heard[0]), "{heard:?}");
}

#[tokio::test]
async fn max_parallel_and_a_host_filter_are_honoured() {
    let app = spawn_app().await;
    let mut a = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let mut b = FakeAgent::connect(&app, "b", "boot-b", vec![service("web", 1)]).await;
    let mut c = FakeAgent::connect(&app, "c", "boot-c", vec![service("web", 1)]).await;

    // Both commands go out before either host has answered.
    let response = app
        .post_restart(
            "web",
            Some(&app.operator),
            Some(r#"{"max_parallel": 2, "hosts": ["c", "a"]}"#),
            None,
            false,
        )
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let (ra, rc) = tokio::join!(
        a.serve_restart("web", 1, RestartOutcome::Succeeded),
        c.serve_restart("web", 1, RestartOutcome::Succeeded)
    );
    assert_eq!((ra, rc), (1, 1));
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded");
    let hosts: Vec<&str> = restart["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "c"]);
    assert!(b.recv_within(Duration::from_millis(200)).await.is_none());
    let by_host = app.get_json("/restarts?host=b").await;
    assert_eq!(by_host["restarts"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn an_idempotency_key_is_its_tokens_for_its_service_until_it_expires() {
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.timeouts.idempotency_key_lifetime = Duration::from_secs(2);
    })
    .await;
    let other_operator = baton_server::auth::create_token(
        &app.db().await,
        "another-operator",
        baton_server::domain::Role::Operator,
        None,
    )
    .await
    .unwrap();
    let mut agent = FakeAgent::connect(
        &app,
        "alpha",
        "boot-1",
        vec![service("web", 1), service("api", 1)],
    )
    .await;
    let mut generation = 1;
    // A restart that must be new: the agent is asked to run it.
    let mut fresh = async |token: &str, name: &str| -> u64 {
        let post = app.post_restart(name, Some(token), None, Some("deploy-42"), true);
        let serve = agent.serve_restart(name, generation, RestartOutcome::Succeeded);
        let (response, _) = tokio::join!(post, serve);
        generation += 1;
        assert_eq!(response.status(), 200, "a new restart of {name}");
        response.json::<serde_json::Value>().await.unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let first = fresh(&app.operator, "web").await;
    // Another operator who happens to pick the same key gets a restart of
    // their own, not the first operator's.
    let by_other = fresh(&other_operator, "web").await;
    assert_ne!(by_other, first);
    // The same key for another service is another restart.
    let other_service = fresh(&app.operator, "api").await;
    assert_ne!(other_service, first);
    // A retry of the first operator's request is still the first restart.
    let retry = app
        .post_restart("web", Some(&app.operator), None, Some("deploy-42"), false)
        .await;
    assert_eq!(retry.status(), 202);
    assert_eq!(
        retry.json::<serde_json::Value>().await.unwrap()["id"],
        first
    );
    // Once the key has expired, it starts a new restart.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let after_expiry = fresh(&app.operator, "web").await;
    assert!(after_expiry > other_service, "{after_expiry}");
    let list = app.get_json("/restarts").await;
    assert_eq!(list["restarts"].as_array().unwrap().len(), 4);
}

/// The server dies while the first host restarts; the second host's agent
/// reconnects only after the first is done (agents back off): its turn
/// waits for it within the offline grace instead of failing it.
#[tokio::test]
async fn a_host_still_reconnecting_after_a_server_restart_is_waited_for() {
    let app = spawn_app().await;
    let mut a = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let b = FakeAgent::connect(&app, "b", "boot-b", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    let _command = a.expect_restart_command().await;
    let app = app.restart_server().await;
    drop(b);
    let events = a.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    let last_seq = events.last().unwrap().seq;
    let mut a =
        FakeAgent::connect_with_seq(&app, "a", "boot-a", last_seq, vec![service("web", 2)]).await;
    a.send_events(events).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut b = FakeAgent::connect(&app, "b", "boot-b", vec![service("web", 1)]).await;
    b.serve_restart("web", 1, RestartOutcome::Succeeded).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded", "{restart}");
    assert_eq!(restart["hosts"][1]["outcome"], "succeeded", "{restart}");
}

#[tokio::test]
async fn a_restart_whose_events_the_agent_lost_is_settled_from_its_fetched_report() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let steps = agent.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    agent.send_events(steps[..1].to_vec()).await;
    agent.close().await;
    app.wait_offline("alpha").await;

    // While the link was down the restart ended, and so many events came
    // after it that the agent kept none of the restart's.
    let mut agent = FakeAgent::connect_with_seq(
        &app,
        "alpha",
        "boot-1",
        steps.last().unwrap().seq + 50,
        vec![service("web", 2)],
    )
    .await;
    assert_eq!(agent.resume_after, 1);
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
    let restart_id = loop {
        match agent.recv().await {
            ServerFrame::FetchReport { restart_id } => break restart_id,
            ServerFrame::Ack { .. } => continue,
            other => panic!("expected a fetch of the report, got {other:?}"),
        }
    };
    assert_eq!(restart_id, 1);
    agent
        .send(&AgentFrame::Report {
            restart_id,
            report: Some(RestartReport {
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
                connections: None,
                steps: steps.clone(),
                versions: None,
                output_tail: Vec::new(),
            }),
        })
        .await;

    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded", "{restart}");
    let host = &restart["hosts"][0];
    assert_eq!(host["outcome_from_report"], true, "{restart}");
    let seqs: Vec<u64> = host["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, steps.iter().map(|s| s.seq).collect::<Vec<_>>());
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("baton_event_sequence_anomalies_total{kind=\"gap\"} 1"),
        "the gap stays recorded:\n{metrics}"
    );
    assert!(
        metrics.contains("baton_host_restarts_settled_from_report_total 1"),
        "{metrics}"
    );
    let gaps: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM event_gaps")
        .fetch_one(app.db().await.reads())
        .await
        .unwrap();
    assert_eq!(gaps.0, 1);
}

#[tokio::test]
async fn a_restart_whose_agent_was_killed_and_came_back_ends_interrupted() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let started = agent.event(
        "web",
        Some(1),
        baton_proto::EventKind::RestartStarted {
            reason: None,
            requested_by: None,
        },
    );
    agent.send_events(vec![started]).await;
    // Killed before its outcome; the agent that takes over has a new lifetime
    // and no state file, so it knows nothing of the restart.
    agent.close().await;
    let mut next = FakeAgent::connect(&app, "alpha", "boot-2", vec![service("web", 1)]).await;
    let restart_id = next.expect_fetch_report().await;
    next.send(&AgentFrame::Report {
        restart_id,
        report: None,
    })
    .await;

    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "interrupted", "{restart}");
    assert_eq!(restart["hosts"][0]["outcome"], "interrupted", "{restart}");
    assert!(
        restart["hosts"][0]["outcome_reason"]
            .as_str()
            .unwrap()
            .contains("the agent restarted")
    );
}

#[tokio::test]
async fn a_restart_taken_over_by_the_agent_that_replaced_a_killed_one_ends_with_its_outcome() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let steps = agent.restart_events("web", 1, 1, RestartOutcome::Forced);
    agent.send_events(steps[..1].to_vec()).await;
    agent.close().await;

    // The agent that took over carries restart 1 on (its state file had it):
    // still draining when the server asks, forced at the drain's deadline.
    let mut next = FakeAgent::connect(&app, "alpha", "boot-2", vec![service("web", 1)]).await;
    let mut report = RestartReport {
        id: 1,
        service: "web".into(),
        reason: None,
        started_at: steps[0].at,
        finished_at: None,
        outcome: None,
        outcome_reason: None,
        old_generation: Some(1),
        new_generation: Some(2),
        connections_cut: None,
        connections: None,
        steps: Vec::new(),
        versions: None,
        output_tail: Vec::new(),
    };
    let restart_id = next.expect_fetch_report().await;
    assert_eq!(restart_id, 1);
    next.send(&AgentFrame::Report {
        restart_id,
        report: Some(report.clone()),
    })
    .await;
    let finished = next.event(
        "web",
        Some(1),
        EventKind::RestartFinished {
            outcome: RestartOutcome::Forced,
            reason: Some("drain timeout".into()),
            versions: None,
        },
    );
    next.send(&AgentFrame::Events {
        events: vec![finished.clone()],
    })
    .await;
    let restart_id = next.expect_fetch_report().await;
    report.finished_at = Some(finished.at);
    report.outcome = Some(RestartOutcome::Forced);
    report.outcome_reason = Some("drain timeout".into());
    report.steps = vec![finished];
    next.send(&AgentFrame::Report {
        restart_id,
        report: Some(report),
    })
    .await;

    let restart = app.wait_restart(id).await;
    assert_eq!(restart["hosts"][0]["outcome"], "forced", "{restart}");
    assert_eq!(
        restart["hosts"][0]["outcome_from_report"], true,
        "{restart}"
    );
    assert_eq!(restart["outcome"], "forced", "{restart}");
}

#[tokio::test]
async fn a_long_poll_of_a_restart_answers_when_it_changes_and_not_before() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let id = app.start_restart("web").await;
    agent.accept_restart(1).await;
    let url = format!("{}/restarts/{id}", app.address);
    let get = |etag: Option<String>, wait_ms: u64| {
        let mut request = app
            .client
            .get(format!("{url}?wait_ms={wait_ms}"))
            .bearer_auth(&app.viewer);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    // Settled once the command was accepted: the host runs, nothing more
    // happens until the agent sends its steps.
    let mut etag = String::new();
    for _ in 0..100 {
        let first = get(None, 0).await.unwrap();
        assert_eq!(first.status(), 200);
        let tag = first.headers()["etag"].to_str().unwrap().to_string();
        if tag == etag {
            break;
        }
        etag = tag;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nothing changes: after the wait, 304 with the same tag.
    let asked = std::time::Instant::now();
    let unchanged = get(Some(etag.clone()), 300).await.unwrap();
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"].to_str().unwrap(), etag);
    assert!(asked.elapsed() >= Duration::from_millis(300));

    // A step stored while the request waits answers it at once.
    let waiting = tokio::spawn(get(Some(etag.clone()), 30_000));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let events = agent.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    agent.send_events(events).await;
    let changed = waiting.await.unwrap().unwrap();
    assert_eq!(changed.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered only after {:?}",
        started.elapsed()
    );
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    let restart: serde_json::Value = changed.json().await.unwrap();
    assert!(
        !restart["hosts"][0]["steps"].as_array().unwrap().is_empty(),
        "{restart}"
    );
}
