//! A service cannot speak for another: a process of one service that joins
//! the process group of another's new generation and sends `READY=1` does
//! not make that generation ready, with cgroups (attribution by cgroup) and
//! without (each generation in its own session, so the join fails).

use baton_proto::{RestartOutcome, ServiceState};
use baton_tests::{AgentUnderTest, demo_service_args};
use std::path::Path;
use std::time::{Duration, Instant};

/// A service that becomes ready, then a process of it waits for a process
/// group number in `target`, moves itself into that group if it can, and
/// sends what `send` says to the notify socket from there.
fn intruder(target: &Path, send: &str) -> String {
    let script = format!(
        r#"
import os, signal, socket, sys, time
def notify(text):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(os.environ["NOTIFY_SOCKET"])
    s.send(text.encode())
notify("READY=1")
# A process of the service other than its main one, as a worker would be.
# Reaped at once when it exits: a zombie still counts in web's group.
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
if os.fork() != 0:
    time.sleep(3600)
while not os.path.exists("{target}"):
    time.sleep(0.01)
time.sleep(0.05)
group = int(open("{target}").read())
try:
    os.setpgid(0, group)
    print("joined", group, file=sys.stderr, flush=True)
except OSError as e:
    print("setpgid refused:", e, file=sys.stderr, flush=True)
text = "{send}".replace("PID", str(os.getpid()))
if "FDSTORE=1" in text:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(os.environ["NOTIFY_SOCKET"])
    socket.send_fds(s, [text.encode()], [os.open("/dev/null", os.O_RDONLY)])
else:
    notify(text)
# Alive while the agent reads the message, then gone: a process left in
# web's group would hold the rolled-back generation until its drain timeout.
time.sleep(1)
os._exit(0)
"#,
        target = target.display()
    );
    format!(
        r#"
[[service]]
name = "intruder"
command = ["/usr/bin/python3", "-c", {script:?}]
"#
    )
}

/// Restarts `web` into a generation that never becomes ready while the
/// intruder speaks for it; returns the restart's outcome.
fn attack(cgroups: bool, send: &str) -> (RestartOutcome, AgentUnderTest, u32) {
    let (outcome, agent, before, _) = attack_in(cgroups, send);
    (outcome, agent, before)
}

/// Like [`attack`], also returning the folder of web's mode file.
fn attack_in(
    cgroups: bool,
    send: &str,
) -> (RestartOutcome, AgentUnderTest, u32, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let target = dir.path().join("target");
    let top = if cgroups { "" } else { "cgroups = false\n" };
    let agent = AgentUnderTest::start(&format!(
        "{top}{}{}",
        demo_service_args(
            "web",
            &["--mode-file", mode_file.to_str().unwrap()],
            r#"ready_timeout = "2s""#
        ),
        intruder(&target, send)
    ));
    let before = agent.service("web").generations[0].pid;
    std::fs::write(&mode_file, "never-ready").unwrap();
    let outcome = std::thread::scope(|scope| {
        let restart = scope.spawn(|| agent.restart("web").1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let new = loop {
            if let Some(generation) = agent
                .service("web")
                .generations
                .iter()
                .find(|g| g.pid != before)
            {
                break generation.pid;
            }
            assert!(Instant::now() < deadline, "no new generation of web");
            std::thread::sleep(Duration::from_millis(10));
        };
        std::fs::write(&target, new.to_string()).unwrap();
        let report = restart.join().unwrap();
        report.outcome.expect("an outcome")
    });
    (outcome, agent, before, dir)
}

fn assert_old_generation_serves(agent: &AgentUnderTest, before: u32) {
    let web = agent.service("web");
    assert_eq!(web.state, ServiceState::Ready);
    assert_eq!(web.generations.len(), 1, "{web:?}");
    assert_eq!(web.generations[0].pid, before);
    std::net::TcpStream::connect(agent.tcp_addr("web", "http")).unwrap();
}

#[test]
fn a_process_of_another_service_cannot_mark_a_generation_ready_with_cgroups() {
    let (outcome, agent, before) = attack(true, "READY=1");
    assert_eq!(outcome, RestartOutcome::RolledBack, "{}", agent.log());
    assert_old_generation_serves(&agent, before);
}

#[test]
fn a_process_of_another_service_cannot_mark_a_generation_ready_without_cgroups() {
    let (outcome, agent, before) = attack(false, "READY=1");
    assert_eq!(outcome, RestartOutcome::RolledBack, "{}", agent.log());
    assert_old_generation_serves(&agent, before);
}

#[test]
fn a_process_of_another_service_cannot_become_a_generations_main_process() {
    let (outcome, agent, before) = attack(true, "MAINPID=PID\\nREADY=1");
    assert_eq!(outcome, RestartOutcome::RolledBack, "{}", agent.log());
    assert_old_generation_serves(&agent, before);
}

#[test]
fn a_process_of_another_service_cannot_store_fds_for_a_generation() {
    let (outcome, agent, before, dir) = attack_in(true, "FDSTORE=1\\nFDNAME=planted\\nREADY=1");
    assert_eq!(outcome, RestartOutcome::RolledBack, "{}", agent.log());
    assert_old_generation_serves(&agent, before);
    // The next generation of web is handed only web's own sockets.
    std::fs::write(dir.path().join("mode"), "normal").unwrap();
    let (_, report) = agent.restart("web");
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    let pid = agent.service("web").generations[0].pid;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let names = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("LISTEN_FDNAMES="))
        .unwrap_or_default()
        .to_string();
    assert_eq!(names, "http", "{environ}");
}
