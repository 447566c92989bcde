//! A service that daemonizes the way many do: the process the agent started
//! forks the real server, names it with `MAINPID=`, waits on `BARRIER=1`
//! until the agent has taken note, and exits. The generation lives on as its
//! main process, is drained and replaced by restarts, and its main process
//! dying is a crash.

use baton_proto::{EventKind, RestartOutcome};
use baton_tests::{AgentUnderTest, bin, restarts_under_load};
use std::sync::Arc;
use std::time::Duration;

/// Forks; the child execs the demo on the inherited sockets (with its own
/// pid in LISTEN_PID), the parent names it and leaves.
const WRAPPER: &str = r#"
import array, os, select, socket, sys

child = os.fork()
if child == 0:
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(sys.argv[1], sys.argv[1:])

notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.connect(os.environ["NOTIFY_SOCKET"])
notify.send(("MAINPID=%d" % child).encode())
# sd_notify_barrier: the agent closes the fd once it has acted on MAINPID.
read_end, write_end = os.pipe()
notify.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]))])
os.close(write_end)
ready, _, _ = select.select([read_end], [], [], 10)
sys.exit(0 if ready and os.read(read_end, 1) == b"" else 3)
"#;

fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_hands_off_to_a_forked_main_process_is_restarted_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("daemonize.py");
    std::fs::write(&wrapper, WRAPPER).unwrap();
    let agent = Arc::new(AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "web"
command = ["python3", "{wrapper}", "{demo}", "--drain-idle-grace", "300ms"]
ready_timeout = "20s"
drain_timeout = "10s"
restart_on_crash = true

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        wrapper = wrapper.display(),
        demo = bin("baton-demo").display()
    )));

    let first = agent.service("web").generations[0].clone();
    let main = first.main_pid.expect("MAINPID was taken");
    assert_ne!(main, first.pid);
    // The wrapper got past its barrier and left; the generation stays up.
    agent.wait_for("the wrapper to exit", Duration::from_secs(10), |_| {
        !pid_exists(first.pid)
    });
    assert!(pid_exists(main));
    let events = agent.client().events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::GenerationExited { .. })),
        "the wrapper's exit was taken for the generation's: {events:?}"
    );

    let addr = agent.tcp_addr("web", "http");
    let (reports, report) = restarts_under_load(&agent, "web", addr, 16, 3, Duration::ZERO).await;
    for restart in &reports {
        assert_eq!(
            restart.outcome,
            Some(RestartOutcome::Succeeded),
            "{restart:?}"
        );
    }
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 100, "{report}");
    // The old main process was drained away with its generation.
    assert!(
        !pid_exists(main),
        "the first main process outlived its generation"
    );

    // Killing the main process is the generation dying, not a detail.
    let serving = agent.service("web").generations[0].clone();
    let victim = serving.main_pid.expect("the new generation handed off too");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    agent.wait_for(
        "a replacement after the crash",
        Duration::from_secs(20),
        |status| {
            let web = &status.services[0];
            web.generations.len() == 1
                && web.generations[0].generation > serving.generation
                && web.generations[0].state == baton_proto::GenerationState::Ready
        },
    );
}
