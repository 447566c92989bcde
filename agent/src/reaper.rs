//! Reaps every child of the agent and tells whoever spawned it how it ended.
//!
//! One SIGCHLD-driven loop calls `waitpid(-1)`, so no zombie is left behind,
//! including workers that a generation forked and abandoned (the agent is a
//! child subreaper, so they are re-parented to it). A pid is registered while
//! the registry lock is held across the fork: the child cannot be reaped
//! before its watcher exists.

use crate::sys::{self, SpawnError, SpawnSpec};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(Signal),
    /// A process the agent recovered from a killed predecessor: not its
    /// child, so it sees the exit (through a pidfd) but not the status.
    Unknown,
}

impl ExitInfo {
    pub fn success(self) -> bool {
        self == ExitInfo::Code(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Code(code) => write!(f, "exited with status {code}"),
            ExitInfo::Signal(signal) => write!(f, "killed by {}", signal.as_str()),
            ExitInfo::Unknown => write!(f, "exited (status unknown: not the agent's child)"),
        }
    }
}

pub type ExitWatch = watch::Receiver<Option<ExitInfo>>;

#[derive(Default)]
pub struct Reaper {
    children: Mutex<HashMap<Pid, watch::Sender<Option<ExitInfo>>>>,
}

impl Reaper {
    /// Starts the reaping loop; must run inside a tokio runtime.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(%errno, "could not become a child subreaper; orphaned workers of a generation will not be reaped by the agent");
        }
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let weak = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                match weak.upgrade() {
                    Some(reaper) => reaper.reap_all(),
                    None => break,
                }
            }
        });
        Ok(reaper)
    }

    /// Forks and execs `spec`, returning its pid and a watch that receives its
    /// exit. `on_forked` runs right after the fork, before the child can exec
    /// and talk to anyone: the place to make its pid known. Blocks the calling
    /// thread until the exec is confirmed (well under a millisecond), so async
    /// callers wrap it in `spawn_blocking`.
    pub fn spawn(
        &self,
        spec: &SpawnSpec<'_>,
        on_forked: impl FnOnce(Pid),
    ) -> Result<(Pid, ExitWatch), SpawnError> {
        let (sender, receiver) = watch::channel(None);
        let forked = {
            let mut children = self.children.lock().expect("reaper lock");
            let forked = sys::fork_exec(spec)?;
            children.insert(forked.pid, sender);
            forked
        };
        on_forked(forked.pid);
        // A failed exec leaves a child that exits at once; the reaper collects it.
        let pid = forked.wait_exec()?;
        Ok((pid, receiver))
    }

    /// Watches a child that an earlier image of this process started. One
    /// that already exited is reported by the next [`Reaper::reap_all`].
    pub fn adopt(&self, pid: Pid) -> ExitWatch {
        let (sender, receiver) = watch::channel(None);
        self.children
            .lock()
            .expect("reaper lock")
            .insert(pid, sender);
        receiver
    }

    /// Collects every child that has exited; runs on each SIGCHLD.
    pub fn reap_all(&self) {
        let mut children = self.children.lock().expect("reaper lock");
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    Self::deliver(&mut children, pid, ExitInfo::Code(code))
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    Self::deliver(&mut children, pid, ExitInfo::Signal(signal))
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::error!(%errno, "waitpid failed");
                    break;
                }
            }
        }
    }

    fn deliver(
        children: &mut HashMap<Pid, watch::Sender<Option<ExitInfo>>>,
        pid: Pid,
        exit: ExitInfo,
    ) {
        match children.remove(&pid) {
            Some(sender) => {
                sender.send_replace(Some(exit));
            }
            None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphaned process"),
        }
    }
}

/// Waits until the watched process has exited.
pub async fn wait_exit(mut watch: ExitWatch) -> ExitInfo {
    loop {
        if let Some(exit) = *watch.borrow_and_update() {
            return exit;
        }
        if watch.changed().await.is_err() {
            // The reaper is gone with the runtime; nothing will report again.
            return watch.borrow().unwrap_or(ExitInfo::Code(-1));
        }
    }
}
