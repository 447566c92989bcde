//! `baton-server token list` and `token revoke` against a running server's
//! database, and what a revoked token can still do: nothing.

use baton_tests::bin;
use baton_tests::server::ServerUnderTest;
use std::process::Command;
use std::time::{Duration, Instant};

fn token_command(server: &ServerUnderTest, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("baton-server"))
        .arg("token")
        .args(args)
        .arg("--database")
        .arg(server.database())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_with(server: &ServerUnderTest, token: &str) -> (Option<i32>, String) {
    let out = Command::new(bin("baton"))
        .args(["--server", &server.url(), "--token", token, "status"])
        .env_remove("BATON_AGENT_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_token_revoked_from_the_command_line_is_refused_by_the_running_server() {
    let server = ServerUnderTest::start();
    server.agent_token("host-a");
    let (code, listed, _) = token_command(&server, &["list"]);
    assert_eq!(code, Some(0));
    for name in ["test-operator", "test-viewer", "test-agent-host-a"] {
        assert!(listed.contains(name), "{listed}");
    }
    assert_eq!(status_with(&server, &server.viewer_token).0, Some(0));

    let (code, stdout, stderr) = token_command(&server, &["revoke", "--name", "test-viewer"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("revoked 1 token"), "{stdout}");
    let (code, _, stderr) = token_command(&server, &["revoke", "--name", "test-viewer"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("no live token"), "{stderr}");

    // The server rechecks cached tokens every 5 s by default.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, stderr) = status_with(&server, &server.viewer_token);
        if code == Some(7) {
            break;
        }
        assert_eq!(code, Some(0), "{stderr}");
        assert!(Instant::now() < deadline, "the revoked token kept working");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(status_with(&server, &server.operator_token).0, Some(0));

    let (_, listed, _) = token_command(&server, &["list"]);
    let viewer_line = listed.lines().find(|l| l.contains("test-viewer")).unwrap();
    assert!(
        !viewer_line.trim_end().ends_with('-'),
        "no revocation time: {viewer_line}"
    );
    let operator_line = listed
        .lines()
        .find(|l| l.contains("test-operator"))
        .unwrap();
    assert!(operator_line.trim_end().ends_with('-'), "{operator_line}");
}

#[test]
fn an_agent_token_names_its_host_and_the_list_shows_it() {
    let server = ServerUnderTest::start();
    let (code, _, stderr) =
        token_command(&server, &["create", "--name", "web-1", "--role", "agent"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--host"), "{stderr}");
    let (code, _, stderr) = token_command(
        &server,
        &[
            "create", "--name", "ci", "--role", "operator", "--host", "web-1",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("only an agent token names a host"),
        "{stderr}"
    );
    let (code, _, stderr) = token_command(
        &server,
        &[
            "create", "--name", "web-1", "--role", "agent", "--host", "web 1",
        ],
    );
    assert_ne!(code, Some(0), "an invalid host name was taken");
    assert!(stderr.contains("host"), "{stderr}");

    let (code, _, stderr) = token_command(
        &server,
        &[
            "create", "--name", "web-1", "--role", "agent", "--host", "web-1",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (_, listed, _) = token_command(&server, &["list"]);
    let line = listed
        .lines()
        .find(|l| l.contains("web-1"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("agent") && line.matches("web-1").count() == 2,
        "{line}"
    );
    assert!(listed.lines().next().unwrap().contains("HOST"), "{listed}");
}
