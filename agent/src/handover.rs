//! The agent's own upgrade: on SIGUSR2 it re-executes its binary in place.
//! The pid stays the same, so every generation stays its child; the listening
//! sockets, the control and notify sockets and the fd store are inherited by
//! number; everything else the new image needs is in one environment variable.
//! No socket is ever closed, so no client notices.
//!
//! The same description of a service is what the agent keeps in its state
//! file (`state.rs`), so that an agent started after this one was killed can
//! take over what it left running (`recovery.rs`). The fields only the state
//! file needs are optional, so an image without them still reads a handover.

use baton_proto::{RestartId, RestartOutcome, UnixMillis};
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;

pub const ENV: &str = "BATON_AGENT_HANDOVER";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    pub version: u32,
    pub control_fd: RawFd,
    pub notify_fd: RawFd,
    pub services: Vec<ServiceHandover>,
    /// The id the next restart gets: ids go on across an upgrade, so an id
    /// the server or a CI log holds never names a second restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart: Option<RestartId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceHandover {
    pub name: String,
    pub sockets: Vec<SocketHandover>,
    pub generations: Vec<GenerationHandover>,
    pub current: Option<u64>,
    pub next_generation: u64,
    pub consecutive_crashes: u32,
    pub fd_store: Vec<(String, RawFd)>,
    /// The restart in progress (in an upgrade only one in its overlap, the
    /// only part of a restart an upgrade is not refused in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartHandover>,
    /// The service's last restart report, so `LAST RESTART` and `baton show`
    /// survive an upgrade (the upgrade only: the state file stays small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<baton_proto::RestartReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SocketHandover {
    pub name: String,
    /// As configured, so a changed configuration rebinds instead of adopting.
    pub configured: String,
    /// In the state file, the dead agent's number: meaningless to anyone else.
    pub fd: RawFd,
    /// The socket's inode, so a socket taken from a surviving generation is
    /// known to be the very one (the state file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartHandover {
    pub id: RestartId,
    pub reason: Option<String>,
    pub started_at: UnixMillis,
    /// The generation that served when it began.
    pub old: Option<u64>,
    /// Its new generation, once spawned.
    pub new: Option<u64>,
    /// An outcome already decided (a rollback waiting for the new
    /// generation to be gone).
    pub verdict: Option<(RestartOutcome, Option<String>)>,
    pub connections_cut: Option<u32>,
    /// Its new generation is ready and the old one serves beside it for
    /// this much longer (`min_overlap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_left_ms: Option<u64>,
    /// The wall-clock time the overlap ends, which outlives the agent's
    /// monotonic clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_until_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HandedPhase {
    /// Not ready yet, with this much of its ready timeout left (the state
    /// file only: an upgrade is refused while a generation starts).
    Starting {
        left_ms: u64,
    },
    Ready,
    /// Draining with this much of its drain timeout left.
    Draining {
        left_ms: u64,
    },
    /// Being stopped; SIGKILL after this long.
    Stopping {
        left_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationHandover {
    pub number: u64,
    pub pid: i32,
    /// `MAINPID=` of the generation, when it named another process.
    #[serde(default)]
    pub main_pid: Option<i32>,
    pub phase: HandedPhase,
    pub started_at: UnixMillis,
    pub ready_at: Option<UnixMillis>,
    pub status_text: Option<String>,
    /// When the process started, in clock ticks since boot (field 22 of
    /// `/proc/PID/stat`): a pid reused by another process has another, so
    /// it is never taken for the generation (the state file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// Its cgroup, as `/proc/PID/cgroup` names it (the state file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The wall-clock time of its phase's deadline (ready timeout, drain
    /// deadline, SIGKILL), which outlives the agent's monotonic clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<UnixMillis>,
    /// The agent's end of the generation's channel (`channel.rs`), passed
    /// across the upgrade so the next image still brokers handoffs. In the
    /// state file it is the dead agent's number, and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_fd: Option<RawFd>,
    /// What it runs (`service/versions.rs`), so an upgraded or recovered
    /// agent still shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<baton_proto::Program>,
    /// It said `HANDOFF=1` on its channel, so a restart carried across an
    /// upgrade in its overlap still brokers the handoff.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepts_handoff: bool,
    /// Its instances, when it runs several (`instances = N`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceHandover>,
    /// The agent's read ends of the generation's stdout and stderr
    /// (`output/capture.rs`). After a killed agent the fd numbers mean
    /// nothing; the inodes find the pipes in the generation's own fds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputHandover>,
}

impl GenerationHandover {
    /// The read ends of its output: the generation's, then those of each
    /// instance with pipes of its own.
    pub fn outputs(&self) -> impl Iterator<Item = &OutputHandover> {
        self.output
            .iter()
            .chain(self.instances.iter().filter_map(|i| i.output.as_ref()))
    }
}

/// One instance of a handed-over generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceHandover {
    pub index: u32,
    /// Its process, when one runs (ready, draining or stopping); an instance
    /// without one is started again by the image that adopts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub state: baton_proto::InstanceState,
    /// Time left on its drain or stop deadline.
    #[serde(default)]
    pub left_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<UnixMillis>,
    #[serde(default)]
    pub restarts: u32,
    /// Its output's read ends, when it has pipes of its own (every
    /// instance but the first, whose are the generation's `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputHandover>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputHandover {
    /// Stdout's, then stderr's.
    pub fds: [RawFd; 2],
    pub inodes: [u64; 2],
    /// The start of a line each reader had read when it stopped, so the
    /// next image ends that line whole (the upgrade only).
    #[serde(default, skip_serializing_if = "no_partial")]
    pub partial: [Vec<u8>; 2],
}

fn no_partial(partial: &[Vec<u8>; 2]) -> bool {
    partial.iter().all(Vec::is_empty)
}

impl Handover {
    pub fn new(control_fd: RawFd, notify_fd: RawFd, services: Vec<ServiceHandover>) -> Self {
        Handover {
            version: VERSION,
            control_fd,
            notify_fd,
            services,
            next_restart: None,
        }
    }

    /// The handover left by the previous image, if this process is one.
    pub fn inherited() -> Option<Result<Handover, String>> {
        let text = std::env::var(ENV).ok()?;
        Some(
            serde_json::from_str::<Handover>(&text)
                .map_err(|e| format!("unreadable {ENV}: {e}"))
                .and_then(|h| {
                    if h.version == VERSION {
                        Ok(h)
                    } else {
                        Err(format!(
                            "{ENV} has version {}, expected {VERSION}",
                            h.version
                        ))
                    }
                }),
        )
    }

    /// Every fd the new image must inherit.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.control_fd, self.notify_fd];
        for service in &self.services {
            fds.extend(service.sockets.iter().map(|s| s.fd));
            fds.extend(service.fd_store.iter().map(|(_, fd)| *fd));
            fds.extend(service.generations.iter().filter_map(|g| g.channel_fd));
            fds.extend(
                service
                    .generations
                    .iter()
                    .flat_map(GenerationHandover::outputs)
                    .flat_map(|o| o.fds),
            );
        }
        fds
    }
}
