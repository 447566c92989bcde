//! Bodies of the server's REST API, shared by the server and the command
//! line. Times are [`UnixMillis`]; ids are the server's, except
//! `agent_restart_id`, which is the agent's own [`RestartId`].

use crate::{
    Event, GenerationInfo, RestartId, RestartOutcome, ServiceState, ServiceStatus, UnixMillis,
};
use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": "..."}`, plus the running restart's id on a `409`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_id: Option<u64>,
}

/// Optional body of `POST /services/{name}/restart`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RestartRequest {
    pub reason: Option<String>,
    /// Restrict the restart to these hosts; every host that runs the service when absent.
    pub hosts: Option<Vec<String>>,
    /// How many hosts restart at the same time; 1 when absent.
    pub max_parallel: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestartState {
    Running,
    Finished,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostRestartState {
    /// Not started yet.
    Pending,
    Running,
    Finished,
    /// Never started because a host before it did not succeed.
    Skipped,
}

/// A restart of one service across hosts, as `GET /restarts/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restart {
    pub id: u64,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The name of the token that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub state: RestartState,
    /// `succeeded` only when every host succeeded; otherwise the outcome of the
    /// first host that did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RestartOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    pub max_parallel: u32,
    pub created_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
    /// In the order they restart (by host name).
    pub hosts: Vec<RestartHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartHost {
    pub host: String,
    pub state: HostRestartState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RestartOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    /// The agent's id of this restart, once the agent has accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restart_id: Option<RestartId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
    /// The agent's events of this restart, oldest first. Empty in lists.
    #[serde(default)]
    pub steps: Vec<Event>,
}

/// `GET /restarts`: newest first; pass `next_before` as `before` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartPage {
    pub restarts: Vec<Restart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// One service across the fleet, as `GET /services/{name}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub name: String,
    pub hosts: Vec<ServiceOnHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceOnHost {
    pub host: String,
    /// False when the host's agent is not connected; the rest is what it last reported.
    pub online: bool,
    pub state: ServiceState,
    /// The newest ready generation: the one that serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<GenerationInfo>,
    /// Old generations still finishing their connections.
    pub draining: Vec<GenerationInfo>,
    /// Every live generation, newest last.
    pub generations: Vec<GenerationInfo>,
    pub consecutive_crashes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_restart: Option<RestartId>,
}

impl ServiceOnHost {
    pub fn from_status(host: &str, online: bool, status: &ServiceStatus) -> Self {
        use crate::GenerationState;
        let current = status
            .generations
            .iter()
            .rev()
            .find(|g| g.state == GenerationState::Ready)
            .cloned();
        let draining = status
            .generations
            .iter()
            .filter(|g| g.state == GenerationState::Draining)
            .cloned()
            .collect();
        ServiceOnHost {
            host: host.to_string(),
            online,
            state: status.state,
            current,
            draining,
            generations: status.generations.clone(),
            consecutive_crashes: status.consecutive_crashes,
            running_restart: status.running_restart,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub agent_version: String,
    pub boot_id: String,
    pub online: bool,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    /// Names of the services it last reported.
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostList {
    pub hosts: Vec<Host>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GenerationPhase {
    Starting,
    Ready,
    Draining,
    Exited,
}

/// One generation in the history, derived from the agent's events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerationRecord {
    pub id: u64,
    pub host: String,
    pub service: String,
    pub generation: u64,
    pub pid: u32,
    pub phase: GenerationPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<UnixMillis>,
    /// `exited with status 0`, `killed by SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// Set when the generation was killed at the drain deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_cut: Option<u32>,
    /// The agent restart that spawned it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restart_id: Option<RestartId>,
}

/// `GET /services/{name}/generations`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerationPage {
    pub generations: Vec<GenerationRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}
