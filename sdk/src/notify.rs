//! Telling the supervisor (baton's agent, or systemd) about the service's
//! state through the unix datagram socket named in `NOTIFY_SOCKET`:
//! `READY=1`, `STATUS=`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=`, `MAINPID=`,
//! and baton's own `X_BATON_RESTART=1` (restart this service; see
//! `docs/notify.md`), which [`Notifier::restart_on_signal`] sends when the
//! service gets SIGUSR2, so `kill -USR2 <pid>` habits keep working.
//!
//! The messages are those of the `sd-notify` crate ([`NotifyState`]); the
//! datagram is sent here rather than with `sd_notify::notify` for two
//! reasons: that function reads `NOTIFY_SOCKET` again on every call, so a
//! [`Notifier`] could not be pointed at a socket of its own (a test's), and it
//! takes only a path, where libsystemd also takes `@name` for a socket in the
//! abstract namespace. A text that would break the one-line-per-field format
//! (a newline in a status) is made harmless before it is sent.
//!
//! ```
//! use baton_sdk::notify::Notifier;
//!
//! # fn main() -> Result<(), baton_sdk::notify::Error> {
//! let notifier = Notifier::from_env()?;
//! notifier.ready_with_status("serving")?;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

pub use sd_notify::NotifyState;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `NOTIFY_SOCKET` names no socket: neither an absolute path nor
    /// `@abstract`.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor @abstract")]
    InvalidSocket(OsString),
    /// Sending the datagram failed (the supervisor is gone, or its queue is
    /// full).
    #[error("sending to the notify socket: {0}")]
    Send(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Where notifications go, or nowhere when no supervisor asked for them
/// (then every message is dropped without error, as libsystemd does).
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`; unset or empty, notifications go nowhere. A
    /// value that can name no socket is refused here, at start, rather than
    /// at the first message.
    pub fn from_env() -> Result<Notifier, Error> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) if !value.is_empty() => Notifier::to(value),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// Notifications to the socket at `address`: an absolute path, or
    /// `@name` in the abstract namespace.
    pub fn to(address: impl Into<OsString>) -> Result<Notifier, Error> {
        let address = address.into();
        let bytes = address.as_encoded_bytes();
        let target = match bytes.first() {
            Some(b'/') => Target::Path(PathBuf::from(&address)),
            Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
            _ => return Err(Error::InvalidSocket(address)),
        };
        Ok(Notifier {
            target: Some(target),
        })
    }

    /// Notifications that go nowhere.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Whether a supervisor listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: the service answers on its sockets. Under baton this is
    /// what lets the previous generation go.
    pub fn ready(&self) -> Result<(), Error> {
        self.send(&[NotifyState::Ready])
    }

    /// `READY=1` with a status line, in one datagram.
    pub fn ready_with_status(&self, status: &str) -> Result<(), Error> {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))])
    }

    /// `STATUS=`: a line of text the supervisor shows (baton: in `status`
    /// and the dashboard, cut to 256 bytes).
    pub fn status(&self, status: &str) -> Result<(), Error> {
        self.send(&[NotifyState::Status(&one_line(status))])
    }

    /// `STOPPING=1`: the service has begun its graceful exit.
    pub fn stopping(&self) -> Result<(), Error> {
        self.send(&[NotifyState::Stopping])
    }

    /// `EXTEND_TIMEOUT_USEC=`: asks for `by` more time than the current
    /// timeout (starting, or stopping), counted from now. Longer than about
    /// 71 minutes is sent as the most the field holds.
    pub fn extend_timeout(&self, by: Duration) -> Result<(), Error> {
        let micros = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(micros)])
    }

    /// `MAINPID=`: the process the supervisor should treat as the service's
    /// main one (after the first process forked the server and is about to
    /// exit).
    pub fn main_pid(&self, pid: u32) -> Result<(), Error> {
        self.send(&[NotifyState::MainPid(pid)])
    }

    /// `X_BATON_RESTART=1`: asks baton's agent to hot-restart this service,
    /// with a reason for its history. The agent takes it only from the
    /// serving generation, while no restart runs, at most once every 10 s;
    /// the restart's report says which generation and pid asked. systemd
    /// ignores it.
    pub fn request_restart(&self, reason: Option<&str>) -> Result<(), Error> {
        let reason = reason.map(|r| format!("X_BATON_RESTART_REASON={}", one_line(r)));
        let mut states = vec![NotifyState::Custom("X_BATON_RESTART=1")];
        if let Some(reason) = &reason {
            states.push(NotifyState::Custom(reason));
        }
        self.send(&states)
    }

    /// Asks for a restart ([`Notifier::request_restart`]) each time this
    /// process gets `signal` (SIGUSR2 is the habit), until the returned task
    /// is aborted. Opt-in: without it the signal keeps its usual meaning.
    /// Must be called inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use baton_sdk::notify::Notifier;
    /// use tokio::signal::unix::SignalKind;
    ///
    /// let notifier = Notifier::from_env().expect("NOTIFY_SOCKET");
    /// let _restarts = notifier.restart_on_signal(SignalKind::user_defined2())?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn restart_on_signal(
        &self,
        signal: tokio::signal::unix::SignalKind,
    ) -> io::Result<tokio::task::JoinHandle<()>> {
        let mut signals = tokio::signal::unix::signal(signal)?;
        let notifier = self.clone();
        Ok(tokio::spawn(async move {
            while signals.recv().await.is_some() {
                // The agent may be gone for a moment (upgrading, restarting):
                // the next signal tries again.
                let _ = notifier.request_restart(Some("signal received"));
            }
        }))
    }

    /// Any states, in one datagram. A `Status` or `Custom` text must hold
    /// no newline; the methods above see to it.
    pub fn send(&self, states: &[NotifyState<'_>]) -> Result<(), Error> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let message: String = states.iter().map(|state| format!("{state}\n")).collect();
        // A socket of its own per message, as libsystemd does: nothing is
        // kept open, and a supervisor that restarted is found again.
        let socket = UnixDatagram::unbound()?;
        match target {
            Target::Path(path) => socket.send_to(message.as_bytes(), path)?,
            Target::Abstract(name) => {
                let address = SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &address)?
            }
        };
        Ok(())
    }
}

/// A status is one line of the message: a newline in it would start a
/// field of its own (`STATUS=x\nREADY=1`).
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(path).unwrap();
        (dir, socket, notifier)
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let length = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..length].to_vec()).unwrap()
    }

    #[test]
    fn each_call_sends_the_lines_of_the_protocol() {
        let (_dir, socket, notifier) = supervisor();
        notifier.ready_with_status("serving").unwrap();
        assert_eq!(received(&socket), "READY=1\nSTATUS=serving\n");
        notifier.stopping().unwrap();
        assert_eq!(received(&socket), "STOPPING=1\n");
        notifier.extend_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(received(&socket), "EXTEND_TIMEOUT_USEC=5000000\n");
        notifier.main_pid(1234).unwrap();
        assert_eq!(received(&socket), "MAINPID=1234\n");
        notifier.ready().unwrap();
        assert_eq!(received(&socket), "READY=1\n");
    }

    #[test]
    fn a_restart_request_names_its_reason_on_a_line_of_its_own() {
        let (_dir, socket, notifier) = supervisor();
        notifier.request_restart(None).unwrap();
        assert_eq!(received(&socket), "X_BATON_RESTART=1\n");
        notifier
            .request_restart(Some("config changed\nREADY=1"))
            .unwrap();
        assert_eq!(
            received(&socket),
            "X_BATON_RESTART=1\nX_BATON_RESTART_REASON=config changed READY=1\n"
        );
    }

    #[tokio::test]
    async fn sigusr2_asks_for_a_restart_once_opted_in() {
        let (_dir, socket, notifier) = supervisor();
        let task = notifier
            .restart_on_signal(tokio::signal::unix::SignalKind::user_defined2())
            .unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        let received = tokio::task::spawn_blocking(move || {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            received(&socket)
        })
        .await
        .unwrap();
        assert_eq!(
            received,
            "X_BATON_RESTART=1\nX_BATON_RESTART_REASON=signal received\n"
        );
        task.abort();
    }

    #[test]
    fn a_status_cannot_smuggle_another_field() {
        let (_dir, socket, notifier) = supervisor();
        notifier.status("loading\nREADY=1").unwrap();
        assert_eq!(received(&socket), "STATUS=loading READY=1\n");
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_name() {
        let name = format!("baton-sdk-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        Notifier::to(format!("@{name}"))
            .unwrap()
            .stopping()
            .unwrap();
        assert_eq!(received(&socket), "STOPPING=1\n");
    }

    #[test]
    fn a_relative_path_is_refused_and_no_supervisor_is_no_error() {
        assert!(matches!(
            Notifier::to("notify.sock"),
            Err(Error::InvalidSocket(_))
        ));
        let nowhere = Notifier::disabled();
        assert!(!nowhere.is_enabled());
        nowhere.ready().unwrap();
    }
}
