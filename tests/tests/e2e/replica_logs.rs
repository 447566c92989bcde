//! A service's output asked on a replica that does not hold the host's
//! link (`docs/replicas.md`): two real `baton-server` processes on one
//! SQLite file (and on one PostgreSQL database), the agent linked to one,
//! the logs read through the other.
//! The link holder relays the agent's lines through the database; the
//! stream stops on the agent when its client leaves, and ends when the
//! agent's link moves.

use baton_proto::OutputLine;
use baton_tests::AgentUnderTest;
use baton_tests::server::ServerUnderTest;
use std::path::Path;
use std::time::{Duration, Instant};

/// Prints two lines, then one line each time `trigger` appears.
fn talking_service(trigger: &Path) -> String {
    let trigger = trigger.display();
    format!(
        "[[service]]\nname = \"web\"\nready = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", '''\
echo first line; echo second line >&2; \
while true; do if [ -e {trigger} ]; then rm -f {trigger}; echo printed after the request; fi; sleep 0.05; done''']\n"
    )
}

/// An agent config for `alpha` linking to `servers`, in that order.
fn config(servers: &[&ServerUnderTest], token: &str, trigger: &Path) -> String {
    let urls: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url())).collect();
    format!(
        "host = \"alpha\"\n[server]\nurls = [{}]\ntoken = \"{token}\"\n{}",
        urls.join(", "),
        talking_service(trigger)
    )
}

fn wait_linked_to(agent: &AgentUnderTest, server: &ServerUnderTest) {
    let url = server.url();
    agent.wait_for(
        &format!("a link to {url}"),
        Duration::from_secs(20),
        |status| {
            status
                .server_link
                .as_ref()
                .is_some_and(|link| link.linked && link.url == url)
        },
    );
}

async fn get(server: &ServerUnderTest, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(&server.viewer_token)
        .send()
        .await
        .unwrap()
}

/// The last lines of `web`, asked of `server` until `text` is among them.
async fn wait_for_line(server: &ServerUnderTest, text: &str) -> Vec<OutputLine> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = get(server, "/hosts/alpha/services/web/logs?lines=50").await;
        let status = response.status();
        let body = response.text().await.unwrap();
        if status == 200 {
            let lines = baton_tests::output_lines(&body);
            if lines.iter().any(|l| l.text == text) {
                return lines;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?}: {status} {body}\n--- holder ---\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `response` until a line says `text`; false when it ends first.
async fn read_until(response: &mut reqwest::Response, text: &str) -> bool {
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if baton_tests::output_lines(&seen)
                .iter()
                .any(|l| l.text == text)
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or_else(|_| panic!("nothing said {text:?}: {seen:?}"))
}

/// Whether `response` ends within `within`; blank keep-alive lines are
/// read past.
async fn ends_within(response: &mut reqwest::Response, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match response.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_asked_on_one_replica_come_from_an_agent_linked_to_the_other() {
    logs_through_another_replica(ServerUnderTest::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_asked_on_one_replica_come_from_the_other_on_postgresql_too() {
    logs_through_another_replica(ServerUnderTest::start_on_postgres()).await;
}

async fn logs_through_another_replica(a: ServerUnderTest) {
    let b = a.replica();
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("print");
    let agent = AgentUnderTest::start(&config(&[&b], &a.agent_token("alpha"), &trigger));
    wait_linked_to(&agent, &b);
    a.wait_for_hosts(1).await;

    // The past: both streams, through B.
    let lines = wait_for_line(&a, "second line").await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"first line"), "{texts:?}");
    let one = baton_tests::output_lines(
        &get(&a, "/hosts/alpha/services/web/logs?lines=1")
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(one.len(), 1, "{one:?}");
    // Follow: a line printed after the request arrives.
    let mut follow = get(&a, "/hosts/alpha/services/web/logs?lines=0&follow=true").await;
    assert_eq!(follow.status(), 200);
    std::fs::write(&trigger, b"").unwrap();
    assert!(read_until(&mut follow, "printed after the request").await);

    // The client leaves: B stops the stream on the agent. A notices the
    // client gone when a keep-alive line (every 5 s) cannot be written.
    assert!(!b.log().contains("reader is gone"), "{}", b.log());
    drop(follow);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.log().contains("relayed log stream's reader is gone") {
        assert!(
            Instant::now() < deadline,
            "B never stopped the stream: {}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The dashboard's live tail on A, read through B too.
    let cookie = a.dashboard_session(&a.viewer_token).await;
    let mut tail = reqwest::Client::new()
        .get(format!("{}/services/web/output?host=alpha", a.url()))
        .header("accept", "text/event-stream")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let mut events = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = tail.chunk().await.unwrap() {
            events.push_str(&String::from_utf8_lossy(&chunk));
            if events.contains("event: line") && events.contains("printed after the request") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "{events:?}");
    drop(tail);

    // `baton logs web --host alpha` through A.
    let out = std::process::Command::new(baton_tests::bin("baton"))
        .args(["--server", &a.url(), "logs", "web", "--host", "alpha"])
        .env("BATON_TOKEN", &a.viewer_token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("printed after the request"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_follow_ends_when_the_agent_s_link_moves() {
    let a = ServerUnderTest::start();
    let mut b = a.replica();
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("print");
    // B first; A when B is gone.
    let agent = AgentUnderTest::start(&config(&[&b, &a], &a.agent_token("alpha"), &trigger));
    wait_linked_to(&agent, &b);
    a.wait_for_hosts(1).await;
    wait_for_line(&a, "second line").await;

    let mut follow = get(&a, "/hosts/alpha/services/web/logs?lines=5&follow=true").await;
    assert_eq!(follow.status(), 200);
    assert!(read_until(&mut follow, "second line").await);

    // B dies without a word: the agent links to A, and A's stream, whose
    // lines came from B, ends rather than hang.
    b.kill();
    wait_linked_to(&agent, &a);
    assert!(
        ends_within(&mut follow, Duration::from_secs(10)).await,
        "the follow never ended: {}",
        a.log()
    );

    // Now A holds the link: its own streams work.
    let mut follow = get(&a, "/hosts/alpha/services/web/logs?lines=0&follow=true").await;
    assert_eq!(follow.status(), 200);
    std::fs::write(&trigger, b"").unwrap();
    assert!(read_until(&mut follow, "printed after the request").await);
}
