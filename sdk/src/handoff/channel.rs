//! The generation's channel to the agent (`BATON_CHANNEL_FD`): text
//! datagrams of `KEY=VALUE` lines, some with a descriptor.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Error;
use super::packet::{self, Datagram};

/// The variable that names the channel's descriptor.
pub const CHANNEL_FD_VARIABLE: &str = "BATON_CHANNEL_FD";
/// The longest message on the channel.
const MAX_TEXT: usize = 4096;
/// Messages read per wakeup, as the agent reads at most 64.
const MAX_PER_PUMP: usize = 64;

/// The generation's channel to the agent: it says `HANDOFF=1` and
/// `HANDED_OVER=n`, and brings the handoff pair with the predecessor
/// (`PREDECESSOR=`) or the successor (`SUCCESSOR=`).
///
/// Cheap to clone; every clone is the same channel.
#[derive(Debug, Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    slots: Mutex<Slots>,
    /// Woken when a pair arrives.
    arrived: Notify,
}

/// A handoff pair the agent brokered.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) fd: OwnedFd,
}

#[derive(Debug, Default)]
struct Slots {
    predecessor: VecDeque<Pair>,
    successor: Option<Pair>,
    closed: bool,
}

/// `None` until the first [`Channel::from_env`]; then what it found, for
/// every later call.
static FROM_ENV: Mutex<Option<Option<Channel>>> = Mutex::new(None);

impl Channel {
    /// This process's channel, from `BATON_CHANNEL_FD`; `None` when the
    /// variable is not set (not started by baton, or an agent without
    /// handoff).
    ///
    /// The descriptor is taken once per process: the first call checks it
    /// (an open `AF_UNIX` `SOCK_SEQPACKET` socket), makes it close-on-exec
    /// so no child inherits it, and removes the variable when the process
    /// still has one thread (call it first in `main`, with
    /// [`Listeners::from_env`](crate::sockets::Listeners::from_env), for
    /// that: a child would otherwise see a number that is not its own).
    /// Later calls return the same channel.
    pub fn from_env() -> Result<Option<Channel>, Error> {
        let mut cached = FROM_ENV.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = cached.as_ref() {
            return Ok(channel.clone());
        }
        let taken = Channel::take_from_env();
        *cached = Some(taken.as_ref().ok().cloned().flatten());
        taken
    }

    fn take_from_env() -> Result<Option<Channel>, Error> {
        let Some(value) = std::env::var_os(CHANNEL_FD_VARIABLE) else {
            return Ok(None);
        };
        let text = value.to_string_lossy().into_owned();
        let fd: RawFd = text
            .trim()
            .parse()
            .map_err(|_| Error::ChannelVariable(text.clone()))?;
        let owned = crate::sys::take_inherited_channel(fd)?;
        crate::sys::remove_env_if_single_threaded(CHANNEL_FD_VARIABLE);
        Ok(Some(Channel::new(owned)))
    }

    /// A channel on a descriptor given some other way than
    /// `BATON_CHANNEL_FD`: a test's end of a
    /// [`seqpacket_pair`](super::seqpacket_pair), or a supervisor of your
    /// own that speaks the same protocol.
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, Error> {
        if !packet::is_seqpacket(fd.as_fd()) {
            return Err(Error::NotSeqpacket);
        }
        rustix::io::ioctl_fionbio(&fd, true).map_err(|error| Error::Io(error.into()))?;
        Ok(Channel::new(fd))
    }

    fn new(fd: OwnedFd) -> Channel {
        Channel {
            inner: Arc::new(Inner {
                fd,
                slots: Mutex::default(),
                arrived: Notify::new(),
            }),
        }
    }

    /// Sends one text message (`KEY=VALUE` lines).
    pub(crate) fn send_text(&self, text: &str) -> Result<(), Error> {
        packet::send(self.inner.fd.as_fd(), text.as_bytes(), None).map_err(Error::Channel)
    }

    /// Reads what is queued on the channel, without waiting, and keeps the
    /// pairs it brings. Says whether the queue was emptied (rather than the
    /// reading stopped at its bound per call).
    pub(crate) fn pump(&self) -> bool {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut buffer = [0u8; MAX_TEXT];
        let mut arrived = false;
        let mut emptied = false;
        for _ in 0..MAX_PER_PUMP {
            match packet::recv(self.inner.fd.as_fd(), &mut buffer) {
                Ok(Datagram::Message {
                    length,
                    fds,
                    truncated,
                }) => {
                    if truncated {
                        continue;
                    }
                    if let Some((which, pair)) = parse(&buffer[..length], fds) {
                        arrived = true;
                        match which {
                            Which::Predecessor => slots.predecessor.push_back(pair),
                            Which::Successor => slots.successor = Some(pair),
                        }
                    }
                }
                Ok(Datagram::Empty) => {
                    emptied = true;
                    break;
                }
                Ok(Datagram::End) | Err(_) => {
                    slots.closed = true;
                    arrived = true;
                    emptied = true;
                    break;
                }
            }
        }
        drop(slots);
        if arrived {
            self.inner.arrived.notify_waiters();
        }
        emptied
    }

    /// The successor's pair, if the agent sent one; read from the channel
    /// now (the agent sends it before the stop signal).
    pub(crate) fn take_successor(&self) -> Option<Pair> {
        // The agent sends little; the bound is against a peer that floods.
        for _ in 0..16 {
            if self.pump() {
                break;
            }
        }
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.successor.take()
    }

    /// Waits for the predecessor's pair; `None` once the channel is closed.
    pub(crate) async fn predecessor(&self) -> io::Result<Option<Pair>> {
        let readable =
            crate::sys::async_fd(self.inner.fd.try_clone()?, tokio::io::Interest::READABLE)?;
        loop {
            let notified = self.inner.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pair) = slots.predecessor.pop_front() {
                    return Ok(Some(pair));
                }
                if slots.closed {
                    return Ok(None);
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                ready = readable.readable() => {
                    let mut ready = ready?;
                    // Readiness is cleared only once the queue is empty, or
                    // what is left would wait for the next datagram.
                    if self.pump() {
                        ready.clear_ready();
                    }
                }
            }
        }
    }
}

enum Which {
    Predecessor,
    Successor,
}

/// A message that brings a pair: `PREDECESSOR=<n>` or `SUCCESSOR=<n>` with
/// exactly one descriptor, an `AF_UNIX` `SOCK_SEQPACKET` socket. Anything
/// else is ignored (its descriptors closed), so either side can grow.
fn parse(bytes: &[u8], mut fds: Vec<OwnedFd>) -> Option<(Which, Pair)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let which = match key {
            "PREDECESSOR" => Which::Predecessor,
            "SUCCESSOR" => Which::Successor,
            _ => continue,
        };
        // The other generation's number: checked, not needed.
        value.trim().parse::<u64>().ok()?;
        found = Some(which);
    }
    let which = found?;
    if fds.len() != 1 {
        return None;
    }
    let fd = fds.pop()?;
    if !packet::is_seqpacket(fd.as_fd()) {
        return None;
    }
    rustix::io::ioctl_fionbio(&fd, true).ok()?;
    Some((which, Pair { fd }))
}
