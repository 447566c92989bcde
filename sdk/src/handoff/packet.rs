//! One datagram at a time on an `AF_UNIX` `SOCK_SEQPACKET` socket, with at
//! most one descriptor (`SCM_RIGHTS`), never blocking; the callers wait for
//! readiness with tokio's `AsyncFd`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// What one receive found.
#[derive(Debug)]
pub(crate) enum Datagram {
    /// A message of `length` bytes at the start of the buffer, with the
    /// descriptors that came with it (closed when dropped).
    Message {
        length: usize,
        fds: Vec<OwnedFd>,
        /// The message or its descriptors did not fit: it is malformed.
        truncated: bool,
    },
    /// The other end is closed (or this end's reading was shut down and the
    /// queue is empty).
    End,
    /// Nothing queued.
    Empty,
}

/// Room for two descriptors: a message that carries more than one is
/// recognised (and its descriptors closed), not mistaken for one with one.
const FDS_ROOM: usize = 2;

/// Receives one datagram without waiting.
pub(crate) fn recv(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<Datagram> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_ROOM))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buffer)];
    let received = match rustix::net::recvmsg(
        socket,
        &mut iov,
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(received) => received,
        Err(rustix::io::Errno::AGAIN) => return Ok(Datagram::Empty),
        Err(rustix::io::Errno::INTR) => return Ok(Datagram::Empty),
        Err(error) => return Err(error.into()),
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let truncated = received
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
    if received.bytes == 0 && fds.is_empty() && !truncated {
        return Ok(Datagram::End);
    }
    Ok(Datagram::Message {
        length: received.bytes.min(iov[0].len()),
        fds,
        truncated,
    })
}

/// Sends one datagram, with `fd` as `SCM_RIGHTS` when given, without
/// waiting (`WouldBlock` when the peer's queue is full) and without
/// `SIGPIPE` (`BrokenPipe` when the peer is gone or shut its reading).
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?;
    if sent != bytes.len() {
        // A SEQPACKET datagram goes whole or not at all; this is a bug.
        return Err(io::Error::other("a datagram went out in part"));
    }
    Ok(())
}

/// Waits until `fd` can take a datagram, then sends it.
pub(crate) async fn send_async(
    socket: &tokio::io::unix::AsyncFd<OwnedFd>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    loop {
        let mut ready = socket.writable().await?;
        match ready.try_io(|inner| send(inner.get_ref().as_fd(), bytes, fd)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Makes a connected `AF_UNIX` `SOCK_SEQPACKET` pair, close-on-exec and
/// non-blocking: the handoff pair and the generation's channel as the agent
/// makes them, for tests and for a supervisor of your own.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (first, second) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )?;
    Ok((first, second))
}

/// Whether `fd` is an `AF_UNIX` `SOCK_SEQPACKET` socket.
pub(crate) fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    matches!(
        (
            rustix::net::sockopt::socket_type(fd),
            rustix::net::sockopt::socket_domain(fd)
        ),
        (
            Ok(rustix::net::SocketType::SEQPACKET),
            Ok(rustix::net::AddressFamily::UNIX)
        )
    )
}

/// Waits for a datagram and receives it.
pub(crate) async fn recv_async(
    socket: &tokio::io::unix::AsyncFd<OwnedFd>,
    buffer: &mut [u8],
) -> io::Result<Datagram> {
    loop {
        let mut ready = socket.readable().await?;
        match recv(socket.get_ref().as_fd(), buffer)? {
            Datagram::Empty => ready.clear_ready(),
            other => return Ok(other),
        }
    }
}
