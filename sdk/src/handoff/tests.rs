//! Both sides in one process over real socket pairs, the test playing the
//! agent (and, for the faults, a misbehaving peer).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::packet::{self, Datagram};
use super::wire::{MAX_BUFFER, MAX_MESSAGE, Message, Status};
use super::*;
use crate::shutdown::{Shutdown, ShutdownHandle};

/// The agent's ends of two generations' channels.
struct Agent {
    old: OwnedFd,
    new: OwnedFd,
}

/// Channels for an old and a new generation, and the agent's ends.
fn channels() -> (Agent, Channel, Channel) {
    let (agent_old, old) = seqpacket_pair().unwrap();
    let (agent_new, new) = seqpacket_pair().unwrap();
    (
        Agent {
            old: agent_old,
            new: agent_new,
        },
        Channel::from_fd(old).unwrap(),
        Channel::from_fd(new).unwrap(),
    )
}

impl Agent {
    /// Brokers a pair: `PREDECESSOR=` to the new, `SUCCESSOR=` to the old.
    fn broker(&self) {
        let (to_new, to_old) = seqpacket_pair().unwrap();
        self.broker_with(to_old, to_new);
    }

    fn broker_with(&self, old_end: OwnedFd, new_end: OwnedFd) {
        self.send_new_end(new_end);
        self.send_old_end(old_end);
    }

    fn send_new_end(&self, new_end: OwnedFd) {
        packet::send(self.new.as_fd(), b"PREDECESSOR=1\n", Some(new_end.as_fd())).unwrap();
    }

    fn send_old_end(&self, old_end: OwnedFd) {
        packet::send(self.old.as_fd(), b"SUCCESSOR=2\n", Some(old_end.as_fd())).unwrap();
    }

    /// The next text a generation sent, waiting up to two seconds.
    async fn read(end: &OwnedFd) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut buffer = [0u8; 4096];
        while tokio::time::Instant::now() < deadline {
            if let Datagram::Message { length, .. } =
                packet::recv(end.as_fd(), &mut buffer).unwrap()
            {
                return Some(String::from_utf8_lossy(&buffer[..length]).into_owned());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }
}

fn old_generation(channel: Channel) -> (Shutdown, ShutdownHandle) {
    let shutdown = Shutdown::builder()
        .signal(None)
        .drain_timeout(Duration::from_secs(6))
        .channel(Some(channel))
        .build()
        .unwrap();
    let handle = shutdown.handle();
    (shutdown, handle)
}

/// A connected (client, server side) TCP pair.
async fn connection() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

async fn read_some(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut buffer = vec![0u8; 256];
    let length = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer))
        .await
        .expect("an answer in time")
        .unwrap();
    buffer.truncate(length);
    buffer
}

/// Whether the client sees the connection closed (every copy gone).
async fn closed_for(client: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), client.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn a_connection_handed_over_goes_on_in_the_new_generation_with_its_buffer_and_state() {
    let (agent, old_channel, new_channel) = channels();
    let mut incomings = Handoff::new().accept(&new_channel).unwrap();
    assert_eq!(
        Agent::read(&agent.new).await.as_deref(),
        Some("HANDOFF=1\n")
    );
    let (shutdown, handle) = old_generation(old_channel);
    let (mut client, server) = connection().await;
    let guard = handle.connection();

    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    handle
        .hand_over("echo", server, b"half a li", b"st")
        .await
        .expect("taken");
    drop(guard);

    let mut incoming = incomings.recv().await.unwrap();
    assert_eq!(incoming.name, "echo");
    assert_eq!(incoming.buffer, b"half a li");
    assert_eq!(incoming.state, b"st");
    assert!(matches!(incoming.stream, Stream::Tcp(_)));
    client.write_all(b"ne\n").await.unwrap();
    assert_eq!(read_some(&mut incoming.stream).await, b"ne\n");
    incoming
        .stream
        .write_all(b"from the new one")
        .await
        .unwrap();
    assert_eq!(read_some(&mut client).await, b"from the new one");

    let report = running.await.unwrap();
    assert_eq!(report.handed_over, 1);
    assert!(!report.timed_out);
    assert_eq!(
        Agent::read(&agent.old).await.as_deref(),
        Some("HANDED_OVER=1\n")
    );
    // The old copy is closed: once the new one closes, the client sees the end.
    drop(incoming);
    assert!(closed_for(&mut client).await);
}

#[tokio::test]
async fn a_refused_connection_stays_with_the_old_generation() {
    let (agent, old_channel, new_channel) = channels();
    let mut incomings = Handoff::new().names(["http"]).accept(&new_channel).unwrap();
    let (shutdown, handle) = old_generation(old_channel);
    let (mut client, server) = connection().await;
    let guard = handle.connection();
    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    let returned = handle
        .hand_over("echo", server, b"", b"")
        .await
        .expect_err("an unknown listener is refused");
    drop(guard);
    assert!(matches!(returned.reason, NotTaken::Refused), "{}", returned);
    let mut server = returned.stream;
    server.write_all(b"still the old one").await.unwrap();
    assert_eq!(read_some(&mut client).await, b"still the old one");
    let report = running.await.unwrap();
    assert_eq!(report.handed_over, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), incomings.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn without_a_successor_or_before_the_exit_a_connection_comes_straight_back() {
    let (_agent, old_channel, _new_channel) = channels();
    let (shutdown, handle) = old_generation(old_channel);
    let (_client, server) = connection().await;
    let returned = handle
        .hand_over("echo", server, b"", b"")
        .await
        .unwrap_err();
    assert!(matches!(returned.reason, NotTaken::NotDraining));
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    let started = std::time::Instant::now();
    let returned = handle
        .hand_over("echo", returned.stream, b"", b"")
        .await
        .unwrap_err();
    assert!(matches!(returned.reason, NotTaken::NoSuccessor));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(!handle.can_hand_over().await);
    running.await.unwrap();
}

#[tokio::test]
async fn a_buffer_over_the_bound_is_not_sent() {
    let (agent, old_channel, new_channel) = channels();
    let _incomings = Handoff::new().accept(&new_channel).unwrap();
    let (shutdown, handle) = old_generation(old_channel);
    let (_client, server) = connection().await;
    let guard = handle.connection();
    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    let returned = handle
        .hand_over("echo", server, &vec![0; MAX_BUFFER + 1], b"")
        .await
        .unwrap_err();
    drop(guard);
    assert!(matches!(returned.reason, NotTaken::TooLarge));
    drop(returned);
    running.await.unwrap();
}

/// A new generation that reads what it is sent and answers only as told.
struct FakeNew {
    end: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl FakeNew {
    fn new(end: OwnedFd) -> FakeNew {
        FakeNew {
            end: crate::sys::async_fd(
                end,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )
            .unwrap(),
        }
    }

    async fn connection(&self) -> (u64, Vec<OwnedFd>) {
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let Datagram::Message { length, fds, .. } =
            packet::recv_async(&self.end, &mut buffer).await.unwrap()
        else {
            panic!("no message");
        };
        match Message::decode(&buffer[..length]).unwrap() {
            Message::Connection { id, .. } => (id, fds),
            other => panic!("{other:?}"),
        }
    }

    fn acknowledge(&self, id: u64, status: Status) -> std::io::Result<()> {
        let bytes = Message::Acknowledgement { id, status }.encode().unwrap();
        packet::send(self.end.get_ref().as_fd(), &bytes, None)
    }
}

/// An old generation offering `server` to a hand-driven successor whose end
/// of the pair is `fake`; the exit waits for the connection, so the
/// offering stays open until it is answered.
struct Offered {
    agent: Agent,
    fake: FakeNew,
    handle: ShutdownHandle,
    running: tokio::task::JoinHandle<crate::shutdown::Report>,
    offering: tokio::task::JoinHandle<Result<(), Returned<TcpStream>>>,
}

fn offer_to_fake(server: TcpStream) -> Offered {
    let (agent, old_channel, _new_channel) = channels();
    let (shutdown, handle) = old_generation(old_channel);
    let (old_end, new_end) = seqpacket_pair().unwrap();
    agent.send_old_end(old_end);
    let fake = FakeNew::new(new_end);
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    let offering = tokio::spawn({
        let handle = handle.clone();
        let guard = handle.connection();
        async move {
            let result = handle.hand_over("echo", server, b"", b"").await;
            drop(guard);
            result
        }
    });
    Offered {
        agent,
        fake,
        handle,
        running,
        offering,
    }
}

#[tokio::test]
async fn when_the_new_generation_dies_before_answering_the_old_one_keeps_the_connection() {
    let (mut client, server) = connection().await;
    let Offered {
        agent: _agent,
        fake,
        handle: _,
        running,
        offering,
    } = offer_to_fake(server);
    let (_id, fds) = fake.connection().await;
    assert_eq!(fds.len(), 1, "exactly one descriptor travels");
    drop(fds);
    let started = std::time::Instant::now();
    drop(fake);
    let returned = offering.await.unwrap().expect_err("not taken");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "an end-of-file needs no timeout"
    );
    let mut server = returned.stream;
    server.write_all(b"kept").await.unwrap();
    assert_eq!(read_some(&mut client).await, b"kept");
    assert_eq!(running.await.unwrap().handed_over, 0);
}

#[tokio::test]
async fn an_acknowledgement_queued_before_the_new_generation_died_still_counts() {
    let (_client, server) = connection().await;
    let Offered {
        agent,
        fake,
        handle: _,
        running,
        offering,
    } = offer_to_fake(server);
    let (id, _fds) = fake.connection().await;
    fake.acknowledge(id, Status::Taken).unwrap();
    drop(fake);
    offering
        .await
        .unwrap()
        .expect("the acknowledgement was sent: taken");
    assert_eq!(running.await.unwrap().handed_over, 1);
    assert_eq!(
        Agent::read(&agent.old).await.as_deref(),
        Some("HANDED_OVER=1\n")
    );
}

#[tokio::test]
async fn after_a_second_without_an_answer_the_old_generation_keeps_the_connection_and_the_late_answer_cannot_be_sent()
 {
    let (_client, server) = connection().await;
    let Offered {
        agent: _agent,
        fake,
        handle,
        running,
        offering,
    } = offer_to_fake(server);
    let (id, _fds) = fake.connection().await;
    let started = std::time::Instant::now();
    let returned = offering.await.unwrap().expect_err("no answer");
    assert!(matches!(returned.reason, NotTaken::NoAnswer), "{returned}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The old end's reading is shut: the new generation learns that the
    // connection is not its own.
    assert!(fake.acknowledge(id, Status::Taken).is_err());
    assert!(!handle.can_hand_over().await);
    drop(returned);
    assert_eq!(running.await.unwrap().handed_over, 0);
}

/// An old generation that sends what it is told on its end of the pair.
fn send_raw(end: &OwnedFd, bytes: &[u8], fds: &[&OwnedFd]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    }
    rustix::net::sendmsg(
        end,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
}

async fn acknowledgement(end: &OwnedFd) -> Message {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buffer = [0u8; 64];
    loop {
        if let Datagram::Message { length, .. } = packet::recv(end.as_fd(), &mut buffer).unwrap() {
            return Message::decode(&buffer[..length]).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no acknowledgement");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn connection_message(id: u64, buffer: Vec<u8>) -> Vec<u8> {
    Message::Connection {
        id,
        name: b"echo".to_vec(),
        buffer,
        state: Vec::new(),
    }
    .encode()
    .unwrap()
}

#[tokio::test]
async fn the_new_generation_refuses_messages_without_one_descriptor_or_over_the_bounds() {
    let (agent, _old_channel, new_channel) = channels();
    let mut incomings = Handoff::new().accept(&new_channel).unwrap();
    let (old_end, new_end) = seqpacket_pair().unwrap();
    agent.send_new_end(new_end);
    let (_client_one, one) = connection().await;
    let (_client_two, two) = connection().await;
    let one = OwnedFd::from(one.into_std().unwrap());
    let two = OwnedFd::from(two.into_std().unwrap());

    send_raw(&old_end, &connection_message(1, Vec::new()), &[]);
    send_raw(&old_end, &connection_message(2, Vec::new()), &[&one, &two]);
    let mut oversized = connection_message(3, Vec::new());
    oversized[16..20].copy_from_slice(&((MAX_BUFFER + 1) as u32).to_le_bytes());
    send_raw(&old_end, &oversized, &[&one]);
    // A listening socket is not a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = OwnedFd::from(listener);
    send_raw(&old_end, &connection_message(4, Vec::new()), &[&listener]);
    for id in 1..=4 {
        assert_eq!(
            acknowledgement(&old_end).await,
            Message::Acknowledgement {
                id,
                status: Status::Refused
            }
        );
    }
    // And a good one is still taken after them.
    send_raw(&old_end, &connection_message(5, b"x".to_vec()), &[&one]);
    assert_eq!(
        acknowledgement(&old_end).await,
        Message::Acknowledgement {
            id: 5,
            status: Status::Taken
        }
    );
    assert_eq!(incomings.recv().await.unwrap().buffer, b"x");
}

#[tokio::test]
async fn when_its_acknowledgement_cannot_be_sent_the_new_generation_closes_its_copy() {
    let (agent, _old_channel, new_channel) = channels();
    let mut incomings = Handoff::new().accept(&new_channel).unwrap();
    let (old_end, new_end) = seqpacket_pair().unwrap();
    agent.send_new_end(new_end);
    let (mut client, server) = connection().await;
    let server = OwnedFd::from(server.into_std().unwrap());
    // The old generation stopped waiting before the answer could come.
    rustix::net::shutdown(&old_end, rustix::net::Shutdown::Read).unwrap();
    send_raw(&old_end, &connection_message(1, Vec::new()), &[&server]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), incomings.recv())
            .await
            .is_err(),
        "nothing reaches the application"
    );
    // Once the old generation closes its copy too, nobody holds it.
    drop(server);
    assert!(closed_for(&mut client).await);
}

#[test]
fn shutting_the_reading_of_a_pair_makes_the_peers_sends_fail_but_keeps_what_was_queued() {
    let (old_end, new_end) = seqpacket_pair().unwrap();
    packet::send(new_end.as_fd(), b"queued", None).unwrap();
    rustix::net::shutdown(&old_end, rustix::net::Shutdown::Read).unwrap();
    assert!(packet::send(new_end.as_fd(), b"late", None).is_err());
    let mut buffer = [0u8; 16];
    assert!(matches!(
        packet::recv(old_end.as_fd(), &mut buffer).unwrap(),
        Datagram::Message { length: 6, .. }
    ));
    assert!(matches!(
        packet::recv(old_end.as_fd(), &mut buffer).unwrap(),
        Datagram::End
    ));
}

#[tokio::test]
async fn a_unix_stream_connection_arrives_as_a_unix_stream() {
    let (agent, old_channel, new_channel) = channels();
    let mut incomings = Handoff::new().accept(&new_channel).unwrap();
    let (shutdown, handle) = old_generation(old_channel);
    let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
    let open = handle.connection();
    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    handle
        .hand_over("local", server, b"", b"")
        .await
        .expect("taken");
    drop(open);
    let mut incoming = incomings.recv().await.unwrap();
    assert!(matches!(incoming.stream, Stream::Unix(_)));
    assert_eq!(incoming.name, "local");
    client.write_all(b"over unix").await.unwrap();
    assert_eq!(read_some(&mut incoming.stream).await, b"over unix");
    assert_eq!(running.await.unwrap().handed_over, 1);
}

#[tokio::test]
async fn with_no_room_in_the_applications_queue_a_connection_is_refused_and_stays_old() {
    let (agent, old_channel, new_channel) = channels();
    // Room for one, and the application takes none yet.
    let mut incomings = Handoff::new().capacity(1).accept(&new_channel).unwrap();
    let (shutdown, handle) = old_generation(old_channel);
    let (_first_client, first) = connection().await;
    let (mut second_client, second) = connection().await;
    let open = handle.connection();
    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    handle
        .hand_over("echo", first, b"1", b"")
        .await
        .expect("room for one");
    let returned = handle
        .hand_over("echo", second, b"2", b"")
        .await
        .expect_err("no room for two");
    assert!(matches!(returned.reason, NotTaken::Refused), "{returned}");
    let mut second = returned.stream;
    second.write_all(b"kept").await.unwrap();
    assert_eq!(read_some(&mut second_client).await, b"kept");
    drop((open, second));
    assert_eq!(incomings.recv().await.unwrap().buffer, b"1");
    assert_eq!(running.await.unwrap().handed_over, 1);
}

#[tokio::test]
async fn a_connection_at_every_bound_goes_through_whole() {
    let (agent, old_channel, new_channel) = channels();
    let mut incomings = Handoff::new().accept(&new_channel).unwrap();
    let (shutdown, handle) = old_generation(old_channel);
    let (_client, server) = connection().await;
    let open = handle.connection();
    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    let name = "n".repeat(super::MAX_NAME);
    let buffer: Vec<u8> = (0..MAX_BUFFER).map(|i| i as u8).collect();
    let state = vec![7u8; super::MAX_STATE];
    handle
        .hand_over(&name, server, &buffer, &state)
        .await
        .expect("taken");
    drop(open);
    let incoming = incomings.recv().await.unwrap();
    assert_eq!(incoming.name, name);
    assert_eq!(incoming.buffer, buffer);
    assert_eq!(incoming.state, state);
    running.await.unwrap();
}

/// Many connection tasks offering at once, the new generation in a runtime
/// of its own (as in another process): each must wait its turn to send
/// rather than all waking whenever the pair has room for one more.
#[tokio::test]
async fn thousands_of_connections_offered_at_once_are_all_taken() {
    const CONNECTIONS: usize = 5000;
    let (agent, old_channel, new_channel) = channels();
    let (ready_sender, ready) = tokio::sync::oneshot::channel();
    let received = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut incomings = Handoff::new()
                .capacity(CONNECTIONS)
                .accept(&new_channel)
                .unwrap();
            let _ = ready_sender.send(());
            let mut kept = Vec::with_capacity(CONNECTIONS);
            while kept.len() < CONNECTIONS {
                match incomings.recv().await {
                    Some(incoming) => kept.push(incoming),
                    None => break,
                }
            }
            kept.len()
        })
    });
    ready.await.unwrap();
    assert_eq!(
        Agent::read(&agent.new).await.as_deref(),
        Some("HANDOFF=1\n")
    );
    let (shutdown, handle) = old_generation(old_channel);
    let mut clients = Vec::with_capacity(CONNECTIONS);
    let mut servers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        clients.push(client);
        servers.push(server);
    }
    let guard = handle.connection();
    agent.broker();
    handle.trigger();
    let running = tokio::spawn(shutdown.run());
    let offers: Vec<_> = servers
        .into_iter()
        .map(|server| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.hand_over("echo", server, b"", b"").await.is_ok() })
        })
        .collect();
    let mut taken = 0;
    for offer in offers {
        taken += usize::from(offer.await.unwrap());
    }
    drop(guard);
    assert_eq!(taken, CONNECTIONS, "every connection offered was taken");
    assert_eq!(received.join().unwrap(), CONNECTIONS);
    assert_eq!(running.await.unwrap().handed_over, CONNECTIONS);
}
