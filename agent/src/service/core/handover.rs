//! The core's side of the agent's upgrade in place and of its recovery after
//! it was killed: the snapshot it hands to the next image or keeps in the
//! state file, and how an agent takes such a snapshot over.

use super::{Effect, Mode, Now, Out, ServiceCore};
use crate::handover::{
    GenerationHandover, HandedPhase, InstanceHandover, RestartHandover, ServiceHandover,
};
use crate::service::generation::{Generation, Instance, InstancePhase, Lifecycle};
use crate::service::restart::{RestartRun, Verdict};
use baton_proto::InstanceState;
use baton_proto::{RestartId, RestartOutcome};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Why the agent may not re-exec itself now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoverRefused {
    #[error("restart {id} of {service:?} is running")]
    Restarting { service: String, id: RestartId },
    #[error("a generation of {service:?} is starting")]
    Starting { service: String },
    #[error("service {service:?} is stopping")]
    Stopping { service: String },
}

/// The core's part of a service's handover or state-file entry.
pub struct HandedCore {
    pub generations: Vec<GenerationHandover>,
    pub current: Option<u64>,
    pub next_generation: u64,
    pub consecutive_crashes: u32,
    pub restart: Option<RestartHandover>,
}

/// Where the snapshot being adopted comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predecessor {
    /// The agent's previous image, same pid: its generations are children.
    Image,
    /// An agent that was killed; its generations survived it and are
    /// nobody's children now.
    Dead,
}

impl ServiceCore {
    /// Describes the service for the agent's next image and stops acting
    /// until thawed. Refused while a restart or a start runs.
    pub fn hand_over(&mut self, now: Instant) -> Result<HandedCore, HandoverRefused> {
        if self.mode == Mode::Stopping {
            return Err(HandoverRefused::Stopping {
                service: self.name.clone(),
            });
        }
        // A restart in its overlap has nothing in flight but a deadline,
        // which the next image takes over; any other part of a restart waits
        // on an answer only this image would see.
        if let Some(run) = self.restart.as_ref().filter(|r| r.overlap_until.is_none()) {
            return Err(HandoverRefused::Restarting {
                service: self.name.clone(),
                id: run.id,
            });
        }
        let instance_starting = self.generations.values().any(|g| {
            g.instances.iter().any(|i| {
                matches!(
                    i.phase,
                    InstancePhase::Spawning | InstancePhase::Starting { .. }
                )
            })
        });
        if instance_starting || self.generations.values().any(|g| g.lifecycle.is_starting()) {
            return Err(HandoverRefused::Starting {
                service: self.name.clone(),
            });
        }
        let anchor = Now {
            at: now,
            unix_ms: baton_proto::now_millis(),
        };
        let handed = self.snapshot(now, anchor);
        self.mode = Mode::Frozen;
        Ok(handed)
    }

    /// What the service runs, with every deadline both as time left from
    /// `now` and as a wall-clock time, converted through `anchor` (a fixed
    /// anchor gives the same wall-clock time for the same deadline on every
    /// call, so unchanged state gives an equal snapshot).
    pub fn snapshot(&self, now: Instant, anchor: Now) -> HandedCore {
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        let wall = |t: Instant| match t.checked_duration_since(anchor.at) {
            Some(after) => anchor.unix_ms + after.as_millis() as u64,
            None => anchor
                .unix_ms
                .saturating_sub(anchor.at.duration_since(t).as_millis() as u64),
        };
        let generations = self
            .generations
            .values()
            .filter_map(|g| {
                let phase = match g.lifecycle {
                    Lifecycle::Starting { deadline } => HandedPhase::Starting {
                        left_ms: left(deadline),
                    },
                    Lifecycle::Draining { deadline } => HandedPhase::Draining {
                        left_ms: left(deadline),
                    },
                    Lifecycle::Stopping { kill_at } => HandedPhase::Stopping {
                        left_ms: left(kill_at),
                    },
                    Lifecycle::Ready => HandedPhase::Ready,
                    Lifecycle::Exited { .. } => return None,
                };
                Some(GenerationHandover {
                    output: None,
                    number: g.number,
                    pid: g.pid.as_raw(),
                    main_pid: g.main_pid.map(Pid::as_raw),
                    phase,
                    started_at: g.started_at,
                    ready_at: g.ready_at,
                    status_text: g.status_text.clone(),
                    start_time: None,
                    cgroup: None,
                    channel_fd: None,
                    deadline_at: g.lifecycle.deadline().map(wall),
                    accepts_handoff: g.accepts_handoff,
                    instances: g
                        .instances
                        .iter()
                        .map(|i| InstanceHandover {
                            index: i.index,
                            pid: i.pid.filter(|_| i.phase.alive()).map(Pid::as_raw),
                            state: i.phase.state(),
                            left_ms: i.phase.deadline().map_or(0, left),
                            ready_at: i.ready_at,
                            restarts: i.restarts,
                            output: None,
                        })
                        .collect(),
                    program: None,
                })
            })
            .collect();
        HandedCore {
            generations,
            current: self.current,
            next_generation: self.next_generation,
            consecutive_crashes: self.consecutive_crashes,
            restart: self.restart.as_ref().map(|run| RestartHandover {
                id: run.id,
                reason: run.reason.clone(),
                started_at: run.started_at,
                old: run.old,
                new: run.new,
                verdict: run.verdict.as_ref().map(|v| (v.outcome, v.reason.clone())),
                connections_cut: run.connections_cut,
                overlap_left_ms: run.overlap_until.map(left),
                overlap_until_at: run.overlap_until.map(wall),
            }),
        }
    }

    /// Takes over the generations the agent's previous image ran, or those
    /// a killed agent left running (`from`). After a killed agent, deadlines
    /// are its wall-clock ones, and a restart it was running goes on only
    /// where it can be finished: its new generation serves and only the old
    /// one's drain was left. Otherwise the new generation is stopped and the
    /// restart ends `interrupted`.
    pub fn adopt(&mut self, handed: &ServiceHandover, now: Now, from: Predecessor) -> Vec<Effect> {
        let mut out = Out(Vec::new());
        self.next_generation = handed.next_generation;
        self.consecutive_crashes = handed.consecutive_crashes;
        let until = |left_ms: u64, deadline_at: Option<u64>| match (from, deadline_at) {
            (Predecessor::Dead, Some(at)) => {
                now.at + Duration::from_millis(at.saturating_sub(now.unix_ms))
            }
            _ => now.at + Duration::from_millis(left_ms),
        };
        for handed in &handed.generations {
            let pid = Pid::from_raw(handed.pid);
            let number = handed.number;
            out.push(Effect::Route {
                generation: number,
                pgid: pid,
            });
            out.push(Effect::WatchExit {
                generation: number,
                pid,
            });
            let main_pid = handed.main_pid.map(Pid::from_raw);
            if let Some(main) = main_pid {
                out.push(Effect::WatchExit {
                    generation: number,
                    pid: main,
                });
            }
            let lifecycle = match handed.phase {
                HandedPhase::Ready => Lifecycle::Ready,
                HandedPhase::Starting { left_ms } => Lifecycle::Starting {
                    deadline: until(left_ms, handed.deadline_at),
                },
                HandedPhase::Draining { left_ms } => {
                    out.push(Effect::WatchDrain {
                        generation: number,
                        pgid: pid,
                    });
                    Lifecycle::Draining {
                        deadline: until(left_ms, handed.deadline_at),
                    }
                }
                HandedPhase::Stopping { left_ms } => Lifecycle::Stopping {
                    kill_at: until(left_ms, handed.deadline_at),
                },
            };
            self.generations.insert(
                number,
                Generation {
                    number,
                    pid,
                    lifecycle,
                    started_at: handed.started_at,
                    spawned: now.at,
                    ready_at: handed.ready_at,
                    ready_instant: handed.ready_at.map(|_| now.at),
                    status_text: handed.status_text.clone(),
                    connections: None,
                    main_pid,
                    // The previous image's end came along; a killed agent's
                    // died with it.
                    channel: from == Predecessor::Image && handed.channel_fd.is_some(),
                    accepts_handoff: from == Predecessor::Image && handed.accepts_handoff,
                    drain: None,
                    instances: Vec::new(),
                    retired: Vec::new(),
                },
            );
            self.adopt_instances(number, &handed.instances, now, &mut out);
        }
        self.current = handed.current.filter(|n| self.generations.contains_key(n));
        if let Some(restart) = &handed.restart {
            self.resume_restart(restart, now, from, &mut out);
        }
        // A generation left starting outside a restart (a crash restart) is
        // stopped: its readiness was the dead agent's to see.
        let starting: Vec<u64> = self
            .generations
            .values()
            .filter(|g| g.lifecycle.is_starting())
            .map(|g| g.number)
            .collect();
        for number in starting {
            self.stop_generation(number, now, &mut out);
        }
        match from {
            Predecessor::Image => {
                tracing::info!(service = %self.name, generations = self.generations.len(), current = ?self.current, "adopted from the previous agent image")
            }
            Predecessor::Dead => {
                tracing::info!(service = %self.name, generations = self.generations.len(), current = ?self.current, "recovered what the killed agent left running")
            }
        }
        out.0
    }

    /// Takes over a generation's instances: each running one is routed and
    /// watched; one that ran nothing is started again at once.
    fn adopt_instances(
        &mut self,
        number: u64,
        handed: &[InstanceHandover],
        now: Now,
        out: &mut Out,
    ) {
        if handed.is_empty() {
            return;
        }
        let first = Pid::from_raw(self.generations.get(&number).map_or(0, |g| g.pid.as_raw()));
        let mut instances = Vec::with_capacity(handed.len());
        for (at, handed) in handed.iter().enumerate() {
            let mut instance = Instance::new(at as u32);
            instance.ready_at = handed.ready_at;
            instance.ready_instant = handed.ready_at.map(|_| now.at);
            instance.restarts = handed.restarts;
            let until = now.at + Duration::from_millis(handed.left_ms);
            instance.phase = match (handed.pid, handed.state) {
                (Some(pid), state) => {
                    let pid = Pid::from_raw(pid);
                    instance.pid = Some(pid);
                    // The first instance's process is the generation's,
                    // routed and watched already.
                    if pid != first {
                        out.push(Effect::Route {
                            generation: number,
                            pgid: pid,
                        });
                        out.push(Effect::WatchExit {
                            generation: number,
                            pid,
                        });
                    }
                    match state {
                        InstanceState::Draining => InstancePhase::Draining { deadline: until },
                        InstanceState::Stopping => InstancePhase::Stopping { kill_at: until },
                        _ => InstancePhase::Ready,
                    }
                }
                (None, InstanceState::Exited) => InstancePhase::Exited,
                // Its backoff (or its batch) was the previous image's.
                (None, _) => InstancePhase::Backoff { until: now.at },
            };
            instances.push(instance);
        }
        if let Some(generation) = self.generations.get_mut(&number) {
            generation.instances = instances;
        }
    }

    /// Takes over a restart a killed agent (or, in its overlap, the
    /// previous image) was running. One in its overlap goes on: its new
    /// generation stays ready and the old one current until the overlap's
    /// deadline, or the new one takes over at once if the old one is gone.
    fn resume_restart(
        &mut self,
        handed: &RestartHandover,
        now: Now,
        from: Predecessor,
        out: &mut Out,
    ) {
        let mut run = RestartRun::new(handed.id, handed.old);
        run.reason = handed.reason.clone();
        run.started_at = handed.started_at;
        run.new = handed.new;
        run.connections_cut = handed.connections_cut;
        run.verdict = handed
            .verdict
            .clone()
            .map(|(outcome, reason)| Verdict { outcome, reason });
        let new_serves = run.new.is_some() && run.new == self.current;
        let new_ready = run.new.is_some_and(|n| {
            self.generations
                .get(&n)
                .is_some_and(|g| g.lifecycle == Lifecycle::Ready)
        });
        if run.verdict.is_none() && !new_serves && new_ready && handed.overlap_left_ms.is_some() {
            let until = match (from, handed.overlap_until_at) {
                (Predecessor::Dead, Some(at)) => {
                    now.at + Duration::from_millis(at.saturating_sub(now.unix_ms))
                }
                _ => now.at + Duration::from_millis(handed.overlap_left_ms.unwrap_or(0)),
            };
            run.overlap_until = Some(until);
        }
        let old_serves = run.old.is_some() && run.old == self.current;
        if run.overlap_until.is_some() && !old_serves {
            // The old generation died while nobody watched: the ready one
            // serves now.
            self.restart = Some(run);
            self.end_overlap(out);
            return;
        }
        if run.verdict.is_none() && !new_serves && run.overlap_until.is_none() {
            let what = match run.new {
                Some(new) if self.generations.contains_key(&new) => {
                    format!("; generation {new}, not ready yet, was stopped")
                }
                _ => String::new(),
            };
            run.verdict = Some(Verdict::new(
                RestartOutcome::Interrupted,
                format!("the agent was killed during the restart{what}"),
            ));
            if let Some(new) = run.new {
                self.stop_generation(new, now, out);
            }
        }
        tracing::info!(service = %self.name, restart = run.id, verdict = ?run.verdict.as_ref().map(|v| v.outcome), "took over the restart the previous agent was running");
        self.restart = Some(run);
        self.check_restart_done(out);
    }
}
