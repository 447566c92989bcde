//! One client connection, TCP or unix, behind a single type so the worker
//! loop is written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::{FailureKind, Target};

pub(crate) enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    pub(crate) async fn open(
        target: &Target,
        timeout: Duration,
    ) -> Result<Connection, FailureKind> {
        let connecting = async {
            match target {
                Target::Tcp(address) => {
                    let stream = TcpStream::connect(address).await?;
                    // Requests are written whole; Nagle would only delay them.
                    stream.set_nodelay(true)?;
                    Ok(Connection::Tcp(stream))
                }
                Target::Unix(path) => UnixStream::connect(path).await.map(Connection::Unix),
            }
        };
        match tokio::time::timeout(timeout, connecting).await {
            Err(_) => Err(FailureKind::ConnectTimeout),
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(match error.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                    FailureKind::ConnectRefused
                }
                io::ErrorKind::TimedOut => FailureKind::ConnectTimeout,
                _ => FailureKind::ConnectError,
            }),
        }
    }
}

/// What an I/O error on an established connection means for the report.
pub(crate) fn classify_io_error(error: &io::Error) -> FailureKind {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => FailureKind::Reset,
        io::ErrorKind::UnexpectedEof => FailureKind::EofBeforeResponse,
        _ => FailureKind::Io,
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_read(context, buffer),
            Connection::Unix(stream) => Pin::new(stream).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_write(context, buffer),
            Connection::Unix(stream) => Pin::new(stream).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_flush(context),
            Connection::Unix(stream) => Pin::new(stream).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_shutdown(context),
            Connection::Unix(stream) => Pin::new(stream).poll_shutdown(context),
        }
    }
}
