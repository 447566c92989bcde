//! The handoff between two processes: this test (the old generation, and
//! the agent) hands a connection to a child started as the agent starts a
//! generation, its channel at fd 3 named by `BATON_CHANNEL_FD`.
//!
//! The child is this test binary again, running only the `child_*` test
//! with `BATON_SDK_TEST_CHILD` set; without it that test does nothing.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_sdk::handoff::{Channel, Handoff, seqpacket_pair};
use baton_sdk::shutdown::Shutdown;
use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD: &str = "BATON_SDK_TEST_CHILD";

fn send_with_fd(agent: &OwnedFd, text: &str, fd: &OwnedFd) {
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        agent.as_raw_fd(),
        &[std::io::IoSlice::new(text.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .unwrap();
}

fn next_text(agent: &OwnedFd, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(length @ 1..) = recv(agent.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
            return Some(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// This binary running `child_serves_what_its_predecessor_hands_over`, with
/// `channel` at fd 3 (`sh` moves it there from stdin) and its output in
/// `output`.
fn child(channel: OwnedFd, output: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("exec 3<&0 </dev/null >\"$OUTPUT\" 2>&1; BATON_CHANNEL_FD=3 exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([
            "child_serves_what_its_predecessor_hands_over",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("OUTPUT", output)
        .stdin(Stdio::from(channel));
    command
}

#[tokio::test]
async fn a_connection_moves_to_another_process_with_the_bytes_read_from_it() {
    let directory = tempfile::tempdir().unwrap();
    let output = directory.path().join("output");
    let (agent_child, child_channel) = seqpacket_pair().unwrap();
    let mut running = child(child_channel, &output).spawn().unwrap();
    assert_eq!(
        next_text(&agent_child, Duration::from_secs(10)).as_deref(),
        Some("HANDOFF=1\n"),
        "{}",
        std::fs::read_to_string(&output).unwrap_or_default()
    );

    let (agent_old, old_channel) = seqpacket_pair().unwrap();
    let old = Shutdown::builder()
        .signal(None)
        .drain_timeout(Duration::from_secs(6))
        .channel(Some(Channel::from_fd(old_channel).unwrap()))
        .build()
        .unwrap();
    let handle = old.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let open = handle.connection();

    let (old_end, new_end) = seqpacket_pair().unwrap();
    send_with_fd(&agent_child, "PREDECESSOR=1\n", &new_end);
    send_with_fd(&agent_old, "SUCCESSOR=2\n", &old_end);
    drop((old_end, new_end));
    handle.trigger();
    let exit = tokio::spawn(old.run());
    handle
        .hand_over("echo", server, b"read before ", b"")
        .await
        .expect("the child takes it");
    drop(open);
    assert_eq!(exit.await.unwrap().handed_over, 1);
    assert_eq!(
        next_text(&agent_old, Duration::from_secs(2)).as_deref(),
        Some("HANDED_OVER=1\n")
    );

    client.write_all(b"the restart\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("the child answers and closes")
        .unwrap();
    assert_eq!(answer, b"child got: read before the restart\n");
    let status = running.wait().unwrap();
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(status.success(), "{status}:\n{printed}");
    assert!(printed.contains("1 passed"), "{printed}");
}

#[test]
fn child_serves_what_its_predecessor_hands_over() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let channel = Channel::from_env()
        .unwrap()
        .expect("BATON_CHANNEL_FD names the channel");
    // Taken once: a second call gives the same channel, not a second owner.
    assert!(Channel::from_env().unwrap().is_some());
    // Close-on-exec: a process the generation starts does not inherit it.
    let info = std::fs::read_to_string("/proc/self/fdinfo/3").unwrap();
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .unwrap();
    let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
    assert_ne!(flags & 0o2000000, 0, "the channel is not close-on-exec");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut incomings = Handoff::new().accept(&channel).unwrap();
        let mut incoming = tokio::time::timeout(Duration::from_secs(10), incomings.recv())
            .await
            .expect("a connection in time")
            .unwrap();
        assert_eq!(incoming.name, "echo");
        let mut line = incoming.buffer.clone();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            assert_eq!(incoming.stream.read(&mut byte).await.unwrap(), 1);
            line.push(byte[0]);
        }
        let mut answer = b"child got: ".to_vec();
        answer.extend_from_slice(&line);
        incoming.stream.write_all(&answer).await.unwrap();
    });
}
