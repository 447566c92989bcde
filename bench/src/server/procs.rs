//! The real programs this bench drives: a release `baton-server` on a fresh
//! SQLite file and, for the POST → spawn scenario, one real `baton-agent`
//! linked to it. Both are taken from the folder this bench was built into, so
//! a stale or debug build is never measured.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::child::{tail, wait_until_ready};
use baton_client::AgentClient;
use baton_proto::{Event, Request, Response, ServiceState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Binaries {
    pub server: PathBuf,
    pub agent: PathBuf,
    pub demo: PathBuf,
}

impl Binaries {
    pub fn next_to_this_program() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("cannot find the path of this bench")?;
        let dir = exe
            .parent()
            .context("the bench's path has no parent folder")?;
        let find = |name: &str| {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} is missing; build it in the same profile as the bench: \
                     cargo build --release -p baton-bench -p baton-server -p baton-agent -p baton-demo",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Binaries {
            server: find("baton-server")?,
            agent: find("baton-agent")?,
            demo: find("baton-demo")?,
        })
    }
}

/// A port nobody listens on right now. The server binds it a moment later;
/// another process could take it in between, which on a bench machine does
/// not happen in practice and would only make the server fail to start.
fn free_port() -> anyhow::Result<u16> {
    let probe = TcpListener::bind("127.0.0.1:0").context("cannot probe for a free port")?;
    Ok(probe.local_addr()?.port())
}

pub struct Tokens {
    pub operator: String,
    pub viewer: String,
}

/// `baton-server token create`; `host` is the one host an agent token
/// speaks for.
fn create_token(
    binary: &Path,
    database: &Path,
    name: &str,
    role: &str,
    host: Option<&str>,
) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .args(["token", "create", "--database"])
        .arg(database)
        .args(["--name", name, "--role", role])
        .args(host.map(|host| ["--host", host]).into_iter().flatten())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "baton-server token create failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .last()
        .map(str::to_owned)
        .context("baton-server token create printed no token")
}

pub struct Server {
    pub port: u16,
    pub tokens: Tokens,
    binary: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Creates an operator and a viewer token on a fresh database (agent
    /// tokens, one per host, come from [`Server::agent_token`]), then serves it and
    /// returns once `/healthz` answers.
    pub fn start(binary: &Path) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("baton-server-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let database = dir.path().join("baton.db");
        let tokens = Tokens {
            operator: create_token(binary, &database, "bench-operator", "operator", None)?,
            viewer: create_token(binary, &database, "bench-viewer", "viewer", None)?,
        };

        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("server.log"))
            .context("cannot create the server's log")?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(&database)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Server {
            port,
            tokens,
            binary: binary.to_path_buf(),
            child: Some(child),
            dir,
        };
        let log = server.dir.path().join("server.log");
        if let Some(child) = server.child.as_mut() {
            wait_until_ready(child, &log, "it never answered /healthz", || healthz(port))
                .context("baton-server did not start")?;
        }
        Ok(server)
    }

    /// A new agent token for `host`: an agent token speaks for one host.
    pub fn agent_token(&self, host: &str) -> anyhow::Result<String> {
        create_token(
            &self.binary,
            &self.dir.path().join("baton.db"),
            &format!("bench-agent-{host}"),
            "agent",
            Some(host),
        )
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("server.log"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(5));
        }
    }
}

fn healthz(port: u16) -> bool {
    use std::io::Read as _;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

fn status_of(socket: &Path) -> anyhow::Result<baton_proto::AgentStatus> {
    let mut client = AgentClient::connect(socket)?.with_patience(Some(Duration::from_secs(30)));
    Ok(client.status()?)
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
fn stop(mut child: Child, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One real `baton-agent` with one demo service, linked to the server.
pub struct RealAgent {
    pub socket: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RealAgent {
    pub fn start(
        binaries: &Binaries,
        host: &str,
        server: &Server,
        service: &str,
    ) -> anyhow::Result<RealAgent> {
        let dir = tempfile::Builder::new()
            .prefix("baton-server-bench-agent-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let socket = dir.path().join("agent.sock");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"control_socket = "{socket}"
host = "{host}"

[server]
url = "{url}"
token = "{token}"

[[service]]
name = "{service}"
command = ["{demo}"]
# The spawn is what is timed; a lowered priority would only slow the demo's start.
warmup_nice = 0

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
                socket = socket.display(),
                url = server.url(),
                token = server.agent_token(host)?,
                demo = binaries.demo.display(),
            ),
        )
        .context("cannot write the agent's config")?;
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .context("cannot create the agent's log")?;
        let child = Command::new(&binaries.agent)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binaries.agent.display()))?;
        let mut agent = RealAgent {
            socket,
            child: Some(child),
            dir,
        };
        let log = agent.dir.path().join("agent.log");
        if let Some(child) = agent.child.as_mut() {
            wait_until_ready(child, &log, "its service never became ready", || {
                status_of(&agent.socket).is_ok_and(|status| {
                    status
                        .services
                        .iter()
                        .all(|service| service.state == ServiceState::Ready)
                })
            })
            .context("baton-agent did not start")?;
        }
        Ok(agent)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("agent.log"))
    }

    /// Asks for a restart without following it (its events arrive on the
    /// [`EventFeed`]); returns once the agent has accepted it.
    pub fn restart(&self, service: &str) -> anyhow::Result<()> {
        let mut client =
            AgentClient::connect(&self.socket)?.with_patience(Some(Duration::from_secs(30)));
        client
            .start_restart(
                service,
                Some("baton-server-bench baseline".to_owned()),
                false,
            )
            .with_context(|| format!("restart of {service} not accepted"))?;
        Ok(())
    }

    /// Every event of the agent from now on, each stamped with the moment
    /// this process read it.
    pub fn follow_events(&self) -> anyhow::Result<EventFeed> {
        // A read timeout would end the feed during a quiet stretch.
        let mut client = AgentClient::connect(&self.socket)?;
        // The backlog comes first; callers drain it before they time anything.
        client.send(Request::Events {
            after: 0,
            follow: true,
        })?;
        let (sender, receiver) = mpsc::channel();
        // A thread of its own, blocked in read(2): the stamp is taken the
        // moment the line arrives, never delayed by an async scheduler busy
        // with something else.
        std::thread::Builder::new()
            .name("agent-events".to_owned())
            .spawn(move || {
                while let Ok(Some(response)) = client.receive() {
                    if let Response::Event(event) = response
                        && sender.send((Instant::now(), event)).is_err()
                    {
                        return;
                    }
                }
            })
            .context("cannot start the event thread")?;
        Ok(EventFeed { receiver })
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(15));
        }
    }
}

pub struct EventFeed {
    receiver: mpsc::Receiver<(Instant, Event)>,
}

impl EventFeed {
    /// Forgets whatever arrived so far.
    pub fn drain(&self) {
        while self.receiver.try_recv().is_ok() {}
    }

    /// The first event that `wanted` accepts, with its arrival time.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<(Instant, Event)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok((at, event)) if wanted(&event) => return Ok((at, event)),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("the awaited agent event did not come within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the agent's event stream ended")
                }
            }
        }
    }
}
