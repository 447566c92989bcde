//! The real `baton-demo` binary in real processes: socket activation, readiness,
//! modes, and a hand-made hot restart on one inherited socket under load.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PATIENCE: Duration = Duration::from_secs(10);

fn demo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton-demo"));
    command
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS");
    command
}

/// Runs the demo with `fds` inherited as 3 and 4. `sh` moves them there from
/// stdin and stdout (std offers no safe way to place an fd at a chosen
/// number), and `exec` keeps the pid, so `LISTEN_PID=$$` is the demo's pid.
fn activated(fds: Vec<OwnedFd>, names: &str, listen_pid: Option<&str>) -> Command {
    assert!(!fds.is_empty() && fds.len() <= 2);
    let count = fds.len();
    let mut fds = fds.into_iter();
    let mut command = Command::new("sh");
    let listen_pid = listen_pid.unwrap_or("$$");
    let move_fds = if count == 2 { "3<&0 4>&1" } else { "3<&0" };
    command
        .arg("-c")
        .arg(format!(
            "exec {move_fds} </dev/null >/dev/null; \
             export LISTEN_PID={listen_pid} LISTEN_FDS={count} LISTEN_FDNAMES={names}; \
             exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_baton-demo"))
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::from(fds.next().unwrap()));
    if let Some(fd) = fds.next() {
        command.stdout(Stdio::from(fd));
    }
    command
}

/// Kills the child if a test fails before it exits.
struct Running(Child);

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pid {} did not exit within {within:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads `listening on ADDR` lines printed by `--print-addr`.
    fn printed_address(&mut self) -> SocketAddr {
        let stdout = self.0.stdout.as_mut().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent's side of `NOTIFY_SOCKET`.
struct Supervisor {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    _directory: tempfile::TempDir,
}

impl Supervisor {
    fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        Supervisor {
            socket,
            path,
            _directory: directory,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn next_message(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buffer = [0u8; 512];
        let length = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..length]).into_owned())
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

fn get<S: Read + Write>(stream: &mut S, path: &str) -> Response {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    read_response(stream)
}

fn read_response<S: Read>(stream: &mut S) -> Response {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head: {bytes:?}"
        );
        bytes.push(byte[0]);
    }
    let head = String::from_utf8(bytes).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    Response {
        status: head[9..12].parse().unwrap(),
        head,
        body: String::from_utf8(body).unwrap(),
    }
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

#[test]
fn bind_mode_serves_then_drains_a_long_request_and_exits_zero() {
    let supervisor = Supervisor::new();
    let mut child = Running(
        demo()
            .args(["--bind", "127.0.0.1:0", "--print-addr"])
            .env("NOTIFY_SOCKET", supervisor.path())
            .env("BATON_GENERATION", "5")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let address = child.printed_address();
    assert_eq!(
        supervisor.next_message(PATIENCE).as_deref(),
        Some("READY=1\nSTATUS=serving, generation 5\n")
    );
    let mut stream = connect(address);
    let hello = get(&mut stream, "/");
    assert_eq!(hello.status, 200);
    assert_eq!(
        hello.body,
        format!("hello from generation 5 pid {}\n", child.pid())
    );
    assert!(
        hello.head.contains("X-Baton-Generation: 5\r\n"),
        "{}",
        hello.head
    );
    assert!(
        hello
            .head
            .contains(&format!("X-Baton-Pid: {}\r\n", child.pid()))
    );
    assert_eq!(get(&mut stream, "/healthz").body, "ok\n");
    assert_eq!(get(&mut stream, "/missing").status, 404);

    write!(stream, "GET /sleep?ms=500 HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    child.signal(Signal::SIGTERM);
    assert_eq!(
        supervisor.next_message(PATIENCE).as_deref(),
        Some("STOPPING=1\nSTATUS=draining, generation 5\n")
    );
    let slept = read_response(&mut stream);
    assert_eq!(slept.status, 200);
    assert!(
        slept.head.contains("Connection: close\r\n"),
        "{}",
        slept.head
    );
    assert!(child.wait_exit(PATIENCE).success());
}

/// The heart of baton, without the agent: the test holds the socket (as the
/// agent would), generation 2 starts on the same socket, generation 1 drains,
/// and a strict client sees no failure at all.
#[test]
fn a_hot_restart_on_one_inherited_socket_loses_no_request() {
    let supervisor = Supervisor::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let unix_path = directory.path().join("web.sock");
    let unix_listener = UnixListener::bind(&unix_path).unwrap();

    let start = |generation: &str, unix: Option<&UnixListener>| {
        let mut fds = vec![OwnedFd::from(listener.try_clone().unwrap())];
        let mut names = "web".to_owned();
        if let Some(unix) = unix {
            fds.push(OwnedFd::from(unix.try_clone().unwrap()));
            names.push_str(":local");
        }
        let child = Running(
            activated(fds, &names, None)
                .env("NOTIFY_SOCKET", supervisor.path())
                .env("BATON_GENERATION", generation)
                .args(["--drain-idle-grace", "300ms"])
                .spawn()
                .unwrap(),
        );
        let ready = supervisor.next_message(PATIENCE);
        assert_eq!(
            ready,
            Some(format!(
                "READY=1\nSTATUS=serving, generation {generation}\n"
            ))
        );
        child
    };

    let mut first = start("1", Some(&unix_listener));
    let mut over_unix = std::os::unix::net::UnixStream::connect(&unix_path).unwrap();
    over_unix.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(
        get(&mut over_unix, "/").body,
        format!("hello from generation 1 pid {}\n", first.pid())
    );
    drop(over_unix);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop_load, load_stopped) = tokio::sync::oneshot::channel::<()>();
    let config = baton_loadgen::LoadConfig {
        connections: 4,
        expect_body_prefix: Some("hello from generation ".to_owned()),
        ..baton_loadgen::LoadConfig::new(baton_loadgen::Target::Tcp(address))
    };
    let load = runtime.spawn(baton_loadgen::run(config, async {
        let _ = load_stopped.await;
    }));
    std::thread::sleep(Duration::from_millis(300));

    let mut second = start("2", None);
    first.signal(Signal::SIGTERM);
    assert_eq!(
        supervisor.next_message(PATIENCE).as_deref(),
        Some("STOPPING=1\nSTATUS=draining, generation 1\n")
    );
    assert!(first.wait_exit(PATIENCE).success());
    std::thread::sleep(Duration::from_millis(300));
    stop_load.send(()).unwrap();
    let report = runtime.block_on(load).unwrap();

    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.generations_seen.iter().collect::<Vec<_>>(),
        ["1", "2"],
        "{report}"
    );
    assert!(
        report.reconnects >= 4,
        "every connection moved to generation 2: {report}"
    );
    // The socket outlived generation 1: a fresh connection reaches generation 2.
    assert!(
        get(&mut connect(address), "/")
            .body
            .starts_with("hello from generation 2")
    );
    second.signal(Signal::SIGTERM);
    assert!(second.wait_exit(PATIENCE).success());
}

#[test]
fn fds_meant_for_another_pid_are_ignored() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Running(
        activated(vec![OwnedFd::from(listener)], "web", Some("1"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(child.wait_exit(PATIENCE).code(), Some(2));
}

#[test]
fn without_sockets_it_exits_2() {
    let output = demo().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--bind"));
}

#[test]
fn an_inherited_udp_socket_echoes_with_the_generation() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let supervisor = Supervisor::new();
    let mut child = Running(
        activated(vec![OwnedFd::from(socket)], "echo", None)
            .env("NOTIFY_SOCKET", supervisor.path())
            .env("BATON_GENERATION", "9")
            .spawn()
            .unwrap(),
    );
    assert!(
        supervisor
            .next_message(PATIENCE)
            .unwrap()
            .starts_with("READY=1")
    );
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    client.send_to(b"ping", address).unwrap();
    let mut buffer = [0u8; 64];
    let length = client.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..length], b"9 ping");
    child.signal(Signal::SIGTERM);
    assert!(child.wait_exit(PATIENCE).success());
}

#[test]
fn the_mode_file_changes_what_the_next_generation_does() {
    let directory = tempfile::tempdir().unwrap();
    let mode_file = directory.path().join("mode");
    let supervisor = Supervisor::new();
    let spawn = || {
        Running(
            demo()
                .args(["--bind", "127.0.0.1:0", "--print-addr", "--mode-file"])
                .arg(&mode_file)
                .env("NOTIFY_SOCKET", supervisor.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };

    std::fs::write(&mode_file, "crash\n").unwrap();
    let mut crashing = spawn();
    assert_eq!(crashing.wait_exit(PATIENCE).code(), Some(1));
    assert_eq!(supervisor.next_message(Duration::from_millis(100)), None);

    std::fs::write(&mode_file, "never-ready").unwrap();
    let mut unready = spawn();
    let address = unready.printed_address();
    assert_eq!(get(&mut connect(address), "/healthz").status, 200);
    assert_eq!(
        supervisor.next_message(Duration::from_millis(300)),
        None,
        "never READY"
    );
    unready.signal(Signal::SIGTERM);
    assert!(unready.wait_exit(PATIENCE).success());
    assert!(
        supervisor
            .next_message(PATIENCE)
            .unwrap()
            .starts_with("STOPPING=1")
    );

    std::fs::write(&mode_file, "ignore-sigterm").unwrap();
    let mut stubborn = spawn();
    let address = stubborn.printed_address();
    assert!(
        supervisor
            .next_message(PATIENCE)
            .unwrap()
            .starts_with("READY=1")
    );
    let mut stream = connect(address);
    assert_eq!(get(&mut stream, "/").status, 200);
    stubborn.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let still = get(&mut stream, "/");
    assert!(!still.head.contains("Connection: close"), "{}", still.head);
    assert!(
        stubborn.0.try_wait().unwrap().is_none(),
        "SIGTERM was ignored"
    );
    assert_eq!(
        supervisor.next_message(Duration::from_millis(100)),
        None,
        "no STOPPING=1"
    );
}

/// Reads utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux this runs on.
    ticks as f64 / 100.0
}

#[test]
fn warm_up_burns_cpu_before_ready() {
    let supervisor = Supervisor::new();
    let started = Instant::now();
    let child = Running(
        demo()
            .args(["--bind", "127.0.0.1:0", "--warmup", "400ms"])
            .env("NOTIFY_SOCKET", supervisor.path())
            .spawn()
            .unwrap(),
    );
    assert!(
        supervisor
            .next_message(PATIENCE)
            .unwrap()
            .starts_with("READY=1")
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    let cpu = cpu_seconds(child.pid());
    assert!(cpu >= 0.2, "the warm-up must be CPU-bound, used {cpu} s");
}
