//! The agent's own life: reload on SIGHUP, privilege drop, graceful stop.

use baton_proto::{GenerationState, ServiceState};
use baton_tests::{AgentUnderTest, demo_service, demo_service_args};
use nix::sys::signal::Signal;
use std::time::Duration;

#[test]
fn sighup_adds_removes_and_restarts_changed_services() {
    let agent = AgentUnderTest::start(&format!(
        "{}{}",
        demo_service("keep", ""),
        demo_service("drop", "")
    ));
    let keep_pid = agent.service("keep").generations[0].pid;
    let drop_pid = agent.service("drop").generations[0].pid;
    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let control_line = config.lines().next().unwrap().to_string();

    // A broken file changes nothing.
    std::fs::write(&agent.config_path, "[[service]]\nname = \n").unwrap();
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.status().services.len(), 2);
    assert!(agent.log().contains("reload refused"));

    std::fs::write(
        &agent.config_path,
        format!(
            "{control_line}\n{}{}",
            demo_service_args("keep", &["--start-delay", "10ms"], ""),
            demo_service("added", "")
        ),
    )
    .unwrap();
    agent.signal(Signal::SIGHUP);
    let status = agent.wait_for("the reload", Duration::from_secs(20), |s| {
        let names: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
        names == ["added", "keep"]
            && s.services.iter().all(|s| s.state == ServiceState::Ready)
            && s.services[1].generations.len() == 1
            && s.services[1].generations[0].pid != keep_pid
    });
    let keep = &status.services[1];
    assert_eq!(
        keep.generations[0].generation, 2,
        "changed service was hot-restarted"
    );
    assert_eq!(
        keep.last_restart.as_ref().unwrap().reason.as_deref(),
        Some("configuration changed")
    );
    // The removed service's generation is gone.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!std::path::Path::new(&format!("/proc/{drop_pid}")).exists());
}

#[test]
fn a_service_with_a_user_runs_as_that_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to drop privileges");
        return;
    }
    let agent = AgentUnderTest::start(&demo_service("web", r#"user = "nobody""#));
    let pid = agent.service("web").generations[0].pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(uids.iter().all(|u| *u == nobody.uid.as_raw()), "{uid_line}");
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert!(
        gid_line
            .split_whitespace()
            .skip(1)
            .all(|g| g.parse::<u32>().unwrap() == nobody.gid.as_raw()),
        "{gid_line}"
    );
    // Root's supplementary groups are gone.
    let groups_line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        !groups_line.split_whitespace().skip(1).any(|g| g == "0"),
        "{groups_line}"
    );
    // It still serves on the socket the root agent bound for it.
    let (_, report) = agent.restart("web");
    assert_eq!(report.outcome, Some(baton_proto::RestartOutcome::Succeeded));
}

#[test]
fn sigterm_stops_every_generation_gracefully_and_the_agent_exits_zero() {
    let agent = AgentUnderTest::start(&format!(
        "{}{}",
        demo_service("one", ""),
        demo_service("two", "")
    ));
    let pids: Vec<u32> = agent
        .status()
        .services
        .iter()
        .map(|s| {
            assert_eq!(s.generations[0].state, GenerationState::Ready);
            s.generations[0].pid
        })
        .collect();
    let socket = agent.socket.clone();
    let status = agent.stop();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(!socket.exists(), "control socket removed");
}
