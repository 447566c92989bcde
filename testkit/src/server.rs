//! A real `baton-server` on a SQLite file of its own.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_client::ServerClient;

use crate::{Folder, Process, Spawn};

/// A loopback port nothing listens on right now. The server binds it a
/// moment later; another process could take it in between, which only
/// makes that server fail to start, with its log saying why.
pub fn free_port() -> anyhow::Result<u16> {
    let probe =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot probe for a free port")?;
    Ok(probe.local_addr()?.port())
}

/// `baton-server token create` on `database`: the new token. `host` is the
/// one host an agent token speaks for.
pub fn create_token(
    server: &Path,
    database: &Path,
    name: &str,
    role: &str,
    host: Option<&str>,
) -> anyhow::Result<String> {
    let output = Command::new(server)
        .args(["token", "create", "--database"])
        .arg(database)
        .args(["--name", name, "--role", role])
        .args(host.map(|host| ["--host", host]).into_iter().flatten())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", server.display()))?;
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

/// What to start, and where.
#[derive(Debug)]
pub struct ServerSetup {
    binary: PathBuf,
    folder: Option<PathBuf>,
    prefix: String,
    listen: Option<SocketAddr>,
    tls: bool,
    env: Vec<(OsString, OsString)>,
    args: Vec<OsString>,
    own_process_group: bool,
    stop_grace: Duration,
    database: Option<PathBuf>,
}

impl ServerSetup {
    pub fn new(binary: impl Into<PathBuf>) -> ServerSetup {
        ServerSetup {
            binary: binary.into(),
            folder: None,
            prefix: "baton-server-".to_owned(),
            listen: None,
            tls: false,
            env: Vec::new(),
            args: Vec::new(),
            own_process_group: false,
            stop_grace: Duration::from_secs(5),
            database: None,
        }
    }

    /// Serves from this SQLite file rather than one of its own in its
    /// folder: several servers on one database.
    pub fn database(mut self, path: impl Into<PathBuf>) -> ServerSetup {
        self.database = Some(path.into());
        self
    }

    /// Keeps the database and log in `folder` rather than in a temporary
    /// folder.
    pub fn in_folder(mut self, folder: impl Into<PathBuf>) -> ServerSetup {
        self.folder = Some(folder.into());
        self
    }

    pub fn prefix(mut self, prefix: impl Into<String>) -> ServerSetup {
        self.prefix = prefix.into();
        self
    }

    /// The address to serve on; a free loopback port when not given.
    pub fn listen(mut self, address: SocketAddr) -> ServerSetup {
        self.listen = Some(address);
        self
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 and localhost from a
    /// CA of its own, whose PEM file is [`Server::ca_file`].
    pub fn tls(mut self) -> ServerSetup {
        self.tls = true;
        self
    }

    /// One more argument of `baton-server serve`, after the ones it always
    /// gets (`--offline-grace 3s`, ...).
    pub fn arg(mut self, arg: impl Into<OsString>) -> ServerSetup {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ServerSetup {
        self.env.push((key.into(), value.into()));
        self
    }

    /// See [`Spawn::own_process_group`].
    pub fn own_process_group(mut self) -> ServerSetup {
        self.own_process_group = true;
        self
    }

    pub fn stop_grace(mut self, grace: Duration) -> ServerSetup {
        self.stop_grace = grace;
        self
    }

    /// The folder, database path, address and certificates, without a
    /// process yet: tokens can be created before [`Server::launch`].
    pub fn prepare(self) -> anyhow::Result<Server> {
        let folder = match &self.folder {
            Some(path) => Folder::Kept(path.clone()),
            None => Folder::temporary(&self.prefix)?,
        };
        let addr = match self.listen {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let tls = if self.tls {
            Some(Certificates::write(folder.path())?)
        } else {
            None
        };
        Ok(Server {
            process: None,
            launches: 0,
            addr,
            tls,
            setup: self,
            folder,
        })
    }

    /// [`ServerSetup::prepare`] and [`Server::launch`].
    pub fn start(self) -> anyhow::Result<Server> {
        let mut server = self.prepare()?;
        server.launch()?;
        Ok(server)
    }
}

pub struct Server {
    // Before the folder: the process stops before its files go.
    process: Option<Process>,
    launches: u32,
    addr: SocketAddr,
    tls: Option<Certificates>,
    setup: ServerSetup,
    folder: Folder,
}

impl Server {
    pub fn folder(&self) -> &Path {
        self.folder.path()
    }

    pub fn database(&self) -> PathBuf {
        self.setup
            .database
            .clone()
            .unwrap_or_else(|| self.folder.path().join("baton.db"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    pub fn log_path(&self) -> PathBuf {
        self.folder.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// A token of `role` on this server's database; `host` as for
    /// [`create_token`].
    pub fn create_token(
        &self,
        name: &str,
        role: &str,
        host: Option<&str>,
    ) -> anyhow::Result<String> {
        create_token(&self.setup.binary, &self.database(), name, role, host)
    }

    /// A REST client with `token`, trusting the server's CA.
    pub fn client(&self, token: Option<&str>) -> anyhow::Result<ServerClient> {
        Ok(ServerClient::new(
            &self.url(),
            token.map(str::to_owned),
            self.ca_file(),
        )?)
    }

    /// Starts the server process (again, after [`Server::kill`], on the
    /// same database and address, its log continued) and returns once
    /// `/healthz` answers.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let mut spawn =
            Spawn::new("baton-server", self.log_path()).stop_grace(self.setup.stop_grace);
        if self.launches > 0 {
            spawn = spawn.append_to_log();
        }
        if self.setup.own_process_group {
            spawn = spawn.own_process_group();
        }
        let mut command = Command::new(&self.setup.binary);
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
        command.args(&self.setup.args);
        command.envs(self.setup.env.iter().cloned());
        let mut process = spawn.spawn(&mut command)?;
        self.launches += 1;
        let client = self.client(None)?.with_timeout(Duration::from_secs(2));
        let healthy = || block_on(client.get_json::<serde_json::Value>("/healthz")).is_ok();
        process.wait_until("/healthz answered", Duration::from_secs(20), healthy)?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after the grace.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// The `[server]` section of an agent config for this server.
    pub fn agent_section(&self, token: &str) -> String {
        let ca_file = self
            .ca_file()
            .map(|ca| format!("ca_file = \"{}\"\n", ca.display()))
            .unwrap_or_default();
        format!(
            "[server]\nurl = \"{}\"\ntoken = \"{token}\"\n{ca_file}",
            self.url()
        )
    }
}

/// Runs `future` to its end on a runtime of its own, on a thread of its own,
/// so that it works from blocking code and from within a test's runtime
/// alike.
fn block_on<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds")
                    .block_on(future)
            })
            .join()
            .expect("the health check does not panic")
    })
}

/// A CA of its own and a server certificate it signed for 127.0.0.1 and
/// localhost, as PEM files.
#[derive(Debug)]
struct Certificates {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
}

impl Certificates {
    fn write(dir: &Path) -> anyhow::Result<Certificates> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "baton test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
            .signed_by(&leaf_key, &ca)?;
        let files = Certificates {
            ca: dir.join("ca.pem"),
            certificate: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.certificate, leaf.pem())?;
        std::fs::write(&files.key, leaf_key.serialize_pem())?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_binary() -> PathBuf {
        crate::binary("baton-server")
            .unwrap_or_else(|missing| panic!("{missing}: run `cargo build --workspace` first"))
    }

    #[test]
    fn a_tls_server_is_awaited_through_its_own_ca_and_restarts_on_the_same_log() {
        let mut server = ServerSetup::new(server_binary()).tls().start().unwrap();
        assert!(server.url().starts_with("https://127.0.0.1:"));
        let token = server
            .create_token("kit-agent", "agent", Some("kit-host"))
            .unwrap();
        assert!(server.agent_section(&token).contains("ca_file = "));
        let first_log = server.log();
        server.kill();
        assert_eq!(server.pid(), None);
        server.launch().unwrap();
        assert!(server.log().starts_with(&first_log));
        assert!(server.log().len() > first_log.len());
    }

    #[test]
    fn a_server_that_cannot_bind_fails_naming_its_log() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let error = ServerSetup::new(server_binary())
            .listen(taken.local_addr().unwrap())
            .start()
            .err()
            .expect("the address is taken");
        let message = format!("{error:#}");
        assert!(message.contains("baton-server exited with"), "{message}");
        assert!(message.contains("server.log"), "{message}");
    }
}
