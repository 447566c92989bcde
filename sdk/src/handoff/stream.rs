//! The connections that travel: TCP or unix stream sockets.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection received from the predecessor, by the kind the kernel says
/// its descriptor is.
#[derive(Debug)]
pub enum Stream {
    /// An `AF_INET` or `AF_INET6` stream socket.
    Tcp(tokio::net::TcpStream),
    /// An `AF_UNIX` stream socket.
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// Wraps a connected stream socket; anything else is refused.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        if sockopt::socket_type(&fd)? != SocketType::STREAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a stream socket",
            ));
        }
        let domain = sockopt::socket_domain(&fd)?;
        if sockopt::socket_acceptconn(&fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a listening socket, not a connection",
            ));
        }
        rustix::io::ioctl_fionbio(&fd, true)?;
        if domain == AddressFamily::INET || domain == AddressFamily::INET6 {
            let stream = std::net::TcpStream::from(fd);
            Ok(Stream::Tcp(tokio::net::TcpStream::from_std(stream)?))
        } else if domain == AddressFamily::UNIX {
            let stream = std::os::unix::net::UnixStream::from(fd);
            Ok(Stream::Unix(tokio::net::UnixStream::from_std(stream)?))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither TCP nor a unix stream",
            ))
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(stream) => stream.as_fd(),
            Stream::Unix(stream) => stream.as_fd(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}
