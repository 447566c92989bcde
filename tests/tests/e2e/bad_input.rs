//! Bad input gets a clear error and changes nothing.

use baton_proto::{ErrorKind, EventKind, Request, Response, RestartOutcome, ServiceState};
use baton_tests::{AgentUnderTest, bin, demo_service, demo_service_args};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_malformed_config_names_the_file_line_and_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"web\"\ncommand = [\"x\"]\ndrain_timeout = \"forever\"\n",
    )
    .unwrap();
    let out = Command::new(bin("baton-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("drain_timeout"), "{stderr}");
}

#[test]
fn the_cli_reports_an_unknown_service_and_a_missing_agent() {
    let agent = AgentUnderTest::start(&demo_service("web", ""));
    let out = Command::new(bin("baton"))
        .args(["--agent"])
        .arg(&agent.socket)
        .args(["restart", "nope", "--wait"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named \"nope\""));

    let out = Command::new(bin("baton"))
        .args(["--agent", "/nonexistent/agent.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"));

    let out = Command::new(bin("baton"))
        .args(["restart"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn malformed_and_future_requests_get_errors_and_the_connection_survives() {
    let agent = AgentUnderTest::start(&demo_service("web", ""));
    let mut client = agent.client();
    client.send_raw("{not json");
    match client.next_response() {
        Some(Response::Error(body)) => assert_eq!(body.kind, ErrorKind::BadRequest),
        other => panic!("{other:?}"),
    }
    client.send_raw(r#"{"version":99,"request":{"type":"status"}}"#);
    match client.next_response() {
        Some(Response::Error(body)) => assert_eq!(body.kind, ErrorKind::UnsupportedVersion),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.request(Request::Status),
        Response::Status(_)
    ));
    match client.request(Request::GetRestart { id: 12345 }) {
        Response::Error(body) => assert_eq!(body.kind, ErrorKind::UnknownRestart),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_second_restart_while_one_runs_is_refused_with_the_running_id() {
    let agent = AgentUnderTest::start(&demo_service_args("web", &["--start-delay", "1s"], ""));
    let mut first = agent.client();
    first.send(Request::Restart {
        service: "web".into(),
        follow: true,
        reason: None,
    });
    let Some(Response::RestartAccepted { id }) = first.next_response() else {
        panic!("first restart refused")
    };
    match agent.client().request(Request::Restart {
        service: "web".into(),
        follow: false,
        reason: None,
    }) {
        Response::Error(body) => {
            assert_eq!(body.kind, ErrorKind::RestartInProgress);
            assert_eq!(body.running_restart, Some(id));
        }
        other => panic!("second restart was not refused: {other:?}"),
    }
    let out = Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(["restart", "web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    loop {
        match first.next_response() {
            Some(Response::Restart(report)) => {
                assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
                break;
            }
            Some(_) => {}
            None => panic!("stream ended early"),
        }
    }
}

#[test]
fn a_ready_message_from_a_stranger_pid_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let agent = AgentUnderTest::start(&demo_service_args(
        "web",
        &["--mode-file", mode_file.to_str().unwrap()],
        r#"ready_timeout = "2s""#,
    ));
    std::fs::write(&mode_file, "never-ready").unwrap();
    let mut follower = agent.client();
    follower.send(Request::Restart {
        service: "web".into(),
        follow: true,
        reason: None,
    });
    assert!(matches!(
        follower.next_response(),
        Some(Response::RestartAccepted { .. })
    ));
    // This test process is no generation: its READY=1 must not count.
    std::thread::sleep(Duration::from_millis(300));
    let stranger = UnixDatagram::unbound().unwrap();
    for _ in 0..3 {
        stranger
            .send_to(b"READY=1\nSTATUS=fake", &agent.notify_socket)
            .unwrap();
    }
    let report = loop {
        match follower.next_response() {
            Some(Response::Restart(report)) => break report,
            Some(_) => {}
            None => panic!("stream ended early"),
        }
    };
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::RolledBack),
        "{report:?}"
    );
    let ignored = agent
        .client()
        .events()
        .into_iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::NotifyIgnored { pid, .. } if *pid == std::process::id())
        })
        .count();
    // Counted and logged, never stored: anyone may write to the socket.
    assert_eq!(ignored, 0);
    let log = agent.log();
    assert!(
        log.contains("notify message from a process of no generation ignored"),
        "{log}"
    );
    assert_eq!(agent.service("web").state, ServiceState::Ready);
}

#[test]
fn a_service_that_cannot_start_never_takes_the_agent_or_the_others_down() {
    let agent = AgentUnderTest::start_unchecked(&format!(
        "{}{}",
        demo_service("good", ""),
        r#"
[[service]]
name = "broken"
command = ["/nonexistent/bin/server"]

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#
    ));
    let status = agent.wait_for(
        "good ready, broken crash-looping",
        Duration::from_secs(10),
        |s| {
            let good = s.services.iter().find(|x| x.name == "good").unwrap();
            let broken = s.services.iter().find(|x| x.name == "broken").unwrap();
            good.state == ServiceState::Ready
                && broken.state == ServiceState::CrashLooping
                && broken.consecutive_crashes >= 2
        },
    );
    assert!(
        status
            .services
            .iter()
            .any(|s| s.name == "broken" && s.generations.is_empty())
    );
    let (_, report) = agent.restart("broken");
    assert_eq!(report.outcome, Some(RestartOutcome::Failed));
    let reason = report.outcome_reason.unwrap_or_default();
    assert!(reason.contains("/nonexistent/bin/server"), "{reason}");
    let (_, report) = agent.restart("good");
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
}
