//! A real `baton-server` on a fresh SQLite file, for end-to-end tests.

use crate::bin;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerUnderTest {
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<TestCertificates>,
    pub addr: SocketAddr,
    pub operator_token: String,
    pub viewer_token: String,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `host` is the one host an agent token speaks for.
pub fn create_token(database: &Path, name: &str, role: &str, host: Option<&str>) -> String {
    let out = Command::new(bin("baton-server"))
        .args(["token", "create", "--database"])
        .arg(database)
        .args(["--name", name, "--role", role])
        .args(host.map(|host| ["--host", host]).into_iter().flatten())
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
        Self::start_with(None)
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 from a CA of its own;
    /// agents configured by [`ServerUnderTest::agent_section`] trust it.
    pub fn start_tls() -> ServerUnderTest {
        Self::start_with(Some(()))
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    fn start_with(tls: Option<()>) -> ServerUnderTest {
        // For the tests' own HTTP clients.
        baton_tls::install_default_provider();
        let dir = tempfile::Builder::new()
            .prefix("baton-server-test-")
            .tempdir()
            .unwrap();
        let database = dir.path().join("baton.db");
        let operator_token = create_token(&database, "test-operator", "operator", None);
        let viewer_token = create_token(&database, "test-viewer", "viewer", None);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls = tls.map(|()| TestCertificates::write(dir.path()));
        let mut server = ServerUnderTest {
            dir,
            child: None,
            tls,
            addr,
            operator_token,
            viewer_token,
        };
        server.launch();
        server
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("baton.db")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `GET path` with the viewer token: the JSON of its `200`.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.client(&self.viewer_token)
            .get_json(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `POST /services/{service}/restart?wait=true` with the operator token:
    /// the restart once it has ended on every host.
    pub async fn restart_and_wait(&self, service: &str) -> baton_proto::api::Restart {
        let name = baton_proto::ServiceName::parse(service).expect("a valid service name");
        self.client(&self.operator_token)
            .restart_and_wait(&name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("restart {service}: {e}"))
    }

    /// A REST client of this server with `token`, trusting its CA.
    pub fn client(&self, token: &str) -> baton_client::ServerClient {
        baton_client::ServerClient::new(&self.url(), Some(token.to_owned()), self.ca_file())
            .expect("an HTTP client")
            .with_timeout(Duration::from_secs(60))
    }

    /// Starts the server process (again, after [`ServerUnderTest::kill`]) on
    /// the same database and address.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut command = Command::new(bin("baton-server"));
        command
            .args(["serve", "--listen", &self.addr.to_string(), "--database"])
            .arg(self.database());
        if let Some(tls) = &self.tls {
            command
                .arg("--tls-cert")
                .arg(&tls.certificate)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        let child = command
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
        format!("host = \"{host}\"\n{}{service}", self.agent_section(host))
    }

    /// A new agent token for `host` (an agent token speaks for one host).
    pub fn agent_token(&self, host: &str) -> String {
        create_token(
            &self.database(),
            &format!("test-agent-{host}"),
            "agent",
            Some(host),
        )
    }

    /// The `[server]` section of an agent config for `host` of this server,
    /// with a token of its own.
    pub fn agent_section(&self, host: &str) -> String {
        self.agent_section_with(&self.agent_token(host))
    }

    /// The `[server]` section of an agent config for this server with `token`.
    pub fn agent_section_with(&self, token: &str) -> String {
        let ca_file = self
            .ca_file()
            .map(|ca| format!("ca_file = \"{}\"\n", ca.display()))
            .unwrap_or_default();
        format!(
            "[server]\nurl = \"{}\"\ntoken = \"{}\"\n{ca_file}",
            self.url(),
            token
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

/// A CA of the test's own and a server certificate it signed for 127.0.0.1
/// and localhost, as PEM files.
struct TestCertificates {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
}

impl TestCertificates {
    fn write(dir: &Path) -> TestCertificates {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "baton test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let files = TestCertificates {
            ca: dir.join("ca.pem"),
            certificate: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.certificate, leaf.pem()).unwrap();
        std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
        files
    }
}
