//! A server and several agents ("hosts" on distinct loopback addresses):
//! rolling restarts through the REST API, under load.

use baton_loadgen::Target;
use baton_proto::RestartOutcome;
use baton_proto::api::{GenerationRecord, HostRestartState, Restart};
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin, load};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

fn host_config(server: &ServerUnderTest, host: &str, ip: &str, extra_args: &[&str]) -> String {
    server.host_config(host, ip, "demo", extra_args, r#"ready_timeout = "3s""#)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_across_two_hosts_under_load_fails_no_request() {
    let server = ServerUnderTest::start();
    let a = AgentUnderTest::start(&host_config(&server, "host-a", "127.0.0.2", &[]));
    let b = AgentUnderTest::start(&host_config(&server, "host-b", "127.0.0.3", &[]));
    server.wait_for_hosts(2).await;

    let stop = Arc::new(Notify::new());
    let mut loads = Vec::new();
    for agent in [&a, &b] {
        let stopped = stop.clone();
        loads.push(tokio::spawn(load(
            Target::Tcp(agent.tcp_addr("demo", "http")),
            16,
            async move { stopped.notified().await },
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart = server.restart_and_wait("demo").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_waiters();

    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    let hosts: Vec<(&str, Option<RestartOutcome>)> = restart
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.outcome))
        .collect();
    assert_eq!(
        hosts,
        [
            ("host-a", Some(RestartOutcome::Succeeded)),
            ("host-b", Some(RestartOutcome::Succeeded))
        ]
    );
    // One host at a time: b started after a finished.
    assert!(restart.hosts[1].started_at >= restart.hosts[0].finished_at);
    for load in loads {
        let report = load.await.unwrap();
        assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
        assert!(report.ok > 500, "{report}");
    }

    // The history shows both generations on both hosts.
    let generations: serde_json::Value = server.get_json("/services/demo/generations").await;
    let records: Vec<GenerationRecord> =
        serde_json::from_value(generations["generations"].clone()).unwrap();
    for host in ["host-a", "host-b"] {
        let mut numbers: Vec<u64> = records
            .iter()
            .filter(|r| r.host == host)
            .map(|r| r.generation)
            .collect();
        numbers.sort();
        assert_eq!(numbers, [1, 2], "{host}: {records:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_rolls_back_stops_the_rollout_before_the_next_host() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let mode_b = dir.path().join("mode-b");
    let a = AgentUnderTest::start(&host_config(&server, "host-a", "127.0.0.2", &[]));
    let b = AgentUnderTest::start(&host_config(
        &server,
        "host-b",
        "127.0.0.3",
        &["--mode-file", mode_b.to_str().unwrap()],
    ));
    let c = AgentUnderTest::start(&host_config(&server, "host-c", "127.0.0.4", &[]));
    server.wait_for_hosts(3).await;
    std::fs::write(&mode_b, "never-ready").unwrap();
    let c_before = c.service("demo").generations[0].clone();

    let restart = server.restart_and_wait("demo").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::RolledBack),
        "{restart:#?}"
    );
    assert_eq!(restart.hosts[0].outcome, Some(RestartOutcome::Succeeded));
    assert_eq!(restart.hosts[1].outcome, Some(RestartOutcome::RolledBack));
    assert_eq!(restart.hosts[2].state, HostRestartState::Skipped);
    assert_eq!(a.service("demo").generations[0].generation, 2);
    assert_eq!(b.service("demo").generations[0].generation, 1);
    let c_after = c.service("demo");
    assert_eq!(c_after.generations.len(), 1);
    assert_eq!(
        c_after.generations[0].pid, c_before.pid,
        "host-c was touched"
    );
    assert!(c_after.last_restart.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_restart_learns_the_true_outcome_when_it_returns() {
    let mut server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    let agent = AgentUnderTest::start(&host_config(
        &server,
        "host-a",
        "127.0.0.2",
        &["--mode-file", mode.to_str().unwrap()],
    ));
    server.wait_for_hosts(1).await;
    std::fs::write(&mode, "slow:1500").unwrap();

    let response = http()
        .post(format!("{}/services/demo/restart", server.url()))
        .bearer_auth(&server.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let restart: Restart = response.json().await.unwrap();
    assert_eq!(location, format!("/restarts/{}", restart.id));

    // Killed while the new generation warms up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    let agent_status = agent.wait_for("the agent to finish alone", Duration::from_secs(10), |s| {
        s.services[0].running_restart.is_none() && s.services[0].last_restart.is_some()
    });
    let agent_outcome = agent_status.services[0]
        .last_restart
        .as_ref()
        .unwrap()
        .outcome;
    assert_eq!(agent_outcome, Some(RestartOutcome::Succeeded));

    server.launch();
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let restart: Restart = server.get_json(&location).await;
        if restart.outcome.is_some() {
            break restart;
        }
        assert!(Instant::now() < deadline, "never settled: {restart:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        settled.outcome,
        Some(RestartOutcome::Succeeded),
        "{settled:#?}"
    );
    let steps = &settled.hosts[0].steps;
    let names: Vec<String> = steps
        .iter()
        .map(|s| {
            serde_json::to_value(&s.kind).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for expected in [
        "generation_spawned",
        "generation_ready",
        "generation_draining",
        "restart_finished",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    // Nothing doubled when the agent resent its events.
    let mut seqs: Vec<u64> = steps.iter().map(|s| s.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), steps.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_restart_through_the_server_and_exits_by_outcome() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    let _a = AgentUnderTest::start(&host_config(
        &server,
        "host-a",
        "127.0.0.2",
        &["--mode-file", mode.to_str().unwrap()],
    ));
    server.wait_for_hosts(1).await;
    let url = server.url();
    let cli = move |token: &str, args: &[&str]| {
        let out = std::process::Command::new(bin("baton"))
            .args(["--server", &url, "--token", token])
            .args(args)
            .env_remove("BATON_AGENT_SOCKET")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let operator = server.operator_token.clone();
    let viewer = server.viewer_token.clone();

    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        let operator = operator.clone();
        move || cli(&operator, &["restart", "demo", "--wait"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("host-a: generation 2 ready"), "{stdout}");
    assert!(stdout.contains("host-a: succeeded"), "{stdout}");
    // Each step's offset is from the restart's creation to the step's own
    // time, whenever the command happened to see it.
    let restart: Restart = server.get_json("/restarts/1").await;
    for step in &restart.hosts[0].steps {
        let offset = format!(
            "+{:>7.3}s  host-a: {}",
            step.at.saturating_sub(restart.created_at) as f64 / 1000.0,
            step.kind
        );
        assert!(stdout.contains(&offset), "{offset:?} missing:\n{stdout}");
    }

    std::fs::write(&mode, "crash").unwrap();
    let (code, stdout, _) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        let operator = operator.clone();
        move || cli(&operator, &["restart", "demo", "--wait"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(2), "rolled back: {stdout}");

    let (code, _, stderr) = cli(&viewer, &["restart", "demo", "--wait"]);
    assert_eq!(code, Some(7), "{stderr}");
    let (code, _, stderr) = cli(&operator, &["restart", "nope", "--wait"]);
    assert_eq!(code, Some(64), "{stderr}");
    let (code, stdout, _) = cli(&viewer, &["history", "demo"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("rolled_back") && stdout.contains("succeeded"),
        "{stdout}"
    );
    let (code, stdout, stderr) = cli(&viewer, &["status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("host-a"), "{stdout}");
    let (code, stdout, stderr) = cli(&viewer, &["status", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json is no JSON ({e}):\n{stdout}"));
    assert_eq!(list["services"][0]["host"], "host-a", "{list}");
    assert_eq!(list["services"][0]["service"], "demo", "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_an_offline_host_fails_there_with_that_reason() {
    // Well under the client's 60 s: the default grace would race it.
    let server = ServerUnderTest::start_with_args(&["--offline-grace", "3s"]);
    let a = AgentUnderTest::start(&host_config(&server, "host-a", "127.0.0.2", &[]));
    server.wait_for_hosts(1).await;
    assert!(a.stop().success());
    server.wait_for_hosts(0).await;
    let restart = server.restart_and_wait("demo").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Failed),
        "{restart:#?}"
    );
    let reason = restart.hosts[0].outcome_reason.as_deref().unwrap_or("");
    assert!(reason.contains("offline"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_handoff_shows_its_tally_in_the_api_the_metrics_and_the_dashboard() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::start(&format!(
        "host = \"alpha\"\n{}{}",
        server.agent_section("alpha"),
        baton_tests::handoff::line_echo_service("echo", dir.path(), "tcp://127.0.0.1:0")
    ));
    server.wait_for_hosts(1).await;
    let addr = agent.tcp_addr("echo", "echo");

    // Two clients with a connection open: both are handed over.
    let mut clients: Vec<(std::io::BufReader<std::net::TcpStream>, std::net::TcpStream)> = (0..2)
        .map(|_| {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            (std::io::BufReader::new(stream.try_clone().unwrap()), stream)
        })
        .collect();
    let echo = |client: &mut (std::io::BufReader<std::net::TcpStream>, std::net::TcpStream),
                line: &str| {
        use std::io::{BufRead, Write};
        client.1.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        client.0.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    };
    for client in &mut clients {
        assert_eq!(echo(client, "before"), "before");
    }

    let restart = server.restart_and_wait("echo").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    for client in &mut clients {
        assert_eq!(echo(client, "after"), "after", "the connection survived");
        assert_eq!(
            echo(client, "generation"),
            "2",
            "and is served by the new one"
        );
    }

    // The API: the host's tally.
    let tally = restart.hosts[0]
        .connections
        .unwrap_or_else(|| panic!("no tally: {restart:#?}"));
    assert_eq!((tally.handed_over, tally.cut), (2, 0), "{restart:#?}");

    // The metrics: counted by service.
    let metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("baton_connections_handed_over_total{service=\"echo\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_connections_cut_total{service=\"echo\"} 0"),
        "{metrics}"
    );

    // The dashboard's restart page.
    let page = server
        .page_as_viewer(&format!("/restarts/{}", restart.id))
        .await;
    let shown = page
        .split("id=\"tally-alpha\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no tally on the restart page: {page}"));
    let shown = &shown[..shown.find("</p>").unwrap()];
    assert!(
        shown.contains("<span class=\"tally-handed-over\">2 handed over</span>"),
        "{shown}"
    );
    assert!(shown.contains("0 cut"), "{shown}");
}
