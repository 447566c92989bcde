//! Helpers for end-to-end tests: the real binaries started through
//! [`baton_testkit`], with every failure a panic that says what went wrong.
//!
//! The binaries are built by `cargo build --workspace` (the README's test
//! command does it) and found next to the test executable's folder.
#![forbid(unsafe_code)]

pub mod handoff;
pub mod server;

use baton_client::AgentClient;
use baton_proto::{
    AgentStatus, Event, Request, Response, RestartReport, ServiceState, ServiceStatus,
};
use baton_testkit::{Agent, AgentSetup};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// A binary of this workspace, built in the same profile as the tests.
/// The output lines of a log stream's body (NDJSON, one line a line).
pub fn output_lines(body: &str) -> Vec<baton_proto::OutputLine> {
    body.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

pub fn bin(name: &str) -> PathBuf {
    baton_testkit::binary(name)
        .unwrap_or_else(|missing| panic!("{missing}: run `cargo build --workspace` first"))
}

/// `baton-agent --check --config CONFIG`: what the agent says of a config
/// without running it.
pub fn agent_check(config: &Path) -> std::process::Output {
    Command::new(bin("baton-agent"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run baton-agent --check")
}

/// A `[[service]]` block running the demo service on one TCP socket.
pub fn demo_service(name: &str, extra: &str) -> String {
    demo_service_args(name, &[], extra)
}

/// Like [`demo_service`], with more flags for the demo.
pub fn demo_service_args(name: &str, args: &[&str], extra: &str) -> String {
    baton_testkit::demo_service(&bin("baton-demo"), name, args, extra)
}

pub struct AgentUnderTest {
    agent: Agent,
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
        AgentUnderTest::start_unchecked_with_binary(&bin("baton-agent"), services)
    }

    /// Like [`AgentUnderTest::start`], with another build of the agent (an
    /// installed package's).
    pub fn start_with_binary(binary: &Path, services: &str) -> AgentUnderTest {
        let agent = AgentUnderTest::start_unchecked_with_binary(binary, services);
        agent.wait_for("every service ready", Duration::from_secs(30), |status| {
            status
                .services
                .iter()
                .all(|s| s.state == ServiceState::Ready)
        });
        agent
    }

    fn start_unchecked_with_binary(binary: &Path, services: &str) -> AgentUnderTest {
        let agent = AgentSetup::new(binary, services)
            .prefix("baton-test-")
            .env(
                "BATON_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .start()
            .unwrap_or_else(|e| panic!("{e:#}"));
        AgentUnderTest {
            socket: agent.socket().to_path_buf(),
            notify_socket: agent.folder().join("notify.sock"),
            config_path: agent.config_path().to_path_buf(),
            agent,
        }
    }

    pub fn dir(&self) -> &Path {
        self.agent.folder()
    }

    pub fn pid(&self) -> i32 {
        self.agent.process().pid().expect("running") as i32
    }

    pub fn log(&self) -> String {
        self.agent.process().log()
    }

    pub fn client(&self) -> ControlClient {
        ControlClient::connect(&self.socket)
    }

    pub fn status(&self) -> AgentStatus {
        self.agent.status().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `None` when the agent closed the connection without answering (it
    /// re-executes itself during an upgrade).
    pub fn try_status(&self) -> Option<AgentStatus> {
        self.agent.status().ok()
    }

    pub fn service(&self, name: &str) -> ServiceStatus {
        self.agent.service(name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The newest generation the agent has started of its first service:
    /// 1 before any restart, one more per restart.
    pub fn newest_generation(&self) -> u64 {
        self.status().services[0]
            .generations
            .iter()
            .map(|g| g.generation)
            .max()
            .expect("a running service has a generation")
    }

    /// The bound address of a service's TCP socket (configs use port 0).
    pub fn tcp_addr(&self, service: &str, socket: &str) -> SocketAddr {
        self.agent
            .address(service, Some(socket))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&AgentStatus) -> bool,
    ) -> AgentStatus {
        self.agent
            .wait_for(what, timeout, done)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Restarts a service and follows it to the end.
    pub fn restart(&self, service: &str) -> (Vec<Event>, RestartReport) {
        let mut events = Vec::new();
        let report = self
            .agent
            .restart(service, None, |event| events.push(event))
            .unwrap_or_else(|e| panic!("{e:#}"));
        (events, report)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.agent
            .process()
            .signal(signal)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// SIGTERM and wait for the agent to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.agent.stop().expect("agent was running")
    }
}

impl Drop for AgentUnderTest {
    fn drop(&mut self) {
        self.agent.stop();
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
