//! UDP echo: each datagram is answered with `{generation} {payload}`, so a
//! client can tell which generation read it.

use tokio::net::UdpSocket;

use crate::drain::{DrainWatch, TaskGuard};

/// The largest UDP payload; a smaller buffer would silently truncate.
const MAX_DATAGRAM: usize = 65_536;

/// Echoes until draining begins, then drops the socket: datagrams still queued
/// stay on the shared socket for the next generation.
pub async fn serve_udp(
    socket: UdpSocket,
    generation: String,
    mut drain: DrainWatch,
    _guard: TaskGuard,
) {
    let mut input = vec![0u8; MAX_DATAGRAM];
    let mut reply = Vec::with_capacity(MAX_DATAGRAM + generation.len() + 1);
    loop {
        let (length, peer) = tokio::select! {
            received = socket.recv_from(&mut input) => match received {
                Ok(received) => received,
                Err(error) => {
                    // Errors such as ECONNREFUSED from an earlier reply are
                    // about one peer, not about the socket.
                    tracing::debug!(%error, "udp receive failed");
                    continue;
                }
            },
            _ = drain.draining() => break,
        };
        reply.clear();
        reply.extend_from_slice(generation.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&input[..length]);
        if let Err(error) = socket.send_to(&reply, peer).await {
            tracing::debug!(%error, %peer, "udp reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::{self, TaskTracker};
    use std::time::Duration;

    #[tokio::test]
    async fn echoes_with_the_generation_and_stops_on_drain() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = server.local_addr().unwrap();
        let (trigger, watch) = drain::channel();
        let tracker = TaskTracker::default();
        tokio::spawn(serve_udp(server, "3".to_owned(), watch, tracker.guard()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", address).await.unwrap();
        let mut buffer = [0u8; 64];
        let length = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buffer[..length], b"3 ping");
        trigger.start();
        tokio::time::timeout(Duration::from_secs(2), tracker.wait_all_done())
            .await
            .expect("the echo loop ends when draining starts");
    }
}
