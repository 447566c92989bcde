//! The old generation's side: offer connections to the successor, and know
//! for each one who owns it (`docs/handoff.md`, "Who owns a connection").

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::channel::Channel;
use super::packet::{self, Datagram};
use super::wire::{HEADER_LENGTH, Message, Status};

/// How long one connection waits for its acknowledgement.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(1);

/// Why a connection was not taken; it is still the caller's.
#[derive(Debug)]
#[non_exhaustive]
pub enum NotTaken {
    /// The exit has not begun: connections are handed over only while
    /// draining.
    NotDraining,
    /// No successor takes connections (none declared `HANDOFF=1`, not
    /// started by baton, or the agent brokered no pair).
    NoSuccessor,
    /// The offering is over: its window (half the drain timeout) passed, an
    /// acknowledgement came late, or the successor went away.
    Closed,
    /// The successor refused it (no room, unknown listener, ...).
    Refused,
    /// No acknowledgement within a second; the offering closed, and this
    /// one was not among those acknowledged.
    NoAnswer,
    /// `buffer` or `state` (or the name) is over the protocol's bounds.
    TooLarge,
    /// The connection could not be sent.
    Send(io::Error),
}

impl std::fmt::Display for NotTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotTaken::NotDraining => f.write_str("the exit has not begun"),
            NotTaken::NoSuccessor => f.write_str("no successor takes connections"),
            NotTaken::Closed => f.write_str("the handoff is over"),
            NotTaken::Refused => f.write_str("the successor refused it"),
            NotTaken::NoAnswer => f.write_str("the successor did not answer in time"),
            NotTaken::TooLarge => f.write_str("buffer, state or name over its bound"),
            NotTaken::Send(error) => write!(f, "sending it failed: {error}"),
        }
    }
}

/// A connection given back by [`hand_over`](crate::shutdown::ShutdownHandle::hand_over):
/// the caller still owns it and drains it as it would have.
#[derive(Debug)]
pub struct Returned<S> {
    /// The connection, untouched.
    pub stream: S,
    /// Why it came back.
    pub reason: NotTaken,
}

impl<S> std::fmt::Display for Returned<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection not handed over: {}", self.reason)
    }
}

impl<S: std::fmt::Debug> std::error::Error for Returned<S> {}

/// The pair with the successor while connections are offered.
#[derive(Debug)]
pub(crate) struct Offering {
    pair: AsyncFd<OwnedFd>,
    channel: Channel,
    state: Mutex<OfferState>,
    next_id: AtomicU64,
    handed_over: AtomicUsize,
    closed: Notify,
    /// One sender at a time, in arrival order. The pair queues only a few
    /// datagrams (`net.unix.max_dgram_qlen`); without this, every task
    /// offering a connection waits on the pair's writability, and each
    /// freed slot wakes all of them: with 10,000 connections the wakeups
    /// grow with the square of the count.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct OfferState {
    /// Connections sent and not yet answered: `true` taken, `false` not.
    pending: HashMap<u64, oneshot::Sender<bool>>,
    closed: bool,
}

impl Offering {
    /// Starts offering on `pair` until `window_end` at the latest.
    pub(crate) fn start(
        channel: Channel,
        pair: OwnedFd,
        window_end: Instant,
    ) -> io::Result<Arc<Offering>> {
        // A datagram must fit the send buffer whole: make room for the
        // largest connection message even where the default is small.
        // (The kernel caps it at `net.core.wmem_max`; best effort.)
        let _ =
            rustix::net::sockopt::set_socket_send_buffer_size(&pair, 4 * super::wire::MAX_MESSAGE);
        let offering = Arc::new(Offering {
            pair: crate::sys::async_fd(
                pair,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )?,
            channel,
            state: Mutex::default(),
            next_id: AtomicU64::new(1),
            handed_over: AtomicUsize::new(0),
            closed: Notify::new(),
            sending: tokio::sync::Mutex::new(()),
        });
        let reader = offering.clone();
        tokio::spawn(async move { reader.read_acknowledgements().await });
        let timer = offering.clone();
        tokio::spawn(async move {
            let closed = timer.closed.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(window_end) => timer.close(),
                _ = closed => {}
            }
        });
        Ok(offering)
    }

    /// Connections the successor took.
    pub(crate) fn handed_over(&self) -> usize {
        self.handed_over.load(Ordering::Acquire)
    }

    /// Whether connections are still offered.
    pub(crate) fn is_open(&self) -> bool {
        !self.lock().closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OfferState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers one connection and waits for its answer (rule 1 to 4).
    pub(crate) async fn offer<S: AsFd>(
        &self,
        name: &str,
        stream: S,
        buffer: &[u8],
        state: &[u8],
    ) -> Result<(), Returned<S>> {
        let returned = |stream, reason| Err(Returned { stream, reason });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = Message::Connection {
            id,
            name: name.as_bytes().to_vec(),
            buffer: buffer.to_vec(),
            state: state.to_vec(),
        };
        let Ok(bytes) = message.encode() else {
            return returned(stream, NotTaken::TooLarge);
        };
        // Waiting here is waiting for the other connections' sends, not
        // for the successor: it is not held to ACK_WAIT. A close meanwhile
        // is seen below, once this one's turn comes.
        let turn = self.sending.lock().await;
        let mut answer = {
            let mut offer_state = self.lock();
            if offer_state.closed {
                return returned(stream, NotTaken::Closed);
            }
            let (sender, receiver) = oneshot::channel();
            offer_state.pending.insert(id, sender);
            receiver
        };
        let sent = tokio::time::timeout(
            ACK_WAIT,
            packet::send_async(&self.pair, &bytes, Some(stream.as_fd())),
        )
        .await;
        drop(turn);
        let failure = match sent {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(NotTaken::Send(error)),
            Err(_) => Some(NotTaken::NoAnswer),
        };
        if let Some(reason) = failure {
            // Never sent: the successor never saw it.
            self.lock().pending.remove(&id);
            return returned(stream, reason);
        }
        match tokio::time::timeout(ACK_WAIT, &mut answer).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => returned(stream, NotTaken::Refused),
            Ok(Err(_)) => returned(stream, NotTaken::Closed),
            Err(_) => {
                // Rule 4: stop waiting for everyone; what is queued decides.
                self.close();
                match answer.try_recv() {
                    Ok(true) => Ok(()),
                    _ => returned(stream, NotTaken::NoAnswer),
                }
            }
        }
    }

    /// Routes the acknowledgements as they come; closes on end-of-file.
    async fn read_acknowledgements(self: Arc<Self>) {
        let mut buffer = [0u8; HEADER_LENGTH + 1];
        loop {
            let Ok(mut ready) = self.pair.readable().await else {
                self.close();
                return;
            };
            let ended = {
                let mut offer_state = self.lock();
                if offer_state.closed {
                    return;
                }
                self.drain_queue(&mut offer_state, &mut buffer)
            };
            if ended {
                self.close();
                return;
            }
            ready.clear_ready();
        }
    }

    /// Reads every queued acknowledgement, under the state's lock so a
    /// close cannot interleave. Says whether the pair ended.
    fn drain_queue(&self, offer_state: &mut OfferState, buffer: &mut [u8]) -> bool {
        loop {
            match packet::recv(self.pair.get_ref().as_fd(), buffer) {
                Ok(Datagram::Message {
                    length,
                    truncated: false,
                    ..
                }) => {
                    if let Ok(Message::Acknowledgement { id, status }) =
                        Message::decode(&buffer[..length])
                        && let Some(waiter) = offer_state.pending.remove(&id)
                    {
                        let taken = status == Status::Taken;
                        if taken {
                            self.handed_over.fetch_add(1, Ordering::AcqRel);
                        }
                        let _ = waiter.send(taken);
                    }
                }
                // Anything else from the successor is not an answer.
                Ok(Datagram::Message { .. }) => {}
                Ok(Datagram::Empty) => return false,
                Ok(Datagram::End) | Err(_) => return true,
            }
        }
    }

    /// Ends the offering (rules 4 and 5), once: shuts this end's reading so
    /// that the successor's acknowledgements can no longer be sent, reads
    /// the ones that were, gives every other connection back, then sends
    /// `end` and `HANDED_OVER=<n>`.
    pub(crate) fn close(&self) {
        let count = {
            let mut offer_state = self.lock();
            if offer_state.closed {
                return;
            }
            offer_state.closed = true;
            let _ = rustix::net::shutdown(self.pair.get_ref(), rustix::net::Shutdown::Read);
            let mut buffer = [0u8; HEADER_LENGTH + 1];
            self.drain_queue(&mut offer_state, &mut buffer);
            // Dropping the senders answers "not taken".
            offer_state.pending.clear();
            self.handed_over()
        };
        self.closed.notify_waiters();
        if let Ok(end) = Message::End.encode() {
            let _ = packet::send(self.pair.get_ref().as_fd(), &end, None);
        }
        let _ = self.channel.send_text(&format!("HANDED_OVER={count}\n"));
    }
}
