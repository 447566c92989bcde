//! Deploying a new build of a service (docs/deploy.md): the new binary goes
//! beside the old one and a `current` symlink is swapped by a rename; the
//! serving generation runs on from the old file, and the next generation,
//! started by a restart, runs the new one. Copying over the running binary
//! is refused by the kernel (ETXTBSY), which is why the docs never do it.

use baton_proto::RestartOutcome;
use baton_tests::{AgentUnderTest, bin};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inode of the file the process was started from: the symlink in its
/// command was followed at exec, so this is the release it really runs.
fn running_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
        .ino()
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn answers(address: std::net::SocketAddr) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Points `link` at `target` atomically: a new symlink renamed over it.
fn swap_symlink(link: &Path, target: &Path) {
    let fresh = link.with_extension("new");
    std::os::unix::fs::symlink(target, &fresh).unwrap();
    std::fs::rename(&fresh, link).unwrap();
}

#[test]
fn a_swapped_binary_is_what_the_next_generation_runs_while_the_old_runs_on() {
    let deploy = tempfile::tempdir().unwrap();
    let releases = deploy.path().join("releases");
    for release in ["v1", "v2"] {
        std::fs::create_dir_all(releases.join(release)).unwrap();
        // Two files, two inodes: a copy, not a link to the same build.
        std::fs::copy(bin("baton-demo"), releases.join(release).join("web")).unwrap();
    }
    let current = deploy.path().join("current");
    swap_symlink(&current, &releases.join("v1"));

    let agent = AgentUnderTest::start(&baton_testkit::demo_service(
        &current.join("web"),
        "web",
        &[],
        "",
    ));
    let address = agent.tcp_addr("web", "http");
    let old = agent.service("web").generations[0].clone();
    assert_eq!(running_inode(old.pid), inode(&releases.join("v1/web")));

    // What `cp v2/web current/web` would do: the kernel refuses to write a
    // file a process runs.
    let overwrite = std::fs::OpenOptions::new()
        .write(true)
        .open(releases.join("v1/web"))
        .expect_err("a running binary cannot be opened for writing");
    assert_eq!(overwrite.raw_os_error(), Some(nix::libc::ETXTBSY));

    swap_symlink(&current, &releases.join("v2"));
    answers(address);
    assert_eq!(running_inode(old.pid), inode(&releases.join("v1/web")));

    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    let new = agent.service("web").generations[0].clone();
    assert!(new.generation > old.generation);
    assert_eq!(running_inode(new.pid), inode(&releases.join("v2/web")));
    answers(address);
}

/// The agent started through a `current` symlink is upgraded (SIGUSR2) to
/// the release the symlink names at the upgrade, keeping its pid and its
/// services.
#[test]
fn an_agent_upgraded_after_a_symlink_swap_runs_the_new_release() {
    let agent_binary = bin("baton-agent");
    // Beside the build, so the releases can be hard links of it: two paths,
    // and /proc/PID/exe names the one the kernel executed.
    let deploy = tempfile::tempdir_in(agent_binary.parent().unwrap()).unwrap();
    let releases = deploy.path().join("releases");
    for release in ["v1", "v2"] {
        std::fs::create_dir_all(releases.join(release)).unwrap();
        let path = releases.join(release).join("baton-agent");
        if std::fs::hard_link(&agent_binary, &path).is_err() {
            std::fs::copy(&agent_binary, &path).unwrap();
        }
    }
    let current = deploy.path().join("current");
    swap_symlink(&current, &releases.join("v1"));

    let agent = AgentUnderTest::start_with_binary(
        &current.join("baton-agent"),
        &baton_tests::demo_service("web", ""),
    );
    let executed = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(executed(agent.pid()), releases.join("v1/baton-agent"));
    let serving = agent.service("web").generations[0].pid;

    swap_symlink(&current, &releases.join("v2"));
    agent.signal(nix::sys::signal::Signal::SIGUSR2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while executed(agent.pid()) != releases.join("v2/baton-agent") {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent still runs {}:\n{}",
            executed(agent.pid()).display(),
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    agent.wait_for(
        "the upgraded agent answering",
        std::time::Duration::from_secs(20),
        |status| status.services.iter().any(|s| s.name == "web"),
    );
    assert_eq!(agent.service("web").generations[0].pid, serving);
    answers(agent.tcp_addr("web", "http"));
}
