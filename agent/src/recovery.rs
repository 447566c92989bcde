//! An agent started after its predecessor was killed (`kill -9`, OOM)
//! takes over what that agent left running, as its state file describes it
//! (`state.rs`): the generations that survived, their listening sockets,
//! their cgroups, their deadlines and the restart in progress.
//!
//! A generation survived when its pid is alive *and* started at the recorded
//! time (`/proc/PID/stat` field 22): a pid reused since is someone else.
//! Each listening socket is taken from a survivor with `pidfd_open` +
//! `pidfd_getfd` (the kernel's way to copy an fd out of an unrelated
//! process; it needs ptrace rights over it: root, or CAP_SYS_PTRACE, or the
//! same user where Yama allows it) and is used only if its inode is the
//! recorded one. An address a survivor holds is never bound again.
//!
//! The survivors are no longer the agent's children: their exit is seen on
//! their pidfd, without a status.

use crate::config::{Config, ListenAddr, ServiceConfig};
use crate::handover::{GenerationHandover, ServiceHandover};
use crate::reaper::{ExitInfo, ExitWatch};
use crate::sockets::BoundSocket;
use crate::state::AgentState;
use rustix::process::{Pid as RustixPid, PidfdFlags, PidfdGetfdFlags};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// When a process started, in clock ticks since boot: field 22 of
/// `/proc/PID/stat`. `None` for a process that is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/PID/stat` line. The command (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are
/// counted after its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the command.
    after_command.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The parent of a process: field 4 of `/proc/PID/stat`.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_command = stat[stat.rfind(')')? + 1..].to_string();
            after_command.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

/// Whether a process of group `pgid` runs (zombies do not count). Walks
/// `/proc`: asked only for generations taken over from a killed agent.
pub fn group_has_running(pgid: i32) -> bool {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let after_command = stat[stat.rfind(')')? + 1..].to_string();
                let mut fields = after_command.split_whitespace();
                let state = fields.next()?;
                // Fields 4 and 5: the parent and the process group.
                let group = fields.nth(1)?.parse::<i32>().ok()?;
                Some(state != "Z" && group == pgid)
            })
            .unwrap_or(false)
    })
}

/// Whether `pid` is the very process that started at `started`.
pub fn alive_as(pid: i32, started: Option<u64>) -> bool {
    pid > 0 && started.is_some() && start_time(pid) == started
}

/// Why a socket could not be taken from a surviving generation.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("pid {pid} holds no socket with inode {inode} any more (looked in /proc/{pid}/fd)")]
    NotHeld { pid: i32, inode: u64 },
    #[error(
        "not allowed to take fd {fd} of pid {pid} ({source}): pidfd_getfd needs ptrace rights \
         over the process: run the agent as root, or give it CAP_SYS_PTRACE, or as the \
         generation's own user with /proc/sys/kernel/yama/ptrace_scope at 0"
    )]
    NotPermitted {
        pid: i32,
        fd: RawFd,
        source: std::io::Error,
    },
    #[error("could not take fd {fd} of pid {pid}: {source}")]
    Failed {
        pid: i32,
        fd: RawFd,
        source: std::io::Error,
    },
    #[error("fd {fd} of pid {pid} is inode {found}, not the recorded {inode}")]
    WrongInode {
        pid: i32,
        fd: RawFd,
        inode: u64,
        found: u64,
    },
}

/// The fd number under which `pid` holds the socket with this inode.
pub fn fd_of_socket(pid: i32, inode: u64) -> Option<RawFd> {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == &*wanted)
        })
        .and_then(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Copies the socket with this inode out of `pid`.
pub fn take_socket(pid: i32, inode: u64) -> Result<OwnedFd, TakeError> {
    let fd = fd_of_socket(pid, inode).ok_or(TakeError::NotHeld { pid, inode })?;
    let failed = |source: rustix::io::Errno| {
        let source = std::io::Error::from(source);
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            TakeError::NotPermitted { pid, fd, source }
        } else {
            TakeError::Failed { pid, fd, source }
        }
    };
    let process = RustixPid::from_raw(pid).ok_or(TakeError::NotHeld { pid, inode })?;
    let pidfd = rustix::process::pidfd_open(process, PidfdFlags::empty()).map_err(failed)?;
    // The copy is close-on-exec, as every fd of the agent is.
    let taken =
        rustix::process::pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).map_err(failed)?;
    let found = std::fs::metadata(format!("/proc/self/fd/{}", taken.as_raw_fd()))
        .map(|m| m.ino())
        .map_err(|source| TakeError::Failed { pid, fd, source })?;
    if found != inode {
        return Err(TakeError::WrongInode {
            pid,
            fd,
            inode,
            found,
        });
    }
    Ok(taken)
}

/// The inode of an open socket fd.
pub fn inode_of(fd: RawFd) -> Option<u64> {
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|m| m.ino())
}

/// Watches a process that is not the agent's child: its pidfd becomes
/// readable when it exits. A process already gone is reported at once.
pub fn watch_stranger(pid: i32, started: Option<u64>) -> ExitWatch {
    let (sender, receiver) = tokio::sync::watch::channel(None);
    let opened = RustixPid::from_raw(pid)
        .ok_or(rustix::io::Errno::SRCH)
        .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::NONBLOCK))
        .map_err(std::io::Error::from)
        // Checked after the pidfd is open: from then on the pid cannot be
        // reused, so the pidfd is the generation's.
        .and_then(|pidfd| match started {
            Some(_) if !alive_as(pid, started) => Err(std::io::Error::other("pid reused")),
            _ => Ok(pidfd),
        })
        .and_then(crate::sys::async_fd);
    match opened {
        Ok(pidfd) => {
            tokio::spawn(async move {
                let _ = pidfd.readable().await;
                sender.send_replace(Some(ExitInfo::Unknown));
            });
        }
        Err(e) => {
            tracing::debug!(pid, error = %e, "recovered process already gone");
            sender.send_replace(Some(ExitInfo::Unknown));
        }
    }
    receiver
}

/// What was taken over from a killed agent.
#[derive(Default)]
pub struct Recovered {
    /// Listening sockets taken from survivors, by (service, socket).
    pub sockets: HashMap<(String, String), Arc<BoundSocket>>,
    /// Per service still configured, what survived of it.
    pub services: HashMap<String, ServiceHandover>,
    /// Services that cannot start: a survivor holds their address and its
    /// socket could not be taken.
    pub blocked: HashMap<String, String>,
}

/// Whether a generation recorded in the state file still runs.
fn survived(generation: &GenerationHandover) -> bool {
    if alive_as(generation.pid, generation.start_time) {
        return true;
    }
    // Its first process handed over to a main process and exited.
    generation.main_pid.is_some_and(|main| {
        generation.start_time.is_some()
            && generation.cgroup.is_some()
            && crate::cgroup::of_pid(main) == generation.cgroup
    })
}

/// Takes over what a dead agent's state says survived it, for the services
/// `config` still has. Generations of services no longer configured are
/// asked to stop.
pub fn recover(state: &AgentState, config: &Config) -> Recovered {
    let mut recovered = Recovered::default();
    for service in &state.services {
        let survivors: Vec<GenerationHandover> = service
            .generations
            .iter()
            .filter(|g| survived(g))
            .cloned()
            .collect();
        if survivors.is_empty() {
            continue;
        }
        let Some(configured) = config.services.iter().find(|s| s.name == service.name) else {
            tracing::warn!(service = %service.name, "service no longer configured; stopping what the killed agent left of it");
            for generation in &survivors {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(generation.pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            continue;
        };
        match take_sockets(service, &survivors, configured) {
            Ok(sockets) => {
                for (name, bound) in sockets {
                    recovered
                        .sockets
                        .insert((service.name.clone(), name), Arc::new(bound));
                }
                let mut kept = service.clone();
                kept.generations = survivors;
                kept.fd_store.clear();
                recovered.services.insert(service.name.clone(), kept);
            }
            Err(reason) => {
                tracing::error!(service = %service.name, %reason, "cannot take over the service's sockets; it does not start");
                recovered.blocked.insert(service.name.clone(), reason);
            }
        }
    }
    recovered
}

/// Every recorded socket still configured the same way, taken from the
/// survivors (the serving generation first).
fn take_sockets(
    service: &ServiceHandover,
    survivors: &[GenerationHandover],
    configured: &ServiceConfig,
) -> Result<Vec<(String, BoundSocket)>, String> {
    let mut order: Vec<&GenerationHandover> = survivors.iter().collect();
    order.sort_by_key(|g| Some(g.number) != service.current);
    let mut taken = Vec::new();
    for socket in &service.sockets {
        let Some(config) = configured
            .sockets
            .iter()
            .find(|c| c.name == socket.name && c.listen.to_string() == socket.configured)
        else {
            continue;
        };
        let Some(inode) = socket.inode else { continue };
        let mut last_error = None;
        let found = order.iter().find_map(|generation| {
            let pids = std::iter::once(generation.pid).chain(generation.main_pid);
            pids.filter_map(|pid| match take_socket(pid, inode) {
                Ok(fd) => Some((pid, fd)),
                Err(e) => {
                    last_error = Some(e);
                    None
                }
            })
            .next()
        });
        match found {
            Some((pid, fd)) => {
                let bound = BoundSocket::adopt(config, fd).map_err(|e| {
                    format!(
                        "socket {:?} taken from pid {pid} is unusable: {e}",
                        socket.name
                    )
                })?;
                tracing::info!(service = %service.name, socket = %socket.name, pid, inode, "listening socket taken over from a surviving generation");
                taken.push((socket.name.clone(), bound));
            }
            None => {
                // Whether a survivor still holds it decides: bound by
                // nobody, it is bound afresh.
                if let Some(e) = last_error
                    && !matches!(e, TakeError::NotHeld { .. })
                {
                    return Err(format!(
                        "socket {:?} on {} is held by a surviving generation: {e}",
                        socket.name, config.listen
                    ));
                }
            }
        }
    }
    Ok(taken)
}

/// Who holds a listening socket on `addr`, when binding it failed: the
/// socket's inode from `/proc/net/*`, then the processes that have it open.
pub fn holders_of(addr: &ListenAddr) -> Vec<(i32, String)> {
    let inodes = listening_inodes(addr);
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut holders = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
        });
        if holds {
            let command = command_line(&process.path().join("cmdline"));
            holders.push((pid, command));
        }
    }
    holders
}

/// The longest command line of a holder that a status shows.
const COMMAND_SHOWN: usize = 160;

/// A process's command line as one short line: arguments joined by spaces,
/// control characters replaced, cut at [`COMMAND_SHOWN`] bytes (a command
/// line may be megabytes; it goes into a status the server is sent).
fn command_line(path: &std::path::Path) -> String {
    use std::io::Read as _;
    let mut raw = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(COMMAND_SHOWN as u64 + 1).read_to_end(&mut raw);
    }
    let cut = raw.len() > COMMAND_SHOWN;
    raw.truncate(COMMAND_SHOWN);
    let text: String = String::from_utf8_lossy(&raw)
        .chars()
        .map(|c| {
            if c == '\0' {
                ' '
            } else if c.is_control() {
                '?'
            } else {
                c
            }
        })
        .collect();
    let text = text.trim().to_string();
    if cut { format!("{text}…") } else { text }
}

/// Inodes of the sockets listening on (or, for UDP, bound to) `addr`.
fn listening_inodes(addr: &ListenAddr) -> Vec<u64> {
    match addr {
        ListenAddr::Tcp(a) | ListenAddr::Udp(a) => {
            let (file, listening) = match (addr, a.is_ipv4()) {
                (ListenAddr::Tcp(_), true) => ("/proc/net/tcp", "0A"),
                (ListenAddr::Tcp(_), false) => ("/proc/net/tcp6", "0A"),
                (_, true) => ("/proc/net/udp", "07"),
                (_, false) => ("/proc/net/udp6", "07"),
            };
            let text = std::fs::read_to_string(file).unwrap_or_default();
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
                    let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
                    (*state == listening && port == a.port()).then(|| inode.parse().ok())?
                })
                .collect()
        }
        ListenAddr::Unix(path) => {
            let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.get(7).map(std::path::Path::new) == Some(path.as_path()))
                        .then(|| fields.get(6)?.parse().ok())?
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_holders_command_line_is_one_short_harmless_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        let mut raw = b"python3\0-m\0http.server\0\x1b[31mred\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 1 << 20));
        std::fs::write(&path, raw).unwrap();
        let shown = command_line(&path);
        assert!(
            shown.starts_with("python3 -m http.server ?[31mred??x"),
            "{shown}"
        );
        assert!(
            shown.len() <= COMMAND_SHOWN + '…'.len_utf8(),
            "{} bytes",
            shown.len()
        );
        assert!(shown.ends_with('…'));
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn the_start_time_is_field_22_even_when_the_command_has_spaces_and_parentheses() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 12345678 300 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (short) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn a_live_process_is_itself_only_with_its_own_start_time() {
        let own = std::process::id() as i32;
        let started = start_time(own);
        assert!(started.is_some());
        assert!(alive_as(own, started));
        // The same pid with another start time is a reused pid.
        assert!(!alive_as(own, started.map(|t| t + 1)));
        assert!(!alive_as(own, None));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let child_started = start_time(pid);
        child.wait().unwrap();
        assert!(!alive_as(pid, child_started), "a reaped process is gone");
    }

    #[test]
    fn a_zombie_is_not_running_and_its_group_is_empty() {
        let mut child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!running(pid), "exited, not reaped yet: a zombie");
        assert!(!group_has_running(pid));
        assert!(start_time(pid).is_some(), "the zombie is still there");
        child.wait().unwrap();
        let own = std::process::id() as i32;
        assert!(running(own));
        assert!(group_has_running(nix::unistd::getpgrp().as_raw()));
    }

    #[test]
    fn a_socket_is_taken_from_another_process_only_with_its_recorded_inode() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(listener.as_raw_fd()).unwrap();
        // This process stands in for the generation: pidfd_getfd on itself
        // needs the same rights as on a generation the agent started.
        let own = std::process::id() as i32;
        let taken = take_socket(own, inode).expect("taken");
        assert_eq!(inode_of(taken.as_raw_fd()), Some(inode));
        let flags = nix::fcntl::fcntl(&taken, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & libc::FD_CLOEXEC != 0);
        assert!(matches!(
            take_socket(own, inode + 1_000_000),
            Err(TakeError::NotHeld { .. })
        ));
        let addr = listener.local_addr().unwrap();
        let holders = holders_of(&ListenAddr::Tcp(addr));
        assert!(holders.iter().any(|(pid, _)| *pid == own), "{holders:?}");
    }
}
