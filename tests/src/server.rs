//! A real `baton-server` on a fresh SQLite file, for end-to-end tests.

use crate::bin;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerUnderTest {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub addr: SocketAddr,
    pub operator_token: String,
    pub viewer_token: String,
    pub agent_token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn create_token(database: &Path, name: &str, role: &str) -> String {
    let out = Command::new(bin("baton-server"))
        .args(["token", "create", "--database"])
        .arg(database)
        .args(["--name", name, "--role", role])
        .output()
        .expect("run baton-server token create");
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("a token")
        .to_string()
}

impl ServerUnderTest {
    pub fn start() -> ServerUnderTest {
        let dir = tempfile::Builder::new()
            .prefix("baton-server-test-")
            .tempdir()
            .unwrap();
        let database = dir.path().join("baton.db");
        let operator_token = create_token(&database, "test-operator", "operator");
        let viewer_token = create_token(&database, "test-viewer", "viewer");
        let agent_token = create_token(&database, "test-agent", "agent");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut server = ServerUnderTest {
            dir,
            child: None,
            addr,
            operator_token,
            viewer_token,
            agent_token,
        };
        server.launch();
        server
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("baton.db")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server process (again, after [`ServerUnderTest::kill`]) on
    /// the same database and address.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(bin("baton-server"))
            .args(["serve", "--listen", &self.addr.to_string(), "--database"])
            .arg(self.database())
            .env(
                "RUST_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start baton-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "server never listened:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A whole agent config for one host of this server: `service` runs the
    /// demo (with `args`) on `ip`, with `extra` lines in its table.
    pub fn host_config(
        &self,
        host: &str,
        ip: &str,
        service: &str,
        args: &[&str],
        extra: &str,
    ) -> String {
        let service = crate::demo_service_args(service, args, extra)
            .replace("tcp://127.0.0.1:0", &format!("tcp://{ip}:0"));
        format!("host = \"{host}\"\n{}{service}", self.agent_section())
    }

    /// The `[server]` section of an agent config for this server.
    pub fn agent_section(&self) -> String {
        format!(
            "[server]\nurl = \"{}\"\ntoken = \"{}\"\n",
            self.url(),
            self.agent_token
        )
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}
