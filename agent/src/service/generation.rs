//! One generation as the service core sees it, and its lifecycle.

use crate::reaper::ExitInfo;
use baton_proto::{GenerationInfo, GenerationState, InstanceInfo, InstanceState, UnixMillis};
use nix::unistd::Pid;
use std::time::Instant;

/// Where a generation is in its life. Every deadline the service acts on
/// lives in the phase it belongs to.
///
/// ```text
/// Starting ──ready──▶ Ready ──next one ready──▶ Draining ──drain_timeout──▶ Stopping (SIGKILLed)
///    │ not ready in time, superseded, stop         │ stop                       ▲
///    └──────────────────────────────────────▶ Stopping ◀──────────────────────┘
/// any phase ──main process reaped──▶ Exited ──process group empty──▶ removed
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lifecycle {
    Starting {
        deadline: Instant,
    },
    Ready,
    Draining {
        deadline: Instant,
    },
    /// Stopped without draining (or killed at its drain deadline): SIGKILL
    /// to the process group at `kill_at`.
    Stopping {
        kill_at: Instant,
    },
    /// The main process is reaped; the generation is gone once its process
    /// group is empty too. Processes left behind still meet the deadline of
    /// the phase it exited in.
    Exited {
        exit: ExitInfo,
        leftovers: Leftovers,
    },
}

/// What happens to the processes an exited generation left behind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Leftovers {
    /// It was draining: at the drain deadline their connections are counted
    /// as cut and the group is killed.
    Drain { deadline: Instant },
    /// The group is killed at `at`.
    Kill { at: Instant },
}

impl Lifecycle {
    pub fn is_starting(&self) -> bool {
        matches!(self, Lifecycle::Starting { .. })
    }

    pub fn is_exited(&self) -> bool {
        matches!(self, Lifecycle::Exited { .. })
    }

    /// When this phase next wants the service to act, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match *self {
            Lifecycle::Starting { deadline } | Lifecycle::Draining { deadline } => Some(deadline),
            Lifecycle::Stopping { kill_at } => Some(kill_at),
            Lifecycle::Exited { leftovers, .. } => match leftovers {
                Leftovers::Drain { deadline } => Some(deadline),
                Leftovers::Kill { at } => Some(at),
            },
            Lifecycle::Ready => None,
        }
    }
}

pub struct Generation {
    pub number: u64,
    /// The first process, leader of the generation's process group.
    pub pid: Pid,
    pub lifecycle: Lifecycle,
    pub started_at: UnixMillis,
    pub spawned: Instant,
    pub ready_at: Option<UnixMillis>,
    pub ready_instant: Option<Instant>,
    pub status_text: Option<String>,
    pub connections: Option<u32>,
    /// The process `MAINPID=` named, when not `pid` (a service that forks its
    /// real server and lets the first process exit). Its exit, not `pid`'s,
    /// is the generation's main exit.
    pub main_pid: Option<Pid>,
    /// It has a channel to the agent (`BATON_CHANNEL_FD`): none after a
    /// killed agent was recovered, whose ends died with it.
    pub channel: bool,
    /// It said `HANDOFF=1` on its channel: it takes connections from its
    /// predecessor.
    pub accepts_handoff: bool,
    /// Its drain, once it began in this agent.
    pub drain: Option<DrainTally>,
    /// Its processes when the service runs several (`instances = N`), by
    /// index; empty for one. `pid` is then the first instance's process
    /// (the one its cgroup and connections are found by).
    pub instances: Vec<Instance>,
    /// Processes of instances replaced while still draining (a rollback
    /// started their slots again): watched until they exit, killed at
    /// their deadline.
    pub retired: Vec<(Pid, Instant)>,
}

/// One process of a generation that runs several.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub index: u32,
    pub pid: Option<Pid>,
    pub phase: InstancePhase,
    pub ready_at: Option<UnixMillis>,
    pub ready_instant: Option<Instant>,
    /// How often it was started again after it exited on its own.
    pub restarts: u32,
    /// Exits in a row without staying up `CRASH_FORGIVEN_AFTER`: its backoff.
    pub crashes: u32,
}

/// Where one instance is.
///
/// ```text
/// Waiting ──its batch──▶ Spawning ──▶ Starting ──ready──▶ Ready ──▶ Draining ──▶ Stopping (SIGKILLed)
///                           ▲            │ exited            │ exited
///                           └─ Backoff ◀─┴───────────────────┘ (serving generation)
/// any ──exited, not started again──▶ Exited
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InstancePhase {
    Waiting,
    /// Asked for with `Effect::SpawnInstance`; its answer has not come.
    Spawning,
    Starting {
        deadline: Instant,
    },
    Ready,
    Draining {
        deadline: Instant,
    },
    Stopping {
        kill_at: Instant,
    },
    Backoff {
        until: Instant,
    },
    Exited,
}

impl InstancePhase {
    /// A process runs (or is being started) in this slot.
    pub fn alive(&self) -> bool {
        matches!(
            self,
            InstancePhase::Spawning
                | InstancePhase::Starting { .. }
                | InstancePhase::Ready
                | InstancePhase::Draining { .. }
                | InstancePhase::Stopping { .. }
        )
    }

    pub fn deadline(&self) -> Option<Instant> {
        match *self {
            InstancePhase::Starting { deadline } | InstancePhase::Draining { deadline } => {
                Some(deadline)
            }
            InstancePhase::Stopping { kill_at } => Some(kill_at),
            InstancePhase::Backoff { until } => Some(until),
            _ => None,
        }
    }

    pub fn state(&self) -> InstanceState {
        match self {
            InstancePhase::Waiting => InstanceState::Waiting,
            InstancePhase::Spawning | InstancePhase::Starting { .. } => InstanceState::Starting,
            InstancePhase::Ready => InstanceState::Ready,
            InstancePhase::Draining { .. } => InstanceState::Draining,
            InstancePhase::Stopping { .. } => InstanceState::Stopping,
            InstancePhase::Backoff { .. } => InstanceState::Backoff,
            InstancePhase::Exited => InstanceState::Exited,
        }
    }
}

impl Instance {
    pub fn new(index: u32) -> Self {
        Instance {
            index,
            pid: None,
            phase: InstancePhase::Waiting,
            ready_at: None,
            ready_instant: None,
            restarts: 0,
            crashes: 0,
        }
    }

    pub fn info(&self) -> InstanceInfo {
        InstanceInfo {
            index: self.index,
            pid: self
                .pid
                .filter(|_| self.phase.alive())
                .map(|p| p.as_raw() as u32),
            state: self.phase.state(),
            ready_at: self.ready_at,
            restarts: self.restarts,
        }
    }
}

/// What becomes of the connections of a draining generation, for its
/// `drain_finished` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTally {
    /// Counted right before the stop signal (0 when the count failed).
    pub began_with: u32,
    /// Its `HANDED_OVER=`, once reported.
    pub handed_over: Option<u32>,
    /// `drain_finished` was recorded.
    pub finished: bool,
}

impl DrainTally {
    pub fn new(began_with: Option<u32>) -> Self {
        DrainTally {
            began_with: began_with.unwrap_or(0),
            handed_over: None,
            finished: false,
        }
    }

    /// The tally once the drain ended with `cut` connections still open
    /// (0 when the generation exited): what was neither handed over nor cut
    /// was drained.
    pub fn finish(&mut self, cut: u32) -> baton_proto::ConnectionTally {
        self.finished = true;
        let handed_over = self.handed_over.unwrap_or(0);
        baton_proto::ConnectionTally {
            handed_over,
            drained: self
                .began_with
                .saturating_sub(handed_over)
                .saturating_sub(cut),
            cut,
        }
    }
}

impl Generation {
    /// An exited generation whose processes live on (workers, or a daemon
    /// that left the process group) is still draining or stopping, and shown
    /// until the last of them is gone. (One whose group is empty is removed
    /// in the same step its exit is handled, so it is never shown.)
    pub fn state(&self) -> GenerationState {
        match self.lifecycle {
            Lifecycle::Starting { .. } => GenerationState::Starting,
            Lifecycle::Ready => GenerationState::Ready,
            Lifecycle::Draining { .. } => GenerationState::Draining,
            Lifecycle::Stopping { .. } => GenerationState::Stopping,
            Lifecycle::Exited { leftovers, .. } => match leftovers {
                Leftovers::Drain { .. } => GenerationState::Draining,
                Leftovers::Kill { .. } => GenerationState::Stopping,
            },
        }
    }

    pub fn info(&self) -> GenerationInfo {
        GenerationInfo {
            generation: self.number,
            pid: self.pid.as_raw() as u32,
            main_pid: self.main_pid.map(|p| p.as_raw() as u32),
            state: self.state(),
            started_at: self.started_at,
            ready_at: self.ready_at,
            status_text: self.status_text.clone(),
            connections: self.connections,
            memory_bytes: None,
            memory_source: None,
            cpu_usec: None,
            cpu_source: None,
            instances: self.instances.iter().map(Instance::info).collect(),
            program: None,
        }
    }

    /// The process whose exit ends the generation.
    pub fn main(&self) -> Pid {
        self.main_pid.unwrap_or(self.pid)
    }
}
