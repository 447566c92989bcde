//! The rollout policy with real agents and real services: a canary batch
//! restarted alone, the pause after it (kept across a server restart), the
//! rest by a percentage of the hosts, and a failure budget.

use baton_proto::RestartOutcome;
use baton_proto::api::{HostRestartState, Restart, RestartHost};
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::path::Path;
use std::time::{Duration, Instant};

/// Host `host-X` on 127.0.0.N runs the demo; a mode file when given.
fn start_host(server: &ServerUnderTest, index: usize, mode: Option<&Path>) -> AgentUnderTest {
    let host = format!("host-{}", (b'a' + index as u8) as char);
    let ip = format!("127.0.0.{}", index + 2);
    let args: Vec<&str> = match mode {
        Some(mode) => vec!["--mode-file", mode.to_str().unwrap()],
        None => Vec::new(),
    };
    AgentUnderTest::start(&server.host_config(&host, &ip, "demo", &args, r#"ready_timeout = "3s""#))
}

fn host<'a>(restart: &'a Restart, name: &str) -> &'a RestartHost {
    restart
        .hosts
        .iter()
        .find(|h| h.host == name)
        .unwrap_or_else(|| panic!("no {name} in {restart:#?}"))
}

async fn wait_finished(server: &ServerUnderTest, id: u64) -> Restart {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let restart: Restart = server.get_json(&format!("/restarts/{id}")).await;
        if restart.outcome.is_some() {
            return restart;
        }
        assert!(Instant::now() < deadline, "never finished: {restart:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_restarts_alone_then_the_pause_then_batches_of_the_percentage() {
    let server = ServerUnderTest::start();
    let agents: Vec<AgentUnderTest> = (0..4).map(|i| start_host(&server, i, None)).collect();
    server.wait_for_hosts(4).await;

    let url = server.url();
    let token = server.operator_token.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin("baton"))
            .args(["--server", &url, "--token", &token])
            .args(["restart", "demo", "--wait", "--max-parallel", "50%"])
            .args(["--canary", "1", "--pause", "2s"])
            .env_remove("BATON_AGENT_SOCKET")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "rollout: 50% of the hosts at a time (2); canary 1 host first, then a pause of 2s"
        ),
        "{stdout}"
    );

    let restart: Restart = server.get_json("/restarts/1").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    assert_eq!(restart.max_parallel, 2);
    let pause_until = restart
        .rollout
        .pause_until
        .unwrap_or_else(|| panic!("no pause: {restart:#?}"));
    // `--wait` showed the pause with its end time.
    let until = baton_proto_clock(pause_until);
    assert!(
        stdout.contains(&format!(
            "canary batch done: the rollout pauses for 2s, until {until}"
        )),
        "{until} missing:\n{stdout}"
    );

    // The canary alone: every other host started after it finished, and
    // after the pause that began when it finished.
    let (a, b, c, d) = (
        host(&restart, "host-a"),
        host(&restart, "host-b"),
        host(&restart, "host-c"),
        host(&restart, "host-d"),
    );
    let canary_done = a.finished_at.unwrap();
    let pause_began = pause_until - 2000;
    assert!(pause_began >= canary_done, "{restart:#?}");
    for later in [b, c, d] {
        assert!(
            later.started_at.unwrap() >= pause_until,
            "{} started before the pause ended: {restart:#?}",
            later.host
        );
    }
    // Then two at a time: b and c together, d once one of them was done.
    assert!(
        c.started_at.unwrap() < b.finished_at.unwrap(),
        "b and c did not overlap: {restart:#?}"
    );
    assert!(
        d.started_at.unwrap() >= b.finished_at.unwrap().min(c.finished_at.unwrap()),
        "a third host ran with two others: {restart:#?}"
    );
    for agent in &agents {
        assert_eq!(agent.service("demo").generations[0].generation, 2);
    }

    // The restart page shows the policy.
    let page = server.page_as_viewer("/restarts/1").await;
    assert!(
        page.contains("1 host first, alone, then a pause of 2s"),
        "no canary on the restart page: {page}"
    );
    assert!(page.contains("id=\"rollout-pause-until\""), "{page}");
}

/// The command line's clock (UTC, milliseconds), as `--wait` prints it.
fn baton_proto_clock(at: u64) -> String {
    let secs = at / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        at % 1000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_within_the_budget_go_on_and_one_past_it_stops_and_skips_the_rest() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let crash = dir.path().join("crash");
    let _a = start_host(&server, 0, None);
    let _b = start_host(&server, 1, Some(&crash));
    let _c = start_host(&server, 2, Some(&crash));
    let d = start_host(&server, 3, None);
    server.wait_for_hosts(4).await;
    std::fs::write(&crash, "crash").unwrap();
    let d_before = d.service("demo").generations[0].clone();

    let response = reqwest::Client::new()
        .post(format!("{}/services/demo/restart", server.url()))
        .bearer_auth(&server.operator_token)
        .json(&serde_json::json!({"failure_budget": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Restart>().await.unwrap().id;
    let restart = wait_finished(&server, id).await;

    let outcomes: Vec<(&str, HostRestartState, Option<RestartOutcome>)> = restart
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.state, h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "host-a",
                HostRestartState::Finished,
                Some(RestartOutcome::Succeeded)
            ),
            // Within the budget: the rollout went on.
            (
                "host-b",
                HostRestartState::Finished,
                Some(RestartOutcome::RolledBack)
            ),
            // Past it: the rollout stopped here.
            (
                "host-c",
                HostRestartState::Finished,
                Some(RestartOutcome::RolledBack)
            ),
            ("host-d", HostRestartState::Skipped, None),
        ],
        "{restart:#?}"
    );
    assert_eq!(restart.outcome, Some(RestartOutcome::RolledBack));
    let reason = restart.outcome_reason.as_deref().unwrap_or("");
    assert!(
        reason.starts_with(
            "2 of 4 hosts did not succeed, past the failure budget of 1; first: host host-b"
        ),
        "{reason}"
    );
    let skipped = host(&restart, "host-d")
        .outcome_reason
        .as_deref()
        .unwrap_or("");
    assert!(skipped.contains("failure budget of 1"), "{skipped}");
    let d_after = d.service("demo");
    assert_eq!(d_after.generations.len(), 1);
    assert_eq!(
        d_after.generations[0].pid, d_before.pid,
        "host-d was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_the_pause_resumes_after_its_end_and_restarts_no_host_twice() {
    let mut server = ServerUnderTest::start();
    let a = start_host(&server, 0, None);
    let b = start_host(&server, 1, None);
    server.wait_for_hosts(2).await;

    let response = reqwest::Client::new()
        .post(format!("{}/services/demo/restart", server.url()))
        .bearer_auth(&server.operator_token)
        .json(&serde_json::json!({"canary": 1, "pause": "6s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Restart>().await.unwrap().id;

    // Killed once the pause began.
    let deadline = Instant::now() + Duration::from_secs(30);
    let paused = loop {
        let restart: Restart = server.get_json(&format!("/restarts/{id}")).await;
        if restart.rollout.pause_until.is_some() {
            break restart;
        }
        assert!(Instant::now() < deadline, "never paused: {restart:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pause_until = paused.rollout.pause_until.unwrap();
    assert_eq!(host(&paused, "host-b").state, HostRestartState::Pending);
    // Halfway through: a pause begun afresh by the next server would end
    // 3 s after this one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.launch();

    let restart = wait_finished(&server, id).await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    // The same pause, not a new one, and b only after its end.
    assert_eq!(restart.rollout.pause_until, Some(pause_until));
    let b_started = host(&restart, "host-b").started_at.unwrap();
    assert!(b_started >= pause_until, "{restart:#?}");
    assert!(
        b_started < pause_until + 2500,
        "a second pause was waited: {restart:#?}"
    );
    // Each host restarted once: generation 2, no third.
    for agent in [&a, &b] {
        let status = agent.service("demo");
        let generations: Vec<u64> = status.generations.iter().map(|g| g.generation).collect();
        assert_eq!(generations, [2], "{status:#?}");
    }
}
