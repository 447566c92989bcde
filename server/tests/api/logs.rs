//! `GET /hosts/{host}/services/{name}/logs` against an agent that says
//! exactly what the test wants: one that predates the command, and one whose
//! reader leaves.

use crate::helpers::{FakeAgent, service, spawn_app};
use baton_proto::link::{AgentFrame, ServerFrame};
use baton_proto::{OutputLine, OutputStream};
use std::time::Duration;

#[tokio::test]
async fn an_agent_that_ignores_the_logs_command_is_503_and_keeps_its_link() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let url = format!("{}/hosts/alpha/services/web/logs", app.address);
    let request = app.client.get(url).bearer_auth(&app.viewer).send();
    let asked = tokio::spawn(request);
    // An agent from before the command: it reads the frame, does nothing,
    // and goes on reporting.
    let started = std::time::Instant::now();
    while !asked.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the request hangs"
        );
        let _ = agent.recv_within(Duration::from_millis(500)).await;
        agent
            .send(&AgentFrame::Status {
                services: vec![service("web", 1)],
            })
            .await;
    }
    let response = asked.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("did not answer"),
        "{body}"
    );
    let hosts = app.get_json("/hosts").await;
    assert_eq!(hosts["hosts"][0]["online"], true, "{hosts}");
}

#[tokio::test]
async fn a_follower_that_leaves_cancels_its_stream_on_the_agent() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let url = format!(
        "{}/hosts/alpha/services/web/logs?follow=true&lines=5",
        app.address
    );
    let request = app.client.get(url).bearer_auth(&app.viewer).send();
    let asked = tokio::spawn(request);
    let ServerFrame::Logs {
        stream_id,
        service: name,
        lines,
        follow,
        ..
    } = agent.recv().await
    else {
        panic!("expected a logs command")
    };
    assert_eq!((name.as_str(), lines, follow), ("web", 5, true));
    agent
        .send(&AgentFrame::Logs {
            stream_id: stream_id.clone(),
            lines: vec![OutputLine {
                time: 1,
                generation: 1,
                stream: OutputStream::Stdout,
                text: "<b>hello</b>".into(),
            }],
            done: false,
            error: None,
        })
        .await;
    let mut response = asked.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let chunk = response.chunk().await.unwrap().unwrap();
    let line: OutputLine = serde_json::from_slice(chunk.trim_ascii()).unwrap();
    assert_eq!(line.text, "<b>hello</b>");
    drop(response);
    // The server notices at its next write at the latest; the agent is told.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(std::time::Instant::now() < deadline, "no cancel came");
        match agent.recv_within(Duration::from_millis(500)).await {
            Some(ServerFrame::CancelLogs {
                stream_id: cancelled,
            }) => {
                assert_eq!(cancelled, stream_id);
                break;
            }
            _ => {
                agent
                    .send(&AgentFrame::Status {
                        services: vec![service("web", 1)],
                    })
                    .await;
            }
        }
    }
}
