//! A service of several processes per generation (`instances = 4`): each
//! accepts on the shared socket, one that dies is started again alone, a
//! restart replaces them all (in batches with `max_surge`) or rolls back,
//! and the agent's upgrade keeps every one.

use baton_proto::{InstanceState, RestartOutcome, ServiceState, ServiceStatus};
use baton_tests::{AgentUnderTest, demo_service, demo_service_args};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSTANCES: usize = 4;

/// The pid of the process that answered one request on a new connection.
fn answering_pid(addr: SocketAddr) -> u32 {
    let mut stream = TcpStream::connect(addr).expect("connected");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("request sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer read");
    let pid = answer
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pid in {answer:?}"));
    pid.parse().expect("a pid")
}

/// Distinct pids answering within `within` (stops once `want` are seen).
fn pids_answering(addr: SocketAddr, want: usize, within: Duration) -> BTreeSet<u32> {
    let deadline = Instant::now() + within;
    let mut seen = BTreeSet::new();
    while seen.len() < want && Instant::now() < deadline {
        // Several connections at once, so a busy instance is not the only
        // one awake.
        let answers: Vec<u32> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(move || answering_pid(addr)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        seen.extend(answers);
    }
    seen
}

fn instance_pids(service: &ServiceStatus) -> Vec<u32> {
    service.generations[0]
        .instances
        .iter()
        .map(|i| i.pid.expect("a running instance"))
        .collect()
}

fn all_ready(service: &ServiceStatus) -> bool {
    service.state == ServiceState::Ready
        && service.generations.len() == 1
        && service.generations[0].instances.len() == INSTANCES
        && service.generations[0]
            .instances
            .iter()
            .all(|i| i.state == InstanceState::Ready)
}

fn start(extra: &str, args: &[&str]) -> AgentUnderTest {
    let agent = AgentUnderTest::start(&demo_service_args(
        "web",
        args,
        &format!("instances = {INSTANCES}\n{extra}"),
    ));
    agent.wait_for("every instance ready", Duration::from_secs(20), |s| {
        all_ready(&s.services[0])
    });
    agent
}

#[test]
fn every_instance_accepts_and_a_killed_one_is_started_again_alone() {
    let agent = start("", &[]);
    let service = agent.service("web");
    let pids = instance_pids(&service);
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), INSTANCES, "{pids:?}");
    let addr = agent.tcp_addr("web", "http");
    let seen = pids_answering(addr, INSTANCES, Duration::from_secs(20));
    assert_eq!(
        seen, distinct,
        "every instance answers on the shared socket"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[2] as i32), Signal::SIGKILL)
        .expect("killed");
    let status = agent.wait_for("instance 2 again", Duration::from_secs(20), |s| {
        let service = &s.services[0];
        all_ready(service) && service.generations[0].instances[2].restarts == 1
    });
    let after = &status.services[0];
    assert_eq!(
        after.generations[0].generation,
        service.generations[0].generation
    );
    let now = instance_pids(after);
    assert_ne!(now[2], pids[2], "instance 2 runs a new process");
    for i in [0, 1, 3] {
        assert_eq!(now[i], pids[i], "instance {i} was left alone");
        assert_eq!(after.generations[0].instances[i].restarts, 0);
    }
    assert!(
        agent.service("web").last_restart.is_none(),
        "no restart of the others"
    );

    let out = std::process::Command::new(baton_tests::bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .arg("status")
        .env_remove("BATON_SERVER")
        .output()
        .expect("baton status ran");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ready 4/4"), "{table}");
    assert!(
        table.contains(&format!(
            "instance 2   ready     pid {:<8} ready for",
            now[2]
        )),
        "{table}"
    );
    assert!(table.contains("restarts 1"), "{table}");
}

#[test]
fn a_restart_replaces_every_instance_and_a_crashing_build_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let mode_arg = mode_file.display().to_string();
    let agent = start("ready_timeout = \"10s\"", &["--mode-file", &mode_arg]);
    let first = agent.service("web");
    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    let second = agent.wait_for("the new generation", Duration::from_secs(20), |s| {
        all_ready(&s.services[0])
            && s.services[0].generations[0].generation != first.generations[0].generation
    });
    let pids = instance_pids(&second.services[0]);
    assert!(
        pids.iter().all(|p| !instance_pids(&first).contains(p)),
        "every instance is new: {pids:?}"
    );

    std::fs::write(&mode_file, "crash").unwrap();
    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::RolledBack),
        "{report:?}"
    );
    let reason = report.outcome_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("before the generation was ready"),
        "{reason}"
    );
    let after = agent.service("web");
    assert!(all_ready(&after), "{after:?}");
    assert_eq!(instance_pids(&after), pids, "the old instances served on");
}

#[test]
fn an_agent_upgrade_keeps_every_instance() {
    let agent = start("", &[]);
    let before = agent.status();
    let pids = instance_pids(&before.services[0]);
    agent.signal(Signal::SIGUSR2);
    let after = agent.wait_for("the new image", Duration::from_secs(10), |s| {
        s.boot_id != before.boot_id
    });
    assert_eq!(after.pid, before.pid);
    assert!(all_ready(&after.services[0]), "{:?}", after.services[0]);
    assert_eq!(instance_pids(&after.services[0]), pids);

    // The adopted instances are still managed: one killed starts again
    // alone, and a restart replaces them all.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL)
        .expect("killed");
    agent.wait_for("instance 0 again", Duration::from_secs(20), |s| {
        all_ready(&s.services[0]) && s.services[0].generations[0].instances[0].restarts == 1
    });
    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_restart_of_instances_under_load_fails_no_request() {
    let agent = Arc::new(start("max_surge = 1\ndrain_timeout = \"10s\"", &[]));
    let addr = agent.tcp_addr("web", "http");
    let (reports, load) =
        baton_tests::restarts_under_load(&agent, "web", addr, 32, 3, Duration::from_millis(100))
            .await;
    for report in &reports {
        assert_eq!(
            report.outcome,
            Some(RestartOutcome::Succeeded),
            "{report:?}"
        );
    }
    assert_eq!(load.failed, 0, "failed requests: {:?}", load.failures);
    assert!(load.ok > 100, "{load}");
    let status = agent.wait_for("the last generation", Duration::from_secs(20), |s| {
        all_ready(&s.services[0])
    });
    assert_eq!(status.services[0].generations[0].generation, 4);
}

#[test]
fn a_single_process_service_lists_no_instances() {
    let agent = AgentUnderTest::start(&demo_service("web", ""));
    assert!(agent.service("web").generations[0].instances.is_empty());
}

#[test]
fn a_rollback_in_the_middle_of_a_batched_restart_starts_the_replaced_old_instances_again() {
    // Generation 2's instance 2 exits at once: batches 0 and 1 have
    // replaced old instances 0 and 1 by then.
    let script = format!(
        "if [ \"$BATON_GENERATION\" = 2 ] && [ \"$BATON_INSTANCE\" = 2 ]; then exit 3; fi; exec {} --drain-idle-grace 300ms",
        baton_tests::bin("baton-demo").display()
    );
    let agent = AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "web"
command = ["/bin/sh", "-c", {script:?}]
instances = {INSTANCES}
max_surge = 1
drain_timeout = "5s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#
    ));
    let first = agent.wait_for("every instance ready", Duration::from_secs(20), |s| {
        all_ready(&s.services[0])
    });
    let before = instance_pids(&first.services[0]);

    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::RolledBack),
        "{report:?}"
    );
    let reason = report.outcome_reason.clone().unwrap_or_default();
    assert!(reason.contains("instance 2 of generation 2"), "{reason}");

    let status = agent.wait_for("generation 1 whole again", Duration::from_secs(20), |s| {
        all_ready(&s.services[0])
    });
    let service = &status.services[0];
    assert_eq!(service.generations[0].generation, 1, "{service:?}");
    let after = instance_pids(service);
    for i in [0, 1] {
        assert_ne!(
            after[i], before[i],
            "old instance {i} was replaced and started again"
        );
        assert_eq!(service.generations[0].instances[i].restarts, 1);
    }
    for i in [2, 3] {
        assert_eq!(after[i], before[i], "old instance {i} served throughout");
    }
    let addr = agent.tcp_addr("web", "http");
    let seen = pids_answering(addr, INSTANCES, Duration::from_secs(20));
    assert_eq!(
        seen,
        after.iter().copied().collect(),
        "every instance answers"
    );
}
