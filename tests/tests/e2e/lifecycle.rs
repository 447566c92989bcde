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

fn baton(agent: &AgentUnderTest, args: &[&str]) -> std::process::Output {
    std::process::Command::new(baton_tests::bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn baton_reload_answers_with_the_config_error_and_changes_nothing() {
    let agent = AgentUnderTest::start(&demo_service("keep", ""));
    let pid = agent.service("keep").generations[0].pid;
    let config = std::fs::read_to_string(&agent.config_path).unwrap();

    std::fs::write(
        &agent.config_path,
        format!("{config}\n[[service]]\nname = \"bad name\"\ncommand = [\"x\"]\n"),
    )
    .unwrap();
    let out = baton(&agent, &["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let line = config.lines().count() + 3;
    assert!(
        stderr.contains(&format!("agent.toml:{line}:")),
        "names the file and line {line}: {stderr}"
    );
    assert_eq!(agent.status().services.len(), 1);
    assert_eq!(agent.service("keep").generations[0].pid, pid);

    std::fs::write(
        &agent.config_path,
        format!("{config}{}", demo_service("added", "")),
    )
    .unwrap();
    let out = baton(&agent, &["reload"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.trim(), "added: added");
    assert_eq!(agent.service("keep").generations[0].pid, pid, "unchanged");
}

#[test]
fn a_renamed_service_keeps_its_address_in_one_reload_without_a_refused_connection() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let service = |name: &str| {
        demo_service(name, "").replace("tcp://127.0.0.1:0", &format!("tcp://127.0.0.1:{port}"))
    };
    let agent = AgentUnderTest::start(&service("old"));
    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let control_line = config.lines().next().unwrap().to_string();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(port) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        });
        // Ends the load even when an assertion below fails.
        let stopper = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(
            &agent.config_path,
            format!("{control_line}\n{}", service("new")),
        )
        .unwrap();
        let out = baton(&agent, &["reload"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("carried over: old/http -> new/http"),
            "{stdout}"
        );
        agent.wait_for("the renamed service", Duration::from_secs(20), |s| {
            s.services.len() == 1
                && s.services[0].name == "new"
                && s.services[0].state == ServiceState::Ready
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(stopper);
        load.join().unwrap()
    });
    assert!(ok > 10, "only {ok} requests");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One request on a new connection.
fn get(port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&answer).into_owned())
    }
}

#[test]
fn restart_ids_and_the_last_report_survive_the_agents_upgrade() {
    let agent = AgentUnderTest::start(&demo_service("web", ""));
    let (_, first) = agent.restart("web");
    assert_eq!(first.id, 1);
    let boot_before = agent.status().boot_id;
    agent.signal(Signal::SIGUSR2);
    let after = agent.wait_for("the new image", Duration::from_secs(10), |s| {
        s.boot_id != boot_before
    });
    // `LAST RESTART` is still restart 1, with its outcome and steps.
    let last = after.services[0]
        .last_restart
        .as_ref()
        .unwrap_or_else(|| panic!("the last restart was lost: {after:#?}"));
    assert_eq!(last.id, 1);
    assert_eq!(last.outcome, first.outcome);
    assert_eq!(last.steps.len(), first.steps.len());
    let shown = agent
        .client()
        .request(baton_proto::Request::GetRestart { id: 1 });
    assert!(
        matches!(&shown, baton_proto::Response::Restart(report) if report.id == 1),
        "{shown:?}"
    );
    // The next restart gets the next id, not 1 again.
    let (_, second) = agent.restart("web");
    assert_eq!(second.id, 2);
}
