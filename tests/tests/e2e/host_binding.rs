//! An agent token speaks for one host: an agent holding another host's
//! token is refused, stops linking with the reason logged, and keeps
//! serving; the real host is untouched.

use baton_proto::RestartOutcome;
use baton_proto::api::HostRestartState;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, demo_service_args};
use std::time::{Duration, Instant};

async fn host(server: &ServerUnderTest, name: &str) -> Option<serde_json::Value> {
    let list: serde_json::Value = server.get_json("/hosts").await;
    list["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
}

fn wait_for_log(agent: &AgentUnderTest, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = agent.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never logged {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_another_hosts_token_is_refused_stops_linking_and_keeps_serving() {
    let server = ServerUnderTest::start();
    let real = AgentUnderTest::start(&server.host_config("host-a", "127.0.0.2", "web", &[], ""));
    let deadline = Instant::now() + Duration::from_secs(20);
    let boot_id = loop {
        if let Some(h) = host(&server, "host-a").await
            && h["online"] == true
        {
            break h["boot_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "host-a never came online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // An agent holding host-b's token says it is host-a.
    let intruder = AgentUnderTest::start(&format!(
        "host = \"host-a\"\n{}{}",
        server.agent_section_with(&server.agent_token("host-b")),
        demo_service_args("web", &[], "")
    ));
    let log = wait_for_log(
        &intruder,
        "refuses this agent for good",
        Duration::from_secs(15),
    );
    assert!(
        log.contains("speaks for host") && log.contains("host-b"),
        "{log}"
    );
    assert!(log.contains("ERROR"), "{log}");

    // It does not try again: one refusal in the server's log, however long
    // we wait, and no retry in the agent's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server_log = server.log();
    assert_eq!(
        server_log.matches("agent link refused").count(),
        1,
        "{server_log}"
    );
    assert!(
        server_log.contains("an agent token spoke for another host"),
        "{server_log}"
    );
    assert!(!intruder.log().contains("retrying"), "{}", intruder.log());

    // Its own service runs on, refused link or not.
    assert!(
        std::net::TcpStream::connect(intruder.tcp_addr("web", "http")).is_ok(),
        "the refused agent's service stopped accepting"
    );
    assert_eq!(
        intruder.service("web").state,
        baton_proto::ServiceState::Ready
    );

    // The real host-a was never replaced, and a restart of web is its own.
    let h = host(&server, "host-a").await.unwrap();
    assert_eq!(h["online"], true, "{h}");
    assert_eq!(h["boot_id"], boot_id.as_str(), "{h}");
    assert!(host(&server, "host-b").await.is_none());
    let restart = server.restart_and_wait("web").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:?}"
    );
    assert_eq!(restart.hosts.len(), 1);
    assert_eq!(restart.hosts[0].host, "host-a");
    assert_eq!(restart.hosts[0].state, HostRestartState::Finished);
    let current = real
        .service("web")
        .generations
        .iter()
        .map(|g| g.generation)
        .max();
    assert_eq!(current, Some(2), "host-a's own agent did the restart");
    let intruders = intruder
        .service("web")
        .generations
        .iter()
        .map(|g| g.generation)
        .max();
    assert_eq!(intruders, Some(1), "the refused agent got no command");
}
