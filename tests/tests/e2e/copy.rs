//! `baton-server copy` as an operator runs it (`docs/postgres.md`): a real
//! server and agent on SQLite do a restart, the server is stopped, the
//! history is copied to a fresh PostgreSQL database by the binary, and a
//! server started there answers the same restart, host and generations to
//! the same tokens. A copy from a file a server still writes, or into a
//! target that holds history, is refused with an error and exit status 1.

use baton_proto::RestartOutcome;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::process::{Command, Output};

fn copy(from: &str, to: &str) -> Output {
    Command::new(bin("baton-server"))
        .args(["copy", "--from", from, "--to", to])
        .output()
        .unwrap()
}

fn refused(out: &Output, because: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains(because), "{stderr}");
}

async fn get(server: &ServerUnderTest, token: &str, path: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// What a restart says that a copy must keep.
fn essence(restart: &serde_json::Value) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = restart["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            serde_json::json!({
                "host": h["host"],
                "state": h["state"],
                "outcome": h["outcome"],
                "steps": h["steps"],
            })
        })
        .collect();
    serde_json::json!({
        "id": restart["id"],
        "service": restart["service"],
        "outcome": restart["outcome"],
        "created_at": restart["created_at"],
        "hosts": hosts,
    })
}

fn generations(page: &serde_json::Value) -> Vec<(serde_json::Value, serde_json::Value)> {
    page["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["host"].clone(), g["generation"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_copied_to_postgresql_is_served_by_a_server_there() {
    let mut on_sqlite = ServerUnderTest::start();
    let agent =
        AgentUnderTest::start(&on_sqlite.host_config("alpha", "127.0.0.2", "demo", &[], ""));
    on_sqlite.wait_for_hosts(1).await;
    let restart = on_sqlite.restart_and_wait("demo").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );
    let postgres = baton_testkit::Postgres::shared()
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e:#}"));
    let target = postgres.create_database().unwrap();
    let from = format!("sqlite://{}", on_sqlite.database().display());

    // The server still writes the file: refused, nothing copied.
    refused(
        &copy(&from, &target),
        "a baton-server is running on the source database",
    );

    drop(agent);
    let path = format!("/restarts/{}", restart.id);
    let token = on_sqlite.viewer_token.clone();
    let before = get(&on_sqlite, &token, &path).await;
    let generations_before = get(&on_sqlite, &token, "/services/demo/generations").await;
    assert!(!generations(&generations_before).is_empty());
    on_sqlite.stop();

    let out = copy(&from, &target);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("restarts") && stdout.contains("copied"),
        "{stdout}"
    );

    // A server on PostgreSQL answers the SQLite server's token with the
    // same history.
    let mut on_postgres = ServerUnderTest::start_on_postgres_database(&target);
    let after = get(&on_postgres, &token, &path).await;
    assert_eq!(essence(&after), essence(&before), "{after:#}");
    let hosts = get(&on_postgres, &token, "/hosts").await;
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha"]);
    assert_eq!(
        generations(&get(&on_postgres, &token, "/services/demo/generations").await),
        generations(&generations_before)
    );

    // A second copy: refused while that server runs on the target, and,
    // once it is stopped, because the target holds history.
    refused(
        &copy(&from, &target),
        "a baton-server is running on the target database",
    );
    on_postgres.stop();
    refused(&copy(&from, &target), "the target already holds history");
}
