use baton_proto::link::{AgentFrame, LINK_VERSION, ServerFrame};
use baton_proto::{
    ConnectionTally, Event, EventKind, GenerationInfo, GenerationState, RestartId, RestartOutcome,
    ServiceState, ServiceStatus,
};
use baton_server::domain::Role;
use baton_server::settings::Settings;
use baton_server::startup::Application;
use futures::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub database: PathBuf,
    pub operator: String,
    pub viewer: String,
    /// The agent token of host `alpha` (named `agents`).
    pub agent: String,
    /// The agent tokens of the other hosts, made on first use.
    agent_tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
    pub client: reqwest::Client,
    pub settings: Settings,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    // Dropped last: the database lives in it.
    pub dir: tempfile::TempDir,
}

fn test_settings(database: PathBuf) -> Settings {
    let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), database);
    settings.timeouts.offline_grace = Duration::from_secs(2);
    settings.timeouts.command_answer = Duration::from_secs(3);
    settings.timeouts.host_restart = Duration::from_secs(30);
    settings.timeouts.token_recheck = Duration::from_millis(200);
    settings
}

/// A server on port 0 with a fresh SQLite file and one token per role.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with settings of the test's own, kept across
/// [`TestApp::restart_server`].
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("baton.db");
    let db = baton_server::store::open(&database).await.unwrap();
    let operator = baton_server::auth::create_token(&db, "ci", Role::Operator, None)
        .await
        .unwrap();
    let viewer = baton_server::auth::create_token(&db, "dashboard", Role::Viewer, None)
        .await
        .unwrap();
    let agent = baton_server::auth::create_token(&db, "agents", Role::Agent, Some("alpha"))
        .await
        .unwrap();
    db.close().await;
    let mut settings = test_settings(database.clone());
    configure(&mut settings);
    start(
        dir,
        database,
        settings,
        operator,
        viewer,
        agent,
        Default::default(),
    )
    .await
}

async fn start(
    dir: tempfile::TempDir,
    database: PathBuf,
    settings: Settings,
    operator: String,
    viewer: String,
    agent: String,
    agent_tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
) -> TestApp {
    let application = Application::build(settings.clone())
        .await
        .expect("the application builds");
    let port = application.port();
    let handle = application.handle();
    let server = tokio::spawn(application.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        database,
        operator,
        viewer,
        agent,
        agent_tokens,
        client: {
            baton_tls::install_default_provider();
            reqwest::Client::new()
        },
        settings,
        handle,
        server,
        dir,
    }
}

impl TestApp {
    /// Stops this server and starts a new one on the same database, as after
    /// a crash: nothing is carried over but the file.
    pub async fn restart_server(self) -> TestApp {
        self.handle.stop(false).await;
        let _ = self.server.await;
        start(
            self.dir,
            self.database,
            self.settings,
            self.operator,
            self.viewer,
            self.agent,
            self.agent_tokens,
        )
        .await
    }

    /// The agent token of `host`: an agent token speaks for one host.
    pub async fn agent_token(&self, host: &str) -> String {
        if host == "alpha" {
            return self.agent.clone();
        }
        if let Some(token) = self.agent_tokens.lock().unwrap().get(host) {
            return token.clone();
        }
        let db = self.db().await;
        let token = baton_server::auth::create_token(
            &db,
            &format!("agent-{host}"),
            Role::Agent,
            Some(host),
        )
        .await
        .unwrap();
        db.close().await;
        self.agent_tokens
            .lock()
            .unwrap()
            .insert(host.to_string(), token.clone());
        token
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Waits until `GET /hosts` shows `host` offline (or not at all).
    pub async fn wait_offline(&self, host: &str) {
        for _ in 0..100 {
            let hosts = self.get_json("/hosts").await;
            let online = hosts["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == host && h["online"] == true);
            if !online {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{host} stayed online");
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path, Some(&self.viewer)).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn post_restart(
        &self,
        service: &str,
        token: Option<&str>,
        body: Option<&str>,
        idempotency_key: Option<&str>,
        wait: bool,
    ) -> reqwest::Response {
        let url = format!(
            "{}/services/{service}/restart{}",
            self.address,
            if wait { "?wait=true" } else { "" }
        );
        let mut request = self.client.post(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    /// An operator's `POST /services/{service}/restart`, not waiting: its id.
    pub async fn start_restart(&self, service: &str) -> u64 {
        let response = self
            .post_restart(service, Some(&self.operator), None, None, false)
            .await;
        assert_eq!(response.status(), 202, "POST a restart of {service}");
        response.json::<serde_json::Value>().await.unwrap()["id"]
            .as_u64()
            .expect("a restart id")
    }

    /// Polls `GET /restarts/{id}` until it has ended.
    pub async fn wait_restart(&self, id: u64) -> serde_json::Value {
        for _ in 0..200 {
            let restart = self.get_json(&format!("/restarts/{id}")).await;
            if restart["state"] == "finished" {
                return restart;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("restart {id} did not finish");
    }

    pub async fn db(&self) -> baton_server::store::Db {
        baton_server::store::open(&self.database).await.unwrap()
    }
}

pub fn service(name: &str, generation: u64) -> ServiceStatus {
    ServiceStatus {
        name: name.to_string(),
        state: ServiceState::Ready,
        sockets: Vec::new(),
        generations: vec![GenerationInfo {
            generation,
            pid: 1000 + generation as u32,
            main_pid: None,
            state: GenerationState::Ready,
            started_at: 1,
            ready_at: Some(2),
            status_text: None,
            connections: Some(3),
            memory_bytes: None,
            memory_source: None,
            cpu_usec: None,
            cpu_source: None,
            instances: Vec::new(),
            program: None,
        }],
        consecutive_crashes: 0,
        running_restart: None,
        last_restart: None,
        blocked: None,
        next_start: None,
    }
}

/// The server's answer to a hello that was not a welcome, and how it closed the link.
#[derive(Debug)]
pub struct NotWelcomed {
    pub frame: ServerFrame,
    pub close: Option<CloseFrame>,
}

/// Speaks `proto::link` as an agent would, with every step in the test's hands.
pub struct FakeAgent {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub next_seq: u64,
    pub next_restart: RestartId,
    pub resume_after: u64,
}

pub async fn open_link(
    app: &TestApp,
    token: &str,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://127.0.0.1:{}/agent/v1/connect", app.port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

impl FakeAgent {
    pub async fn connect(
        app: &TestApp,
        host: &str,
        boot_id: &str,
        services: Vec<ServiceStatus>,
    ) -> FakeAgent {
        Self::connect_with_seq(app, host, boot_id, 0, services).await
    }

    pub async fn connect_with_seq(
        app: &TestApp,
        host: &str,
        boot_id: &str,
        last_seq: u64,
        services: Vec<ServiceStatus>,
    ) -> FakeAgent {
        let token = app.agent_token(host).await;
        match Self::try_connect(app, &token, host, boot_id, last_seq, services).await {
            Ok(agent) => agent,
            Err(refused) => panic!("expected welcome, got {refused:?}"),
        }
    }

    /// Opens a link with `token` and says hello as `host`: the agent once
    /// welcomed, or what the server answered instead.
    pub async fn try_connect(
        app: &TestApp,
        token: &str,
        host: &str,
        boot_id: &str,
        last_seq: u64,
        services: Vec<ServiceStatus>,
    ) -> Result<FakeAgent, NotWelcomed> {
        let ws = open_link(app, token).await.expect("the link opens");
        let mut agent = FakeAgent {
            ws,
            next_seq: last_seq + 1,
            next_restart: 1,
            resume_after: 0,
        };
        agent
            .send(&AgentFrame::Hello {
                version: LINK_VERSION,
                host: host.to_string(),
                agent_version: "0.1.0-test".into(),
                boot_id: boot_id.to_string(),
                last_seq,
                services,
            })
            .await;
        match agent.recv().await {
            ServerFrame::Welcome { resume_after } => {
                agent.resume_after = resume_after;
                Ok(agent)
            }
            frame => {
                let close = agent.close_frame().await;
                Err(NotWelcomed { frame, close })
            }
        }
    }

    /// Reads until the server closes the link: its close frame, if it sent one.
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("the server closes the link")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn send(&mut self, frame: &AgentFrame) {
        self.ws
            .send(Message::text(serde_json::to_string(frame).unwrap()))
            .await
            .unwrap();
    }

    /// Any text, frame or not.
    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends a ping: whether the server answered it within `limit`.
    pub async fn ping_within(&mut self, limit: Duration) -> bool {
        self.ws
            .send(Message::Ping(b"baton".to_vec().into()))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Pong(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return false,
            }
        }
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match message.ok()? {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> ServerFrame {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("a frame from the server")
    }

    /// The next frame, which must be a restart command: its id.
    pub async fn expect_restart_command(&mut self) -> String {
        match self.recv().await {
            ServerFrame::Restart { command_id, .. } => command_id,
            other => panic!("expected a restart command, got {other:?}"),
        }
    }

    /// Takes the next restart command and answers that it started as this
    /// agent's restart `id`.
    pub async fn accept_restart(&mut self, id: RestartId) {
        let command_id = self.expect_restart_command().await;
        self.send(&AgentFrame::RestartStarted {
            command_id,
            result: Ok(id),
        })
        .await;
    }

    /// The next report the server asks for, past its acknowledgements.
    pub async fn expect_fetch_report(&mut self) -> RestartId {
        loop {
            match self.recv().await {
                ServerFrame::FetchReport { restart_id } => return restart_id,
                ServerFrame::Ack { .. } => continue,
                other => panic!("expected a fetch of a report, got {other:?}"),
            }
        }
    }

    pub fn event(&mut self, service: &str, restart: Option<RestartId>, kind: EventKind) -> Event {
        let event = Event {
            seq: self.next_seq,
            at: baton_server::domain::now_millis(),
            service: service.to_string(),
            restart,
            kind,
        };
        self.next_seq += 1;
        event
    }

    /// Sends a batch and waits for its acknowledgement.
    pub async fn send_events(&mut self, events: Vec<Event>) {
        let max = events.iter().map(|e| e.seq).max().unwrap();
        self.send(&AgentFrame::Events { events }).await;
        match self.recv().await {
            ServerFrame::Ack { seq } => assert_eq!(seq, max),
            other => panic!("expected ack, got {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The events of a whole restart of `service` from generation `old` to
    /// `old + 1`, ending with `outcome`.
    pub fn restart_events(
        &mut self,
        service: &str,
        restart: RestartId,
        old: u64,
        outcome: RestartOutcome,
    ) -> Vec<Event> {
        let new = old + 1;
        let mut events = vec![
            self.event(
                service,
                Some(restart),
                EventKind::RestartStarted {
                    reason: None,
                    requested_by: None,
                },
            ),
            self.event(
                service,
                Some(restart),
                EventKind::GenerationSpawned {
                    generation: new,
                    pid: 2000 + new as u32,
                    program: None,
                },
            ),
        ];
        match outcome {
            RestartOutcome::RolledBack => {
                events.push(self.event(
                    service,
                    Some(restart),
                    EventKind::GenerationExited {
                        generation: new,
                        pid: 2000 + new as u32,
                        status: "killed by SIGTERM".into(),
                        unexpected: false,
                        program: None,
                    },
                ));
                events.push(self.event(
                    service,
                    Some(restart),
                    EventKind::RestartFinished {
                        outcome,
                        reason: Some("not ready within 1s".into()),
                        versions: None,
                    },
                ));
            }
            _ => {
                events.push(self.event(
                    service,
                    Some(restart),
                    EventKind::GenerationReady {
                        generation: new,
                        pid: 2000 + new as u32,
                        startup_us: 1500,
                        program: None,
                    },
                ));
                events.push(self.event(
                    service,
                    Some(restart),
                    EventKind::GenerationDraining {
                        generation: old,
                        pid: 1000 + old as u32,
                        signal: "SIGTERM".into(),
                        connections: Some(3),
                    },
                ));
                events.push(self.event(
                    service,
                    Some(restart),
                    EventKind::GenerationExited {
                        generation: old,
                        pid: 1000 + old as u32,
                        status: "exited with status 0".into(),
                        unexpected: false,
                        program: None,
                    },
                ));
                events.push(self.event(
                    service,
                    Some(restart),
                    EventKind::RestartFinished {
                        outcome,
                        reason: None,
                        versions: None,
                    },
                ));
            }
        }
        events
    }

    /// The events of a restart of `service` from generation `old` to
    /// `old + 1` in which the old generation hands connections over and its
    /// drain ends with `tally`, then `outcome`.
    pub fn handoff_restart_events(
        &mut self,
        service: &str,
        restart: RestartId,
        old: u64,
        tally: ConnectionTally,
        outcome: RestartOutcome,
    ) -> Vec<Event> {
        let new = old + 1;
        let kinds = [
            EventKind::RestartStarted {
                reason: None,
                requested_by: None,
            },
            EventKind::GenerationSpawned {
                generation: new,
                pid: 2000 + new as u32,
                program: None,
            },
            EventKind::GenerationReady {
                generation: new,
                pid: 2000 + new as u32,
                startup_us: 1500,
                program: None,
            },
            EventKind::HandoffBrokered {
                from_generation: old,
                to_generation: new,
            },
            EventKind::GenerationDraining {
                generation: old,
                pid: 1000 + old as u32,
                signal: "SIGTERM".into(),
                connections: Some(tally.handed_over + tally.drained + tally.cut),
            },
            EventKind::ConnectionsHandedOver {
                from_generation: old,
                to_generation: new,
                connections: tally.handed_over,
            },
            EventKind::GenerationExited {
                generation: old,
                pid: 1000 + old as u32,
                status: "exited with status 0".into(),
                unexpected: false,
                program: None,
            },
            EventKind::DrainFinished {
                generation: old,
                handed_over: tally.handed_over,
                drained: tally.drained,
                cut: tally.cut,
            },
            EventKind::RestartFinished {
                outcome,
                reason: None,
                versions: None,
            },
        ];
        kinds
            .into_iter()
            .map(|kind| self.event(service, Some(restart), kind))
            .collect()
    }

    /// Waits for a restart command, accepts it, plays the whole restart, and
    /// returns the agent restart id.
    pub async fn serve_restart(
        &mut self,
        service: &str,
        old: u64,
        outcome: RestartOutcome,
    ) -> RestartId {
        let command_id = match self.recv().await {
            ServerFrame::Restart {
                command_id,
                service: s,
                ..
            } => {
                assert_eq!(s, service);
                command_id
            }
            other => panic!("expected a restart command, got {other:?}"),
        };
        let restart = self.next_restart;
        self.next_restart += 1;
        self.send(&AgentFrame::RestartStarted {
            command_id,
            result: Ok(restart),
        })
        .await;
        let events = self.restart_events(service, restart, old, outcome);
        self.send_events(events).await;
        restart
    }
}
