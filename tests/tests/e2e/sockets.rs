//! UDP and unix sockets are handed to every generation like TCP ones.

use baton_proto::RestartOutcome;
use baton_tests::{AgentUnderTest, bin};
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn config(dir: &std::path::Path) -> String {
    format!(
        r#"
[[service]]
name = "multi"
command = ["{demo}"]

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"

[[service.socket]]
name = "dns"
listen = "udp://127.0.0.1:0"

[[service.socket]]
name = "local"
listen = "unix://{dir}/web.sock"
"#,
        demo = bin("baton-demo").display(),
        dir = dir.display()
    )
}

fn udp_echo(addr: std::net::SocketAddr, payload: &str) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(payload.as_bytes(), addr).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn unix_get(path: &std::path::Path) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn udp_and_unix_sockets_are_served_by_the_new_generation_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::start(&config(dir.path()));
    let udp = agent.tcp_addr("multi", "dns");
    let unix_path = dir.path().join("web.sock");

    assert_eq!(udp_echo(udp, "ping"), "1 ping");
    assert!(unix_get(&unix_path).contains("hello from generation 1"));

    let (_, report) = agent.restart("multi");
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
    assert_eq!(udp_echo(udp, "pong"), "2 pong");
    assert!(unix_get(&unix_path).contains("hello from generation 2"));

    // The service's fd names arrive in LISTEN_FDNAMES order.
    let pid = agent.service("multi").generations[0].pid;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == "LISTEN_FDNAMES=http:dns:local")
    );
    assert!(environ.split('\0').any(|v| v == "LISTEN_FDS=3"));
    assert!(
        environ
            .split('\0')
            .any(|v| v == format!("LISTEN_PID={pid}"))
    );
    assert!(environ.split('\0').any(|v| v == "BATON_GENERATION=2"));

    drop(agent);
    assert!(
        !unix_path.exists(),
        "the agent removes its unix socket on exit"
    );
}

fn environment_of(pid: u32) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    String::from_utf8_lossy(&environ)
        .split('\0')
        .map(str::to_owned)
        .collect()
}

#[test]
fn only_a_generation_started_by_a_hot_restart_is_told_its_predecessor() {
    let agent = AgentUnderTest::start(&baton_tests::demo_service("web", "drain_timeout = \"7s\""));
    let first = environment_of(agent.service("web").generations[0].pid);
    assert!(first.iter().any(|v| v == "BATON_DRAIN_TIMEOUT_MS=7000"));
    assert!(
        !first.iter().any(|v| v.starts_with("BATON_PREDECESSOR=")),
        "a first start has no predecessor: {first:?}"
    );

    let (_, report) = agent.restart("web");
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
    let second = environment_of(agent.service("web").generations[0].pid);
    assert!(second.iter().any(|v| v == "BATON_GENERATION=2"));
    assert!(
        second.iter().any(|v| v == "BATON_PREDECESSOR=1"),
        "{second:?}"
    );
    assert!(second.iter().any(|v| v == "BATON_DRAIN_TIMEOUT_MS=7000"));

    // A generation started after a crash replaces nobody.
    let victim = agent.service("web").generations[0].pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = agent.wait_for(
        "a generation after the crash",
        Duration::from_secs(10),
        |s| {
            s.services[0].state == baton_proto::ServiceState::Ready
                && s.services[0].generations.iter().any(|g| g.generation == 3)
        },
    );
    let third = status.services[0]
        .generations
        .iter()
        .find(|g| g.generation == 3)
        .unwrap()
        .pid;
    let third = environment_of(third);
    assert!(third.iter().any(|v| v == "BATON_GENERATION=3"), "{third:?}");
    assert!(
        !third.iter().any(|v| v.starts_with("BATON_PREDECESSOR=")),
        "{third:?}"
    );
}

#[test]
fn a_generation_gets_only_its_sockets_and_the_standard_fds() {
    let agent = AgentUnderTest::start(&baton_tests::demo_service("web", ""));
    let pid = agent.service("web").generations[0].pid;
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    fds.sort();
    // 0-2, the socket at 3; anything past that is its channel (fd 4, whose
    // other end is the agent's), the spare read ends of its own stdout and
    // stderr pipes (docs/logs.md) or the demo's own (epoll, its accepted or
    // notify sockets), never one of the agent's: check each.
    assert_eq!(&fds[..4], &[0, 1, 2, 3]);
    let agent_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with("socket:") || p.starts_with("pipe:"))
        .collect();
    let listener = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    let own_output: Vec<String> = [1, 2]
        .iter()
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        own_output.iter().all(|t| t.starts_with("pipe:")),
        "{own_output:?}"
    );
    for fd in &fds[4..] {
        if let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            let target = target.to_string_lossy().into_owned();
            assert!(
                target == listener.to_string_lossy()
                    || own_output.contains(&target)
                    || !agent_fds.contains(&target),
                "fd {fd} ({target}) leaked from the agent"
            );
        }
    }
}

const FDSTORE_SERVICE: &str = r#"
import os, signal, socket
names = os.environ.get("LISTEN_FDNAMES", "").split(":")
generation = os.environ["BATON_GENERATION"]
address = os.environ["NOTIFY_SOCKET"]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.connect(address)
if "state" in names:
    fd = 3 + names.index("state")
    with open(os.environ["OUT"], "w") as out:
        out.write(os.pread(fd, 100, 0).decode() + " read by generation " + generation)
else:
    fd = os.memfd_create("state")
    os.write(fd, b"written by generation " + generation.encode())
    socket.send_fds(notify, [b"FDSTORE=1\nFDNAME=state"], [fd])
notify.send(b"READY=1")
signal.sigwait({signal.SIGTERM})
"#;

#[test]
fn fds_kept_with_fdstore_reach_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let agent = AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "stateful"
command = ["python3", "-c", '''{FDSTORE_SERVICE}''']
env = {{ OUT = "{out}" }}

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        out = out.display()
    ));
    let (_, report) = agent.restart("stateful");
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "written by generation 1 read by generation 2"
    );
    let pid = agent.service("stateful").generations[0].pid;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == "LISTEN_FDNAMES=http:state")
    );
}
