//! The core's side of the agent's upgrade in place: what it hands to the
//! next image, and how that image takes it over.

use super::{Effect, Mode, Out, ServiceCore};
use crate::handover::{GenerationHandover, HandedPhase, ServiceHandover};
use crate::service::generation::{Generation, Lifecycle};
use baton_proto::RestartId;
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

/// The core's part of a service's handover.
pub struct HandedCore {
    pub generations: Vec<GenerationHandover>,
    pub current: Option<u64>,
    pub next_generation: u64,
    pub consecutive_crashes: u32,
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
        if let Some(run) = &self.restart {
            return Err(HandoverRefused::Restarting {
                service: self.name.clone(),
                id: run.id,
            });
        }
        if self.generations.values().any(|g| g.lifecycle.is_starting()) {
            return Err(HandoverRefused::Starting {
                service: self.name.clone(),
            });
        }
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        let generations = self
            .generations
            .values()
            .filter_map(|g| {
                let phase = match g.lifecycle {
                    Lifecycle::Draining { deadline } => HandedPhase::Draining {
                        left_ms: left(deadline),
                    },
                    Lifecycle::Stopping { kill_at } => HandedPhase::Stopping {
                        left_ms: left(kill_at),
                    },
                    Lifecycle::Ready | Lifecycle::Starting { .. } => HandedPhase::Ready,
                    Lifecycle::Exited { .. } => return None,
                };
                Some(GenerationHandover {
                    number: g.number,
                    pid: g.pid.as_raw(),
                    main_pid: g.main_pid.map(Pid::as_raw),
                    phase,
                    started_at: g.started_at,
                    ready_at: g.ready_at,
                    status_text: g.status_text.clone(),
                })
            })
            .collect();
        self.mode = Mode::Frozen;
        Ok(HandedCore {
            generations,
            current: self.current,
            next_generation: self.next_generation,
            consecutive_crashes: self.consecutive_crashes,
        })
    }

    /// Takes over the generations the agent's previous image ran.
    pub fn adopt(&mut self, handed: &ServiceHandover, now: Instant) -> Vec<Effect> {
        let mut out = Out(Vec::new());
        self.next_generation = handed.next_generation;
        self.consecutive_crashes = handed.consecutive_crashes;
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
                HandedPhase::Draining { left_ms } => {
                    out.push(Effect::WatchDrain {
                        generation: number,
                        pgid: pid,
                    });
                    Lifecycle::Draining {
                        deadline: now + Duration::from_millis(left_ms),
                    }
                }
                HandedPhase::Stopping { left_ms } => Lifecycle::Stopping {
                    kill_at: now + Duration::from_millis(left_ms),
                },
            };
            self.generations.insert(
                number,
                Generation {
                    number,
                    pid,
                    lifecycle,
                    started_at: handed.started_at,
                    spawned: now,
                    ready_at: handed.ready_at,
                    ready_instant: handed.ready_at.map(|_| now),
                    status_text: handed.status_text.clone(),
                    connections: None,
                    main_pid,
                },
            );
        }
        self.current = handed.current.filter(|n| self.generations.contains_key(n));
        tracing::info!(service = %self.name, generations = self.generations.len(), current = ?self.current, "adopted from the previous agent image");
        out.0
    }
}
