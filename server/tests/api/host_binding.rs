//! An agent token speaks for one host: the attacks of a host with a valid
//! agent token on another host's link, its events and its restarts.

use baton_proto::link::{AgentFrame, Refusal, ServerFrame};
use baton_proto::{ErrorBody, ErrorKind, EventKind, RestartOutcome};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{FakeAgent, NotWelcomed, TestApp, service, spawn_app};

async fn host_online(app: &TestApp, host: &str) -> Option<serde_json::Value> {
    let hosts = app.get_json("/hosts").await;
    hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .cloned()
}

/// `beta`'s token saying hello as `alpha`.
async fn beta_as_alpha(app: &TestApp, boot_id: &str, last_seq: u64) -> NotWelcomed {
    let beta = app.agent_token("beta").await;
    match FakeAgent::try_connect(app, &beta, "alpha", boot_id, last_seq, vec![]).await {
        Ok(_) => panic!("beta's token was welcomed as alpha"),
        Err(refused) => refused,
    }
}

#[tokio::test]
async fn a_hello_for_another_host_is_refused_for_good_and_the_real_host_stays_linked() {
    let app = spawn_app().await;
    let mut alpha = FakeAgent::connect(&app, "alpha", "boot-a", vec![service("web", 1)]).await;

    let refused = beta_as_alpha(&app, "boot-a", 0).await;
    let ServerFrame::Refused { message, refusal } = &refused.frame else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(*refusal, Refusal::WrongHost);
    assert!(
        message.contains("\"beta\"") && message.contains("\"alpha\""),
        "{message}"
    );
    let close = refused.close.expect("a close frame with the reason");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("\"beta\""), "{close:?}");

    // The real alpha was not replaced: still online, its link still works.
    let host = host_online(&app, "alpha").await.unwrap();
    assert_eq!(host["online"], true);
    assert_eq!(host["boot_id"], "boot-a");
    let events = alpha.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    alpha.send_events(events).await;
    // Nothing was stored for the host the refused hello named or its own.
    assert!(host_online(&app, "beta").await.is_none());
}

#[tokio::test]
async fn forged_high_sequence_numbers_do_not_move_another_hosts_resume_point() {
    let app = spawn_app().await;
    let mut alpha = FakeAgent::connect(&app, "alpha", "boot-a", vec![service("web", 1)]).await;
    let events = alpha.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    let last = events.last().unwrap().seq;
    alpha.send_events(events).await;
    alpha.close().await;

    // Beta's agent, with alpha's boot id from GET /hosts, claims a million
    // events for alpha and would send them if it were let in.
    let refused = beta_as_alpha(&app, "boot-a", 1_000_000).await;
    assert!(
        matches!(refused.frame, ServerFrame::Refused { .. }),
        "{refused:?}"
    );

    let alpha =
        FakeAgent::connect_with_seq(&app, "alpha", "boot-a", last, vec![service("web", 2)]).await;
    assert_eq!(alpha.resume_after, last);
}

#[tokio::test]
async fn a_jump_beyond_the_announced_sequence_is_refused_and_a_gap_below_it_is_recorded() {
    let app = spawn_app().await;
    let mut alpha = FakeAgent::connect(&app, "alpha", "boot-a", vec![service("web", 1)]).await;
    let first = alpha.event("web", None, restart_started());
    let second = alpha.event("web", None, restart_started());
    alpha.send_events(vec![first, second]).await;

    // A sequence number the agent could not have sent: beyond the last it
    // announced (0) and not following on. Not acknowledged; the link ends.
    alpha.next_seq = 1_000_001;
    let forged = alpha.event("web", None, restart_started());
    alpha
        .send(&AgentFrame::Events {
            events: vec![forged],
        })
        .await;
    assert_eq!(alpha.recv_within(Duration::from_secs(5)).await, None);

    // The resume point is what was stored before it.
    let mut alpha =
        FakeAgent::connect_with_seq(&app, "alpha", "boot-a", 50, vec![service("web", 1)]).await;
    assert_eq!(alpha.resume_after, 2);

    // The agent evicted events 3..39 while away: the hole is recorded, the
    // rest stored.
    alpha.next_seq = 40;
    let rest: Vec<_> = (40..=50)
        .map(|_| alpha.event("web", None, restart_started()))
        .collect();
    alpha.send_events(rest).await;
    let db = app.db().await;
    let gaps: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT host, boot_id, after_seq, next_seq FROM event_gaps")
            .fetch_all(db.reads())
            .await
            .unwrap();
    assert_eq!(gaps, vec![("alpha".into(), "boot-a".into(), 2, 40)]);
    let (stored,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM events WHERE host = 'alpha'")
        .fetch_one(db.reads())
        .await
        .unwrap();
    assert_eq!(stored, 50);

    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("baton_event_sequence_anomalies_total{kind=\"gap\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_event_sequence_anomalies_total{kind=\"jump\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_answer_on_another_link_or_to_a_guessed_id_does_not_settle_a_restart() {
    let app = spawn_app().await;
    let mut alpha = FakeAgent::connect(&app, "alpha", "boot-a", vec![service("web", 1)]).await;
    let mut beta = FakeAgent::connect(&app, "beta", "boot-b", vec![service("api", 1)]).await;

    let id = app.start_restart("web").await;
    let command_id = alpha.expect_restart_command().await;
    assert_eq!(command_id.len(), 32, "not 128 random bits: {command_id}");

    // Beta answers alpha's command, with its real id (however it learnt it)
    // and with the ids the server used to hand out.
    for forged in [command_id.clone(), format!("restart-{id}-0")] {
        beta.send(&AgentFrame::RestartStarted {
            command_id: forged,
            result: Err(ErrorBody {
                kind: ErrorKind::UnknownService,
                message: "no service named \"web\" on this agent".into(),
                running_restart: None,
            }),
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restart = app.get_json(&format!("/restarts/{id}")).await;
    assert_eq!(restart["state"], "running", "{restart}");

    // Alpha's own answer is the one that counts.
    alpha
        .send(&AgentFrame::RestartStarted {
            command_id,
            result: Ok(1),
        })
        .await;
    let events = alpha.restart_events("web", 1, 1, RestartOutcome::Succeeded);
    alpha.send_events(events).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded", "{restart}");
}

#[tokio::test]
async fn an_agent_token_from_before_tokens_named_a_host_is_pinned_to_its_first() {
    let app = spawn_app().await;
    let token = "baton_legacy";
    let db = app.db().await;
    sqlx::query(
        "INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES ('old', 'agent', $1, 0)",
    )
    .bind(baton_server::auth::hash_token(token))
    .execute(db.writes())
    .await
    .unwrap();

    let first = FakeAgent::try_connect(&app, token, "gamma", "boot-g", 0, vec![]).await;
    assert!(first.is_ok(), "{:?}", first.err());
    let second = FakeAgent::try_connect(&app, token, "delta", "boot-d", 0, vec![])
        .await
        .err()
        .expect("the token is gamma's now");
    assert!(
        matches!(
            second.frame,
            ServerFrame::Refused {
                refusal: Refusal::WrongHost,
                ..
            }
        ),
        "{second:?}"
    );
    let (host,): (Option<String>,) =
        sqlx::query_as("SELECT host FROM api_tokens WHERE name = 'old'")
            .fetch_one(db.reads())
            .await
            .unwrap();
    assert_eq!(host.as_deref(), Some("gamma"));
}

#[tokio::test]
async fn stored_events_beyond_what_the_agent_produced_are_forgotten_and_its_own_take_their_place() {
    let app = spawn_app().await;
    let mut alpha = FakeAgent::connect(&app, "alpha", "boot-a", vec![service("web", 1)]).await;
    let forged: Vec<_> = (0..6)
        .map(|_| alpha.event("web", None, restart_started()))
        .collect();
    alpha.send_events(forged).await;
    alpha.close().await;

    // The agent itself has produced only two events of this lifetime.
    let mut alpha =
        FakeAgent::connect_with_seq(&app, "alpha", "boot-a", 2, vec![service("web", 1)]).await;
    assert_eq!(alpha.resume_after, 2);
    let own = alpha.event(
        "web",
        Some(7),
        EventKind::RestartFinished {
            outcome: RestartOutcome::Succeeded,
            reason: None,
            versions: None,
        },
    );
    assert_eq!(own.seq, 3);
    alpha.send_events(vec![own]).await;
    let db = app.db().await;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, kind FROM events WHERE host = 'alpha' ORDER BY seq")
            .fetch_all(db.reads())
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (1, "restart_started".into()),
            (2, "restart_started".into()),
            (3, "restart_finished".into()),
        ]
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("baton_event_sequence_anomalies_total{kind=\"ahead_of_agent\"} 1"),
        "{metrics}"
    );
}

/// An event of the kind these tests send: what it says does not matter.
fn restart_started() -> EventKind {
    EventKind::RestartStarted {
        reason: None,
        requested_by: None,
    }
}
