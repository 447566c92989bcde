//! Binds and holds the listening sockets of the services.
//!
//! The agent binds every socket once and keeps it for its whole life; each
//! generation inherits the same open file description. `SO_REUSEADDR` lets the
//! agent rebind after a restart of its own while old connections linger in
//! TIME_WAIT; `SO_REUSEPORT` is never set, so no other process can bind the
//! same port beside us.

use crate::config::{ListenAddr, SocketConfig};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

#[derive(Debug)]
pub struct BoundSocket {
    pub name: String,
    /// As configured (port 0 stays 0 here).
    pub configured: ListenAddr,
    /// As bound (port 0 resolved to the port the kernel chose).
    pub bound: ListenAddr,
    socket: Socket,
}

impl BoundSocket {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn is_stream(&self) -> bool {
        !matches!(self.bound, ListenAddr::Udp(_))
    }

    /// A socket handed over by the agent's previous image.
    pub fn adopt(config: &SocketConfig, fd: std::os::fd::OwnedFd) -> io::Result<BoundSocket> {
        let socket = Socket::from(fd);
        let bound = match &config.listen {
            ListenAddr::Tcp(_) => ListenAddr::Tcp(local_inet(&socket)?),
            ListenAddr::Udp(_) => ListenAddr::Udp(local_inet(&socket)?),
            ListenAddr::Unix(path) => ListenAddr::Unix(path.clone()),
        };
        Ok(BoundSocket {
            name: config.name.clone(),
            configured: config.listen.clone(),
            bound,
            socket,
        })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let ListenAddr::Unix(path) = &self.bound {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not bind socket {name:?} on {listen}: {source}")]
pub struct BindError {
    pub name: String,
    pub listen: ListenAddr,
    pub source: io::Error,
}

pub fn bind(config: &SocketConfig) -> Result<BoundSocket, BindError> {
    let wrap = |source: io::Error| BindError {
        name: config.name.clone(),
        listen: config.listen.clone(),
        source,
    };
    let (socket, bound) = match &config.listen {
        ListenAddr::Tcp(addr) => {
            // socket2 opens with SOCK_CLOEXEC: only the fork's dup2 passes it on.
            let socket =
                Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(wrap)?;
            socket.set_reuse_address(true).map_err(wrap)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true).map_err(wrap)?;
            }
            socket.bind(&(*addr).into()).map_err(wrap)?;
            socket.listen(config.backlog).map_err(wrap)?;
            let local = local_inet(&socket).map_err(wrap)?;
            (socket, ListenAddr::Tcp(local))
        }
        ListenAddr::Udp(addr) => {
            let socket =
                Socket::new(Domain::for_address(*addr), Type::DGRAM, None).map_err(wrap)?;
            socket.set_reuse_address(true).map_err(wrap)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true).map_err(wrap)?;
            }
            socket.bind(&(*addr).into()).map_err(wrap)?;
            let local = local_inet(&socket).map_err(wrap)?;
            (socket, ListenAddr::Udp(local))
        }
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(path).map_err(wrap)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(wrap)?;
            }
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(wrap)?;
            socket
                .bind(&SockAddr::unix(path).map_err(wrap)?)
                .map_err(wrap)?;
            socket.listen(config.backlog).map_err(wrap)?;
            (socket, ListenAddr::Unix(path.clone()))
        }
    };
    Ok(BoundSocket {
        name: config.name.clone(),
        configured: config.listen.clone(),
        bound,
        socket,
    })
}

fn local_inet(socket: &Socket) -> io::Result<std::net::SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound socket has no inet address"))
}

/// A socket file left by a previous agent blocks bind; anything else at that
/// path is not ours to delete.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_tcp_with_port_zero_and_reports_the_real_port() {
        let socket = bind(&SocketConfig {
            name: "http".into(),
            listen: ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            backlog: 16,
        })
        .unwrap();
        let ListenAddr::Tcp(addr) = socket.bound else {
            panic!()
        };
        assert_ne!(addr.port(), 0);
        // The backlog accepts while nobody calls accept: this is what keeps
        // clients waiting instead of refused between generations.
        std::net::TcpStream::connect(addr).unwrap();
        let flags = nix::fcntl::fcntl(socket.fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & libc::FD_CLOEXEC != 0);
    }

    #[test]
    fn refuses_to_replace_a_live_unix_socket_but_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let config = SocketConfig {
            name: "u".into(),
            listen: ListenAddr::Unix(path.clone()),
            backlog: 16,
        };
        let first = bind(&config).unwrap();
        let err = bind(&config).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
        drop(first);
        assert!(!path.exists(), "dropping the socket removes its file");
        // A crashed agent leaves the file behind with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _second = bind(&config).unwrap();
    }
}
