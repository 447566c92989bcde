//! Bodies of the server's REST API, shared by the server and the command
//! line. Times are [`UnixMillis`]; ids are the server's, except
//! `agent_restart_id`, which is the agent's own [`RestartId`].

pub use crate::rollout::{MaxParallel, Pause, Rollout};
use crate::{
    Event, GenerationInfo, RestartId, RestartOutcome, ServiceState, ServiceStatus, UnixMillis,
};
use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": "..."}`, plus the running restart's id on a `409`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_id: Option<u64>,
}

/// Optional body of `POST /services/{name}/restart`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartRequest {
    /// Why, for the history; at most 1024 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub reason: Option<String>,
    /// Restrict the restart to these hosts, each of which must run the
    /// service; every host that runs the service when absent.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Name>>, min_items = 1))]
    pub hosts: Option<Vec<String>>,
    /// How many hosts restart at the same time: a whole number, or a
    /// percentage of the restart's hosts (`"10%"`, rounded up, at least 1);
    /// 1 when absent.
    #[cfg_attr(
        feature = "openapi",
        schema(schema_with = crate::rollout::max_parallel_request_schema)
    )]
    pub max_parallel: Option<MaxParallel>,
    /// How many hosts (the first ones, in host-name order) restart first,
    /// alone as a batch, before any other; none when absent or 0.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 4294967295u32, format = Int64)
    )]
    // Left out when absent, so a server that predates the field takes the
    // body of a newer client that did not ask for it.
    #[serde(
        deserialize_with = "canary_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub canary: Option<u32>,
    /// How long to wait after the canary batch before the other hosts
    /// (`"60s"`, at most 24 hours); needs a `canary`.
    #[cfg_attr(
        feature = "openapi",
        schema(schema_with = crate::rollout::pause_schema)
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// How many hosts may end without succeeding before the rollout stops
    /// and skips the rest; 0 (stop at the first) when absent.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 4294967295u32, format = Int64)
    )]
    #[serde(
        deserialize_with = "failure_budget_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_budget: Option<u32>,
}

fn canary_count<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    crate::rollout::host_count(deserializer, "canary")
}

fn failure_budget_count<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    crate::rollout::host_count(deserializer, "failure_budget")
}

impl RestartRequest {
    /// Reads a request body. Only a JSON object is one: serde alone would
    /// also take an array as the fields in order.
    pub fn from_json(body: &[u8]) -> serde_json::Result<RestartRequest> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
        serde_json::from_value(serde_json::Value::Object(object))
    }
}

/// A service or host name as the OpenAPI document describes it: 1 to 64
/// characters of `[A-Za-z0-9._-]`, not starting with a dot. A name that
/// breaks the rule is answered `422`.
#[cfg(feature = "openapi")]
pub struct Name;

#[cfg(feature = "openapi")]
impl Name {
    pub const PATTERN: &str = crate::ServiceName::PATTERN;
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Name {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Self::PATTERN))
            .description(Some(crate::ServiceName::RULE))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Name {}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RestartState {
    Running,
    Finished,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HostRestartState {
    /// Not started yet.
    Pending,
    Running,
    Finished,
    /// Never started: hosts before it did not succeed, past the failure
    /// budget, or it was offline when its turn came (`outcome_reason` says
    /// which).
    Skipped,
}

/// A restart of one service across hosts, as `GET /restarts/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// first host that did not (`outcome_reason` says how many did not, when
    /// a failure budget let the rollout go on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RestartOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    /// How many hosts restart at the same time (a percentage resolved
    /// against the restart's hosts).
    pub max_parallel: u32,
    /// The policy it runs by, as asked, and when the pause after its canary
    /// batch ends.
    #[serde(default)]
    pub rollout: Rollout,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub finished_at: Option<UnixMillis>,
    /// In the order they restart (by host name).
    pub hosts: Vec<RestartHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartHost {
    pub host: String,
    pub state: HostRestartState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RestartOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    /// The agent's id of this restart, once the agent has accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub agent_restart_id: Option<RestartId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub started_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub finished_at: Option<UnixMillis>,
    /// The agent's events of this restart, oldest first. Empty in lists.
    #[serde(default)]
    pub steps: Vec<Event>,
    /// The outcome came from the restart's report, fetched from the agent,
    /// because its events were lost while the link was down (the agent no
    /// longer had them); `steps` then include the report's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outcome_from_report: bool,
    /// What became of the old generation's connections on this host, once
    /// its drain ended (the agent's `drain_finished`, or the report's tally
    /// when the outcome came from the report). Absent before, and for
    /// restarts that replaced no serving generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<crate::ConnectionTally>,
    /// What the host's old generation ran and what its new one runs, from
    /// the restart's steps. Absent in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<crate::VersionChange>,
    /// For a host whose restart rolled back or failed: the last lines the
    /// new generation wrote (its stdout and stderr, as the agent captured
    /// them), oldest first. Empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<crate::OutputLine>,
}

/// `GET /restarts`: newest first; pass `next_before` as `before` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartPage {
    pub restarts: Vec<Restart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// One service across the fleet, as `GET /services/{name}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Service {
    pub name: String,
    pub hosts: Vec<ServiceOnHost>,
}

/// One service on one host. Every live generation appears exactly once, in
/// the list that says what it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceOnHost {
    /// The service's name.
    pub service: String,
    pub host: String,
    /// False when the host's agent is not connected; the rest is what it last reported.
    pub online: bool,
    pub state: ServiceState,
    /// The newest ready generation: the one that serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<GenerationInfo>,
    /// A new generation on its way up (during a restart or after a crash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub starting: Vec<GenerationInfo>,
    /// Old generations still finishing their connections. An older
    /// generation that still reports ready is listed here too: it is on its
    /// way out.
    pub draining: Vec<GenerationInfo>,
    /// Generations being stopped without a drain (a rolled-back new one, or
    /// all of them when the service is removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopping: Vec<GenerationInfo>,
    pub consecutive_crashes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub running_restart: Option<RestartId>,
    /// Why the service cannot start on this host: a process the agent does
    /// not know holds its address (left by an agent that was killed and
    /// whose state was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// The program a crash restart would start on this host, when it is
    /// not what the serving generation runs (a rolled-back build on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<crate::NextStart>,
}

impl ServiceOnHost {
    pub fn from_status(host: &str, online: bool, status: &ServiceStatus) -> Self {
        use crate::GenerationState;
        let newest_ready = status
            .generations
            .iter()
            .rposition(|g| g.state == GenerationState::Ready);
        let mut on_host = ServiceOnHost {
            service: status.name.clone(),
            host: host.to_string(),
            online,
            state: status.state,
            current: None,
            starting: Vec::new(),
            draining: Vec::new(),
            stopping: Vec::new(),
            consecutive_crashes: status.consecutive_crashes,
            running_restart: status.running_restart,
            blocked: status.blocked.clone(),
            next_start: status.next_start.clone(),
        };
        for (index, generation) in status.generations.iter().enumerate() {
            let list = match generation.state {
                GenerationState::Ready if Some(index) == newest_ready => {
                    on_host.current = Some(generation.clone());
                    continue;
                }
                GenerationState::Starting => &mut on_host.starting,
                GenerationState::Ready | GenerationState::Draining => &mut on_host.draining,
                GenerationState::Stopping => &mut on_host.stopping,
            };
            list.push(generation.clone());
        }
        on_host
    }

    /// Offline, blocked, or crash-looping or stopped with nothing left
    /// draining: someone should look.
    pub fn needs_attention(&self) -> bool {
        !self.online
            || self.blocked.is_some()
            || (self.draining.is_empty()
                && matches!(
                    self.state,
                    ServiceState::CrashLooping | ServiceState::Stopped
                ))
    }

    /// Every live generation, oldest first.
    pub fn generations(&self) -> Vec<&GenerationInfo> {
        let mut all: Vec<&GenerationInfo> = self
            .current
            .iter()
            .chain(&self.starting)
            .chain(&self.draining)
            .chain(&self.stopping)
            .collect();
        all.sort_by_key(|g| g.generation);
        all
    }
}

/// `GET /services`: one page of the fleet's services, one entry per service
/// on a host, ordered by host then service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServicePage {
    pub services: Vec<ServiceOnHost>,
    /// Entries that match the filters, on every page together.
    pub total: u64,
    /// This page's number, from 1.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub page: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 500))]
    pub per_page: u32,
    /// The next page's number; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<u32>,
}

/// The most entries one page of `GET /services` holds, and the number
/// when the client does not say.
pub const SERVICES_PER_PAGE_MAX: u32 = 500;
pub const SERVICES_PER_PAGE_DEFAULT: u32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    pub name: String,
    pub agent_version: String,
    pub boot_id: String,
    pub online: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub first_seen: UnixMillis,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub last_seen: UnixMillis,
    /// Names of the services it last reported.
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostList {
    pub hosts: Vec<Host>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GenerationPhase {
    Starting,
    Ready,
    Draining,
    Exited,
}

/// One generation in the history, derived from the agent's events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerationRecord {
    pub id: u64,
    pub host: String,
    pub service: String,
    pub generation: u64,
    pub pid: u32,
    pub phase: GenerationPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub spawned_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub ready_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub draining_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub exited_at: Option<UnixMillis>,
    /// `exited with status 0`, `killed by SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// Set when the generation was killed at the drain deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_cut: Option<u32>,
    /// The agent restart that spawned it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub agent_restart_id: Option<RestartId>,
    /// What it ran, from its spawned and ready events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<crate::Program>,
}

/// `GET /services/{name}/generations`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerationPage {
    pub generations: Vec<GenerationRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GenerationState, ServiceState};

    fn generation(number: u64, state: GenerationState) -> GenerationInfo {
        GenerationInfo {
            generation: number,
            pid: 100 + number as u32,
            main_pid: None,
            state,
            started_at: 1,
            ready_at: None,
            status_text: None,
            connections: Some(number as u32),
            memory_bytes: None,
            memory_source: None,
            cpu_usec: None,
            cpu_source: None,
            instances: Vec::new(),
            program: None,
        }
    }

    fn status(generations: Vec<GenerationInfo>) -> ServiceStatus {
        ServiceStatus {
            name: "web".into(),
            state: ServiceState::Restarting,
            sockets: Vec::new(),
            generations,
            consecutive_crashes: 0,
            running_restart: None,
            last_restart: None,
            blocked: None,
            next_start: None,
        }
    }

    #[test]
    fn a_restart_request_is_a_json_object_with_whole_numbers() {
        let request =
            RestartRequest::from_json(br#"{"max_parallel": 3.0, "hosts": ["a"]}"#).unwrap();
        assert_eq!(request.max_parallel, Some(MaxParallel::Hosts(3)));
        assert_eq!(request.hosts, Some(vec!["a".to_string()]));
        let request =
            RestartRequest::from_json(br#"{"max_parallel": null, "reason": null}"#).unwrap();
        assert_eq!(request, RestartRequest::default());
        for body in [
            "[null, null]",
            "null",
            "3",
            r#"{"max_parallel": 1.5}"#,
            r#"{"max_parallel": -1}"#,
            r#"{"max_parallel": 4294967296}"#,
            r#"{"max_parallel": "2"}"#,
            r#"{"surprise": 1}"#,
        ] {
            assert!(
                RestartRequest::from_json(body.as_bytes()).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn a_restart_request_carries_its_rollout_policy_and_names_a_wrong_field() {
        let request = RestartRequest::from_json(
            br#"{"max_parallel": "10%", "canary": 1, "pause": "60s", "failure_budget": 2}"#,
        )
        .unwrap();
        assert_eq!(request.max_parallel, Some(MaxParallel::Percent(10)));
        assert_eq!(request.canary, Some(1));
        assert_eq!(request.pause.map(Pause::as_millis), Some(60_000));
        assert_eq!(request.failure_budget, Some(2));
        let back = serde_json::to_value(&request).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"reason": null, "hosts": null, "max_parallel": "10%",
                "canary": 1, "pause": "60s", "failure_budget": 2})
        );
        // Fields not asked for are left out, so an older server takes the body.
        assert_eq!(
            serde_json::to_value(RestartRequest::default()).unwrap(),
            serde_json::json!({"reason": null, "hosts": null, "max_parallel": null})
        );
        for (body, field) in [
            (r#"{"max_parallel": 0}"#, "max_parallel"),
            (r#"{"max_parallel": "0%"}"#, "max_parallel"),
            (r#"{"max_parallel": "101%"}"#, "max_parallel"),
            (r#"{"max_parallel": "ten"}"#, "max_parallel"),
            (r#"{"canary": -1}"#, "canary"),
            (r#"{"canary": "1"}"#, "canary"),
            (r#"{"pause": "25h"}"#, "pause"),
            (r#"{"pause": 60}"#, "pause"),
            (r#"{"pause": "soon"}"#, "pause"),
            (r#"{"failure_budget": 1.5}"#, "failure_budget"),
            (r#"{"failure_budget": 4294967296}"#, "failure_budget"),
        ] {
            let error = RestartRequest::from_json(body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&format!("{field}: ")), "{body}: {error}");
        }
    }

    #[test]
    fn every_live_generation_is_listed_once_where_it_belongs() {
        use GenerationState::*;
        let all = vec![
            generation(1, Draining),
            generation(2, Ready),
            generation(3, Ready),
            generation(4, Starting),
            generation(5, Stopping),
        ];
        let on_host = ServiceOnHost::from_status("h1", true, &status(all.clone()));
        assert_eq!(on_host.current.as_ref().map(|g| g.generation), Some(3));
        let numbers =
            |list: &[GenerationInfo]| list.iter().map(|g| g.generation).collect::<Vec<_>>();
        assert_eq!(numbers(&on_host.draining), [1, 2]);
        assert_eq!(numbers(&on_host.starting), [4]);
        assert_eq!(numbers(&on_host.stopping), [5]);
        let listed: Vec<GenerationInfo> = on_host.generations().into_iter().cloned().collect();
        assert_eq!(listed, all);
    }

    #[test]
    fn empty_lists_are_left_out_of_the_json_but_draining_is_always_there() {
        let on_host = ServiceOnHost::from_status(
            "h1",
            true,
            &status(vec![generation(7, GenerationState::Ready)]),
        );
        let json = serde_json::to_value(&on_host).unwrap();
        assert_eq!(json["current"]["generation"], 7);
        assert_eq!(json["draining"], serde_json::json!([]));
        assert!(json.get("starting").is_none() && json.get("stopping").is_none());
        let back: ServiceOnHost = serde_json::from_value(json).unwrap();
        assert_eq!(back, on_host);
    }
}
