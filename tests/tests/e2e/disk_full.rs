//! The server's database on a full disk: a write that failed is never a
//! `202`, nothing is sent to an agent, and the server recovers by itself when
//! space returns. Needs root, to mount a small tmpfs.

use baton_proto::api::RestartRequest;
use baton_proto::{RestartOutcome, ServiceName};
use baton_tests::{AgentUnderTest, bin, demo_service};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of a few MiB, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs: run the tests as root (as ./scripts/test does in CI)"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes until the disk is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_503_sends_no_command_and_the_server_recovers() {
    let disk = SmallDisk::mount();
    std::fs::create_dir(disk.path().join("server")).unwrap();
    let mut server = baton_testkit::ServerSetup::new(bin("baton-server"))
        .in_folder(disk.path().join("server"))
        .prepare()
        .unwrap();
    let operator = server.create_token("op", "operator", None).unwrap();
    let agent_token = server
        .create_token("agent-a", "agent", Some("host-a"))
        .unwrap();
    server.launch().unwrap();
    let agent = AgentUnderTest::start(&format!(
        "host = \"host-a\"\n{}{}",
        server.agent_section(&agent_token),
        demo_service("web", "")
    ));
    let client = server.client(Some(&operator)).unwrap();
    let web = ServiceName::parse("web").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match client
            .restart_and_wait(&web, &RestartRequest::default())
            .await
        {
            Ok(restart) => break restart,
            Err(e) => {
                assert!(Instant::now() < deadline, "no first restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(first.outcome, Some(RestartOutcome::Succeeded));
    let generation = agent.service("web").generations[0].generation;

    let filler = disk.fill();
    let http = reqwest::Client::new();
    let health = health_until(&http, &server.url(), 503).await;
    assert_eq!(health["status"], "unavailable", "{health}");
    assert!(
        health["error"].as_str().unwrap().contains("disk full"),
        "{health}"
    );
    assert_eq!(writable_gauge(&http, &server.url()).await, "0");
    for _ in 0..4 {
        let response = http
            .post(format!("{}/services/web/restart", server.url()))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("disk full"),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agent.service("web").generations[0].generation,
        generation,
        "a restart the server could not save reached the agent"
    );

    std::fs::remove_file(filler).unwrap();
    let health = health_until(&http, &server.url(), 200).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(writable_gauge(&http, &server.url()).await, "1");
    let second = client
        .restart_and_wait(&web, &RestartRequest::default())
        .await
        .unwrap();
    assert_eq!(
        second.outcome,
        Some(RestartOutcome::Succeeded),
        "{second:?}"
    );
    assert_eq!(second.id, first.id + 1, "ids are not reused");
    let stored = client.restart(second.id).await.unwrap();
    assert_eq!(stored.outcome, Some(RestartOutcome::Succeeded));
    drop(agent);
    drop(server);
}

/// `/healthz`'s body once it answers `status` (its write probe's answer
/// stands for up to 2 s).
async fn health_until(http: &reqwest::Client, url: &str, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http.get(format!("{url}/healthz")).send().await.unwrap();
        let got = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still answers {got} {body}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of `baton_database_writable` in `/metrics`.
async fn writable_gauge(http: &reqwest::Client, url: &str) -> String {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("baton_database_writable "))
        .unwrap_or_else(|| panic!("no baton_database_writable in\n{text}"))
        .to_string()
}
