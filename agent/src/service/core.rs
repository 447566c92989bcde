//! The service's decisions, without I/O: `ServiceCore::on(now, input)`
//! returns the effects to carry out (spawn, signal, kill, count, emit, ...)
//! and `poll_timeout` says when to call it again with `Input::Timer`. The
//! actor (`actor.rs`) moves inputs in and carries effects out; an effect that
//! asks a question of the kernel (`Count`, `CheckGroup`, `LocateMain`) or of
//! the event log (`OpenRestart`) is answered by the actor with a follow-up
//! input before anything else reaches the core, so a transition never
//! interleaves with another.

mod handover;
mod instances;

pub use self::handover::{HandedCore, HandoverRefused, Predecessor};
pub use super::effects::{CountFor, Effect, Input, MainCheck, Now, RequestRefusal};
use super::generation::{DrainTally, Generation, InstancePhase, Leftovers, Lifecycle};
use super::restart::{RestartRun, Verdict};
use crate::channel::ChannelMessage;
use crate::config::{Readiness, ServiceConfig};
use crate::notify::NotifyMessage;
use crate::reaper::ExitInfo;
use baton_proto::{
    ErrorBody, ErrorKind, EventKind, GenerationInfo, RestartId, RestartOutcome, RestartRequester,
    ServiceState,
};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A generation that stayed up this long resets the crash count.
pub const CRASH_FORGIVEN_AFTER: Duration = Duration::from_secs(10);
/// How often a generation whose main process exited is checked for
/// surviving members of its process group.
pub const LINGER_POLL: Duration = Duration::from_millis(50);
/// Stopping without draining never waits longer than this for the stop signal.
pub(super) const STOP_GRACE_MAX: Duration = Duration::from_secs(10);
/// After a SIGKILL, the next one is this far off.
pub(super) const KILL_AGAIN_AFTER: Duration = Duration::from_secs(3600);
/// A service accepts at most one restart request from its own generation
/// (`X_BATON_RESTART=1`) per this interval: a `kill -USR2` in a loop, or a
/// library that asks on every signal of a burst, restarts it once.
pub const RESTART_REQUEST_INTERVAL: Duration = Duration::from_secs(10);

/// A service's state and every decision about it.
pub struct ServiceCore {
    name: String,
    config: Arc<ServiceConfig>,
    generations: BTreeMap<u64, Generation>,
    next_generation: u64,
    /// The generation that serves.
    current: Option<u64>,
    restart: Option<RestartRun>,
    /// The reason of the restart being opened (between `OpenRestart` and
    /// `RestartOpened`).
    opening_reason: Option<String>,
    /// A reload arrived during a restart: restart again once it ends.
    restart_queued: bool,
    /// When the service last accepted a restart request of its own
    /// generation, for `RESTART_REQUEST_INTERVAL`.
    restart_requested_at: Option<Instant>,
    consecutive_crashes: u32,
    backoff_until: Option<Instant>,
    mode: Mode,
}

/// What the service as a whole is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    /// Handed over to the next image: start nothing new, act on no deadline,
    /// until thawed.
    Frozen,
    /// Every generation is being stopped; the service is done once none is
    /// left. Nothing starts again.
    Stopping,
}

/// Collects one input's effects.
struct Out(Vec<Effect>);

impl Out {
    fn push(&mut self, effect: Effect) {
        self.0.push(effect);
    }
}

impl ServiceCore {
    pub fn new(config: Arc<ServiceConfig>) -> Self {
        ServiceCore {
            name: config.name.clone(),
            config,
            generations: BTreeMap::new(),
            next_generation: 1,
            current: None,
            restart: None,
            opening_reason: None,
            restart_queued: false,
            restart_requested_at: None,
            consecutive_crashes: 0,
            backoff_until: None,
            mode: Mode::Running,
        }
    }

    fn stopping(&self) -> bool {
        self.mode == Mode::Stopping
    }

    pub fn config(&self) -> &Arc<ServiceConfig> {
        &self.config
    }

    /// Stopping and nothing left to wait for.
    pub fn is_done(&self) -> bool {
        self.stopping() && self.generations.is_empty()
    }

    pub fn on(&mut self, now: Now, input: Input) -> Vec<Effect> {
        let mut out = Out(Vec::new());
        match input {
            Input::Start => {
                if self.current.is_none() {
                    self.start_generation(now, &mut out);
                }
            }
            Input::Restart { reason } => self.request_restart(reason, None, &mut out),
            Input::RestartOpened { id } => self.begin_restart(id, now, &mut out),
            Input::Replace { config } => {
                self.config = config;
                if self.restart.is_some() {
                    self.restart_queued = true;
                } else if !self.stopping() {
                    self.request_restart(Some("configuration changed".into()), None, &mut out);
                }
            }
            Input::Stop => self.stop_all(now, &mut out),
            Input::Spawned {
                generation,
                pid,
                probe_port,
                channel,
            } => self.on_spawned(generation, pid, probe_port, channel, now, &mut out),
            Input::SpawnFailed { generation, reason } => {
                self.on_spawn_failed(generation, reason, now, &mut out)
            }
            Input::Exited {
                generation,
                pid,
                exit,
            } => self.on_exit(generation, pid, exit, now, &mut out),
            Input::MainLocated {
                generation,
                main,
                in_group,
                after,
            } => self.on_main_located(generation, main, in_group, after, now, &mut out),
            Input::Notify {
                generation,
                sender,
                messages,
            } => self.on_notify(generation, sender, messages, now, &mut out),
            Input::Channel {
                generation,
                messages,
            } => self.on_channel(generation, messages, &mut out),
            Input::Ready { generation } => self.on_ready(generation, now, &mut out),
            Input::Connections { generation, count } => {
                self.on_connections(generation, count, &mut out)
            }
            Input::Counted {
                generation,
                count,
                purpose,
            } => match purpose {
                CountFor::Drain => self.drain_counted(generation, count, now, &mut out),
                CountFor::Cut => self.cut_counted(generation, count, &mut out),
            },
            Input::GroupEmpty { generation } => {
                if self.remove_exited(generation, &mut out) {
                    self.check_restart_done(&mut out);
                }
            }
            Input::InstanceSpawned {
                generation,
                instance,
                pid,
                probe_port,
            } => self.on_instance_spawned(generation, instance, pid, probe_port, now, &mut out),
            Input::InstanceSpawnFailed {
                generation,
                instance,
                reason,
            } => self.on_instance_spawn_failed(generation, instance, reason, now, &mut out),
            Input::InstanceReady {
                generation,
                instance,
            } => self.on_instance_ready(generation, instance, now, &mut out),
            Input::Timer => self.on_timer(now, &mut out),
            Input::Thaw => {
                if self.mode == Mode::Frozen {
                    self.mode = Mode::Running;
                }
            }
        }
        out.0
    }

    /// When `on` wants `Input::Timer` next; `None` for never.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.mode == Mode::Frozen {
            // Deadlines are handed over; the next image acts on them.
            return None;
        }
        let generations = self.generations.values().flat_map(|g| {
            let linger = g.lifecycle.is_exited().then(|| now + LINGER_POLL);
            [g.lifecycle.deadline(), linger]
        });
        self.backoff_until
            .into_iter()
            .chain(self.overlap_until())
            .chain(generations.flatten())
            .chain(self.instance_deadline())
            .min()
    }

    pub fn state(&self) -> ServiceState {
        if self.restart.is_some() {
            ServiceState::Restarting
        } else if self.no_instance_ready() {
            // Every instance of the serving generation is down, each
            // waiting for its own backoff.
            ServiceState::CrashLooping
        } else if self.current.is_some() {
            ServiceState::Ready
        } else if self.backoff_until.is_some() || self.consecutive_crashes > 0 && !self.stopping() {
            ServiceState::CrashLooping
        } else if self.generations.values().any(|g| g.lifecycle.is_starting()) {
            ServiceState::Starting
        } else {
            ServiceState::Stopped
        }
    }

    /// The generations still running (or with processes left), oldest first.
    pub fn generations(&self) -> Vec<GenerationInfo> {
        self.generations.values().map(Generation::info).collect()
    }

    pub fn consecutive_crashes(&self) -> u32 {
        self.consecutive_crashes
    }

    pub fn running_restart(&self) -> Option<RestartId> {
        self.restart.as_ref().map(|r| r.id)
    }

    pub fn current(&self) -> Option<u64> {
        self.current
    }

    /// The first process of a generation, leader of its process group.
    pub fn first_pid(&self, generation: u64) -> Option<Pid> {
        self.generations.get(&generation).map(|g| g.pid)
    }

    /// Whether the generation runs several instances.
    pub fn runs_instances_in(&self, generation: u64) -> bool {
        self.generations
            .get(&generation)
            .is_some_and(|g| !g.instances.is_empty())
    }

    pub fn lifecycle(&self, generation: u64) -> Option<Lifecycle> {
        self.generations.get(&generation).map(|g| g.lifecycle)
    }

    fn request_restart(
        &mut self,
        reason: Option<String>,
        requested_by: Option<RestartRequester>,
        out: &mut Out,
    ) {
        if let Some(run) = &self.restart {
            return out.push(Effect::Refuse(ErrorBody {
                kind: ErrorKind::RestartInProgress,
                message: format!(
                    "a restart of {:?} is already running (restart {})",
                    self.name, run.id
                ),
                running_restart: Some(run.id),
            }));
        }
        if self.stopping() {
            return out.push(Effect::Refuse(shutting_down(&self.name)));
        }
        if self.mode == Mode::Frozen {
            return out.push(Effect::Refuse(ErrorBody {
                kind: ErrorKind::ShuttingDown,
                message: "the agent is upgrading itself; try again in a moment".into(),
                running_restart: None,
            }));
        }
        self.opening_reason = reason.clone();
        out.push(Effect::OpenRestart {
            reason,
            old: self.current,
            requested_by,
        });
    }

    /// `X_BATON_RESTART=1` from a process of generation `number`: a restart
    /// the service asks for itself (its `kill -USR2` handler). Only the
    /// serving generation speaks for the service; a starting one has not
    /// taken over yet and a draining one has handed over already. At most
    /// one is accepted per `RESTART_REQUEST_INTERVAL`, and none while a
    /// restart runs.
    fn on_restart_request(
        &mut self,
        number: u64,
        sender: i32,
        reason: Option<String>,
        now: Now,
        out: &mut Out,
    ) {
        let requester = RestartRequester {
            generation: number,
            pid: u32::try_from(sender).unwrap_or(0),
        };
        let serving =
            self.current == Some(number) && self.lifecycle(number) == Some(Lifecycle::Ready);
        let next_accepted = self
            .restart_requested_at
            .map(|at| at + RESTART_REQUEST_INTERVAL)
            .filter(|next| *next > now.at);
        let refusal = if !serving {
            Some(RequestRefusal::NotServing)
        } else if self.mode != Mode::Running {
            Some(RequestRefusal::ShuttingDown)
        } else if let Some(run) = &self.restart {
            Some(RequestRefusal::RestartRunning(run.id))
        } else {
            next_accepted.map(|next| RequestRefusal::TooSoon {
                wait: next - now.at,
            })
        };
        if let Some(refusal) = refusal {
            return out.push(Effect::RestartRequestRefused { requester, refusal });
        }
        self.restart_requested_at = Some(now.at);
        let reason = match reason {
            Some(reason) => format!("requested by {requester}: {reason}"),
            None => format!("requested by {requester}"),
        };
        tracing::info!(service = %self.name, generation = number, pid = sender, %reason, "restart requested by the serving generation");
        self.request_restart(Some(reason), Some(requester), out);
    }

    fn begin_restart(&mut self, id: RestartId, now: Now, out: &mut Out) {
        self.backoff_until = None;
        // A crash restart already on its way is superseded by this one.
        let crash_starts: Vec<u64> = self
            .generations
            .values()
            .filter(|g| g.lifecycle.is_starting())
            .map(|g| g.number)
            .collect();
        for number in crash_starts {
            self.stop_generation(number, now, out);
        }
        let mut run = RestartRun::new(id, self.current);
        run.reason = self.opening_reason.take();
        run.started_at = now.unix_ms;
        self.restart = Some(run);
        self.start_generation(now, out);
    }

    fn start_generation(&mut self, now: Now, out: &mut Out) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if self.runs_instances() {
            return self.start_instances(generation, now, out);
        }
        out.push(Effect::Spawn {
            generation,
            probe_port: self.config.ready.uses_probe_port(),
        });
    }

    /// The restart waiting for its new generation, if this spawn is it.
    fn restart_awaiting_spawn(&mut self) -> Option<&mut RestartRun> {
        self.restart.as_mut().filter(|r| r.new.is_none())
    }

    fn on_spawned(
        &mut self,
        number: u64,
        pid: Pid,
        probe_port: Option<u16>,
        channel: bool,
        now: Now,
        out: &mut Out,
    ) {
        if matches!(
            self.config.ready,
            Readiness::Http(_) | Readiness::Tcp { .. }
        ) {
            out.push(Effect::Probe {
                generation: number,
                port: probe_port,
            });
        }
        self.generations.insert(
            number,
            Generation {
                number,
                pid,
                lifecycle: Lifecycle::Starting {
                    deadline: now.at + self.config.ready_timeout,
                },
                started_at: now.unix_ms,
                spawned: now.at,
                ready_at: None,
                ready_instant: None,
                status_text: None,
                connections: None,
                main_pid: None,
                channel,
                accepts_handoff: false,
                drain: None,
                instances: Vec::new(),
                retired: Vec::new(),
            },
        );
        tracing::info!(service = %self.name, generation = number, pid = pid.as_raw(), "generation spawned");
        out.push(Effect::Emit {
            restart: self.restart.as_ref().map(|r| r.id),
            kind: EventKind::GenerationSpawned {
                generation: number,
                pid: pid.as_raw() as u32,
                program: None,
            },
        });
        if let Some(run) = self.restart_awaiting_spawn() {
            run.new = Some(number);
            let restart = run.id;
            out.push(Effect::RecordNewGeneration {
                restart,
                generation: number,
            });
        }
        if self.config.ready == Readiness::Exec {
            self.on_ready(number, now, out);
        }
    }

    fn on_spawn_failed(&mut self, number: u64, reason: String, now: Now, out: &mut Out) {
        if let Some(run) = self.restart_awaiting_spawn() {
            run.verdict = Some(Verdict::new(
                RestartOutcome::Failed,
                format!("could not start a new generation: {reason}"),
            ));
            self.check_restart_done(out);
        } else {
            tracing::error!(service = %self.name, generation = number, %reason, "generation did not start");
            self.on_crash(None, now, out);
        }
    }

    fn on_ready(&mut self, number: u64, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if !generation.lifecycle.is_starting() {
            return;
        }
        generation.lifecycle = Lifecycle::Ready;
        generation.ready_at = Some(now.unix_ms);
        generation.ready_instant = Some(now.at);
        let startup_us = now.at.duration_since(generation.spawned).as_micros() as u64;
        let pid = generation.pid;
        // Instances get their priority back one by one, as each is ready.
        if self.config.warmup_nice != 0 && generation.instances.is_empty() {
            out.push(Effect::RestorePriority {
                generation: number,
                pgid: pid,
            });
        }
        tracing::info!(service = %self.name, generation = number, pid = pid.as_raw(), startup_us, "generation ready");
        out.push(Effect::Emit {
            restart: self.restart_of(number),
            kind: EventKind::GenerationReady {
                generation: number,
                pid: pid.as_raw() as u32,
                startup_us,
                program: None,
            },
        });
        if self.start_overlap(number, now, out) {
            return;
        }
        self.take_over(number, out);
    }

    /// The ready generation `number` becomes the one that serves; the one it
    /// replaces is counted, then told to stop (`drain_counted`).
    fn take_over(&mut self, number: u64, out: &mut Out) {
        let previous = self.current.replace(number);
        if let Some(old) = previous
            && old != number
            && let Some(generation) = self.generations.get(&old)
            && generation.lifecycle == Lifecycle::Ready
        {
            // Counted before the stop signal: the connections it drains.
            out.push(Effect::Count {
                generation: old,
                pgid: generation.pid,
                purpose: CountFor::Drain,
            });
        }
        self.check_restart_done(out);
    }

    /// `min_overlap`: the restart's new generation `number` is ready, but
    /// the old one stays current and untouched until the overlap ends, so
    /// a server that says ready before its workers are (gunicorn's arbiter)
    /// has them up before anyone depends on it alone. If the new one dies
    /// meanwhile, the restart rolls back as if it had never been ready.
    /// Returns whether the switch is held.
    fn start_overlap(&mut self, number: u64, now: Now, out: &mut Out) -> bool {
        let overlap = self.config.min_overlap;
        let Some(run) = self
            .restart
            .as_mut()
            .filter(|r| !overlap.is_zero() && r.new == Some(number) && r.verdict.is_none())
        else {
            return false;
        };
        let Some(old) = run.old.filter(|&old| {
            self.current == Some(old)
                && self
                    .generations
                    .get(&old)
                    .is_some_and(|g| g.lifecycle == Lifecycle::Ready)
        }) else {
            return false;
        };
        run.overlap_until = Some(now.at + overlap);
        tracing::info!(service = %self.name, generation = number, old, overlap_ms = overlap.as_millis() as u64, "both generations serve until the overlap ends");
        out.push(Effect::Emit {
            restart: Some(run.id),
            kind: EventKind::OverlapStarted {
                generation: number,
                old_generation: old,
                overlap_ms: overlap.as_millis() as u64,
            },
        });
        true
    }

    /// Ends the running restart's overlap, if it is in one: its new
    /// generation takes over, unless the restart was decided meanwhile.
    fn end_overlap(&mut self, out: &mut Out) {
        let Some(run) = self.restart.as_mut() else {
            return;
        };
        if run.overlap_until.take().is_none() || run.verdict.is_some() {
            return;
        }
        let (id, old) = (run.id, run.old);
        let Some(new) = run.new.filter(|n| {
            self.generations
                .get(n)
                .is_some_and(|g| g.lifecycle == Lifecycle::Ready)
        }) else {
            return;
        };
        tracing::info!(service = %self.name, generation = new, ?old, "overlap over");
        out.push(Effect::Emit {
            restart: Some(id),
            kind: EventKind::OverlapFinished {
                generation: new,
                old_generation: old.unwrap_or(0),
            },
        });
        self.take_over(new, out);
    }

    fn overlap_until(&self) -> Option<Instant> {
        self.restart.as_ref().and_then(|r| r.overlap_until)
    }

    fn drain_counted(&mut self, number: u64, connections: Option<u32>, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if generation.lifecycle != Lifecycle::Ready {
            return;
        }
        generation.connections = connections;
        generation.lifecycle = Lifecycle::Draining {
            deadline: now.at + self.config.drain_timeout,
        };
        generation.drain = Some(DrainTally::new(connections));
        let pid = generation.pid;
        let has_channel = generation.channel;
        let signal = self.config.stop_signal;
        // Its successor gets its end of the pair first, and the old one
        // finds its own in its channel by the time the signal arrives.
        if let Some(successor) = self.current.filter(|&n| n != number)
            && has_channel
            && self
                .generations
                .get(&successor)
                .is_some_and(|g| g.channel && g.accepts_handoff)
        {
            out.push(Effect::BrokerHandoff {
                restart: self.restart_of(number),
                from: number,
                to: successor,
            });
        }
        let deadline = now.at + self.config.drain_timeout;
        self.signal_generation(number, signal, InstancePhase::Draining { deadline }, out);
        let pid = self.generations.get(&number).map_or(pid, |g| g.pid);
        out.push(Effect::WatchDrain {
            generation: number,
            pgid: pid,
        });
        tracing::info!(service = %self.name, generation = number, ?connections, "draining");
        out.push(Effect::Emit {
            restart: self.restart_of(number),
            kind: EventKind::GenerationDraining {
                generation: number,
                pid: pid.as_raw() as u32,
                signal: signal.as_str().to_string(),
                connections,
            },
        });
    }

    fn on_connections(&mut self, number: u64, count: Option<u32>, out: &mut Out) {
        let restart = self.restart_of(number);
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let Some(count) = count else { return };
        if generation.connections == Some(count) {
            return;
        }
        generation.connections = Some(count);
        if matches!(generation.lifecycle, Lifecycle::Draining { .. }) {
            out.push(Effect::Emit {
                restart,
                kind: EventKind::DrainProgress {
                    generation: number,
                    connections: count,
                },
            });
        }
    }

    /// Stops a generation without draining: rollback, superseded start, stop.
    fn stop_generation(&mut self, number: u64, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let grace = self.config.drain_timeout.min(STOP_GRACE_MAX);
        match generation.lifecycle {
            Lifecycle::Stopping { .. }
            | Lifecycle::Exited {
                leftovers: Leftovers::Kill { .. },
                ..
            } => return,
            Lifecycle::Exited { exit, .. } => {
                generation.lifecycle = Lifecycle::Exited {
                    exit,
                    leftovers: Leftovers::Kill { at: now.at + grace },
                };
            }
            Lifecycle::Starting { .. } | Lifecycle::Ready => {
                let kill_at = now.at + grace;
                generation.lifecycle = Lifecycle::Stopping { kill_at };
                let signal = self.config.stop_signal;
                self.signal_generation(number, signal, InstancePhase::Stopping { kill_at }, out);
            }
            // Already signalled.
            Lifecycle::Draining { .. } => {
                generation.lifecycle = Lifecycle::Stopping {
                    kill_at: now.at + grace,
                };
            }
        }
        if self.current == Some(number) {
            self.current = None;
        }
    }

    fn stop_all(&mut self, now: Now, out: &mut Out) {
        self.mode = Mode::Stopping;
        self.backoff_until = None;
        let kill_at = now.at + self.config.drain_timeout;
        let running: Vec<u64> = self
            .generations
            .values()
            .filter(|g| matches!(g.lifecycle, Lifecycle::Starting { .. } | Lifecycle::Ready))
            .map(|g| g.number)
            .collect();
        for number in running {
            if let Some(generation) = self.generations.get_mut(&number) {
                generation.lifecycle = Lifecycle::Stopping { kill_at };
            }
            let signal = self.config.stop_signal;
            self.signal_generation(number, signal, InstancePhase::Stopping { kill_at }, out);
        }
        // A generation that has exited already has nothing left to start.
        for generation in self.generations.values_mut() {
            for instance in &mut generation.instances {
                if matches!(
                    instance.phase,
                    InstancePhase::Backoff { .. } | InstancePhase::Waiting
                ) {
                    instance.phase = InstancePhase::Exited;
                }
            }
        }
        self.current = None;
        if let Some(run) = &mut self.restart {
            run.overlap_until = None;
        }
        if let Some(run) = &mut self.restart
            && run.verdict.is_none()
        {
            run.verdict = Some(Verdict::new(
                RestartOutcome::Failed,
                "the service was stopped during the restart",
            ));
        }
        self.check_restart_done(out);
    }

    fn on_exit(&mut self, number: u64, pid: Pid, exit: ExitInfo, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get(&number) else {
            return;
        };
        if generation.lifecycle.is_exited() {
            return;
        }
        if !generation.instances.is_empty() {
            return self.on_instance_exit(number, pid, exit, now, out);
        }
        let main = generation.main();
        if pid != main {
            if pid == generation.pid {
                // The first process handed over to `main` and exited. If
                // `main` died first, while still its child, nobody will
                // report that.
                out.push(Effect::LocateMain {
                    generation: number,
                    main,
                    pgid: generation.pid,
                    after: MainCheck::FirstExited(exit),
                });
            }
            // Otherwise a process an earlier MAINPID= named, replaced since.
            return;
        }
        self.main_exited(number, exit, now, out);
    }

    fn on_main_located(
        &mut self,
        number: u64,
        main: Pid,
        in_group: bool,
        after: MainCheck,
        now: Now,
        out: &mut Out,
    ) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if generation.lifecycle.is_exited() {
            return;
        }
        match after {
            MainCheck::FirstExited(exit) => {
                if generation.main() != main {
                    return;
                }
                if in_group {
                    tracing::info!(service = %self.name, generation = number, first = generation.pid.as_raw(), main = main.as_raw(), %exit, "first process exited; the main process serves on");
                    return;
                }
                tracing::warn!(service = %self.name, generation = number, main = main.as_raw(), "the main process named by MAINPID is gone");
                self.main_exited(number, exit, now, out);
            }
            MainCheck::Named { sender } => {
                if !in_group {
                    tracing::warn!(service = %self.name, generation = number, main = main.as_raw(), "MAINPID names a process outside the generation; ignored");
                    return;
                }
                generation.main_pid = Some(main);
                tracing::info!(service = %self.name, generation = number, sender, main = main.as_raw(), "main process is now the one MAINPID named");
                // It becomes the agent's child (the agent is a subreaper)
                // once its parent exits, and is reaped and reported like any
                // generation.
                out.push(Effect::WatchExit {
                    generation: number,
                    pid: main,
                });
            }
        }
    }

    fn main_exited(&mut self, number: u64, exit: ExitInfo, now: Now, out: &mut Out) {
        let restart = self.restart_of(number);
        let was_current = self.current == Some(number);
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let was = generation.lifecycle;
        let pid = generation.pid;
        let stayed_up = generation
            .ready_instant
            .is_some_and(|t| now.at.duration_since(t) >= CRASH_FORGIVEN_AFTER);
        let (unexpected, leftovers) = match was {
            Lifecycle::Starting { .. } | Lifecycle::Ready => {
                // Workers left behind by a dead main process would keep
                // serving with nobody to manage them. (Each instance's were
                // signalled as it exited.)
                if generation.instances.is_empty() {
                    out.push(Effect::Signal {
                        pgid: pid,
                        signal: self.config.stop_signal,
                    });
                }
                let at = now.at + self.config.drain_timeout;
                (true, Leftovers::Kill { at })
            }
            Lifecycle::Draining { deadline } => (false, Leftovers::Drain { deadline }),
            Lifecycle::Stopping { kill_at } => (false, Leftovers::Kill { at: kill_at }),
            Lifecycle::Exited { .. } => return,
        };
        generation.lifecycle = Lifecycle::Exited { exit, leftovers };
        if unexpected {
            tracing::warn!(service = %self.name, generation = number, %exit, "generation died");
        } else {
            tracing::info!(service = %self.name, generation = number, %exit, "generation exited");
        }
        out.push(Effect::Emit {
            restart,
            kind: EventKind::GenerationExited {
                generation: number,
                pid: pid.as_raw() as u32,
                status: exit.to_string(),
                unexpected,
                program: None,
            },
        });
        out.push(Effect::CheckGroup {
            generation: number,
            pgid: pid,
        });
        let overlapping = self
            .restart
            .as_ref()
            .filter(|r| r.overlap_until.is_some())
            .map(|r| (r.new, r.old));
        match was {
            Lifecycle::Ready if overlapping.is_some_and(|(new, _)| new == Some(number)) => {
                // It was ready but never served alone: the old one, never
                // signalled, serves on.
                if let Some(run) = &mut self.restart {
                    run.overlap_until = None;
                }
                self.roll_back(
                    format!(
                        "generation {number} {exit} during its overlap with the old generation"
                    ),
                    now,
                    out,
                );
            }
            Lifecycle::Starting { .. } => {
                if self.restart.as_ref().and_then(|r| r.new) == Some(number) {
                    self.roll_back(
                        format!("generation {number} {exit} before it was ready"),
                        now,
                        out,
                    );
                } else if !self.stopping() {
                    self.on_crash(Some(number), now, out);
                }
            }
            Lifecycle::Ready if was_current => {
                self.current = None;
                if stayed_up {
                    self.consecutive_crashes = 0;
                }
                if let Some(run) = &mut self.restart
                    && run.new == Some(number)
                    && run.verdict.is_none()
                {
                    // It died while the old one drained: nothing to roll back to.
                    run.verdict = Some(Verdict::new(
                        RestartOutcome::Failed,
                        format!("generation {number} {exit} after it was ready"),
                    ));
                }
                let new_on_its_way = self
                    .restart
                    .as_ref()
                    .and_then(|r| r.new)
                    .filter(|&n| n != number)
                    .is_some_and(|n| self.generations.contains_key(&n));
                if !new_on_its_way && !self.stopping() {
                    self.on_crash(Some(number), now, out);
                }
                if overlapping.is_some_and(|(_, old)| old == Some(number)) {
                    // The old one is gone early: the ready one serves now.
                    self.end_overlap(out);
                }
            }
            _ => {}
        }
        self.check_restart_done(out);
    }

    fn roll_back(&mut self, reason: String, now: Now, out: &mut Out) {
        let Some(run) = &mut self.restart else { return };
        let new = run.new;
        let outcome = if run
            .old
            .is_some_and(|old| self.generations.contains_key(&old))
        {
            RestartOutcome::RolledBack
        } else {
            RestartOutcome::Failed
        };
        if run.verdict.is_none() {
            run.verdict = Some(Verdict::new(outcome, reason));
        }
        let old = run.old;
        if let Some(new) = new {
            self.stop_generation(new, now, out);
        }
        if let Some(old) = old {
            self.refill(old, out);
        }
        if self.current.is_none() && !self.stopping() {
            // Nothing serves: the old generation died during the restart.
            self.on_crash(None, now, out);
        }
    }

    fn on_crash(&mut self, generation: Option<u64>, now: Now, out: &mut Out) {
        if self.stopping() || !self.config.restart_on_crash {
            return;
        }
        self.consecutive_crashes += 1;
        let exponent = (self.consecutive_crashes - 1).min(16);
        let backoff = (BACKOFF_FIRST * 2u32.pow(exponent)).min(BACKOFF_MAX);
        self.backoff_until = Some(now.at + backoff);
        out.push(Effect::Emit {
            restart: None,
            kind: EventKind::CrashRestartScheduled {
                generation: generation.unwrap_or(0),
                backoff_ms: backoff.as_millis() as u64,
                consecutive_crashes: self.consecutive_crashes,
            },
        });
    }

    /// Removes an exited generation whose group is empty. Returns whether
    /// it was removed.
    fn remove_exited(&mut self, number: u64, out: &mut Out) -> bool {
        if !self
            .generations
            .get(&number)
            .is_some_and(|g| g.lifecycle.is_exited())
        {
            return false;
        }
        // Gone without being killed at its deadline: nothing was cut.
        self.finish_drain(number, 0, out);
        let generation = self.generations.remove(&number).expect("present");
        for pgid in Self::instance_groups(&generation) {
            out.push(Effect::Forget {
                generation: number,
                pgid,
            });
        }
        if self.current == Some(number) {
            self.current = None;
        }
        true
    }

    fn check_restart_done(&mut self, out: &mut Out) {
        let Some(run) = &self.restart else { return };
        if !run.finished(|n| self.generations.contains_key(&n), self.current) {
            return;
        }
        let run = self.restart.take().expect("checked above");
        let Verdict { outcome, reason } = run.outcome(self.config.drain_timeout);
        tracing::info!(service = %self.name, restart = run.id, %outcome, reason = reason.as_deref().unwrap_or(""), "restart finished");
        out.push(Effect::FinishRestart {
            restart: run.id,
            outcome,
            reason,
            connections_cut: run.connections_cut,
        });
        if self.restart_queued && !self.stopping() {
            self.restart_queued = false;
            out.push(Effect::Requeue(Input::Restart {
                reason: Some("configuration changed".into()),
            }));
        }
    }

    fn on_notify(
        &mut self,
        number: u64,
        sender: i32,
        messages: Vec<NotifyMessage>,
        now: Now,
        out: &mut Out,
    ) {
        for message in messages {
            match message {
                NotifyMessage::Ready => {
                    if self.config.ready != Readiness::Notify {
                        continue;
                    }
                    // Through the queue, so readiness is handled like a probe's.
                    if !self.runs_instances_in(number) {
                        out.push(Effect::Requeue(Input::Ready { generation: number }));
                    } else if let Some(instance) = self.instance_of(number, sender) {
                        out.push(Effect::Requeue(Input::InstanceReady {
                            generation: number,
                            instance,
                        }));
                    } else {
                        tracing::debug!(service = %self.name, generation = number, sender, "READY=1 from no instance's process group; ignored");
                    }
                }
                NotifyMessage::Status(text) => {
                    let restart = self.restart_of(number);
                    if let Some(generation) = self.generations.get_mut(&number) {
                        generation.status_text = Some(text.clone());
                    }
                    out.push(Effect::Emit {
                        restart,
                        kind: EventKind::GenerationStatus {
                            generation: number,
                            status: text,
                        },
                    });
                }
                NotifyMessage::ExtendTimeout(extra) => {
                    if let Some(generation) = self.generations.get_mut(&number) {
                        let wanted = now.at + extra;
                        match &mut generation.lifecycle {
                            Lifecycle::Starting { deadline }
                            | Lifecycle::Draining { deadline }
                            | Lifecycle::Exited {
                                leftovers: Leftovers::Drain { deadline },
                                ..
                            } => *deadline = (*deadline).max(wanted),
                            _ => {}
                        }
                    }
                }
                NotifyMessage::FdStore { name } => out.push(Effect::StoreFds {
                    name: name.unwrap_or_else(|| "stored".into()),
                }),
                NotifyMessage::FdStoreRemove { name } => out.push(Effect::RemoveFds {
                    name: name.unwrap_or_else(|| "stored".into()),
                }),
                NotifyMessage::MainPid(main) => {
                    self.on_main_pid(number, sender, Pid::from_raw(main), out)
                }
                // Closing the fds tells the sender that everything it sent
                // before has been acted on.
                NotifyMessage::Barrier => out.push(Effect::CloseFds),
                NotifyMessage::Stopping => {
                    tracing::debug!(service = %self.name, generation = number, "generation reports it is stopping");
                }
                NotifyMessage::Restart { reason } => {
                    self.on_restart_request(number, sender, reason, now, out)
                }
                other => {
                    tracing::debug!(service = %self.name, generation = number, message = ?other, "notify message ignored");
                }
            }
        }
    }

    /// `MAINPID=`: from now on the generation lives as long as `main` does.
    /// Only a process of the generation's own process group can be named, as
    /// systemd accepts only one of the unit's processes.
    fn on_main_pid(&mut self, number: u64, sender: i32, main: Pid, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if generation.lifecycle.is_exited() || generation.main_pid == Some(main) {
            return;
        }
        if !generation.instances.is_empty() {
            tracing::warn!(service = %self.name, generation = number, "MAINPID is not taken from a generation that runs instances; each instance is its first process");
            return;
        }
        if main == generation.pid {
            generation.main_pid = None;
            return;
        }
        out.push(Effect::LocateMain {
            generation: number,
            main,
            pgid: generation.pid,
            after: MainCheck::Named { sender },
        });
    }

    fn on_timer(&mut self, now: Now, out: &mut Out) {
        if self.mode == Mode::Frozen {
            return;
        }
        if self.overlap_until().is_some_and(|t| t <= now.at) {
            self.end_overlap(out);
        }
        if self.backoff_until.is_some_and(|t| t <= now.at) {
            self.backoff_until = None;
            if self.current.is_none() && !self.stopping() && self.restart.is_none() {
                self.start_generation(now, out);
            }
        }
        self.instance_timers(now, out);
        let due: Vec<(u64, Lifecycle)> = self
            .generations
            .values()
            .filter(|g| g.lifecycle.deadline().is_some_and(|d| d <= now.at))
            .map(|g| (g.number, g.lifecycle))
            .collect();
        for (number, lifecycle) in due {
            match lifecycle {
                Lifecycle::Starting { .. } => {
                    let reason = format!(
                        "generation {number} was not ready within {}",
                        humantime::format_duration(self.config.ready_timeout)
                    );
                    tracing::warn!(service = %self.name, generation = number, "{reason}");
                    if self.restart.as_ref().and_then(|r| r.new) == Some(number) {
                        self.roll_back(reason, now, out);
                    } else {
                        self.stop_generation(number, now, out);
                        self.on_crash(Some(number), now, out);
                    }
                }
                Lifecycle::Draining { .. }
                | Lifecycle::Exited {
                    leftovers: Leftovers::Drain { .. },
                    ..
                } => self.cut(number, now, out),
                Lifecycle::Stopping { .. }
                | Lifecycle::Exited {
                    leftovers: Leftovers::Kill { .. },
                    ..
                } => self.kill(number, now, out),
                Lifecycle::Ready => {}
            }
        }
        for generation in self.generations.values() {
            if generation.lifecycle.is_exited() {
                out.push(Effect::CheckGroup {
                    generation: generation.number,
                    pgid: generation.pid,
                });
            }
        }
    }

    /// The drain deadline has passed: count what is cut, then kill.
    fn cut(&mut self, number: u64, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let kill_at = now.at + KILL_AGAIN_AFTER;
        generation.lifecycle = match generation.lifecycle {
            Lifecycle::Exited { exit, .. } => Lifecycle::Exited {
                exit,
                leftovers: Leftovers::Kill { at: kill_at },
            },
            _ => Lifecycle::Stopping { kill_at },
        };
        out.push(Effect::Count {
            generation: number,
            pgid: generation.pid,
            purpose: CountFor::Cut,
        });
    }

    fn cut_counted(&mut self, number: u64, count: Option<u32>, out: &mut Out) {
        let restart = self.restart_of(number);
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let cut = count.unwrap_or(0);
        let pid = generation.pid;
        generation.connections = Some(cut);
        self.kill_generation(number, out);
        tracing::warn!(service = %self.name, generation = number, connections_cut = cut, "killed at the drain deadline");
        if let Some(run) = &mut self.restart
            && run.old == Some(number)
        {
            run.connections_cut = Some(cut);
        }
        out.push(Effect::Emit {
            restart,
            kind: EventKind::GenerationKilled {
                generation: number,
                pid: pid.as_raw() as u32,
                connections_cut: cut,
            },
        });
        self.finish_drain(number, cut, out);
    }

    /// Records what became of a draining generation's connections, once:
    /// when it was killed at its deadline with `cut` still open, or when it
    /// is gone (`cut` 0).
    fn finish_drain(&mut self, number: u64, cut: u32, out: &mut Out) {
        let restart = self.restart_of(number);
        let Some(tally) = self
            .generations
            .get_mut(&number)
            .and_then(|g| g.drain.as_mut())
            .filter(|d| !d.finished)
        else {
            return;
        };
        let tally = tally.finish(cut);
        tracing::info!(service = %self.name, generation = number, %tally, "drain finished");
        out.push(Effect::Emit {
            restart,
            kind: EventKind::DrainFinished {
                generation: number,
                handed_over: tally.handed_over,
                drained: tally.drained,
                cut: tally.cut,
            },
        });
    }

    /// What a generation said on its channel.
    fn on_channel(&mut self, number: u64, messages: Vec<ChannelMessage>, out: &mut Out) {
        for message in messages {
            match message {
                ChannelMessage::Handoff => {
                    if let Some(generation) = self.generations.get_mut(&number)
                        && !generation.accepts_handoff
                    {
                        generation.accepts_handoff = true;
                        tracing::debug!(service = %self.name, generation = number, "generation takes connections from its predecessor");
                    }
                }
                ChannelMessage::HandedOver(connections) => {
                    self.on_handed_over(number, connections, out)
                }
            }
        }
    }

    /// `HANDED_OVER=n`: counts only from the old generation of the running
    /// restart, while it drains, and once. A serving or starting generation
    /// has handed nothing over, whatever it says.
    fn on_handed_over(&mut self, number: u64, connections: u32, out: &mut Out) {
        let ignored = |why| Effect::ChannelMessageIgnored {
            generation: number,
            message: ChannelMessage::HandedOver(connections),
            why,
        };
        let Some(run) = self.restart.as_ref().filter(|r| r.old == Some(number)) else {
            return out.push(ignored("it is not the old generation of a running restart"));
        };
        let (restart, successor) = (run.id, run.new);
        let Some(successor) = successor else {
            return out.push(ignored("its restart has no new generation"));
        };
        let Some(tally) = self
            .generations
            .get_mut(&number)
            .and_then(|g| g.drain.as_mut())
            .filter(|d| !d.finished)
        else {
            return out.push(ignored("it is not draining"));
        };
        if tally.handed_over.is_some() {
            return out.push(ignored("it already reported its count"));
        }
        tally.handed_over = Some(connections);
        tracing::info!(service = %self.name, generation = number, to = successor, connections, "connections handed over");
        out.push(Effect::Emit {
            restart: Some(restart),
            kind: EventKind::ConnectionsHandedOver {
                from_generation: number,
                to_generation: successor,
                connections,
            },
        });
    }

    fn kill(&mut self, number: u64, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let at = now.at + KILL_AGAIN_AFTER;
        generation.lifecycle = match generation.lifecycle {
            Lifecycle::Exited { exit, .. } => Lifecycle::Exited {
                exit,
                leftovers: Leftovers::Kill { at },
            },
            _ => Lifecycle::Stopping { kill_at: at },
        };
        self.kill_generation(number, out);
    }

    /// The restart a generation takes part in, so its events become steps.
    fn restart_of(&self, number: u64) -> Option<RestartId> {
        self.restart
            .as_ref()
            .filter(|r| r.takes_part(number))
            .map(|r| r.id)
    }
}

pub fn shutting_down(service: &str) -> ErrorBody {
    ErrorBody {
        kind: ErrorKind::ShuttingDown,
        message: format!("service {service:?} is stopping"),
        running_restart: None,
    }
}
