//! The agent upgrades itself in place (SIGUSR2) under load: same pid, same
//! sockets, same generations, no failed request.

use baton_loadgen::Target;
use baton_proto::RestartOutcome;
use baton_tests::{AgentUnderTest, demo_service, load};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reexecs_itself_without_dropping_a_socket_or_a_generation() {
    let dir = tempfile::tempdir().unwrap();
    let services = format!(
        "{}\n[[service.socket]]\nname = \"local\"\nlisten = \"unix://{}/web.sock\"\n",
        demo_service("web", ""),
        dir.path().display()
    );
    let agent = Arc::new(AgentUnderTest::start(&services));
    let before = agent.status();
    let generation = before.services[0].generations[0].clone();
    let addr = agent.tcp_addr("web", "http");

    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let load = tokio::spawn(load(Target::Tcp(addr), 16, async move {
        stopped.notified().await
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;

    for round in 0..3 {
        let boot_before = agent.status().boot_id;
        std::thread::sleep(Duration::from_millis(100));
        agent.signal(Signal::SIGUSR2);
        let after = agent.wait_for("the new image", Duration::from_secs(10), |s| {
            s.boot_id != boot_before
        });
        assert_eq!(
            after.pid, before.pid,
            "round {round}: the agent kept its pid"
        );
        assert_eq!(after.services[0].generations.len(), 1);
        assert_eq!(after.services[0].generations[0].pid, generation.pid);
        assert_eq!(after.services[0].sockets, before.services[0].sockets);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The adopted generation is still managed: it drains on the next restart.
    let restarter = agent.clone();
    let (_, report) = tokio::task::spawn_blocking(move || restarter.restart("web"))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    assert_eq!(report.old_generation, Some(generation.generation));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.notify_one();
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.generations_seen.len() >= 2);
    assert!(agent.log().matches("upgraded in place").count() == 3);
    assert!(dir.path().join("web.sock").exists());
}
