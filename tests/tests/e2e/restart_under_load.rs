//! The promise of baton: hot restarts under full load fail no request.

use baton_loadgen::Target;
use baton_proto::{EventKind, RestartOutcome};
use baton_tests::{AgentUnderTest, demo_service, demo_service_args, load};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const CONNECTIONS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_hot_restarts_under_load_fail_no_request() {
    let agent = Arc::new(AgentUnderTest::start(&demo_service(
        "web",
        r#"drain_timeout = "10s""#,
    )));
    let addr = agent.tcp_addr("web", "http");
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let load = tokio::spawn(load(Target::Tcp(addr), CONNECTIONS, async move {
        stopped.notified().await
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let restarter = agent.clone();
    let outcomes = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|_| {
                let (_, report) = restarter.restart("web");
                std::thread::sleep(Duration::from_millis(100));
                report
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    let report = load.await.unwrap();

    for restart in &outcomes {
        assert_eq!(
            restart.outcome,
            Some(RestartOutcome::Succeeded),
            "restart {} ended {:?}: {:?}",
            restart.id,
            restart.outcome,
            restart.outcome_reason
        );
        // The old generation was drained with connections open: the load was real.
        assert!(restart.steps.iter().any(|s| matches!(
            s.kind,
            EventKind::GenerationDraining { connections: Some(n), .. } if n > 0
        )));
    }
    eprintln!("{report}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(
        report.ok > 10_000,
        "too little load to prove anything: {report}"
    );
    assert!(
        report.generations_seen.len() >= 21,
        "responses came from {} generations",
        report.generations_seen.len()
    );
    let status = agent.service("web");
    assert_eq!(status.generations.len(), 1);
    assert_eq!(status.generations[0].generation, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_that_crashes_at_start_is_rolled_back_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let agent = Arc::new(AgentUnderTest::start(&demo_service_args(
        "web",
        &["--mode-file", mode_file.to_str().unwrap()],
        r#"ready_timeout = "5s""#,
    )));
    let addr = agent.tcp_addr("web", "http");
    let first = agent.service("web").generations[0].clone();
    std::fs::write(&mode_file, "crash").unwrap();

    let (outcomes, report) =
        baton_tests::restarts_under_load(&agent, "web", addr, CONNECTIONS, 5, Duration::ZERO).await;

    for restart in &outcomes {
        assert_eq!(
            restart.outcome,
            Some(RestartOutcome::RolledBack),
            "{restart:?}"
        );
        let reason = restart.outcome_reason.as_deref().unwrap_or("");
        assert!(reason.contains("before it was ready"), "{reason}");
    }
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 1_000, "{report}");
    // The first generation served throughout and still does.
    let status = agent.service("web");
    assert_eq!(status.generations.len(), 1);
    assert_eq!(status.generations[0].pid, first.pid);
    assert_eq!(report.generations_seen.len(), 1);
}
