//! The new generation's side: take the predecessor's connections.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::Error;
use super::channel::{Channel, Pair};
use super::packet::{self, Datagram};
use super::stream::Stream;
use super::wire::{MAX_MESSAGE, Message, Status};

/// How long a connection waits for room in the application's queue before
/// it is refused (and the predecessor keeps it).
const ROOM_WAIT: Duration = Duration::from_millis(200);
/// How long an acknowledgement may wait for room in the predecessor's
/// queue; past it the connection is the predecessor's.
const ACK_SEND_WAIT: Duration = Duration::from_secs(1);
/// The application's queue when it sets none.
pub const DEFAULT_CAPACITY: usize = 1024;

/// A connection the previous generation handed over: serve it as if it
/// had just been accepted on the listener `name`, reading `buffer` before
/// the socket, and skipping any handshake `state` says was done.
#[derive(Debug)]
#[non_exhaustive]
pub struct Incoming {
    /// The `LISTEN_FDNAMES` name of the listener it was accepted on.
    pub name: String,
    /// The connection.
    pub stream: Stream,
    /// Bytes the predecessor read from it and did not process: they come
    /// before anything still to be read from `stream`.
    pub buffer: Vec<u8>,
    /// The application's own state (a protocol marker such as `ws`).
    pub state: Vec<u8>,
}

/// Takes connections from the previous generation; see the
/// [module](super) documentation.
#[derive(Debug, Clone)]
pub struct Handoff {
    capacity: usize,
    names: Option<Vec<String>>,
}

impl Default for Handoff {
    fn default() -> Handoff {
        Handoff::new()
    }
}

impl Handoff {
    /// Any listener's connections, with a queue of [`DEFAULT_CAPACITY`].
    pub fn new() -> Handoff {
        Handoff {
            capacity: DEFAULT_CAPACITY,
            names: None,
        }
    }

    /// How many received connections may wait for the application: a
    /// connection that finds the queue full (for 200 ms) is refused, and
    /// the previous generation keeps serving it.
    pub fn capacity(mut self, capacity: usize) -> Handoff {
        self.capacity = capacity.max(1);
        self
    }

    /// Takes only connections accepted on these listeners; the others are
    /// refused.
    pub fn names<I, S>(mut self, names: I) -> Handoff
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.names = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Declares to the agent that this generation takes connections
    /// (`HANDOFF=1`) and returns the queue they arrive on.
    ///
    /// Call it **before** [`Notifier::ready`](crate::notify::Notifier::ready):
    /// the agent decides whether to broker a handoff when it acts on
    /// `READY=1`, reading what came before it. Must be called within a
    /// tokio runtime.
    pub fn accept(self, channel: &Channel) -> Result<Incomings, Error> {
        channel.send_text("HANDOFF=1\n")?;
        let (sender, receiver) = mpsc::channel(self.capacity);
        let channel = channel.clone();
        tokio::spawn(async move {
            while let Ok(Some(pair)) = channel.predecessor().await {
                // A pair that fails ends like one the predecessor closed:
                // it keeps what it did not see acknowledged.
                let _ = take_from(pair, &sender, self.names.as_deref()).await;
                if sender.is_closed() {
                    break;
                }
            }
        });
        Ok(Incomings { receiver })
    }

    /// [`accept`](Handoff::accept) on [`Channel::from_env`]; `None` when the
    /// process has no channel.
    pub fn accept_from_env(self) -> Result<Option<Incomings>, Error> {
        match Channel::from_env()? {
            Some(channel) => self.accept(&channel).map(Some),
            None => Ok(None),
        }
    }
}

/// The connections handed over to this generation, as they come.
#[derive(Debug)]
pub struct Incomings {
    receiver: mpsc::Receiver<Incoming>,
}

impl Incomings {
    /// The next connection; waits while the predecessor may still hand
    /// some over (for a first generation, as long as the process lives).
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.receiver.recv().await
    }
}

/// Reads one pair until the predecessor sends `end` or goes away.
async fn take_from(
    pair: Pair,
    queue: &mpsc::Sender<Incoming>,
    names: Option<&[String]>,
) -> std::io::Result<()> {
    let pair = crate::sys::async_fd(
        pair.fd,
        tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
    )?;
    let mut buffer = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (length, fds, truncated) = match packet::recv_async(&pair, &mut buffer).await? {
            Datagram::Message {
                length,
                fds,
                truncated,
            } => (length, fds, truncated),
            Datagram::End | Datagram::Empty => return Ok(()),
        };
        let bytes = &buffer[..length];
        let message = if truncated {
            None
        } else {
            Message::decode(bytes).ok()
        };
        let (id, name, connection_buffer, state) = match message {
            Some(Message::End) => return Ok(()),
            Some(Message::Acknowledgement { .. }) => continue,
            Some(Message::Connection {
                id,
                name,
                buffer,
                state,
            }) => (id, name, buffer, state),
            None => {
                // Malformed: refused when it names its connection, and its
                // descriptors (if any) closed.
                drop(fds);
                if let Some(id) = Message::id_in_header(bytes) {
                    acknowledge(&pair, id, Status::Refused).await;
                }
                continue;
            }
        };
        let taken = take(fds, name, names, queue).await;
        let Some((permit, name, stream)) = taken else {
            acknowledge(&pair, id, Status::Refused).await;
            continue;
        };
        // Ours only if this acknowledgement is sent; otherwise the
        // predecessor still owns it and our copy closes here.
        if acknowledge(&pair, id, Status::Taken).await {
            permit.send(Incoming {
                name,
                stream,
                buffer: connection_buffer,
                state,
            });
        }
    }
}

/// The stream and a place in the queue, or `None` to refuse.
async fn take<'a>(
    mut fds: Vec<OwnedFd>,
    name: Vec<u8>,
    names: Option<&[String]>,
    queue: &'a mpsc::Sender<Incoming>,
) -> Option<(mpsc::Permit<'a, Incoming>, String, Stream)> {
    if fds.len() != 1 {
        return None;
    }
    let fd = fds.pop()?;
    let name = String::from_utf8(name).ok()?;
    if let Some(names) = names
        && !names.contains(&name)
    {
        return None;
    }
    let stream = Stream::from_fd(fd).ok()?;
    let permit = tokio::time::timeout(ROOM_WAIT, queue.reserve())
        .await
        .ok()?
        .ok()?;
    Some((permit, name, stream))
}

/// Sends an acknowledgement; says whether it was sent.
async fn acknowledge(pair: &AsyncFd<OwnedFd>, id: u64, status: Status) -> bool {
    let Ok(bytes) = (Message::Acknowledgement { id, status }).encode() else {
        return false;
    };
    matches!(
        tokio::time::timeout(ACK_SEND_WAIT, packet::send_async(pair, &bytes, None)).await,
        Ok(Ok(()))
    )
}
