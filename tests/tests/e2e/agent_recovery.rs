//! The agent survives its own `kill -9`: an agent started again with the
//! same config takes over what the killed one left running (its generations,
//! their listening sockets, a drain and its deadline, the restart in
//! progress) from the state file in its runtime folder, with no refused
//! connection and no duplicate generation.

use baton_loadgen::{LoadReport, Target};
use baton_proto::{EventKind, GenerationState, RestartOutcome, ServiceState};
use baton_testkit::{Agent, AgentSetup};
use baton_tests::{bin, demo_service, demo_service_args, load};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const CONNECTIONS: usize = 64;

/// An agent run in a folder of the test's, so that a second agent can be
/// started on the same config, control socket and state file.
struct Host {
    folder: PathBuf,
    services: String,
    agent: Option<Agent>,
}

impl Host {
    fn start(folder: &Path, services: &str) -> Host {
        let mut host = Host {
            folder: folder.to_path_buf(),
            services: services.to_string(),
            agent: None,
        };
        host.start_agent();
        host
    }

    /// Starts the agent (again) with the same config in the same folder.
    fn start_agent(&mut self) {
        let agent = AgentSetup::new(bin("baton-agent"), self.services.clone())
            .in_folder(&self.folder)
            .env(
                "BATON_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .start()
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.agent = Some(agent);
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("an agent runs")
    }

    /// `kill -9`: no chance to clean up. Its log is kept beside the next one's.
    fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("an agent runs");
        agent.process_mut().kill();
        let log = self.folder.join("agent.log");
        let _ = std::fs::rename(&log, self.folder.join("agent.killed.log"));
    }

    fn log(&self) -> String {
        let killed = std::fs::read_to_string(self.folder.join("agent.killed.log"));
        let current = std::fs::read_to_string(self.folder.join("agent.log"));
        format!(
            "--- killed agent ---\n{}\n--- agent ---\n{}",
            killed.unwrap_or_default(),
            current.unwrap_or_default()
        )
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&baton_proto::AgentStatus) -> bool,
    ) -> baton_proto::AgentStatus {
        self.agent()
            .wait_for(what, timeout, done)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.log()))
    }

    fn service(&self, name: &str) -> baton_proto::ServiceStatus {
        self.agent()
            .service(name)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn restart(&self, service: &str) -> baton_proto::RestartReport {
        self.agent()
            .restart(service, None, |_| {})
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.log()))
    }

    /// Asks for a restart and returns at once with its id.
    fn begin_restart(&self, service: &str) -> u64 {
        self.agent()
            .client()
            .and_then(|mut c| Ok(c.start_restart(service, None, false)?))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn report(&self, id: u64) -> baton_proto::RestartReport {
        self.agent()
            .client()
            .and_then(|mut c| Ok(c.restart_report(id)?))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        })
}

/// The folder of the agent that runs the generation `pid` is in (the parent
/// of the generation's cgroup), when generations get cgroups.
fn cgroup_folder_of(pid: u32) -> Option<PathBuf> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2").then(|| before.split_whitespace().nth(4))?
    })?;
    let (folder, _) = relative.rsplit_once('/')?;
    folder
        .contains("agent-")
        .then(|| Path::new(mount).join(folder.trim_start_matches('/')))
}

struct Load {
    stop: Arc<Notify>,
    task: JoinHandle<LoadReport>,
}

fn start_load(host: &Host, service: &str) -> Load {
    let addr = host
        .agent()
        .address(service, Some("http"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let task = tokio::spawn(load(Target::Tcp(addr), CONNECTIONS, async move {
        stopped.notified().await
    }));
    Load { stop, task }
}

impl Load {
    async fn finish(self) -> LoadReport {
        self.stop.notify_one();
        let report = self.task.await.unwrap();
        eprintln!("{report}");
        report
    }
}

/// An agent with one service, `web` (`drain_timeout` 3 s), whose first
/// generation ignores SIGTERM; the generations after it do not.
async fn host_whose_first_generation_ignores_sigterm(folder: &Path) -> Host {
    let mode_file = folder.join("mode");
    let services = demo_service_args(
        "web",
        &["--mode-file", mode_file.to_str().unwrap()],
        r#"drain_timeout = "3s""#,
    );
    std::fs::write(&mode_file, "ignore-sigterm").unwrap();
    let host = Host::start(folder, &services);
    let host = blocking(move || {
        host.wait_for("ready", Duration::from_secs(20), |s| {
            s.services.iter().all(|s| s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    std::fs::remove_file(&mode_file).unwrap();
    host
}

async fn sleep(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Runs blocking control-socket work off the runtime the load runs on.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_idle_is_replaced_by_one_that_adopts_the_serving_generation() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path(), &demo_service("web", r#"drain_timeout = "5s""#));
    let mut host = blocking(move || {
        host.wait_for("ready", Duration::from_secs(20), |s| {
            s.services.iter().all(|s| s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    let before = host.service("web");
    let serving = before.generations[0].clone();
    let killed_agents_folder = cgroup_folder_of(serving.pid);
    let load = start_load(&host, "web");
    sleep(300).await;

    host.kill_agent();
    sleep(300).await;
    let host = blocking(move || {
        host.start_agent();
        host
    })
    .await;
    let after = host.service("web");
    assert_eq!(after.state, ServiceState::Ready, "{after:?}");
    assert_eq!(after.sockets, before.sockets, "the same socket, taken over");
    assert_eq!(after.generations.len(), 1, "no duplicate: {after:?}");
    assert_eq!(
        after.generations[0].pid, serving.pid,
        "the same process serves"
    );
    assert_eq!(after.generations[0].generation, serving.generation);
    sleep(300).await;

    // Upgraded in place after the recovery, the agent still watches the
    // adopted generation, which is not its child.
    let boot_before = host.agent().status().unwrap().boot_id;
    host.agent().process().signal(Signal::SIGUSR2).unwrap();
    let host = blocking(move || {
        host.wait_for("the new image", Duration::from_secs(10), |s| {
            s.boot_id != boot_before
        });
        host
    })
    .await;

    // The adopted generation is managed: the next restart drains it.
    let host = Arc::new(host);
    let restarter = host.clone();
    let report = blocking(move || restarter.restart("web")).await;
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    assert_eq!(report.old_generation, Some(serving.generation));
    // Its notify messages reach it again: `STATUS=draining` as it drains.
    assert!(
        report.steps.iter().any(|step| matches!(
            &step.kind,
            EventKind::GenerationStatus { generation, status }
                if *generation == serving.generation && status.starts_with("draining")
        )),
        "{report:?}"
    );
    assert_eq!(host.agent().status().unwrap().notify_strangers, 0);
    assert!(!alive(serving.pid), "the drained generation exited");
    if let Some(folder) = killed_agents_folder {
        assert!(!folder.exists(), "{} is left behind", folder.display());
    }
    sleep(200).await;
    let report = load.finish().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.generations_seen.len() >= 2);
    assert!(
        host.log()
            .contains("listening socket taken over from a surviving generation"),
        "{}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_a_new_generation_warms_up_reports_the_restart_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let services = demo_service_args(
        "web",
        &["--mode-file", mode_file.to_str().unwrap()],
        "drain_timeout = \"2s\"\nready_timeout = \"30s\"",
    );
    let host = Host::start(dir.path(), &services);
    let mut host = blocking(move || {
        host.wait_for("ready", Duration::from_secs(20), |s| {
            s.services.iter().all(|s| s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    let serving = host.service("web").generations[0].clone();
    let load = start_load(&host, "web");
    sleep(300).await;

    std::fs::write(&mode_file, "slow:20000").unwrap();
    let restart = host.begin_restart("web");
    let warming = host
        .wait_for(
            "the new generation warming up",
            Duration::from_secs(10),
            |s| {
                s.services[0]
                    .generations
                    .iter()
                    .any(|g| g.state == GenerationState::Starting)
            },
        )
        .services[0]
        .generations
        .iter()
        .find(|g| g.state == GenerationState::Starting)
        .cloned()
        .unwrap();
    sleep(200).await;
    host.kill_agent();
    std::fs::remove_file(&mode_file).unwrap();
    sleep(300).await;

    let host = blocking(move || {
        host.start_agent();
        host.wait_for(
            "the interrupted restart to end",
            Duration::from_secs(10),
            |s| s.services[0].running_restart.is_none() && s.services[0].generations.len() == 1,
        );
        host
    })
    .await;
    let after = host.service("web");
    assert_eq!(
        after.generations[0].pid, serving.pid,
        "the old generation serves on: {after:?}"
    );
    assert!(
        !alive(warming.pid),
        "the half-started generation was stopped"
    );
    let report = host.report(restart);
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Interrupted),
        "{report:?}"
    );
    assert_eq!(report.new_generation, Some(warming.generation));
    let shown = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(host.agent().socket())
        .args(["show", &restart.to_string()])
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("interrupted"), "baton show:\n{shown}");

    let host = Arc::new(host);
    let restarter = host.clone();
    let report = blocking(move || restarter.restart("web")).await;
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    assert!(
        report.id > restart,
        "restart ids go on after the recovered one"
    );
    sleep(200).await;
    let report = load.finish().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
}

/// The state file is written just after a spawn: an agent killed in
/// between leaves a generation nobody wrote down. Its cgroup, numbered from
/// the recorded next generation on, gives it away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_spawned_just_before_the_agent_was_killed_is_not_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode");
    let services = demo_service_args(
        "web",
        &["--mode-file", mode_file.to_str().unwrap()],
        r#"ready_timeout = "30s""#,
    );
    let host = Host::start(dir.path(), &services);
    let mut host = blocking(move || {
        host.wait_for("ready", Duration::from_secs(20), |s| {
            s.services.iter().all(|s| s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    let serving = host.service("web").generations[0].clone();
    std::fs::write(&mode_file, "slow:20000").unwrap();
    host.begin_restart("web");
    let warming = host
        .wait_for(
            "the new generation warming up",
            Duration::from_secs(10),
            |s| s.services[0].generations.len() == 2,
        )
        .services[0]
        .generations[1]
        .clone();
    sleep(200).await;
    host.kill_agent();
    std::fs::remove_file(&mode_file).unwrap();
    // As if killed before it wrote the spawn down.
    let state_path = dir.path().join("agent-state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let web = &mut state["services"][0];
    web["generations"]
        .as_array_mut()
        .unwrap()
        .retain(|g| g["number"] != warming.generation);
    web["next_generation"] = warming.generation.into();
    web.as_object_mut().unwrap().remove("restart");
    std::fs::write(&state_path, state.to_string()).unwrap();

    let host = blocking(move || {
        host.start_agent();
        host
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(warming.pid) && Instant::now() < deadline {
        sleep(20).await;
    }
    assert!(!alive(warming.pid), "the unrecorded generation still runs");
    let after = host.service("web");
    assert_eq!(after.generations.len(), 1, "{after:?}");
    assert_eq!(after.generations[0].pid, serving.pid);
    assert!(
        host.log()
            .contains("a generation the state file does not know")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_drain_kills_the_old_generation_at_its_original_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = host_whose_first_generation_ignores_sigterm(dir.path()).await;
    let old = host.service("web").generations[0].clone();
    let load = start_load(&host, "web");
    sleep(300).await;

    let restart = host.begin_restart("web");
    host.wait_for(
        "the old generation draining",
        Duration::from_secs(10),
        |s| {
            s.services[0]
                .generations
                .iter()
                .any(|g| g.generation == old.generation && g.state == GenerationState::Draining)
        },
    );
    let drain_began = Instant::now();
    let new = host
        .service("web")
        .generations
        .into_iter()
        .find(|g| g.generation != old.generation)
        .unwrap();
    sleep(500).await;
    host.kill_agent();
    sleep(300).await;

    let host = blocking(move || {
        host.start_agent();
        host
    })
    .await;
    let status = host.service("web");
    assert_eq!(status.generations.len(), 2, "{status:?}");
    assert_eq!(
        status.generations[1].pid, new.pid,
        "the new generation serves on"
    );
    // Still draining after the recovery, and gone by its original deadline.
    assert!(alive(old.pid), "killed too early");
    while alive(old.pid) && drain_began.elapsed() < Duration::from_secs(6) {
        sleep(20).await;
    }
    let gone_after = drain_began.elapsed();
    eprintln!("old generation gone {gone_after:?} after its drain began (drain_timeout 3s)");
    assert!(
        !alive(old.pid),
        "the old generation still runs {gone_after:?} later"
    );
    // Not at the recovery (under a second in), but at the deadline.
    assert!(gone_after >= Duration::from_secs(2), "{gone_after:?}");
    let host = blocking(move || {
        host.wait_for("the restart to end", Duration::from_secs(5), |s| {
            s.services[0].running_restart.is_none()
        });
        host
    })
    .await;
    let report = host.report(restart);
    assert_eq!(report.outcome, Some(RestartOutcome::Forced), "{report:?}");

    let host = Arc::new(host);
    let restarter = host.clone();
    let after = blocking(move || restarter.restart("web")).await;
    assert_eq!(after.outcome, Some(RestartOutcome::Succeeded), "{after:?}");
    sleep(200).await;
    let report = load.finish().await;
    // What the old generation still held at its deadline is cut, as in any
    // forced restart; nothing else fails.
    let cut = host.report(restart).connections_cut.unwrap_or(0) as u64;
    eprintln!("connections cut at the deadline: {cut}");
    assert!(
        report.failed <= cut,
        "failed requests: {} ({:?}), connections cut: {cut}",
        report.failed,
        report.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_generation_without_a_state_file_is_reported_and_never_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let port = baton_testkit::free_port().unwrap();
    let web =
        demo_service("web", "").replace("tcp://127.0.0.1:0", &format!("tcp://127.0.0.1:{port}"));
    let services = format!("{web}\n{}", demo_service("api", ""));
    let host = Host::start(dir.path(), &services);
    let mut host = blocking(move || {
        host.wait_for("ready", Duration::from_secs(20), |s| {
            s.services.iter().all(|s| s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    let leftover = host.service("web").generations[0].clone();
    let api = host.service("api").generations[0].clone();
    host.kill_agent();
    // Only web's generation survives, and the state file is lost.
    killpg(Pid::from_raw(api.pid as i32), Signal::SIGKILL).unwrap();
    std::fs::remove_file(dir.path().join("agent-state.json")).unwrap();
    sleep(200).await;

    let host = blocking(move || {
        host.start_agent();
        host.wait_for("api ready", Duration::from_secs(20), |s| {
            s.services
                .iter()
                .any(|s| s.name == "api" && s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    let web = host.service("web");
    let _cleanup = KillOnDrop(leftover.pid);
    assert!(
        web.generations.is_empty(),
        "a duplicate was started: {web:?}"
    );
    let blocked = web.blocked.clone().expect("web says why it does not run");
    assert!(
        blocked.contains(&format!("pid {}", leftover.pid)),
        "the holder is named: {blocked}"
    );
    assert!(host.log().contains(&format!("pid {}", leftover.pid)));
    let status = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(host.agent().socket())
        .arg("status")
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!(
            "web does not run: tcp://127.0.0.1:{port} is held by pid {}",
            leftover.pid
        )),
        "baton status:\n{status}"
    );
    assert!(
        status.contains(&format!("pid {}", leftover.pid)),
        "{status}"
    );
    assert!(alive(leftover.pid), "the leftover is left alone");
    let refused = host
        .agent()
        .client()
        .unwrap()
        .start_restart("web", None, false);
    assert!(refused.is_err(), "a blocked service is not restarted");

    // Once the stranger is gone, a reload starts the service.
    killpg(Pid::from_raw(leftover.pid as i32), Signal::SIGKILL).unwrap();
    sleep(200).await;
    let host = blocking(move || {
        host.agent().client().unwrap().reload().unwrap();
        host.wait_for("web ready", Duration::from_secs(20), |s| {
            s.services.iter().all(|s| s.state == ServiceState::Ready)
        });
        host
    })
    .await;
    let web = host.service("web");
    assert_eq!(web.blocked, None);
    assert_eq!(web.generations.len(), 1);
    assert_eq!(
        web.sockets[0].listen,
        format!("tcp://127.0.0.1:{port}"),
        "{web:?}"
    );
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_wait_follows_the_restart_onto_the_agent_that_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = host_whose_first_generation_ignores_sigterm(dir.path()).await;
    let old = host.service("web").generations[0].clone();

    // What a CI deploy step runs, while the agent is killed under it.
    let waiting = std::process::Command::new(bin("baton"))
        .arg("--agent")
        .arg(host.agent().socket())
        .args(["restart", "web", "--wait"])
        .env_remove("BATON_SERVER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    host.wait_for(
        "the old generation draining",
        Duration::from_secs(10),
        |s| {
            s.services[0]
                .generations
                .iter()
                .any(|g| g.generation == old.generation && g.state == GenerationState::Draining)
        },
    );
    host.kill_agent();
    sleep(300).await;
    let host = blocking(move || {
        host.start_agent();
        host
    })
    .await;

    let out = blocking(move || waiting.wait_with_output().unwrap()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Forced at the drain's deadline (the old generation ignores SIGTERM):
    // the real outcome, not "agent unreachable".
    assert_eq!(
        out.status.code(),
        Some(baton_proto::exit::FORCED as i32),
        "stdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        host.log()
    );
    assert!(stderr.contains("lost the agent"), "{stderr}");
    assert!(stdout.contains("forced"), "{stdout}");
    assert!(!alive(old.pid));
}

/// `min_overlap`: an agent killed while both generations serve leaves a
/// restart whose only business is a deadline. The next agent ends the
/// overlap at its recorded wall-clock time, not earlier and not never, and
/// the old generation then drains as usual.
#[test]
fn an_agent_killed_during_an_overlap_ends_it_at_its_original_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let services = demo_service("web", "min_overlap = \"4s\"\ndrain_timeout = \"5s\"");
    let mut host = Host::start(dir.path(), &services);
    host.wait_for("ready", Duration::from_secs(20), |s| {
        s.services.iter().all(|s| s.state == ServiceState::Ready)
    });
    let old = host.service("web").generations[0].clone();
    let restart = host.begin_restart("web");
    let overlapping = host.wait_for("the overlap", Duration::from_secs(20), |s| {
        let generations = &s.services[0].generations;
        generations.len() == 2
            && generations
                .iter()
                .all(|g| g.state == GenerationState::Ready)
    });
    let new = overlapping.services[0]
        .generations
        .iter()
        .find(|g| g.generation != old.generation)
        .cloned()
        .unwrap();
    let overlap_began = new.ready_at.expect("ready");
    host.kill_agent();
    std::thread::sleep(Duration::from_millis(300));

    host.start_agent();
    let recovered = host.service("web");
    assert_eq!(recovered.running_restart, Some(restart), "{recovered:?}");
    assert!(alive(old.pid), "the old generation was not stopped early");
    host.wait_for("the restart to end", Duration::from_secs(20), |s| {
        s.services[0].running_restart.is_none()
    });
    let report = host.report(restart);
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    let ended = report
        .steps
        .iter()
        .find(|e| matches!(e.kind, EventKind::OverlapFinished { .. }))
        .map(|e| e.at)
        .expect("the next agent ended the overlap");
    assert!(
        ended + 5 >= overlap_began + 4_000,
        "ended {} ms after it began",
        ended - overlap_began
    );
    assert!(
        ended <= overlap_began + 4_000 + 3_000,
        "ended {} ms after it began",
        ended.saturating_sub(overlap_began)
    );
    let after = host.service("web");
    assert_eq!(after.generations.len(), 1, "{after:?}");
    assert_eq!(after.generations[0].pid, new.pid);
    assert!(!alive(old.pid), "the old generation drained and exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_instances_running_adopts_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        dir.path(),
        &demo_service("web", "instances = 3\ndrain_timeout = \"5s\""),
    );
    let all_ready = |s: &baton_proto::AgentStatus| {
        s.services[0].state == ServiceState::Ready
            && s.services[0].generations.len() == 1
            && s.services[0].generations[0].instances.len() == 3
            && s.services[0].generations[0]
                .instances
                .iter()
                .all(|i| i.state == baton_proto::InstanceState::Ready)
    };
    let mut host = blocking(move || {
        host.wait_for("every instance ready", Duration::from_secs(20), all_ready);
        host
    })
    .await;
    let pids = |s: &baton_proto::ServiceStatus| -> Vec<u32> {
        s.generations[0]
            .instances
            .iter()
            .map(|i| i.pid.expect("running"))
            .collect()
    };
    let before = pids(&host.service("web"));

    host.kill_agent();
    sleep(300).await;
    let host = blocking(move || {
        host.start_agent();
        host
    })
    .await;
    let after = host.service("web");
    assert_eq!(pids(&after), before, "every instance adopted: {after:?}");
    assert_eq!(after.generations.len(), 1, "no duplicate: {after:?}");

    // An adopted instance (not the agent's child, watched on its pidfd)
    // that dies is started again alone.
    kill(Pid::from_raw(before[2] as i32), Signal::SIGKILL).unwrap();
    let host = blocking(move || {
        host.wait_for("instance 2 again", Duration::from_secs(20), |s| {
            all_ready(s) && s.services[0].generations[0].instances[2].restarts == 1
        });
        host
    })
    .await;
    let now = pids(&host.service("web"));
    assert_eq!(now[..2], before[..2]);
    assert_ne!(now[2], before[2]);

    let report = blocking(move || {
        let report = host.restart("web");
        (report, host)
    })
    .await;
    let (report, host) = report;
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:?}"
    );
    for pid in now {
        assert!(!alive(pid), "old instance {pid} exited");
    }
    drop(host);
}
