//! A service's output through the server (`docs/logs.md`): the agent reads
//! it for the server over the link, `GET /hosts/{host}/services/{name}/logs`
//! streams it as JSON lines, and `baton logs NAME --host H` prints it.

use baton_proto::OutputLine;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Prints two lines, then one line each time `trigger` appears.
fn talking_service(trigger: &Path) -> String {
    let trigger = trigger.display();
    format!(
        "[[service]]\nname = \"web\"\nready = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", '''\
echo first line; echo second line >&2; \
while true; do if [ -e {trigger} ]; then rm -f {trigger}; echo printed after the request; fi; sleep 0.05; done''']\n"
    )
}

async fn get(server: &ServerUnderTest, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn wait_for_line(server: &ServerUnderTest, text: &str) -> Vec<OutputLine> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(
            server,
            &server.viewer_token,
            "/hosts/alpha/services/web/logs?lines=50",
        )
        .await;
        assert_eq!(response.status(), 200);
        let lines = baton_tests::output_lines(&response.text().await.unwrap());
        if lines.iter().any(|l| l.text == text) {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {text:?} in {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_streams_a_service_s_output_from_its_agent() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("print");
    let _agent = AgentUnderTest::start(&format!(
        "host = \"alpha\"\n{}{}",
        server.agent_section("alpha"),
        talking_service(&trigger)
    ));
    server.wait_for_hosts(1).await;

    // The last lines, both streams, as JSON lines.
    let response = get(
        &server,
        &server.viewer_token,
        "/hosts/alpha/services/web/logs?lines=10",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let lines = wait_for_line(&server, "second line").await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"first line"), "{texts:?}");
    assert!(lines.iter().all(|l| l.generation == 1), "{lines:?}");

    // `lines` bounds what comes.
    let one = baton_tests::output_lines(
        &get(
            &server,
            &server.operator_token,
            "/hosts/alpha/services/web/logs?lines=1",
        )
        .await
        .text()
        .await
        .unwrap(),
    );
    assert_eq!(one.len(), 1, "{one:?}");

    // Follow: a line printed after the request arrives.
    let response = get(
        &server,
        &server.viewer_token,
        "/hosts/alpha/services/web/logs?lines=0&follow=true",
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response;
    std::fs::write(&trigger, b"").unwrap();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if baton_tests::output_lines(&seen)
                .iter()
                .any(|l| l.text == "printed after the request")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "followed: {seen:?}");
    drop(body);

    // `baton logs web --host alpha` through the server.
    let out = Command::new(bin("baton"))
        .args(["--server", &server.url(), "logs", "web", "--host", "alpha"])
        .env("BATON_TOKEN", &server.viewer_token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("first line"), "{stdout}");
    assert!(stdout.contains("printed after the request"), "{stdout}");
    // With one host running it, --host may be left out.
    let out = Command::new(bin("baton"))
        .args(["--server", &server.url(), "logs", "web"])
        .env("BATON_TOKEN", &server.viewer_token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("second line"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_refused_to_agents_and_unknown_names_and_bounded_per_token() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let agent_token = server.agent_token("alpha");
    let _agent = AgentUnderTest::start(&format!(
        "host = \"alpha\"\n{}{}",
        server.agent_section_with(&agent_token),
        talking_service(&dir.path().join("print"))
    ));
    server.wait_for_hosts(1).await;

    let status = |path: &'static str, token: String| {
        let server = &server;
        async move {
            let response = get(server, &token, path).await;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"].is_string(), "{body}");
            status
        }
    };
    assert_eq!(
        status("/hosts/alpha/services/web/logs", agent_token.clone()).await,
        403
    );
    assert_eq!(
        status(
            "/hosts/alpha/services/nope/logs",
            server.viewer_token.clone()
        )
        .await,
        404
    );
    assert_eq!(
        status("/hosts/beta/services/web/logs", server.viewer_token.clone()).await,
        404
    );
    assert_eq!(
        status(
            "/hosts/alpha/services/web/logs?lines=1001",
            server.viewer_token.clone()
        )
        .await,
        400
    );

    // Eight follow streams per token; the ninth is refused, another token's is not.
    let mut open = Vec::new();
    for _ in 0..8 {
        let response = get(
            &server,
            &server.viewer_token,
            "/hosts/alpha/services/web/logs?follow=true",
        )
        .await;
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    assert_eq!(
        status(
            "/hosts/alpha/services/web/logs?follow=true",
            server.viewer_token.clone()
        )
        .await,
        429
    );
    let other = get(
        &server,
        &server.operator_token,
        "/hosts/alpha/services/web/logs?follow=true",
    )
    .await;
    assert_eq!(other.status(), 200);
    drop(other);
    // A stream whose client left frees its place.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = get(
            &server,
            &server.viewer_token,
            "/hosts/alpha/services/web/logs?follow=true",
        )
        .await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "a closed follow stream never freed its place"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
