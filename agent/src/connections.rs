//! How many connections a draining generation still holds, read from the kernel.
//!
//! A connection belongs to a generation when the socket is open in one of the
//! generation's processes (those of its cgroup, or without cgroups those of its
//! process group) and was accepted from one of the service's listeners. Sockets come from sock_diag netlink dumps filtered by state in
//! the kernel (`/proc/net/tcp` can hold tens of thousands of lines); ownership comes
//! from the socket inodes behind `/proc/<pid>/fd`.

use crate::config::ListenAddr;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::unix::nlas::UnixDiagName;
use netlink_packet_sock_diag::unix::{self as unix_diag, UnixRequest};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use procfs::process::{FDTarget, Process};

mod counter;
pub use counter::{ConnectionCounter, Counts, DRAIN_EVERY, Registration};

/// The service's stream listeners, so that only connections accepted from them are
/// counted (a generation's own outbound connections to a database are not "its
/// connections").
#[derive(Debug, Clone, Default)]
pub struct ListenAddrs {
    /// An unspecified address (`0.0.0.0`, `::`) matches any local address on the port.
    pub tcp: Vec<SocketAddr>,
    /// Compared byte for byte with the name the socket was bound to, so give the path
    /// exactly as it was bound.
    pub unix: Vec<PathBuf>,
}

impl ListenAddrs {
    /// The stream listeners among a service's addresses (UDP has no connections).
    pub fn of<'a>(addrs: impl IntoIterator<Item = &'a ListenAddr>) -> Self {
        let mut listen = ListenAddrs::default();
        for addr in addrs {
            match addr {
                ListenAddr::Tcp(a) => listen.tcp.push(*a),
                ListenAddr::Unix(p) => listen.unix.push(p.clone()),
                ListenAddr::Udp(_) => {}
            }
        }
        listen
    }
}

/// The processes whose sockets are a generation's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// The live processes of a process group.
    Group(i32),
    /// The processes of a cgroup (its folder under the cgroup v2 mount),
    /// including any that left the process group with `setsid`. Reading
    /// `cgroup.procs` also spares a walk of every process on the host.
    Cgroup(PathBuf),
    /// Without cgroups: its process group, and the processes that left it
    /// but are traced back to it (`lineage.rs`).
    Traced(crate::lineage::Traced),
}

impl Members {
    /// Pids of the members, ascending; zombies and vanished ones left out.
    pub fn pids(&self) -> Vec<i32> {
        match self {
            Members::Group(pgid) => group_members(*pgid),
            Members::Cgroup(folder) => {
                let mut pids = crate::cgroup::procs_of(folder);
                pids.retain(|pid| {
                    Process::new(*pid)
                        .is_ok_and(|p| p.stat().is_ok_and(|stat| !matches!(stat.state, 'Z' | 'X')))
                });
                pids
            }
            Members::Traced(traced) => traced.pids(),
        }
    }
}

/// [`count_connections`] off the async threads; `None` when it could not count.
/// For one generation at one moment (before a stop signal, at a drain's
/// deadline); periodic counts of many go through [`ConnectionCounter`].
pub async fn count(members: Members, listen: ListenAddrs) -> Option<u32> {
    tokio::task::spawn_blocking(move || count_connections(&members, &listen))
        .await
        .ok()
        .and_then(|r| r.ok())
}

/// A dump never legitimately takes long; this only keeps a wedged kernel reply from
/// stalling the drain loop forever.
const NETLINK_RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// Larger than any single datagram the kernel sends for a dump (it fills at most
/// 32 KiB per datagram), so a reply is never cut.
const NETLINK_RECV_BUFFER_BYTES: usize = 64 * 1024;

const SOCK_STREAM: u8 = libc::SOCK_STREAM as u8;
const SOCK_SEQPACKET: u8 = libc::SOCK_SEQPACKET as u8;

/// `SS_CONNECTED` in the `St` column of `/proc/net/unix`.
const PROC_NET_UNIX_CONNECTED: u8 = 3;

/// How many times this process read the kernel's socket tables to count
/// (one [`count_many`] or [`count_connections`] is one, however many
/// generations it counts). Tests hold the agent to one per tick with it.
static SCANS: AtomicU64 = AtomicU64::new(0);

pub fn scans() -> u64 {
    SCANS.load(Ordering::Relaxed)
}

/// Number of open connections held by the generation's processes that were
/// accepted from one of `listen`: TCP sockets (IPv4 and IPv6) in any state but LISTEN,
/// TIME_WAIT and CLOSE whose local port is a listener's port and whose local address is
/// the listener's (or the listener's address is unspecified); plus connected unix
/// stream sockets accepted on one of the unix paths. A socket shared by several
/// processes of the generation counts once.
///
/// Blocking (netlink and `/proc`); call it from `spawn_blocking` in async code.
pub fn count_connections(members: &Members, listen: &ListenAddrs) -> io::Result<u32> {
    let mut counts = count_each(&[(members, listen)])?;
    counts.pop().unwrap_or(Ok(0))
}

/// [`count_connections`] for many generations at once, with one walk of
/// their processes and one sock_diag dump per socket family for all of them:
/// the cost of a count grows with the sockets and processes on the host, not
/// with their product. `None` where a generation could not be counted.
///
/// Blocking (netlink and `/proc`); call it from `spawn_blocking` in async code.
pub fn count_many(targets: &[(Members, ListenAddrs)]) -> Vec<Option<u32>> {
    let borrowed: Vec<(&Members, &ListenAddrs)> = targets.iter().map(|(m, l)| (m, l)).collect();
    match count_each(&borrowed) {
        Ok(counts) => counts.into_iter().map(Result::ok).collect(),
        Err(error) => {
            tracing::debug!(%error, "could not read the kernel's sockets");
            vec![None; targets.len()]
        }
    }
}

/// The outer error is the kernel's tables being unreadable (every count
/// fails); an inner one is one generation's processes being unreadable.
///
/// The kernel's connections come first, matched to the listeners they were
/// accepted from; only generations whose listeners have a connection at all
/// have their processes' fds read, to tell theirs from an older or newer
/// generation's. An idle agent's count is one dump and nothing else.
fn count_each(targets: &[(&Members, &ListenAddrs)]) -> io::Result<Vec<io::Result<u32>>> {
    let mut candidates: Vec<HashSet<u64>> = vec![HashSet::new(); targets.len()];
    let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
    let mut by_path: HashMap<&[u8], Vec<usize>> = HashMap::new();
    let mut tcp_listeners = Vec::new();
    for (index, (_, listen)) in targets.iter().enumerate() {
        for address in &listen.tcp {
            by_port.entry(address.port()).or_default().push(index);
            tcp_listeners.push(*address);
        }
        for path in &listen.unix {
            by_path
                .entry(path.as_os_str().as_bytes())
                .or_default()
                .push(index);
        }
    }
    if by_port.is_empty() && by_path.is_empty() {
        return Ok(targets.iter().map(|_| Ok(0)).collect());
    }
    SCANS.fetch_add(1, Ordering::Relaxed);

    let mut sock_diag = SockDiag::open()?;
    for family in tcp_families(&tcp_listeners) {
        sock_diag.dump(inet_request(family), |message| {
            let SockDiagMessage::InetResponse(response) = message else {
                return;
            };
            let header = &response.header;
            let Some(listening) = by_port.get(&header.socket_id.source_port) else {
                return;
            };
            let local = SocketAddr::new(
                header.socket_id.source_address,
                header.socket_id.source_port,
            );
            for &index in listening {
                if accepted_from(&targets[index].1.tcp, local) {
                    candidates[index].insert(u64::from(header.inode));
                }
            }
        })?;
    }
    if !by_path.is_empty() {
        let unix_sockets = match unix_connections_from_sock_diag(&mut sock_diag) {
            Ok(sockets) => sockets,
            Err(error) => {
                tracing::debug!(%error, "unix sock_diag unavailable, reading /proc/net/unix");
                parse_proc_net_unix(&std::fs::read("/proc/net/unix")?)
            }
        };
        for socket in unix_sockets {
            for &index in by_path.get(socket.path.as_slice()).into_iter().flatten() {
                candidates[index].insert(socket.inode);
            }
        }
    }

    let busy: Vec<usize> = (0..targets.len())
        .filter(|&index| !candidates[index].is_empty())
        .collect();
    let members: Vec<&Members> = busy.iter().map(|&index| targets[index].0).collect();
    let mut results: Vec<io::Result<u32>> = targets.iter().map(|_| Ok(0)).collect();
    for (index, held) in busy.into_iter().zip(socket_inodes_of_all(&members)) {
        results[index] = held.map(|held| {
            let connections = candidates[index].intersection(&held).count();
            u32::try_from(connections).unwrap_or(u32::MAX)
        });
    }
    Ok(results)
}

/// Pids of the live processes whose process group is `pgid`, in ascending order.
/// Processes that vanish mid-scan are skipped, and zombies are left out: they hold no
/// fds and serve nobody, they only wait to be reaped.
pub fn group_members(pgid: i32) -> Vec<i32> {
    if pgid <= 0 {
        // Process group 0 is where kernel threads live; it is never a generation.
        return Vec::new();
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut members: Vec<i32> = processes
        .flatten()
        .filter(|process| is_live_member(process, pgid))
        .map(|process| process.pid())
        .collect();
    members.sort_unstable();
    members
}

fn is_live_member(process: &Process, pgid: i32) -> bool {
    process
        .stat()
        .is_ok_and(|stat| stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X'))
}

/// Inodes of every socket open in a member of each of `members`, in order.
/// Process groups are found with one walk of `/proc` for all of them. A
/// process reads its fds through the `/proc/<pid>` directory it opened, so a
/// pid reused mid-scan cannot lend the generation a stranger's sockets.
fn socket_inodes_of_all(members: &[&Members]) -> Vec<io::Result<HashSet<u64>>> {
    let groups: HashSet<i32> = members
        .iter()
        .filter_map(|members| match members {
            Members::Group(pgid) if *pgid > 0 => Some(*pgid),
            _ => None,
        })
        .collect();
    let mut by_group: HashMap<i32, Vec<Process>> = HashMap::new();
    let mut walk_error = None;
    if !groups.is_empty() {
        match procfs::process::all_processes() {
            Ok(processes) => {
                for process in processes.flatten() {
                    if let Ok(stat) = process.stat()
                        && groups.contains(&stat.pgrp)
                        && !matches!(stat.state, 'Z' | 'X')
                    {
                        by_group.entry(stat.pgrp).or_default().push(process);
                    }
                }
            }
            Err(error) => walk_error = Some(error.to_string()),
        }
    }
    members
        .iter()
        .map(|members| {
            let processes: Vec<Process> = match members {
                Members::Group(pgid) => {
                    if let Some(error) = &walk_error {
                        return Err(io::Error::other(error.clone()));
                    }
                    by_group.remove(pgid).unwrap_or_default()
                }
                Members::Cgroup(folder) => crate::cgroup::procs_of(folder)
                    .into_iter()
                    .filter_map(|pid| Process::new(pid).ok())
                    .collect(),
                Members::Traced(traced) => traced
                    .pids()
                    .into_iter()
                    .filter_map(|pid| Process::new(pid).ok())
                    .collect(),
            };
            socket_inodes_of(processes)
        })
        .collect()
}

fn socket_inodes_of(processes: Vec<Process>) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for process in processes {
        let fds = match process.fd() {
            Ok(fds) => fds,
            // Exited between the listing and the fd listing.
            Err(procfs::ProcError::NotFound(_)) => continue,
            // Anything else would silently undercount: a drain could then end early.
            Err(error) => return Err(proc_error(error)),
        };
        inodes.extend(fds.flatten().filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        }));
    }
    Ok(inodes)
}

/// Inodes of every socket open in a member.
#[cfg(test)]
fn socket_inodes(members: &Members) -> io::Result<HashSet<u64>> {
    socket_inodes_of_all(&[members])
        .pop()
        .unwrap_or_else(|| Ok(HashSet::new()))
}

fn proc_error(error: procfs::ProcError) -> io::Error {
    match error {
        procfs::ProcError::Io(error, _) => error,
        procfs::ProcError::PermissionDenied(_) => {
            io::Error::new(io::ErrorKind::PermissionDenied, error.to_string())
        }
        procfs::ProcError::NotFound(_) => {
            io::Error::new(io::ErrorKind::NotFound, error.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

/// Only the families some listener has: an IPv6 listener's IPv4 clients appear as
/// AF_INET6 sockets with v4-mapped addresses, so AF_INET is needed only for IPv4
/// listeners.
fn tcp_families(listeners: &[SocketAddr]) -> Vec<u8> {
    let mut families = Vec::new();
    if listeners.iter().any(SocketAddr::is_ipv4) {
        families.push(AF_INET);
    }
    if listeners.iter().any(SocketAddr::is_ipv6) {
        families.push(AF_INET6);
    }
    families
}

fn inet_request(family: u8) -> SockDiagMessage {
    // LISTEN is the listener itself; TIME_WAIT and CLOSE sockets belong to no process.
    let states = StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT - StateFlags::CLOSE;
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id: if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    })
}

fn accepted_from(listeners: &[SocketAddr], local: SocketAddr) -> bool {
    // A dual-stack socket sees `a.b.c.d` as `::ffff:a.b.c.d`; both name one address.
    let local_ip = local.ip().to_canonical();
    listeners.iter().any(|listener| {
        listener.port() == local.port()
            && (listener.ip().is_unspecified() || listener.ip().to_canonical() == local_ip)
    })
}

#[derive(Debug, PartialEq, Eq)]
struct UnixConnection {
    inode: u64,
    /// The name of the listener the socket was accepted from: the kernel gives an
    /// accepted socket its listener's address. Empty for unnamed sockets.
    path: Vec<u8>,
}

fn unix_connections_from_sock_diag(sock_diag: &mut SockDiag) -> io::Result<Vec<UnixConnection>> {
    let request = SockDiagMessage::UnixRequest(UnixRequest {
        state_flags: unix_diag::StateFlags::ESTABLISHED,
        inode: 0,
        show_flags: unix_diag::ShowFlags::NAME,
        cookie: [0xff; 8],
    });
    let mut connections = Vec::new();
    sock_diag.dump(request, |message| {
        let SockDiagMessage::UnixResponse(response) = message else {
            return;
        };
        if !matches!(response.header.kind, SOCK_STREAM | SOCK_SEQPACKET) {
            return;
        }
        if let Some(UnixDiagName::Pathname(path)) = response.name() {
            connections.push(UnixConnection {
                inode: u64::from(response.header.inode),
                path: path.as_bytes().to_vec(),
            });
        }
    })?;
    Ok(connections)
}

/// The connected, named stream and seqpacket sockets of `/proc/net/unix`, whose lines
/// read `Num: RefCount Protocol Flags Type St Inode [Path]`. The path is the rest of
/// the line, spaces included.
fn parse_proc_net_unix(contents: &[u8]) -> Vec<UnixConnection> {
    contents
        .split(|&byte| byte == b'\n')
        .skip(1)
        .filter_map(|line| {
            let mut rest = line;
            let mut fields = [&b""[..]; 7];
            for field in &mut fields {
                rest = trim_start(rest);
                let end = rest
                    .iter()
                    .position(|&byte| byte == b' ')
                    .unwrap_or(rest.len());
                *field = &rest[..end];
                rest = &rest[end..];
            }
            let [_, _, _, _, kind, state, inode] = fields;
            let kind = u8::from_str_radix(std::str::from_utf8(kind).ok()?, 16).ok()?;
            let state = u8::from_str_radix(std::str::from_utf8(state).ok()?, 16).ok()?;
            let inode = std::str::from_utf8(inode).ok()?.parse::<u64>().ok()?;
            let path = rest.strip_prefix(b" ")?;
            let connected_stream =
                matches!(kind, SOCK_STREAM | SOCK_SEQPACKET) && state == PROC_NET_UNIX_CONNECTED;
            (connected_stream && !path.is_empty()).then(|| UnixConnection {
                inode,
                path: path.to_vec(),
            })
        })
        .collect()
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| byte != b' ')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// One NETLINK_SOCK_DIAG socket (close-on-exec: netlink-sys opens it with
/// `SOCK_CLOEXEC`), used for the few dumps of one count.
struct SockDiag {
    socket: Socket,
    sequence_number: u32,
    receive_buffer: Vec<u8>,
}

impl SockDiag {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(NETLINK_RECV_TIMEOUT),
        )?;
        Ok(Self {
            socket,
            sequence_number: 0,
            receive_buffer: Vec::with_capacity(NETLINK_RECV_BUFFER_BYTES),
        })
    }

    /// Sends one dump request and hands every reply message to `each`, across as many
    /// datagrams as the kernel splits the dump into, until NLMSG_DONE.
    fn dump(
        &mut self,
        request: SockDiagMessage,
        mut each: impl FnMut(SockDiagMessage),
    ) -> io::Result<()> {
        self.sequence_number = self.sequence_number.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.sequence_number;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
        packet.finalize();
        let mut request_bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut request_bytes);
        self.socket.send(&request_bytes, 0)?;

        loop {
            self.receive_buffer.clear();
            let size = self
                .socket
                .recv(&mut self.receive_buffer, libc::MSG_TRUNC)?;
            if size > self.receive_buffer.len() {
                return Err(invalid_data(format!(
                    "sock_diag reply of {size} bytes exceeds the receive buffer"
                )));
            }
            let mut offset = 0;
            while offset < size {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(
                    &self.receive_buffer[offset..size],
                )
                .map_err(|error| invalid_data(format!("sock_diag reply: {error}")))?;
                let length = message.header.length as usize;
                if length == 0 {
                    return Err(invalid_data(
                        "sock_diag reply with a zero-length message".into(),
                    ));
                }
                // Messages are 4-byte aligned within a datagram.
                offset += (length + 3) & !3;
                if message.header.sequence_number != self.sequence_number {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io());
                    }
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    _ => {}
                }
            }
        }
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;

    const SETTLE: Duration = Duration::from_secs(3);

    /// A service in its own process group: two processes (the second forked after the
    /// listeners exist) accepting from the same listeners and closing a connection
    /// when its client does, plus one outbound connection of their own.
    const SERVICE: &str = r#"
import os, selectors, socket, sys
counted_path, other_path, outbound_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def listen(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family != socket.AF_UNIX:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(address)
    s.listen(64)
    s.setblocking(False)
    return s
listeners = [listen(socket.AF_INET, ("127.0.0.1", 0)), listen(socket.AF_INET, ("127.0.0.1", 0)),
             listen(socket.AF_UNIX, counted_path), listen(socket.AF_UNIX, other_path)]
try:
    listeners.append(listen(socket.AF_INET6, ("::1", 0)))
    v6_port = listeners[-1].getsockname()[1]
except OSError:
    v6_port = 0
outbound = socket.create_connection(("127.0.0.1", outbound_port))
helper = os.fork()
if helper:
    print(listeners[0].getsockname()[1], listeners[1].getsockname()[1], v6_port, helper, flush=True)
selector = selectors.DefaultSelector()
for listener in listeners:
    selector.register(listener, selectors.EVENT_READ, "listener")
while True:
    for key, _ in selector.select():
        if key.data == "listener":
            try:
                connection, _ = key.fileobj.accept()
            except BlockingIOError:
                continue
            selector.register(connection, selectors.EVENT_READ, "connection")
        else:
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                key.fileobj.close()
"#;

    /// Kills the whole group even when an assertion fails first.
    struct Service {
        child: Child,
        pgid: i32,
        helper_pid: i32,
        port: u16,
        other_port: u16,
        v6_port: u16,
    }

    impl Drop for Service {
        fn drop(&mut self) {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }

    fn spawn_service(counted_path: &Path, other_path: &Path, outbound_port: u16) -> Service {
        let mut child = Command::new("python3")
            .args(["-c", SERVICE])
            .arg(counted_path)
            .arg(other_path)
            .arg(outbound_port.to_string())
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pgid = child.id() as i32;
        let fields: Vec<i64> = line
            .split_whitespace()
            .map(|field| field.parse().unwrap())
            .collect();
        let [port, other_port, v6_port, helper_pid] = fields[..] else {
            panic!("service printed {line:?}");
        };
        Service {
            child,
            pgid,
            helper_pid: helper_pid as i32,
            port: port as u16,
            other_port: other_port as u16,
            v6_port: v6_port as u16,
        }
    }

    /// Polls until `observe` returns `expected`, then asserts on the last value seen, so
    /// a wrong count fails after the settle time rather than passing by luck.
    fn assert_eventually<T: PartialEq + std::fmt::Debug>(
        what: &str,
        expected: T,
        mut observe: impl FnMut() -> T,
    ) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let observed = observe();
            if observed == expected || Instant::now() > deadline {
                assert_eq!(observed, expected, "{what}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tcp(addresses: &[SocketAddr]) -> ListenAddrs {
        ListenAddrs {
            tcp: addresses.to_vec(),
            unix: Vec::new(),
        }
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn counts_only_the_groups_connections_accepted_from_its_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let counted_path = dir.path().join("counted.sock");
        let other_path = dir.path().join("other.sock");
        let database = TcpListener::bind(loopback(0)).unwrap();
        let database_address = database.local_addr().unwrap();
        let service = spawn_service(&counted_path, &other_path, database_address.port());
        let (_database_side, _) = database.accept().unwrap();
        let pgid = service.pgid;
        let count =
            |listen: &ListenAddrs| count_connections(&Members::Group(pgid), listen).unwrap();

        let mut clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(loopback(service.port)).unwrap())
            .collect();
        let _other_clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(loopback(service.other_port)).unwrap())
            .collect();
        let mut unix_clients: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&counted_path).unwrap())
            .collect();
        let _other_unix_client = UnixStream::connect(&other_path).unwrap();

        let port = service.port;
        assert_eventually("3 clients on the counted port", 3, || {
            count(&tcp(&[loopback(port)]))
        });
        assert_eq!(
            count(&tcp(&[SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))])),
            3
        );
        assert_eq!(
            count(&tcp(&[SocketAddr::from((
                Ipv4Addr::new(127, 0, 0, 2),
                port
            ))])),
            0
        );
        assert_eq!(
            count(&tcp(&[loopback(port), loopback(service.other_port)])),
            5
        );
        // The same sockets matched by two listeners count once.
        assert_eq!(
            count(&tcp(&[
                loopback(port),
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
            ])),
            3
        );
        // The group's outbound connection has the database's port as its remote port only.
        assert_eq!(count(&tcp(&[database_address])), 0);
        // Our own accepted side of it is on the database port, but not in the group.
        let our_pgid = nix::unistd::getpgrp().as_raw();
        assert_eq!(
            count_connections(&Members::Group(our_pgid), &tcp(&[database_address])).unwrap(),
            1
        );

        let unix_only = ListenAddrs {
            tcp: Vec::new(),
            unix: vec![counted_path.clone()],
        };
        assert_eventually("2 unix clients", 2, || count(&unix_only));
        let both = ListenAddrs {
            tcp: vec![loopback(port)],
            unix: vec![counted_path.clone()],
        };
        assert_eq!(count(&both), 5);
        assert_eq!(count(&ListenAddrs::default()), 0);

        // The /proc/net/unix fallback sees the same unix connections.
        let group_inodes = socket_inodes(&Members::Group(pgid)).unwrap();
        let from_proc: Vec<_> = parse_proc_net_unix(&std::fs::read("/proc/net/unix").unwrap())
            .into_iter()
            .filter(|socket| {
                socket.path == counted_path.as_os_str().as_bytes()
                    && group_inodes.contains(&socket.inode)
            })
            .collect();
        assert_eq!(from_proc.len(), 2);
        // And so does sock_diag itself, without falling back.
        let from_sock_diag: Vec<_> =
            unix_connections_from_sock_diag(&mut SockDiag::open().unwrap())
                .unwrap()
                .into_iter()
                .filter(|socket| {
                    socket.path == counted_path.as_os_str().as_bytes()
                        && group_inodes.contains(&socket.inode)
                })
                .collect();
        assert_eq!(from_sock_diag.len(), 2);

        clients.truncate(1);
        assert_eventually("2 of 3 clients closed", 1, || {
            count(&tcp(&[loopback(port)]))
        });
        unix_clients.truncate(1);
        assert_eventually("1 of 2 unix clients closed", 2, || count(&both));

        drop(clients);
        drop(unix_clients);
        assert_eventually("every client closed", 0, || count(&both));
    }

    #[test]
    fn counts_ipv6_and_v4_mapped_connections() {
        let dir = tempfile::tempdir().unwrap();
        let database = TcpListener::bind(loopback(0)).unwrap();
        let service = spawn_service(
            &dir.path().join("a.sock"),
            &dir.path().join("b.sock"),
            database.local_addr().unwrap().port(),
        );
        if service.v6_port == 0 {
            eprintln!("no IPv6 loopback; skipping");
            return;
        }
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, service.v6_port));
        let _clients: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(v6).unwrap()).collect();
        let pgid = service.pgid;
        assert_eventually("2 IPv6 clients", 2, || {
            count_connections(&Members::Group(pgid), &tcp(&[v6])).unwrap()
        });
        let any_v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, service.v6_port));
        assert_eq!(
            count_connections(&Members::Group(pgid), &tcp(&[any_v6])).unwrap(),
            2
        );
        // An IPv4 listener on the same port number is a different socket family.
        assert_eq!(
            count_connections(&Members::Group(pgid), &tcp(&[loopback(service.v6_port)])).unwrap(),
            0
        );
    }

    /// Hundreds of sockets make the kernel split each dump over many datagrams.
    #[test]
    fn counts_across_multipart_dumps() {
        const CLIENTS: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let counted_path = dir.path().join("counted.sock");
        let database = TcpListener::bind(loopback(0)).unwrap();
        let service = spawn_service(
            &counted_path,
            &dir.path().join("other.sock"),
            database.local_addr().unwrap().port(),
        );
        let _tcp_clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| TcpStream::connect(loopback(service.port)).unwrap())
            .collect();
        let _unix_clients: Vec<UnixStream> = (0..CLIENTS)
            .map(|_| UnixStream::connect(&counted_path).unwrap())
            .collect();
        let listen = ListenAddrs {
            tcp: vec![loopback(service.port)],
            unix: vec![counted_path.clone()],
        };
        assert_eventually("every client", 2 * CLIENTS as u32, || {
            count_connections(&Members::Group(service.pgid), &listen).unwrap()
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_draining_generation_is_counted_every_tick_until_it_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let database = TcpListener::bind(loopback(0)).unwrap();
        let service = spawn_service(
            &dir.path().join("a.sock"),
            &dir.path().join("b.sock"),
            database.local_addr().unwrap().port(),
        );
        let _clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(loopback(service.port)).unwrap())
            .collect();
        let counter = ConnectionCounter::start(Duration::from_millis(50));
        let registration = counter.register(
            "web",
            1,
            Members::Group(service.pgid),
            tcp(&[loopback(service.port)]),
        );
        let (tx, mut counts) = tokio::sync::mpsc::unbounded_channel();
        registration.watch_drain(move |count| tx.send(count).is_ok());
        let mut reports = 0;
        loop {
            let count = tokio::time::timeout(SETTLE, counts.recv())
                .await
                .expect("a draining generation is counted every tick")
                .unwrap();
            reports += 1;
            if count == Some(2) && reports >= 3 {
                break;
            }
        }
        // A drain count is no full count: a status still has none.
        assert_eq!(counter.latest().of("web", 1), None);

        drop(registration);
        tokio::time::sleep(Duration::from_millis(200)).await;
        while counts.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            counts.try_recv().is_err(),
            "a forgotten generation was counted"
        );
        assert_eq!(counter.fresh(Duration::ZERO).await.of("web", 1), None);
    }

    #[test]
    fn group_members_lists_the_live_processes_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let database = TcpListener::bind(loopback(0)).unwrap();
        let service = spawn_service(
            &dir.path().join("a.sock"),
            &dir.path().join("b.sock"),
            database.local_addr().unwrap().port(),
        );
        let pgid = service.pgid;
        let mut expected = vec![pgid, service.helper_pid];
        expected.sort_unstable();
        assert_eq!(group_members(pgid), expected);
        assert!(!group_members(nix::unistd::getpgrp().as_raw()).contains(&pgid));
        assert!(group_members(0).is_empty());

        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        // The service's main process stays a zombie until `Service` is dropped: zombies
        // are not members.
        assert_eventually("killed group", Vec::<i32>::new(), || group_members(pgid));
        assert_eq!(
            count_connections(&Members::Group(pgid), &tcp(&[loopback(service.port)])).unwrap(),
            0
        );
    }

    #[test]
    fn proc_net_unix_lines() {
        let contents = b"Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 21080 /run/web.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 21233 /run/web.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 21234\n\
            0000000000000000: 00000003 00000000 00000000 0005 03  9999 /run/with space.sock\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 21100 /run/dgram.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 21300 @abstract\n";
        assert_eq!(
            parse_proc_net_unix(contents),
            vec![
                UnixConnection {
                    inode: 21233,
                    path: b"/run/web.sock".to_vec()
                },
                UnixConnection {
                    inode: 9999,
                    path: b"/run/with space.sock".to_vec()
                },
                UnixConnection {
                    inode: 21300,
                    path: b"@abstract".to_vec()
                },
            ]
        );
    }

    #[test]
    fn local_address_matching() {
        let mapped = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 80));
        assert!(accepted_from(&[loopback(80)], mapped));
        assert!(accepted_from(
            &[SocketAddr::from((Ipv6Addr::UNSPECIFIED, 80))],
            mapped
        ));
        assert!(!accepted_from(&[loopback(81)], mapped));
        assert!(!accepted_from(
            &[SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 80))],
            loopback(80)
        ));
    }
}
