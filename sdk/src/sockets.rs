//! The service's sockets by name: inherited from baton (or systemd) through
//! `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, or bound by the service
//! itself when it runs on its own.
//!
//! Each inherited descriptor is checked with the kernel (`SO_DOMAIN`,
//! `SO_TYPE`, `SO_ACCEPTCONN`) before it is handed out as a typed socket, so
//! a configuration that gives a UDP socket where the code expects a TCP
//! listener fails at start with an error naming both, instead of failing
//! every `accept`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;

use listenfd::ListenFd;
use socket2::{Domain, Socket, Type};

/// The systemd protocol passes descriptors from 3 on.
const FIRST_FD: usize = 3;
/// The backlog of a listener the service binds itself.
const FALLBACK_BACKLOG: i32 = 1024;

/// Why a socket could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A variable of the protocol holds something it cannot.
    #[error("{variable}={value:?}: {problem}")]
    InvalidEnvironment {
        /// `LISTEN_FDS` or `LISTEN_FDNAMES`.
        variable: &'static str,
        /// What it holds.
        value: String,
        /// Why that cannot be.
        problem: String,
    },
    /// No inherited socket goes by this name (or every one that did was
    /// already taken), and no fallback address was given for it.
    #[error("no socket named {name:?} (inherited: {available:?})")]
    Missing {
        /// The name asked for.
        name: String,
        /// The names still available.
        available: Vec<String>,
    },
    /// The socket of that name is of another kind than asked for.
    #[error("socket {name:?} (fd {fd}) is a {found}, not a {expected}")]
    WrongKind {
        /// The name asked for.
        name: String,
        /// Its descriptor number.
        fd: usize,
        /// What the caller asked for: `TCP listener`, `UDP socket`, ...
        expected: &'static str,
        /// What the kernel says it is.
        found: Kind,
    },
    /// A socket could not be registered with the tokio runtime.
    #[error("handing socket {name:?} to tokio: {source}")]
    Tokio {
        /// The socket's name.
        name: String,
        /// What failed.
        source: io::Error,
    },
    /// Asking the kernel about an inherited socket failed.
    #[error("reading the kind of fd {fd} ({name:?}): {source}")]
    Inspect {
        /// Its name in `LISTEN_FDNAMES`.
        name: String,
        /// Its descriptor number.
        fd: usize,
        /// The failed `getsockopt`.
        source: io::Error,
    },
    /// Binding the fallback address failed.
    #[error("binding {address} for {name:?}: {source}")]
    Bind {
        /// The socket's name.
        name: String,
        /// The fallback address given with [`Listeners::or_bind`].
        address: String,
        /// Why the bind failed.
        source: io::Error,
    },
}

/// A socket's address family, as the kernel reports it (`SO_DOMAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Family {
    /// IPv4.
    Inet,
    /// IPv6 (which may also carry IPv4 unless `IPV6_V6ONLY`).
    Inet6,
    /// A unix domain socket.
    Unix,
    /// Anything else (netlink, packet, vsock, ...), with its number.
    Other(i32),
}

/// A socket's type, as the kernel reports it (`SO_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `SOCK_STREAM`: TCP, or a unix stream socket.
    Stream,
    /// `SOCK_DGRAM`: UDP, or a unix datagram socket.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
    /// Anything else, with its number.
    Other(i32),
}

/// What an inherited socket really is, read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `SO_DOMAIN`.
    pub family: Family,
    /// `SO_TYPE`.
    pub transport: Transport,
    /// `SO_ACCEPTCONN`: whether `listen` was called on it.
    pub listening: bool,
}

impl Kind {
    /// Asks the kernel.
    pub fn of(socket: &Socket) -> io::Result<Kind> {
        let family = match socket.domain()? {
            Domain::IPV4 => Family::Inet,
            Domain::IPV6 => Family::Inet6,
            Domain::UNIX => Family::Unix,
            other => Family::Other(other.into()),
        };
        let transport = match socket.r#type()? {
            Type::STREAM => Transport::Stream,
            Type::DGRAM => Transport::Datagram,
            Type::SEQPACKET => Transport::SeqPacket,
            other => Transport::Other(other.into()),
        };
        // Only connection-oriented sockets listen; the others answer EINVAL
        // or 0 depending on the kernel, and are never listeners.
        let listening = match transport {
            Transport::Stream | Transport::SeqPacket => socket.is_listener()?,
            _ => false,
        };
        Ok(Kind {
            family,
            transport,
            listening,
        })
    }

    fn is_inet(&self) -> bool {
        matches!(self.family, Family::Inet | Family::Inet6)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.family, self.transport, self.listening) {
            (Family::Inet | Family::Inet6, Transport::Stream, true) => "TCP listener",
            (Family::Inet | Family::Inet6, Transport::Stream, false) => {
                "TCP socket that is not listening"
            }
            (Family::Inet | Family::Inet6, Transport::Datagram, _) => "UDP socket",
            (Family::Unix, Transport::Stream, true) => "unix stream listener",
            (Family::Unix, Transport::Stream, false) => "unix stream socket that is not listening",
            (Family::Unix, Transport::Datagram, _) => "unix datagram socket",
            (Family::Unix, Transport::SeqPacket, true) => "unix seqpacket listener",
            (Family::Unix, Transport::SeqPacket, false) => "unix seqpacket socket",
            (family, transport, _) => {
                return write!(f, "{family:?} {transport:?} socket");
            }
        };
        f.write_str(what)
    }
}

/// Where the sockets came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// Inherited from the supervisor: `LISTEN_PID` named this process.
    Inherited,
    /// No `LISTEN_FDS`: the service runs on its own and binds its fallbacks.
    NotActivated,
    /// `LISTEN_FDS` was set for another process (`LISTEN_PID` names it, or
    /// is missing): a parent that did not clear its variables. As libsystemd
    /// does, the descriptors are not touched and the fallbacks are bound.
    MeantForAnother {
        /// `LISTEN_PID` as found.
        listen_pid: Option<String>,
    },
}

/// One inherited socket.
#[derive(Debug)]
struct Entry {
    name: String,
    fd: usize,
    kind: Kind,
    socket: Socket,
}

/// The service's sockets, by name.
///
/// Take each socket once with [`tcp`](Listeners::tcp),
/// [`udp`](Listeners::udp), [`unix`](Listeners::unix) (or
/// [`unix_datagram`](Listeners::unix_datagram), [`socket`](Listeners::socket)).
/// Several inherited sockets may share a name (an IPv4 and an IPv6 listener
/// both named `http`): each call takes the next one.
///
/// Outside baton ([`Source::NotActivated`]), a name is bound from the
/// fallback address given with [`or_bind`](Listeners::or_bind). Under baton
/// a fallback is never bound: a name the agent did not pass is an error, as a
/// generation must never bind an address the agent manages.
///
/// ```
/// use baton_sdk::sockets::Listeners;
///
/// # fn main() -> Result<(), baton_sdk::sockets::Error> {
/// let mut listeners = Listeners::from_env()?.or_bind("http", "127.0.0.1:0");
/// let http = listeners.tcp("http")?;
/// assert_ne!(http.local_addr().unwrap().port(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Listeners {
    source: Source,
    entries: Vec<Entry>,
    fallbacks: BTreeMap<String, String>,
}

/// The variables of the protocol, as read.
#[derive(Debug, Default, Clone)]
struct Variables {
    listen_fds: Option<String>,
    listen_pid: Option<String>,
    listen_fdnames: Option<String>,
}

/// What the variables say once checked: how many descriptors, and the name
/// of each.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Take(Vec<String>),
    Skip(Source),
}

impl Variables {
    fn from_env() -> Variables {
        Variables {
            listen_fds: std::env::var("LISTEN_FDS").ok(),
            listen_pid: std::env::var("LISTEN_PID").ok(),
            listen_fdnames: std::env::var("LISTEN_FDNAMES").ok(),
        }
    }

    /// As libsystemd's `sd_listen_fds_with_names`: the descriptors are ours
    /// only if `LISTEN_PID` is our pid; `LISTEN_FDNAMES`, when set, names
    /// every one of them.
    fn plan(&self, our_pid: u32) -> Result<Plan, Error> {
        let Some(listen_fds) = &self.listen_fds else {
            return Ok(Plan::Skip(Source::NotActivated));
        };
        if self.listen_pid.as_deref().map(str::trim) != Some(our_pid.to_string().as_str()) {
            return Ok(Plan::Skip(Source::MeantForAnother {
                listen_pid: self.listen_pid.clone(),
            }));
        }
        let count: usize = listen_fds
            .trim()
            .parse()
            .map_err(|_| Error::InvalidEnvironment {
                variable: "LISTEN_FDS",
                value: listen_fds.clone(),
                problem: "not a number of descriptors".to_owned(),
            })?;
        let names: Vec<String> = match &self.listen_fdnames {
            Some(names) if count > 0 => names.split(':').map(str::to_owned).collect(),
            _ => vec!["unknown".to_owned(); count],
        };
        if names.len() != count {
            return Err(Error::InvalidEnvironment {
                variable: "LISTEN_FDNAMES",
                value: self.listen_fdnames.clone().unwrap_or_default(),
                problem: format!("{} names for {count} descriptors", names.len()),
            });
        }
        Ok(Plan::Take(names))
    }
}

impl Listeners {
    /// Takes the sockets passed by baton (or systemd).
    ///
    /// When `LISTEN_PID` is this process, each descriptor from 3 on is
    /// checked to be a socket, made close-on-exec (children never inherit
    /// it), and its kind read from the kernel; `LISTEN_FDS` and `LISTEN_PID`
    /// are then removed from the environment, so that a child does not
    /// believe the descriptors are its own (`LISTEN_FDNAMES` stays; it
    /// means nothing without them).
    ///
    /// Call it first in `main`, before any thread starts (before a tokio
    /// runtime): changing the environment is sound only while the process
    /// has one thread. (Taking ownership of these descriptors, and that
    /// removal, are done by the `listenfd` crate.) A descriptor that is not a socket (one an
    /// earlier generation kept with `FDSTORE=1`) is left as it is.
    ///
    /// Without `LISTEN_FDS`, or with one meant for another process, there is
    /// nothing to take: [`source`](Listeners::source) says which, and the
    /// fallbacks of [`or_bind`](Listeners::or_bind) are bound instead.
    pub fn from_env() -> Result<Listeners, Error> {
        let names = match Variables::from_env().plan(std::process::id())? {
            Plan::Take(names) => names,
            Plan::Skip(source) => return Ok(Listeners::empty(source)),
        };
        let mut fds = ListenFd::from_env();
        let mut entries = Vec::with_capacity(names.len());
        for (index, name) in names.into_iter().enumerate() {
            let fd = index + FIRST_FD;
            match take_socket(&mut fds, index) {
                Ok(socket) => {
                    let kind = Kind::of(&socket).map_err(|source| Error::Inspect {
                        name: name.clone(),
                        fd,
                        source,
                    })?;
                    entries.push(Entry {
                        name,
                        fd,
                        kind,
                        socket,
                    });
                }
                // Not a socket: a descriptor an earlier generation stored
                // (`FDSTORE=1`), left as it is; asking for it by name
                // answers `Missing`.
                Err(_) => continue,
            }
        }
        Ok(Listeners {
            source: Source::Inherited,
            entries,
            fallbacks: BTreeMap::new(),
        })
    }

    fn empty(source: Source) -> Listeners {
        Listeners {
            source,
            entries: Vec::new(),
            fallbacks: BTreeMap::new(),
        }
    }

    /// Where the sockets came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Whether the sockets were inherited (running under baton or systemd).
    pub fn is_inherited(&self) -> bool {
        self.source == Source::Inherited
    }

    /// The address to bind for `name` when the service runs on its own
    /// (no `LISTEN_FDS` for this process). Ignored under baton.
    ///
    /// For [`tcp`](Listeners::tcp) and [`udp`](Listeners::udp) it is a
    /// `HOST:PORT` ([`ToSocketAddrs`]: the first address it resolves to is
    /// bound); for [`unix`](Listeners::unix) and
    /// [`unix_datagram`](Listeners::unix_datagram) a path. A TCP listener is
    /// bound with `SO_REUSEADDR` (never `SO_REUSEPORT`) and a backlog of
    /// 1024; a stale unix socket file nobody listens on is replaced.
    #[must_use]
    pub fn or_bind(mut self, name: impl Into<String>, address: impl Into<String>) -> Listeners {
        self.fallbacks.insert(name.into(), address.into());
        self
    }

    /// The names and kinds of the inherited sockets not taken yet, in
    /// descriptor order.
    pub fn inherited(&self) -> impl Iterator<Item = (&str, Kind)> {
        self.entries.iter().map(|e| (e.name.as_str(), e.kind))
    }

    /// The TCP listener named `name`.
    pub fn tcp(&mut self, name: &str) -> Result<TcpListener, Error> {
        if let Some(socket) = self.take(name, "TCP listener", |k| {
            k.is_inet() && k.transport == Transport::Stream && k.listening
        })? {
            return Ok(socket.into());
        }
        let address = self.fallback(name)?;
        bind_tcp(&address).map_err(|source| Error::Bind {
            name: name.to_owned(),
            address,
            source,
        })
    }

    /// The UDP socket named `name`.
    pub fn udp(&mut self, name: &str) -> Result<UdpSocket, Error> {
        if let Some(socket) = self.take(name, "UDP socket", |k| {
            k.is_inet() && k.transport == Transport::Datagram
        })? {
            return Ok(socket.into());
        }
        let address = self.fallback(name)?;
        resolve(&address)
            .and_then(UdpSocket::bind)
            .map_err(|source| Error::Bind {
                name: name.to_owned(),
                address,
                source,
            })
    }

    /// The unix stream listener named `name`.
    pub fn unix(&mut self, name: &str) -> Result<UnixListener, Error> {
        if let Some(socket) = self.take(name, "unix stream listener", |k| {
            k.family == Family::Unix && k.transport == Transport::Stream && k.listening
        })? {
            return Ok(socket.into());
        }
        let address = self.fallback(name)?;
        bind_unix(Path::new(&address)).map_err(|source| Error::Bind {
            name: name.to_owned(),
            address,
            source,
        })
    }

    /// The unix datagram socket named `name`.
    pub fn unix_datagram(&mut self, name: &str) -> Result<UnixDatagram, Error> {
        if let Some(socket) = self.take(name, "unix datagram socket", |k| {
            k.family == Family::Unix && k.transport == Transport::Datagram
        })? {
            return Ok(socket.into());
        }
        let address = self.fallback(name)?;
        UnixDatagram::bind(&address).map_err(|source| Error::Bind {
            name: name.to_owned(),
            address,
            source,
        })
    }

    /// The inherited socket named `name`, whatever its kind, with that kind.
    /// No fallback is bound for it.
    pub fn socket(&mut self, name: &str) -> Result<(Socket, Kind), Error> {
        match self.entries.iter().position(|e| e.name == name) {
            Some(index) => {
                let entry = self.entries.remove(index);
                Ok((entry.socket, entry.kind))
            }
            None => Err(self.missing(name)),
        }
    }

    /// Takes the first inherited socket named `name`; `None` when there is
    /// none and a fallback may be bound.
    fn take(
        &mut self,
        name: &str,
        expected: &'static str,
        fits: impl Fn(&Kind) -> bool,
    ) -> Result<Option<Socket>, Error> {
        let Some(index) = self.entries.iter().position(|e| e.name == name) else {
            return Ok(None);
        };
        let entry = &self.entries[index];
        if !fits(&entry.kind) {
            return Err(Error::WrongKind {
                name: name.to_owned(),
                fd: entry.fd,
                expected,
                found: entry.kind,
            });
        }
        Ok(Some(self.entries.remove(index).socket))
    }

    /// The fallback address of `name`, only when running on our own.
    fn fallback(&self, name: &str) -> Result<String, Error> {
        match (&self.source, self.fallbacks.get(name)) {
            (Source::Inherited, _) | (_, None) => Err(self.missing(name)),
            (_, Some(address)) => Ok(address.clone()),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::Missing {
            name: name.to_owned(),
            available: self.entries.iter().map(|e| e.name.clone()).collect(),
        }
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Listeners {
    /// [`tcp`](Listeners::tcp) as a tokio listener. Must be called within a
    /// tokio runtime.
    pub fn tokio_tcp(&mut self, name: &str) -> Result<tokio::net::TcpListener, Error> {
        let listener = self.tcp(name)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|source| tokio_error(name, source))
    }

    /// [`udp`](Listeners::udp) as a tokio socket. Must be called within a
    /// tokio runtime.
    pub fn tokio_udp(&mut self, name: &str) -> Result<tokio::net::UdpSocket, Error> {
        let socket = self.udp(name)?;
        socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UdpSocket::from_std(socket))
            .map_err(|source| tokio_error(name, source))
    }

    /// [`unix`](Listeners::unix) as a tokio listener. Must be called within
    /// a tokio runtime.
    pub fn tokio_unix(&mut self, name: &str) -> Result<tokio::net::UnixListener, Error> {
        let listener = self.unix(name)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
            .map_err(|source| tokio_error(name, source))
    }
}

/// Tokio needs the socket non-blocking, and a runtime to register it with.
#[cfg(feature = "tokio")]
fn tokio_error(name: &str, source: io::Error) -> Error {
    Error::Tokio {
        name: name.to_owned(),
        source,
    }
}

/// `listenfd` checks that the descriptor is a socket of the family and type
/// asked for (IPv6 passes for IPv4) before taking it, and leaves it in place
/// otherwise; each kind this library knows is tried in turn, and the kernel
/// is asked for the real kind afterwards.
fn take_socket(fds: &mut ListenFd, index: usize) -> io::Result<Socket> {
    let kinds = [
        (Domain::IPV4, Type::STREAM, "inet stream socket"),
        (Domain::IPV4, Type::DGRAM, "inet datagram socket"),
        (Domain::UNIX, Type::STREAM, "unix stream socket"),
        (Domain::UNIX, Type::DGRAM, "unix datagram socket"),
        (Domain::UNIX, Type::SEQPACKET, "unix seqpacket socket"),
    ];
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no descriptor at this index");
    for (family, transport, hint) in kinds {
        match fds.take_custom::<Socket>(index, family.into(), transport.into(), hint) {
            Ok(Some(socket)) => return Ok(socket),
            Ok(None) => return Err(last),
            Err(error) => last = error,
        }
    }
    Err(last)
}

fn resolve(address: &str) -> io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    })
}

/// `SO_REUSEADDR` lets a service restarted outside baton bind while its
/// predecessor's connections sit in TIME_WAIT; unlike `SO_REUSEPORT` it
/// does not let two processes listen at once.
fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    let resolved = resolve(address)?;
    let socket = Socket::new(Domain::for_address(resolved), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&resolved.into())?;
    socket.listen(FALLBACK_BACKLOG)?;
    Ok(socket.into())
}

/// A socket file left by a process that is gone refuses every connection;
/// it is replaced. One somebody listens on is not.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => match UnixStream::connect(path) {
            Err(refused) if refused.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?;
                UnixListener::bind(path)
            }
            _ => Err(error),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> Variables {
        Variables {
            listen_fds: fds.map(str::to_owned),
            listen_pid: pid.map(str::to_owned),
            listen_fdnames: names.map(str::to_owned),
        }
    }

    #[test]
    fn descriptors_are_taken_only_when_listen_pid_is_this_process() {
        let cases: &[(Variables, Plan)] = &[
            (
                vars(Some("2"), Some("42"), Some("http:dns")),
                Plan::Take(vec!["http".into(), "dns".into()]),
            ),
            (
                vars(Some("2"), Some("42"), None),
                Plan::Take(vec!["unknown".into(), "unknown".into()]),
            ),
            (
                vars(None, Some("42"), Some("http")),
                Plan::Skip(Source::NotActivated),
            ),
            (
                vars(Some("1"), Some("41"), None),
                Plan::Skip(Source::MeantForAnother {
                    listen_pid: Some("41".into()),
                }),
            ),
            (
                vars(Some("1"), None, None),
                Plan::Skip(Source::MeantForAnother { listen_pid: None }),
            ),
        ];
        for (variables, plan) in cases {
            assert_eq!(&variables.plan(42).unwrap(), plan, "{variables:?}");
        }
    }

    #[test]
    fn a_count_that_is_no_number_or_names_that_do_not_match_are_refused() {
        assert!(matches!(
            vars(Some("two"), Some("42"), None).plan(42),
            Err(Error::InvalidEnvironment {
                variable: "LISTEN_FDS",
                ..
            })
        ));
        let error = vars(Some("2"), Some("42"), Some("http"))
            .plan(42)
            .unwrap_err();
        assert!(matches!(
            error,
            Error::InvalidEnvironment {
                variable: "LISTEN_FDNAMES",
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "LISTEN_FDNAMES=\"http\": 1 names for 2 descriptors"
        );
    }

    fn inherited(entries: Vec<(&str, Socket)>) -> Listeners {
        Listeners {
            source: Source::Inherited,
            entries: entries
                .into_iter()
                .enumerate()
                .map(|(index, (name, socket))| Entry {
                    name: name.to_owned(),
                    fd: index + FIRST_FD,
                    kind: Kind::of(&socket).unwrap(),
                    socket,
                })
                .collect(),
            fallbacks: BTreeMap::new(),
        }
    }

    #[test]
    fn the_kernel_tells_each_kind() {
        let tcp = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
        let udp = Socket::from(UdpSocket::bind("[::1]:0").unwrap());
        let idle = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let (left, _right) = UnixDatagram::pair().unwrap();
        let cases = [
            (tcp, "TCP listener"),
            (udp, "UDP socket"),
            (idle, "TCP socket that is not listening"),
            (Socket::from(left), "unix datagram socket"),
        ];
        for (socket, text) in cases {
            assert_eq!(Kind::of(&socket).unwrap().to_string(), text);
        }
        let udp6 = Socket::from(UdpSocket::bind("[::1]:0").unwrap());
        assert_eq!(Kind::of(&udp6).unwrap().family, Family::Inet6);
    }

    #[test]
    fn a_socket_of_another_kind_is_refused_by_name_and_kind() {
        let udp = Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        let idle = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        idle.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let mut listeners = inherited(vec![("http", udp), ("admin", idle)]);
        let error = listeners.tcp("http").unwrap_err();
        assert_eq!(
            error.to_string(),
            "socket \"http\" (fd 3) is a UDP socket, not a TCP listener"
        );
        assert!(matches!(
            listeners.tcp("admin"),
            Err(Error::WrongKind {
                found: Kind {
                    listening: false,
                    ..
                },
                ..
            })
        ));
        // A refused socket stays available as what it is.
        listeners.udp("http").unwrap();
    }

    #[test]
    fn under_baton_a_missing_name_is_an_error_even_with_a_fallback() {
        let tcp = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
        let mut listeners = inherited(vec![("http", tcp)]).or_bind("admin", "127.0.0.1:0");
        let error = listeners.tcp("admin").unwrap_err();
        assert!(
            matches!(&error, Error::Missing { name, available } if name == "admin" && available == &["http"]),
            "{error}"
        );
        listeners.tcp("http").unwrap();
        assert!(matches!(listeners.tcp("http"), Err(Error::Missing { .. })));
    }

    #[test]
    fn sockets_sharing_a_name_are_taken_one_after_the_other() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let (a, b) = (v4.local_addr().unwrap(), v6.local_addr().unwrap());
        let mut listeners = inherited(vec![("http", v4.into()), ("http", v6.into())]);
        assert_eq!(listeners.tcp("http").unwrap().local_addr().unwrap(), a);
        assert_eq!(listeners.tcp("http").unwrap().local_addr().unwrap(), b);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn tokio_gets_the_same_sockets_ready_to_await() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.sock");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listeners = inherited(vec![("http", tcp.into())])
            .or_bind("dns", "127.0.0.1:0")
            .or_bind("local", path.to_str().unwrap());
        let http = listeners.tokio_tcp("http").unwrap();
        let (accepted, connected) =
            tokio::join!(http.accept(), tokio::net::TcpStream::connect(address));
        accepted.unwrap();
        connected.unwrap();
        // Under baton a fallback is never bound.
        assert!(matches!(
            listeners.tokio_udp("dns"),
            Err(Error::Missing { .. })
        ));
        let mut on_its_own = Listeners::empty(Source::NotActivated)
            .or_bind("dns", "127.0.0.1:0")
            .or_bind("local", path.to_str().unwrap());
        let dns = on_its_own.tokio_udp("dns").unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(b"ping", dns.local_addr().unwrap())
            .await
            .unwrap();
        let mut buffer = [0u8; 8];
        assert_eq!(dns.recv(&mut buffer).await.unwrap(), 4);
        let local = on_its_own.tokio_unix("local").unwrap();
        let (accepted, connected) =
            tokio::join!(local.accept(), tokio::net::UnixStream::connect(&path));
        accepted.unwrap();
        connected.unwrap();
    }

    #[test]
    fn on_its_own_a_service_binds_its_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.sock");
        let mut listeners = Listeners::empty(Source::NotActivated)
            .or_bind("http", "127.0.0.1:0")
            .or_bind("dns", "127.0.0.1:0")
            .or_bind("local", path.to_str().unwrap());
        let http = listeners.tcp("http").unwrap();
        std::net::TcpStream::connect(http.local_addr().unwrap()).unwrap();
        assert!(socket2::SockRef::from(&http).reuse_address().unwrap());
        listeners.udp("dns").unwrap();
        let local = listeners.unix("local").unwrap();
        drop(local);
        // The socket file of a listener that is gone is replaced.
        listeners = listeners.or_bind("again", path.to_str().unwrap());
        let again = listeners.unix("again").unwrap();
        UnixStream::connect(&path).unwrap();
        // One that somebody listens on is not.
        listeners = listeners.or_bind("twice", path.to_str().unwrap());
        assert!(matches!(listeners.unix("twice"), Err(Error::Bind { .. })));
        drop(again);
        assert!(matches!(
            listeners.tcp("nothing"),
            Err(Error::Missing { .. })
        ));
    }
}
