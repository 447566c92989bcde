//! Connection handoff: the established connections of the generation that
//! stops go on, with the bytes it read and did not process, in the
//! generation that replaces it. The client sees nothing: no keep-alive race,
//! no WebSocket cut. The protocol is `docs/handoff.md`; this module speaks
//! both sides of it.
//!
//! **The new generation** declares, before `READY=1`, that it takes
//! connections, and serves what arrives as if it had accepted it, reading
//! [`Incoming::buffer`] before the socket:
//!
//! ```no_run
//! use baton_sdk::handoff::{Channel, Handoff, Stream};
//! use baton_sdk::notify::Notifier;
//!
//! # async fn serve(_: Stream, _: Vec<u8>) {}
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! if let Some(channel) = Channel::from_env()? {
//!     let mut incomings = Handoff::new().accept(&channel)?; // before READY=1
//!     tokio::spawn(async move {
//!         while let Some(incoming) = incomings.recv().await {
//!             tokio::spawn(serve(incoming.stream, incoming.buffer));
//!         }
//!     });
//! }
//! Notifier::from_env()?.ready()?;
//! # Ok(())
//! # }
//! ```
//!
//! **The old generation** hands connections over from its
//! [`Shutdown`](crate::shutdown::Shutdown) coordinator: once the exit has
//! begun, a connection task at a message boundary (between two HTTP
//! requests, after a line, after a WebSocket frame) calls
//! [`ShutdownHandle::hand_over`](crate::shutdown::ShutdownHandle::hand_over).
//! `Ok` means the successor owns the connection: the task drops its copy and
//! ends. `Err` gives the connection back: the task goes on serving and
//! drains it as it would have.
//!
//! ```no_run
//! # use baton_sdk::shutdown::ShutdownHandle;
//! # async fn connection(handle: ShutdownHandle, stream: tokio::net::TcpStream, unread: Vec<u8>) {
//! match handle.hand_over("echo", stream, &unread, b"").await {
//!     Ok(()) => {}                        // the next generation serves it
//!     Err(returned) => {
//!         let _stream = returned.stream;  // still ours: drain it
//!     }
//! }
//! # }
//! ```
//!
//! A connection is never owned by nobody and never by two: the successor
//! owns it only once its acknowledgement was sent, the old generation waits
//! at most a second for that acknowledgement and offers for at most half of
//! its drain timeout, and whatever was not acknowledged stays its own.

mod channel;
mod offer;
mod packet;
mod receive;
mod stream;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

pub use crate::sys::TakeError;
pub use channel::{CHANNEL_FD_VARIABLE, Channel};
pub(crate) use offer::Offering;
pub use offer::{NotTaken, Returned};
pub use packet::seqpacket_pair;
pub use receive::{DEFAULT_CAPACITY, Handoff, Incoming, Incomings};
pub use stream::Stream;
pub use wire::{MAX_BUFFER, MAX_NAME, MAX_STATE};

/// Why the channel or the handoff could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `BATON_CHANNEL_FD` holds no descriptor number.
    #[error("BATON_CHANNEL_FD={0:?} is not a descriptor number")]
    ChannelVariable(String),
    /// The descriptor it names is not the channel.
    #[error("BATON_CHANNEL_FD: {0}")]
    Take(#[from] crate::sys::TakeError),
    /// A descriptor given as a channel is not an `AF_UNIX`
    /// `SOCK_SEQPACKET` socket.
    #[error("the channel is not an AF_UNIX SOCK_SEQPACKET socket")]
    NotSeqpacket,
    /// Sending on the channel failed.
    #[error("sending on the channel: {0}")]
    Channel(#[source] std::io::Error),
    /// Another failure of the system.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
