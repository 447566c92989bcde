//! Every process of a generation is tracked and stopped with it, including a
//! daemon that left the generation's process group with `setsid` and keeps
//! the listening socket.

use baton_proto::{GenerationState, ProcessTracking, RestartOutcome, UsageSource};
use baton_tests::{AgentUnderTest, bin, demo_service_args};
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

/// Generation 2's daemon serves, and does not outlive the agent's stop.
fn the_next_daemon_stops_with_the_agent(dir: &Path, agent: AgentUnderTest) {
    let second = daemon_pid(dir, 2);
    assert!(alive(second));
    agent.stop();
    assert!(
        wait_gone(second, Duration::from_secs(5)),
        "a daemon outlived the agent's stop"
    );
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
    the_next_daemon_stops_with_the_agent(dir.path(), agent);
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

#[test]
fn without_cgroups_a_setsid_daemon_is_traced_to_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::start(&format!(
        "cgroups = false\n{}",
        forking_service(dir.path(), true, "drain_timeout = \"2s\"")
    ));
    assert_eq!(
        agent.status().process_tracking,
        Some(ProcessTracking::Session)
    );
    let daemon = daemon_pid(dir.path(), 1);
    let leader = agent.service("web").generations[0].pid as i32;
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(leader))).unwrap(),
        nix::unistd::Pid::from_raw(leader),
        "the generation leads a session of its own"
    );
    assert_ne!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(daemon))).unwrap(),
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(leader))).unwrap(),
        "the daemon left the generation's session"
    );

    let started = Instant::now();
    let report = std::thread::scope(|scope| {
        let restart = scope.spawn(|| agent.restart("web").1);
        // The first process drains and exits at once; the daemon, now the
        // agent's orphan, keeps generation 1 draining, and shown.
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
        // Its main process gone, the daemon is the agent's orphan, still
        // counted as generation 1's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while parent_of(daemon) != agent.pid() {
            assert!(
                Instant::now() < deadline,
                "the daemon never became the agent's orphan"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(alive(daemon));
        let status = agent.status();
        let generations = &status.services[0].generations;
        assert_eq!(generations[0].generation, 1, "{generations:?}");
        assert_eq!(generations[0].state, GenerationState::Draining);
        assert!(status.untracked.is_empty(), "{:?}", status.untracked);
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

    the_next_daemon_stops_with_the_agent(dir.path(), agent);
}

#[test]
fn without_cgroups_an_orphan_of_no_generation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // A daemon that cleared its environment and whose parent died at once:
    // neither its ancestry nor its environment names a generation. It
    // starts once the agent is up and no status walks `/proc`, so that it
    // is not seen as a descendant in the few milliseconds before its
    // parent dies.
    let script = format!(
        "(sleep 2; setsid env -i /bin/sh -c 'echo $$ > {dir}/stray; exec sleep 600' </dev/null >/dev/null 2>&1 &) & exec {demo}",
        dir = dir.path().display(),
        demo = bin("baton-demo").display(),
    );
    let agent = AgentUnderTest::start(&format!(
        r#"cgroups = false
[[service]]
name = "web"
command = ["/bin/sh", "-c", "{script}"]

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#
    ));
    let stray = {
        let file = dir.path().join("stray");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(pid) = std::fs::read_to_string(&file)
                .unwrap_or_default()
                .trim()
                .parse::<i32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the stray never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let _kill_stray = KillOnDrop(stray);
    // Its `exec sleep` done.
    std::thread::sleep(Duration::from_millis(300));
    let status = agent.wait_for("the stray reported", Duration::from_secs(10), |status| {
        status.untracked.iter().any(|p| p.pid == stray as u32)
    });
    let reported = status
        .untracked
        .iter()
        .find(|p| p.pid == stray as u32)
        .unwrap();
    assert_eq!(reported.command, "sleep");
    let out = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("process {stray} (sleep)")), "{text}");
    assert!(agent.log().contains("belongs to no generation"));
}

/// Memory held and CPU burnt by the demo show in its generation's status,
/// read from its cgroup or from its processes.
fn usage_is_reported(cgroups: bool) {
    let agent = AgentUnderTest::start(&format!(
        "cgroups = {cgroups}\n{}",
        demo_service_args("web", &["--hold-memory", "64", "--busy", "30"], "")
    ));
    let usage = |status: &baton_proto::AgentStatus| {
        let generation = &status.services[0].generations[0];
        (
            generation.memory_bytes,
            generation.memory_source,
            generation.cpu_usec,
            generation.cpu_source,
        )
    };
    let (memory, memory_source, first_cpu, cpu_source) = usage(&agent.status());
    let memory = memory.expect("memory reported");
    assert!(memory >= 64 << 20, "{memory} bytes");
    let first_cpu = first_cpu.expect("CPU reported");
    if cgroups {
        assert_eq!(cpu_source, Some(UsageSource::Cgroup));
        assert!(memory_source.is_some());
    } else {
        assert_eq!(cpu_source, Some(UsageSource::Processes));
        assert_eq!(memory_source, Some(UsageSource::Processes));
    }
    let out = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MEM") && text.contains(" MiB"), "{text}");

    std::thread::sleep(Duration::from_millis(1500));
    let (_, _, later_cpu, _) = usage(&agent.status());
    let later_cpu = later_cpu.unwrap();
    assert!(
        later_cpu >= first_cpu + 100_000,
        "CPU went from {first_cpu} to {later_cpu} µs"
    );
}

#[test]
fn a_generations_memory_and_cpu_are_read_from_its_cgroup() {
    usage_is_reported(true);
}

#[test]
fn without_cgroups_a_generations_memory_and_cpu_are_summed_from_its_processes() {
    usage_is_reported(false);
}

fn parent_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A daemon that leaves the generation's session, ignores SIGTERM and holds
/// one connection accepted from the service's listener (fd 3).
const HOLDING_DAEMON: &str = r#"
import os, select, signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# Non-blocking: the file description is shared with the generation's server.
listener = socket.socket(fileno=3)
while True:
    select.select([listener], [], [])
    try:
        connection, _ = listener.accept()
        break
    except BlockingIOError:
        pass
with open(sys.argv[1], "w") as marker:
    marker.write(str(os.getpid()))
time.sleep(600)
"#;

#[test]
fn without_cgroups_the_connections_of_a_traced_daemon_are_counted_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let daemon_script = dir.path().join("daemon.py");
    std::fs::write(&daemon_script, HOLDING_DAEMON).unwrap();
    let marker = dir.path().join("accepted");
    let script = format!(
        "setsid python3 {script} {marker} </dev/null >/dev/null 2>&1 & exec {demo} --drain-idle-grace 300ms",
        script = daemon_script.display(),
        marker = marker.display(),
        demo = bin("baton-demo").display(),
    );
    let agent = AgentUnderTest::start(&format!(
        r#"cgroups = false
[[service]]
name = "web"
command = ["/bin/sh", "-c", "{script}"]
drain_timeout = "2s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#
    ));
    let address = agent.tcp_addr("web", "http");
    // Connect until the daemon has taken one (the demo takes the others).
    let mut clients = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let daemon: i32 = loop {
        if let Ok(pid) = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .trim()
            .parse()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the daemon never accepted");
        clients.push(std::net::TcpStream::connect(address).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    let _kill_daemon = KillOnDrop(daemon);

    let report = std::thread::scope(|scope| {
        let restart = scope.spawn(|| agent.restart("web").1);
        agent.wait_for(
            "generation 1 draining on the daemon's connection alone",
            Duration::from_secs(10),
            |status| {
                let generations = &status.services[0].generations;
                generations[0].generation == 1
                    && generations[0].state == GenerationState::Draining
                    && generations[0].connections == Some(1)
                    && parent_of(daemon) == agent.pid()
            },
        );
        restart.join().unwrap()
    });
    assert_eq!(report.outcome, Some(RestartOutcome::Forced), "{report:?}");
    assert_eq!(report.connections_cut, Some(1), "{report:?}");
    assert!(
        wait_gone(daemon, Duration::from_secs(5)),
        "the daemon survived the kill at the drain deadline"
    );
}
