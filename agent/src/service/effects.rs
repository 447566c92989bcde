//! What the service core takes in and what it asks for: the whole
//! vocabulary between the core and the actor that runs it.

use crate::channel::ChannelMessage;
use crate::config::ServiceConfig;
use crate::notify::NotifyMessage;
use crate::reaper::ExitInfo;
use baton_proto::{ErrorBody, EventKind, RestartId, RestartOutcome, RestartRequester, UnixMillis};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time an input happens at: monotonic for deadlines, wall clock for
/// what is reported.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: UnixMillis,
}

#[derive(Debug, PartialEq)]
pub enum Input {
    /// The task begins: start a generation unless an adopted one serves.
    Start,
    Restart {
        reason: Option<String>,
    },
    /// Answers `Effect::OpenRestart`.
    RestartOpened {
        id: RestartId,
    },
    /// A reload changed the service: restart it with the new configuration.
    Replace {
        config: Arc<ServiceConfig>,
    },
    /// Stop every generation; the service is done once none is left.
    Stop,
    /// Answers `Effect::Spawn`.
    Spawned {
        generation: u64,
        pid: Pid,
        probe_port: Option<u16>,
        /// It was started with a channel to the agent (`BATON_CHANNEL_FD`).
        channel: bool,
    },
    /// Answers `Effect::Spawn`.
    SpawnFailed {
        generation: u64,
        reason: String,
    },
    /// A watched process of the generation was reaped.
    Exited {
        generation: u64,
        pid: Pid,
        exit: ExitInfo,
    },
    /// Answers `Effect::LocateMain`.
    MainLocated {
        generation: u64,
        main: Pid,
        in_group: bool,
        after: MainCheck,
    },
    Notify {
        generation: u64,
        sender: i32,
        messages: Vec<NotifyMessage>,
    },
    /// What the generation said on its channel (`docs/handoff.md`).
    Channel {
        generation: u64,
        messages: Vec<ChannelMessage>,
    },
    /// `READY=1` (through the queue) or a successful probe.
    Ready {
        generation: u64,
    },
    /// A draining generation's periodic count.
    Connections {
        generation: u64,
        count: Option<u32>,
    },
    /// Answers `Effect::Count`.
    Counted {
        generation: u64,
        count: Option<u32>,
        purpose: CountFor,
    },
    /// Answers `Effect::CheckGroup` when no process of the group is left.
    GroupEmpty {
        generation: u64,
    },
    /// Answers `Effect::SpawnInstance`.
    InstanceSpawned {
        generation: u64,
        instance: u32,
        pid: Pid,
        probe_port: Option<u16>,
    },
    /// Answers `Effect::SpawnInstance`.
    InstanceSpawnFailed {
        generation: u64,
        instance: u32,
        reason: String,
    },
    /// One instance of a generation that runs several is ready: its own
    /// `READY=1` (a sender of its process group) or its probe.
    InstanceReady {
        generation: u64,
        instance: u32,
    },
    /// `poll_timeout` has passed.
    Timer,
    /// The agent's re-exec failed: carry on.
    Thaw,
}

/// Why a generation's own restart request started no restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRefusal {
    /// The generation is not the serving one: still starting, draining,
    /// being stopped, or already replaced. Only the generation that serves
    /// speaks for the service.
    NotServing,
    /// The service is stopping, or the agent is upgrading itself.
    ShuttingDown,
    /// A restart of the service is running; a new one may be asked for
    /// once it has ended.
    RestartRunning(RestartId),
    /// The service accepted a request less than the request interval ago;
    /// this one may come again after `wait`.
    TooSoon { wait: Duration },
}

impl fmt::Display for RequestRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestRefusal::NotServing => f.write_str("it is not the serving generation"),
            RequestRefusal::ShuttingDown => f.write_str("the service is stopping"),
            RequestRefusal::RestartRunning(id) => write!(f, "restart {id} is running"),
            RequestRefusal::TooSoon { wait } => write!(
                f,
                "the service accepted a restart request lately; the next is accepted in {} ms",
                wait.as_millis()
            ),
        }
    }
}

/// Why a connection count was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountFor {
    /// Right before the stop signal: the connections it starts draining with.
    Drain,
    /// Right before the SIGKILL at the drain deadline: the connections it cuts.
    Cut,
}

/// Why it matters whether a process is in a generation's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainCheck {
    /// `MAINPID=` named it, sent by `sender`.
    Named { sender: i32 },
    /// The first process exited; the main process it handed over to should
    /// still be there.
    FirstExited(ExitInfo),
}

#[derive(Debug, PartialEq)]
pub enum Effect {
    Emit {
        restart: Option<RestartId>,
        kind: EventKind,
    },
    /// Open a restart report (it emits `restart_started`); answered with
    /// `Input::RestartOpened`. The restart request is accepted with its id.
    OpenRestart {
        reason: Option<String>,
        old: Option<u64>,
        /// The generation that asked for it on the notify socket, if one did.
        requested_by: Option<RestartRequester>,
    },
    /// The restart request is refused.
    Refuse(ErrorBody),
    /// A generation's own restart request (`X_BATON_RESTART=1`) started
    /// nothing: count it, and log it at most once a second.
    RestartRequestRefused {
        requester: RestartRequester,
        refusal: RequestRefusal,
    },
    /// The restart's report names its new generation.
    RecordNewGeneration {
        restart: RestartId,
        generation: u64,
    },
    FinishRestart {
        restart: RestartId,
        outcome: RestartOutcome,
        reason: Option<String>,
        connections_cut: Option<u32>,
    },
    /// Spawn the generation (with a free probe port if asked); answered with
    /// `Input::Spawned` or `Input::SpawnFailed`.
    Spawn {
        generation: u64,
        probe_port: bool,
    },
    /// Probe the generation until it answers, then `Input::Ready`.
    Probe {
        generation: u64,
        port: Option<u16>,
    },
    Signal {
        pgid: Pid,
        signal: Signal,
    },
    Kill {
        pgid: Pid,
    },
    /// Give the ready generation back its normal priority.
    RestorePriority {
        generation: u64,
        pgid: Pid,
    },
    /// Count the group's connections; answered with `Input::Counted`.
    Count {
        generation: u64,
        pgid: Pid,
        purpose: CountFor,
    },
    /// Count the draining generation's connections periodically
    /// (`Input::Connections`) until it is forgotten.
    WatchDrain {
        generation: u64,
        pgid: Pid,
    },
    /// Report the process's exit as `Input::Exited`.
    WatchExit {
        generation: u64,
        pid: Pid,
    },
    /// Is `main` in the group `pgid`? Answered with `Input::MainLocated`.
    LocateMain {
        generation: u64,
        main: Pid,
        pgid: Pid,
        after: MainCheck,
    },
    /// Answered with `Input::GroupEmpty` if no process of the group is left.
    CheckGroup {
        generation: u64,
        pgid: Pid,
    },
    /// Route the group's notify messages to the generation (an adopted one;
    /// a spawned one is routed as it is spawned).
    Route {
        generation: u64,
        pgid: Pid,
    },
    /// The generation is gone: stop its tasks, stop routing its messages.
    Forget {
        generation: u64,
        pgid: Pid,
    },
    /// Keep the fds that came with the notify message under this name.
    StoreFds {
        name: String,
    },
    RemoveFds {
        name: String,
    },
    /// Close the fds that came with the notify message (`BARRIER=1`).
    CloseFds,
    /// Give generation `to` and its predecessor `from` the two ends of a
    /// handoff pair (`PREDECESSOR=`, then `SUCCESSOR=`), and record
    /// `handoff_brokered` once both are sent. Comes before `from`'s stop
    /// signal; a failure leaves a plain drain.
    BrokerHandoff {
        restart: Option<RestartId>,
        from: u64,
        to: u64,
    },
    /// A channel message that changed nothing (a `HANDED_OVER=` from a
    /// generation that is not draining for a restart): count it, and log it
    /// at most once a second.
    ChannelMessageIgnored {
        generation: u64,
        message: ChannelMessage,
        why: &'static str,
    },
    /// Feed this input back through the service's queue, after what is
    /// already waiting there.
    Requeue(Input),
    /// Spawn one instance of a generation that runs several, told
    /// `BATON_INSTANCE=instance` and `BATON_INSTANCES=instances`, in the
    /// generation's cgroup; answered with `Input::InstanceSpawned` or
    /// `Input::InstanceSpawnFailed`.
    SpawnInstance {
        generation: u64,
        instance: u32,
        instances: u32,
        probe_port: bool,
    },
    /// Probe one instance until it answers, then `Input::InstanceReady`.
    ProbeInstance {
        generation: u64,
        instance: u32,
        port: Option<u16>,
    },
    /// Signal one instance's process group, and nothing else of its
    /// generation (the others serve on).
    SignalInstance {
        pgid: Pid,
        signal: Signal,
    },
    /// SIGKILL one instance's process group.
    KillInstance {
        pgid: Pid,
    },
    /// One instance's process exited and another may take its place: stop
    /// routing its process group's messages (the generation's cgroup and
    /// its other instances stay).
    ForgetInstance {
        pgid: Pid,
    },
    /// Signal every instance of a generation that runs several, once each:
    /// their process groups, then whatever of the generation left them.
    SignalInstances {
        pgids: Vec<Pid>,
        signal: Signal,
    },
}
