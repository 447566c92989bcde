//! Helpers for end-to-end tests: start the real `baton-agent` with a config
//! written to a fresh temporary folder, talk to it over its control socket,
//! and find the other binaries of the workspace.
//!
//! The binaries are built by `cargo build --workspace` (the README's test
//! command does it) and found next to the test executable's folder.
#![forbid(unsafe_code)]

pub mod server;

use baton_client::AgentClient;
use baton_proto::{
    AgentStatus, Event, Request, Response, RestartReport, ServiceState, ServiceStatus,
};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, built in the same profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A `[[service]]` block running the demo service on one TCP socket.
pub fn demo_service(name: &str, extra: &str) -> String {
    demo_service_args(name, &[], extra)
}

/// Like [`demo_service`], with more flags for the demo.
pub fn demo_service_args(name: &str, args: &[&str], extra: &str) -> String {
    let args: String = args.iter().map(|a| format!(", \"{a}\"")).collect();
    format!(
        r#"
[[service]]
name = "{name}"
command = ["{demo}", "--drain-idle-grace", "300ms"{args}]
{extra}

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        demo = bin("baton-demo").display()
    )
}

pub struct AgentUnderTest {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    pub notify_socket: PathBuf,
    pub config_path: PathBuf,
}

impl AgentUnderTest {
    /// Starts an agent with these `[[service]]` blocks and waits until every
    /// service is ready.
    pub fn start(services: &str) -> AgentUnderTest {
        let agent = AgentUnderTest::start_unchecked(services);
        agent.wait_for("every service ready", Duration::from_secs(30), |status| {
            status
                .services
                .iter()
                .all(|s| s.state == ServiceState::Ready)
        });
        agent
    }

    /// Starts an agent and waits only for its control socket. `services` may
    /// begin with top-level keys (`host = ...`) and a `[server]` table.
    pub fn start_unchecked(services: &str) -> AgentUnderTest {
        let dir = tempfile::Builder::new()
            .prefix("baton-test-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let notify_socket = dir.path().join("notify.sock");
        let config_path = dir.path().join("agent.toml");
        std::fs::write(
            &config_path,
            format!("control_socket = \"{}\"\n{services}", socket.display()),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(bin("baton-agent"))
            .arg("--config")
            .arg(&config_path)
            .env(
                "BATON_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start baton-agent");
        let mut agent = AgentUnderTest {
            dir,
            child: Some(child),
            socket,
            notify_socket,
            config_path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&agent.socket).is_err() {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("baton-agent exited with {status}:\n{}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent control socket never appeared:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn client(&self) -> ControlClient {
        ControlClient::connect(&self.socket)
    }

    pub fn status(&self) -> AgentStatus {
        match self.client().request(Request::Status) {
            Response::Status(status) => status,
            other => panic!("unexpected answer to status: {other:?}"),
        }
    }

    /// `None` when the agent closed the connection without answering (it
    /// re-executes itself during an upgrade).
    pub fn try_status(&self) -> Option<AgentStatus> {
        let mut client = ControlClient::try_connect(&self.socket)?;
        client.send(Request::Status);
        match client.next_response() {
            Some(Response::Status(status)) => Some(status),
            _ => None,
        }
    }

    pub fn service(&self, name: &str) -> ServiceStatus {
        self.status()
            .services
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// The bound address of a service's TCP socket (configs use port 0).
    pub fn tcp_addr(&self, service: &str, socket: &str) -> SocketAddr {
        let status = self.service(service);
        let listen = &status
            .sockets
            .iter()
            .find(|s| s.name == socket)
            .unwrap_or_else(|| panic!("no socket {socket}"))
            .listen;
        listen
            .trim_start_matches("tcp://")
            .trim_start_matches("udp://")
            .parse()
            .expect("socket address")
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&AgentStatus) -> bool,
    ) -> AgentStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(status) = self.try_status() else {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}: no status"
                );
                std::thread::sleep(Duration::from_millis(25));
                continue;
            };
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {status:#?}\nagent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Restarts a service and follows it to the end.
    pub fn restart(&self, service: &str) -> (Vec<Event>, RestartReport) {
        self.client().restart_follow(service)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal agent");
    }

    /// SIGTERM and wait for the agent to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("agent was running")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentUnderTest {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// The control socket through [`baton_client::AgentClient`], failing the
/// test on anything but an answer.
pub struct ControlClient {
    client: AgentClient,
}

impl ControlClient {
    pub fn try_connect(path: &Path) -> Option<ControlClient> {
        let client = AgentClient::connect(path).ok()?;
        Some(ControlClient {
            client: client.with_patience(Some(Duration::from_secs(120))),
        })
    }

    pub fn connect(path: &Path) -> ControlClient {
        ControlClient::try_connect(path).expect("connect to agent")
    }

    pub fn send_raw(&mut self, line: &str) {
        self.client.send_line(line).expect("write request");
    }

    pub fn send(&mut self, request: Request) {
        self.client.send(request).expect("write request");
    }

    /// `None` once the agent closed the connection.
    pub fn next_response(&mut self) -> Option<Response> {
        self.client
            .receive()
            .unwrap_or_else(|e| panic!("reading from agent: {e}"))
    }

    pub fn request(&mut self, request: Request) -> Response {
        self.send(request);
        self.next_response().expect("an answer")
    }

    /// Every event the agent remembers, oldest first.
    pub fn events(self) -> Vec<Event> {
        self.client.events().expect("the agent's events")
    }

    pub fn restart_follow(&mut self, service: &str) -> (Vec<Event>, RestartReport) {
        self.client
            .start_restart(service, None, true)
            .unwrap_or_else(|e| panic!("restart not accepted: {e}"));
        let mut events = Vec::new();
        let report = self
            .client
            .follow_restart(None, |event| events.push(event))
            .unwrap_or_else(|e| panic!("following the restart: {e}"));
        (events, report)
    }
}

/// Runs the strict keep-alive load generator until `stop` resolves.
pub async fn load(
    target: baton_loadgen::Target,
    connections: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> baton_loadgen::LoadReport {
    let mut config = baton_loadgen::LoadConfig::new(target);
    config.connections = connections;
    config.path = "/".into();
    config.expect_body_prefix = Some("hello from generation".into());
    config.max_duration = Duration::from_secs(600);
    baton_loadgen::run(config, stop).await
}

/// Keeps `connections` clients busy on `addr` while `restarts` restarts of
/// `service` run one after another, each followed by `pause`; returns the
/// restarts' reports and what the clients saw.
pub async fn restarts_under_load(
    agent: &std::sync::Arc<AgentUnderTest>,
    service: &str,
    addr: SocketAddr,
    connections: usize,
    restarts: usize,
    pause: Duration,
) -> (Vec<RestartReport>, baton_loadgen::LoadReport) {
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let load = tokio::spawn(load(
        baton_loadgen::Target::Tcp(addr),
        connections,
        async move { stopped.notified().await },
    ));
    // Every client connected and busy before the first restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarter = agent.clone();
    let service = service.to_owned();
    let reports = tokio::task::spawn_blocking(move || {
        (0..restarts)
            .map(|_| {
                let report = restarter.restart(&service).1;
                std::thread::sleep(pause);
                report
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("the restarts ran");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    (reports, load.await.expect("the load ran"))
}
