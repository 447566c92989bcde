//! What each page shows, already formatted: the templates in `web/templates`
//! only lay these values out.

use askama::Template;
use baton_proto::api::{Restart, RestartState, Service, ServiceOnHost};
use baton_proto::{ConnectionTally, EventKind, RestartOutcome, UnixMillis};

use crate::dashboard::assets;
use crate::dashboard::format::{
    Badge, ago, bytes, clock_millis, cpu_time, duration_ms, host_restart_badge, needs_attention,
    restart_badge, service_state_badge, timestamp,
};
use crate::dashboard::session::Session;
use crate::domain::Role;

/// The frame around every page: who is signed in, the form token, the assets.
pub struct Layout {
    pub user: Option<String>,
    pub role: &'static str,
    pub is_operator: bool,
    pub csrf_token: String,
    /// Which navigation entry is highlighted.
    pub section: &'static str,
    pub css: &'static str,
    pub js: &'static str,
}

impl Layout {
    pub fn anonymous(section: &'static str) -> Layout {
        Layout {
            user: None,
            role: "",
            is_operator: false,
            csrf_token: String::new(),
            section,
            css: assets::css_url(),
            js: assets::js_url(),
        }
    }

    pub fn for_session(session: &Session, section: &'static str) -> Layout {
        Layout {
            user: Some(session.name.clone()),
            role: session.role.as_str(),
            is_operator: session.role == Role::Operator,
            csrf_token: session.csrf_token.clone(),
            section,
            css: assets::css_url(),
            js: assets::js_url(),
        }
    }
}

pub struct DrainLine {
    pub generation: u64,
    pub pid: u32,
    pub connections: String,
}

/// One service on one host, as the overview and the service page list it.
pub struct HostLine {
    pub host: String,
    pub badge: Badge,
    pub generation: String,
    pub pid: String,
    pub uptime: String,
    pub connections: String,
    /// The serving generation's memory, and where it was read.
    pub memory: String,
    /// The CPU time it used since it started.
    pub cpu: String,
    pub usage_source: String,
    pub draining: Vec<DrainLine>,
    pub starting: Option<String>,
    pub status_text: Option<String>,
    pub crashes: u32,
    /// A crash-looping service: how its last generation ended and when the
    /// next starts (filled from the stored events, see `with_last_crash`).
    pub last_crash: Option<String>,
    /// Why the service cannot start there (a stranger holds its address).
    pub blocked: Option<String>,
    /// Offline, crash-looping, stopped or blocked: counted on the overview.
    pub needs_attention: bool,
    /// What the serving generation runs: its version (or short id), and
    /// its files for the tooltip.
    pub version: String,
    pub program: String,
    /// A crash restart would start other files (a rolled-back build).
    pub next_start: Option<String>,
    /// The serving generation's instances, when it runs several.
    pub instances: Vec<InstanceLine>,
    /// `3/4 ready`, when it runs several.
    pub instances_ready: Option<String>,
}

/// One instance of the serving generation.
pub struct InstanceLine {
    pub index: u32,
    pub state: String,
    /// `ok` when ready, `warn` otherwise: the badge's colour.
    pub tone: &'static str,
    pub pid: String,
    pub ready_for: String,
    pub restarts: u32,
}

fn connections(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
}

impl HostLine {
    pub fn new(on_host: &ServiceOnHost, now: UnixMillis) -> HostLine {
        let current = on_host.current.as_ref();
        HostLine {
            host: on_host.host.clone(),
            badge: service_state_badge(on_host),
            needs_attention: needs_attention(on_host),
            generation: current
                .map(|g| g.generation.to_string())
                .unwrap_or_else(|| "—".into()),
            pid: current
                .map(|g| g.main_pid().to_string())
                .unwrap_or_else(|| "—".into()),
            uptime: current
                .map(|g| duration_ms(now.saturating_sub(g.ready_at.unwrap_or(g.started_at))))
                .unwrap_or_else(|| "—".into()),
            connections: current
                .map(|g| connections(g.connections))
                .unwrap_or_else(|| "—".into()),
            memory: current
                .map(|g| g.memory_bytes.map_or_else(|| "?".into(), bytes))
                .unwrap_or_else(|| "—".into()),
            cpu: current
                .map(|g| g.cpu_usec.map_or_else(|| "?".into(), cpu_time))
                .unwrap_or_else(|| "—".into()),
            usage_source: current
                .map(|g| {
                    let sources = [g.memory_source, g.cpu_source];
                    let mut named: Vec<String> =
                        sources.iter().flatten().map(|s| s.to_string()).collect();
                    named.dedup();
                    named.join(" and ")
                })
                .unwrap_or_default(),
            draining: on_host
                .draining
                .iter()
                .map(|g| DrainLine {
                    generation: g.generation,
                    pid: g.main_pid(),
                    connections: connections(g.connections),
                })
                .collect(),
            starting: on_host
                .starting
                .first()
                .map(|g| format!("generation {} starting (pid {})", g.generation, g.pid)),
            status_text: current.and_then(|g| g.status_text.clone()),
            crashes: on_host.consecutive_crashes,
            last_crash: None,
            blocked: on_host.blocked.clone(),
            instances: current
                .map(|g| {
                    g.instances
                        .iter()
                        .map(|i| InstanceLine {
                            index: i.index,
                            state: i.state.to_string(),
                            tone: if i.state == baton_proto::InstanceState::Ready {
                                "ok"
                            } else {
                                "warn"
                            },
                            pid: i.pid.map_or_else(|| "—".into(), |p| p.to_string()),
                            ready_for: i
                                .ready_at
                                .filter(|_| i.state == baton_proto::InstanceState::Ready)
                                .map_or_else(
                                    || "—".into(),
                                    |at| duration_ms(now.saturating_sub(at)),
                                ),
                            restarts: i.restarts,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            instances_ready: current.filter(|g| !g.instances.is_empty()).map(|g| {
                let ready = g
                    .instances
                    .iter()
                    .filter(|i| i.state == baton_proto::InstanceState::Ready)
                    .count();
                format!("{ready}/{} ready", g.instances.len())
            }),
            version: current
                .and_then(|g| g.program.as_ref())
                .map(|p| p.label())
                .unwrap_or_default(),
            program: current
                .and_then(|g| g.program.as_ref())
                .map(program_words)
                .unwrap_or_default(),
            next_start: on_host.next_start.as_ref().map(|n| n.warning()),
        }
    }

    /// Says how the last crash ended and when the agent tries again:
    /// `generation 4 exited with status 1 at 12:00:01.250; next start at
    /// 12:00:05.250 (in 3s)`.
    pub fn with_last_crash(mut self, crash: &crate::store::LastCrash, now: UnixMillis) -> HostLine {
        let ended = match &crash.status {
            Some(status) => format!("generation {} {status}", crash.generation),
            None => format!("generation {} crashed", crash.generation),
        };
        let next = if crash.next_start_at > now {
            format!(
                "next start at {} (in {})",
                clock_millis(crash.next_start_at),
                duration_ms(crash.next_start_at - now)
            )
        } else {
            format!(
                "next start was due at {}",
                clock_millis(crash.next_start_at)
            )
        };
        self.last_crash = Some(format!(
            "{ended} at {}; {next}",
            clock_millis(crash.crashed_at)
        ));
        self
    }
}

/// A program's files and identities in words, for a tooltip:
/// `/srv/app/releases/1.4.3/app (build-id:9f86…)`.
pub fn program_words(program: &baton_proto::Program) -> String {
    let mut words = program.executable.clone();
    if let Some(id) = &program.executable_id {
        words.push_str(&format!(" ({id})"));
    }
    if let Some(script) = &program.script {
        words.push_str(&format!(" running {script}"));
        if let Some(id) = &program.script_id {
            words.push_str(&format!(" ({id})"));
        }
    }
    words
}

/// One generation in the service's generation history.
pub struct GenerationLine {
    pub host: String,
    pub generation: u64,
    pub version: String,
    /// The script (or executable) path and its short identity; every
    /// file and full identity in `program_words`, for the tooltip.
    pub program: String,
    pub program_words: String,
    pub started: String,
    pub ready: String,
    pub ended: String,
}

impl GenerationLine {
    pub fn new(record: &baton_proto::api::GenerationRecord) -> GenerationLine {
        let at = |t: Option<UnixMillis>| t.map(clock_millis).unwrap_or_else(|| "—".into());
        GenerationLine {
            host: record.host.clone(),
            generation: record.generation,
            version: record
                .program
                .as_ref()
                .map(|p| p.label())
                .unwrap_or_else(|| "—".into()),
            program: record
                .program
                .as_ref()
                .map(|p| {
                    let path = p.script.as_deref().unwrap_or(&p.executable);
                    match p.short_id() {
                        Some(id) => format!("{path} · {id}"),
                        None => path.to_string(),
                    }
                })
                .unwrap_or_default(),
            program_words: record
                .program
                .as_ref()
                .map(program_words)
                .unwrap_or_default(),
            started: at(record.spawned_at),
            ready: at(record.ready_at),
            ended: match (&record.exit_status, record.exited_at) {
                (Some(status), Some(at)) => format!("{} ({status})", clock_millis(at)),
                (None, Some(at)) => clock_millis(at),
                _ => "—".into(),
            },
        }
    }
}

/// One restart in a list.
pub struct RestartLine {
    pub id: u64,
    pub service: String,
    pub badge: Badge,
    pub hosts: String,
    pub requested_by: String,
    /// Why the operator restarted (the history's "why").
    pub reason: String,
    /// Why it ended as it did, when it did not succeed: shown next to the
    /// operator's reason, never instead of it.
    pub outcome_reason: String,
    pub started: String,
    pub started_ago: String,
    pub duration: String,
    /// Every host's tally added up; `None` while no host has one.
    pub connections: Option<ConnectionTally>,
}

/// The tallies of a restart's hosts, added up.
fn total_connections(restart: &Restart) -> Option<ConnectionTally> {
    restart
        .hosts
        .iter()
        .filter_map(|h| h.connections)
        .reduce(|a, b| ConnectionTally {
            handed_over: a.handed_over.saturating_add(b.handed_over),
            drained: a.drained.saturating_add(b.drained),
            cut: a.cut.saturating_add(b.cut),
        })
}

impl RestartLine {
    pub fn new(restart: &Restart, now: UnixMillis) -> RestartLine {
        RestartLine {
            id: restart.id,
            service: restart.service.clone(),
            badge: restart_badge(restart.state, restart.outcome),
            hosts: restart
                .hosts
                .iter()
                .map(|h| h.host.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            requested_by: restart.requested_by.clone().unwrap_or_default(),
            reason: restart.reason.clone().unwrap_or_default(),
            outcome_reason: restart.outcome_reason.clone().unwrap_or_default(),
            started: timestamp(restart.created_at),
            started_ago: ago(restart.created_at, now),
            duration: duration_ms(
                restart
                    .finished_at
                    .unwrap_or(now)
                    .saturating_sub(restart.created_at),
            ),
            connections: total_connections(restart),
        }
    }
}

/// One milestone of a host's restart: spawned, ready, draining, old exited.
pub struct Phase {
    pub label: &'static str,
    pub reached: bool,
    /// Reached by force: the old generation was SIGKILLed at the drain
    /// deadline. Shown as such, never with the check of a clean exit.
    pub killed: bool,
    pub at: String,
    /// Time since the milestone before it.
    pub after: String,
    pub note: String,
}

pub struct Step {
    pub clock: String,
    pub offset: String,
    pub text: String,
    pub kind: &'static str,
}

pub struct HostDetail {
    pub host: String,
    pub badge: Badge,
    pub outcome_reason: Option<String>,
    pub phases: Vec<Phase>,
    pub steps: Vec<Step>,
    pub took: Option<String>,
    /// What the agent reports right now, while the restart runs.
    pub live: Option<String>,
    /// The outcome came from the report the server fetched from the agent,
    /// not from its events (they were lost while the link was down).
    pub from_report: bool,
    /// What became of the old generation's connections, once its drain ended.
    pub connections: Option<ConnectionTally>,
    /// `generation 7: 1.4.2 → 1.4.3`, once the new generation is known.
    pub versions: Option<String>,
    /// For a rollback: which version never became ready and which serves.
    pub rollback: Option<String>,
    /// The last lines the new generation wrote, when it did not succeed.
    pub output: Vec<OutputRow>,
}

/// One line a generation wrote, as the dashboard shows it (escaped by the
/// template; control characters were escaped when the agent's frame came).
pub struct OutputRow {
    pub clock: String,
    pub generation: u64,
    /// `out` or `err`.
    pub stream: &'static str,
    pub text: String,
}

impl OutputRow {
    pub fn new(line: &baton_proto::OutputLine) -> OutputRow {
        OutputRow {
            clock: clock_millis(line.time),
            generation: line.generation,
            stream: line.stream.as_str(),
            text: line.text.clone(),
        }
    }
}

pub struct RestartDetail {
    pub id: u64,
    pub service: String,
    pub running: bool,
    pub badge: Badge,
    pub outcome_reason: Option<String>,
    pub reason: Option<String>,
    pub requested_by: String,
    pub started: String,
    pub finished: Option<String>,
    pub duration: String,
    /// The rollout policy and how far it got: at a time, canary, the
    /// pause's end, the failure budget used.
    pub rollout: Vec<RolloutFact>,
    pub hosts: Vec<HostDetail>,
}

/// One line of a restart's rollout policy on its page.
pub struct RolloutFact {
    /// For the element's id (`rollout-canary`).
    pub id: &'static str,
    pub label: &'static str,
    pub value: String,
}

fn rollout_facts(restart: &Restart, now: UnixMillis) -> Vec<RolloutFact> {
    use baton_proto::api::MaxParallel;
    let rollout = &restart.rollout;
    let mut facts = vec![RolloutFact {
        id: "at-a-time",
        label: "At a time",
        value: match rollout.max_parallel {
            MaxParallel::Percent(percent) => format!(
                "{percent}% of the hosts ({})",
                plural(restart.max_parallel, "host")
            ),
            MaxParallel::Hosts(_) => plural(restart.max_parallel, "host"),
        },
    }];
    if rollout.canary > 0 {
        facts.push(RolloutFact {
            id: "canary",
            label: "Canary",
            value: match rollout.pause {
                Some(pause) => format!(
                    "{} first, alone, then a pause of {pause}",
                    plural(rollout.canary, "host")
                ),
                None => format!("{} first, alone", plural(rollout.canary, "host")),
            },
        });
    }
    if let Some(until) = rollout.pause_until {
        let pausing = restart.state == RestartState::Running && now < until;
        facts.push(RolloutFact {
            id: "pause-until",
            label: "Paused until",
            value: if pausing {
                format!("{} (paused now)", clock_millis(until))
            } else {
                clock_millis(until)
            },
        });
    }
    let failures = restart
        .hosts
        .iter()
        .filter(|h| h.outcome.is_some_and(|o| o != RestartOutcome::Succeeded))
        .count();
    if rollout.failure_budget > 0 {
        facts.push(RolloutFact {
            id: "budget",
            label: "Failure budget",
            value: format!(
                "{failures} of {} used{}",
                rollout.failure_budget,
                if failures > rollout.failure_budget as usize {
                    ": past it, the rollout stopped"
                } else {
                    ""
                }
            ),
        });
    }
    facts
}

fn step_kind(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::RestartStarted { .. } => "started",
        EventKind::GenerationSpawned { .. } => "spawned",
        EventKind::GenerationReady { .. } => "ready",
        EventKind::OverlapStarted { .. } | EventKind::OverlapFinished { .. } => "overlap",
        EventKind::GenerationDraining { .. } | EventKind::DrainProgress { .. } => "draining",
        EventKind::GenerationKilled { .. } => "killed",
        EventKind::GenerationExited { .. } => "exited",
        EventKind::HandoffBrokered { .. } | EventKind::ConnectionsHandedOver { .. } => "handoff",
        EventKind::DrainFinished { .. } => "drained",
        EventKind::RestartFinished { .. } => "finished",
        _ => "other",
    }
}

impl RestartDetail {
    /// `live` is the service as the fleet reports it now, for the draining
    /// generation's connection count between drain events.
    pub fn new(restart: &Restart, live: Option<&Service>, now: UnixMillis) -> RestartDetail {
        let running = restart.state == RestartState::Running;
        let hosts = restart
            .hosts
            .iter()
            .map(|host| {
                let first_at = host
                    .steps
                    .first()
                    .map(|s| s.at)
                    .or(host.started_at)
                    .unwrap_or(restart.created_at);
                let steps = host
                    .steps
                    .iter()
                    .map(|event| Step {
                        clock: clock_millis(event.at),
                        offset: format!("+{}", duration_ms(event.at.saturating_sub(first_at))),
                        text: step_text(&event.kind),
                        kind: step_kind(&event.kind),
                    })
                    .collect();
                let live_line = live
                    .filter(|_| running)
                    .and_then(|s| s.hosts.iter().find(|h| h.host == host.host))
                    .map(describe_live);
                HostDetail {
                    host: host.host.clone(),
                    badge: host_restart_badge(host.state, host.outcome),
                    outcome_reason: host.outcome_reason.clone(),
                    phases: phases(&host.steps, first_at),
                    steps,
                    took: match (host.started_at, host.finished_at) {
                        (Some(start), Some(end)) => Some(duration_ms(end.saturating_sub(start))),
                        _ => None,
                    },
                    live: live_line,
                    from_report: host.outcome_from_report,
                    connections: host.connections,
                    versions: host.versions.as_ref().map(|v| {
                        let new = host.steps.iter().find_map(|s| match s.kind {
                            EventKind::GenerationSpawned { generation, .. } => Some(generation),
                            _ => None,
                        });
                        match new {
                            Some(generation) => format!("generation {generation}: {}", v.arrow()),
                            None => v.arrow(),
                        }
                    }),
                    rollback: match (&host.versions, host.outcome) {
                        (Some(v), Some(RestartOutcome::RolledBack)) => Some(format!(
                            "The new version {} never became ready; {} is still serving.",
                            v.to.as_ref().map_or("?".into(), |p| p.label()),
                            v.from
                                .as_ref()
                                .map_or("the old generation".into(), |p| p.label()),
                        )),
                        _ => None,
                    },
                    output: host.output_tail.iter().map(OutputRow::new).collect(),
                }
            })
            .collect();
        RestartDetail {
            id: restart.id,
            service: restart.service.clone(),
            running,
            badge: restart_badge(restart.state, restart.outcome),
            outcome_reason: restart.outcome_reason.clone(),
            reason: restart.reason.clone(),
            requested_by: restart.requested_by.clone().unwrap_or_default(),
            started: timestamp(restart.created_at),
            finished: restart.finished_at.map(timestamp),
            duration: duration_ms(
                restart
                    .finished_at
                    .unwrap_or(now)
                    .saturating_sub(restart.created_at),
            ),
            rollout: rollout_facts(restart, now),
            hosts,
        }
    }
}

/// A step in words; the handoff steps counted with the right plural.
fn step_text(kind: &EventKind) -> String {
    match kind {
        EventKind::HandoffBrokered {
            from_generation,
            to_generation,
        } => format!(
            "handoff channel opened: generation {from_generation} may hand its connections over to generation {to_generation}"
        ),
        EventKind::ConnectionsHandedOver {
            from_generation,
            to_generation,
            connections,
        } => format!(
            "generation {from_generation} handed {} over to generation {to_generation}",
            plural(*connections, "connection")
        ),
        EventKind::DrainFinished {
            generation,
            handed_over,
            drained,
            cut,
        } => format!(
            "generation {generation}'s drain ended: {}",
            tally_words(&ConnectionTally {
                handed_over: *handed_over,
                drained: *drained,
                cut: *cut,
            })
        ),
        other => other.to_string(),
    }
}

/// `12 handed over · 3 drained · 0 cut`.
pub fn tally_words(tally: &ConnectionTally) -> String {
    format!(
        "{} handed over · {} drained · {} cut",
        tally.handed_over, tally.drained, tally.cut
    )
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn describe_live(on_host: &ServiceOnHost) -> String {
    let mut parts: Vec<String> = on_host
        .generations()
        .into_iter()
        .map(|g| {
            let connections = g
                .connections
                .map(|n| format!(", {}", plural(n, "connection")))
                .unwrap_or_default();
            format!("generation {} {}{connections}", g.generation, g.state)
        })
        .collect();
    if !on_host.online {
        parts.push("agent offline".into());
    }
    parts.join(" · ")
}

/// The four milestones of a hot restart, read from the agent's events.
fn phases(steps: &[baton_proto::Event], first_at: UnixMillis) -> Vec<Phase> {
    let new_generation = steps.iter().find_map(|e| match e.kind {
        EventKind::GenerationSpawned { generation, .. } => Some(generation),
        _ => None,
    });
    let mut spawned = None;
    let mut ready = None;
    let mut draining = None;
    let mut drain_note = String::new();
    let mut drained_from: Option<(u64, Option<u32>)> = None;
    let mut killed = false;
    let mut tallied = false;
    let mut exited = None;
    let mut exit_note = String::new();
    let mut spawn_note = String::new();
    let mut ready_note = String::new();
    for event in steps {
        match &event.kind {
            EventKind::GenerationSpawned {
                generation, pid, ..
            } => {
                spawned.get_or_insert(event.at);
                spawn_note = format!("generation {generation}, pid {pid}");
            }
            EventKind::GenerationReady { generation, .. }
                if Some(*generation) == new_generation =>
            {
                ready = Some(event.at);
                ready_note = format!("generation {generation} serves");
            }
            EventKind::OverlapStarted {
                generation,
                old_generation,
                overlap_ms,
            } if Some(*generation) == new_generation => {
                ready_note = format!(
                    "generation {generation} ready; generation {old_generation} serves beside it for {}",
                    duration_ms(*overlap_ms)
                );
            }
            EventKind::OverlapFinished {
                generation,
                old_generation,
            } if Some(*generation) == new_generation => {
                ready_note = format!(
                    "generation {generation} serves, after overlapping generation {old_generation}"
                );
            }
            EventKind::GenerationDraining {
                generation,
                connections,
                ..
            } if Some(*generation) != new_generation => {
                draining = Some(event.at);
                drained_from = Some((*generation, *connections));
                drain_note = match connections {
                    Some(n) => {
                        format!("generation {generation}: {} open", plural(*n, "connection"))
                    }
                    None => format!("generation {generation}"),
                };
            }
            EventKind::DrainProgress {
                generation,
                connections,
            } if Some(*generation) != new_generation => {
                drain_note = match drained_from {
                    Some((_, Some(first))) => format!(
                        "generation {generation}: {first} → {} left",
                        plural(*connections, "connection")
                    ),
                    _ => format!(
                        "generation {generation}: {} left",
                        plural(*connections, "connection")
                    ),
                };
            }
            EventKind::GenerationKilled {
                connections_cut, ..
            } => {
                killed = true;
                exit_note = format!(
                    "killed at the drain timeout, {} cut",
                    plural(*connections_cut, "connection")
                );
            }
            EventKind::GenerationExited {
                generation, status, ..
            } if Some(*generation) != new_generation => {
                exited = Some(event.at);
                if !killed {
                    exit_note = format!("generation {generation} {status}");
                    if let Some((drained, Some(first))) = drained_from
                        && drained == *generation
                        && !tallied
                    {
                        drain_note = format!(
                            "generation {generation}: {} drained",
                            plural(first, "connection")
                        );
                    }
                }
            }
            EventKind::DrainFinished {
                generation,
                handed_over,
                drained,
                cut,
            } if Some(*generation) != new_generation => {
                // The agent's own account of the drain, handoff included,
                // replaces the estimate from the count at its start.
                tallied = true;
                drain_note = format!(
                    "generation {generation}: {}",
                    tally_words(&ConnectionTally {
                        handed_over: *handed_over,
                        drained: *drained,
                        cut: *cut,
                    })
                );
            }
            EventKind::GenerationExited {
                generation, status, ..
            } => {
                exit_note =
                    format!("new generation {generation} {status}; the old one kept serving");
            }
            _ => {}
        }
    }
    let mut previous = first_at;
    let old_end = if killed && exited.is_some() {
        "old killed"
    } else {
        "old exited"
    };
    [
        ("spawned", spawned, spawn_note),
        ("ready", ready, ready_note),
        ("draining", draining, drain_note),
        (old_end, exited, exit_note),
    ]
    .into_iter()
    .map(|(label, at, note)| {
        let phase = Phase {
            label,
            reached: at.is_some(),
            killed: label == "old killed",
            at: at.map(clock_millis).unwrap_or_else(|| "—".into()),
            after: at
                .map(|at| format!("+{}", duration_ms(at.saturating_sub(previous))))
                .unwrap_or_default(),
            note,
        };
        if let Some(at) = at {
            previous = at;
        }
        phase
    })
    .collect()
}

// ---------------------------------------------------------------- pages

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub layout: Layout,
    pub next: String,
    pub error: Option<String>,
}

pub struct Summary {
    pub services: u64,
    pub hosts_online: u64,
    pub hosts: u64,
    pub draining: u64,
    pub attention: u64,
}

/// One service on one host in the overview's list.
pub struct FleetLine {
    pub service: String,
    pub host: HostLine,
}

/// Where the overview's list is, and the links to its neighbours.
pub struct Pager {
    /// `1–50 of 10000`.
    pub shown: String,
    pub first: Option<String>,
    pub previous: Option<String>,
    pub next: Option<String>,
}

/// The overview's search: what the form shows again.
pub struct FleetSearch {
    pub search: String,
    pub states: Vec<Choice>,
    pub filtered: bool,
    pub error: Option<String>,
    /// The live stream of this very page of the list.
    pub live_url: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub layout: Layout,
    pub search: FleetSearch,
    pub summary: Summary,
    pub services: Vec<FleetLine>,
    pub pager: Pager,
    pub filtered: bool,
    pub restarts: Vec<RestartLine>,
}

/// The overview but its frame and search form: what the live stream replaces.
#[derive(Template)]
#[template(path = "overview_live.html")]
pub struct OverviewLiveFragment {
    pub summary: Summary,
    pub services: Vec<FleetLine>,
    pub pager: Pager,
    /// The list is filtered: an empty one says so.
    pub filtered: bool,
    pub restarts: Vec<RestartLine>,
}

impl OverviewLiveFragment {
    pub fn into_page(self, layout: Layout, search: FleetSearch) -> OverviewPage {
        OverviewPage {
            layout,
            search,
            summary: self.summary,
            services: self.services,
            pager: self.pager,
            filtered: self.filtered,
            restarts: self.restarts,
        }
    }
}

/// The part of the service page that the live stream replaces.
pub struct ServiceLive {
    pub name: String,
    pub hosts: Vec<HostLine>,
    pub timeline: String,
    /// The newest generations, newest first, with what each ran.
    pub generations: Vec<GenerationLine>,
    pub running_restart: Option<u64>,
}

#[derive(Template)]
#[template(path = "service_live.html")]
pub struct ServiceLiveFragment {
    pub live: ServiceLive,
}

#[derive(Template)]
#[template(path = "service.html")]
pub struct ServicePage {
    pub layout: Layout,
    pub name: String,
    pub live: ServiceLive,
    pub host_count: usize,
    pub restarts: Vec<RestartLine>,
    /// Lines of the live output tail per host.
    pub tail_lines: usize,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    pub layout: Layout,
    pub name: String,
    pub hosts: Vec<HostLine>,
    pub running_restart: Option<u64>,
}

#[derive(Template)]
#[template(path = "restart_live.html")]
pub struct RestartLiveFragment {
    pub detail: RestartDetail,
}

#[derive(Template)]
#[template(path = "restart.html")]
pub struct RestartPage {
    pub layout: Layout,
    pub detail: RestartDetail,
}

pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "restarts.html")]
pub struct RestartsPage {
    pub layout: Layout,
    pub service: String,
    pub host: String,
    pub outcomes: Vec<Choice>,
    pub filtered: bool,
    pub error: Option<String>,
    pub restarts: Vec<RestartLine>,
    pub newer: Option<String>,
    pub older: Option<String>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub status: u16,
    pub title: &'static str,
    pub message: String,
}
