//! `baton` against a local agent: every step printed, exit codes by outcome.

use baton_tests::{AgentUnderTest, bin, demo_service_args};
use std::process::Command;

fn baton(agent: &AgentUnderTest, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(args)
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn restart_wait_prints_each_step_and_exits_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    let agent = AgentUnderTest::start(&demo_service_args(
        "web",
        &["--mode-file", mode.to_str().unwrap()],
        "ready_timeout = \"2s\"\ndrain_timeout = \"700ms\"",
    ));

    let (code, stdout, stderr) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let steps: Vec<&str> = stdout.lines().collect();
    for expected in [
        "restart 1 of web started",
        "generation 2 spawned",
        "generation 2 ready",
        "generation 1 draining",
        "generation 1 exited",
        "restart succeeded",
    ] {
        assert!(
            steps.iter().any(|l| l.contains(expected)),
            "{expected:?} missing:\n{stdout}"
        );
    }

    std::fs::write(&mode, "crash").unwrap();
    let (code, stdout, _) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(2), "rolled back:\n{stdout}");

    // Modes apply when a generation starts: start one that ignores SIGTERM,
    // then replace it.
    std::fs::write(&mode, "ignore-sigterm").unwrap();
    let (code, stdout, _) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}");
    std::fs::write(&mode, "normal").unwrap();
    let (code, stdout, _) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(3), "forced:\n{stdout}");
    assert!(stdout.contains("killed at the drain deadline"), "{stdout}");

    std::fs::write(&mode, "slow:1500").unwrap();
    let (code, _, stderr) = baton(&agent, &["restart", "web", "--wait", "--timeout", "300ms"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("still running"), "{stderr}");

    let (code, stdout, _) = baton(&agent, &["status"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("web"), "{stdout}");
    let (code, stdout, _) = baton(&agent, &["show", "1"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("restart 1 of web: succeeded"),
        "{stdout}"
    );
    let (code, stdout, _) = baton(&agent, &["events"]);
    assert_eq!(code, Some(0));
    assert!(stdout.lines().count() > 10, "{stdout}");
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_demo_writes_its_secrets_for_its_owner_only() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut demo = start_demo(&data, std::process::Stdio::piped());
    let (running, ready) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("baton demo is running") {
                let _ = running.send(());
            }
        }
    });
    let started = ready.recv_timeout(std::time::Duration::from_secs(60));
    let modes = started.is_ok().then(|| {
        [
            data.join("agent.toml"),
            data.join("baton.db"),
            data.join("baton.db-wal"),
            data.join("baton.db-shm"),
        ]
        .map(|file| (file.clone(), mode_of(&file)))
    });
    if !interrupt(&mut demo) {
        let _ = demo.kill();
    }
    let modes = modes.expect("the demo never said it was running");
    for (file, mode) in modes {
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    assert_eq!(processes_mentioning(&data), Vec::<i32>::new());
}

/// `baton demo` on a free port, keeping its files in `data`.
fn start_demo(data: &std::path::Path, stdout: std::process::Stdio) -> std::process::Child {
    let listen = format!("127.0.0.1:{}", baton_tests::server::free_port());
    Command::new(bin("baton"))
        .args(["demo", "--listen", &listen, "--data-dir"])
        .arg(data)
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Ctrl-C, then whether the demo exited within a minute.
fn interrupt(demo: &mut std::process::Child) -> bool {
    let pid = nix::unistd::Pid::from_raw(demo.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while demo.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// Pids of the live processes whose command line names `path`.
fn processes_mentioning(path: &std::path::Path) -> Vec<i32> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = stat.rsplit_once(") ")?.1.starts_with('Z');
            (!zombie && String::from_utf8_lossy(&cmdline).contains(&needle)).then_some(pid)
        })
        .collect()
}

/// A Ctrl-C while the demo is still starting stops what it started.
#[test]
fn the_demo_interrupted_while_it_starts_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut demo = start_demo(&data, std::process::Stdio::null());
    // The agent is started (its log exists) but its services are not ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !data.join("agent.log").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(interrupt(&mut demo), "the demo did not stop");
    assert_eq!(processes_mentioning(&data), Vec::<i32>::new());
}

#[test]
fn the_agent_warns_when_others_may_read_its_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "control_socket = \"{}\"\n[server]\nurl = \"http://127.0.0.1:1\"\ntoken = \"baton_secret\"\n",
            dir.path().join("agent.sock").display()
        ),
    )
    .unwrap();
    let check = |mode| {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = baton_tests::agent_check(&config);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let readable = check(0o644);
    assert!(readable.contains("WARN"), "{readable}");
    assert!(readable.contains("holds the server token"), "{readable}");
    assert!(
        readable.contains(&config.display().to_string()),
        "{readable}"
    );
    let private = check(0o600);
    assert!(!private.contains("server token"), "{private}");
}

/// Runs `baton` with its standard output a pipe whose reader is gone
/// before the first write, as `baton events | head` is once `head` had
/// its lines.
fn baton_into_a_closed_pipe(agent: &AgentUnderTest, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(args)
        .env_remove("BATON_SERVER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reader_that_stops_reading_ends_every_printing_command_quietly() {
    let agent = AgentUnderTest::start(&demo_service_args("web", &[], ""));
    agent.restart("web");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["events"],
        &["show", "1"],
        &["show", "1", "--json"],
        &["restart", "web", "--wait"],
    ] {
        let (code, stderr) = baton_into_a_closed_pipe(&agent, args);
        assert_eq!(code, Some(0), "baton {args:?}: {stderr}");
        assert!(stderr.is_empty(), "baton {args:?} said: {stderr}");
    }
}

#[test]
fn an_explicit_agent_flag_wins_over_an_exported_server() {
    let agent = AgentUnderTest::start(&demo_service_args("web", &[], ""));
    let baton_with_server_exported = |args: &[&str]| {
        Command::new(bin("baton"))
            .args(args)
            // Nothing listens there: going to it would fail.
            .env("BATON_SERVER", "http://127.0.0.1:9")
            .env("BATON_AGENT_SOCKET", "/nonexistent/agent.sock")
            .output()
            .unwrap()
    };
    let socket = agent.socket.to_str().unwrap();
    let out = baton_with_server_exported(&["--agent", socket, "status", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: baton_proto::AgentStatus = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status.services[0].name, "web");

    // Both flags at once is a usage error, not a silent choice.
    let out = baton_with_server_exported(&[
        "--agent",
        socket,
        "--server",
        "http://127.0.0.1:9",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(i32::from(baton_proto::exit::USAGE)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--agent and --server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
