//! A service that runs several processes per generation (`instances = N`):
//! each instance's start, readiness, exit and crash restart, and the
//! restart that replaces the old instances in batches of `max_surge`.
//!
//! A generation with instances is still one generation: one number, one
//! cgroup (its connections are counted over all its instances), one
//! lifecycle. Its lifecycle follows its instances: it is ready once all of
//! them are (or, with nothing serving, once the first is), it drains and
//! stops as a whole, and it has exited once none of its processes is left.
//! In between, each instance lives on its own: one that exits while its
//! generation serves is started again after its own backoff, and the
//! others serve on.
//!
//! A restart with `max_surge = k` starts k new instances, waits for them to
//! be ready, then stops k old ones (old `i` for new `i`: stop signal, then
//! SIGKILL at the drain deadline), and starts the next k, until all N new
//! ones are ready; then the new generation serves and what is left of the
//! old one drains. So at least N - k old instances serve until the new
//! batch is ready, and never zero. A new instance that exits or is not
//! ready within `ready_timeout`, while its generation has not taken over,
//! rolls the restart back: every new instance is stopped, and the old
//! instances stopped by earlier batches are started again (in the old
//! generation, with the service's current command) while the old ones
//! still running serve.

use super::{BACKOFF_FIRST, BACKOFF_MAX, CRASH_FORGIVEN_AFTER, KILL_AGAIN_AFTER, STOP_GRACE_MAX};
use super::{Effect, Mode, Now, Out, ServiceCore};
use crate::config::Readiness;
use crate::reaper::ExitInfo;
use crate::service::generation::{Generation, Instance, InstancePhase, Lifecycle};
use baton_proto::EventKind;
use nix::unistd::Pid;

/// The pid of a generation none of whose instances has started yet.
pub(super) const NO_PID: Pid = Pid::from_raw(0);

impl ServiceCore {
    pub(super) fn runs_instances(&self) -> bool {
        self.config.instances > 1
    }

    /// A new generation of N instances, its first batch asked for.
    pub(super) fn start_instances(&mut self, number: u64, now: Now, out: &mut Out) {
        let count = self.config.instances;
        self.generations.insert(
            number,
            Generation {
                number,
                pid: NO_PID,
                lifecycle: Lifecycle::Starting {
                    // Each instance has its own deadline; the generation
                    // waits for them.
                    deadline: now.at + KILL_AGAIN_AFTER,
                },
                started_at: now.unix_ms,
                spawned: now.at,
                ready_at: None,
                ready_instant: None,
                status_text: None,
                connections: None,
                main_pid: None,
                channel: false,
                accepts_handoff: false,
                drain: None,
                instances: (0..count).map(Instance::new).collect(),
                retired: Vec::new(),
            },
        );
        if let Some(run) = self.restart.as_mut().filter(|r| r.new.is_none()) {
            run.new = Some(number);
            out.push(Effect::RecordNewGeneration {
                restart: run.id,
                generation: number,
            });
        }
        // A restart replaces the serving instances in batches; a first
        // start or a crash restart of the whole service starts them all.
        let batch = if self.restart.is_some() {
            self.config.max_surge.clamp(1, count)
        } else {
            count
        };
        self.spawn_waiting(number, batch, out);
    }

    /// Asks for up to `count` of the generation's waiting instances.
    fn spawn_waiting(&mut self, number: u64, count: u32, out: &mut Out) {
        let instances = self.config.instances;
        let probe_port = self.config.ready.uses_probe_port();
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        for instance in generation
            .instances
            .iter_mut()
            .filter(|i| i.phase == InstancePhase::Waiting)
            .take(count as usize)
        {
            instance.phase = InstancePhase::Spawning;
            out.push(Effect::SpawnInstance {
                generation: number,
                instance: instance.index,
                instances,
                probe_port,
            });
        }
    }

    pub(super) fn on_instance_spawned(
        &mut self,
        number: u64,
        index: u32,
        pid: Pid,
        probe_port: Option<u16>,
        now: Now,
        out: &mut Out,
    ) {
        let restart = self.restart_of(number);
        let ready_timeout = self.config.ready_timeout;
        let grace = self.config.drain_timeout.min(STOP_GRACE_MAX);
        let stop_signal = self.config.stop_signal;
        let winding_down = self.mode != Mode::Running;
        let Some(generation) = self.generations.get_mut(&number) else {
            // Its generation is gone: nobody wants it.
            return out.push(Effect::KillInstance { pgid: pid });
        };
        let first = generation.pid == NO_PID;
        if first {
            generation.pid = pid;
        }
        let generation_lives = matches!(
            generation.lifecycle,
            Lifecycle::Starting { .. } | Lifecycle::Ready
        );
        let Some(instance) = generation.instances.get_mut(index as usize) else {
            return out.push(Effect::KillInstance { pgid: pid });
        };
        instance.pid = Some(pid);
        if instance.phase != InstancePhase::Spawning || !generation_lives || winding_down {
            // Stopped while it was being started.
            instance.phase = InstancePhase::Stopping {
                kill_at: now.at + grace,
            };
            return out.push(Effect::SignalInstance {
                pgid: pid,
                signal: stop_signal,
            });
        }
        instance.phase = InstancePhase::Starting {
            deadline: now.at + ready_timeout,
        };
        tracing::info!(service = %self.name, generation = number, instance = index, pid = pid.as_raw(), "instance spawned");
        if first {
            out.push(Effect::Emit {
                restart,
                kind: EventKind::GenerationSpawned {
                    generation: number,
                    pid: pid.as_raw() as u32,
                    program: None,
                },
            });
        }
        match self.config.ready {
            Readiness::Http(_) | Readiness::Tcp { .. } => out.push(Effect::ProbeInstance {
                generation: number,
                instance: index,
                port: probe_port,
            }),
            Readiness::Exec => self.on_instance_ready(number, index, now, out),
            Readiness::Notify => {}
        }
    }

    pub(super) fn on_instance_spawn_failed(
        &mut self,
        number: u64,
        index: u32,
        reason: String,
        now: Now,
        out: &mut Out,
    ) {
        let Some(instance) = self
            .generations
            .get_mut(&number)
            .and_then(|g| g.instances.get_mut(index as usize))
            .filter(|i| i.phase == InstancePhase::Spawning)
        else {
            return;
        };
        instance.phase = InstancePhase::Exited;
        tracing::error!(service = %self.name, generation = number, instance = index, %reason, "instance did not start");
        if self.is_new_of_restart(number) {
            self.roll_back(
                format!("could not start instance {index} of generation {number}: {reason}"),
                now,
                out,
            );
        } else {
            self.instance_crashed(number, index, now, out);
        }
        self.settle_instances(number, None, now, out);
    }

    /// The generation is the new one of a restart that has not taken over.
    fn is_new_of_restart(&self, number: u64) -> bool {
        self.restart
            .as_ref()
            .is_some_and(|r| r.new == Some(number) && r.verdict.is_none())
            && self.current != Some(number)
    }

    /// The instance of the generation whose process group `sender` leads.
    pub(super) fn instance_of(&self, number: u64, sender: i32) -> Option<u32> {
        self.generations
            .get(&number)?
            .instances
            .iter()
            .find(|i| i.pid.is_some_and(|p| p.as_raw() == sender) && i.phase.alive())
            .map(|i| i.index)
    }

    pub(super) fn on_instance_ready(&mut self, number: u64, index: u32, now: Now, out: &mut Out) {
        let warmup = self.config.warmup_nice != 0;
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        let Some(instance) = generation.instances.get_mut(index as usize) else {
            return;
        };
        if !matches!(instance.phase, InstancePhase::Starting { .. }) {
            return;
        }
        instance.phase = InstancePhase::Ready;
        instance.ready_at = Some(now.unix_ms);
        instance.ready_instant = Some(now.at);
        let pid = instance.pid.expect("a starting instance has a process");
        tracing::info!(service = %self.name, generation = number, instance = index, pid = pid.as_raw(), "instance ready");
        if warmup {
            out.push(Effect::RestorePriority {
                generation: number,
                pgid: pid,
            });
        }
        let all_ready = generation
            .instances
            .iter()
            .all(|i| i.phase == InstancePhase::Ready);
        let starting = generation.lifecycle.is_starting();
        if self.is_new_of_restart(number) {
            if all_ready {
                self.on_ready(number, now, out);
            } else {
                self.next_batch(number, now, out);
            }
        } else if starting && self.current.is_none() {
            // Nothing serves: the first ready instance takes over, the
            // others join as they get ready.
            self.on_ready(number, now, out);
        }
    }

    /// A batch of the restart's new instances may be ready: stop as many
    /// old ones (old `i` for new `i`) and start the next batch.
    fn next_batch(&mut self, number: u64, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get(&number) else {
            return;
        };
        let in_flight = generation.instances.iter().any(|i| {
            matches!(
                i.phase,
                InstancePhase::Spawning | InstancePhase::Starting { .. }
            )
        });
        if in_flight {
            return;
        }
        let ready: Vec<u32> = generation
            .instances
            .iter()
            .filter(|i| i.phase == InstancePhase::Ready)
            .map(|i| i.index)
            .collect();
        if let Some(old) = self.restart.as_ref().and_then(|r| r.old) {
            for index in &ready {
                self.retire_instance(old, *index, now, out);
            }
        }
        tracing::info!(service = %self.name, generation = number, ready = ready.len(), of = self.config.instances, "batch ready; starting the next");
        self.spawn_waiting(number, self.config.max_surge.max(1), out);
    }

    /// Stops one old instance for good, draining: its stop signal, SIGKILL
    /// at the drain deadline. One not running is not started again.
    fn retire_instance(&mut self, number: u64, index: u32, now: Now, out: &mut Out) {
        let drain_timeout = self.config.drain_timeout;
        let signal = self.config.stop_signal;
        let Some(instance) = self
            .generations
            .get_mut(&number)
            .and_then(|g| g.instances.get_mut(index as usize))
        else {
            return;
        };
        match instance.phase {
            InstancePhase::Ready | InstancePhase::Starting { .. } => {
                let pid = instance.pid.expect("a running instance has a process");
                instance.phase = InstancePhase::Draining {
                    deadline: now.at + drain_timeout,
                };
                tracing::info!(service = %self.name, generation = number, instance = index, pid = pid.as_raw(), "instance replaced; draining");
                out.push(Effect::SignalInstance { pgid: pid, signal });
            }
            InstancePhase::Waiting | InstancePhase::Backoff { .. } => {
                instance.phase = InstancePhase::Exited;
            }
            // Still being started: stopped once it is.
            InstancePhase::Spawning => instance.phase = InstancePhase::Exited,
            InstancePhase::Draining { .. } | InstancePhase::Stopping { .. } => {}
            InstancePhase::Exited => {}
        }
    }

    /// After a rollback the old generation serves again with all its
    /// instances: those stopped by earlier batches (or that exited during
    /// the restart) are started again; a draining one is left to finish.
    pub(super) fn refill(&mut self, number: u64, out: &mut Out) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if !matches!(generation.lifecycle, Lifecycle::Ready) {
            return;
        }
        let mut refilled = Vec::new();
        for instance in &mut generation.instances {
            match instance.phase {
                InstancePhase::Draining { deadline } => {
                    if let Some(pid) = instance.pid.take() {
                        generation.retired.push((pid, deadline));
                    }
                }
                InstancePhase::Exited | InstancePhase::Waiting | InstancePhase::Backoff { .. } => {}
                _ => continue,
            }
            instance.phase = InstancePhase::Waiting;
            instance.restarts += 1;
            refilled.push(instance.index);
        }
        if !refilled.is_empty() {
            tracing::info!(service = %self.name, generation = number, instances = ?refilled, "rolled back: starting the old generation's stopped instances again");
            self.spawn_waiting(number, refilled.len() as u32, out);
        }
    }

    /// A process of a generation with instances was reaped.
    pub(super) fn on_instance_exit(
        &mut self,
        number: u64,
        pid: Pid,
        exit: ExitInfo,
        now: Now,
        out: &mut Out,
    ) {
        let restart = self.restart_of(number);
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if let Some(at) = generation.retired.iter().position(|(p, _)| *p == pid) {
            generation.retired.swap_remove(at);
            if pid != generation.pid {
                out.push(Effect::ForgetInstance { pgid: pid });
            }
            return self.settle_instances(number, Some(exit), now, out);
        }
        let Some(instance) = generation
            .instances
            .iter_mut()
            .find(|i| i.pid == Some(pid) && i.phase.alive())
        else {
            return;
        };
        let index = instance.index;
        let was = instance.phase;
        instance.phase = InstancePhase::Exited;
        let let_go = pid != generation.pid;
        if instance
            .ready_instant
            .is_some_and(|t| now.at.duration_since(t) >= CRASH_FORGIVEN_AFTER)
        {
            instance.crashes = 0;
        }
        let serving = matches!(
            generation.lifecycle,
            Lifecycle::Ready | Lifecycle::Starting { .. }
        );
        let unexpected =
            serving && matches!(was, InstancePhase::Starting { .. } | InstancePhase::Ready);
        if unexpected {
            tracing::warn!(service = %self.name, generation = number, instance = index, pid = pid.as_raw(), %exit, "instance died");
            // Its workers would serve on with nobody to manage them.
            out.push(Effect::SignalInstance {
                pgid: pid,
                signal: self.config.stop_signal,
            });
        } else {
            tracing::info!(service = %self.name, generation = number, instance = index, pid = pid.as_raw(), %exit, "instance exited");
        }
        if let_go {
            // The generation's first process stays its handle (its cgroup,
            // its counts) until it is forgotten; any other is let go now,
            // so an instance that keeps crashing leaves no route behind.
            out.push(Effect::ForgetInstance { pgid: pid });
        }
        if unexpected {
            let replaced = self.restart.as_ref().is_some_and(|r| r.old == Some(number));
            if self.is_new_of_restart(number) {
                self.roll_back(
                    format!("instance {index} of generation {number} {exit} before the generation was ready"),
                    now,
                    out,
                );
            } else if !replaced {
                let _ = restart;
                self.instance_crashed(number, index, now, out);
            }
        }
        self.settle_instances(number, Some(exit), now, out);
    }

    /// An instance of a generation that serves (or is starting on its own)
    /// exited: it is started again after its backoff, the others serve on.
    fn instance_crashed(&mut self, number: u64, index: u32, now: Now, out: &mut Out) {
        if self.mode != Mode::Running || !self.config.restart_on_crash {
            return;
        }
        let Some(instance) = self
            .generations
            .get_mut(&number)
            .and_then(|g| g.instances.get_mut(index as usize))
        else {
            return;
        };
        instance.crashes += 1;
        let exponent = (instance.crashes - 1).min(16);
        let backoff = (BACKOFF_FIRST * 2u32.pow(exponent)).min(BACKOFF_MAX);
        instance.phase = InstancePhase::Backoff {
            until: now.at + backoff,
        };
        let crashes = instance.crashes;
        tracing::info!(service = %self.name, generation = number, instance = index, backoff_ms = backoff.as_millis() as u64, "instance starts again after its backoff");
        out.push(Effect::Emit {
            restart: None,
            kind: EventKind::CrashRestartScheduled {
                generation: number,
                backoff_ms: backoff.as_millis() as u64,
                consecutive_crashes: crashes,
            },
        });
    }

    /// The generation has exited once none of its processes runs and none
    /// is to be started again.
    fn settle_instances(&mut self, number: u64, exit: Option<ExitInfo>, now: Now, out: &mut Out) {
        let Some(generation) = self.generations.get(&number) else {
            return;
        };
        if generation.lifecycle.is_exited()
            || !generation.retired.is_empty()
            || generation
                .instances
                .iter()
                .any(|i| i.phase.alive() || matches!(i.phase, InstancePhase::Backoff { .. }))
        {
            return;
        }
        if generation.pid == NO_PID {
            // Never had a process.
            self.generations.remove(&number);
            if self.current == Some(number) {
                self.current = None;
            }
            return self.check_restart_done(out);
        }
        let exit = exit.unwrap_or(ExitInfo::Code(0));
        self.main_exited(number, exit, now, out);
    }

    /// Acts on the instances' deadlines that have passed.
    pub(super) fn instance_timers(&mut self, now: Now, out: &mut Out) {
        let mut due = Vec::new();
        for generation in self.generations.values() {
            for instance in &generation.instances {
                if instance.phase.deadline().is_some_and(|d| d <= now.at) {
                    due.push((generation.number, instance.index, instance.phase));
                }
            }
        }
        for (number, index, phase) in due {
            match phase {
                InstancePhase::Backoff { .. } => {
                    if self.mode != Mode::Running {
                        continue;
                    }
                    let instances = self.config.instances;
                    let probe_port = self.config.ready.uses_probe_port();
                    if let Some(instance) = self
                        .generations
                        .get_mut(&number)
                        .and_then(|g| g.instances.get_mut(index as usize))
                    {
                        instance.phase = InstancePhase::Spawning;
                        instance.restarts += 1;
                        out.push(Effect::SpawnInstance {
                            generation: number,
                            instance: index,
                            instances,
                            probe_port,
                        });
                    }
                }
                InstancePhase::Starting { .. } => {
                    let reason = format!(
                        "instance {index} of generation {number} was not ready within {}",
                        humantime::format_duration(self.config.ready_timeout)
                    );
                    tracing::warn!(service = %self.name, "{reason}");
                    if self.is_new_of_restart(number) {
                        self.roll_back(reason, now, out);
                    } else {
                        // Killed; its exit starts it again after its backoff.
                        self.kill_instance(number, index, now, out, |kill_at| {
                            InstancePhase::Starting { deadline: kill_at }
                        });
                    }
                }
                InstancePhase::Draining { .. } | InstancePhase::Stopping { .. } => {
                    self.kill_instance(number, index, now, out, |kill_at| {
                        InstancePhase::Stopping { kill_at }
                    });
                }
                _ => {}
            }
        }
        let mut retired_due = Vec::new();
        for generation in self.generations.values_mut() {
            for (pid, deadline) in &mut generation.retired {
                if *deadline <= now.at {
                    *deadline = now.at + KILL_AGAIN_AFTER;
                    retired_due.push(*pid);
                }
            }
        }
        for pgid in retired_due {
            out.push(Effect::KillInstance { pgid });
        }
    }

    fn kill_instance(
        &mut self,
        number: u64,
        index: u32,
        now: Now,
        out: &mut Out,
        then: impl FnOnce(std::time::Instant) -> InstancePhase,
    ) {
        if let Some(instance) = self
            .generations
            .get_mut(&number)
            .and_then(|g| g.instances.get_mut(index as usize))
            && let Some(pgid) = instance.pid
        {
            out.push(Effect::KillInstance { pgid });
            instance.phase = then(now.at + KILL_AGAIN_AFTER);
        }
    }

    /// The earliest deadline of any instance.
    pub(super) fn instance_deadline(&self) -> Option<std::time::Instant> {
        self.generations
            .values()
            .flat_map(|g| {
                g.instances
                    .iter()
                    .filter_map(|i| i.phase.deadline())
                    .chain(g.retired.iter().map(|(_, d)| *d))
            })
            .min()
    }

    /// Signals a whole generation; with instances, each running one once,
    /// and each is marked `phase`. Instances not running are not started
    /// again.
    pub(super) fn signal_generation(
        &mut self,
        number: u64,
        signal: nix::sys::signal::Signal,
        phase: InstancePhase,
        out: &mut Out,
    ) {
        let Some(generation) = self.generations.get_mut(&number) else {
            return;
        };
        if generation.instances.is_empty() {
            return out.push(Effect::Signal {
                pgid: generation.pid,
                signal,
            });
        }
        let mut pgids = Vec::new();
        for instance in &mut generation.instances {
            match instance.phase {
                InstancePhase::Ready | InstancePhase::Starting { .. } => {
                    pgids.extend(instance.pid);
                    instance.phase = phase;
                }
                InstancePhase::Draining { .. } => instance.phase = phase,
                InstancePhase::Waiting | InstancePhase::Backoff { .. } => {
                    instance.phase = InstancePhase::Exited;
                }
                // Stopped when its spawn is answered.
                InstancePhase::Spawning => instance.phase = InstancePhase::Exited,
                InstancePhase::Stopping { .. } | InstancePhase::Exited => {}
            }
        }
        if !pgids.is_empty() {
            out.push(Effect::SignalInstances { pgids, signal });
        }
    }

    /// SIGKILLs a whole generation: every process group it has, and its
    /// cgroup.
    pub(super) fn kill_generation(&self, number: u64, out: &mut Out) {
        let Some(generation) = self.generations.get(&number) else {
            return;
        };
        if generation.instances.is_empty() {
            return out.push(Effect::Kill {
                pgid: generation.pid,
            });
        }
        let mut pgids: Vec<Pid> = generation
            .instances
            .iter()
            .filter(|i| i.phase.alive())
            .filter_map(|i| i.pid)
            .chain(generation.retired.iter().map(|(p, _)| *p))
            .collect();
        if pgids.is_empty() {
            pgids.push(generation.pid);
        }
        for pgid in pgids {
            out.push(Effect::Kill { pgid });
        }
    }

    /// Every process group an instance of the generation led, for `Forget`.
    pub(super) fn instance_groups(generation: &Generation) -> Vec<Pid> {
        let mut pgids: Vec<Pid> = generation
            .instances
            .iter()
            .filter_map(|i| i.pid)
            .filter(|p| *p != generation.pid)
            .collect();
        pgids.push(generation.pid);
        pgids
    }

    /// Whether the serving generation runs instances and none is ready.
    pub(super) fn no_instance_ready(&self) -> bool {
        self.current
            .and_then(|n| self.generations.get(&n))
            .is_some_and(|g| {
                !g.instances.is_empty()
                    && !g.instances.iter().any(|i| i.phase == InstancePhase::Ready)
            })
    }
}
