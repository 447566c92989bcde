//! `kill -USR2 PID` under baton: the service's handler asks the agent for a
//! restart with `X_BATON_RESTART=1` on its notify socket. The agent hears
//! only the serving generation of that service, at most once per interval,
//! and the restart names who asked; a stranger and a draining generation
//! start nothing.

use baton_proto::{AgentStatus, EventKind, RestartOutcome, RestartReport, RestartRequester};
use baton_tests::AgentUnderTest;
use baton_tests::server::ServerUnderTest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A service whose SIGUSR2 handler asks for a restart, and writes down its
/// generation each time it did (so a test knows a request was sent). On
/// SIGTERM it drains for `drain` seconds, still answering SIGUSR2.
const SERVICE: &str = r#"
import os, signal, socket, sys, time
sent, drain = sys.argv[1], float(sys.argv[2])
generation = os.environ["BATON_GENERATION"]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.connect(os.environ["NOTIFY_SOCKET"])
def request_restart(signum, frame):
    notify.send(("X_BATON_RESTART=1\nX_BATON_RESTART_REASON=SIGUSR2 to generation %s" % generation).encode())
    with open(sent, "a") as f:
        f.write(generation + "\n")
stopping = False
def stop(signum, frame):
    global stopping
    stopping = True
signal.signal(signal.SIGUSR2, request_restart)
signal.signal(signal.SIGTERM, stop)
notify.send(b"READY=1")
while not stopping:
    signal.pause()
deadline = time.monotonic() + drain
while time.monotonic() < deadline:
    time.sleep(0.02)
"#;

struct Service {
    agent: AgentUnderTest,
    /// Where the service writes the generation of each request it sent.
    sent: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(drain_seconds: f64) -> Service {
        Service::start_after("", drain_seconds)
    }

    /// With `top` (top-level keys and a `[server]` table) before the service.
    fn start_after(top: &str, drain_seconds: f64) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let sent = dir.path().join("sent");
        let agent = AgentUnderTest::start(&format!(
            r#"{top}
[[service]]
name = "web"
command = ["/usr/bin/python3", "-c", {SERVICE:?}, {sent:?}, "{drain_seconds}"]
drain_timeout = "20s"
"#,
            sent = sent.display().to_string(),
        ));
        Service {
            agent,
            sent,
            _dir: dir,
        }
    }

    /// The serving generation: its number and pid.
    fn serving(&self) -> (u64, u32) {
        let web = self.agent.service("web");
        let generation = web
            .generations
            .iter()
            .find(|g| g.state == baton_proto::GenerationState::Ready)
            .unwrap_or_else(|| panic!("no serving generation: {web:?}"));
        (generation.generation, generation.pid)
    }

    /// The requests the service sent, by generation.
    fn sent(&self) -> Vec<u64> {
        read_sent(&self.sent)
    }

    fn wait_sent(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sent().len() < count {
            assert!(
                Instant::now() < deadline,
                "the service sent {:?}, not {count} requests",
                self.sent()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a restart to start; its id and who asked.
    fn wait_restart_started(&self) -> (u64, Option<RestartRequester>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(started) = self.restarts_started().pop() {
                return started;
            }
            assert!(
                Instant::now() < deadline,
                "no restart\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every restart started, with who asked for it.
    fn restarts_started(&self) -> Vec<(u64, Option<RestartRequester>)> {
        self.agent
            .client()
            .events()
            .into_iter()
            .filter_map(|event| match event.kind {
                EventKind::RestartStarted { requested_by, .. } => {
                    Some((event.restart.expect("a restart's event"), requested_by))
                }
                _ => None,
            })
            .collect()
    }

    /// Waits for the service's last restart to have an outcome.
    fn finished_restart(&self, id: u64) -> RestartReport {
        let status = self.agent.wait_for(
            "the requested restart to finish",
            Duration::from_secs(30),
            |status: &AgentStatus| {
                status.services[0]
                    .last_restart
                    .as_ref()
                    .is_some_and(|r| r.id == id && r.outcome.is_some())
            },
        );
        status.services[0].last_restart.clone().unwrap()
    }

    /// Gives the agent time to act on anything sent, then checks that
    /// nothing restarted since `started` restarts.
    fn assert_no_new_restart(&self, started: usize) {
        std::thread::sleep(Duration::from_millis(500));
        let restarts = self.restarts_started();
        assert_eq!(
            restarts.len(),
            started,
            "{restarts:?}\n{}",
            self.agent.log()
        );
    }
}

fn read_sent(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

fn usr2(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).unwrap();
}

#[test]
fn sigusr2_to_the_serving_generation_restarts_its_service_and_the_report_names_who_asked() {
    restart_by_sigusr2(Service::start(0.0));
}

#[test]
fn sigusr2_restarts_the_service_without_cgroups_too() {
    // Attributed by the sender's process group in the generation's session.
    restart_by_sigusr2(Service::start_after("cgroups = false\n", 0.0));
}

fn restart_by_sigusr2(web: Service) {
    let (generation, pid) = web.serving();
    usr2(pid);
    web.wait_sent(1);

    let (id, requested_by) = web.wait_restart_started();
    assert_eq!(
        requested_by,
        Some(RestartRequester { generation, pid }),
        "the kernel's pid of the sender, and its generation"
    );
    let report = web.finished_restart(id);
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    assert_eq!(
        report.reason.as_deref(),
        Some(
            format!(
                "requested by generation {generation} (pid {pid}): SIGUSR2 to generation {generation}"
            )
            .as_str()
        )
    );
    assert_eq!(report.old_generation, Some(generation));
    let (serving, new_pid) = web.serving();
    assert_eq!(Some(serving), report.new_generation);
    assert_ne!(new_pid, pid);
    // The step shows it too, as `baton show` prints it.
    let started = report.steps[0].kind.to_string();
    assert!(
        started.contains(&format!("requested by generation {generation} (pid {pid})")),
        "{started}"
    );
    assert_eq!(web.agent.status().restart_requests_refused, 0);
}

#[test]
fn a_burst_of_signals_restarts_the_service_once() {
    // The old generation drains for a while, so every request it sends is
    // read while it is still one of the service's.
    let web = Service::start(2.0);
    let (_, pid) = web.serving();
    // Far enough apart that the kernel does not merge them all into one
    // pending signal; the service answers each it receives.
    for _ in 0..10 {
        usr2(pid);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(1));
    let sent = web.sent().len();
    assert!(
        sent >= 2,
        "only {sent} requests were sent: the test proves nothing"
    );

    let restarts = web.restarts_started();
    assert_eq!(restarts.len(), 1, "{restarts:?}\n{}", web.agent.log());
    let report = web.finished_restart(restarts[0].0);
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
    let refused = web.agent.status().restart_requests_refused;
    assert_eq!(
        refused as usize,
        sent - 1,
        "every request but the first was refused and counted"
    );
    web.assert_no_new_restart(1);
}

#[test]
fn a_process_of_no_generation_cannot_ask_for_a_restart() {
    let web = Service::start(0.0);
    let stranger = UnixDatagram::unbound().unwrap();
    stranger.connect(&web.agent.notify_socket).unwrap();
    stranger
        .send(b"X_BATON_RESTART=1\nX_BATON_RESTART_REASON=let me in")
        .unwrap();
    web.assert_no_new_restart(0);
    let status = web.agent.status();
    assert_eq!(
        status.notify_strangers, 1,
        "counted as a stranger's message"
    );
    assert_eq!(status.services[0].generations.len(), 1);
    assert!(
        web.agent
            .log()
            .contains("notify message from a process of no generation ignored"),
        "{}",
        web.agent.log()
    );
}

#[test]
fn a_draining_generation_cannot_ask_for_a_restart() {
    let web = Service::start(3.0);
    let (old, old_pid) = web.serving();
    // A restart from the control socket; the old generation drains for 3 s.
    let restart = std::thread::scope(|scope| {
        let restart = scope.spawn(|| web.agent.restart("web").1);
        web.agent.wait_for(
            "the old generation to drain",
            Duration::from_secs(10),
            |s| {
                s.services[0].generations.iter().any(|g| {
                    g.generation == old && g.state == baton_proto::GenerationState::Draining
                })
            },
        );
        usr2(old_pid);
        web.wait_sent(1);
        restart.join().unwrap()
    });
    assert_eq!(web.sent(), [old]);
    assert_eq!(restart.outcome, Some(RestartOutcome::Succeeded));
    // Only the restart from the control socket ran.
    let restarts = web.restarts_started();
    assert_eq!(restarts, [(restart.id, None)], "{}", web.agent.log());
    assert_eq!(web.agent.status().restart_requests_refused, 1);
    let log = web.agent.log();
    assert!(
        log.contains("restart request refused: it is not the serving generation"),
        "{log}"
    );
    web.assert_no_new_restart(1);
}

/// What the server stored of the host's `restart_started` events, read from
/// its database with Python's `sqlite3` (the server has no route for the
/// events of a restart it did not drive).
fn stored_restart_starts(database: &Path) -> Vec<serde_json::Value> {
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
rows = db.execute("SELECT body FROM events WHERE kind = 'restart_started' ORDER BY seq")
print(json.dumps([json.loads(body) for (body,) in rows]))
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(database)
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_a_generation_asked_for_reaches_the_servers_history_with_who_asked() {
    let server = ServerUnderTest::start();
    let top = format!("host = \"host-a\"\n{}", server.agent_section("host-a"));
    let web = Service::start_after(&top, 0.0);
    let (generation, pid) = web.serving();
    usr2(pid);
    let (id, _) = web.wait_restart_started();
    assert_eq!(
        web.finished_restart(id).outcome,
        Some(RestartOutcome::Succeeded)
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let stored = stored_restart_starts(&server.database());
        if !stored.is_empty() {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "no event stored\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(
        stored[0]["requested_by"],
        serde_json::json!({"generation": generation, "pid": pid})
    );
    assert_eq!(
        stored[0]["reason"],
        format!(
            "requested by generation {generation} (pid {pid}): SIGUSR2 to generation {generation}"
        )
    );
    // The history the server derives from the events has the new generation.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page: serde_json::Value = server.get_json("/services/web/generations").await;
        let numbers: Vec<u64> = page["generations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["generation"].as_u64().unwrap())
            .collect();
        if numbers.contains(&(generation + 1)) {
            break;
        }
        assert!(Instant::now() < deadline, "{page:#}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let service: serde_json::Value = server.get_json("/services/web").await;
    assert_eq!(service["name"], "web", "{service:#}");
}
