//! The deploy job of docs/ci.md, command for command, against a real
//! server and agents: unpack a release, swap `current` to it, then
//! `baton restart NAME --wait` with `BATON_SERVER` and `BATON_TOKEN` in the
//! environment; the job passes or fails on the exit code.

use baton_proto::exit;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::path::Path;
use std::process::Command;

/// `sh -c script` as a CI runner runs a job's step, with the secrets in
/// its environment and nothing of the test's own baton settings.
fn step(server: &ServerUnderTest, root: &Path, script: &str) -> (Option<i32>, String) {
    let baton_dir = bin("baton").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        baton_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(root)
        .env_remove("BATON_AGENT_SOCKET")
        .env("PATH", path)
        .env("BATON_SERVER", server.url())
        .env("BATON_TOKEN", &server.operator_token)
        .envs(server.ca_file().map(|ca| ("BATON_CA_CERT", ca)))
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), output)
}

/// A build: a release folder holding the demo's mode (what the build does
/// when started).
fn build(root: &Path, name: &str, mode: &str) {
    let release = root.join("releases").join(name);
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("mode"), mode).unwrap();
}

/// The swap and restart of docs/ci.md's deploy job.
fn deploy(release: &str, restart: &str) -> String {
    format!(
        "set -e\n\
         ln -sfn \"$PWD/releases/{release}\" current.new\n\
         mv -T current.new current\n\
         baton restart demo --wait {restart}\n"
    )
}

/// One host's agent running the demo from `root/current`.
fn host(server: &ServerUnderTest, root: &Path, name: &str, ip: &str) -> AgentUnderTest {
    let mode = root.join("current/mode");
    AgentUnderTest::start(&server.host_config(
        name,
        ip,
        "demo",
        &["--mode-file", mode.to_str().unwrap()],
        r#"ready_timeout = "3s""#,
    ))
}

fn serving(agent: &AgentUnderTest) -> u64 {
    agent.service("demo").generations[0].generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_job_exits_0_on_success_and_rolled_back_on_a_build_that_never_gets_ready() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build(root, "1", "normal");
    std::os::unix::fs::symlink(root.join("releases/1"), root.join("current")).unwrap();
    let a = host(&server, root, "host-a", "127.0.0.2");
    server.wait_for_hosts(1).await;

    build(root, "2", "normal");
    let (code, output) = step(&server, root, &deploy("2", ""));
    assert_eq!(code, Some(exit::SUCCEEDED.into()), "{output}");
    assert!(output.contains("succeeded"), "{output}");
    assert_eq!(serving(&a), 2);

    build(root, "3", "never-ready");
    let (code, output) = step(&server, root, &deploy("3", ""));
    assert_eq!(code, Some(exit::ROLLED_BACK.into()), "{output}");
    assert_eq!(serving(&a), 2, "the old generation serves on");

    // The docs' way back: swap to the previous release and restart.
    let (code, output) = step(&server, root, &deploy("2", ""));
    assert_eq!(code, Some(exit::SUCCEEDED.into()), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_with_host_restarts_only_the_named_hosts() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build(root, "1", "normal");
    std::os::unix::fs::symlink(root.join("releases/1"), root.join("current")).unwrap();
    let a = host(&server, root, "host-a", "127.0.0.2");
    let b = host(&server, root, "host-b", "127.0.0.3");
    let c = host(&server, root, "host-c", "127.0.0.4");
    server.wait_for_hosts(3).await;
    let b_pid = b.service("demo").generations[0].pid;

    build(root, "2", "normal");
    let (code, output) = step(
        &server,
        root,
        &deploy("2", "--host host-a --host host-c --max-parallel 2"),
    );
    assert_eq!(code, Some(exit::SUCCEEDED.into()), "{output}");
    assert!(output.contains("2 host(s): host-a, host-c"), "{output}");
    assert_eq!(serving(&a), 2);
    assert_eq!(serving(&c), 2);
    let b_after = b.service("demo");
    assert_eq!(b_after.generations.len(), 1);
    assert_eq!(b_after.generations[0].pid, b_pid, "host-b was restarted");
    assert!(b_after.last_restart.is_none(), "{b_after:#?}");

    // Against an agent the flags mean nothing: a usage error, not a restart
    // of the wrong hosts.
    let (code, output) = step(
        &server,
        root,
        &format!(
            "baton --agent {} restart demo --host host-a",
            b.socket.display()
        ),
    );
    assert_eq!(code, Some(exit::USAGE.into()), "{output}");
    assert!(b.service("demo").last_restart.is_none());
}
