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
    // that is closed, or not a socket, is never wrapped at all.
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(target) if target.to_string_lossy().starts_with("socket:") => {}
        _ => return Err(TakeError::NotASocket(fd)),
    }
    // SAFETY: `fd` is open (the kernel just listed it) and was inherited at
    // exec for this purpose: the agent names it in `BATON_CHANNEL_FD`, and
    // nothing else in the process claims it (the flag above makes this the
    // only time this process wraps it). If it proves not to be the channel,
    // ownership is given back with `into_raw_fd` before anything could
    // close it, so a descriptor that is someone else's is left untouched.
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
