//! Two real `baton-demo` processes hand their HTTP keep-alive, line-echo
//! and WebSocket connections over, the test playing the agent: it holds the
//! listeners, gives each generation its channel (`BATON_CHANNEL_FD`), and
//! brokers the pair once the new one is ready.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
use nix::unistd::Pid;

const PATIENCE: Duration = Duration::from_secs(10);

/// A demo generation with fds 3 (`http`), 4 (`echo`) and its channel at 5,
/// moved there by `sh` from stdin, stdout and stderr; its log in `log`.
fn generation(
    number: u32,
    http: &TcpListener,
    echo: &TcpListener,
    channel: OwnedFd,
    notify: &Path,
    log: &Path,
    extra: &[&str],
) -> Running {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(
            "exec 3<&0 4>&1 5>&2 </dev/null >/dev/null 2>\"$LOG\"; \
             export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=http:echo BATON_CHANNEL_FD=5; \
             exec \"$0\" \"$@\"",
        )
        .arg(env!("CARGO_BIN_EXE_baton-demo"))
        .args(["--drain-idle-grace", "300ms"])
        .args(extra)
        .env("LOG", log)
        .env("RUST_LOG", "debug")
        .env("NOTIFY_SOCKET", notify)
        .env("BATON_GENERATION", number.to_string())
        .env("BATON_DRAIN_TIMEOUT_MS", "10000")
        .stdin(Stdio::from(OwnedFd::from(http.try_clone().unwrap())))
        .stdout(Stdio::from(OwnedFd::from(echo.try_clone().unwrap())))
        .stderr(Stdio::from(channel));
    if number > 1 {
        command.env("BATON_PREDECESSOR", (number - 1).to_string());
    }
    Running {
        child: command.spawn().unwrap(),
        log: log.to_owned(),
    }
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's end of a generation's channel.
struct AgentEnd(OwnedFd);

impl AgentEnd {
    fn next(&self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(length @ 1..) = recv(self.0.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT)
            {
                return Some(String::from_utf8_lossy(&buffer[..length]).into_owned());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn send_with_fd(&self, text: &str, fd: &OwnedFd) {
        let fds = [fd.as_fd().as_raw_fd()];
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &[std::io::IoSlice::new(text.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .unwrap();
    }
}

fn notify_socket(directory: &Path) -> std::os::unix::net::UnixDatagram {
    std::os::unix::net::UnixDatagram::bind(directory.join("notify.sock")).unwrap()
}

fn wait_ready(notify: &std::os::unix::net::UnixDatagram, generation: u32) {
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buffer = [0u8; 512];
    loop {
        let length = notify.recv(&mut buffer).expect("READY=1 in time");
        let text = String::from_utf8_lossy(&buffer[..length]);
        if text.starts_with("READY=1") && text.contains(&format!("generation {generation}")) {
            return;
        }
    }
}

fn connect(listener: &TcpListener) -> TcpStream {
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A response's head and body.
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |length| length.parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn read_text_frame(stream: &mut TcpStream) -> String {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 0x81, "a final text frame");
    let mut payload = vec![0; usize::from(header[1] & 0x7f)];
    stream.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

fn websocket(listener: &TcpListener) -> TcpStream {
    let mut stream = connect(listener);
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let (head, _) = read_response(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    stream
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    baton_sdk::handoff::seqpacket_pair().unwrap()
}

#[test]
fn http_echo_and_websocket_connections_move_to_the_next_generation_with_their_buffers() {
    let directory = tempfile::tempdir().unwrap();
    let notify = notify_socket(directory.path());
    let notify_path = directory.path().join("notify.sock");
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();

    let (agent_one, channel_one) = seqpacket_pair();
    let agent_one = AgentEnd(agent_one);
    let mut first = generation(
        1,
        &http,
        &echo,
        channel_one,
        &notify_path,
        &directory.path().join("one.log"),
        &[],
    );
    assert_eq!(agent_one.next(PATIENCE).as_deref(), Some("HANDOFF=1\n"));
    wait_ready(&notify, 1);

    let mut keep_alive = connect(&http);
    keep_alive
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut keep_alive);
    assert!(head.contains("X-Baton-Generation: 1\r\n"), "{head}");
    let mut line = connect(&echo);
    let mut lines = BufReader::new(line.try_clone().unwrap());
    line.write_all(b"generation\nhello\n").unwrap();
    let mut answer = String::new();
    lines.read_line(&mut answer).unwrap();
    lines.read_line(&mut answer).unwrap();
    assert_eq!(answer, "1\nhello\n");
    let mut ws = websocket(&http);
    ws.write_all(&masked_text(b"generation")).unwrap();
    assert_eq!(read_text_frame(&mut ws), "1");

    // Half a request, half a line and half a frame are on their way during
    // the restart.
    keep_alive.write_all(b"GET /healthz HT").unwrap();
    line.write_all(b"half a ").unwrap();
    let split_frame = masked_text(b"split across generations");
    ws.write_all(&split_frame[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let (agent_two, channel_two) = seqpacket_pair();
    let agent_two = AgentEnd(agent_two);
    let mut second = generation(
        2,
        &http,
        &echo,
        channel_two,
        &notify_path,
        &directory.path().join("two.log"),
        &[],
    );
    assert_eq!(agent_two.next(PATIENCE).as_deref(), Some("HANDOFF=1\n"));
    wait_ready(&notify, 2);
    let (old_end, new_end) = seqpacket_pair();
    agent_two.send_with_fd("PREDECESSOR=1\n", &new_end);
    agent_one.send_with_fd("SUCCESSOR=2\n", &old_end);
    drop((old_end, new_end));
    first.signal(Signal::SIGTERM);
    assert_eq!(
        agent_one.next(PATIENCE).as_deref(),
        Some("HANDED_OVER=3\n"),
        "{}\n---\n{}",
        first.log(),
        second.log()
    );
    assert!(first.wait_exit(PATIENCE).success(), "{}", first.log());

    // Generation 1 is gone; every connection goes on, from where it was.
    keep_alive
        .write_all(b"TP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut keep_alive);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "ok\n");
    assert!(head.contains("X-Baton-Generation: 2\r\n"), "{head}");
    line.write_all(b"line\ngeneration\n").unwrap();
    let mut answer = String::new();
    lines.read_line(&mut answer).unwrap();
    lines.read_line(&mut answer).unwrap();
    assert_eq!(answer, "half a line\n2\n");
    ws.write_all(&split_frame[5..]).unwrap();
    assert_eq!(read_text_frame(&mut ws), "split across generations");
    ws.write_all(&masked_text(b"generation")).unwrap();
    assert_eq!(read_text_frame(&mut ws), "2");
    ws.write_all(&masked_text(b"still here")).unwrap();
    assert_eq!(read_text_frame(&mut ws), "still here");

    second.signal(Signal::SIGTERM);
    drop((keep_alive, line, lines, ws));
    assert!(second.wait_exit(PATIENCE).success(), "{}", second.log());
}

#[test]
fn with_no_handoff_the_old_generation_drains_and_long_lived_connections_close() {
    let directory = tempfile::tempdir().unwrap();
    let notify = notify_socket(directory.path());
    let notify_path = directory.path().join("notify.sock");
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let (agent_one, channel_one) = seqpacket_pair();
    let agent_one = AgentEnd(agent_one);
    let mut first = generation(
        1,
        &http,
        &echo,
        channel_one,
        &notify_path,
        &directory.path().join("one.log"),
        &["--no-handoff"],
    );
    wait_ready(&notify, 1);
    assert_eq!(
        agent_one.next(Duration::from_millis(300)),
        None,
        "no HANDOFF=1"
    );
    let mut line = connect(&echo);
    line.write_all(b"a\n").unwrap();
    let mut answer = [0u8; 2];
    line.read_exact(&mut answer).unwrap();
    let mut ws = websocket(&http);
    first.signal(Signal::SIGTERM);
    let mut rest = Vec::new();
    line.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the echo connection is closed");
    let mut close = [0u8; 4];
    ws.read_exact(&mut close).unwrap();
    assert_eq!(close, [0x88, 2, 0x03, 0xe9], "1001, going away");
    assert!(first.wait_exit(PATIENCE).success(), "{}", first.log());
}
