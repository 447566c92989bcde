//! Where the service's sockets come from: inherited through systemd socket
//! activation (the normal case under baton), or bound by the demo itself with
//! `--bind` (the "naive restart" baseline a benchmark compares against).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixListener;

use baton_sdk::sockets::{Family, Kind, Listeners, Source, Transport};
use socket2::{Domain, Socket, Type};

/// A socket the service serves on.
#[derive(Debug)]
pub enum ServiceSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
    Udp(UdpSocket),
}

/// A socket with the name it goes by in logs.
#[derive(Debug)]
pub struct NamedSocket {
    /// The `LISTEN_FDNAMES` entry, or `bind` for sockets from `--bind`.
    pub name: String,
    pub socket: ServiceSocket,
}

impl NamedSocket {
    /// A printable address: `127.0.0.1:80`, `unix:/run/web.sock`, `udp:0.0.0.0:53`.
    pub fn describe(&self) -> String {
        match &self.socket {
            ServiceSocket::Tcp(listener) => listener
                .local_addr()
                .map(|address| address.to_string())
                .unwrap_or_else(|_| "tcp:?".to_owned()),
            ServiceSocket::Unix(listener) => match listener.local_addr() {
                Ok(address) => match address.as_pathname() {
                    Some(path) => format!("unix:{}", path.display()),
                    None => "unix:(unnamed or abstract)".to_owned(),
                },
                Err(_) => "unix:?".to_owned(),
            },
            ServiceSocket::Udp(socket) => socket
                .local_addr()
                .map(|address| format!("udp:{address}"))
                .unwrap_or_else(|_| "udp:?".to_owned()),
        }
    }
}

/// Inherited sockets, plus what was skipped and why, for the caller to log
/// once logging is set up.
#[derive(Debug, Default)]
pub struct Inherited {
    pub sockets: Vec<NamedSocket>,
    pub notes: Vec<String>,
}

/// Takes the sockets passed by socket activation, with `baton-sdk`: each
/// checked with the kernel, whatever its kind; the demo serves every one it
/// knows how to.
///
/// Must run before any other thread exists: taking them removes
/// `LISTEN_FDS` and `LISTEN_PID` from the environment (so that our own
/// children would not believe the fds are theirs), and changing the
/// environment is only sound while the process is single-threaded.
pub fn take_inherited() -> Inherited {
    let mut inherited = Inherited::default();
    let mut listeners = match Listeners::from_env() {
        Ok(listeners) => listeners,
        Err(error) => {
            inherited
                .notes
                .push(format!("ignoring inherited fds: {error}"));
            return inherited;
        }
    };
    match listeners.source() {
        Source::Inherited => {}
        Source::NotActivated => return inherited,
        other => {
            inherited
                .notes
                .push(format!("ignoring inherited fds: {other:?}"));
            return inherited;
        }
    }
    let names: Vec<String> = listeners
        .inherited()
        .map(|(name, _)| name.to_owned())
        .collect();
    for name in names {
        let Ok((socket, kind)) = listeners.socket(&name) else {
            continue;
        };
        match serve_as(socket, kind) {
            Some(socket) => inherited.sockets.push(NamedSocket { name, socket }),
            None => inherited
                .notes
                .push(format!("ignoring inherited socket {name}: a {kind}")),
        }
    }
    inherited
}

/// A stream socket must be listening, or every accept would fail.
fn serve_as(socket: Socket, kind: Kind) -> Option<ServiceSocket> {
    let inet = matches!(kind.family, Family::Inet | Family::Inet6);
    match (inet, kind.family, kind.transport, kind.listening) {
        (true, _, Transport::Stream, true) => Some(ServiceSocket::Tcp(socket.into())),
        (true, _, Transport::Datagram, _) => Some(ServiceSocket::Udp(socket.into())),
        (false, Family::Unix, Transport::Stream, true) => Some(ServiceSocket::Unix(socket.into())),
        _ => None,
    }
}

/// Binds a TCP listener the way a service that owns its port would: with
/// `SO_REUSEADDR` so that a restarted process can bind while the old one's
/// connections sit in TIME_WAIT. (Unlike `SO_REUSEPORT`, this does not let two
/// processes listen at once: that is exactly the baseline's weakness.)
pub fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    let resolved: SocketAddr = address.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    })?;
    let socket = Socket::new(Domain::for_address(resolved), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&resolved.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_listeners_and_datagram_sockets_but_not_a_stream_that_does_not_listen() {
        let serve = |socket: Socket| {
            let kind = Kind::of(&socket).unwrap();
            serve_as(socket, kind)
        };
        let tcp = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
        assert!(matches!(serve(tcp), Some(ServiceSocket::Tcp(_))));
        let udp = Socket::from(UdpSocket::bind("[::1]:0").unwrap());
        assert!(matches!(serve(udp), Some(ServiceSocket::Udp(_))));
        let idle = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(serve(idle).is_none());
    }

    #[test]
    fn bind_tcp_listens_on_an_ephemeral_port() {
        let listener = bind_tcp("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert_ne!(address.port(), 0);
        std::net::TcpStream::connect(address).unwrap();
        assert!(socket2::SockRef::from(&listener).reuse_address().unwrap());
    }
}
