//! The agent as its two front doors see it: the control socket
//! (`control.rs`) and the server link (`uplink.rs`) read statuses and start
//! restarts through this one view, so both refuse the same way.

use crate::connections::ConnectionCounter;
use crate::events::EventLog;
use crate::service::{ServiceHandle, StatusAsk};
use baton_proto::{
    AgentStatus, ErrorBody, ErrorKind, ProcessTracking, ReloadSummary, RestartId, ServerLink,
    ServiceStatus,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub struct AgentView {
    pub host: String,
    pub boot_id: String,
    pub started_at: u64,
    pub services: RwLock<BTreeMap<String, ServiceHandle>>,
    pub events: Arc<EventLog>,
    pub shutting_down: CancellationToken,
    pub process_tracking: ProcessTracking,
    /// Without cgroups: what says which orphans no generation claims.
    pub lineage: Option<Arc<crate::lineage::Lineage>>,
    /// Every generation's connections, counted for all services at once.
    pub connections: Arc<ConnectionCounter>,
    /// To the agent's main loop, which owns the running configuration.
    pub reloads: mpsc::Sender<ReloadRequest>,
    /// The generations' captured output, for `baton logs`.
    pub output: Arc<crate::output::Outputs>,
    /// Where the link to the server stands (`uplink.rs` keeps it), for
    /// `baton status`.
    pub server_link: Mutex<Option<ServerLink>>,
}

/// A reload asked for on the control socket, with where its answer goes.
pub type ReloadRequest = oneshot::Sender<Result<ReloadSummary, String>>;

/// How recent the connection counts of a status must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Counted at most this long before the request: the last count if it
    /// is that recent, else a new one, shared by every request meanwhile.
    Fresh(Duration),
    /// The last count, however old; never waits for the kernel.
    Last,
}

impl AgentView {
    pub fn service(&self, name: &str) -> Option<ServiceHandle> {
        self.services
            .read()
            .expect("services lock")
            .get(name)
            .cloned()
    }

    /// Every service, in name order.
    pub fn handles(&self) -> Vec<ServiceHandle> {
        self.services
            .read()
            .expect("services lock")
            .values()
            .cloned()
            .collect()
    }

    /// Starts a restart of `service`: refused for an unknown service, while
    /// the agent stops, and by the service itself (one already running,
    /// stopping, upgrading).
    pub async fn restart(
        &self,
        service: &str,
        reason: Option<String>,
    ) -> Result<RestartId, ErrorBody> {
        let refused = |kind, message: String| ErrorBody {
            kind,
            message,
            running_restart: None,
        };
        let Some(handle) = self.service(service) else {
            return Err(refused(
                ErrorKind::UnknownService,
                format!("no service named {service:?} on this agent"),
            ));
        };
        if self.shutting_down.is_cancelled() {
            return Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            ));
        }
        handle.restart(reason).await
    }

    /// Reloads the configuration file, as SIGHUP does, and says what changed
    /// or why nothing did.
    pub async fn reload(&self) -> Result<ReloadSummary, ErrorBody> {
        let refused = |kind, message: String| ErrorBody {
            kind,
            message,
            running_restart: None,
        };
        if self.shutting_down.is_cancelled() {
            return Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        if self.reloads.send(reply).await.is_err() {
            return Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            ));
        }
        match answer.await {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(message)) => Err(refused(ErrorKind::InvalidConfig, message)),
            Err(_) => Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            )),
        }
    }

    /// Every service's status. A draining generation's connections are its
    /// own fresh count; every other generation's come from the agent's one
    /// count of all services, as recent as `counting` asks.
    pub async fn status(&self, counting: Counting) -> AgentStatus {
        let ask = StatusAsk {
            last_restart: true,
            fresh_usage: matches!(counting, Counting::Fresh(_)),
        };
        let services = self.services(counting, ask).await;
        AgentStatus {
            host: self.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: self.boot_id.clone(),
            pid: std::process::id(),
            started_at: self.started_at,
            services,
            notify_strangers: crate::notify_router::strangers(),
            restart_requests_refused: crate::service::requests::refused(),
            process_tracking: Some(self.process_tracking),
            untracked: self.untracked(matches!(counting, Counting::Fresh(_))).await,
            server_link: self.server_link.lock().expect("server link lock").clone(),
        }
    }

    /// Every service as the server link reports it: with the last count,
    /// never waiting for one, and without last restarts. The server has
    /// every restart as events; a thousand services' reports would not fit
    /// in one of its frames (1 MiB).
    /// With `fresh_usage`, the generations' memory and CPU are read again
    /// (else the last reading is sent).
    pub async fn services_for_the_server(&self, fresh_usage: bool) -> Vec<ServiceStatus> {
        let ask = StatusAsk {
            last_restart: false,
            fresh_usage,
        };
        self.services(Counting::Last, ask).await
    }

    async fn services(&self, counting: Counting, ask: StatusAsk) -> Vec<ServiceStatus> {
        let handles = self.handles();
        // Asked all at once: the services answer in parallel.
        let statuses = futures::future::join_all(handles.iter().map(|h| h.status(ask))).await;
        let counts = match counting {
            Counting::Fresh(max_age) => self.connections.fresh(max_age).await,
            Counting::Last => self.connections.latest(),
        };
        let mut services: Vec<_> = statuses.into_iter().flatten().collect();
        for service in &mut services {
            for generation in &mut service.generations {
                if generation.connections.is_none() {
                    generation.connections = counts.of(&service.name, generation.generation);
                }
            }
        }
        services
    }
}

impl AgentView {
    /// Orphans no generation claims; a fresh status walks `/proc` for them
    /// (or reuses the walk its services just made).
    async fn untracked(&self, fresh: bool) -> Vec<baton_proto::UntrackedProcess> {
        let Some(lineage) = self.lineage.clone() else {
            return Vec::new();
        };
        if fresh {
            let walked = lineage.clone();
            let _ = tokio::task::spawn_blocking(move || {
                walked.walk_unless_within(STATUS_WALK_REUSED_FOR)
            })
            .await;
        }
        lineage.untracked()
    }
}

/// A walk of `/proc` this recent is fresh enough for a status.
const STATUS_WALK_REUSED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::connections;
    use crate::notify_router::NotifyRouter;
    use crate::reaper::Reaper;
    use crate::service::{self, Shared};
    use crate::sockets;
    use std::net::TcpStream;
    use std::time::Instant;

    fn view() -> (AgentView, impl Sized) {
        // The counter's task needs a runtime, though these tests never count.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let connections =
            runtime.block_on(async { ConnectionCounter::start(Duration::from_millis(100)) });
        let (web, queue) = ServiceHandle::unanswered("web");
        let services = BTreeMap::from([("web".to_string(), web)]);
        let view = AgentView {
            host: "h".into(),
            boot_id: "b".into(),
            started_at: 0,
            services: RwLock::new(services),
            events: Arc::new(EventLog::default()),
            shutting_down: CancellationToken::new(),
            process_tracking: ProcessTracking::Cgroup,
            lineage: None,
            connections,
            reloads: mpsc::channel(1).0,
            output: crate::output::Outputs::new(None),
            server_link: Mutex::new(None),
        };
        (view, (queue, runtime))
    }

    #[test]
    fn an_unknown_service_is_refused_by_name() {
        let (view, _queue) = view();
        let refused = futures::executor::block_on(view.restart("db", None)).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::UnknownService);
        assert!(refused.message.contains("\"db\""), "{}", refused.message);
    }

    #[test]
    fn a_stopping_agent_refuses_a_restart_before_asking_the_service() {
        let (view, _queue) = view();
        view.shutting_down.cancel();
        // The service never answers: only a refusal up front returns.
        let refused = futures::executor::block_on(view.restart("web", None)).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::ShuttingDown);
    }

    /// Kills the generations' process groups even when an assertion fails
    /// before the services are stopped.
    struct KillOnDrop(Vec<i32>);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for pgid in &self.0 {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Every service but one sleeps; `accepting` accepts every connection
    /// on its inherited socket and keeps it open.
    fn many_services(dir: &std::path::Path, count: usize, accepting: usize) -> Config {
        let mut text = format!(
            "control_socket = \"{}/agent.sock\"\ncgroups = false\n",
            dir.display()
        );
        for index in 0..count {
            let command = if index == accepting {
                r#"["python3", "-c", "import socket\nlistener = socket.socket(fileno=3)\nheld = []\nwhile True:\n    held.append(listener.accept())"]"#
            } else {
                r#"["sleep", "infinity"]"#
            };
            text.push_str(&format!(
                "[[service]]\nname = \"svc-{index}\"\ncommand = {command}\nready = \"exec\"\n\
                 [[service.socket]]\nname = \"http\"\nlisten = \"tcp://127.0.0.1:0\"\n"
            ));
        }
        Config::parse(&text, "many services").unwrap()
    }

    /// The count that made an agent with hundreds of services lose its
    /// server link: one scan of the kernel's sockets and processes per
    /// service and status. A status reads the kernel once for all of them,
    /// a burst of statuses shares that count, and an idle agent reads
    /// nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_status_of_many_services_reads_the_kernel_once_for_all() {
        const SERVICES: usize = 40;
        const ACCEPTING: usize = 7;
        let dir = tempfile::tempdir().unwrap();
        let config = many_services(dir.path(), SERVICES, ACCEPTING);
        let connections = ConnectionCounter::start(Duration::from_millis(100));
        let events = Arc::new(EventLog::default());
        let shared = Arc::new(Shared {
            reaper: Reaper::start().unwrap(),
            events: events.clone(),
            router: NotifyRouter::new(None),
            lineage: None,
            notify_socket: dir.path().join("notify.sock"),
            state: None,
            connections: connections.clone(),
            output: crate::output::Outputs::new(None),
        });
        let mut services = BTreeMap::new();
        for service in &config.services {
            let bound = service
                .sockets
                .iter()
                .map(|socket| Arc::new(sockets::bind(socket).unwrap()))
                .collect();
            let (handle, _task) = service::start(
                Arc::new(service.clone()),
                Arc::new(bound),
                shared.clone(),
                None,
                None,
            );
            services.insert(service.name.clone(), handle);
        }
        let view = AgentView {
            host: "h".into(),
            boot_id: "b".into(),
            started_at: 0,
            services: RwLock::new(services),
            events,
            shutting_down: CancellationToken::new(),
            process_tracking: ProcessTracking::Session,
            lineage: None,
            connections,
            reloads: mpsc::channel(1).0,
            output: crate::output::Outputs::new(None),
            server_link: Mutex::new(None),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let status = view.status(Counting::Last).await;
            let ready = status.services.len() == SERVICES
                && status.services.iter().all(|s| {
                    s.state == baton_proto::ServiceState::Ready && s.generations.len() == 1
                });
            if ready {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "not every service ready: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _generations = KillOnDrop(
            status
                .services
                .iter()
                .map(|s| s.generations[0].pid as i32)
                .collect(),
        );
        let accepting = format!("svc-{ACCEPTING}");
        // In name order: the index of the accepting service's status.
        let at = status
            .services
            .iter()
            .position(|s| s.name == accepting)
            .unwrap();
        let listen = &status.services[at].sockets[0].listen;
        let address = listen.strip_prefix("tcp://").unwrap().to_owned();
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(&address).unwrap())
            .collect();

        // The accepting service takes its clients in its own time: asked
        // until it has, each status a fresh count.
        let before = connections::scans();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (status, scans) = loop {
            let before_this = connections::scans();
            let status = view.status(Counting::Fresh(Duration::ZERO)).await;
            let scans = connections::scans() - before_this;
            let counted = |index: usize| status.services[index].generations[0].connections;
            if counted(at) == Some(3) || Instant::now() > deadline {
                break (status, scans);
            }
        };
        assert_eq!(
            scans, 1,
            "one status of {SERVICES} services read the kernel {scans} times"
        );
        for service in &status.services {
            let expected = if service.name == accepting { 3 } else { 0 };
            assert_eq!(
                service.generations[0].connections,
                Some(expected),
                "{}",
                service.name
            );
        }

        // A burst of requests, a second's worth of freshness: the last count
        // answers them all.
        let counted = connections::scans();
        let burst = futures::future::join_all(
            (0..10).map(|_| view.status(Counting::Fresh(Duration::from_secs(60)))),
        )
        .await;
        assert!(
            burst
                .iter()
                .all(|s| s.services[at].generations[0].connections == Some(3))
        );
        assert_eq!(
            connections::scans(),
            counted,
            "a burst of statuses counted again"
        );

        // Nothing draining, nobody asking: nothing is counted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(connections::scans(), counted, "an idle agent counted");
        assert!(connections::scans() > before);

        drop(clients);
        futures::future::join_all(view.handles().iter().map(|h| h.stop())).await;
    }
}
