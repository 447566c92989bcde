//! Every type that crosses a process boundary in baton lives here, and nothing
//! else does. No I/O: the agent, the command line and the server each bring
//! their own transport.
//!
//! The agent's control protocol is newline-delimited JSON over a unix stream
//! socket. The client sends one [`ClientMessage`]; the agent answers with one or
//! more [`AgentMessage`]s (several when the client asked to follow a restart).
//! Every message carries [`PROTOCOL_VERSION`]; an agent refuses a version it
//! does not speak with [`ErrorKind::UnsupportedVersion`] instead of guessing.

pub mod api;
pub mod exit;
pub mod link;
mod name;
mod output;
pub mod program;
pub mod rollout;
pub mod units;

pub use name::{InvalidServiceName, NameProblem, ServiceName};
pub use output::{OutputLine, OutputStream};
pub use program::{NextStart, Program, VersionChange};

use serde::{Deserialize, Serialize};
use std::fmt;

pub const PROTOCOL_VERSION: u32 = 1;

/// Where the agent's control socket is when nothing says otherwise:
/// `$XDG_RUNTIME_DIR/baton/agent.sock`, else `/run/baton/agent.sock`.
pub fn default_agent_socket() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir).join("baton/agent.sock"),
        _ => std::path::PathBuf::from("/run/baton/agent.sock"),
    }
}

/// Milliseconds since the Unix epoch. Wall-clock, for people and for the
/// server's history; durations inside the agent use a monotonic clock.
pub type UnixMillis = u64;

/// The wall clock now. A clock before 1970 reads as 0 rather than failing:
/// these times are shown and stored, never used to decide.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Identifies one restart on one agent. Unique for the agent's lifetime
/// together with [`AgentStatus::boot_id`].
pub type RestartId = u64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientMessage {
    pub version: u32,
    pub request: Request,
}

impl ClientMessage {
    pub fn new(request: Request) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Every service, its generations and its last restart.
    Status,
    /// Start a hot restart of one service. With `follow`, the connection stays
    /// open and receives every event of that restart, then its report.
    Restart {
        service: String,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        reason: Option<String>,
    },
    /// A restart's report, running or finished.
    GetRestart { id: RestartId },
    /// Events with a sequence number greater than `after`, oldest first. With
    /// `follow`, the connection then streams new events as they happen.
    Events {
        #[serde(default)]
        after: u64,
        #[serde(default)]
        follow: bool,
    },
    /// Read the configuration file again and apply it, as SIGHUP does, but
    /// answered: what changed, or why nothing did.
    Reload,
    /// The last `lines` lines a service's generations wrote (of one
    /// generation, or else of the serving one), oldest first, each as a
    /// [`Response::Output`]. With `follow`, the connection then streams new
    /// lines as they are read.
    Logs {
        service: String,
        #[serde(default)]
        generation: Option<u64>,
        #[serde(default = "default_log_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
    },
}

fn default_log_lines() -> usize {
    100
}

/// What a reload changed, by service name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Hot-restarted with their new configuration.
    pub changed: Vec<String>,
    /// Sockets that moved to another service with their address, as
    /// `"old-service/socket -> new-service/socket"`: kept open, not rebound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentMessage {
    pub version: u32,
    #[serde(flatten)]
    pub body: Response,
}

impl AgentMessage {
    pub fn new(body: Response) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            body,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status(AgentStatus),
    /// The restart was accepted and has started.
    RestartAccepted {
        id: RestartId,
    },
    /// One step of a followed restart, or one event of a followed event stream.
    Event(Event),
    /// The report of a restart; when following, this ends the stream.
    Restart(RestartReport),
    Reloaded(ReloadSummary),
    Error(ErrorBody),
    /// One line of a service's output (`Request::Logs`).
    Output(OutputLine),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
    /// For [`ErrorKind::RestartInProgress`]: the restart that is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_restart: Option<RestartId>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    UnsupportedVersion,
    UnknownService,
    UnknownRestart,
    RestartInProgress,
    ShuttingDown,
    /// A reload found the configuration invalid (the message names the file
    /// and line) or could not bind a socket; nothing changed.
    InvalidConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub host: String,
    pub agent_version: String,
    /// Random per agent start, so restart ids of two agent lifetimes are told apart.
    pub boot_id: String,
    pub pid: u32,
    pub started_at: UnixMillis,
    pub services: Vec<ServiceStatus>,
    /// Notify messages from processes of no generation since the agent
    /// started: counted, never stored.
    #[serde(default)]
    pub notify_strangers: u64,
    /// Restart requests (`X_BATON_RESTART=1`) that generations sent on the
    /// notify socket and that started no restart, since the agent started:
    /// from a generation that was not serving, while a restart ran, or
    /// sooner than the service's request interval allows.
    #[serde(default)]
    pub restart_requests_refused: u64,
    /// How the agent knows a generation's processes; `None` from agents
    /// that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_tracking: Option<ProcessTracking>,
    /// Without cgroups: processes left to the agent (their parent died) that
    /// no generation could be traced to. They are not stopped by the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untracked: Vec<UntrackedProcess>,
    /// The agent's link to the server: which of its servers it is linked
    /// to, or trying now. `None` without a `[server]` (and from agents that
    /// do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_link: Option<ServerLink>,
}

/// Where the agent's link to the server stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerLink {
    /// The server linked to, or being tried (one of `urls`).
    pub url: String,
    /// Whether the server welcomed the agent on `url`.
    pub linked: bool,
    /// Since when the link has been up, or since when `url` has been tried.
    pub since: UnixMillis,
    /// Every server of the config, in the order they are tried.
    pub urls: Vec<String>,
}

/// A process that escaped every generation, as the agent found it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UntrackedProcess {
    pub pid: u32,
    /// Its command name (`comm`), at most 15 bytes.
    pub command: String,
}

/// How an agent tells which processes belong to a generation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessTracking {
    /// One cgroup per generation: every process it starts is tracked and
    /// stopped, whatever it does to its session.
    Cgroup,
    /// A session per generation: a process that starts a session of its own
    /// (a daemon) is traced back to its generation by its ancestry or its
    /// `BATON_*` environment; one that also cleared its environment before
    /// its parent died escapes tracking.
    Session,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    pub sockets: Vec<SocketInfo>,
    /// Live generations, newest last: the serving one, and during a restart the
    /// starting or draining one.
    pub generations: Vec<GenerationInfo>,
    /// Crashes since the last generation that stayed up.
    pub consecutive_crashes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_restart: Option<RestartId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<RestartReport>,
    /// Why the service is not running at all: the agent could not have its
    /// socket (a process the agent does not manage holds the address; the
    /// message names it). `baton reload` starts it once that process is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// The program a crash restart would start now, when it is not what the
    /// serving generation runs (a rolled-back build still on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<NextStart>,
}

impl ServiceStatus {
    /// A service in `state` with no sockets, generations or history.
    pub fn new(name: impl Into<String>, state: ServiceState) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            sockets: Vec::new(),
            generations: Vec::new(),
            consecutive_crashes: 0,
            running_restart: None,
            last_restart: None,
            blocked: None,
            next_start: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ServiceState {
    /// The first generation is starting and not ready yet.
    Starting,
    /// A generation is ready and serving.
    Ready,
    /// A hot restart is running.
    Restarting,
    /// The last generation died and the next start waits for its backoff.
    CrashLooping,
    /// No generation runs and none will start on its own.
    Stopped,
}

impl ServiceState {
    pub const ALL: [ServiceState; 5] = [
        ServiceState::Starting,
        ServiceState::Ready,
        ServiceState::Restarting,
        ServiceState::CrashLooping,
        ServiceState::Stopped,
    ];

    /// Its name in JSON and in the API's query strings (`crash_looping`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Ready => "ready",
            ServiceState::Restarting => "restarting",
            ServiceState::CrashLooping => "crash_looping",
            ServiceState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Starting => "starting",
            ServiceState::Ready => "ready",
            ServiceState::Restarting => "restarting",
            ServiceState::CrashLooping => "crash-looping",
            ServiceState::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketInfo {
    pub name: String,
    /// As configured: `tcp://127.0.0.1:8000`, `udp://[::1]:53`, `unix:///run/web.sock`.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerationInfo {
    pub generation: u64,
    /// The process the agent started, leader of the generation's process group.
    pub pid: u32,
    /// The process the generation named as its main one with `MAINPID=`, when
    /// that is not `pid`: its exit is the generation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
    pub state: GenerationState,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub started_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub ready_at: Option<UnixMillis>,
    /// The last `STATUS=` the generation sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    /// Established connections of the generation's process group, from the
    /// kernel's tables; `None` when they could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// Memory the generation's processes use, in bytes: its cgroup's
    /// `memory.current` (page cache and kernel memory included) where the
    /// memory controller is enabled, else the resident sets of its
    /// processes summed (a page shared by two processes counts twice).
    /// Read when a fresh status is asked for; `None` when not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_source: Option<UsageSource>,
    /// CPU time (user and system) the generation has used since it started,
    /// in microseconds: cumulative, so two readings give its rate. From its
    /// cgroup's `cpu.stat` (every process it ever had), else summed over its
    /// live processes (and the children they reaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_source: Option<UsageSource>,
    /// What the generation runs; `None` from agents that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<Program>,
    /// The generation's processes when it runs several on the same sockets
    /// (`instances = N`), by index; empty for a single process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceInfo>,
}

/// The most instances a generation may run (`instances = N`).
pub const MAX_INSTANCES: u32 = 256;

/// One of the processes of a generation that runs several (`instances = N`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceInfo {
    /// Its `BATON_INSTANCE`, from 0.
    pub index: u32,
    /// Its process, leader of its own process group; `None` while none runs
    /// (waiting for its turn in a restart, or for its crash backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub ready_at: Option<UnixMillis>,
    /// How often it was started again after it exited on its own.
    #[serde(default)]
    pub restarts: u32,
}

/// Where one instance of a generation is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum InstanceState {
    /// Not started yet: a restart starts it with its batch.
    Waiting,
    Starting,
    Ready,
    Draining,
    Stopping,
    /// It exited and is started again after its backoff.
    Backoff,
    /// It exited and is not started again (its generation is being replaced
    /// or stopped).
    Exited,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Waiting => "waiting",
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
            InstanceState::Stopping => "stopping",
            InstanceState::Backoff => "backoff",
            InstanceState::Exited => "exited",
        })
    }
}

/// Where a generation's memory or CPU figure was read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum UsageSource {
    /// The generation's cgroup, which counts every process it ever had.
    Cgroup,
    /// The generation's live processes, read one by one from `/proc`.
    Processes,
}

impl fmt::Display for UsageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsageSource::Cgroup => "cgroup",
            UsageSource::Processes => "processes",
        })
    }
}

impl GenerationInfo {
    /// The process to point people at: the main one.
    pub fn main_pid(&self) -> u32 {
        self.main_pid.unwrap_or(self.pid)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GenerationState {
    Starting,
    Ready,
    Draining,
    /// Being stopped without draining (rollback, agent shutdown, removal).
    Stopping,
}

impl fmt::Display for GenerationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GenerationState::Starting => "starting",
            GenerationState::Ready => "ready",
            GenerationState::Draining => "draining",
            GenerationState::Stopping => "stopping",
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RestartOutcome {
    /// The new generation became ready and the old one exited within the drain timeout.
    Succeeded,
    /// The old generation was killed at the drain timeout; `connections_cut` says how many it held.
    Forced,
    /// The new generation never became ready; it was stopped and the old one kept serving.
    RolledBack,
    /// Anything else; `reason` says what.
    Failed,
    /// The agent died during the restart and the agent that recovered its
    /// generations could not finish it: the generation that served before
    /// still serves, the new one was stopped.
    Interrupted,
}

impl RestartOutcome {
    pub const ALL: [RestartOutcome; 5] = [
        RestartOutcome::Succeeded,
        RestartOutcome::Forced,
        RestartOutcome::RolledBack,
        RestartOutcome::Failed,
        RestartOutcome::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartOutcome::Succeeded => "succeeded",
            RestartOutcome::Forced => "forced",
            RestartOutcome::RolledBack => "rolled_back",
            RestartOutcome::Failed => "failed",
            RestartOutcome::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RestartOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RestartOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RestartOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartReport {
    pub id: RestartId,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: UnixMillis,
    /// `None` while the restart runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RestartOutcome>,
    /// Why the outcome is what it is, for anything but `succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    /// The generation that served when the restart began, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_generation: Option<u64>,
    /// Connections of the old generation that were open when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_cut: Option<u32>,
    /// What became of the old generation's connections, once its drain ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionTally>,
    /// Every event of this restart, oldest first.
    pub steps: Vec<Event>,
    /// What the old generation ran and what the new one runs (boxed: a
    /// report is one of the link's frames, kept small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Box<VersionChange>>,
    /// For a restart that did not succeed: the last lines its new
    /// generation wrote (its `output_tail` event's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<OutputLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Increases by one for every event of an agent's lifetime.
    pub seq: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at: UnixMillis,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub restart: Option<RestartId>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Who asked for a restart from inside the service: the serving generation,
/// and the process of it that sent the request (its pid as the kernel
/// reported it, which may be a worker of the generation rather than its
/// first process).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartRequester {
    pub generation: u64,
    pub pid: u32,
}

impl fmt::Display for RestartRequester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {} (pid {})", self.generation, self.pid)
    }
}

/// What became of the connections a draining generation held when it was
/// told to stop: handed over to the next generation (`docs/handoff.md`),
/// finished by the old generation itself, or cut when it was killed at the
/// drain deadline. `drained` is derived: the count when the drain began
/// minus the other two, never below zero.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionTally {
    pub handed_over: u32,
    pub drained: u32,
    pub cut: u32,
}

impl fmt::Display for ConnectionTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} handed over, {} drained, {} cut",
            self.handed_over, self.drained, self.cut
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventKind {
    RestartStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The generation that asked for this restart on the notify socket
        /// (`X_BATON_RESTART=1`); `None` for a restart asked for through
        /// the control socket or the server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<RestartRequester>,
    },
    GenerationSpawned {
        generation: u64,
        pid: u32,
        /// What it runs, as far as known when it started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program: Option<Box<Program>>,
    },
    GenerationReady {
        generation: u64,
        pid: u32,
        /// From spawn to readiness, in microseconds.
        startup_us: u64,
        /// What it runs, with the version it declared before `READY=1`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program: Option<Box<Program>>,
    },
    GenerationStatus {
        generation: u64,
        status: String,
    },
    /// The new generation is ready and the service's `min_overlap` keeps
    /// the old one serving beside it for `overlap_ms` before it is told to
    /// stop.
    OverlapStarted {
        generation: u64,
        old_generation: u64,
        overlap_ms: u64,
    },
    /// The overlap is over: the new generation serves, and the old one is
    /// told to stop next.
    OverlapFinished {
        generation: u64,
        old_generation: u64,
    },
    /// The old generation was sent its stop signal and is draining.
    GenerationDraining {
        generation: u64,
        pid: u32,
        signal: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connections: Option<u32>,
    },
    /// The connection count of a draining generation changed.
    DrainProgress {
        generation: u64,
        connections: u32,
    },
    GenerationKilled {
        generation: u64,
        pid: u32,
        connections_cut: u32,
    },
    GenerationExited {
        generation: u64,
        pid: u32,
        /// `exited with status 0`, `killed by SIGKILL`.
        status: String,
        /// True when the generation died without being asked to stop.
        unexpected: bool,
        /// What it ran, with the version it declared: the only record of
        /// it for a generation that never became ready.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program: Option<Box<Program>>,
    },
    CrashRestartScheduled {
        generation: u64,
        backoff_ms: u64,
        consecutive_crashes: u32,
    },
    /// The agent gave the old and the new generation the two ends of a
    /// private channel to hand connections over on (`docs/handoff.md`),
    /// because the new one declared `HANDOFF=1`; sent before the stop signal.
    HandoffBrokered {
        from_generation: u64,
        to_generation: u64,
    },
    /// The old generation reported how many connections the new one took
    /// (`HANDED_OVER=` on its channel). The service's own count.
    ConnectionsHandedOver {
        from_generation: u64,
        to_generation: u64,
        connections: u32,
    },
    /// The old generation's drain ended (it exited, or was killed at the
    /// deadline): what became of its connections.
    DrainFinished {
        generation: u64,
        handed_over: u32,
        drained: u32,
        cut: u32,
    },
    NotifyIgnored {
        pid: u32,
        message: String,
    },
    RestartFinished {
        outcome: RestartOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// What the old generation ran and what the new one ran (for a
        /// `rolled_back` restart: the version that never became ready).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        versions: Option<Box<VersionChange>>,
    },
    /// The last lines the new generation of a restart that did not succeed
    /// wrote (at most [`OUTPUT_TAIL_LINES`] and [`OUTPUT_TAIL_BYTES`]): why
    /// it failed, in its own words. Just before `restart_finished`.
    OutputTail {
        generation: u64,
        lines: Vec<OutputLine>,
    },
}

/// Lines of a failed generation's output a restart report carries at most.
pub const OUTPUT_TAIL_LINES: usize = 40;
/// Bytes of text those lines hold at most.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::RestartStarted {
                reason: Some(r), ..
            } => write!(f, "restart started ({r})"),
            EventKind::RestartStarted { reason: None, .. } => write!(f, "restart started"),
            EventKind::GenerationSpawned {
                generation,
                pid,
                program,
            } => {
                write!(f, "generation {generation} spawned (pid {pid}")?;
                match program {
                    Some(program) => write!(f, ", {program})"),
                    None => write!(f, ")"),
                }
            }
            EventKind::GenerationReady {
                generation,
                pid,
                startup_us,
                program,
            } => {
                write!(
                    f,
                    "generation {generation} ready (pid {pid}, after {:.1} ms",
                    *startup_us as f64 / 1000.0
                )?;
                match program {
                    Some(program) => write!(f, ", {program})"),
                    None => write!(f, ")"),
                }
            }
            EventKind::GenerationStatus { generation, status } => {
                write!(f, "generation {generation} status: {status}")
            }
            EventKind::OverlapStarted {
                generation,
                old_generation,
                overlap_ms,
            } => write!(
                f,
                "generation {old_generation} keeps serving beside generation {generation} for {overlap_ms} ms (min_overlap)"
            ),
            EventKind::OverlapFinished {
                generation,
                old_generation,
            } => write!(
                f,
                "overlap over: generation {generation} takes over from generation {old_generation}"
            ),
            EventKind::GenerationDraining {
                generation,
                pid,
                signal,
                connections,
            } => {
                write!(f, "generation {generation} draining (pid {pid}, {signal}")?;
                match connections {
                    Some(n) => write!(f, ", {n} connections)"),
                    None => write!(f, ")"),
                }
            }
            EventKind::DrainProgress {
                generation,
                connections,
            } => write!(f, "generation {generation}: {connections} connections left"),
            EventKind::GenerationKilled {
                generation,
                pid,
                connections_cut,
            } => write!(
                f,
                "generation {generation} killed at the drain deadline (pid {pid}, {connections_cut} connections cut)"
            ),
            EventKind::GenerationExited {
                generation,
                pid,
                status,
                unexpected,
                ..
            } => {
                let how = if *unexpected { "died" } else { "exited" };
                write!(f, "generation {generation} {how} (pid {pid}, {status})")
            }
            EventKind::CrashRestartScheduled {
                generation,
                backoff_ms,
                consecutive_crashes,
            } => write!(
                f,
                "generation {generation} crashed ({consecutive_crashes} in a row); next start in {backoff_ms} ms"
            ),
            EventKind::HandoffBrokered {
                from_generation,
                to_generation,
            } => write!(
                f,
                "generation {from_generation} may hand its connections over to generation {to_generation}"
            ),
            EventKind::ConnectionsHandedOver {
                from_generation,
                to_generation,
                connections,
            } => write!(
                f,
                "generation {from_generation} handed {connections} connections over to generation {to_generation}"
            ),
            EventKind::DrainFinished {
                generation,
                handed_over,
                drained,
                cut,
            } => write!(
                f,
                "generation {generation} drained: {handed_over} connections handed over, {drained} drained, {cut} cut"
            ),
            EventKind::NotifyIgnored { pid, message } => {
                write!(f, "ignored notify message from pid {pid}: {message}")
            }
            EventKind::RestartFinished {
                outcome,
                reason,
                versions,
            } => {
                write!(f, "restart {outcome}")?;
                if let Some(versions) = versions {
                    write!(f, " ({})", versions.arrow())?;
                }
                match reason {
                    Some(r) => write!(f, ": {r}"),
                    None => Ok(()),
                }
            }
            EventKind::OutputTail { generation, lines } => {
                write!(f, "generation {generation} wrote last:")?;
                for line in lines {
                    write!(f, "\n    [{}] {}", line.stream.as_str(), line.text)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_stable() {
        let msg = ClientMessage::new(Request::Restart {
            service: "web".into(),
            follow: true,
            reason: None,
        });
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"request":{"type":"restart","service":"web","follow":true,"reason":null}}"#
        );
        let minimal: ClientMessage =
            serde_json::from_str(r#"{"version":1,"request":{"type":"restart","service":"web"}}"#)
                .unwrap();
        assert_eq!(
            minimal.request,
            Request::Restart {
                service: "web".into(),
                follow: false,
                reason: None
            }
        );
    }

    #[test]
    fn events_round_trip_with_flat_tags() {
        let event = Event {
            seq: 7,
            at: 1_700_000_000_000,
            service: "web".into(),
            restart: Some(3),
            kind: EventKind::DrainProgress {
                generation: 2,
                connections: 5,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "drain_progress");
        assert_eq!(json["connections"], 5);
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn who_asked_for_a_restart_is_on_its_started_event_only_when_a_generation_did() {
        let asked = EventKind::RestartStarted {
            reason: Some("requested by generation 4 (pid 1234): SIGUSR2".into()),
            requested_by: Some(RestartRequester {
                generation: 4,
                pid: 1234,
            }),
        };
        let json = serde_json::to_value(&asked).unwrap();
        assert_eq!(json["event"], "restart_started");
        assert_eq!(
            json["requested_by"],
            serde_json::json!({"generation": 4, "pid": 1234})
        );
        assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), asked);
        // Absent from the wire otherwise, and not needed to read an event
        // from an agent that does not know the field.
        let plain = serde_json::to_value(EventKind::RestartStarted {
            reason: None,
            requested_by: None,
        })
        .unwrap();
        assert_eq!(plain, serde_json::json!({"event": "restart_started"}));
        assert_eq!(
            serde_json::from_value::<EventKind>(plain).unwrap(),
            EventKind::RestartStarted {
                reason: None,
                requested_by: None
            }
        );
    }

    #[test]
    fn outcomes_parse_from_their_names() {
        for outcome in RestartOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<RestartOutcome>(), Ok(outcome));
        }
        assert!("success".parse::<RestartOutcome>().is_err());
    }
}
