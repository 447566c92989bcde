//! `sd_notify`: tell the supervisor (baton-agent or systemd) about our state
//! through the unix datagram socket named in `NOTIFY_SOCKET`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram as StdUnixDatagram};

use tokio::net::UnixDatagram;

/// A connected datagram socket to the supervisor, or nothing when we were not
/// started by one (then every message is silently dropped, like libsystemd).
#[derive(Debug)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
}

impl Notifier {
    /// No supervisor: messages go nowhere.
    pub fn disabled() -> Self {
        Notifier { socket: None }
    }

    /// Connects to `NOTIFY_SOCKET` when set. A leading `@` names a socket in
    /// the abstract namespace. Must be called inside a tokio runtime.
    pub fn from_env() -> io::Result<Self> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) if !value.is_empty() => Self::connect(value.to_str().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?),
            _ => Ok(Self::disabled()),
        }
    }

    /// Connects to a notify socket given as `NOTIFY_SOCKET` would give it.
    pub fn connect(notify_socket: &str) -> io::Result<Self> {
        let address = match notify_socket.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None if notify_socket.starts_with('/') => SocketAddr::from_pathname(notify_socket)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "NOTIFY_SOCKET {notify_socket:?} is neither an absolute path nor @abstract"
                    ),
                ));
            }
        };
        let socket = StdUnixDatagram::unbound()?;
        socket.connect_addr(&address)?;
        // A supervisor that stops reading must not stall a runtime worker.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket: Some(UnixDatagram::from_std(socket)?),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one message, such as `READY=1\nSTATUS=serving`.
    pub async fn notify(&self, message: &str) -> io::Result<()> {
        match &self.socket {
            Some(socket) => socket.send(message.as_bytes()).await.map(|_| ()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_to_a_path_socket() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("notify.sock");
        let supervisor = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
        notifier.notify("READY=1\nSTATUS=serving").await.unwrap();
        let mut buffer = [0u8; 128];
        let length = supervisor.recv(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..length], b"READY=1\nSTATUS=serving");
    }

    #[tokio::test]
    async fn sends_to_an_abstract_socket() {
        let name = format!("baton-demo-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let supervisor = StdUnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier::connect(&format!("@{name}")).unwrap();
        notifier.notify("STOPPING=1").await.unwrap();
        let mut buffer = [0u8; 64];
        let length = supervisor.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1");
    }

    #[tokio::test]
    async fn a_relative_path_is_refused_and_absence_is_silent() {
        assert!(Notifier::connect("relative.sock").is_err());
        Notifier::disabled().notify("READY=1").await.unwrap();
    }
}
