//! An agent with several servers (`urls`): two real `baton-server`
//! processes on one SQLite file, the agent trying them in turn. A server
//! that is down is passed over at once; when the server it is linked to is
//! killed, the agent links to the other, and what happens on the host from
//! then on arrives there.

use baton_proto::RestartOutcome;
use baton_proto::api::GenerationPage;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, demo_service};
use std::time::{Duration, Instant};

/// An agent config for `host` linking to `servers`, in that order.
fn config(host: &str, servers: &[&ServerUnderTest], token: &str) -> String {
    let urls: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url())).collect();
    format!(
        "host = \"{host}\"\n[server]\nurls = [{}]\ntoken = \"{token}\"\n{}",
        urls.join(", "),
        demo_service("web", "")
    )
}

fn wait_linked_to(agent: &AgentUnderTest, server: &ServerUnderTest, within: Duration) {
    let url = server.url();
    agent.wait_for(&format!("a link to {url}"), within, |status| {
        status
            .server_link
            .as_ref()
            .is_some_and(|link| link.linked && link.url == url)
    });
}

/// The generations `server` has recorded for `web` (from the events it
/// stored), newest first.
async fn generations(server: &ServerUnderTest) -> Vec<u64> {
    let page: GenerationPage = server.get_json("/services/web/generations").await;
    page.generations.iter().map(|g| g.generation).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_first_server_is_down_links_to_the_next_at_once() {
    let mut first = ServerUnderTest::start();
    let second = first.replica();
    let token = first.agent_token("alpha");
    first.kill();

    let started = Instant::now();
    let agent = AgentUnderTest::start(&config("alpha", &[&first, &second], &token));
    wait_linked_to(&agent, &second, Duration::from_secs(20));
    // The next server is tried as soon as the first refuses, not after a
    // backoff.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let link = agent.status().server_link.expect("a server link");
    assert_eq!(link.urls, [first.url(), second.url()]);
    second.wait_for_hosts(1).await;
    assert!(
        agent.log().contains("trying the next server"),
        "{}",
        agent.log()
    );

    // The server it reached drives it.
    let restart = second.restart_and_wait("web").await;
    assert_eq!(restart.outcome, Some(RestartOutcome::Succeeded));
}

#[tokio::test(flavor = "multi_thread")]
async fn when_its_server_is_killed_the_agent_links_to_the_next_and_its_events_arrive_there() {
    let mut first = ServerUnderTest::start();
    let second = first.replica();
    let token = first.agent_token("alpha");
    let agent = AgentUnderTest::start(&config("alpha", &[&first, &second], &token));
    wait_linked_to(&agent, &first, Duration::from_secs(20));
    first.wait_for_hosts(1).await;
    assert_eq!(generations(&first).await, [1]);

    first.kill();
    wait_linked_to(&agent, &second, Duration::from_secs(20));
    second.wait_for_hosts(1).await;

    // A restart on the host while linked to the second server: its events
    // are stored by the second server.
    let (_, report) = agent.restart("web");
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
    let deadline = Instant::now() + Duration::from_secs(20);
    while generations(&second).await.first() != Some(&2) {
        assert!(
            Instant::now() < deadline,
            "the restart's events never reached the second server: {:?}",
            generations(&second).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the second server drives the host's restarts.
    let restart = second.restart_and_wait("web").await;
    assert_eq!(restart.outcome, Some(RestartOutcome::Succeeded));
    assert_eq!(generations(&second).await.first(), Some(&3));
}
