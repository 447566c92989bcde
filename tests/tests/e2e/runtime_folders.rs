//! On a fresh machine none of the agent's runtime folders exist: the agent
//! makes them (control socket and state file private, the notify socket's
//! reachable by services of other users), and `--check` makes them too, or
//! names the one it could not.

use baton_tests::{AgentUnderTest, agent_check, demo_service};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn an_agent_whose_notify_folder_does_not_exist_creates_it_and_serves() {
    let fresh = tempfile::tempdir().unwrap();
    let notify_folder = fresh.path().join("run/baton-notify");
    let agent = AgentUnderTest::start(&format!(
        "notify_socket = \"{}/notify.sock\"\n{}",
        notify_folder.display(),
        demo_service("web", "ready = \"notify\"")
    ));
    let address = agent.tcp_addr("web", "http");
    std::net::TcpStream::connect(address).expect("the demo service accepts");
    assert_eq!(mode(&fresh.path().join("run")), 0o711);
    assert_eq!(mode(&notify_folder), 0o711);
}

#[test]
fn check_creates_the_runtime_folders_private_where_nothing_else_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let control_folder = dir.path().join("run/baton");
    let notify_folder = dir.path().join("notify");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "control_socket = \"{}/agent.sock\"\nnotify_socket = \"{}/notify.sock\"\n",
            control_folder.display(),
            notify_folder.display()
        ),
    )
    .unwrap();
    let out = agent_check(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dir.path().join("run")), 0o700);
    assert_eq!(mode(&control_folder), 0o700);
    assert_eq!(mode(&notify_folder), 0o711);
}

#[test]
fn check_names_a_runtime_folder_it_could_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let in_the_way = dir.path().join("a-file");
    std::fs::write(&in_the_way, "").unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "control_socket = \"{}/agent.sock\"\nnotify_socket = \"{}/run/notify.sock\"\n",
            dir.path().display(),
            in_the_way.display()
        ),
    )
    .unwrap();
    let out = agent_check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("ok"), "{stdout}");
    assert!(
        stderr.contains(&format!("{}/run", in_the_way.display())) && stderr.contains("notify"),
        "{stderr}"
    );
}
