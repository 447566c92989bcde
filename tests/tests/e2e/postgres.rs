//! `baton-server --database postgres://...`: the real server on a
//! PostgreSQL database of the test's own, with a real agent.

use baton_proto::RestartOutcome;
use baton_proto::api::Restart;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::process::Command;

fn server_command(args: &[&str], database: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(bin("baton-server"))
        .args(args)
        .arg("--database")
        .arg(database)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgresql_restarts_a_service_and_keeps_the_restart() {
    let mut server = ServerUnderTest::start_on_postgres();
    let _agent = AgentUnderTest::start(&server.host_config(
        "host-a",
        "127.0.0.1",
        "web",
        &[],
        r#"ready_timeout = "5s""#,
    ));
    server.wait_for_hosts(1).await;

    let restart = server.restart_and_wait("web").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:#?}"
    );

    // Another run of the server reads it back from the database.
    server.kill();
    server.launch();
    let stored: Restart = server.get_json(&format!("/restarts/{}", restart.id)).await;
    assert_eq!(stored.outcome, Some(RestartOutcome::Succeeded));
    assert_eq!(stored.hosts.len(), 1);
    assert_eq!(stored.hosts[0].host, "host-a");
    assert!(!stored.hosts[0].steps.is_empty(), "{stored:#?}");

    let (ok, stdout, stderr) = server_command(&["migrate", "--check"], &server.database());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("is up to date"), "{stdout}");
}

#[test]
fn a_database_pool_out_of_bounds_or_on_sqlite_stops_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("baton.db");
    for (pool, database, because) in [
        (
            "0",
            "postgres://baton@127.0.0.1:1/none",
            "1 to 256 connections, not 0",
        ),
        (
            "257",
            "postgres://baton@127.0.0.1:1/none",
            "1 to 256 connections, not 257",
        ),
        ("many", "postgres://baton@127.0.0.1:1/none", "not a number"),
        (
            "4",
            sqlite.to_str().unwrap(),
            "--database-pool sizes the PostgreSQL pool",
        ),
    ] {
        let (ok, _, stderr) = server_command(
            &["serve", "--listen", "127.0.0.1:0", "--database-pool", pool],
            std::path::Path::new(database),
        );
        assert!(!ok, "{pool} {database}");
        assert!(stderr.contains(because), "{pool}: {stderr}");
    }
    assert!(!sqlite.exists(), "a refused start created the database");
}
