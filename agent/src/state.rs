//! The agent's state file: what it runs, kept in its runtime folder (next to
//! the control socket) so that an agent started after this one was killed
//! can take over the generations it left running (`recovery.rs`).
//!
//! Each service task hands over a snapshot of its state when it changes (a
//! generation spawned, ready, draining, gone; a restart begun or finished);
//! one writer task writes the whole file, atomically (a temporary file and a
//! rename; mode 0600), coalescing changes that come faster than it writes.
//! Each service's part is serialized once, when it changes, so a change
//! costs a copy of the others, not their serialization: with a thousand
//! services that was most of a restart's time. Nothing per connection ever reaches it. A clean stop removes the
//! file: no state file means nothing was left running.

use crate::handover::ServiceHandover;
use anyhow::Context;
use baton_proto::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const VERSION: u32 = 1;
const FILE_NAME: &str = "agent-state.json";

/// The file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    pub version: u32,
    /// The agent that wrote it, and when that process started (clock ticks
    /// since boot), so a reused pid is not taken for it.
    pub agent_pid: i32,
    pub agent_start_time: Option<u64>,
    /// Its lifetime, as it told the server.
    pub boot_id: String,
    pub written_at: UnixMillis,
    pub services: Vec<ServiceHandover>,
}

/// Where the agent whose control socket is `control_socket` keeps its state.
pub fn path_for(control_socket: &Path) -> PathBuf {
    control_socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join(FILE_NAME)
}

impl AgentState {
    /// The state a previous agent left, if any.
    pub fn load(path: &Path) -> anyhow::Result<Option<AgentState>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: AgentState = serde_json::from_str(&text)
            .with_context(|| format!("unreadable state file {}", path.display()))?;
        anyhow::ensure!(
            state.version == VERSION,
            "state file {} has version {}, expected {VERSION}",
            path.display(),
            state.version
        );
        Ok(Some(state))
    }
}

/// Writes the file atomically: never a half-written file, even if the agent
/// is killed while writing. Not synced to disk: the file is for an agent
/// that dies while the machine runs on (the page cache outlives a killed
/// process); after a machine crash every generation it names is gone too,
/// and the start-time check refuses their reused pids. A sync per change
/// made restarting 1,000 services one after another twice as slow.
pub fn write_atomically(path: &Path, state: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&json)?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// The file as written: [`AgentState`] with each service as it was
/// serialized when it changed.
#[derive(Serialize)]
struct Written<'a> {
    version: u32,
    agent_pid: i32,
    agent_start_time: Option<u64>,
    boot_id: &'a str,
    written_at: UnixMillis,
    services: Vec<&'a RawValue>,
}

/// Collects the services' snapshots and writes them.
pub struct StateWriter {
    path: PathBuf,
    agent_pid: i32,
    agent_start_time: Option<u64>,
    boot_id: String,
    /// Each service's part of the file, serialized when it changed.
    services: Mutex<BTreeMap<String, Arc<RawValue>>>,
    changed: Notify,
    /// Held while writing; `None` once the file is removed for good.
    file: Mutex<Option<()>>,
}

impl StateWriter {
    pub fn new(path: PathBuf, boot_id: String) -> StateWriter {
        let agent_pid = std::process::id() as i32;
        StateWriter {
            path,
            agent_pid,
            agent_start_time: crate::recovery::start_time(agent_pid),
            boot_id,
            services: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            file: Mutex::new(Some(())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A service's state changed.
    pub fn update(&self, snapshot: ServiceHandover) {
        let serialized = match serde_json::value::to_raw_value(&snapshot) {
            Ok(serialized) => Arc::from(serialized),
            Err(e) => {
                tracing::warn!(service = %snapshot.name, error = %e, "could not serialize a service's state");
                return;
            }
        };
        self.services
            .lock()
            .expect("state lock")
            .insert(snapshot.name, serialized);
        self.changed.notify_one();
    }

    /// A service is gone (removed by a reload, or stopped).
    pub fn forget(&self, service: &str) {
        self.services.lock().expect("state lock").remove(service);
        self.changed.notify_one();
    }

    /// Writes the file on every change, until the agent stops.
    pub async fn run(self: std::sync::Arc<Self>) {
        loop {
            self.changed.notified().await;
            let writer = self.clone();
            let written = tokio::task::spawn_blocking(move || writer.write_now()).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(file = %self.path.display(), error = %e, "could not write the state file");
            }
        }
    }

    /// Writes what the services last reported.
    pub fn write_now(&self) -> std::io::Result<()> {
        let file = self.file.lock().expect("state file lock");
        if file.is_none() {
            return Ok(());
        }
        // Taken apart from the lock: services update theirs meanwhile.
        let services: Vec<Arc<RawValue>> = self
            .services
            .lock()
            .expect("state lock")
            .values()
            .cloned()
            .collect();
        let state = Written {
            version: VERSION,
            agent_pid: self.agent_pid,
            agent_start_time: self.agent_start_time,
            boot_id: &self.boot_id,
            written_at: baton_proto::now_millis(),
            services: services.iter().map(|s| &**s).collect(),
        };
        write_atomically(&self.path, &state)
    }

    /// The agent stopped cleanly: nothing is left to recover.
    pub fn remove(&self) {
        let mut file = self.file.lock().expect("state file lock");
        *file = None;
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.path.display(), error = %e, "could not remove the state file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::{
        GenerationHandover, HandedPhase, RestartHandover, ServiceHandover, SocketHandover,
    };
    use std::os::unix::fs::PermissionsExt;

    fn service() -> ServiceHandover {
        ServiceHandover {
            name: "web".into(),
            sockets: vec![SocketHandover {
                name: "http".into(),
                configured: "tcp://127.0.0.1:8080".into(),
                fd: 9,
                inode: Some(123_456),
            }],
            generations: vec![
                GenerationHandover {
                    output: None,
                    number: 3,
                    pid: 4100,
                    main_pid: Some(4101),
                    phase: HandedPhase::Draining { left_ms: 0 },
                    started_at: 1_000,
                    ready_at: Some(1_500),
                    status_text: Some("serving".into()),
                    start_time: Some(777),
                    cgroup: Some("/baton/agent-12/web.3".into()),
                    deadline_at: Some(31_500),
                    channel_fd: Some(11),
                    accepts_handoff: false,
                    instances: Vec::new(),
                    program: None,
                },
                GenerationHandover {
                    output: None,
                    number: 4,
                    pid: 4200,
                    main_pid: None,
                    phase: HandedPhase::Ready,
                    started_at: 2_000,
                    ready_at: Some(2_500),
                    status_text: None,
                    start_time: Some(888),
                    cgroup: None,
                    deadline_at: None,
                    channel_fd: None,
                    accepts_handoff: true,
                    instances: Vec::new(),
                    program: None,
                },
            ],
            current: Some(4),
            next_generation: 5,
            consecutive_crashes: 0,
            fd_store: Vec::new(),
            restart: Some(RestartHandover {
                id: 2,
                reason: Some("deploy".into()),
                started_at: 1_900,
                old: Some(3),
                new: Some(4),
                verdict: None,
                connections_cut: None,
                overlap_left_ms: Some(1_200),
                overlap_until_at: Some(3_700),
            }),
            last_report: None,
        }
    }

    #[test]
    fn the_state_file_reads_back_what_was_written_and_only_its_owner_may_read_it() {
        let folder = tempfile::tempdir().unwrap();
        let path = path_for(&folder.path().join("agent.sock"));
        assert_eq!(AgentState::load(&path).unwrap(), None, "no file, no state");
        let writer = StateWriter::new(path.clone(), "boot-1".into());
        writer.update(service());
        writer.write_now().unwrap();

        let read = AgentState::load(&path).unwrap().expect("a state");
        assert_eq!(read.agent_pid, std::process::id() as i32);
        assert_eq!(
            read.agent_start_time,
            crate::recovery::start_time(read.agent_pid)
        );
        assert!(read.agent_start_time.is_some());
        assert_eq!(read.boot_id, "boot-1");
        assert_eq!(read.services, vec![service()]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!path.with_extension("json.tmp").exists());

        writer.forget("web");
        writer.write_now().unwrap();
        assert!(
            AgentState::load(&path)
                .unwrap()
                .unwrap()
                .services
                .is_empty()
        );
        writer.remove();
        assert!(!path.exists());
        // Removed for good: a late change writes nothing.
        writer.update(service());
        writer.write_now().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_state_file_of_another_version_or_garbled_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join(FILE_NAME);
        std::fs::write(&path, "{\"version\":").unwrap();
        assert!(AgentState::load(&path).is_err());
        let mut state = AgentState {
            version: VERSION + 1,
            agent_pid: 1,
            agent_start_time: None,
            boot_id: String::new(),
            written_at: 0,
            services: Vec::new(),
        };
        write_atomically(&path, &state).unwrap();
        assert!(AgentState::load(&path).is_err());
        state.version = VERSION;
        write_atomically(&path, &state).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), Some(state));
    }
}
