//! The line-echo protocol (the socket named `echo`): every line comes back
//! as it was sent; the line `generation` is answered with the number of the
//! generation serving it. Handed over at a line boundary, with the part of
//! the next line already read as the buffer.

use std::os::fd::AsFd;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::drain::DrainWatch;
use crate::handover::Handover;
use crate::http::HttpContext;

/// A longer line closes the connection; it always fits a handoff's buffer.
pub const MAX_LINE: usize = 16 * 1024;

/// Serves one echo connection, starting with `input` (bytes a previous
/// generation read and did not answer).
pub async fn serve_echo<S>(
    mut stream: S,
    name: Arc<str>,
    mut input: BytesMut,
    context: Arc<HttpContext>,
    mut drain: DrainWatch,
    handover: Handover,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    let _connection = handover.connection();
    let mut output = Vec::with_capacity(4096);
    let mut offered = false;
    let mut quiet_deadline: Option<Instant> = None;
    loop {
        while let Some(end) = input.iter().position(|&byte| byte == b'\n') {
            let line = &input[..=end];
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text == b"generation" {
                output.extend_from_slice(context.generation().as_bytes());
                output.push(b'\n');
            } else {
                output.extend_from_slice(line);
            }
            input.advance(end + 1);
        }
        if input.len() > MAX_LINE {
            return Ok(());
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if drain.is_draining() && !offered {
            offered = true;
            match handover.offer(&name, stream, &input, b"").await {
                Ok(()) => return Ok(()),
                Err(kept) => stream = kept,
            }
        }
        let read = if drain.is_draining() {
            // Not handed over: a line protocol has no polite close, so the
            // connection closes once its client has been quiet a while.
            let deadline =
                *quiet_deadline.get_or_insert_with(|| Instant::now() + context.drain_idle_grace());
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut input)).await {
                Ok(read) => {
                    quiet_deadline = Some(Instant::now() + context.drain_idle_grace());
                    read?
                }
                Err(_) => break,
            }
        } else {
            tokio::select! {
                read = stream.read_buf(&mut input) => read?,
                _ = drain.draining() => continue,
            }
        };
        if read == 0 {
            return Ok(());
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long the tests wait for an answer.
    const PATIENCE: Duration = Duration::from_secs(3);
    use crate::drain;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn echoes_lines_as_sent_and_answers_the_generation() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_trigger, watch) = drain::channel();
        let context = HttpContext::new("12", 1, Duration::from_secs(1));
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve_echo(
                stream,
                "echo".into(),
                BytesMut::from(&b"carried "[..]),
                context,
                watch,
                Handover::disabled(),
            )
            .await
        });
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"over\r\nsecond\ngeneration\npart")
            .await
            .unwrap();
        let expected = b"carried over\r\nsecond\n12\n";
        let mut received = vec![0u8; expected.len()];
        tokio::time::timeout(PATIENCE, client.read_exact(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, expected);
        client.write_all(b"ial\n").await.unwrap();
        let mut rest = vec![0u8; 8];
        tokio::time::timeout(PATIENCE, client.read_exact(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"partial\n");
    }

    #[tokio::test]
    async fn without_handoff_a_draining_connection_closes_once_its_client_is_quiet() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, watch) = drain::channel();
        let context = HttpContext::new("1", 1, Duration::from_millis(200));
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve_echo(
                stream,
                "echo".into(),
                BytesMut::new(),
                context,
                watch,
                Handover::disabled(),
            )
            .await
        });
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(b"a\n").await.unwrap();
        let mut line = [0u8; 2];
        client.read_exact(&mut line).await.unwrap();
        trigger.start();
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest))
            .await
            .expect("closed after the quiet period")
            .unwrap();
        assert!(rest.is_empty());
    }
}
