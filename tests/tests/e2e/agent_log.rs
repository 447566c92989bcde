//! The agent's and the server's own logs, written to a file (as a service
//! manager or `2>file` does): plain text, or one JSON object per line.

use baton_testkit::AgentSetup;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin, demo_service};
use std::time::Duration;

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let server = ServerUnderTest::start();
    let agent = AgentUnderTest::start(&server.host_config("host-a", "127.0.0.1", "web", &[], ""));
    agent.restart("web");
    let log = agent.log();
    assert!(log.contains("INFO"), "the agent logged nothing: {log}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in the agent's log:\n{log:?}"
    );
    let log = server.log();
    assert!(log.contains("INFO"), "the server logged nothing: {log}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in the server's log:\n{log:?}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let agent = AgentSetup::new(bin("baton-agent"), demo_service("web", ""))
        .prefix("baton-test-")
        .env("BATON_LOG", "info")
        .env("BATON_LOG_FORMAT", "json")
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    agent.wait_all_ready(Duration::from_secs(30)).unwrap();
    let log = agent.process().log();
    // The service's own standard error shares the file; it logs as it likes.
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| !line.contains("baton_demo:"))
        .collect();
    assert!(lines.len() >= 2, "too little logged: {log}");
    for line in lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        assert!(object.is_object(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"].is_object(), "{line}");
    }
}
