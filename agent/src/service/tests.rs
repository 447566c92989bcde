//! Every transition of the service core, driven by hand: inputs in, effects
//! and state out. No process is spawned and no clock is read but the one the
//! test moves.

use super::core::{
    CountFor, Effect, HandoverRefused, Input, MainCheck, Now, RESTART_REQUEST_INTERVAL,
    RequestRefusal, ServiceCore,
};
use super::generation::{Leftovers, Lifecycle};
use crate::channel::ChannelMessage;
use crate::config::{Readiness, ServiceConfig};
use crate::notify::NotifyMessage;
use crate::reaper::ExitInfo;
use baton_proto::{
    ErrorKind, EventKind, GenerationState, RestartOutcome, RestartRequester, ServiceState,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::sync::Arc;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const RESTART: u64 = 7;
const OLD: i32 = 100;
const NEW: i32 = 200;

fn config() -> ServiceConfig {
    ServiceConfig {
        name: "web".into(),
        command: vec!["web".into()],
        env: Default::default(),
        workdir: None,
        user: None,
        ready: Readiness::Notify,
        ready_timeout: READY_TIMEOUT,
        stop_signal: Signal::SIGTERM,
        drain_timeout: DRAIN_TIMEOUT,
        min_overlap: Duration::ZERO,
        restart_on_crash: true,
        warmup_nice: 0,
        sockets: Vec::new(),
        instances: 1,
        max_surge: 1,
        version_env: None,
        output: crate::config::OutputMode::Capture,
    }
}

fn pid(raw: i32) -> Pid {
    Pid::from_raw(raw)
}

/// A core and the clock the test moves.
struct Bench {
    core: ServiceCore,
    start: Instant,
    now: Instant,
}

impl Bench {
    fn new(config: ServiceConfig) -> Self {
        let start = Instant::now();
        Bench {
            core: ServiceCore::new(Arc::new(config)),
            start,
            now: start,
        }
    }

    fn on(&mut self, input: Input) -> Vec<Effect> {
        let millis = self.now.duration_since(self.start).as_millis() as u64;
        let now = Now {
            at: self.now,
            unix_ms: 1_000_000 + millis,
        };
        self.core.on(now, input)
    }

    fn wait(&mut self, duration: Duration) {
        self.now += duration;
    }

    /// Waits until the core's next deadline and lets it act.
    fn timer(&mut self) -> Vec<Effect> {
        let deadline = self.core.poll_timeout(self.now).expect("a deadline");
        self.now = self.now.max(deadline);
        self.on(Input::Timer)
    }

    /// Generation 1 (pid 100) spawned and ready.
    fn serving() -> Self {
        let mut bench = Bench::new(config());
        bench.serve_first();
        bench
    }

    fn serve_first(&mut self) {
        assert_eq!(
            self.on(Input::Start),
            [Effect::Spawn {
                generation: 1,
                probe_port: false
            }]
        );
        self.on(Input::Spawned {
            generation: 1,
            pid: pid(OLD),
            probe_port: None,
            channel: true,
        });
        assert_eq!(
            self.on(Input::Notify {
                generation: 1,
                sender: OLD,
                messages: vec![NotifyMessage::Ready],
            }),
            [Effect::Requeue(Input::Ready { generation: 1 })]
        );
        self.on(Input::Ready { generation: 1 });
        assert_eq!(self.core.state(), ServiceState::Ready);
    }

    /// Restart 7 begun: generation 2 (pid 200) spawned and starting.
    fn restarting() -> Self {
        let mut bench = Bench::serving();
        bench.restart();
        bench
    }

    fn restart(&mut self) {
        assert_eq!(
            self.on(Input::Restart {
                reason: Some("deploy".into())
            }),
            [Effect::OpenRestart {
                reason: Some("deploy".into()),
                old: Some(1),
                requested_by: None,
            }]
        );
        assert_eq!(
            self.on(Input::RestartOpened { id: RESTART }),
            [Effect::Spawn {
                generation: 2,
                probe_port: false
            }]
        );
        assert_eq!(
            self.on(Input::Spawned {
                generation: 2,
                pid: pid(NEW),
                probe_port: None,
                channel: true,
            }),
            [
                Effect::Emit {
                    restart: Some(RESTART),
                    kind: EventKind::GenerationSpawned {
                        generation: 2,
                        pid: NEW as u32,
                        program: None,
                    },
                },
                Effect::RecordNewGeneration {
                    restart: RESTART,
                    generation: 2
                },
            ]
        );
        assert_eq!(self.core.state(), ServiceState::Restarting);
    }

    /// Generation 2 ready, generation 1 counted with 3 connections and draining.
    fn draining() -> Self {
        let mut bench = Bench::restarting();
        bench.wait(Duration::from_millis(250));
        let ready = bench.on(Input::Ready { generation: 2 });
        assert_eq!(
            ready,
            [
                Effect::Emit {
                    restart: Some(RESTART),
                    kind: EventKind::GenerationReady {
                        generation: 2,
                        pid: NEW as u32,
                        startup_us: 250_000,
                        program: None,
                    },
                },
                Effect::Count {
                    generation: 1,
                    pgid: pid(OLD),
                    purpose: CountFor::Drain,
                },
            ]
        );
        assert_eq!(
            bench.on(Input::Counted {
                generation: 1,
                count: Some(3),
                purpose: CountFor::Drain,
            }),
            [
                Effect::Signal {
                    pgid: pid(OLD),
                    signal: Signal::SIGTERM
                },
                Effect::WatchDrain {
                    generation: 1,
                    pgid: pid(OLD)
                },
                Effect::Emit {
                    restart: Some(RESTART),
                    kind: EventKind::GenerationDraining {
                        generation: 1,
                        pid: OLD as u32,
                        signal: "SIGTERM".into(),
                        connections: Some(3),
                    },
                },
            ]
        );
        assert_eq!(bench.core.current(), Some(2));
        bench
    }

    /// The restart a request of generation 1 opened runs to success at
    /// once: generation 2 (pid 200) serves.
    fn run_requested_restart(&mut self) {
        self.on(Input::RestartOpened { id: RESTART });
        self.on(Input::Spawned {
            generation: 2,
            pid: pid(NEW),
            probe_port: None,
            channel: true,
        });
        self.on(Input::Ready { generation: 2 });
        self.on(Input::Counted {
            generation: 1,
            count: Some(0),
            purpose: CountFor::Drain,
        });
        let done = self.exit_and_empty(1, OLD, ExitInfo::Code(0));
        assert_eq!(
            finished(&done).map(|(outcome, ..)| outcome),
            Some(RestartOutcome::Succeeded)
        );
        assert_eq!(self.core.current(), Some(2));
    }

    /// The generation's main process exits and its group empties.
    fn exit_and_empty(&mut self, generation: u64, raw: i32, exit: ExitInfo) -> Vec<Effect> {
        let mut effects = self.on(Input::Exited {
            generation,
            pid: pid(raw),
            exit,
        });
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::CheckGroup { generation: g, .. } if *g == generation)),
            "{effects:?}"
        );
        effects.extend(self.on(Input::GroupEmpty { generation }));
        effects
    }
}

/// `X_BATON_RESTART=1` from process `sender` of `generation`.
fn restart_request(generation: u64, sender: i32, reason: Option<&str>) -> Input {
    Input::Notify {
        generation,
        sender,
        messages: vec![NotifyMessage::Restart {
            reason: reason.map(str::to_owned),
        }],
    }
}

fn refused(generation: u64, sender: i32, refusal: RequestRefusal) -> Effect {
    Effect::RestartRequestRefused {
        requester: RestartRequester {
            generation,
            pid: sender as u32,
        },
        refusal,
    }
}

fn finished(effects: &[Effect]) -> Option<(RestartOutcome, Option<String>, Option<u32>)> {
    effects.iter().find_map(|e| match e {
        Effect::FinishRestart {
            outcome,
            reason,
            connections_cut,
            ..
        } => Some((*outcome, reason.clone(), *connections_cut)),
        _ => None,
    })
}

fn events(effects: &[Effect]) -> Vec<&EventKind> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit { kind, .. } => Some(kind),
            _ => None,
        })
        .collect()
}

#[test]
fn a_restart_succeeds_once_the_old_generation_has_drained() {
    let mut bench = Bench::draining();
    assert!(matches!(
        bench.core.lifecycle(1),
        Some(Lifecycle::Draining { .. })
    ));
    assert_eq!(
        bench.on(Input::Connections {
            generation: 1,
            count: Some(1)
        }),
        [Effect::Emit {
            restart: Some(RESTART),
            kind: EventKind::DrainProgress {
                generation: 1,
                connections: 1
            },
        }]
    );
    // The same count again is no news.
    assert!(
        bench
            .on(Input::Connections {
                generation: 1,
                count: Some(1)
            })
            .is_empty()
    );
    let exited = bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    assert_eq!(
        exited,
        [
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::GenerationExited {
                    generation: 1,
                    pid: OLD as u32,
                    status: "exited with status 0".into(),
                    unexpected: false,
                    program: None,
                },
            },
            Effect::CheckGroup {
                generation: 1,
                pgid: pid(OLD)
            },
        ]
    );
    // Not done while a process of its group is left.
    assert_eq!(bench.core.state(), ServiceState::Restarting);
    assert_eq!(
        bench.on(Input::GroupEmpty { generation: 1 }),
        [
            // It exited: its 3 connections were drained.
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::DrainFinished {
                    generation: 1,
                    handed_over: 0,
                    drained: 3,
                    cut: 0,
                },
            },
            Effect::Forget {
                generation: 1,
                pgid: pid(OLD)
            },
            Effect::FinishRestart {
                restart: RESTART,
                outcome: RestartOutcome::Succeeded,
                reason: None,
                connections_cut: None,
            },
        ]
    );
    assert_eq!(bench.core.state(), ServiceState::Ready);
    assert_eq!(bench.core.current(), Some(2));
    assert_eq!(bench.core.running_restart(), None);
}

#[test]
fn a_survivor_of_an_exited_generation_keeps_it_until_the_group_is_empty() {
    let mut bench = Bench::draining();
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    // A worker lingers: the core looks again a little later.
    let deadline = bench.core.poll_timeout(bench.now).unwrap();
    assert_eq!(deadline, bench.now + super::core::LINGER_POLL);
    assert_eq!(
        bench.timer(),
        [Effect::CheckGroup {
            generation: 1,
            pgid: pid(OLD)
        }]
    );
    // Shown while its processes live: a daemon that left the group serves too.
    let shown = bench.core.generations();
    assert_eq!(shown.len(), 2);
    assert_eq!(
        (shown[0].generation, shown[0].state),
        (1, GenerationState::Draining)
    );
    let done = bench.on(Input::GroupEmpty { generation: 1 });
    assert_eq!(finished(&done).unwrap().0, RestartOutcome::Succeeded);
    assert!(bench.core.generations().iter().all(|g| g.generation == 2));
}

#[test]
fn a_generation_not_ready_in_time_is_stopped_and_the_restart_rolled_back() {
    let mut bench = Bench::restarting();
    bench.wait(READY_TIMEOUT - Duration::from_millis(1));
    assert!(bench.on(Input::Timer).is_empty(), "not yet");
    bench.wait(Duration::from_millis(1));
    assert_eq!(
        bench.on(Input::Timer),
        [Effect::Signal {
            pgid: pid(NEW),
            signal: Signal::SIGTERM
        }]
    );
    assert!(matches!(
        bench.core.lifecycle(2),
        Some(Lifecycle::Stopping { .. })
    ));
    // The verdict waits for the new generation to be gone.
    assert_eq!(bench.core.state(), ServiceState::Restarting);
    let done = bench.exit_and_empty(2, NEW, ExitInfo::Code(0));
    assert_eq!(
        finished(&done),
        Some((
            RestartOutcome::RolledBack,
            Some("generation 2 was not ready within 5s".into()),
            None
        ))
    );
    assert_eq!(bench.core.current(), Some(1));
    assert_eq!(bench.core.lifecycle(1), Some(Lifecycle::Ready));
    assert_eq!(bench.core.state(), ServiceState::Ready);
}

#[test]
fn a_stopped_generation_that_ignores_its_signal_is_killed_after_the_grace() {
    let mut bench = Bench::restarting();
    bench.wait(READY_TIMEOUT);
    bench.on(Input::Timer);
    // The grace is the drain timeout, at most 10 s.
    bench.wait(Duration::from_secs(10));
    assert_eq!(bench.on(Input::Timer), [Effect::Kill { pgid: pid(NEW) }]);
    assert!(bench.on(Input::Timer).is_empty(), "killed once");
}

#[test]
fn a_crash_during_warm_up_rolls_the_restart_back() {
    let mut bench = Bench::restarting();
    let effects = bench.exit_and_empty(2, NEW, ExitInfo::Code(1));
    assert_eq!(
        effects[..2],
        [
            // Workers it left behind are stopped.
            Effect::Signal {
                pgid: pid(NEW),
                signal: Signal::SIGTERM
            },
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::GenerationExited {
                    generation: 2,
                    pid: NEW as u32,
                    status: "exited with status 1".into(),
                    unexpected: true,
                    program: None,
                },
            },
        ]
    );
    assert_eq!(
        finished(&effects),
        Some((
            RestartOutcome::RolledBack,
            Some("generation 2 exited with status 1 before it was ready".into()),
            None
        ))
    );
    // The old generation serves on; no crash restart.
    assert_eq!(bench.core.consecutive_crashes(), 0);
    assert_eq!(bench.core.state(), ServiceState::Ready);
}

#[test]
fn a_drain_past_its_timeout_is_cut_and_the_restart_forced() {
    let mut bench = Bench::draining();
    bench.wait(DRAIN_TIMEOUT);
    assert_eq!(
        bench.on(Input::Timer),
        [Effect::Count {
            generation: 1,
            pgid: pid(OLD),
            purpose: CountFor::Cut
        }]
    );
    assert_eq!(
        bench.on(Input::Counted {
            generation: 1,
            count: Some(2),
            purpose: CountFor::Cut
        }),
        [
            Effect::Kill { pgid: pid(OLD) },
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::GenerationKilled {
                    generation: 1,
                    pid: OLD as u32,
                    connections_cut: 2
                },
            },
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::DrainFinished {
                    generation: 1,
                    handed_over: 0,
                    drained: 1,
                    cut: 2,
                },
            },
        ]
    );
    let done = bench.exit_and_empty(1, OLD, ExitInfo::Signal(Signal::SIGKILL));
    assert_eq!(
        finished(&done),
        Some((
            RestartOutcome::Forced,
            Some(
                "generation 1 did not exit within the drain timeout of 30s; 2 connections were cut"
                    .into()
            ),
            Some(2)
        ))
    );
}

#[test]
fn workers_left_draining_by_an_exited_generation_are_cut_at_the_drain_deadline() {
    let mut bench = Bench::draining();
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    assert!(matches!(
        bench.core.lifecycle(1),
        Some(Lifecycle::Exited {
            leftovers: Leftovers::Drain { .. },
            ..
        })
    ));
    bench.wait(DRAIN_TIMEOUT);
    let effects = bench.on(Input::Timer);
    assert!(effects.contains(&Effect::Count {
        generation: 1,
        pgid: pid(OLD),
        purpose: CountFor::Cut
    }));
    bench.on(Input::Counted {
        generation: 1,
        count: Some(1),
        purpose: CountFor::Cut,
    });
    let done = bench.on(Input::GroupEmpty { generation: 1 });
    assert_eq!(finished(&done).unwrap().0, RestartOutcome::Forced);
}

#[test]
fn a_crash_while_serving_restarts_after_a_doubling_backoff() {
    let mut bench = Bench::serving();
    let effects = bench.exit_and_empty(1, OLD, ExitInfo::Signal(Signal::SIGSEGV));
    assert_eq!(
        events(&effects),
        [
            &EventKind::GenerationExited {
                generation: 1,
                pid: OLD as u32,
                status: "killed by SIGSEGV".into(),
                unexpected: true,
                program: None,
            },
            &EventKind::CrashRestartScheduled {
                generation: 1,
                backoff_ms: 100,
                consecutive_crashes: 1,
            },
        ]
    );
    assert_eq!(bench.core.state(), ServiceState::CrashLooping);
    assert_eq!(
        bench.core.poll_timeout(bench.now),
        Some(bench.now + Duration::from_millis(100))
    );
    let mut backoffs = Vec::new();
    for generation in 2..=12 {
        assert_eq!(
            bench.timer(),
            [Effect::Spawn {
                generation,
                probe_port: false
            }]
        );
        bench.on(Input::Spawned {
            generation,
            pid: pid(OLD + generation as i32),
            probe_port: None,
            channel: true,
        });
        let effects = bench.exit_and_empty(generation, OLD + generation as i32, ExitInfo::Code(1));
        for kind in events(&effects) {
            if let EventKind::CrashRestartScheduled { backoff_ms, .. } = kind {
                backoffs.push(*backoff_ms);
            }
        }
    }
    assert_eq!(
        backoffs,
        [
            200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
        ]
    );
    assert_eq!(bench.core.consecutive_crashes(), 12);
}

#[test]
fn a_generation_that_stayed_up_long_enough_resets_the_crash_count() {
    let mut bench = Bench::serving();
    bench.exit_and_empty(1, OLD, ExitInfo::Code(1));
    bench.timer();
    bench.on(Input::Spawned {
        generation: 2,
        pid: pid(NEW),
        probe_port: None,
        channel: true,
    });
    bench.on(Input::Ready { generation: 2 });
    assert_eq!(bench.core.consecutive_crashes(), 1);
    bench.wait(super::core::CRASH_FORGIVEN_AFTER);
    let effects = bench.exit_and_empty(2, NEW, ExitInfo::Code(1));
    assert!(
        events(&effects).contains(&&EventKind::CrashRestartScheduled {
            generation: 2,
            backoff_ms: 100,
            consecutive_crashes: 1,
        })
    );
}

#[test]
fn without_restart_on_crash_a_dead_service_stays_stopped() {
    let mut bench = Bench::new(ServiceConfig {
        restart_on_crash: false,
        ..config()
    });
    bench.serve_first();
    let effects = bench.exit_and_empty(1, OLD, ExitInfo::Code(1));
    assert!(!effects.iter().any(|e| matches!(
        e,
        Effect::Emit {
            kind: EventKind::CrashRestartScheduled { .. },
            ..
        }
    )));
    assert_eq!(bench.core.state(), ServiceState::Stopped);
    assert_eq!(bench.core.poll_timeout(bench.now), None);
}

#[test]
fn a_stop_during_a_restart_fails_it_once_both_generations_are_gone() {
    let mut bench = Bench::restarting();
    assert_eq!(
        bench.on(Input::Stop),
        [
            Effect::Signal {
                pgid: pid(OLD),
                signal: Signal::SIGTERM
            },
            Effect::Signal {
                pgid: pid(NEW),
                signal: Signal::SIGTERM
            },
        ]
    );
    assert!(!bench.core.is_done());
    let old = bench.exit_and_empty(1, OLD, ExitInfo::Code(0));
    assert_eq!(finished(&old), None, "the new generation is still there");
    // Neither exit is a crash.
    assert!(events(&old).iter().all(|k| matches!(
        k,
        EventKind::GenerationExited {
            unexpected: false,
            ..
        }
    )));
    let new = bench.exit_and_empty(2, NEW, ExitInfo::Code(0));
    assert_eq!(
        finished(&new),
        Some((
            RestartOutcome::Failed,
            Some("the service was stopped during the restart".into()),
            None
        ))
    );
    assert!(bench.core.is_done());
    assert!(matches!(
        bench.on(Input::Restart { reason: None }).as_slice(),
        [Effect::Refuse(body)] if body.kind == ErrorKind::ShuttingDown
    ));
}

#[test]
fn a_second_restart_is_refused_while_one_runs() {
    let mut bench = Bench::restarting();
    let refused = bench.on(Input::Restart { reason: None });
    let [Effect::Refuse(body)] = refused.as_slice() else {
        panic!("refused: {refused:?}");
    };
    assert_eq!(body.kind, ErrorKind::RestartInProgress);
    assert_eq!(body.running_restart, Some(RESTART));
    assert_eq!(bench.core.running_restart(), Some(RESTART));
}

#[test]
fn a_new_generation_that_cannot_start_fails_the_restart_at_once() {
    let mut bench = Bench::serving();
    bench.on(Input::Restart { reason: None });
    bench.on(Input::RestartOpened { id: RESTART });
    let effects = bench.on(Input::SpawnFailed {
        generation: 2,
        reason: "program \"web\" not found on PATH".into(),
    });
    assert_eq!(
        finished(&effects),
        Some((
            RestartOutcome::Failed,
            Some("could not start a new generation: program \"web\" not found on PATH".into()),
            None
        ))
    );
    assert_eq!(bench.core.state(), ServiceState::Ready);
    assert_eq!(bench.core.current(), Some(1));
}

#[test]
fn a_restart_whose_old_generation_died_fails_rather_than_rolls_back() {
    let mut bench = Bench::restarting();
    let died = bench.exit_and_empty(1, OLD, ExitInfo::Code(1));
    // The new generation is on its way: no crash restart.
    assert_eq!(bench.core.consecutive_crashes(), 0);
    assert_eq!(finished(&died), None);
    bench.wait(READY_TIMEOUT);
    let timeout = bench.on(Input::Timer);
    // Nothing serves now: a crash restart is scheduled.
    assert!(
        events(&timeout).contains(&&EventKind::CrashRestartScheduled {
            generation: 0,
            backoff_ms: 100,
            consecutive_crashes: 1,
        })
    );
    let done = bench.exit_and_empty(2, NEW, ExitInfo::Code(0));
    assert_eq!(finished(&done).unwrap().0, RestartOutcome::Failed);
    assert_eq!(bench.core.state(), ServiceState::CrashLooping);
}

#[test]
fn extend_timeout_pushes_the_ready_deadline_back() {
    let mut bench = Bench::restarting();
    bench.wait(Duration::from_secs(1));
    assert!(
        bench
            .on(Input::Notify {
                generation: 2,
                sender: NEW,
                messages: vec![NotifyMessage::ExtendTimeout(Duration::from_secs(20))],
            })
            .is_empty()
    );
    bench.wait(READY_TIMEOUT);
    assert!(bench.on(Input::Timer).is_empty());
    assert!(bench.core.lifecycle(2).unwrap().is_starting());
    assert_eq!(
        bench.core.poll_timeout(bench.now),
        Some(bench.start + Duration::from_secs(21))
    );
    // A shorter extension never brings the deadline forward.
    bench.on(Input::Notify {
        generation: 2,
        sender: NEW,
        messages: vec![NotifyMessage::ExtendTimeout(Duration::from_secs(1))],
    });
    assert_eq!(
        bench.core.poll_timeout(bench.now),
        Some(bench.start + Duration::from_secs(21))
    );
}

#[test]
fn mainpid_moves_the_generation_to_the_named_process_of_its_group() {
    let mut bench = Bench::serving();
    const MAIN: i32 = 150;
    assert_eq!(
        bench.on(Input::Notify {
            generation: 1,
            sender: OLD,
            messages: vec![NotifyMessage::MainPid(MAIN)],
        }),
        [Effect::LocateMain {
            generation: 1,
            main: pid(MAIN),
            pgid: pid(OLD),
            after: MainCheck::Named { sender: OLD },
        }]
    );
    assert_eq!(
        bench.on(Input::MainLocated {
            generation: 1,
            main: pid(MAIN),
            in_group: true,
            after: MainCheck::Named { sender: OLD },
        }),
        [Effect::WatchExit {
            generation: 1,
            pid: pid(MAIN)
        }]
    );
    assert_eq!(bench.core.generations()[0].main_pid, Some(MAIN as u32));
    // The first process exits; the main process is still in the group.
    assert_eq!(
        bench.on(Input::Exited {
            generation: 1,
            pid: pid(OLD),
            exit: ExitInfo::Code(0),
        }),
        [Effect::LocateMain {
            generation: 1,
            main: pid(MAIN),
            pgid: pid(OLD),
            after: MainCheck::FirstExited(ExitInfo::Code(0)),
        }]
    );
    assert!(
        bench
            .on(Input::MainLocated {
                generation: 1,
                main: pid(MAIN),
                in_group: true,
                after: MainCheck::FirstExited(ExitInfo::Code(0)),
            })
            .is_empty()
    );
    assert_eq!(bench.core.state(), ServiceState::Ready);
    // The main process's exit is the generation's.
    let effects = bench.exit_and_empty(1, MAIN, ExitInfo::Code(3));
    assert!(events(&effects).contains(&&EventKind::GenerationExited {
        generation: 1,
        pid: OLD as u32,
        status: "exited with status 3".into(),
        unexpected: true,
        program: None,
    }));
}

#[test]
fn mainpid_outside_the_generation_is_ignored_and_a_vanished_main_ends_it() {
    let mut bench = Bench::serving();
    bench.on(Input::Notify {
        generation: 1,
        sender: OLD,
        messages: vec![NotifyMessage::MainPid(999)],
    });
    assert!(
        bench
            .on(Input::MainLocated {
                generation: 1,
                main: pid(999),
                in_group: false,
                after: MainCheck::Named { sender: OLD },
            })
            .is_empty()
    );
    assert_eq!(bench.core.generations()[0].main_pid, None);

    bench.on(Input::MainLocated {
        generation: 1,
        main: pid(150),
        in_group: true,
        after: MainCheck::Named { sender: OLD },
    });
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    // The main process died before the first one: nobody else will say so.
    let effects = bench.on(Input::MainLocated {
        generation: 1,
        main: pid(150),
        in_group: false,
        after: MainCheck::FirstExited(ExitInfo::Code(0)),
    });
    assert!(events(&effects).contains(&&EventKind::GenerationExited {
        generation: 1,
        pid: OLD as u32,
        status: "exited with status 0".into(),
        unexpected: true,
        program: None,
    }));
}

#[test]
fn notify_messages_update_status_and_the_fd_store() {
    let mut bench = Bench::restarting();
    let effects = bench.on(Input::Notify {
        generation: 2,
        sender: NEW,
        messages: vec![
            NotifyMessage::Status("warming caches".into()),
            NotifyMessage::FdStore {
                name: Some("cache".into()),
            },
            NotifyMessage::FdStoreRemove { name: None },
            NotifyMessage::Barrier,
            NotifyMessage::Ready,
        ],
    });
    assert_eq!(
        effects,
        [
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::GenerationStatus {
                    generation: 2,
                    status: "warming caches".into()
                },
            },
            Effect::StoreFds {
                name: "cache".into()
            },
            Effect::RemoveFds {
                name: "stored".into()
            },
            Effect::CloseFds,
            Effect::Requeue(Input::Ready { generation: 2 }),
        ]
    );
    let status = &bench.core.generations()[1];
    assert_eq!(status.status_text.as_deref(), Some("warming caches"));
}

#[test]
fn with_a_probe_readiness_ready_1_is_not_enough() {
    let mut bench = Bench::new(ServiceConfig {
        ready: Readiness::Tcp {
            addr: crate::config::ProbeTemplate::parse("127.0.0.1:{port}"),
        },
        ..config()
    });
    assert_eq!(
        bench.on(Input::Start),
        [Effect::Spawn {
            generation: 1,
            probe_port: true
        }]
    );
    let spawned = bench.on(Input::Spawned {
        generation: 1,
        pid: pid(OLD),
        probe_port: Some(4000),
        channel: true,
    });
    assert_eq!(
        spawned[0],
        Effect::Probe {
            generation: 1,
            port: Some(4000)
        }
    );
    assert!(
        bench
            .on(Input::Notify {
                generation: 1,
                sender: OLD,
                messages: vec![NotifyMessage::Ready],
            })
            .is_empty()
    );
}

#[test]
fn exec_readiness_is_ready_on_spawn_and_warm_up_priority_is_restored() {
    let mut bench = Bench::new(ServiceConfig {
        ready: Readiness::Exec,
        warmup_nice: 10,
        ..config()
    });
    bench.on(Input::Start);
    let effects = bench.on(Input::Spawned {
        generation: 1,
        pid: pid(OLD),
        probe_port: None,
        channel: true,
    });
    assert!(effects.contains(&Effect::RestorePriority {
        generation: 1,
        pgid: pid(OLD)
    }));
    assert_eq!(bench.core.state(), ServiceState::Ready);
}

#[test]
fn a_reload_during_a_restart_restarts_again_once_it_ends() {
    let mut bench = Bench::draining();
    assert!(
        bench
            .on(Input::Replace {
                config: Arc::new(config())
            })
            .is_empty()
    );
    let done = bench.exit_and_empty(1, OLD, ExitInfo::Code(0));
    assert_eq!(finished(&done).unwrap().0, RestartOutcome::Succeeded);
    assert_eq!(
        done.last(),
        Some(&Effect::Requeue(Input::Restart {
            reason: Some("configuration changed".into())
        }))
    );
    // Without a restart running, a reload restarts at once.
    assert_eq!(
        bench.on(Input::Replace {
            config: Arc::new(config())
        }),
        [Effect::OpenRestart {
            reason: Some("configuration changed".into()),
            old: Some(2),
            requested_by: None,
        }]
    );
}

#[test]
fn an_upgrade_is_refused_during_a_restart_and_freezes_the_service_otherwise() {
    let mut bench = Bench::restarting();
    assert_eq!(
        bench.core.hand_over(bench.now).err(),
        Some(HandoverRefused::Restarting {
            service: "web".into(),
            id: RESTART
        })
    );
    bench.on(Input::Ready { generation: 2 });
    bench.on(Input::Counted {
        generation: 1,
        count: Some(0),
        purpose: CountFor::Drain,
    });
    bench.exit_and_empty(1, OLD, ExitInfo::Code(0));

    bench.wait(Duration::from_secs(1));
    let handed = bench.core.hand_over(bench.now).expect("handed over");
    assert_eq!(handed.current, Some(2));
    assert_eq!(handed.next_generation, 3);
    assert_eq!(
        handed
            .generations
            .iter()
            .map(|g| g.number)
            .collect::<Vec<_>>(),
        [2]
    );
    // Frozen: no deadline, no restart, until thawed.
    assert_eq!(bench.core.poll_timeout(bench.now), None);
    assert!(matches!(
        bench.on(Input::Restart { reason: None }).as_slice(),
        [Effect::Refuse(body)] if body.kind == ErrorKind::ShuttingDown
    ));
    bench.on(Input::Thaw);
    assert!(matches!(
        bench.on(Input::Restart { reason: None }).as_slice(),
        [Effect::OpenRestart { old: Some(2), .. }]
    ));
}

#[test]
fn a_new_generation_that_dies_while_the_old_one_drains_fails_the_restart() {
    new_generation_dies_while_the_old_one_drains();
}

/// The new generation of a restart dies while the old one drains: the
/// restart fails, and is over, so the crash restart and later restarts can
/// run.
fn new_generation_dies_while_the_old_one_drains() -> Bench {
    let mut bench = Bench::draining();
    let died = bench.exit_and_empty(2, NEW, ExitInfo::Code(1));
    assert_eq!(
        finished(&died),
        Some((
            RestartOutcome::Failed,
            Some("generation 2 exited with status 1 after it was ready".into()),
            None
        ))
    );
    assert_eq!(bench.core.state(), ServiceState::CrashLooping);
    bench
}

#[test]
fn a_handed_over_service_is_adopted_with_its_deadlines() {
    // A crash restart starting is not handed over; a draining generation is.
    // The new generation dies while the old one drains: the restart fails
    // and a crash restart follows.
    let mut bench = new_generation_dies_while_the_old_one_drains();
    bench.timer();
    bench.on(Input::Spawned {
        generation: 3,
        pid: pid(300),
        probe_port: None,
        channel: true,
    });
    assert_eq!(
        bench.core.hand_over(bench.now).err(),
        Some(HandoverRefused::Starting {
            service: "web".into()
        })
    );
    bench.on(Input::Ready { generation: 3 });
    let handed = bench.core.hand_over(bench.now).expect("handed over");
    let service = crate::handover::ServiceHandover {
        name: "web".into(),
        sockets: Vec::new(),
        generations: handed.generations,
        current: handed.current,
        next_generation: handed.next_generation,
        consecutive_crashes: handed.consecutive_crashes,
        fd_store: Vec::new(),
        restart: handed.restart,
        last_report: None,
    };

    let mut next = Bench::new(config());
    let next_now = Now {
        at: next.now,
        unix_ms: baton_proto::now_millis(),
    };
    let effects = next
        .core
        .adopt(&service, next_now, super::core::Predecessor::Image);
    assert_eq!(
        effects,
        [
            Effect::Route {
                generation: 1,
                pgid: pid(OLD)
            },
            Effect::WatchExit {
                generation: 1,
                pid: pid(OLD)
            },
            Effect::WatchDrain {
                generation: 1,
                pgid: pid(OLD)
            },
            Effect::Route {
                generation: 3,
                pgid: pid(300)
            },
            Effect::WatchExit {
                generation: 3,
                pid: pid(300)
            },
        ]
    );
    assert_eq!(next.core.current(), Some(3));
    assert_eq!(next.core.consecutive_crashes(), 1);
    assert!(next.on(Input::Start).is_empty(), "a generation serves");
    assert!(matches!(
        next.core.lifecycle(1),
        Some(Lifecycle::Draining { .. })
    ));
    // The drain deadline carried over, minus the time already spent.
    let left = next.core.poll_timeout(next.now).unwrap() - next.now;
    assert!(left < DRAIN_TIMEOUT && left > DRAIN_TIMEOUT - Duration::from_secs(1));
}

/// What a killed agent's state file says of the bench's service, written
/// at the bench's `now`.
fn state_file_entry(bench: &Bench) -> (crate::handover::ServiceHandover, u64) {
    let unix_ms = 1_000_000 + bench.now.duration_since(bench.start).as_millis() as u64;
    let anchor = Now {
        at: bench.now,
        unix_ms,
    };
    let core = bench.core.snapshot(bench.now, anchor);
    let service = crate::handover::ServiceHandover {
        name: "web".into(),
        sockets: Vec::new(),
        generations: core.generations,
        current: core.current,
        next_generation: core.next_generation,
        consecutive_crashes: core.consecutive_crashes,
        fd_store: Vec::new(),
        restart: core.restart,
        last_report: None,
    };
    (service, unix_ms)
}

/// The agent that starts `later` after the killed one wrote its state.
fn recover(
    service: &crate::handover::ServiceHandover,
    written_at: u64,
    later: Duration,
) -> (Bench, Vec<Effect>) {
    let mut next = Bench::new(config());
    let now = Now {
        at: next.now,
        unix_ms: written_at + later.as_millis() as u64,
    };
    let effects = next
        .core
        .adopt(service, now, super::core::Predecessor::Dead);
    (next, effects)
}

#[test]
fn a_restart_left_warming_up_by_a_killed_agent_ends_interrupted_and_the_old_generation_serves_on() {
    let bench = Bench::restarting();
    let (service, written_at) = state_file_entry(&bench);
    assert_eq!(service.restart.as_ref().map(|r| r.id), Some(RESTART));
    assert_eq!(
        service.restart.as_ref().and_then(|r| r.reason.clone()),
        Some("deploy".into())
    );

    let (mut next, adopted) = recover(&service, written_at, Duration::from_secs(1));
    assert!(
        adopted.contains(&Effect::Signal {
            pgid: pid(NEW),
            signal: Signal::SIGTERM
        }),
        "the half-started generation is stopped: {adopted:?}"
    );
    assert_eq!(finished(&adopted), None, "over once generation 2 is gone");
    assert_eq!(next.core.current(), Some(1));
    assert_eq!(next.core.running_restart(), Some(RESTART));
    assert!(next.on(Input::Start).is_empty(), "no duplicate is started");

    let gone = next.exit_and_empty(2, NEW, ExitInfo::Unknown);
    let (outcome, reason, _) = finished(&gone).expect("the restart ends");
    assert_eq!(outcome, RestartOutcome::Interrupted);
    assert!(reason.unwrap().contains("generation 2"));
    assert_eq!(next.core.state(), ServiceState::Ready);
    assert!(matches!(
        next.on(Input::Restart { reason: None }).as_slice(),
        [Effect::OpenRestart { old: Some(1), .. }]
    ));
}

#[test]
fn a_drain_left_by_a_killed_agent_ends_at_its_wall_clock_deadline_and_finishes_the_restart() {
    let mut bench = Bench::draining();
    bench.wait(Duration::from_secs(1));
    let (service, written_at) = state_file_entry(&bench);
    let old = &service.generations[0];
    assert_eq!(
        old.deadline_at,
        Some(written_at - 1_000 + DRAIN_TIMEOUT.as_millis() as u64)
    );

    // The next agent starts 2 s after the state was written.
    let (mut next, adopted) = recover(&service, written_at, Duration::from_secs(2));
    assert!(adopted.contains(&Effect::WatchDrain {
        generation: 1,
        pgid: pid(OLD)
    }));
    assert_eq!(finished(&adopted), None);
    assert_eq!(next.core.current(), Some(2));
    let left = next.core.poll_timeout(next.now).unwrap() - next.now;
    assert_eq!(left, DRAIN_TIMEOUT - Duration::from_secs(3));

    // The old generation ignores its signal: cut and killed at the deadline.
    let due = next.timer();
    assert!(due.iter().any(|e| matches!(
        e,
        Effect::Count {
            generation: 1,
            purpose: CountFor::Cut,
            ..
        }
    )));
    let killed = next.on(Input::Counted {
        generation: 1,
        count: Some(4),
        purpose: CountFor::Cut,
    });
    assert!(killed.contains(&Effect::Kill { pgid: pid(OLD) }));
    let gone = next.exit_and_empty(1, OLD, ExitInfo::Unknown);
    assert_eq!(
        finished(&gone).map(|f| (f.0, f.2)),
        Some((RestartOutcome::Forced, Some(4)))
    );
}

/// A worker of generation 1 (not its first process, 100): it is in the
/// generation's cgroup or group, which is how the router attributed it.
const WORKER: i32 = 101;

#[test]
fn the_serving_generation_may_ask_for_a_restart_and_is_named_as_who_asked() {
    let mut bench = Bench::serving();
    assert_eq!(
        bench.on(restart_request(1, WORKER, Some("new certificates"))),
        [Effect::OpenRestart {
            reason: Some("requested by generation 1 (pid 101): new certificates".into()),
            old: Some(1),
            requested_by: Some(RestartRequester {
                generation: 1,
                pid: WORKER as u32
            }),
        }]
    );
    assert_eq!(
        bench.on(Input::RestartOpened { id: RESTART }),
        [Effect::Spawn {
            generation: 2,
            probe_port: false
        }]
    );
    assert_eq!(bench.core.running_restart(), Some(RESTART));
}

#[test]
fn a_restart_request_without_a_reason_still_names_who_asked() {
    let mut bench = Bench::serving();
    assert!(matches!(
        bench.on(restart_request(1, OLD, None)).as_slice(),
        [Effect::OpenRestart { reason: Some(reason), requested_by: Some(_), .. }]
            if reason == "requested by generation 1 (pid 100)"
    ));
}

#[test]
fn a_starting_generation_cannot_ask_for_a_restart() {
    // The first generation, before it is ready: nothing serves yet.
    let mut bench = Bench::new(config());
    bench.on(Input::Start);
    bench.on(Input::Spawned {
        generation: 1,
        pid: pid(OLD),
        probe_port: None,
        channel: true,
    });
    assert_eq!(
        bench.on(restart_request(1, OLD, None)),
        [refused(1, OLD, RequestRefusal::NotServing)]
    );
    // The new generation of a restart, warming up next to the serving one.
    let mut bench = Bench::restarting();
    assert_eq!(
        bench.on(restart_request(2, NEW, Some("again"))),
        [refused(2, NEW, RequestRefusal::NotServing)]
    );
    assert_eq!(bench.core.running_restart(), Some(RESTART));
}

#[test]
fn a_draining_generation_cannot_ask_for_a_restart() {
    let mut bench = Bench::draining();
    assert_eq!(
        bench.on(restart_request(1, OLD, None)),
        [refused(1, OLD, RequestRefusal::NotServing)]
    );
    // Nor a worker of it that finishes its requests after the main
    // process exited.
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    assert!(matches!(
        bench.core.lifecycle(1),
        Some(Lifecycle::Exited { .. })
    ));
    assert_eq!(
        bench.on(restart_request(1, WORKER, None)),
        [refused(1, WORKER, RequestRefusal::NotServing)]
    );
}

#[test]
fn a_restart_request_while_a_restart_runs_is_refused() {
    // The old generation still serves while the new one warms up.
    let mut bench = Bench::restarting();
    assert_eq!(
        bench.on(restart_request(1, OLD, None)),
        [refused(1, OLD, RequestRefusal::RestartRunning(RESTART))]
    );
    // The new one serves while the old one drains.
    let mut bench = Bench::draining();
    assert_eq!(
        bench.on(restart_request(2, NEW, None)),
        [refused(2, NEW, RequestRefusal::RestartRunning(RESTART))]
    );
}

#[test]
fn a_stopping_or_upgrading_service_takes_no_restart_request() {
    let mut bench = Bench::serving();
    bench.core.hand_over(bench.now).expect("handed over");
    assert_eq!(
        bench.on(restart_request(1, OLD, None)),
        [refused(1, OLD, RequestRefusal::ShuttingDown)]
    );
    bench.on(Input::Thaw);
    bench.on(Input::Stop);
    assert_eq!(
        bench.on(restart_request(1, OLD, None)),
        [refused(1, OLD, RequestRefusal::NotServing)]
    );
}

#[test]
fn restart_requests_are_held_to_one_per_interval() {
    let mut bench = Bench::serving();
    // A burst in one datagram, as a handler that sends on every signal
    // might: the first is accepted, the rest are too soon.
    let burst = bench.on(Input::Notify {
        generation: 1,
        sender: OLD,
        messages: vec![NotifyMessage::Restart { reason: None }; 3],
    });
    assert!(
        matches!(&burst[0], Effect::OpenRestart { old: Some(1), .. }),
        "{burst:?}"
    );
    let too_soon = || {
        refused(
            1,
            OLD,
            RequestRefusal::TooSoon {
                wait: RESTART_REQUEST_INTERVAL,
            },
        )
    };
    assert_eq!(burst[1..], [too_soon(), too_soon()]);
    bench.run_requested_restart();

    // The new serving generation asks too soon after the first request.
    bench.wait(Duration::from_secs(1));
    assert_eq!(
        bench.on(restart_request(2, NEW, None)),
        [refused(
            2,
            NEW,
            RequestRefusal::TooSoon {
                wait: RESTART_REQUEST_INTERVAL - Duration::from_secs(1)
            }
        )]
    );
    assert_eq!(bench.core.running_restart(), None);
    // A restart asked for on the control socket is not held to it.
    assert!(matches!(
        bench.on(Input::Restart { reason: None }).as_slice(),
        [Effect::OpenRestart {
            requested_by: None,
            ..
        }]
    ));
}

#[test]
fn a_restart_request_is_accepted_again_once_the_interval_has_passed() {
    let mut bench = Bench::serving();
    assert!(matches!(
        bench.on(restart_request(1, OLD, None)).as_slice(),
        [Effect::OpenRestart { .. }]
    ));
    bench.run_requested_restart();
    bench.wait(RESTART_REQUEST_INTERVAL - Duration::from_millis(1));
    assert!(matches!(
        bench.on(restart_request(2, NEW, None)).as_slice(),
        [Effect::RestartRequestRefused {
            refusal: RequestRefusal::TooSoon { .. },
            ..
        }]
    ));
    // Refused requests do not move the interval: only an accepted one does.
    bench.wait(Duration::from_millis(1));
    assert!(matches!(
        bench.on(restart_request(2, NEW, Some("later"))).as_slice(),
        [Effect::OpenRestart {
            old: Some(2),
            requested_by: Some(RestartRequester { generation: 2, .. }),
            ..
        }]
    ));
}

/// What generation `generation` says on its channel.
fn channel(generation: u64, messages: &[ChannelMessage]) -> Input {
    Input::Channel {
        generation,
        messages: messages.to_vec(),
    }
}

/// Generation 2 becomes ready and generation 1 is counted with `count`
/// connections: the effects of that count (the drain's start).
fn ready_and_counted(bench: &mut Bench, count: u32) -> Vec<Effect> {
    bench.on(Input::Ready { generation: 2 });
    bench.on(Input::Counted {
        generation: 1,
        count: Some(count),
        purpose: CountFor::Drain,
    })
}

fn brokered(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::BrokerHandoff { .. }))
}

#[test]
fn a_handoff_is_brokered_before_the_old_generation_gets_its_stop_signal() {
    let mut bench = Bench::restarting();
    assert!(bench.on(channel(2, &[ChannelMessage::Handoff])).is_empty());
    let effects = ready_and_counted(&mut bench, 3);
    assert_eq!(
        effects[..2],
        [
            Effect::BrokerHandoff {
                restart: Some(RESTART),
                from: 1,
                to: 2
            },
            Effect::Signal {
                pgid: pid(OLD),
                signal: Signal::SIGTERM
            },
        ]
    );
}

#[test]
fn a_new_generation_that_did_not_declare_handoff_gets_none_and_the_old_one_drains() {
    let mut bench = Bench::restarting();
    // The old generation declaring it changes nothing: the new one takes.
    bench.on(channel(1, &[ChannelMessage::Handoff]));
    let effects = ready_and_counted(&mut bench, 3);
    assert!(!brokered(&effects), "{effects:?}");
    assert!(effects.contains(&Effect::Signal {
        pgid: pid(OLD),
        signal: Signal::SIGTERM
    }));
    assert!(matches!(
        bench.core.lifecycle(1),
        Some(Lifecycle::Draining { .. })
    ));
}

#[test]
fn a_generation_started_without_a_channel_takes_no_part_in_a_handoff() {
    let mut bench = Bench::new(config());
    bench.on(Input::Start);
    bench.on(Input::Spawned {
        generation: 1,
        pid: pid(OLD),
        probe_port: None,
        channel: false,
    });
    bench.on(Input::Ready { generation: 1 });
    bench.restart();
    bench.on(channel(2, &[ChannelMessage::Handoff]));
    let effects = ready_and_counted(&mut bench, 3);
    assert!(!brokered(&effects), "{effects:?}");
}

#[test]
fn after_a_killed_agent_the_recovered_generation_has_no_channel_but_after_an_upgrade_it_has() {
    let bench = Bench::serving();
    let (mut service, written_at) = state_file_entry(&bench);
    service.generations[0].channel_fd = Some(9);

    let (mut recovered, _) = recover(&service, written_at, Duration::from_secs(1));
    recovered.restart();
    recovered.on(channel(2, &[ChannelMessage::Handoff]));
    let effects = ready_and_counted(&mut recovered, 3);
    assert!(!brokered(&effects), "{effects:?}");

    let mut upgraded = Bench::new(config());
    let now = Now {
        at: upgraded.now,
        unix_ms: written_at,
    };
    upgraded
        .core
        .adopt(&service, now, super::core::Predecessor::Image);
    upgraded.restart();
    upgraded.on(channel(2, &[ChannelMessage::Handoff]));
    let effects = ready_and_counted(&mut upgraded, 3);
    assert!(brokered(&effects), "{effects:?}");
}

#[test]
fn handed_over_counts_only_from_the_draining_old_generation_of_a_restart() {
    // The serving generation, no restart running.
    let mut bench = Bench::serving();
    assert_eq!(
        bench.on(channel(1, &[ChannelMessage::HandedOver(5)])),
        [Effect::ChannelMessageIgnored {
            generation: 1,
            message: ChannelMessage::HandedOver(5),
            why: "it is not the old generation of a running restart",
        }]
    );
    // During a restart: the new generation, the old one before it drains,
    // and a generation that is not there.
    let mut bench = Bench::restarting();
    for generation in [2, 1, 9] {
        let effects = bench.on(channel(generation, &[ChannelMessage::HandedOver(5)]));
        assert!(
            matches!(effects.as_slice(), [Effect::ChannelMessageIgnored { .. }]),
            "generation {generation}: {effects:?}"
        );
    }
    bench.on(Input::Ready { generation: 2 });
    bench.on(Input::Counted {
        generation: 1,
        count: Some(3),
        purpose: CountFor::Drain,
    });
    assert!(matches!(
        bench
            .on(channel(2, &[ChannelMessage::HandedOver(5)]))
            .as_slice(),
        [Effect::ChannelMessageIgnored { .. }]
    ));
    // The draining old generation: counted, once.
    assert_eq!(
        bench.on(channel(1, &[ChannelMessage::HandedOver(2)])),
        [Effect::Emit {
            restart: Some(RESTART),
            kind: EventKind::ConnectionsHandedOver {
                from_generation: 1,
                to_generation: 2,
                connections: 2,
            },
        }]
    );
    assert!(matches!(
        bench
            .on(channel(1, &[ChannelMessage::HandedOver(3)]))
            .as_slice(),
        [Effect::ChannelMessageIgnored {
            why: "it already reported its count",
            ..
        }]
    ));
}

#[test]
fn an_exited_drain_tallies_handed_over_and_drained_before_the_restart_finishes() {
    let mut bench = Bench::draining();
    bench.on(channel(1, &[ChannelMessage::HandedOver(2)]));
    let done = bench.exit_and_empty(1, OLD, ExitInfo::Code(0));
    let tally = done
        .iter()
        .position(|e| {
            *e == Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::DrainFinished {
                    generation: 1,
                    handed_over: 2,
                    drained: 1,
                    cut: 0,
                },
            }
        })
        .expect("drain_finished");
    let finish = done
        .iter()
        .position(|e| matches!(e, Effect::FinishRestart { .. }))
        .expect("restart_finished");
    assert!(tally < finish, "{done:?}");
    assert_eq!(finished(&done).unwrap().0, RestartOutcome::Succeeded);
}

#[test]
fn a_killed_drain_tallies_what_was_cut_and_drained_never_goes_below_zero() {
    let mut bench = Bench::restarting();
    ready_and_counted(&mut bench, 10);
    bench.on(channel(1, &[ChannelMessage::HandedOver(8)]));
    bench.wait(DRAIN_TIMEOUT);
    bench.on(Input::Timer);
    let killed = bench.on(Input::Counted {
        generation: 1,
        count: Some(4),
        purpose: CountFor::Cut,
    });
    assert!(
        killed.contains(&Effect::Emit {
            restart: Some(RESTART),
            kind: EventKind::DrainFinished {
                generation: 1,
                handed_over: 8,
                drained: 0,
                cut: 4,
            },
        }),
        "{killed:?}"
    );
    // Recorded once: not again when the group is gone.
    let gone = bench.exit_and_empty(1, OLD, ExitInfo::Signal(Signal::SIGKILL));
    assert!(
        !events(&gone)
            .iter()
            .any(|e| matches!(e, EventKind::DrainFinished { .. })),
        "{gone:?}"
    );
    assert_eq!(finished(&gone).unwrap().0, RestartOutcome::Forced);
}

const OVERLAP: Duration = Duration::from_secs(3);

/// Restart 7 with `min_overlap`: generation 2 is ready 250 ms after its
/// spawn and the overlap begins; generation 1 still serves.
fn overlapping() -> Bench {
    let mut bench = Bench::new(ServiceConfig {
        min_overlap: OVERLAP,
        ..config()
    });
    bench.serve_first();
    bench.restart();
    bench.wait(Duration::from_millis(250));
    assert_eq!(
        bench.on(Input::Ready { generation: 2 }),
        [
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::GenerationReady {
                    generation: 2,
                    pid: NEW as u32,
                    startup_us: 250_000,
                    program: None,
                },
            },
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::OverlapStarted {
                    generation: 2,
                    old_generation: 1,
                    overlap_ms: 3_000,
                },
            },
        ],
        "no count, no signal: the old generation is left alone"
    );
    assert_eq!(bench.core.current(), Some(1));
    assert_eq!(bench.core.lifecycle(1), Some(Lifecycle::Ready));
    assert_eq!(bench.core.lifecycle(2), Some(Lifecycle::Ready));
    assert_eq!(bench.core.state(), ServiceState::Restarting);
    assert_eq!(
        bench.core.poll_timeout(bench.now),
        Some(bench.now + OVERLAP)
    );
    bench
}

/// Whether any effect would stop or signal generation 1 (pid 100).
fn touches_the_old_generation(effects: &[Effect]) -> bool {
    effects.iter().any(|e| {
        matches!(
            e,
            Effect::Signal { pgid, .. } | Effect::Kill { pgid } if *pgid == pid(OLD)
        ) || matches!(
            e,
            Effect::Count { generation: 1, .. } | Effect::BrokerHandoff { from: 1, .. }
        )
    })
}

/// The overlap's deadline passes: generation 2 takes over and generation 1
/// is counted, signalled and drains as without an overlap.
fn end_the_overlap_and_drain(bench: &mut Bench) {
    let ended = bench.timer();
    assert_eq!(
        ended,
        [
            Effect::Emit {
                restart: Some(RESTART),
                kind: EventKind::OverlapFinished {
                    generation: 2,
                    old_generation: 1,
                },
            },
            Effect::Count {
                generation: 1,
                pgid: pid(OLD),
                purpose: CountFor::Drain,
            },
        ]
    );
    assert_eq!(bench.core.current(), Some(2));
    let signalled = bench.on(Input::Counted {
        generation: 1,
        count: Some(2),
        purpose: CountFor::Drain,
    });
    assert!(signalled.contains(&Effect::Signal {
        pgid: pid(OLD),
        signal: Signal::SIGTERM
    }));
    let done = bench.exit_and_empty(1, OLD, ExitInfo::Code(0));
    assert_eq!(
        finished(&done).map(|(outcome, ..)| outcome),
        Some(RestartOutcome::Succeeded)
    );
    assert_eq!(bench.core.state(), ServiceState::Ready);
}

#[test]
fn min_overlap_holds_the_old_generations_stop_signal_until_it_ends() {
    let mut bench = overlapping();
    // Notify traffic and an early timer change nothing.
    bench.wait(OVERLAP - Duration::from_millis(1));
    let early = bench.on(Input::Timer);
    assert!(!touches_the_old_generation(&early), "{early:?}");
    assert_eq!(bench.core.current(), Some(1));
    end_the_overlap_and_drain(&mut bench);
}

#[test]
fn a_new_generation_that_dies_during_the_overlap_rolls_back_and_the_old_one_is_never_signalled() {
    let mut bench = overlapping();
    bench.wait(Duration::from_secs(1));
    let died = bench.exit_and_empty(2, NEW, ExitInfo::Code(3));
    assert!(!touches_the_old_generation(&died), "{died:?}");
    assert_eq!(
        finished(&died),
        Some((
            RestartOutcome::RolledBack,
            Some(
                "generation 2 exited with status 3 during its overlap with the old generation"
                    .into()
            ),
            None
        ))
    );
    assert_eq!(bench.core.current(), Some(1));
    assert_eq!(bench.core.state(), ServiceState::Ready);
    // The overlap's deadline is gone with it.
    assert_eq!(bench.core.poll_timeout(bench.now), None);
    assert_eq!(bench.core.consecutive_crashes(), 0);
}

#[test]
fn an_old_generation_that_dies_during_the_overlap_hands_the_service_to_the_ready_one() {
    let mut bench = overlapping();
    let died = bench.exit_and_empty(1, OLD, ExitInfo::Code(1));
    assert!(
        events(&died).contains(&&EventKind::OverlapFinished {
            generation: 2,
            old_generation: 1
        }),
        "{died:?}"
    );
    assert_eq!(
        finished(&died).map(|(outcome, ..)| outcome),
        Some(RestartOutcome::Succeeded)
    );
    assert_eq!(bench.core.current(), Some(2));
    assert!(
        !died.iter().any(|e| matches!(
            e,
            Effect::Emit {
                kind: EventKind::CrashRestartScheduled { .. },
                ..
            }
        )),
        "the ready generation serves: no crash restart"
    );
}

#[test]
fn stopping_during_the_overlap_stops_both_and_the_overlap_never_ends() {
    let mut bench = overlapping();
    let stopped = bench.on(Input::Stop);
    assert!(stopped.contains(&Effect::Signal {
        pgid: pid(OLD),
        signal: Signal::SIGTERM
    }));
    assert!(stopped.contains(&Effect::Signal {
        pgid: pid(NEW),
        signal: Signal::SIGTERM
    }));
    bench.exit_and_empty(1, OLD, ExitInfo::Code(0));
    let done = bench.exit_and_empty(2, NEW, ExitInfo::Code(0));
    assert_eq!(
        finished(&done).map(|(outcome, ..)| outcome),
        Some(RestartOutcome::Failed)
    );
    assert!(bench.core.is_done());
}

#[test]
fn an_upgrade_in_the_overlap_carries_the_restart_and_its_deadline() {
    let mut bench = overlapping();
    bench.on(Input::Channel {
        generation: 2,
        messages: vec![ChannelMessage::Handoff],
    });
    bench.wait(Duration::from_secs(1));
    let handed = bench
        .core
        .hand_over(bench.now)
        .expect("an overlap is handed over");
    let restart = handed.restart.clone().expect("the restart goes along");
    assert_eq!(restart.overlap_left_ms, Some(2_000));
    assert!(
        handed
            .generations
            .iter()
            .any(|g| g.number == 2 && g.accepts_handoff)
    );
    // The old image is frozen: its overlap ends in the next one.
    assert_eq!(bench.core.poll_timeout(bench.now), None);
    assert!(!touches_the_old_generation(&bench.on(Input::Timer)));

    let mut generations = handed.generations;
    // The actor passes each generation's channel along.
    for generation in &mut generations {
        generation.channel_fd = Some(10 + generation.number as i32);
    }
    let service = crate::handover::ServiceHandover {
        name: "web".into(),
        sockets: Vec::new(),
        generations,
        current: handed.current,
        next_generation: handed.next_generation,
        consecutive_crashes: handed.consecutive_crashes,
        fd_store: Vec::new(),
        restart: handed.restart,
        last_report: None,
    };
    let mut next = Bench::new(config());
    let now = Now {
        at: next.now,
        unix_ms: baton_proto::now_millis(),
    };
    let adopted = next
        .core
        .adopt(&service, now, super::core::Predecessor::Image);
    assert!(!touches_the_old_generation(&adopted), "{adopted:?}");
    assert_eq!(next.core.current(), Some(1));
    assert_eq!(next.core.running_restart(), Some(RESTART));
    assert_eq!(
        next.core.poll_timeout(next.now),
        Some(next.now + Duration::from_secs(2))
    );
    // It ends in the next image as it would have in this one, handoff and all.
    let ended = next.timer();
    assert!(ended.contains(&Effect::Count {
        generation: 1,
        pgid: pid(OLD),
        purpose: CountFor::Drain,
    }));
    let signalled = next.on(Input::Counted {
        generation: 1,
        count: Some(0),
        purpose: CountFor::Drain,
    });
    assert_eq!(
        signalled.first(),
        Some(&Effect::BrokerHandoff {
            restart: Some(RESTART),
            from: 1,
            to: 2
        })
    );
}

#[test]
fn an_upgrade_outside_the_overlap_of_a_restart_is_still_refused() {
    let mut bench = Bench::new(ServiceConfig {
        min_overlap: OVERLAP,
        ..config()
    });
    bench.serve_first();
    bench.restart();
    assert!(matches!(
        bench.core.hand_over(bench.now),
        Err(HandoverRefused::Restarting { .. })
    ));
    bench.on(Input::Ready { generation: 2 });
    bench.timer();
    assert!(
        matches!(
            bench.core.hand_over(bench.now),
            Err(HandoverRefused::Restarting { .. })
        ),
        "draining after the overlap"
    );
}

#[test]
fn an_overlap_left_by_a_killed_agent_ends_at_its_wall_clock_deadline() {
    let mut bench = overlapping();
    bench.wait(Duration::from_secs(1));
    let (service, written_at) = state_file_entry(&bench);
    let restart = service.restart.as_ref().expect("the restart");
    assert_eq!(restart.overlap_until_at, Some(written_at + 2_000));

    // The next agent starts 500 ms after the state was written.
    let (mut next, adopted) = recover(&service, written_at, Duration::from_millis(500));
    assert!(!touches_the_old_generation(&adopted), "{adopted:?}");
    assert_eq!(finished(&adopted), None);
    assert_eq!(next.core.current(), Some(1));
    assert_eq!(next.core.lifecycle(2), Some(Lifecycle::Ready));
    assert_eq!(
        next.core.poll_timeout(next.now),
        Some(next.now + Duration::from_millis(1_500))
    );
    end_the_overlap_and_drain(&mut next);
}

#[test]
fn an_overlap_whose_deadline_passed_while_the_agent_was_dead_ends_at_once() {
    let bench = overlapping();
    let (service, written_at) = state_file_entry(&bench);
    let (mut next, adopted) = recover(&service, written_at, Duration::from_secs(60));
    assert!(
        !touches_the_old_generation(&adopted),
        "not before its first timer"
    );
    assert_eq!(next.core.poll_timeout(next.now), Some(next.now));
    end_the_overlap_and_drain(&mut next);
}

#[test]
fn an_overlap_whose_old_generation_died_with_the_agent_hands_over_at_once() {
    let bench = overlapping();
    let (mut service, written_at) = state_file_entry(&bench);
    // Recovery leaves out what it found dead.
    service.generations.retain(|g| g.number != 1);
    let (next, adopted) = recover(&service, written_at, Duration::from_secs(1));
    assert!(events(&adopted).contains(&&EventKind::OverlapFinished {
        generation: 2,
        old_generation: 1
    }));
    assert_eq!(next.core.current(), Some(2));
    assert_eq!(
        finished(&adopted).map(|(outcome, ..)| outcome),
        Some(RestartOutcome::Succeeded)
    );
}

// A generation of several instances (`instances = N`).

/// The old generation's instance `i` is pid `OLD + i`, the new one's `NEW + i`.
fn instances(count: u32, max_surge: u32) -> ServiceConfig {
    ServiceConfig {
        instances: count,
        max_surge,
        ..config()
    }
}

fn spawn_instance(generation: u64, instance: u32, instances: u32) -> Effect {
    Effect::SpawnInstance {
        generation,
        instance,
        instances,
        probe_port: false,
    }
}

fn finish(effects: &[Effect]) -> Option<RestartOutcome> {
    effects.iter().find_map(|e| match e {
        Effect::FinishRestart { outcome, .. } => Some(*outcome),
        _ => None,
    })
}

impl Bench {
    /// Instance `instance` of `generation` spawned as `pid` and ready by
    /// its own `READY=1`; returns what its readiness led to.
    fn instance_up(&mut self, generation: u64, instance: u32, pid: i32) -> Vec<Effect> {
        self.instance_spawned(generation, instance, pid);
        self.instance_ready(generation, pid)
    }

    fn instance_spawned(&mut self, generation: u64, instance: u32, raw: i32) {
        self.on(Input::InstanceSpawned {
            generation,
            instance,
            pid: pid(raw),
            probe_port: None,
        });
    }

    fn instance_ready(&mut self, generation: u64, pid: i32) -> Vec<Effect> {
        let effects = self.on(Input::Notify {
            generation,
            sender: pid,
            messages: vec![NotifyMessage::Ready],
        });
        let [Effect::Requeue(ready)] = <[Effect; 1]>::try_from(effects).expect("one effect") else {
            panic!("READY=1 is requeued");
        };
        assert!(matches!(ready, Input::InstanceReady { .. }), "{ready:?}");
        self.on(ready)
    }

    /// Generation 1 with all its instances ready.
    fn serving_instances(count: u32, max_surge: u32) -> Self {
        let mut bench = Bench::new(instances(count, max_surge));
        let effects = bench.on(Input::Start);
        let wanted: Vec<Effect> = (0..count).map(|i| spawn_instance(1, i, count)).collect();
        assert_eq!(effects, wanted, "a first start starts every instance");
        for i in 0..count {
            bench.instance_up(1, i, OLD + i as i32);
        }
        assert_eq!(bench.core.state(), ServiceState::Ready);
        bench
    }

    fn open_restart(&mut self) -> Vec<Effect> {
        self.on(Input::Restart { reason: None });
        self.on(Input::RestartOpened { id: RESTART })
    }

    /// The instance states of `generation`.
    fn instance_states(&self, generation: u64) -> Vec<baton_proto::InstanceState> {
        self.core
            .generations()
            .into_iter()
            .find(|g| g.generation == generation)
            .expect("the generation")
            .instances
            .iter()
            .map(|i| i.state)
            .collect()
    }

    fn exit_all(&mut self, generation: u64, first_pid: i32, count: u32) -> Vec<Effect> {
        let mut effects = Vec::new();
        for i in 0..count {
            effects.extend(self.on(Input::Exited {
                generation,
                pid: pid(first_pid + i as i32),
                exit: ExitInfo::Code(0),
            }));
        }
        effects.extend(self.on(Input::GroupEmpty { generation }));
        effects
    }
}

#[test]
fn a_generation_of_instances_serves_once_its_first_instance_is_ready() {
    use baton_proto::InstanceState::*;
    let mut bench = Bench::new(instances(3, 3));
    bench.on(Input::Start);
    bench.instance_spawned(1, 0, OLD);
    bench.instance_spawned(1, 1, OLD + 1);
    assert_eq!(bench.core.state(), ServiceState::Starting);
    bench.instance_ready(1, OLD + 1);
    assert_eq!(bench.core.state(), ServiceState::Ready);
    assert_eq!(bench.core.current(), Some(1));
    assert_eq!(bench.instance_states(1), [Starting, Ready, Starting]);
    let info = &bench.core.generations()[0].instances[1];
    assert_eq!((info.index, info.pid), (1, Some(OLD as u32 + 1)));
}

#[test]
fn ready_from_a_process_that_leads_no_instance_is_not_counted() {
    let mut bench = Bench::new(instances(2, 2));
    bench.on(Input::Start);
    bench.instance_spawned(1, 0, OLD);
    let effects = bench.on(Input::Notify {
        generation: 1,
        sender: 4242,
        messages: vec![NotifyMessage::Ready],
    });
    assert_eq!(effects, []);
    assert_eq!(bench.core.state(), ServiceState::Starting);
}

#[test]
fn a_restart_drains_the_old_instances_once_every_new_one_is_ready() {
    let mut bench = Bench::serving_instances(4, 4);
    let effects = bench.open_restart();
    let wanted: Vec<Effect> = (0..4).map(|i| spawn_instance(2, i, 4)).collect();
    assert!(effects.ends_with(&wanted), "{effects:?}");
    for i in 0..3 {
        let effects = bench.instance_up(2, i, NEW + i as i32);
        assert!(
            !effects.iter().any(|e| matches!(
                e,
                Effect::Count { .. } | Effect::Signal { .. } | Effect::SignalInstance { .. }
            )),
            "nothing old is stopped before every new instance is ready: {effects:?}"
        );
    }
    let effects = bench.instance_up(2, 3, NEW + 3);
    assert!(effects.contains(&Effect::Count {
        generation: 1,
        pgid: pid(OLD),
        purpose: CountFor::Drain,
    }));
    let effects = bench.on(Input::Counted {
        generation: 1,
        count: Some(5),
        purpose: CountFor::Drain,
    });
    assert!(effects.contains(&Effect::SignalInstances {
        pgids: (0..4).map(|i| pid(OLD + i)).collect(),
        signal: Signal::SIGTERM,
    }));
    assert_eq!(bench.core.current(), Some(2));
    let effects = bench.exit_all(1, OLD, 4);
    assert_eq!(finish(&effects), Some(RestartOutcome::Succeeded));
    assert_eq!(bench.core.state(), ServiceState::Ready);
}

#[test]
fn a_new_instance_that_never_gets_ready_rolls_the_restart_back() {
    let mut bench = Bench::serving_instances(3, 3);
    bench.open_restart();
    bench.instance_up(2, 0, NEW);
    bench.instance_up(2, 1, NEW + 1);
    bench.instance_spawned(2, 2, NEW + 2);
    let effects = bench.timer();
    assert!(
        effects.contains(&Effect::SignalInstances {
            pgids: vec![pid(NEW), pid(NEW + 1), pid(NEW + 2)],
            signal: Signal::SIGTERM,
        }),
        "{effects:?}"
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::SignalInstance { .. } | Effect::Count { .. })),
        "the old instances are left alone: {effects:?}"
    );
    let effects = bench.exit_all(2, NEW, 3);
    assert_eq!(finish(&effects), Some(RestartOutcome::RolledBack));
    assert_eq!(bench.core.current(), Some(1));
    assert_eq!(
        bench.instance_states(1),
        [baton_proto::InstanceState::Ready; 3]
    );
}

#[test]
fn a_new_instance_that_exits_before_ready_rolls_the_restart_back() {
    let mut bench = Bench::serving_instances(2, 2);
    bench.open_restart();
    bench.instance_up(2, 0, NEW);
    bench.instance_spawned(2, 1, NEW + 1);
    let effects = bench.on(Input::Exited {
        generation: 2,
        pid: pid(NEW + 1),
        exit: ExitInfo::Code(3),
    });
    assert!(effects.contains(&Effect::SignalInstances {
        pgids: vec![pid(NEW)],
        signal: Signal::SIGTERM,
    }));
    let effects = bench.exit_all(2, NEW, 1);
    assert_eq!(finish(&effects), Some(RestartOutcome::RolledBack));
    assert_eq!(bench.core.current(), Some(1));
}

#[test]
fn a_batched_restart_replaces_max_surge_instances_at_a_time() {
    let mut bench = Bench::serving_instances(4, 2);
    let effects = bench.open_restart();
    assert!(
        effects.ends_with(&[spawn_instance(2, 0, 4), spawn_instance(2, 1, 4)]),
        "{effects:?}"
    );
    assert!(bench.instance_up(2, 0, NEW).is_empty());
    let effects = bench.instance_up(2, 1, NEW + 1);
    assert_eq!(
        effects,
        [
            Effect::SignalInstance {
                pgid: pid(OLD),
                signal: Signal::SIGTERM
            },
            Effect::SignalInstance {
                pgid: pid(OLD + 1),
                signal: Signal::SIGTERM
            },
            spawn_instance(2, 2, 4),
            spawn_instance(2, 3, 4),
        ]
    );
    use baton_proto::InstanceState::*;
    assert_eq!(bench.instance_states(1), [Draining, Draining, Ready, Ready]);
    assert_eq!(
        bench.core.current(),
        Some(1),
        "the old generation serves on"
    );
    bench.instance_up(2, 2, NEW + 2);
    let effects = bench.instance_up(2, 3, NEW + 3);
    assert!(effects.contains(&Effect::Count {
        generation: 1,
        pgid: pid(OLD),
        purpose: CountFor::Drain,
    }));
    let effects = bench.on(Input::Counted {
        generation: 1,
        count: Some(0),
        purpose: CountFor::Drain,
    });
    assert!(
        effects.contains(&Effect::SignalInstances {
            pgids: vec![pid(OLD + 2), pid(OLD + 3)],
            signal: Signal::SIGTERM,
        }),
        "the drained instances are not signalled twice: {effects:?}"
    );
    let effects = bench.exit_all(1, OLD, 4);
    assert_eq!(finish(&effects), Some(RestartOutcome::Succeeded));
}

#[test]
fn a_batched_restart_kills_a_replaced_instance_at_its_drain_deadline() {
    let mut bench = Bench::serving_instances(2, 1);
    bench.open_restart();
    bench.instance_up(2, 0, NEW);
    bench.wait(DRAIN_TIMEOUT);
    let effects = bench.timer();
    assert!(
        effects.contains(&Effect::KillInstance { pgid: pid(OLD) }),
        "{effects:?}"
    );
}

#[test]
fn a_rollback_in_the_middle_of_a_batched_restart_starts_the_replaced_old_instances_again() {
    use baton_proto::InstanceState::*;
    let mut bench = Bench::serving_instances(4, 1);
    bench.open_restart();
    bench.instance_up(2, 0, NEW);
    bench.instance_up(2, 1, NEW + 1);
    assert_eq!(bench.instance_states(1), [Draining, Draining, Ready, Ready]);
    // Old 0 has drained and exited; old 1 still drains.
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    bench.instance_spawned(2, 2, NEW + 2);
    let effects = bench.on(Input::Exited {
        generation: 2,
        pid: pid(NEW + 2),
        exit: ExitInfo::Code(1),
    });
    assert!(effects.contains(&Effect::SignalInstances {
        pgids: vec![pid(NEW), pid(NEW + 1)],
        signal: Signal::SIGTERM,
    }));
    assert!(
        effects.ends_with(&[spawn_instance(1, 0, 4), spawn_instance(1, 1, 4)]),
        "the replaced old instances start again: {effects:?}"
    );
    assert_eq!(bench.core.current(), Some(1));
    assert_eq!(bench.instance_states(1), [Starting, Starting, Ready, Ready]);
    // The old 1 that drained is still watched, and killed at its deadline.
    bench.instance_up(1, 0, OLD + 10);
    bench.instance_up(1, 1, OLD + 11);
    assert_eq!(bench.instance_states(1), [Ready; 4]);
    let effects = bench.exit_all(2, NEW, 2);
    assert_eq!(finish(&effects), Some(RestartOutcome::RolledBack));
    bench.wait(DRAIN_TIMEOUT);
    let effects = bench.timer();
    assert!(
        effects.contains(&Effect::KillInstance { pgid: pid(OLD + 1) }),
        "{effects:?}"
    );
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 1),
        exit: ExitInfo::Signal(Signal::SIGKILL),
    });
    assert_eq!(bench.core.state(), ServiceState::Ready);
    assert_eq!(bench.instance_states(1), [Ready; 4]);
}

#[test]
fn an_instance_that_crashes_is_started_again_alone() {
    let mut bench = Bench::serving_instances(3, 3);
    let effects = bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 1),
        exit: ExitInfo::Code(1),
    });
    assert_eq!(
        effects,
        [
            Effect::SignalInstance {
                pgid: pid(OLD + 1),
                signal: Signal::SIGTERM
            },
            Effect::ForgetInstance { pgid: pid(OLD + 1) },
            Effect::Emit {
                restart: None,
                kind: EventKind::CrashRestartScheduled {
                    generation: 1,
                    backoff_ms: 100,
                    consecutive_crashes: 1,
                },
            },
        ],
        "only its own process group is signalled"
    );
    assert_eq!(
        bench.core.state(),
        ServiceState::Ready,
        "the others serve on"
    );
    assert_eq!(bench.timer(), [spawn_instance(1, 1, 3)]);
    bench.instance_up(1, 1, OLD + 10);
    let info = &bench.core.generations()[0].instances[1];
    assert_eq!((info.pid, info.restarts), (Some(OLD as u32 + 10), 1));
    // It crashes again at once: its own backoff doubles.
    let effects = bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 10),
        exit: ExitInfo::Code(1),
    });
    assert!(effects.contains(&Effect::Emit {
        restart: None,
        kind: EventKind::CrashRestartScheduled {
            generation: 1,
            backoff_ms: 200,
            consecutive_crashes: 2,
        },
    }));
}

#[test]
fn a_service_whose_every_instance_is_down_is_crash_looping() {
    let mut bench = Bench::serving_instances(2, 2);
    for i in 0..2 {
        bench.on(Input::Exited {
            generation: 1,
            pid: pid(OLD + i),
            exit: ExitInfo::Code(1),
        });
    }
    assert_eq!(bench.core.state(), ServiceState::CrashLooping);
    let effects = bench.timer();
    assert_eq!(effects, [spawn_instance(1, 0, 2), spawn_instance(1, 1, 2)]);
}

#[test]
fn stopping_a_service_of_instances_signals_each_once_and_starts_none_again() {
    let mut bench = Bench::serving_instances(3, 3);
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 2),
        exit: ExitInfo::Code(1),
    });
    let effects = bench.on(Input::Stop);
    assert_eq!(
        effects,
        [Effect::SignalInstances {
            pgids: vec![pid(OLD), pid(OLD + 1)],
            signal: Signal::SIGTERM,
        }]
    );
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD),
        exit: ExitInfo::Code(0),
    });
    let effects = bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 1),
        exit: ExitInfo::Code(0),
    });
    assert!(effects.contains(&Effect::CheckGroup {
        generation: 1,
        pgid: pid(OLD),
    }));
    bench.on(Input::GroupEmpty { generation: 1 });
    assert!(bench.core.is_done());
}

#[test]
fn an_upgrade_hands_over_every_instance_and_the_next_image_starts_the_missing_one() {
    let mut bench = Bench::serving_instances(3, 3);
    bench.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 2),
        exit: ExitInfo::Code(1),
    });
    let handed = bench.core.hand_over(bench.now).expect("handed over");
    let service = crate::handover::ServiceHandover {
        name: "web".into(),
        sockets: Vec::new(),
        generations: handed.generations,
        current: handed.current,
        next_generation: handed.next_generation,
        consecutive_crashes: handed.consecutive_crashes,
        fd_store: Vec::new(),
        restart: None,
        last_report: None,
    };
    // Through the state file's JSON, as both the upgrade and a recovery read it.
    let json = serde_json::to_string(&service).expect("serialized");
    let service: crate::handover::ServiceHandover = serde_json::from_str(&json).expect("parsed");

    let mut next = Bench::new(instances(3, 3));
    let now = Now {
        at: next.now,
        unix_ms: baton_proto::now_millis(),
    };
    let effects = next
        .core
        .adopt(&service, now, super::core::Predecessor::Image);
    assert_eq!(
        effects,
        [
            Effect::Route {
                generation: 1,
                pgid: pid(OLD)
            },
            Effect::WatchExit {
                generation: 1,
                pid: pid(OLD)
            },
            Effect::Route {
                generation: 1,
                pgid: pid(OLD + 1)
            },
            Effect::WatchExit {
                generation: 1,
                pid: pid(OLD + 1)
            },
        ]
    );
    use baton_proto::InstanceState::*;
    assert_eq!(next.instance_states(1), [Ready, Ready, Backoff]);
    assert_eq!(next.core.current(), Some(1));
    assert_eq!(next.on(Input::Timer), [spawn_instance(1, 2, 3)]);
    // An instance of the adopted generation still restarts alone.
    let effects = next.on(Input::Exited {
        generation: 1,
        pid: pid(OLD + 1),
        exit: ExitInfo::Code(1),
    });
    assert!(effects.contains(&Effect::SignalInstance {
        pgid: pid(OLD + 1),
        signal: Signal::SIGTERM
    }));
    assert_eq!(next.core.state(), ServiceState::Ready);
}

#[test]
fn each_instance_is_probed_on_its_own_port() {
    let mut bench = Bench::new(ServiceConfig {
        ready: Readiness::Tcp {
            addr: crate::config::ProbeTemplate::parse("127.0.0.1:{port}"),
        },
        ..instances(2, 2)
    });
    let wanted: Vec<Effect> = (0..2)
        .map(|instance| Effect::SpawnInstance {
            generation: 1,
            instance,
            instances: 2,
            probe_port: true,
        })
        .collect();
    assert_eq!(bench.on(Input::Start), wanted);
    for (instance, port) in [(0, 4000), (1, 4001)] {
        let effects = bench.on(Input::InstanceSpawned {
            generation: 1,
            instance,
            pid: pid(OLD + instance as i32),
            probe_port: Some(port),
        });
        assert!(effects.contains(&Effect::ProbeInstance {
            generation: 1,
            instance,
            port: Some(port),
        }));
    }
    // READY=1 does not count with a probe; the probe's answer does.
    assert!(
        bench
            .on(Input::Notify {
                generation: 1,
                sender: OLD,
                messages: vec![NotifyMessage::Ready],
            })
            .is_empty()
    );
    bench.on(Input::InstanceReady {
        generation: 1,
        instance: 1,
    });
    use baton_proto::InstanceState::*;
    assert_eq!(bench.instance_states(1), [Starting, Ready]);
    assert_eq!(bench.core.state(), ServiceState::Ready);
}
