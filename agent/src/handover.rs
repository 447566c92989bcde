//! The agent's own upgrade: on SIGUSR2 it re-executes its binary in place.
//! The pid stays the same, so every generation stays its child; the listening
//! sockets, the control and notify sockets and the fd store are inherited by
//! number; everything else the new image needs is in one environment variable.
//! No socket is ever closed, so no client notices.

use baton_proto::UnixMillis;
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceHandover {
    pub name: String,
    pub sockets: Vec<SocketHandover>,
    pub generations: Vec<GenerationHandover>,
    pub current: Option<u64>,
    pub next_generation: u64,
    pub consecutive_crashes: u32,
    pub fd_store: Vec<(String, RawFd)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketHandover {
    pub name: String,
    /// As configured, so a changed configuration rebinds instead of adopting.
    pub configured: String,
    pub fd: RawFd,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HandedPhase {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

impl Handover {
    pub fn new(control_fd: RawFd, notify_fd: RawFd, services: Vec<ServiceHandover>) -> Self {
        Handover {
            version: VERSION,
            control_fd,
            notify_fd,
            services,
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
        }
        fds
    }
}
