//! A real `baton-server` on a fresh SQLite file, for end-to-end tests.

use crate::bin;
use baton_testkit::{Server, ServerSetup};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct ServerUnderTest {
    server: Server,
    // After the server: it stops before its database does.
    postgres: Option<std::sync::Arc<baton_testkit::Postgres>>,
    pub addr: SocketAddr,
    pub operator_token: String,
    pub viewer_token: String,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    baton_testkit::free_port().unwrap_or_else(|e| panic!("{e:#}"))
}

/// `host` is the one host an agent token speaks for.
pub fn create_token(database: &Path, name: &str, role: &str, host: Option<&str>) -> String {
    baton_testkit::create_token(&bin("baton-server"), database, name, role, host)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs each named `async fn(ServerUnderTest)` as two tests of its module:
/// `NAME::on_sqlite`, given a server on a fresh SQLite file, and
/// `NAME::on_postgres`, one on a fresh database of the test process's own
/// PostgreSQL server. Replicas started from it share its database.
#[macro_export]
macro_rules! on_both_engines {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$test($crate::server::ServerUnderTest::start()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$test($crate::server::ServerUnderTest::start_on_postgres()).await;
            }
        }
    )+};
}

impl ServerUnderTest {
    /// Waits up to 20 s until exactly `count` hosts are online.
    pub async fn wait_for_hosts(&self, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let list: serde_json::Value = self.get_json("/hosts").await;
            let online = list["hosts"]
                .as_array()
                .map(|h| h.iter().filter(|h| h["online"] == true).count())
                .unwrap_or(0);
            if online == count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hosts never came online: {list}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn start() -> ServerUnderTest {
        Self::start_with(ServerSetup::new(bin("baton-server")))
    }

    /// With more arguments of `baton-server serve` (`["--offline-grace", "3s"]`).
    pub fn start_with_args(args: &[&str]) -> ServerUnderTest {
        let setup = args
            .iter()
            .fold(ServerSetup::new(bin("baton-server")), |setup, arg| {
                setup.arg(*arg)
            });
        Self::start_with(setup)
    }

    /// On a fresh database of the test process's own PostgreSQL server.
    pub fn start_on_postgres() -> ServerUnderTest {
        let postgres = baton_testkit::Postgres::shared()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e:#}"));
        let url = postgres
            .create_database()
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut server = Self::start_with(ServerSetup::new(bin("baton-server")).database(url));
        server.postgres = Some(postgres);
        server
    }

    /// On `url`, a database of the test process's own PostgreSQL server
    /// (from `baton_testkit::Postgres::shared`), kept until the server stops.
    pub fn start_on_postgres_database(url: &str) -> ServerUnderTest {
        let postgres = baton_testkit::Postgres::shared()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e:#}"));
        let mut server = Self::start_with(ServerSetup::new(bin("baton-server")).database(url));
        server.postgres = Some(postgres);
        server
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 from a CA of its own;
    /// agents configured by [`ServerUnderTest::agent_section`] trust it.
    pub fn start_tls() -> ServerUnderTest {
        Self::start_with(ServerSetup::new(bin("baton-server")).tls())
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.server.ca_file()
    }

    /// Another server process on this one's database, on a port of its
    /// own: the same tokens work on both.
    pub fn replica(&self) -> ServerUnderTest {
        self.start_replica(&[])
    }

    fn prepare(setup: ServerSetup) -> Server {
        // For the tests' own HTTP clients.
        baton_tls::install_default_provider();
        setup
            .prefix("baton-server-test-")
            .env(
                "RUST_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .prepare()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn start_with(setup: ServerSetup) -> ServerUnderTest {
        let mut server = Self::prepare(setup);
        let token = |name: &str, role: &str| {
            server
                .create_token(name, role, None)
                .unwrap_or_else(|e| panic!("{e:#}"))
        };
        let operator_token = token("test-operator", "operator");
        let viewer_token = token("test-viewer", "viewer");
        server.launch().unwrap_or_else(|e| panic!("{e:#}"));
        ServerUnderTest {
            addr: server.addr(),
            server,
            postgres: None,
            operator_token,
            viewer_token,
        }
    }

    pub fn database(&self) -> PathBuf {
        self.server.database()
    }

    /// Another `baton-server` on this one's database (a replica), with
    /// more arguments of `serve`; the same tokens work on both.
    pub fn start_replica(&self, args: &[&str]) -> ServerUnderTest {
        baton_tls::install_default_provider();
        let setup = args.iter().fold(
            ServerSetup::new(bin("baton-server")).database(self.database()),
            |setup, arg| setup.arg(*arg),
        );
        let mut server = setup
            .prefix("baton-server-replica-")
            .env(
                "RUST_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .prepare()
            .unwrap_or_else(|e| panic!("{e:#}"));
        server.launch().unwrap_or_else(|e| panic!("{e:#}"));
        ServerUnderTest {
            addr: server.addr(),
            server,
            operator_token: self.operator_token.clone(),
            viewer_token: self.viewer_token.clone(),
            postgres: self.postgres.clone(),
        }
    }

    /// Signs in to the dashboard with `token`: the session cookie.
    pub async fn dashboard_session(&self, token: &str) -> String {
        let response = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/login", self.url()))
            .header("accept", "text/html")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "sign-in");
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("baton_session="))
            .map(|v| v.split(';').next().unwrap().to_string())
            .expect("a session cookie")
    }

    /// A dashboard page (`path`, e.g. `/restarts/7`) as a signed-in viewer
    /// sees it.
    pub async fn page_as_viewer(&self, path: &str) -> String {
        let cookie = self.dashboard_session(&self.viewer_token).await;
        reqwest::Client::new()
            .get(format!("{}{path}", self.url()))
            .header("accept", "text/html")
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn log(&self) -> String {
        self.server.log()
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
        self.server
            .client(Some(token))
            .expect("an HTTP client")
            .with_timeout(Duration::from_secs(60))
    }

    /// Starts the server process (again, after [`ServerUnderTest::kill`]) on
    /// the same database and address.
    pub fn launch(&mut self) {
        self.server.launch().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The server process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// SIGTERM, as an operator stops it (SIGKILL after a grace).
    pub fn stop(&mut self) {
        self.server.stop();
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
        self.server.agent_section(token)
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        self.server.stop();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}
