//! `min_overlap` with real processes: both generations serve until the
//! overlap ends; a new generation that dies meanwhile rolls the restart back
//! with the old one never signalled; `baton restart --wait` shows the step;
//! the agent's upgrade (SIGUSR2) in the middle of an overlap carries it on.

use baton_client::AgentClient;
use baton_proto::{
    AgentStatus, EventKind, GenerationState, RestartOutcome, RestartReport, ServiceState,
};
use baton_tests::{AgentUnderTest, bin, demo_service};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::Duration;

fn start(overlap: &str) -> AgentUnderTest {
    AgentUnderTest::start(&demo_service(
        "web",
        &format!("min_overlap = \"{overlap}\"\ndrain_timeout = \"5s\""),
    ))
}

/// Asks for a restart and returns at once with its id.
fn begin_restart(agent: &AgentUnderTest) -> u64 {
    AgentClient::connect(&agent.socket)
        .and_then(|mut c| c.start_restart("web", None, false))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn report(agent: &AgentUnderTest, id: u64) -> RestartReport {
    AgentClient::connect(&agent.socket)
        .and_then(|mut c| c.restart_report(id))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Both generations ready: the new one in its overlap.
fn both_ready(status: &AgentStatus) -> bool {
    let generations = &status.services[0].generations;
    generations.len() == 2
        && generations
            .iter()
            .all(|g| g.state == GenerationState::Ready)
}

fn wait_until_done(agent: &AgentUnderTest, id: u64) -> RestartReport {
    agent.wait_for("the restart to end", Duration::from_secs(30), |s| {
        s.services[0].running_restart.is_none()
    });
    report(agent, id)
}

fn step_at(report: &RestartReport, wanted: impl Fn(&EventKind) -> bool) -> Option<u64> {
    report.steps.iter().find(|e| wanted(&e.kind)).map(|e| e.at)
}

#[test]
fn a_new_generation_killed_during_its_overlap_rolls_back_and_the_old_one_serves_on_untouched() {
    let agent = start("30s");
    let old = agent.service("web").generations[0].clone();
    let id = begin_restart(&agent);
    let status = agent.wait_for("the overlap", Duration::from_secs(20), both_ready);
    let new = status.services[0]
        .generations
        .iter()
        .find(|g| g.generation != old.generation)
        .cloned()
        .unwrap();
    kill(Pid::from_raw(new.pid as i32), Signal::SIGKILL).unwrap();

    let report = wait_until_done(&agent, id);
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::RolledBack),
        "{report:?}"
    );
    assert!(
        step_at(&report, |k| matches!(
            k,
            EventKind::GenerationDraining { .. }
        ))
        .is_none(),
        "the old generation was never told to stop: {report:?}"
    );
    let after = agent.service("web");
    assert_eq!(after.state, ServiceState::Ready);
    assert_eq!(after.generations.len(), 1, "{after:?}");
    assert_eq!(after.generations[0].pid, old.pid);
    assert_eq!(after.generations[0].state, GenerationState::Ready);
}

#[test]
fn restart_wait_prints_the_overlap_and_the_old_generation_drains_only_after_it() {
    let agent = start("1s");
    let out = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(["restart", "web", "--wait"])
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |words: &str| {
        stdout
            .lines()
            .position(|l| l.contains(words))
            .unwrap_or_else(|| panic!("{words:?} missing from:\n{stdout}"))
    };
    let started = line("generation 1 keeps serving beside generation 2 for 1000 ms (min_overlap)");
    let over = line("overlap over: generation 2 takes over from generation 1");
    let draining = line("generation 1 draining");
    assert!(started < over && over < draining, "{stdout}");
}

#[test]
fn an_upgrade_during_the_overlap_carries_it_into_the_next_image() {
    let agent = start("3s");
    let old = agent.service("web").generations[0].clone();
    let id = begin_restart(&agent);
    let status = agent.wait_for("the overlap", Duration::from_secs(20), both_ready);
    let boot_before = status.boot_id.clone();
    agent.signal(Signal::SIGUSR2);
    let upgraded = agent.wait_for("the new image", Duration::from_secs(10), |s| {
        s.boot_id != boot_before
    });
    assert_eq!(
        upgraded.services[0].running_restart,
        Some(id),
        "{upgraded:?}"
    );
    assert!(both_ready(&upgraded), "still overlapping: {upgraded:?}");

    let report = wait_until_done(&agent, id);
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    let started = step_at(&report, |k| matches!(k, EventKind::OverlapStarted { .. }))
        .expect("overlap_started");
    let finished = step_at(&report, |k| matches!(k, EventKind::OverlapFinished { .. }))
        .expect("overlap_finished, from the next image");
    let draining = step_at(&report, |k| {
        matches!(k, EventKind::GenerationDraining { generation, .. } if *generation == old.generation)
    })
    .expect("the old generation drained");
    assert!(finished >= started + 3_000, "{report:?}");
    assert!(draining >= finished, "{report:?}");
    let after = agent.service("web");
    assert_eq!(after.generations.len(), 1, "{after:?}");
    assert_ne!(after.generations[0].pid, old.pid);
    assert!(agent.log().contains("upgraded in place"), "{}", agent.log());
}
