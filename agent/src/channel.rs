//! A generation's private channel to the agent (`docs/handoff.md`): an
//! `AF_UNIX` `SOCK_SEQPACKET` socket pair made for each generation, one end
//! kept by the agent, the other passed to the generation after its
//! `LISTEN_FDS` sockets with `BATON_CHANNEL_FD`. No path or abstract name
//! exists, so no other process can reach it.
//!
//! On it a generation says that it takes connections from its predecessor
//! (`HANDOFF=1`) and how many it handed over (`HANDED_OVER=n`); the agent
//! gives the old and the new generation of a restart the two ends of a
//! handoff pair of their own (`PREDECESSOR=` and `SUCCESSOR=`, with the fd
//! as `SCM_RIGHTS`). The agent never reads what travels on that pair.
//!
//! A generation is read at most [`MAX_MESSAGES_PER_WAKEUP`] datagrams at a
//! time, so one that floods its channel cannot hold up its service's task;
//! what it sends wrong is dropped and logged at most once a second.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::unix::AsyncFd;

/// The variable that tells a generation which fd its channel is.
pub const ENV: &str = "BATON_CHANNEL_FD";
/// Largest datagram either side sends; a longer one is malformed.
pub const MAX_DATAGRAM_BYTES: usize = 4096;
/// Most datagrams read from one generation before the task does anything else.
pub const MAX_MESSAGES_PER_WAKEUP: usize = 64;
/// Most datagrams read at once before the agent acts on a generation's
/// readiness or exit: everything it sent before must be seen, and the kernel
/// queues at most `net.unix.max_dgram_qlen` (512 by default) on the channel.
pub const MAX_MESSAGES_AT_ONCE: usize = 1024;
/// Largest `HANDED_OVER=` a generation may report.
pub const MAX_HANDED_OVER: u32 = 10_000_000;
/// Malformed or ignored messages are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What a generation says on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMessage {
    /// `HANDOFF=1`: it takes connections from its predecessor.
    Handoff,
    /// `HANDED_OVER=n`: the old generation's count of connections the new
    /// one acknowledged as taken.
    HandedOver(u32),
}

/// A datagram the agent could not make sense of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("datagram over {MAX_DATAGRAM_BYTES} bytes")]
    TooLong,
    #[error("datagram carried file descriptors")]
    CarriedFds,
    #[error("not UTF-8 text")]
    NotText,
    #[error("line {0:?} is not KEY=VALUE")]
    NotAnAssignment(String),
    #[error("{0:?}: the value is out of range or not a number")]
    BadValue(String),
}

/// Parses one datagram: `KEY=VALUE` lines separated by `\n`. Unknown keys
/// are ignored, so a generation may speak a later version of the protocol;
/// a known key with a value that does not parse makes the datagram malformed.
pub fn parse(text: &str) -> Result<Vec<ChannelMessage>, Malformed> {
    let mut messages = Vec::new();
    for line in text.split('\n').filter(|line| !line.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(Malformed::NotAnAssignment(shortened(line)));
        };
        let bad = || Malformed::BadValue(shortened(line));
        match key {
            "HANDOFF" => match value {
                "1" => messages.push(ChannelMessage::Handoff),
                _ => return Err(bad()),
            },
            "HANDED_OVER" => {
                let count = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= MAX_HANDED_OVER && value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(bad)?;
                messages.push(ChannelMessage::HandedOver(count));
            }
            _ => {}
        }
    }
    Ok(messages)
}

/// A line as it may appear in a log: at most 64 characters, escaped.
fn shortened(line: &str) -> String {
    line.chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect()
}

/// A new channel: the agent's end (close-on-exec, non-blocking) and the
/// generation's end (close-on-exec in the agent; the spawn places it in the
/// child, where it stays open across exec).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (agent, generation) = seqpacket_pair()?;
    rustix::io::ioctl_fionbio(&agent, true)?;
    Ok((agent, generation))
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// What one read of a channel found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub messages: Vec<ChannelMessage>,
    /// The generation closed its end (or every process holding it died):
    /// nothing more will come.
    pub closed: bool,
}

/// The agent's end of one generation's channel.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
    closed: bool,
}

impl Channel {
    /// Wraps the agent's end. Must be called within a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Channel {
            fd: crate::sys::async_fd(fd)?,
            closed: false,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Whether the generation closed its end; a closed channel is not read.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads everything waiting (up to [`MAX_MESSAGES_AT_ONCE`]) without
    /// waiting: before the agent acts on a generation's readiness or exit, so
    /// what it sent first is seen first, however much it sent before.
    pub fn read_now(&mut self, service: &str, generation: u64) -> Batch {
        if self.closed {
            return Batch::default();
        }
        let batch = match read_batch(self.fd.get_ref(), service, generation, MAX_MESSAGES_AT_ONCE) {
            Ok(batch) => batch,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Batch::default(),
            Err(e) => failed(service, generation, e),
        };
        self.closed |= batch.closed;
        batch
    }

    /// Reads what is waiting once the channel is readable.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        service: &str,
        generation: u64,
    ) -> Poll<Batch> {
        if self.closed {
            return Poll::Pending;
        }
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => {
                    let batch = failed(service, generation, e);
                    self.closed = true;
                    return Poll::Ready(batch);
                }
                Poll::Pending => return Poll::Pending,
            };
            // Nothing read clears the readiness, so the next wakeup is real.
            let read = |fd: &AsyncFd<OwnedFd>| {
                read_batch(fd.get_ref(), service, generation, MAX_MESSAGES_PER_WAKEUP)
            };
            match guard.try_io(read) {
                Ok(Ok(batch)) => {
                    self.closed |= batch.closed;
                    return Poll::Ready(batch);
                }
                Ok(Err(e)) => {
                    let batch = failed(service, generation, e);
                    self.closed = true;
                    return Poll::Ready(batch);
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `text` with one fd.
    fn send_with_fd(&self, text: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fds = [fd];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for the fd"));
        }
        let sent = rustix::net::sendmsg(
            self.fd.get_ref(),
            &[IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )?;
        if sent != text.len() {
            return Err(io::Error::other("the message was cut short"));
        }
        Ok(())
    }
}

/// A channel that failed for another reason than having nothing to read:
/// logged, and no longer read.
fn failed(service: &str, generation: u64, error: io::Error) -> Batch {
    tracing::warn!(service, generation, %error, "a generation's channel failed; it is no longer read");
    Batch {
        messages: Vec::new(),
        closed: true,
    }
}

/// Gives generation `to` and its predecessor `from` the two ends of a new
/// handoff pair: `PREDECESSOR=<from>` to `to` first, then
/// `SUCCESSOR=<to>` to `from`, so by the time the old generation reads its
/// successor the new one can already receive.
pub fn broker(from: (&Channel, u64), to: (&Channel, u64)) -> io::Result<()> {
    let (old_end, new_end) = seqpacket_pair()?;
    to.0.send_with_fd(&format!("PREDECESSOR={}\n", from.1), new_end.as_fd())
        .map_err(|e| io::Error::new(e.kind(), format!("to generation {}: {e}", to.1)))?;
    from.0
        .send_with_fd(&format!("SUCCESSOR={}\n", to.1), old_end.as_fd())
        .map_err(|e| io::Error::new(e.kind(), format!("to generation {}: {e}", from.1)))?;
    // The agent's copies close here; each generation holds its own end.
    Ok(())
}

/// Reads up to `most` datagrams. `WouldBlock` only when nothing at all was
/// waiting.
fn read_batch(fd: &OwnedFd, service: &str, generation: u64, most: usize) -> io::Result<Batch> {
    let mut batch = Batch::default();
    let mut data = [0u8; MAX_DATAGRAM_BYTES];
    for read in 0..most {
        let mut control_space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut control_space);
        let received = match rustix::net::recvmsg(
            fd,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC | RecvFlags::DONTWAIT,
        ) {
            Ok(received) => received,
            Err(rustix::io::Errno::AGAIN) if read > 0 => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // Whatever fds came are closed here: a generation sends none.
        let carried_fds = control.drain().next().is_some();
        if received.bytes == 0 && !carried_fds && peer_closed(fd) {
            batch.closed = true;
            break;
        }
        let truncated = received.bytes > data.len()
            || received
                .flags
                .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
        let parsed = if truncated {
            Err(Malformed::TooLong)
        } else if carried_fds {
            Err(Malformed::CarriedFds)
        } else {
            std::str::from_utf8(&data[..received.bytes])
                .map_err(|_| Malformed::NotText)
                .and_then(parse)
        };
        match parsed {
            Ok(messages) => batch.messages.extend(messages),
            Err(malformed) => note(
                service,
                generation,
                &format!("malformed message dropped: {malformed}"),
            ),
        }
    }
    Ok(batch)
}

/// Whether a read of nothing was the end of the channel rather than an
/// empty datagram.
fn peer_closed(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN | PollFlags::RDHUP)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR),
        Err(_) => true,
    }
}

static NOTED: AtomicU64 = AtomicU64::new(0);
static LOGGED: Mutex<Option<Instant>> = Mutex::new(None);

/// Counts a channel message the agent dropped (malformed) or did not act
/// on, and logs it unless one was logged within the last second: a
/// generation that sends nonsense in a loop cannot fill the log.
pub fn note(service: &str, generation: u64, what: &str) {
    let count = NOTED.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut logged = LOGGED.lock().expect("channel log lock");
        if logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        *logged = Some(Instant::now());
    }
    tracing::warn!(service, generation, dropped = count, "channel: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::RecvAncillaryMessage;

    #[test]
    fn parse_table() {
        use ChannelMessage::*;
        let cases: &[(&str, Result<Vec<ChannelMessage>, ()>)] = &[
            ("HANDOFF=1", Ok(vec![Handoff])),
            ("HANDOFF=1\n", Ok(vec![Handoff])),
            ("HANDED_OVER=12\n", Ok(vec![HandedOver(12)])),
            ("HANDED_OVER=0", Ok(vec![HandedOver(0)])),
            ("HANDED_OVER=10000000", Ok(vec![HandedOver(10_000_000)])),
            ("HANDED_OVER=10000001", Err(())),
            ("HANDED_OVER=-1", Err(())),
            ("HANDED_OVER=+3", Err(())),
            ("HANDED_OVER=", Err(())),
            ("HANDOFF=yes", Err(())),
            ("X_FUTURE=anything\nHANDOFF=1", Ok(vec![Handoff])),
            ("", Ok(vec![])),
            ("\n\n", Ok(vec![])),
            ("garbage", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse(text).map_err(|_| ()), expected, "{text:?}");
        }
    }

    fn send(fd: &OwnedFd, bytes: &[u8]) {
        rustix::net::send(fd, bytes, SendFlags::empty()).unwrap();
    }

    #[tokio::test]
    async fn a_flood_is_read_64_datagrams_at_a_time_and_the_end_is_seen() {
        let (agent, generation) = pair().unwrap();
        let mut channel = Channel::new(agent).unwrap();
        for _ in 0..100 {
            send(&generation, b"HANDOFF=1");
        }
        send(&generation, b"nonsense");
        let wakeup = std::future::poll_fn(|cx| channel.poll_read(cx, "web", 1)).await;
        assert_eq!(wakeup.messages.len(), 64);
        // Before readiness, everything waiting is read.
        let rest = channel.read_now("web", 1);
        assert_eq!((rest.messages.len(), rest.closed), (36, false));
        // An empty datagram is not the end.
        send(&generation, b"");
        assert_eq!(channel.read_now("web", 1), Batch::default());
        drop(generation);
        let end = std::future::poll_fn(|cx| channel.poll_read(cx, "web", 1)).await;
        assert!(end.closed);
        assert!(channel.is_closed());
    }

    #[tokio::test]
    async fn brokering_gives_each_generation_one_end_of_a_new_pair() {
        let (old_agent, old_generation) = pair().unwrap();
        let (new_agent, new_generation) = pair().unwrap();
        let old = Channel::new(old_agent).unwrap();
        let new = Channel::new(new_agent).unwrap();
        broker((&old, 4), (&new, 5)).unwrap();

        let receive = |fd: &OwnedFd| {
            let mut data = [0u8; 64];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                fd,
                &mut [IoSliceMut::new(&mut data)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .unwrap();
            let fds: Vec<OwnedFd> = control
                .drain()
                .flat_map(|m| match m {
                    RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .collect();
            (
                String::from_utf8(data[..received.bytes].to_vec()).unwrap(),
                fds,
            )
        };
        let (to_new, mut new_fds) = receive(&new_generation);
        let (to_old, mut old_fds) = receive(&old_generation);
        assert_eq!(to_new, "PREDECESSOR=4\n");
        assert_eq!(to_old, "SUCCESSOR=5\n");
        assert_eq!((new_fds.len(), old_fds.len()), (1, 1));
        // The two ends speak to each other, and only to each other.
        let (new_end, old_end) = (new_fds.remove(0), old_fds.remove(0));
        send(&old_end, b"connection");
        let mut data = [0u8; 16];
        let n = rustix::net::recv(&new_end, &mut data, RecvFlags::empty())
            .unwrap()
            .0;
        assert_eq!(&data[..n], b"connection");
        assert_eq!(
            rustix::net::sockopt::socket_type(&new_end).unwrap(),
            SocketType::SEQPACKET
        );
    }
}
