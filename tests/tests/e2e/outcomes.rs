//! Every restart outcome, from real generations misbehaving.

use baton_proto::{EventKind, RestartOutcome, ServiceState};
use baton_tests::{AgentUnderTest, demo_service, demo_service_args};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn demo_with_mode_file(name: &str, mode_file: &std::path::Path, extra: &str) -> String {
    demo_service_args(name, &["--mode-file", mode_file.to_str().unwrap()], extra)
}

/// One request on a keep-alive connection, which then stays open.
fn open_idle_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    stream
}

#[test]
fn an_old_generation_that_ignores_sigterm_is_killed_and_its_connections_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    std::fs::write(&mode_file, "ignore-sigterm").unwrap();
    let agent = AgentUnderTest::start(&demo_with_mode_file(
        "web",
        &mode_file,
        r#"drain_timeout = "1500ms""#,
    ));
    let addr = agent.tcp_addr("web", "http");
    let held: Vec<TcpStream> = (0..7).map(|_| open_idle_connection(addr)).collect();
    std::fs::write(&mode_file, "normal").unwrap();

    let started = Instant::now();
    let (_, report) = agent.restart("web");
    assert_eq!(report.outcome, Some(RestartOutcome::Forced), "{report:?}");
    assert_eq!(report.connections_cut, Some(7), "{report:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let killed = report
        .steps
        .iter()
        .find_map(|s| match s.kind {
            EventKind::GenerationKilled {
                connections_cut, ..
            } => Some(connections_cut),
            _ => None,
        })
        .expect("a kill step");
    assert_eq!(killed, 7);
    // The held connections really were cut by the kill.
    for mut stream in held {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 16];
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    }
    assert_eq!(agent.service("web").state, ServiceState::Ready);
}

#[test]
fn a_generation_that_never_becomes_ready_is_rolled_back_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let agent = AgentUnderTest::start(&demo_with_mode_file(
        "web",
        &mode_file,
        r#"ready_timeout = "800ms""#,
    ));
    let before = agent.service("web").generations[0].clone();
    std::fs::write(&mode_file, "never-ready").unwrap();
    let (_, report) = agent.restart("web");
    assert_eq!(report.outcome, Some(RestartOutcome::RolledBack));
    assert!(
        report
            .outcome_reason
            .as_deref()
            .unwrap()
            .contains("not ready within 800ms"),
        "{report:?}"
    );
    let after = agent.service("web");
    assert_eq!(after.generations.len(), 1, "the new generation was stopped");
    assert_eq!(after.generations[0].pid, before.pid);
    // The old generation was never signalled and still answers.
    let mut stream = open_idle_connection(agent.tcp_addr("web", "http"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
}

#[test]
fn a_killed_generation_is_replaced_and_no_connection_is_refused() {
    let agent = AgentUnderTest::start(&demo_service("web", ""));
    let addr = agent.tcp_addr("web", "http");
    let victim = agent.service("web").generations[0].pid as i32;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut refused, mut answered, mut other) = (0u32, 0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match TcpStream::connect(addr) {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                        Err(_) => other += 1,
                        Ok(mut stream) => {
                            stream
                                .set_read_timeout(Some(Duration::from_secs(10)))
                                .unwrap();
                            let _ = stream.write_all(
                                b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                            );
                            let mut body = Vec::new();
                            let _ = stream.read_to_end(&mut body);
                            if body.starts_with(b"HTTP/1.1 200") {
                                answered += 1;
                            } else {
                                // Cut by the kill while the dead generation held it.
                                other += 1;
                            }
                        }
                    }
                }
                (refused, answered, other)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = agent.wait_for("a new generation", Duration::from_secs(10), |s| {
        s.services[0].state == ServiceState::Ready
            && s.services[0]
                .generations
                .iter()
                .any(|g| g.pid as i32 != victim)
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut refused, mut answered, mut cut) = (0, 0, 0);
    for client in clients {
        let (r, a, o) = client.join().unwrap();
        refused += r;
        answered += a;
        cut += o;
    }
    assert_eq!(
        refused, 0,
        "connections were refused while no generation ran"
    );
    assert!(answered > 100, "answered {answered}");
    // Only requests in the dead generation's hands can be lost: at most one per client.
    assert!(cut <= 4, "{cut} requests cut");
    assert_eq!(status.services[0].consecutive_crashes, 1);
    let exited = agent
        .status()
        .services
        .into_iter()
        .next()
        .unwrap()
        .generations;
    assert_eq!(exited.len(), 1);
}

#[test]
fn a_crash_loop_is_visible_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    std::fs::write(&mode_file, "crash").unwrap();
    let agent = AgentUnderTest::start_unchecked(&demo_with_mode_file("web", &mode_file, ""));
    let status = agent.wait_for("a crash loop", Duration::from_secs(10), |s| {
        s.services[0].consecutive_crashes >= 4
    });
    assert_eq!(status.services[0].state, ServiceState::CrashLooping);
    let backoffs: Vec<u64> = agent
        .client()
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::CrashRestartScheduled { backoff_ms, .. } => Some(backoff_ms),
            _ => None,
        })
        .collect();
    assert_eq!(&backoffs[..4], &[100, 200, 400, 800], "{backoffs:?}");
    std::fs::write(&mode_file, "normal").unwrap();
    let status = agent.wait_for("recovery", Duration::from_secs(30), |s| {
        s.services[0].state == ServiceState::Ready
    });
    assert_eq!(status.services[0].generations.len(), 1);
}

#[test]
fn an_http_probe_reaches_the_new_generation_on_its_own_port() {
    let agent = AgentUnderTest::start(&demo_service_args(
        "web",
        &["--start-delay", "400ms"],
        r#"ready = "http://127.0.0.1:{port}/healthz""#,
    ));
    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    let startup_us = report
        .steps
        .iter()
        .find_map(|s| match s.kind {
            EventKind::GenerationReady { startup_us, .. } => Some(startup_us),
            _ => None,
        })
        .unwrap();
    // The demo opens its probe port only after its start delay: the probe
    // could not have been answered by the old generation or the backlog.
    assert!(startup_us >= 400_000, "ready after {startup_us} us");
}

fn nice_of(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[test]
fn a_warming_generation_runs_at_lower_priority_until_ready() {
    let agent = AgentUnderTest::start(&demo_service_args(
        "web",
        &["--start-delay", "1s"],
        "warmup_nice = 10",
    ));
    let serving = agent.service("web").generations[0].pid;
    assert_eq!(nice_of(serving), 0);
    let mut client = agent.client();
    client.send(baton_proto::Request::Restart {
        service: "web".into(),
        follow: false,
        reason: None,
    });
    let status = agent.wait_for("a starting generation", Duration::from_secs(5), |s| {
        s.services[0].generations.len() == 2
    });
    let starting = status.services[0].generations[1].pid;
    assert_eq!(nice_of(starting), 10);
    agent.wait_for("the new generation alone", Duration::from_secs(10), |s| {
        s.services[0].generations.len() == 1 && s.services[0].generations[0].pid == starting
    });
    assert_eq!(nice_of(starting), 0);
}

/// A service that sends READY=1 the moment it starts can beat the agent's
/// own bookkeeping of the new pid; the message must still count.
#[test]
fn a_generation_ready_at_once_is_never_missed() {
    let agent = AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "web"
command = ["{}", "--drain-idle-grace", "0ms"]
ready_timeout = "5s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        baton_tests::bin("baton-demo").display()
    ));
    for round in 0..100 {
        let (_, report) = agent.restart("web");
        assert_eq!(
            report.outcome,
            Some(RestartOutcome::Succeeded),
            "restart {round}: {report:?}"
        );
    }
    let ignored = agent
        .client()
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::NotifyIgnored { .. }))
        .count();
    assert_eq!(ignored, 0, "notify messages were dropped");
    // A stranger's message is only logged (never stored), so look there too.
    assert!(
        !agent.log().contains("from a process of no generation"),
        "notify messages were taken for a stranger's"
    );
}
