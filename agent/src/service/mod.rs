//! One task per service owns everything about it: its generations, the
//! restart in progress, crash backoff. Every change of state happens in that
//! task, in response to one message or one deadline, so there are no locks
//! around a service and no two transitions can interleave.
//!
//! The decisions live in [`core`], a state machine without I/O: it takes an
//! input (a restart request, an exit, a notify message, a deadline) and
//! returns effects (spawn, signal, kill, count, emit). [`actor`] is the tokio
//! task that feeds it and carries the effects out.
//!
//! A hot restart, as the core drives it:
//!
//! ```text
//! restart ─▶ spawn N+1 ─▶ Starting ──READY=1 / probe──▶ Ready ─▶ signal N ─▶ N Draining
//!                           │  exit or ready_timeout                         │ exit      │ drain_timeout
//!                           ▼                                                ▼           ▼
//!                     stop N+1: rolled_back                             succeeded   SIGKILL: forced
//! ```
//!
//! With `min_overlap`, N+1 is `Ready` but N stays current and unsignalled
//! until the overlap ends (an exit of N+1 meanwhile rolls back).
//! Between `Ready` and the signal, if N+1 said `HANDOFF=1` on its channel,
//! the two generations get a handoff pair (`BrokerHandoff`); when N's drain
//! ends, `drain_finished` says what became of its connections.

mod actor;
pub mod core;
pub mod effects;
pub mod generation;
pub mod requests;
pub mod restart;
#[cfg(test)]
mod tests;
mod versions;

pub use self::core::{HandoverRefused, Predecessor};
use crate::config::ServiceConfig;
use crate::connections::ConnectionCounter;
use crate::events::EventLog;
use crate::handover::ServiceHandover;
use crate::notify::NotifyMessage;
use crate::notify_router::NotifyRouter;
use crate::reaper::{ExitInfo, Reaper};
use crate::sockets::BoundSocket;
use baton_proto::{ErrorBody, RestartId, ServiceStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What every service shares with the rest of the agent.
pub struct Shared {
    pub reaper: Arc<Reaper>,
    pub events: Arc<EventLog>,
    pub router: NotifyRouter,
    /// Without cgroups: the generations' processes traced by lineage.
    pub lineage: Option<Arc<crate::lineage::Lineage>>,
    pub notify_socket: PathBuf,
    /// Where each service's state goes when it changes (none in tests of
    /// the service alone).
    pub state: Option<Arc<crate::state::StateWriter>>,
    /// Counts every service's connections, one scan for all of them.
    pub connections: Arc<ConnectionCounter>,
    /// The generations' captured output (`output.rs`).
    pub output: Arc<crate::output::Outputs>,
}

/// What a service task takes over instead of starting a generation.
pub struct Adopted {
    pub service: ServiceHandover,
    pub from: Predecessor,
}

/// What a status request asks of a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusAsk {
    /// Its last restart's report (the server has every restart as events).
    pub last_restart: bool,
    /// A fresh reading of its generations' memory and CPU, rather than the
    /// last one taken.
    pub fresh_usage: bool,
}

/// What reaches a service's task, in the order it arrived.
enum Msg {
    Restart {
        reason: Option<String>,
        reply: oneshot::Sender<Result<RestartId, ErrorBody>>,
    },
    Status {
        ask: StatusAsk,
        reply: oneshot::Sender<ServiceStatus>,
    },
    Replace {
        config: Arc<ServiceConfig>,
        sockets: Arc<Vec<Arc<BoundSocket>>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    Handover {
        reply: oneshot::Sender<Result<ServiceHandover, HandoverRefused>>,
    },
    Thaw,
    Exited {
        generation: u64,
        pid: Pid,
        exit: ExitInfo,
    },
    Notify {
        generation: u64,
        sender: i32,
        messages: Vec<NotifyMessage>,
        fds: Vec<OwnedFd>,
    },
    Ready {
        generation: u64,
    },
    Connections {
        generation: u64,
        count: Option<u32>,
    },
    /// An input the core put back at the end of the queue.
    Requeued(self::core::Input),
    /// A generation's identities, hashed off the task after its spawn.
    Identified {
        generation: u64,
        program: baton_proto::Program,
    },
}

#[derive(Clone)]
pub struct ServiceHandle {
    pub name: String,
    tx: mpsc::UnboundedSender<Msg>,
}

impl ServiceHandle {
    pub async fn restart(&self, reason: Option<String>) -> Result<RestartId, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Restart { reason, reply });
        answer
            .await
            .unwrap_or_else(|_| Err(self::core::shutting_down(&self.name)))
    }

    /// The service as its task sees it: connections only of draining
    /// generations (see `AgentView::status` for the others); its last
    /// restart's report only with `last_restart`.
    pub async fn status(&self, ask: StatusAsk) -> Option<ServiceStatus> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Status { ask, reply });
        answer.await.ok()
    }

    /// Resumes after a failed re-exec.
    pub fn thaw(&self) {
        self.send(Msg::Thaw);
    }

    pub fn replace(&self, config: Arc<ServiceConfig>, sockets: Arc<Vec<Arc<BoundSocket>>>) {
        self.send(Msg::Replace { config, sockets });
    }

    pub async fn handover(&self) -> Result<ServiceHandover, HandoverRefused> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Handover { reply });
        answer.await.unwrap_or_else(|_| {
            Err(HandoverRefused::Stopping {
                service: self.name.clone(),
            })
        })
    }

    /// Resolves when every generation of the service has exited.
    pub async fn stop(&self) {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Stop { reply });
        let _ = answer.await;
    }

    /// A handle whose task never answers, for tests of what is refused
    /// before a request reaches the service. Requests queue in the second
    /// value while it is kept.
    #[cfg(test)]
    pub(crate) fn unanswered(name: &str) -> (Self, impl Sized) {
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let handle = ServiceHandle {
            name: name.to_string(),
            tx,
        };
        (handle, rx)
    }

    fn send(&self, msg: Msg) {
        // A closed channel means the task already stopped; every reply
        // channel then reports that by being dropped.
        let _ = self.tx.send(msg);
    }
}

/// Starts the service's task; with `adopted`, it takes over the generations
/// the agent's previous image ran (or a killed agent left) instead of
/// starting one. A `blocked` service (its address is held by a process it
/// does not manage) starts nothing and says why in its status.
pub fn start(
    config: Arc<ServiceConfig>,
    sockets: Arc<Vec<Arc<BoundSocket>>>,
    shared: Arc<Shared>,
    adopted: Option<Adopted>,
    blocked: Option<String>,
) -> (ServiceHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let name = config.name.clone();
    let actor = actor::Actor::new(config, sockets, shared, tx.clone(), blocked);
    let task = tokio::spawn(actor.run(rx, adopted));
    (ServiceHandle { name, tx }, task)
}
