//! `examples/go-handoff`, the standard-library Go service, hands its line-echo
//! connections to the next generation as `docs/handoff.md` says: the clients
//! never see a restart, and the `generation` answer on their connection rises.
//!
//! The program is built with `go build` into the target folder; `go` is
//! Debian's `golang-go`, which `./scripts/test` installs when it is missing.

use baton_proto::{EventKind, RestartOutcome};
use baton_tests::AgentUnderTest;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, recv, sendmsg,
    setsockopt, socketpair, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `go build` of `examples/go-handoff` into the target folder, once per test
/// process; a build of its own in each process, renamed into place, so that
/// tests running at the same time never see half a binary.
pub fn go_handoff_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/go-handoff");
            let target = baton_tests::bin("baton-agent")
                .parent()
                .expect("the binaries' folder")
                .join("go-handoff");
            let building = target.with_extension(format!("{}.tmp", std::process::id()));
            let output = Command::new("go")
                .args(["build", "-o"])
                .arg(&building)
                .arg(".")
                .current_dir(&source)
                .env("CGO_ENABLED", "0")
                .env("GOFLAGS", "-mod=mod")
                .env("GOTOOLCHAIN", "local")
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `go` ({e}): run the tests with ./scripts/test, \
                         which installs Debian's golang-go when go is missing"
                    )
                });
            assert!(
                output.status.success(),
                "go build of examples/go-handoff failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::rename(&building, &target).expect("move the Go binary into place");
            target
        })
        .clone()
}

/// `go vet` and the Go program's unit tests pass.
#[test]
fn the_go_example_passes_go_vet_and_its_own_tests() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/go-handoff");
    for args in [&["vet", "./..."][..], &["test", "./..."][..]] {
        let output = Command::new("go")
            .args(args)
            .current_dir(&source)
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("go runs: ./scripts/test installs Debian's golang-go when it is missing");
        assert!(
            output.status.success(),
            "go {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// --- Clients --------------------------------------------------------------------

/// What one line-echo client saw.
#[derive(Debug, Default)]
pub struct ClientReport {
    pub lines_echoed: u64,
    /// Every answer to `generation`, in order.
    pub generations: Vec<u64>,
    /// Why the client stopped before it was told to: its connection closed, a
    /// line came back wrong, or an answer took too long.
    pub broken: Option<String>,
}

/// Line-echo clients, each on one connection for its whole life, sending a
/// line every `period`: half of it, a pause, the rest, so that a handoff
/// often finds half a line in the old generation's buffer.
pub struct EchoClients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ClientReport>>,
}

impl EchoClients {
    pub fn start(addr: SocketAddr, clients: usize, period: Duration) -> EchoClients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|client| {
                let stop = stop.clone();
                std::thread::spawn(move || echo_client(addr, client, period, &stop))
            })
            .collect();
        EchoClients { stop, threads }
    }

    pub fn stop(self) -> Vec<ClientReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|thread| thread.join().expect("a client thread"))
            .collect()
    }
}

fn echo_client(
    addr: SocketAddr,
    client: usize,
    period: Duration,
    stop: &AtomicBool,
) -> ClientReport {
    let mut report = ClientReport::default();
    let stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(e) => {
            report.broken = Some(format!("connect: {e}"));
            return report;
        }
    };
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    let mut exchange = |line: &str, report: &mut ClientReport| -> Result<String, String> {
        let (first, rest) = line.split_at(line.len() / 2);
        writer
            .write_all(first.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        std::thread::sleep(period / 4);
        writer
            .write_all(rest.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        answer.clear();
        match reader.read_line(&mut answer) {
            Ok(0) => Err(format!(
                "connection closed after {} lines",
                report.lines_echoed
            )),
            Ok(_) => Ok(answer.clone()),
            Err(e) => Err(format!("read after {} lines: {e}", report.lines_echoed)),
        }
    };
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        sequence += 1;
        let result = if sequence.is_multiple_of(5) {
            exchange("generation\n", &mut report).and_then(|answer| {
                answer
                    .trim_end()
                    .parse::<u64>()
                    .map(|generation| report.generations.push(generation))
                    .map_err(|_| format!("{answer:?} is not a generation"))
            })
        } else {
            let line = format!(
                "client {client} line {sequence} {}\n",
                "x".repeat(sequence as usize % 40)
            );
            exchange(&line, &mut report).and_then(|answer| {
                if answer == line {
                    report.lines_echoed += 1;
                    Ok(())
                } else {
                    Err(format!("sent {line:?}, got back {answer:?}"))
                }
            })
        };
        if let Err(why) = result {
            report.broken = Some(why);
            return report;
        }
        std::thread::sleep(period - period / 4);
    }
    report
}

/// Every client kept its connection, every line came back in order, and the
/// `generation` answers never fell and ended at `last`, having passed through
/// more than one generation.
pub fn assert_clients_survived(reports: &[ClientReport], first: u64, last: u64) {
    for (client, report) in reports.iter().enumerate() {
        assert_eq!(report.broken, None, "client {client}: {report:?}");
        assert!(report.lines_echoed > 20, "client {client}: {report:?}");
        assert!(
            report.generations.windows(2).all(|pair| pair[0] <= pair[1]),
            "client {client}: generations went back: {:?}",
            report.generations
        );
        assert_eq!(
            report.generations.first().copied(),
            Some(first),
            "client {client}: {:?}",
            report.generations
        );
        assert_eq!(
            report.generations.last().copied(),
            Some(last),
            "client {client}: {:?}",
            report.generations
        );
    }
}

// --- The agent's part, played by the test ------------------------------------

/// One generation of the Go service, started the way the agent starts one:
/// fd 3 the `echo` listener, `LISTEN_PID` its own pid, and a channel.
struct Generation {
    number: u64,
    child: Child,
    /// The agent's end of the generation's channel.
    channel: OwnedFd,
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("a SOCK_SEQPACKET pair")
}

/// A copy of `fd` that a child inherits.
fn inheritable(fd: impl AsFd) -> OwnedFd {
    let copy = fd.as_fd().try_clone_to_owned().expect("dup");
    nix::fcntl::fcntl(
        copy.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear FD_CLOEXEC");
    copy
}

/// Moves the two inherited fds to 3 and 4 (through fresh numbers, so that
/// neither overwrites the other) and sets LISTEN_PID to the pid the program
/// will have: bash's, which `exec` keeps.
const LAUNCH: &str = r#"
listener=$1 channel=$2; shift 2
exec {l}<&"$listener" {c}<&"$channel"
exec {listener}<&- {channel}<&-
exec 3<&"$l" 4<&"$c"
exec {l}<&- {c}<&-
export LISTEN_PID=$$
exec "$@"
"#;

fn start_generation(
    binary: &Path,
    listener: &TcpListener,
    number: u64,
    notify_socket: &Path,
) -> Generation {
    let (agent_end, generation_end) = seqpacket_pair();
    let listener_fd = inheritable(listener);
    let channel_fd = inheritable(&generation_end);
    let child = Command::new("bash")
        .arg("-c")
        .arg(LAUNCH)
        .arg("launch")
        .arg(listener_fd.as_raw_fd().to_string())
        .arg(channel_fd.as_raw_fd().to_string())
        .arg(binary)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "echo")
        .env("BATON_CHANNEL_FD", "4")
        .env("BATON_GENERATION", number.to_string())
        .env("BATON_SERVICE", "go")
        .env("BATON_DRAIN_TIMEOUT_MS", "10000")
        .env("NOTIFY_SOCKET", notify_socket)
        .spawn()
        .expect("start the Go service through bash");
    drop((listener_fd, channel_fd, generation_end));
    setsockopt(
        &agent_end,
        sockopt::ReceiveTimeout,
        &TimeVal::milliseconds(10_000),
    )
    .expect("SO_RCVTIMEO");
    Generation {
        number,
        child,
        channel: agent_end,
    }
}

fn receive(channel: &OwnedFd, flags: MsgFlags) -> Option<String> {
    let mut buffer = [0u8; 4096];
    match recv(channel.as_raw_fd(), &mut buffer, flags) {
        Ok(n) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        Err(_) => None,
    }
}

fn send_with_fd(channel: &OwnedFd, message: &str, fd: &OwnedFd) {
    let fds = [fd.as_raw_fd()];
    sendmsg::<UnixAddr>(
        channel.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .expect("send on a generation's channel");
}

/// Waits for `READY=1` on the notify socket, skipping other states, and
/// checks that `HANDOFF=1` came first on the channel.
fn wait_ready(notify: &UnixDatagram, generation: &Generation) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buffer = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "generation {} never sent READY=1",
            generation.number
        );
        if let Ok(n) = notify.recv(&mut buffer)
            && String::from_utf8_lossy(&buffer[..n])
                .lines()
                .any(|line| line == "READY=1")
        {
            break;
        }
    }
    // Sent before READY=1, so it is queued by now.
    assert_eq!(
        receive(&generation.channel, MsgFlags::MSG_DONTWAIT).as_deref(),
        Some("HANDOFF=1"),
        "generation {} declares handoff before it is ready",
        generation.number
    );
}

impl Drop for Generation {
    /// A failed test leaves no process behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(generation: &mut Generation, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = generation.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "generation {} did not exit within {within:?} of SIGTERM",
            generation.number
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(generation: &Generation) {
    kill(Pid::from_raw(generation.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
}

#[test]
fn go_connections_survive_restarts_by_handoff_with_the_agent_part_played_by_the_test() {
    let binary = go_handoff_binary();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo socket");
    let addr = listener.local_addr().unwrap();

    let mut serving = start_generation(&binary, &listener, 1, &notify_path);
    wait_ready(&notify, &serving);
    let clients = EchoClients::start(addr, 16, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));

    const RESTARTS: u64 = 5;
    for number in 2..=RESTARTS + 1 {
        let mut next = start_generation(&binary, &listener, number, &notify_path);
        wait_ready(&notify, &next);
        let (old_end, new_end) = seqpacket_pair();
        send_with_fd(
            &next.channel,
            &format!("PREDECESSOR={}", serving.number),
            &new_end,
        );
        send_with_fd(&serving.channel, &format!("SUCCESSOR={number}"), &old_end);
        drop((old_end, new_end));
        sigterm(&serving);
        let status = wait_exit(&mut serving, Duration::from_secs(5));
        assert!(status.success(), "generation {}: {status}", serving.number);
        assert_eq!(
            receive(&serving.channel, MsgFlags::empty()).as_deref(),
            Some("HANDED_OVER=16"),
            "generation {} reports every connection taken",
            serving.number
        );
        std::mem::swap(&mut serving, &mut next);
        // Let every client exchange a few lines with the new generation.
        std::thread::sleep(Duration::from_millis(300));
    }

    let reports = clients.stop();
    assert_clients_survived(&reports, 1, RESTARTS + 1);
    sigterm(&serving);
    wait_exit(&mut serving, Duration::from_secs(10));
}

/// Under the real agent, which brokers the channel: 16 clients sending a
/// line every 20 ms through 5 restarts lose nothing, and every restart hands
/// over all 16 connections.
#[test]
fn go_connections_survive_five_restarts_under_load_through_the_agent() {
    const CLIENTS: usize = 16;
    const RESTARTS: u64 = 5;
    let binary = go_handoff_binary();
    let agent = AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "go"
command = ["{binary}"]
ready_timeout = "30s"
drain_timeout = "10s"

[[service.socket]]
name = "echo"
listen = "tcp://127.0.0.1:0"
"#,
        binary = binary.display()
    ));
    let addr = agent.tcp_addr("go", "echo");
    let clients = EchoClients::start(addr, CLIENTS, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));

    for round in 1..=RESTARTS {
        let (events, report) = agent.restart("go");
        assert_eq!(
            report.outcome,
            Some(RestartOutcome::Succeeded),
            "restart {round}: {report:?}"
        );
        assert!(
            events
                .iter()
                .any(|event| matches!(event.kind, EventKind::HandoffBrokered { .. })),
            "restart {round}: no handoff_brokered in {events:?}"
        );
        let tally = report.connections.expect("the drain's tally");
        assert_eq!(
            (tally.handed_over, tally.cut),
            (CLIENTS as u32, 0),
            "restart {round}: {tally}"
        );
        // Let every client exchange a few lines with the new generation.
        std::thread::sleep(Duration::from_millis(300));
    }

    let reports = clients.stop();
    assert_clients_survived(&reports, 1, RESTARTS + 1);
    let status = agent.service("go");
    assert_eq!(status.generations.len(), 1);
    assert_eq!(status.generations[0].generation, RESTARTS + 1);
}
