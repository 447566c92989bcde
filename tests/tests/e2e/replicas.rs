//! Two `baton-server` replicas on one database (a SQLite file, and a
//! PostgreSQL database: every test runs on both), agents linked to one or
//! the other: commands go to the replica holding a host's link, a
//! rollout whose driving replica is killed is taken over by the other, and
//! a long poll on one replica follows a restart the other drives.

use baton_proto::RestartOutcome;
use baton_proto::api::{HostRestartState, Restart};
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, on_both_engines};
use std::time::{Duration, Instant};

fn host_config(server: &ServerUnderTest, host: &str, ip: &str, mode: &std::path::Path) -> String {
    server.host_config(
        host,
        ip,
        "demo",
        &["--mode-file", mode.to_str().unwrap()],
        r#"ready_timeout = "10s""#,
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn start_restart(server: &ServerUnderTest) -> Restart {
    let response = http()
        .post(format!("{}/services/demo/restart", server.url()))
        .bearer_auth(&server.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

async fn wait_finished(server: &ServerUnderTest, id: u64, within: Duration) -> Restart {
    let deadline = Instant::now() + within;
    loop {
        let restart: Restart = server.get_json(&format!("/restarts/{id}")).await;
        if restart.outcome.is_some() {
            return restart;
        }
        assert!(Instant::now() < deadline, "never finished: {restart:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both_engines!(
    a_restart_started_on_one_replica_runs_on_hosts_linked_to_the_other,
    a_replica_killed_mid_rollout_is_taken_over_and_no_host_restarts_twice,
    a_long_poll_on_one_replica_sees_every_step_of_a_restart_the_other_drives,
);

async fn a_restart_started_on_one_replica_runs_on_hosts_linked_to_the_other(a: ServerUnderTest) {
    let b = a.start_replica(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "normal").unwrap();
    let on_b = AgentUnderTest::start(&host_config(&b, "host-b1", "127.0.0.2", &mode));
    let on_a = AgentUnderTest::start(&host_config(&a, "host-a1", "127.0.0.3", &mode));
    // Each replica sees both hosts online, its own and the other's.
    a.wait_for_hosts(2).await;
    b.wait_for_hosts(2).await;

    let restart = a.restart_and_wait("demo").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    for host in &restart.hosts {
        assert_eq!(host.state, HostRestartState::Finished, "{restart:#?}");
        assert_eq!(
            host.outcome,
            Some(RestartOutcome::Succeeded),
            "{restart:#?}"
        );
        assert!(
            host.steps
                .iter()
                .any(|s| matches!(s.kind, baton_proto::EventKind::RestartFinished { .. })),
            "{restart:#?}"
        );
    }
    assert_eq!(on_b.newest_generation(), 2);
    assert_eq!(on_a.newest_generation(), 2);
    assert!(
        b.log().contains("replica registered") && a.log().contains("replica registered"),
        "{}",
        b.log()
    );
}

async fn a_replica_killed_mid_rollout_is_taken_over_and_no_host_restarts_twice(
    mut a: ServerUnderTest,
) {
    let b = a.start_replica(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "normal").unwrap();
    // Every host is linked to B; A drives the rollout through B.
    let agents: Vec<AgentUnderTest> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .enumerate()
        .map(|(i, ip)| AgentUnderTest::start(&host_config(&b, &format!("host-{i}"), ip, &mode)))
        .collect();
    a.wait_for_hosts(3).await;
    // Slow to become ready: the rollout takes a while, one host at a time.
    std::fs::write(&mode, "slow:1500").unwrap();

    let restart = start_restart(&a).await;
    // Killed once the first host's command went out, before the rollout ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Restart = b.get_json(&format!("/restarts/{}", restart.id)).await;
        if now.hosts[0].state != HostRestartState::Pending {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout never began: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill: Restart = b.get_json(&format!("/restarts/{}", restart.id)).await;
    a.kill();
    let killed_at = Instant::now();
    assert!(
        at_kill.outcome.is_none(),
        "finished before the kill: {at_kill:#?}"
    );

    // B takes the rollout over: it moves on within 5 s.
    let moved = loop {
        let now: Restart = b.get_json(&format!("/restarts/{}", restart.id)).await;
        let states = |r: &Restart| r.hosts.iter().map(|h| h.state).collect::<Vec<_>>();
        if states(&now) != states(&at_kill) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(8),
            "nobody took the rollout over: {now:#?}\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(moved < Duration::from_secs(5), "taken over after {moved:?}");

    let settled = wait_finished(&b, restart.id, Duration::from_secs(30)).await;
    assert_eq!(
        settled.outcome,
        Some(RestartOutcome::Succeeded),
        "{settled:#?}"
    );
    assert!(
        b.log()
            .contains("resuming a restart no live replica drives"),
        "{}",
        b.log()
    );
    // Every host restarted exactly once: one new generation each.
    for (i, agent) in agents.iter().enumerate() {
        assert_eq!(
            agent.newest_generation(),
            2,
            "host-{i} restarted more than once"
        );
    }
}

async fn a_long_poll_on_one_replica_sees_every_step_of_a_restart_the_other_drives(
    a: ServerUnderTest,
) {
    let b = a.start_replica(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "slow:500").unwrap();
    let _agents: Vec<AgentUnderTest> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .enumerate()
        .map(|(i, ip)| AgentUnderTest::start(&host_config(&b, &format!("host-{i}"), ip, &mode)))
        .collect();
    a.wait_for_hosts(2).await;

    // B drives; the long poll asks A, as `baton restart --wait` would.
    let restart = start_restart(&b).await;
    let began = Instant::now();
    let client = http();
    let mut etag: Option<String> = None;
    let mut seen: Vec<Restart> = Vec::new();
    loop {
        let mut request = client
            .get(format!("{}/restarts/{}?wait_ms=20000", a.url(), restart.id))
            .bearer_auth(&a.viewer_token);
        if let Some(etag) = &etag {
            request = request.header("if-none-match", etag);
        }
        let asked = Instant::now();
        let response = request.send().await.unwrap();
        if response.status() == 304 {
            panic!(
                "a long poll waited {:?} for a change that never reached this replica; seen: {seen:#?}",
                asked.elapsed()
            );
        }
        assert_eq!(response.status(), 200);
        etag = Some(response.headers()["etag"].to_str().unwrap().to_string());
        let now: Restart = response.json().await.unwrap();
        let finished = now.outcome.is_some();
        seen.push(now);
        if finished {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "{seen:#?}");
    }
    let last = seen.last().unwrap();
    assert_eq!(last.outcome, Some(RestartOutcome::Succeeded), "{last:#?}");
    // Every step showed up, as it happened: each host seen running before
    // it was seen finished.
    for (i, host) in last.hosts.iter().enumerate() {
        assert_eq!(host.state, HostRestartState::Finished);
        let running_at = seen
            .iter()
            .position(|r| r.hosts[i].state == HostRestartState::Running);
        let finished_at = seen
            .iter()
            .position(|r| r.hosts[i].state == HostRestartState::Finished);
        assert!(
            running_at.is_some() && running_at < finished_at,
            "host {} was never seen running: {seen:#?}",
            host.host
        );
    }
    // Waiting on A for a change of a restart B drove ends when it changes,
    // not when the wait runs out.
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
}

/// Restarts `service` 20 times through `server`: the times from each POST
/// to the agent's `restart_started`, sorted.
async fn command_latencies(server: &ServerUnderTest, service: &str) -> Vec<u64> {
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let posted = baton_proto::now_millis();
        let response = http()
            .post(format!("{}/services/{service}/restart", server.url()))
            .bearer_auth(&server.operator_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let restart: Restart = response.json().await.unwrap();
        let finished = wait_finished(server, restart.id, Duration::from_secs(30)).await;
        assert_eq!(
            finished.outcome,
            Some(RestartOutcome::Succeeded),
            "{finished:#?}"
        );
        let started = finished.hosts[0]
            .steps
            .iter()
            .find(|s| matches!(s.kind, baton_proto::EventKind::RestartStarted { .. }))
            .unwrap_or_else(|| panic!("no restart_started: {finished:#?}"))
            .at;
        latencies.push(started.saturating_sub(posted));
    }
    latencies.sort_unstable();
    latencies
}

/// Not a check but a measurement, for docs/replicas.md: how long a restart
/// POSTed on one replica takes to reach the agent of a host linked to the
/// other (from the POST to the agent's `restart_started`), median of 20;
/// and, to compare, of a host linked to the replica the POST reached.
/// `cargo nextest run -p baton-tests --run-ignored only -E 'test(/reaches_an_agent/)' --no-capture`
async fn a_command_reaches_an_agent_linked_to_another_replica(a: ServerUnderTest) {
    let b = a.start_replica(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "normal").unwrap();
    let args = ["--mode-file", mode.to_str().unwrap()];
    let extra = r#"ready_timeout = "10s""#;
    let _on_b = AgentUnderTest::start(&b.host_config("host-b1", "127.0.0.2", "demo", &args, extra));
    let _on_a =
        AgentUnderTest::start(&a.host_config("host-a1", "127.0.0.3", "local", &args, extra));
    a.wait_for_hosts(2).await;
    for (what, service) in [("the other replica", "demo"), ("this replica", "local")] {
        let latencies = command_latencies(&a, service).await;
        println!(
            "POST on a replica -> agent of a host linked to {what}: median {} ms, min {} ms, max {} ms ({latencies:?})",
            latencies[latencies.len() / 2],
            latencies[0],
            latencies[latencies.len() - 1],
        );
    }
}

mod a_command_reaches_an_agent_linked_to_another_replica {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn on_sqlite() {
        super::a_command_reaches_an_agent_linked_to_another_replica(
            baton_tests::server::ServerUnderTest::start(),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn on_postgres() {
        super::a_command_reaches_an_agent_linked_to_another_replica(
            baton_tests::server::ServerUnderTest::start_on_postgres(),
        )
        .await;
    }
}
