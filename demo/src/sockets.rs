//! Where the service's sockets come from: inherited through systemd socket
//! activation (the normal case under baton), or bound by the demo itself with
//! `--bind` (the "naive restart" baseline a benchmark compares against).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixListener;

use listenfd::ListenFd;
use socket2::{Domain, SockRef, Socket, Type};

/// The systemd protocol numbers inherited fds from 3.
const FIRST_INHERITED_FD: usize = 3;

/// What `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` said, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// One name per inherited fd; systemd's default name is `unknown`.
    pub names: Vec<String>,
}

/// Why the activation environment was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationRejected {
    /// `LISTEN_FDS` is unset: not socket activated at all.
    NotActivated,
    /// The fds were meant for another process (a parent that did not clear the
    /// variables); like libsystemd, they are not ours to touch.
    OtherPid { listen_pid: String },
    /// `LISTEN_FDS` is not a number.
    InvalidCount(String),
}

impl Activation {
    /// Checks the activation variables the way libsystemd's `sd_listen_fds`
    /// does: `LISTEN_PID` must be present and equal to our pid.
    pub fn parse(
        listen_fds: Option<&str>,
        listen_pid: Option<&str>,
        listen_fdnames: Option<&str>,
        our_pid: u32,
    ) -> Result<Activation, ActivationRejected> {
        let Some(listen_fds) = listen_fds else {
            return Err(ActivationRejected::NotActivated);
        };
        let count: usize = listen_fds
            .trim()
            .parse()
            .map_err(|_| ActivationRejected::InvalidCount(listen_fds.to_owned()))?;
        let listen_pid = listen_pid.unwrap_or_default();
        if listen_pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return Err(ActivationRejected::OtherPid {
                listen_pid: listen_pid.to_owned(),
            });
        }
        let given: Vec<&str> = listen_fdnames
            .map(|names| names.split(':').collect())
            .unwrap_or_default();
        let names = (0..count)
            .map(|index| match given.get(index) {
                Some(name) if !name.is_empty() => (*name).to_owned(),
                _ => "unknown".to_owned(),
            })
            .collect();
        Ok(Activation { names })
    }
}

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

/// Takes the sockets passed by socket activation.
///
/// Must run before any other thread exists: `listenfd` removes `LISTEN_FDS`
/// and `LISTEN_PID` from the environment (so that our own children would not
/// believe the fds are theirs), and changing the environment is only sound
/// while the process is single-threaded.
pub fn take_inherited() -> Inherited {
    let mut inherited = Inherited::default();
    let listen_fds = std::env::var("LISTEN_FDS").ok();
    let listen_pid = std::env::var("LISTEN_PID").ok();
    let listen_fdnames = std::env::var("LISTEN_FDNAMES").ok();
    let activation = match Activation::parse(
        listen_fds.as_deref(),
        listen_pid.as_deref(),
        listen_fdnames.as_deref(),
        std::process::id(),
    ) {
        Ok(activation) => activation,
        Err(ActivationRejected::NotActivated) => return inherited,
        Err(rejected) => {
            inherited
                .notes
                .push(format!("ignoring inherited fds: {rejected:?}"));
            return inherited;
        }
    };
    let mut listen_fd = ListenFd::from_env();
    if listen_fd.len() != activation.names.len() {
        inherited.notes.push(format!(
            "LISTEN_FDS announced {} fds but {} were usable",
            activation.names.len(),
            listen_fd.len()
        ));
    }
    for (index, name) in activation.names.iter().enumerate().take(listen_fd.len()) {
        let fd = FIRST_INHERITED_FD + index;
        match take_one(&mut listen_fd, index) {
            Ok(socket) => inherited.sockets.push(NamedSocket {
                name: name.clone(),
                socket,
            }),
            Err(reason) => inherited
                .notes
                .push(format!("ignoring inherited fd {fd} ({name}): {reason}")),
        }
    }
    inherited
}

/// `listenfd` checks that the fd is a socket (`fstat` `S_IFSOCK`) of the
/// right type and family and leaves it in place when it is not, so each kind
/// is tried in turn; the listening state is checked here because a stream
/// socket that was bound but never `listen`ed would fail every accept.
fn take_one(listen_fd: &mut ListenFd, index: usize) -> Result<ServiceSocket, String> {
    if let Ok(Some(listener)) = listen_fd.take_tcp_listener(index) {
        check_stream_listener(&SockRef::from(&listener))?;
        return Ok(ServiceSocket::Tcp(listener));
    }
    if let Ok(Some(listener)) = listen_fd.take_unix_listener(index) {
        check_stream_listener(&SockRef::from(&listener))?;
        return Ok(ServiceSocket::Unix(listener));
    }
    if let Ok(Some(socket)) = listen_fd.take_udp_socket(index) {
        let socket_type = SockRef::from(&socket)
            .r#type()
            .map_err(|error| error.to_string())?;
        if socket_type != Type::DGRAM {
            return Err(format!("unexpected socket type {socket_type:?}"));
        }
        return Ok(ServiceSocket::Udp(socket));
    }
    Err("not a TCP or unix stream listener, nor a UDP socket".to_owned())
}

fn check_stream_listener(socket: &SockRef<'_>) -> Result<(), String> {
    let socket_type = socket.r#type().map_err(|error| error.to_string())?;
    if socket_type != Type::STREAM {
        return Err(format!("unexpected socket type {socket_type:?}"));
    }
    match socket.is_listener() {
        Ok(true) => Ok(()),
        Ok(false) => Err("stream socket is not listening".to_owned()),
        Err(error) => Err(format!("cannot read SO_ACCEPTCONN: {error}")),
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
    fn accepts_fds_meant_for_us_and_names_them() {
        let activation = Activation::parse(Some("3"), Some("42"), Some("http:admin"), 42).unwrap();
        assert_eq!(activation.names, ["http", "admin", "unknown"]);
    }

    #[test]
    fn ignores_fds_meant_for_another_process() {
        assert_eq!(
            Activation::parse(Some("1"), Some("41"), None, 42),
            Err(ActivationRejected::OtherPid {
                listen_pid: "41".to_owned()
            })
        );
        assert!(matches!(
            Activation::parse(Some("1"), None, None, 42),
            Err(ActivationRejected::OtherPid { .. })
        ));
        assert_eq!(
            Activation::parse(None, Some("42"), None, 42),
            Err(ActivationRejected::NotActivated)
        );
        assert!(matches!(
            Activation::parse(Some("two"), Some("42"), None, 42),
            Err(ActivationRejected::InvalidCount(_))
        ));
    }

    #[test]
    fn bind_tcp_listens_on_an_ephemeral_port() {
        let listener = bind_tcp("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert_ne!(address.port(), 0);
        std::net::TcpStream::connect(address).unwrap();
        assert!(SockRef::from(&listener).reuse_address().unwrap());
    }
}
