//! Every process of a generation is tracked and stopped with it, including a
//! daemon that left the generation's process group with `setsid` and keeps
//! the listening socket.

use baton_proto::{GenerationState, ProcessTracking, RestartOutcome};
use baton_tests::{AgentUnderTest, bin};
use std::path::Path;
use std::time::{Duration, Instant};

/// A service whose first process starts a `setsid` daemon (holding fd 3, the
/// listener, as a forking server's leftover would) and then execs the demo
/// service. The daemon writes its pid to `daemon.<generation>` in `dir`;
/// with `ignore_term` it ignores SIGTERM.
fn forking_service(dir: &Path, ignore_term: bool, extra: &str) -> String {
    // A shell that traps TERM outlives it (its `sleep` does not, and is
    // started again).
    let body = if ignore_term {
        "trap : TERM; while :; do sleep 1; done"
    } else {
        "exec sleep 600"
    };
    let script = format!(
        "setsid /bin/sh -c 'echo $$ > {dir}/daemon.$BATON_GENERATION; {body}' </dev/null >/dev/null 2>&1 & exec {demo} --drain-idle-grace 300ms",
        dir = dir.display(),
        demo = bin("baton-demo").display(),
    );
    format!(
        r#"
[[service]]
name = "web"
command = ["/bin/sh", "-c", "{script}"]
{extra}

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#
    )
}

fn daemon_pid(dir: &Path, generation: u64) -> i32 {
    let file = dir.join(format!("daemon.{generation}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alive and not a zombie (the agent, a subreaper, may not have reaped it yet).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(!matches!(state, 'Z' | 'X'))
        })
        .unwrap_or(false)
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_daemon_that_left_the_process_group_is_stopped_with_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::start(&forking_service(dir.path(), false, ""));
    assert_eq!(
        agent.status().process_tracking,
        Some(ProcessTracking::Cgroup)
    );
    let daemon = daemon_pid(dir.path(), 1);
    assert_ne!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(daemon))).unwrap(),
        nix::unistd::Pid::from_raw(agent.service("web").generations[0].pid as i32),
        "the daemon left the generation's process group"
    );

    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    assert!(
        wait_gone(daemon, Duration::from_secs(5)),
        "the old generation's daemon outlived it"
    );
    let second = daemon_pid(dir.path(), 2);
    assert!(alive(second));

    agent.stop();
    assert!(
        wait_gone(second, Duration::from_secs(5)),
        "a daemon outlived the agent's stop"
    );
}

#[test]
fn a_daemon_that_ignores_sigterm_keeps_its_generation_draining_until_it_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::start(&forking_service(dir.path(), true, "drain_timeout = \"2s\""));
    let daemon = daemon_pid(dir.path(), 1);
    let started = Instant::now();
    let report = std::thread::scope(|scope| {
        let restart = scope.spawn(|| agent.restart("web").1);
        // The first process exits at once; the daemon keeps generation 1
        // draining, and shown.
        agent.wait_for(
            "generation 1 draining after its main process exited",
            Duration::from_secs(10),
            |status| {
                let generations = &status.services[0].generations;
                generations.len() == 2
                    && generations[0].generation == 1
                    && generations[0].state == GenerationState::Draining
                    && generations[0].connections == Some(0)
            },
        );
        assert!(alive(daemon));
        restart.join().unwrap()
    });
    assert_eq!(report.outcome, Some(RestartOutcome::Forced), "{report:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the drain ended before its deadline"
    );
    assert!(
        wait_gone(daemon, Duration::from_secs(5)),
        "the daemon survived the kill at the drain deadline"
    );
    assert!(
        agent
            .service("web")
            .generations
            .iter()
            .all(|g| g.generation == 2)
    );
}

#[test]
fn without_cgroups_the_status_says_escaped_processes_are_not_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::start(&format!(
        "cgroups = false\n{}",
        forking_service(dir.path(), false, "")
    ));
    assert_eq!(
        agent.status().process_tracking,
        Some(ProcessTracking::Session)
    );
    let out = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("escapes its generation"), "{text}");
}
