//! Nothing sent to the notify socket grows the agent without bound: a
//! stranger's messages are counted, never stored, and a service's own flood
//! is held to its rate, its status lines to their length, and the event
//! history to its size.

use baton_proto::EventKind;
use baton_tests::{AgentUnderTest, demo_service};
use std::os::unix::net::UnixDatagram;

#[test]
fn the_event_history_survives_a_flood_of_strangers() {
    let agent = AgentUnderTest::start(&demo_service("web", ""));
    let first = agent.client().events();
    assert_eq!(first[0].seq, 1);
    let stranger = UnixDatagram::unbound().unwrap();
    stranger.connect(&agent.notify_socket).unwrap();
    // A newline in a datagram must not forge a log line.
    stranger
        .send(b"X=1\n2026-01-01T00:00:00.000000Z  INFO baton_agent: FORGED restart succeeded")
        .unwrap();
    for i in 0..30_000 {
        stranger
            .send(format!("READY=1\nSTATUS=stranger {i}").as_bytes())
            .unwrap();
    }
    // Something of web's after the flood, to know the agent has read it all.
    let (_, report) = agent.restart("web");
    assert!(report.outcome.is_some());
    assert_eq!(
        agent.status().notify_strangers,
        30_001,
        "every stranger's message is counted"
    );
    let events = agent.client().events();
    assert_eq!(
        events[0].seq, 1,
        "the history from before the flood is kept"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::NotifyIgnored { .. })),
        "a stranger's message is never stored"
    );
    assert!(events.len() < first.len() + 100, "{}", events.len());
    let log = agent.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("notify message")),
        "{log}"
    );
    assert!(log.contains("from a process of no generation"), "{log}");
}

#[test]
fn a_services_own_status_flood_is_bounded() {
    let script = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
s.send(b"READY=1")
long = "x" * 32 * 1024
for i in range(3000):
    s.send(("STATUS=%d %s" % (i, long)).encode())
s.send(b"STATUS=done")
time.sleep(3600)
"#;
    let agent = AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "chatty"
command = ["/usr/bin/python3", "-c", {script:?}]
"#
    ));
    // The flood runs at the generation's start; then the agent settles.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let events = agent.client().events();
    let statuses: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::GenerationStatus { status, .. } => Some(status.as_str()),
            _ => None,
        })
        .collect();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| s.len() <= 256),
        "a status is a line"
    );
    assert!(
        statuses.len() < 1_500,
        "held to the generation's rate: {}",
        statuses.len()
    );
    let stored: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len())
        .sum();
    assert!(stored < 1024 * 1024, "{stored} bytes of events");
}
