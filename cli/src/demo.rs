//! `baton demo`: a server, an agent and two demo services on this machine,
//! stopped cleanly on Ctrl-C.

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{0} is missing next to baton: build the workspace first (cargo build --release --workspace)"
    )]
    MissingBinary(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

fn sibling(name: &str) -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(io("locating baton"))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(DemoError::MissingBinary(path))
    }
}

/// Children in their own process groups, so Ctrl-C reaches only us and we
/// stop them in order: the agent drains its services, then the server goes.
struct Supervised {
    name: &'static str,
    child: Child,
}

impl Supervised {
    fn stop(&mut self, grace: Duration) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop in time; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(10));
        }
    }
}

fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Result<Supervised, DemoError> {
    let log = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let child = std::os::unix::process::CommandExt::process_group(command, 0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("log file"))?)
        .stderr(log)
        .spawn()
        .map_err(io(format!("starting {name}")))?;
    Ok(Supervised { name, child })
}

fn create_token(
    server: &Path,
    database: &Path,
    name: &str,
    role: &str,
    host: Option<&str>,
) -> Result<String, DemoError> {
    let out = Command::new(server)
        .args(["token", "create", "--database"])
        .arg(database)
        .args(["--name", name, "--role", role])
        .args(host.map(|host| ["--host", host]).into_iter().flatten())
        .output()
        .map_err(io("creating a token"))?;
    if !out.status.success() {
        return Err(DemoError::Failed(format!(
            "baton-server token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(str::to_string)
        .ok_or_else(|| DemoError::Failed("baton-server printed no token".into()))
}

fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 2")
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(DemoError::Failed(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(listen: SocketAddr, data_dir: Option<PathBuf>) -> Result<(), DemoError> {
    let server_bin = sibling("baton-server")?;
    let agent_bin = sibling("baton-agent")?;
    let demo_bin = sibling("baton-demo")?;

    // A temporary folder lives as long as the demo; a given one is kept.
    let temporary = match &data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("baton-demo-")
                .tempdir()
                .map_err(io("creating a data folder"))?,
        ),
    };
    let dir = data_dir
        .clone()
        .unwrap_or_else(|| temporary.as_ref().expect("temporary").path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let database = dir.join("baton.db");

    let operator_token = create_token(&server_bin, &database, "demo-operator", "operator", None)?;
    let agent_token = create_token(
        &server_bin,
        &database,
        "demo-agent",
        "agent",
        Some("demo-host"),
    )?;

    let mut server = spawn(
        "baton-server",
        Command::new(&server_bin)
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--database")
            .arg(&database),
        &dir.join("server.log"),
    )?;
    wait_until("the server", Duration::from_secs(20), || {
        if let Ok(Some(status)) = server.child.try_wait() {
            eprintln!(
                "baton-server exited with {status}; see {}",
                dir.join("server.log").display()
            );
            return true;
        }
        http_ok(listen, "/healthz")
    })?;
    if let Ok(Some(_)) = server.child.try_wait() {
        return Err(DemoError::Failed("the server did not start".into()));
    }

    let control = dir.join("agent.sock");
    let config = format!(
        r#"control_socket = "{control}"
host = "demo-host"

[server]
url = "http://{listen}"
token = "{agent_token}"

[[service]]
name = "web"
command = ["{demo}", "--warmup", "300ms"]
warmup_nice = 10
drain_timeout = "30s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"

[[service]]
name = "api"
command = ["{demo}", "--start-delay", "200ms"]
drain_timeout = "30s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        control = control.display(),
        demo = demo_bin.display(),
    );
    let config_path = dir.join("agent.toml");
    write_secret(&config_path, &config).map_err(io("writing the agent config"))?;
    let mut agent = spawn(
        "baton-agent",
        Command::new(&agent_bin).arg("--config").arg(&config_path),
        &dir.join("agent.log"),
    )?;
    let mut addresses = Vec::new();
    wait_until("the services", Duration::from_secs(30), || {
        addresses = ready_addresses(&control).unwrap_or_default();
        addresses.len() == 2
    })?;

    println!("baton demo is running (data in {})", dir.display());
    println!();
    println!("dashboard:      http://{listen}/");
    println!("operator token: {operator_token}");
    for (service, address) in &addresses {
        println!("service {service:<7} {address}");
    }
    println!();
    println!("try:");
    println!(
        "  curl -X POST -H 'Authorization: Bearer {operator_token}' http://{listen}/services/web/restart"
    );
    println!("  baton --agent {} restart web --wait", control.display());
    println!();
    println!("Ctrl-C stops everything.");
    let _ = std::io::stdout().flush();

    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| DemoError::Failed(format!("blocking signals: {e}")))?;
    let _ = signals.wait();
    println!("stopping: the agent drains its services, then the server stops");
    agent.stop(Duration::from_secs(40));
    server.stop(Duration::from_secs(10));
    Ok(())
}

/// `(service, http://address)` of every service whose generation is ready,
/// for people to curl.
fn ready_addresses(socket: &Path) -> Result<Vec<(String, String)>, baton_client::Error> {
    let status = baton_client::AgentClient::connect(socket)?.status()?;
    Ok(status
        .services
        .iter()
        .filter(|s| s.state == baton_proto::ServiceState::Ready)
        .filter_map(|s| {
            let listen = s.sockets.first()?.listen.as_str();
            Some((s.name.clone(), listen.replacen("tcp://", "http://", 1)))
        })
        .collect())
}

/// Writes a file only its owner may read: the agent config holds a token.
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An older file keeps its mode through `open`; tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}
