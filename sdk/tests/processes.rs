//! The crate in real processes: sockets placed at fds 3.. across an exec, as
//! the agent passes them, and a graceful exit started by a real SIGTERM.
//!
//! Each test runs this test binary again as its child, asking for one
//! `child_*` test with `BATON_SDK_TEST_CHILD` set; without it those tests do
//! nothing.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};

use baton_sdk::sockets::{Error, Listeners, Source};

const CHILD: &str = "BATON_SDK_TEST_CHILD";

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// This binary, running only the test `name`.
fn child(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET");
    command
}

/// Runs the child test `name` with `fds` at 3, 4 and 5. `sh` moves them
/// there from stdin, stdout and stderr (std has no safe way to place an fd
/// at a chosen number), sends the child's own output to `output`, and
/// `exec` keeps the pid, so `LISTEN_PID=$$` is the child's.
fn run_activated(
    name: &str,
    fds: Vec<OwnedFd>,
    names: &str,
    listen_pid: &str,
    output: &Path,
) -> Command {
    let count = fds.len();
    let moves = ["3<&0", "4>&1", "5>&2"][..count].join(" ");
    let this = child(name);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "exec {moves} </dev/null >\"$OUTPUT\" 2>&1; \
             export LISTEN_PID={listen_pid} LISTEN_FDS={count} LISTEN_FDNAMES={names}; \
             exec \"$0\" \"$@\""
        ))
        .arg(this.get_program())
        .args(this.get_args())
        .env(CHILD, "1")
        .env("OUTPUT", output);
    let mut fds = fds.into_iter();
    command.stdin(Stdio::from(fds.next().unwrap()));
    if let Some(fd) = fds.next() {
        command.stdout(Stdio::from(fd));
    }
    if let Some(fd) = fds.next() {
        command.stderr(Stdio::from(fd));
    }
    command
}

fn assert_child_passed(mut command: Command, output: &Path) {
    let status = command.status().unwrap();
    let printed = std::fs::read_to_string(output).unwrap_or_default();
    assert!(status.success(), "{status}:\n{printed}");
    assert!(printed.contains("1 passed"), "{printed}");
}

#[test]
fn sockets_passed_at_exec_are_taken_by_name_and_checked_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let unix_path = dir.path().join("local.sock");
    let unix = UnixListener::bind(&unix_path).unwrap();
    let output = dir.path().join("output");
    let mut command = run_activated(
        "child_takes_its_sockets",
        vec![tcp.into(), udp.into(), unix.into()],
        "http:dns:local",
        "$$",
        &output,
    );
    command.env("EXPECT_UNIX", &unix_path);
    assert_child_passed(command, &output);
}

#[test]
fn child_takes_its_sockets() {
    if !is_child() {
        return;
    }
    let mut listeners = Listeners::from_env().unwrap();
    assert_eq!(listeners.source(), &Source::Inherited);
    let inherited: Vec<String> = listeners
        .inherited()
        .map(|(name, kind)| format!("{name}: {kind}"))
        .collect();
    assert_eq!(
        inherited,
        [
            "http: TCP listener",
            "dns: UDP socket",
            "local: unix stream listener"
        ]
    );
    // The variables are gone, so a child of ours takes nothing.
    assert!(std::env::var_os("LISTEN_FDS").is_none());
    assert!(std::env::var_os("LISTEN_PID").is_none());

    let error = listeners.udp("http").unwrap_err();
    assert!(matches!(&error, Error::WrongKind { fd: 3, .. }), "{error}");
    let http = listeners.tcp("http").unwrap();
    let dns = listeners.udp("dns").unwrap();
    let local = listeners.unix("local").unwrap();
    assert!(matches!(listeners.tcp("admin"), Err(Error::Missing { .. })));

    // Each is close-on-exec: a process we start does not inherit it.
    for fd in 3..=5 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .unwrap();
        let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
        assert_ne!(flags & 0o2000000, 0, "fd {fd} is not close-on-exec");
    }

    std::net::TcpStream::connect(http.local_addr().unwrap()).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"ping", dns.local_addr().unwrap()).unwrap();
    let mut buffer = [0u8; 8];
    assert_eq!(dns.recv(&mut buffer).unwrap(), 4);
    let path = std::env::var("EXPECT_UNIX").unwrap();
    assert_eq!(
        local.local_addr().unwrap().as_pathname(),
        Some(Path::new(&path))
    );
}

#[test]
fn sockets_meant_for_another_process_are_left_and_the_fallback_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let output = dir.path().join("output");
    let command = run_activated(
        "child_binds_its_fallback",
        vec![tcp.into()],
        "http",
        "1",
        &output,
    );
    assert_child_passed(command, &output);
}

#[test]
fn child_binds_its_fallback() {
    if !is_child() {
        return;
    }
    let mut listeners = Listeners::from_env()
        .unwrap()
        .or_bind("http", "127.0.0.1:0");
    assert_eq!(
        listeners.source(),
        &Source::MeantForAnother {
            listen_pid: Some("1".to_owned())
        }
    );
    let http = listeners.tcp("http").unwrap();
    // A socket of its own, not fd 3.
    assert_ne!(
        std::os::fd::AsRawFd::as_raw_fd(&http),
        3,
        "the fallback is bound anew"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn a_real_sigterm_runs_the_graceful_exit_and_main_returns() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let supervisor = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    supervisor
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut process = child("child_drains_on_sigterm")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("BATON_DRAIN_TIMEOUT_MS", "10000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead as _;
    let mut lines = std::io::BufReader::new(process.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push(line.clone());
        // libtest prints the test's name on the same line.
        if line.ends_with("waiting for SIGTERM") {
            break;
        }
    }
    assert!(
        printed
            .last()
            .is_some_and(|line| line.ends_with("waiting for SIGTERM")),
        "{printed:#?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(process.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = process.wait().unwrap();
    printed.extend(lines.map(Result::unwrap));
    assert!(status.success(), "{status}: {printed:#?}");
    assert!(
        printed
            .iter()
            .any(|line| line == "drained: in flight 0, connections 0, hook ran"),
        "{printed:#?}"
    );
    let mut buffer = [0u8; 64];
    let length = supervisor.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..length], b"STOPPING=1\n");
}

#[cfg(feature = "tokio")]
#[test]
fn child_drains_on_sigterm() {
    if !is_child() {
        return;
    }
    use std::time::Duration;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut shutdown = baton_sdk::shutdown::Shutdown::from_env().unwrap();
        assert_eq!(shutdown.drain_timeout(), Duration::from_secs(10));
        let handle = shutdown.handle();
        let connection = handle.connection();
        let request = connection.in_flight();
        let worker = handle.clone();
        tokio::spawn(async move {
            worker.draining().await;
            // Work under way finishes after the signal.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(request);
            worker.closing_idle().await;
            drop(connection);
        });
        let (hook_ran, ran) = tokio::sync::oneshot::channel();
        shutdown.at_exit("note", Duration::from_secs(1), async move {
            let _ = hook_ran.send(());
        });
        println!("waiting for SIGTERM");
        let report = shutdown.run().await;
        assert!(!report.timed_out);
        ran.await.unwrap();
        println!(
            "drained: in flight {}, connections {}, hook ran",
            report.in_flight_left, report.connections_left
        );
    });
}
