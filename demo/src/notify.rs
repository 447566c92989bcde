//! `sd_notify`: tell the supervisor (baton-agent or systemd) about our state
//! through the unix datagram socket named in `NOTIFY_SOCKET`, with the
//! `sd-notify` crate. Copy this into a service of your own as it is.

use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use sd_notify::NotifyState;

/// Where notifications go, or nowhere when we were not started by a
/// supervisor (then every message is silently dropped, like libsystemd).
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// No supervisor: messages go nowhere.
    pub fn disabled() -> Self {
        Notifier { enabled: false }
    }

    /// Reads `NOTIFY_SOCKET`. A value that can name no socket (neither an
    /// absolute path nor `@abstract`) is refused at start, not at the first
    /// message, so that a misconfigured service fails where it is seen.
    pub fn from_env() -> io::Result<Self> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) if !value.is_empty() => {
                let text = value.to_str().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
                })?;
                if !(text.starts_with('/') || text.starts_with('@')) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("NOTIFY_SOCKET {text:?} is neither an absolute path nor @abstract"),
                    ));
                }
                Ok(Notifier { enabled: true })
            }
            _ => Ok(Self::disabled()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)])
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)])
    }

    // One datagram on a socket of its own, as sd-notify does: a supervisor
    // that is not reading can at worst delay this send, and the demo sends
    // twice in its life.
    fn send(&self, states: &[NotifyState]) -> io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        match std::env::var("NOTIFY_SOCKET") {
            Ok(value) if value.starts_with('@') => send_abstract(&value[1..], states),
            _ => sd_notify::notify(states),
        }
    }
}

/// sd-notify connects `NOTIFY_SOCKET` as a path only; libsystemd also takes
/// `@name` for a socket in the abstract namespace, so that one case is sent
/// here, in the same format (one `KEY=VALUE` line per state).
fn send_abstract(name: &str, states: &[NotifyState]) -> io::Result<()> {
    let message = format_message(states);
    let address = SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

fn format_message(states: &[NotifyState]) -> String {
    states.iter().map(|state| format!("{state}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abstract_socket_gets_the_lines_sd_notify_would_send() {
        let name = format!("baton-demo-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let supervisor = UnixDatagram::bind_addr(&address).unwrap();
        send_abstract(
            &name,
            &[NotifyState::Stopping, NotifyState::Status("draining")],
        )
        .unwrap();
        let mut buffer = [0u8; 64];
        let length = supervisor.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1\nSTATUS=draining\n");
    }

    #[test]
    fn without_a_supervisor_nothing_is_sent_and_nothing_fails() {
        Notifier::disabled().ready("serving").unwrap();
    }
}
