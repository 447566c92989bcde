//! The agent's `NOTIFY_SOCKET`: the sd_notify protocol spoken by managed services.
//!
//! One datagram socket serves every generation of every service. Readiness must come
//! from the right generation, so every datagram is read together with the kernel's
//! account of who sent it (`SO_PASSCRED`); the text of a datagram is never trusted to
//! say who its sender is.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// Largest datagram accepted. systemd itself caps notify messages far lower; anything
/// bigger is reported as truncated rather than acted on.
pub const MAX_DATAGRAM_BYTES: usize = 64 * 1024;

/// Most fds accepted with one datagram. The kernel closes the surplus of a bigger
/// batch and flags the message `MSG_CTRUNC`, which makes the whole datagram ignored.
pub const MAX_FDS_PER_DATAGRAM: usize = 16;

const CONTROL_BYTES: usize =
    rustix::cmsg_space!(ScmRights(MAX_FDS_PER_DATAGRAM), ScmCredentials(1));

/// The longest `STATUS=` kept, as a status line: a longer one is cut (on a
/// character boundary). Every status is stored and shown, so its size is the
/// agent's memory.
pub const MAX_STATUS_BYTES: usize = 256;

/// The longest `X_BATON_RESTART_REASON=` kept: a longer one is cut, as a
/// status is. It ends up in the restart's report and in the server's history.
pub const MAX_RESTART_REASON_BYTES: usize = 256;

/// The longest `FDNAME=` systemd accepts, because names end up joined in `LISTEN_FDNAMES`.
const MAX_FD_NAME_BYTES: usize = 255;

/// The agent's notify socket, registered with the tokio reactor of the runtime that bound it.
///
/// Dropping it closes the socket but leaves the file in place: a successor agent that
/// inherited the socket keeps using the same path.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// One datagram as received: who sent it, what it said, and the fds that came with it.
#[derive(Debug)]
pub struct NotifyDatagram {
    /// The sender's pid at send time, translated into the agent's pid namespace (it
    /// stays valid after the sender exits, until the pid is reused). 0 when the kernel
    /// gave no credentials or the sender's pid has no number in the agent's namespace.
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The datagram's text, with invalid UTF-8 replaced; empty when `truncated`.
    pub text: String,
    /// The parsed assignments, in the order they were sent; empty when `truncated`.
    pub messages: Vec<NotifyMessage>,
    /// fds sent with `SCM_RIGHTS`, already close-on-exec; empty when `truncated`.
    pub fds: Vec<OwnedFd>,
    /// The text or the ancillary data did not fit (`MSG_TRUNC`/`MSG_CTRUNC`). Nothing
    /// of the datagram is parsed or kept, so a cut-off `READY=1` or a partial set of
    /// fds is never acted on; only the credentials are filled in, for logging.
    pub truncated: bool,
}

/// One assignment of the sd_notify protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyMessage {
    /// `READY=1`
    Ready,
    /// `RELOADING=1`
    Reloading,
    /// `STOPPING=1`
    Stopping,
    /// `STATUS=...`, any text, empty included (it clears the status).
    Status(String),
    /// `MAINPID=`, a positive pid.
    MainPid(i32),
    /// `EXTEND_TIMEOUT_USEC=`
    ExtendTimeout(Duration),
    /// `ERRNO=`, a non-negative errno.
    Errno(i32),
    /// `FDSTORE=1`, named by the first valid `FDNAME=` of the same datagram.
    FdStore { name: Option<String> },
    /// `FDSTOREREMOVE=1`; without a valid `FDNAME=` there is nothing to remove.
    FdStoreRemove { name: Option<String> },
    /// `WATCHDOG=1`
    Watchdog,
    /// `BARRIER=1` (`sd_notify_barrier`): the fd sent with it is closed once
    /// every earlier message of the sender has been acted on.
    Barrier,
    /// `X_BATON_RESTART=1`: the generation asks the agent to restart its
    /// service (a service's `kill -USR2` handler sends it). The reason is the
    /// first non-empty `X_BATON_RESTART_REASON=` of the same datagram,
    /// escaped and bounded like a status. Variables with the `X_` prefix are
    /// sd_notify's convention for those systemd does not define.
    Restart { reason: Option<String> },
    /// `X_BATON_VERSION=`: the version the generation runs, escaped like a
    /// status and cut to `baton_proto::program::MAX_VERSION_BYTES`; it
    /// overrides the config's `version_env`. Send it with (or before)
    /// `READY=1`, so the generation's ready event carries it.
    Version(String),
    /// Anything else, or a known key with a value that does not parse. Kept for
    /// logging, never acted on.
    Unknown(String),
}

impl NotifySocket {
    /// Unlinks a stale socket file at `path`, then binds a close-on-exec, non-blocking
    /// unix datagram socket there with `SO_PASSCRED` on, world-writable (mode 0666)
    /// because services may run as another user: senders are told apart by their
    /// kernel-reported pid, not by who could open the file.
    ///
    /// Must be called within a tokio runtime.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let context = |error: io::Error| {
            io::Error::new(
                error.kind(),
                format!("notify socket {}: {error}", path.display()),
            )
        };
        remove_stale_socket(path).map_err(context)?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(io::Error::from)
        .map_err(context)?;
        // Before bind, so that no datagram can arrive without credentials.
        rustix::net::sockopt::set_socket_passcred(&fd, true)
            .map_err(io::Error::from)
            .map_err(context)?;
        let address = SocketAddrUnix::new(path)
            .map_err(io::Error::from)
            .map_err(context)?;
        rustix::net::bind(&fd, &address)
            .map_err(io::Error::from)
            .map_err(context)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(context)?;
        let socket = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    /// Wraps a notify socket handed over by the agent's previous image.
    /// Must be called within a tokio runtime.
    pub fn from_fd(fd: std::os::fd::OwnedFd, path: &Path) -> io::Result<Self> {
        let socket = std::os::unix::net::UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: UnixDatagram::from_std(socket)?,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    /// Waits for the next datagram. A truncated datagram is returned with
    /// `truncated` set and nothing parsed; an error is a failure of the socket itself.
    pub async fn recv(&self) -> io::Result<NotifyDatagram> {
        let mut data = vec![0u8; MAX_DATAGRAM_BYTES];
        let datagram = self
            .socket
            .async_io(Interest::READABLE, || receive(&self.socket, &mut data))
            .await?;
        if datagram.truncated {
            tracing::warn!(
                pid = datagram.pid,
                uid = datagram.uid,
                "notify datagram truncated, ignored"
            );
        }
        Ok(datagram)
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path),
        // Refuse to delete whatever a misconfigured path points at.
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn receive(socket: &UnixDatagram, data: &mut [u8]) -> io::Result<NotifyDatagram> {
    let mut control_space = [MaybeUninit::<u8>::uninit(); CONTROL_BYTES];
    let mut control = RecvAncillaryBuffer::new(&mut control_space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(data)],
        &mut control,
        // TRUNC makes `bytes` the datagram's real length, so oversize is visible.
        RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC,
    )?;

    let (mut pid, mut uid, mut gid) = (0, 0, 0);
    let mut fds = Vec::new();
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmCredentials(credentials) => {
                pid = credentials.pid.as_raw_nonzero().get();
                uid = credentials.uid.as_raw();
                gid = credentials.gid.as_raw();
            }
            RecvAncillaryMessage::ScmRights(received_fds) => fds.extend(received_fds),
            _ => {}
        }
    }

    let truncated = received.bytes > data.len()
        || received
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
    if truncated {
        // Dropping them closes them: a partial batch must not be stored.
        drop(fds);
        return Ok(NotifyDatagram {
            pid,
            uid,
            gid,
            text: String::new(),
            messages: Vec::new(),
            fds: Vec::new(),
            truncated: true,
        });
    }

    let text = String::from_utf8_lossy(&data[..received.bytes]).into_owned();
    let messages = parse(&text);
    Ok(NotifyDatagram {
        pid,
        uid,
        gid,
        text,
        messages,
        fds,
        truncated: false,
    })
}

/// Parses the newline-separated `KEY=VALUE` assignments of one datagram the way
/// systemd does: empty lines are skipped, flags must be exactly `=1`, a value that
/// does not parse (`MAINPID=abc`) yields [`NotifyMessage::Unknown`], and `FDNAME=`
/// only names the `FDSTORE=1`/`FDSTOREREMOVE=1` of the same datagram (the first valid
/// one counts, as in systemd). `X_BATON_RESTART_REASON=` likewise only explains the
/// `X_BATON_RESTART=1` of its datagram.
pub fn parse(text: &str) -> Vec<NotifyMessage> {
    // systemd splits on both characters of its NEWLINE set.
    let lines = || text.split(['\n', '\r']).filter(|line| !line.is_empty());
    let attributes = Attributes {
        fd_name: lines()
            .filter_map(|line| line.strip_prefix("FDNAME="))
            .find(|name| is_valid_fd_name(name))
            .map(str::to_owned),
        restart_reason: lines()
            .filter_map(|line| line.strip_prefix(RESTART_REASON_PREFIX))
            .find(|reason| !reason.is_empty())
            .map(|reason| escaped_line(reason, MAX_RESTART_REASON_BYTES)),
    };

    lines()
        .filter(|line| !line.starts_with("FDNAME=") && !line.starts_with(RESTART_REASON_PREFIX))
        .map(|line| parse_assignment(line, &attributes))
        .collect()
}

const RESTART_REASON_PREFIX: &str = "X_BATON_RESTART_REASON=";

/// Assignments that qualify another one of the same datagram rather than
/// say something of their own.
struct Attributes {
    fd_name: Option<String>,
    restart_reason: Option<String>,
}

fn parse_assignment(line: &str, attributes: &Attributes) -> NotifyMessage {
    let unknown = || NotifyMessage::Unknown(line.to_owned());
    let Some((key, value)) = line.split_once('=') else {
        return unknown();
    };
    match (key, value) {
        ("READY", "1") => NotifyMessage::Ready,
        ("RELOADING", "1") => NotifyMessage::Reloading,
        ("STOPPING", "1") => NotifyMessage::Stopping,
        ("WATCHDOG", "1") => NotifyMessage::Watchdog,
        ("BARRIER", "1") => NotifyMessage::Barrier,
        ("STATUS", status) => NotifyMessage::Status(escaped_line(status, MAX_STATUS_BYTES)),
        ("MAINPID", pid) => match pid.parse::<i32>() {
            Ok(pid) if pid > 0 => NotifyMessage::MainPid(pid),
            _ => unknown(),
        },
        ("EXTEND_TIMEOUT_USEC", usec) => match usec.parse::<u64>() {
            Ok(usec) => NotifyMessage::ExtendTimeout(Duration::from_micros(usec)),
            Err(_) => unknown(),
        },
        ("ERRNO", errno) => match errno.parse::<i32>() {
            Ok(errno) if errno >= 0 => NotifyMessage::Errno(errno),
            _ => unknown(),
        },
        ("FDSTORE", "1") => NotifyMessage::FdStore {
            name: attributes.fd_name.clone(),
        },
        ("FDSTOREREMOVE", "1") => NotifyMessage::FdStoreRemove {
            name: attributes.fd_name.clone(),
        },
        ("X_BATON_RESTART", "1") => NotifyMessage::Restart {
            reason: attributes.restart_reason.clone(),
        },
        ("X_BATON_VERSION", version) if !version.trim().is_empty() => NotifyMessage::Version(
            escaped_line(version.trim(), baton_proto::program::MAX_VERSION_BYTES),
        ),
        _ => unknown(),
    }
}

/// A status (or a restart's reason) as it is kept: control characters
/// escaped (it ends up in log lines and event streams, where a raw one could
/// forge a line), at most `max_bytes`.
fn escaped_line(text: &str, max_bytes: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars() {
        let before = line.len();
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
        if line.len() > max_bytes {
            line.truncate(before);
            break;
        }
    }
    line
}

/// A name that can be passed on in `LISTEN_FDNAMES`: printable ASCII without the `:`
/// separator. Unlike systemd, the empty name is treated as no name.
fn is_valid_fd_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FD_NAME_BYTES
        && name
            .bytes()
            .all(|byte| (b' '..=b'~').contains(&byte) && byte != b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSlice, Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram as StdUnixDatagram;
    use std::process::Command;

    use NotifyMessage::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

    const RECV_TIMEOUT: Duration = Duration::from_secs(5);

    async fn recv(socket: &NotifySocket) -> NotifyDatagram {
        tokio::time::timeout(RECV_TIMEOUT, socket.recv())
            .await
            .expect("no datagram within the timeout")
            .expect("recv failed")
    }

    fn send_with_fds(path: &Path, text: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
        let sender = StdUnixDatagram::unbound().unwrap();
        sender.connect(path).unwrap();
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        rustix::net::sendmsg(
            &sender,
            &[IoSlice::new(text)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    #[test]
    fn a_status_is_cut_on_a_character_boundary_and_carries_no_control_characters() {
        let long = format!(
            "{}é{}",
            "a".repeat(MAX_STATUS_BYTES - 1),
            "b".repeat(40_000)
        );
        let [Status(cut)] = &parse(&format!("STATUS={long}"))[..] else {
            panic!("one status");
        };
        assert_eq!(cut, &"a".repeat(MAX_STATUS_BYTES - 1));
        let [Status(escaped)] = &parse("STATUS=ok\u{1b}[2J\tdone")[..] else {
            panic!("one status");
        };
        assert_eq!(escaped, "ok\\u{1b}[2J\\tdone");
        assert!(!escaped.chars().any(char::is_control));
    }

    #[test]
    fn a_restart_reason_is_bounded_and_escaped_like_a_status() {
        let long = format!(
            "{}{}",
            "r".repeat(MAX_RESTART_REASON_BYTES),
            "s".repeat(10_000)
        );
        let [Restart { reason: Some(cut) }] =
            &parse(&format!("X_BATON_RESTART=1\nX_BATON_RESTART_REASON={long}"))[..]
        else {
            panic!("one restart request");
        };
        assert_eq!(cut, &"r".repeat(MAX_RESTART_REASON_BYTES));
        let [
            Restart {
                reason: Some(escaped),
            },
        ] = &parse("X_BATON_RESTART_REASON=rotate\u{1b}[2J\u{7}\nX_BATON_RESTART=1")[..]
        else {
            panic!("one restart request");
        };
        assert_eq!(escaped, "rotate\\u{1b}[2J\\u{7}");
        assert!(!escaped.chars().any(char::is_control));
    }

    #[test]
    fn a_declared_version_is_bounded() {
        let long = "9".repeat(baton_proto::program::MAX_VERSION_BYTES + 10);
        let [Version(cut)] = &parse(&format!("X_BATON_VERSION={long}"))[..] else {
            panic!("one version expected");
        };
        assert_eq!(cut.len(), baton_proto::program::MAX_VERSION_BYTES);
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, Vec<NotifyMessage>)> = vec![
            ("READY=1", vec![Ready]),
            ("READY=1\n", vec![Ready]),
            ("\n\nREADY=1\n\n", vec![Ready]),
            ("READY=0", vec![Unknown("READY=0".into())]),
            (
                "READY=1\nSTATUS=serving 3 clients",
                vec![Ready, Status("serving 3 clients".into())],
            ),
            ("STATUS=", vec![Status(String::new())]),
            ("STATUS=a=b", vec![Status("a=b".into())]),
            ("RELOADING=1\r\nSTOPPING=1", vec![Reloading, Stopping]),
            ("MAINPID=4242", vec![MainPid(4242)]),
            ("BARRIER=1", vec![Barrier]),
            ("BARRIER=0", vec![Unknown("BARRIER=0".into())]),
            ("MAINPID=abc", vec![Unknown("MAINPID=abc".into())]),
            ("MAINPID=0", vec![Unknown("MAINPID=0".into())]),
            ("MAINPID=-5", vec![Unknown("MAINPID=-5".into())]),
            (
                "MAINPID=99999999999",
                vec![Unknown("MAINPID=99999999999".into())],
            ),
            (
                "EXTEND_TIMEOUT_USEC=2500000",
                vec![ExtendTimeout(Duration::from_millis(2500))],
            ),
            (
                "EXTEND_TIMEOUT_USEC=soon",
                vec![Unknown("EXTEND_TIMEOUT_USEC=soon".into())],
            ),
            ("ERRNO=2", vec![Errno(2)]),
            ("ERRNO=-1", vec![Unknown("ERRNO=-1".into())]),
            ("WATCHDOG=1", vec![Watchdog]),
            ("WATCHDOG=trigger", vec![Unknown("WATCHDOG=trigger".into())]),
            ("FDSTORE=1", vec![FdStore { name: None }]),
            (
                "FDSTORE=1\nFDNAME=web",
                vec![FdStore {
                    name: Some("web".into()),
                }],
            ),
            (
                "FDNAME=web\nFDSTORE=1",
                vec![FdStore {
                    name: Some("web".into()),
                }],
            ),
            ("FDSTORE=1\nFDNAME=a:b", vec![FdStore { name: None }]),
            ("FDSTORE=1\nFDNAME=", vec![FdStore { name: None }]),
            (
                "FDSTORE=1\nFDNAME=bad\u{7}\nFDNAME=good",
                vec![FdStore {
                    name: Some("good".into()),
                }],
            ),
            (
                "FDSTOREREMOVE=1\nFDNAME=cache",
                vec![FdStoreRemove {
                    name: Some("cache".into()),
                }],
            ),
            ("FDSTOREREMOVE=1", vec![FdStoreRemove { name: None }]),
            ("FDNAME=orphan", vec![]),
            ("X_BATON_RESTART=1", vec![Restart { reason: None }]),
            (
                "X_BATON_RESTART=1\nX_BATON_RESTART_REASON=new certificates",
                vec![Restart {
                    reason: Some("new certificates".into()),
                }],
            ),
            (
                "X_BATON_RESTART_REASON=\nX_BATON_RESTART_REASON=a=b\nX_BATON_RESTART=1",
                vec![Restart {
                    reason: Some("a=b".into()),
                }],
            ),
            ("X_BATON_RESTART_REASON=alone", vec![]),
            ("X_BATON_VERSION=1.4.3", vec![Version("1.4.3".into())]),
            (
                "X_BATON_VERSION=1.4.3\nREADY=1",
                vec![Version("1.4.3".into()), Ready],
            ),
            (
                "X_BATON_VERSION= v2 (abc) ",
                vec![Version("v2 (abc)".into())],
            ),
            ("X_BATON_VERSION=", vec![Unknown("X_BATON_VERSION=".into())]),
            (
                "X_BATON_VERSION=1.4\u{1b}[2J",
                vec![Version("1.4\\u{1b}[2J".into())],
            ),
            (
                "X_BATON_RESTART=yes",
                vec![Unknown("X_BATON_RESTART=yes".into())],
            ),
            (
                "x_baton_restart=1",
                vec![Unknown("x_baton_restart=1".into())],
            ),
            ("ready=1", vec![Unknown("ready=1".into())]),
            ("READY", vec![Unknown("READY".into())]),
            (
                "BUSERROR=x.y\nREADY=1",
                vec![Unknown("BUSERROR=x.y".into()), Ready],
            ),
            ("", vec![]),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), expected, "parsing {text:?}");
        }
        let long_name = "n".repeat(MAX_FD_NAME_BYTES + 1);
        assert_eq!(
            parse(&format!("FDSTORE=1\nFDNAME={long_name}")),
            vec![FdStore { name: None }]
        );
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_and_is_world_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        drop(StdUnixDatagram::bind(&path).unwrap());
        let socket = NotifySocket::bind(&path).unwrap();
        assert_eq!(socket.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let flags = nix::fcntl::fcntl(socket.socket.as_fd(), nix::fcntl::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "notify socket must be close-on-exec"
        );
    }

    #[tokio::test]
    async fn bind_refuses_to_delete_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        std::fs::write(&path, b"precious").unwrap();
        let error = NotifySocket::bind(&path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn datagram_from_this_process_carries_our_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let sender = StdUnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1\nSTATUS=up", &path).unwrap();

        let datagram = recv(&socket).await;
        assert_eq!(datagram.pid, std::process::id() as i32);
        assert_eq!(datagram.uid, nix::unistd::getuid().as_raw());
        assert_eq!(datagram.gid, nix::unistd::getgid().as_raw());
        assert_eq!(datagram.text, "READY=1\nSTATUS=up");
        assert_eq!(datagram.messages, vec![Ready, Status("up".into())]);
        assert!(datagram.fds.is_empty());
        assert!(!datagram.truncated);
    }

    #[tokio::test]
    async fn datagram_from_a_child_process_carries_the_childs_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let script = "import socket, sys, os\n\
                      s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                      s.sendto(b'READY=1\\nMAINPID=' + str(os.getpid()).encode(), sys.argv[1])\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .spawn()
            .expect("python3 is needed for this test");

        let datagram = recv(&socket).await;
        let child_pid = child.id() as i32;
        assert!(child.wait().unwrap().success());
        assert_eq!(datagram.pid, child_pid);
        assert_ne!(datagram.pid, std::process::id() as i32);
        assert_eq!(datagram.messages, vec![Ready, MainPid(child_pid)]);
    }

    #[tokio::test]
    async fn fds_sent_with_scm_rights_arrive_usable_and_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let mut stored = tempfile::tempfile().unwrap();
        stored.write_all(b"state to keep").unwrap();
        let (pipe_reader, pipe_writer) = std::io::pipe().unwrap();

        send_with_fds(
            &path,
            b"FDSTORE=1\nFDNAME=cache",
            &[stored.as_fd(), pipe_writer.as_fd()],
        );
        drop(pipe_writer);
        let datagram = recv(&socket).await;
        assert_eq!(
            datagram.messages,
            vec![FdStore {
                name: Some("cache".into())
            }]
        );
        assert_eq!(datagram.fds.len(), 2);
        for fd in &datagram.fds {
            let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::F_GETFD).unwrap();
            assert_ne!(
                flags & libc::FD_CLOEXEC,
                0,
                "received fds must be close-on-exec"
            );
        }

        let mut fds = datagram.fds.into_iter();
        let mut received_file = std::fs::File::from(fds.next().unwrap());
        received_file.rewind().unwrap();
        let mut contents = String::new();
        received_file.read_to_string(&mut contents).unwrap();
        assert_eq!(contents, "state to keep");

        let mut received_pipe = std::fs::File::from(fds.next().unwrap());
        received_pipe.write_all(b"through the agent").unwrap();
        drop(received_pipe);
        let mut piped = String::new();
        let mut pipe_reader = pipe_reader;
        pipe_reader.read_to_string(&mut piped).unwrap();
        assert_eq!(piped, "through the agent");
    }

    #[tokio::test]
    async fn oversized_datagram_is_reported_truncated_not_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let mut text = b"READY=1\n".to_vec();
        text.resize(MAX_DATAGRAM_BYTES + 100, b'x');
        let sender = StdUnixDatagram::unbound().unwrap();
        sender.send_to(&text, &path).unwrap();
        sender.send_to(b"STOPPING=1", &path).unwrap();

        let datagram = recv(&socket).await;
        assert!(datagram.truncated);
        assert_eq!(datagram.pid, std::process::id() as i32);
        assert!(datagram.messages.is_empty());
        assert!(datagram.text.is_empty());

        let next = recv(&socket).await;
        assert!(!next.truncated);
        assert_eq!(next.messages, vec![Stopping]);
    }

    #[tokio::test]
    async fn too_many_fds_drop_the_whole_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let (pipe_reader, pipe_writer) = std::io::pipe().unwrap();
        let copies: Vec<OwnedFd> = (0..MAX_FDS_PER_DATAGRAM + 4)
            .map(|_| pipe_writer.try_clone().unwrap().into())
            .collect();
        let borrowed: Vec<_> = copies.iter().map(|fd| fd.as_fd()).collect();
        send_with_fds(&path, b"FDSTORE=1", &borrowed);
        drop(borrowed);
        drop(copies);
        drop(pipe_writer);

        let datagram = recv(&socket).await;
        assert!(datagram.truncated);
        assert!(datagram.fds.is_empty());
        assert!(datagram.messages.is_empty());
        // Every copy of the write end is closed, in the agent too, so the reader sees EOF;
        // a leaked copy would block the read, hence the thread and the timeout.
        let (done, eof) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let mut pipe_reader = pipe_reader;
            let _ = done.send(pipe_reader.read_to_end(&mut rest).map(|_| rest));
        });
        let rest = eof
            .recv_timeout(RECV_TIMEOUT)
            .expect("a received fd leaked");
        assert!(rest.unwrap().is_empty());
    }
}
