//! The crate's only `unsafe`: taking ownership of the descriptor named by
//! `BATON_CHANNEL_FD`, and removing that variable. Everything else goes
//! through safe wrappers (`rustix`, `std`, `listenfd`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{AddressFamily, SocketType};

/// Set by the first attempt to take the channel, whatever its outcome: a
/// descriptor number is never taken twice by this process.
static CHANNEL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Why the inherited channel could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeError {
    /// This process took it before.
    #[error("it was taken already")]
    AlreadyTaken,
    /// A standard stream (0, 1, 2) or a negative number.
    #[error("fd {0} is a standard stream or negative")]
    Reserved(RawFd),
    /// Not open, or not a socket.
    #[error("fd {0} is not an open socket")]
    NotASocket(RawFd),
    /// A socket of another kind.
    #[error("fd {0} is not an AF_UNIX SOCK_SEQPACKET socket")]
    WrongKind(RawFd),
    /// The kernel could not say what it is, or not prepare it.
    #[error("fd {fd}: {source}")]
    Inspect {
        /// The descriptor.
        fd: RawFd,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// Takes the inherited descriptor `fd` as the generation's channel: checked
/// to be open and a socket, then an `AF_UNIX` `SOCK_SEQPACKET` socket, made
/// close-on-exec and non-blocking.
pub(crate) fn take_inherited_channel(fd: RawFd) -> Result<OwnedFd, TakeError> {
    if fd < 3 {
        return Err(TakeError::Reserved(fd));
    }
    if CHANNEL_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(TakeError::AlreadyTaken);
    }
    // Asked of the kernel without touching the descriptor: an fd number
    // that is closed, not a socket, or a unix socket of another type is
    // never wrapped at all.
    let inode = match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(target) => socket_inode(&target.to_string_lossy()).ok_or(TakeError::NotASocket(fd))?,
        Err(_) => return Err(TakeError::NotASocket(fd)),
    };
    if unix_socket_type(inode).is_some_and(|kind| kind != UNIX_SEQPACKET) {
        return Err(TakeError::WrongKind(fd));
    }
    // SAFETY: `fd` is open (the kernel just listed it), a socket, and was
    // inherited at exec for this purpose: the agent names it in
    // `BATON_CHANNEL_FD`, and nothing else in the process claims it (the
    // flag above makes this the only time this process wraps it). Should it
    // still prove not to be the channel (a socket `/proc/net/unix` does not
    // list), ownership is given back with `into_raw_fd` before anything
    // could close it, so a descriptor that is someone else's is left
    // untouched.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let kind = rustix::net::sockopt::socket_type(&owned)
        .and_then(|kind| Ok((kind, rustix::net::sockopt::socket_domain(&owned)?)));
    match kind {
        Ok((SocketType::SEQPACKET, AddressFamily::UNIX)) => {}
        Ok(_) => {
            let _ = owned.into_raw_fd();
            return Err(TakeError::WrongKind(fd));
        }
        Err(error) => {
            let _ = owned.into_raw_fd();
            return Err(TakeError::Inspect {
                fd,
                source: error.into(),
            });
        }
    }
    let prepare = || -> io::Result<()> {
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
        rustix::io::ioctl_fionbio(&owned, true)?;
        Ok(())
    };
    prepare().map_err(|source| TakeError::Inspect { fd, source })?;
    Ok(owned)
}

/// `SOCK_SEQPACKET` in `/proc/net/unix`'s `Type` column.
const UNIX_SEQPACKET: u32 = 5;

/// The inode of `socket:[INODE]`, the link of a socket's descriptor.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The type of the unix socket `inode` as `/proc/net/unix` lists it (`None`
/// when it does not: not a unix socket, or not of this network namespace).
fn unix_socket_type(inode: u64) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table.lines().skip(1).find_map(|line| {
        // Num RefCount Protocol Flags Type St Inode [Path]
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listed: u64 = fields.get(6)?.parse().ok()?;
        (listed == inode).then(|| u32::from_str_radix(fields.get(4)?, 16).ok())?
    })
}

/// Removes `name` from the environment when that is sound: only while the
/// process has a single thread (no other thread can read the environment
/// meanwhile). Says whether it did.
pub(crate) fn remove_env_if_single_threaded(name: &str) -> bool {
    if !is_single_threaded() {
        return false;
    }
    // SAFETY: the kernel counts one thread in this process, this one, so no
    // other thread reads or writes the environment during the call; only
    // this thread could start one, and it is busy here.
    #[allow(clippy::disallowed_methods)]
    unsafe {
        std::env::remove_var(name);
    }
    true
}

fn is_single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|count| count.trim().parse::<u32>().ok())
        })
        == Some(1)
}

/// Registers an owned descriptor with tokio's reactor.
pub(crate) fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`: it stays open, and `as_raw_fd`
    // returns the same number, until the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|error| error.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: RawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        socket_inode(&link.to_string_lossy()).unwrap()
    }

    #[test]
    fn the_kernel_tells_a_seqpacket_pair_from_other_unix_sockets_before_anything_is_wrapped() {
        let (seqpacket, _other) = crate::handoff::seqpacket_pair().unwrap();
        let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            unix_socket_type(inode_of(seqpacket.as_raw_fd())),
            Some(UNIX_SEQPACKET)
        );
        assert_eq!(unix_socket_type(inode_of(stream.as_raw_fd())), Some(1));
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("socket:[12]"), Some(12));
    }
}
