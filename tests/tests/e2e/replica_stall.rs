//! A replica that stalls longer than the others wait for its heartbeat
//! (a slow database, a paused process) is taken for dead, and the others
//! release its hosts; when it comes back with its agents' links still
//! open, those hosts are online again everywhere and commands reach them.

use baton_proto::RestartOutcome;
use baton_proto::api::HostRestartState;
use baton_tests::AgentUnderTest;
use baton_tests::server::ServerUnderTest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Resumes a stopped process when dropped, so that a failing test does not
/// leave it stopped.
struct Stopped(Pid);

impl Stopped {
    fn stop(server: &ServerUnderTest) -> Stopped {
        let pid = Pid::from_raw(server.pid().expect("the server runs") as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_from_a_stall_has_its_hosts_online_and_commanded_again() {
    stalled_replica_comes_back(ServerUnderTest::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_from_a_stall_has_its_hosts_online_again_on_postgres() {
    stalled_replica_comes_back(ServerUnderTest::start_on_postgres()).await;
}

/// Two replicas on `a`'s database, a host linked to B; B stalls.
async fn stalled_replica_comes_back(a: ServerUnderTest) {
    let b = a.start_replica(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "normal").unwrap();
    let config = b.host_config(
        "host-b1",
        "127.0.0.2",
        "demo",
        &["--mode-file", mode.to_str().unwrap()],
        r#"ready_timeout = "10s""#,
    );
    let agent = AgentUnderTest::start(&config);
    a.wait_for_hosts(1).await;

    // B stalls until A takes it for dead and releases its host. The agent
    // gives a silent server 5 s before it reconnects: the stall ends as
    // soon as the release is done, so that the link B holds stays open.
    let stopped = Stopped::stop(&b);
    let stalled_at = Instant::now();
    while !a.log().contains("hosts of a dead replica are offline") {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(10),
            "A never released B's hosts:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stopped);
    let stall = stalled_at.elapsed();

    // A sees the host online again, through B, within a few seconds.
    let back = Instant::now();
    let deadline = back + Duration::from_secs(5);
    loop {
        let list: serde_json::Value = a.get_json("/hosts").await;
        if list["hosts"][0]["online"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host stayed offline on A after a stall of {stall:?}: {list}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.log().matches("agent connected").count(),
        1,
        "the agent reconnected (a stall of {stall:?}): the link B held did not stay open\n{}",
        b.log()
    );
    assert!(
        b.log().contains("the links it holds are recorded again"),
        "{}",
        b.log()
    );

    // A restart asked of A goes to the host through B's link.
    let restart = a.restart_and_wait("demo").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    assert_eq!(restart.hosts[0].state, HostRestartState::Finished);
    assert_eq!(agent.newest_generation(), 2, "{restart:#?}");
}
