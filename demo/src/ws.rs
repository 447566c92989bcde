//! WebSocket echo at `/ws` (RFC 6455): the handshake's answer, a small
//! frame codec (text, binary, continuation, ping, pong, close; client
//! frames must be masked; messages bounded), and the echo loop. A text
//! message `generation` is answered with the serving generation's number.
//! Handed over between two messages, with the state `ws` and the bytes of
//! the next frame already read as the buffer.

use std::os::fd::AsFd;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::drain::DrainWatch;
use crate::handover::Handover;
use crate::http::HttpContext;

/// The state a WebSocket is handed over with.
pub const STATE: &[u8] = b"ws";
/// The largest message (a whole fragmented one included).
pub const MAX_MESSAGE: usize = 16 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(key);
    hasher.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// The frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame, its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

/// Why a connection is closed: the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: unmasked client frame, unknown opcode, reserved bits, bad
    /// control frame, continuation out of place.
    Protocol,
    /// 1009: a message over `MAX_MESSAGE`.
    TooBig,
}

impl Violation {
    fn code(self) -> u16 {
        match self {
            Violation::Protocol => 1002,
            Violation::TooBig => 1009,
        }
    }
}

/// Takes one whole client frame from the start of `input`; `Ok(None)` when
/// it has not all arrived.
pub fn parse_client_frame(input: &mut BytesMut) -> Result<Option<Frame>, Violation> {
    if input.len() < 2 {
        return Ok(None);
    }
    let (first, second) = (input[0], input[1]);
    if first & 0x70 != 0 {
        return Err(Violation::Protocol);
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::from_bits(first & 0x0f).ok_or(Violation::Protocol)?;
    if second & 0x80 == 0 {
        return Err(Violation::Protocol);
    }
    let (length, mut offset) = match second & 0x7f {
        126 => {
            if input.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([input[2], input[3]])), 4)
        }
        127 => {
            if input.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&input[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (length > 125 || !fin) {
        return Err(Violation::Protocol);
    }
    if length > MAX_MESSAGE as u64 {
        return Err(Violation::TooBig);
    }
    // Within MAX_MESSAGE.
    let length = length as usize;
    if input.len() < offset + 4 + length {
        return Ok(None);
    }
    let mask = [
        input[offset],
        input[offset + 1],
        input[offset + 2],
        input[offset + 3],
    ];
    offset += 4;
    let payload = input[offset..offset + length]
        .iter()
        .enumerate()
        .map(|(index, byte)| byte ^ mask[index % 4])
        .collect();
    input.advance(offset + length);
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

/// A server frame (unmasked, final) into `output`.
pub fn write_frame(opcode: Opcode, payload: &[u8], output: &mut Vec<u8>) {
    output.push(0x80 | opcode.bits());
    match payload.len() {
        length @ 0..=125 => output.push(length as u8),
        length @ 126..=0xffff => {
            output.push(126);
            output.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            output.push(127);
            output.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    output.extend_from_slice(payload);
}

fn write_close(code: u16, output: &mut Vec<u8>) {
    write_frame(Opcode::Close, &code.to_be_bytes(), output);
}

/// Serves an upgraded connection until a close, an error, or a drain ends
/// it (handed over, or closed with 1001 once its client has been quiet).
pub async fn serve_ws<S>(
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
    // A fragmented message being put together, with its opcode.
    let mut message: Option<(Opcode, Vec<u8>)> = None;
    let mut offered = false;
    let mut quiet_deadline: Option<Instant> = None;
    loop {
        loop {
            let frame = match parse_client_frame(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(violation) => {
                    write_close(violation.code(), &mut output);
                    stream.write_all(&output).await?;
                    return Ok(());
                }
            };
            match frame.opcode {
                Opcode::Ping => write_frame(Opcode::Pong, &frame.payload, &mut output),
                Opcode::Pong => {}
                Opcode::Close => {
                    // Echo the client's code, then close.
                    let code = frame.payload.get(..2).unwrap_or(&[0x03, 0xe8]);
                    write_frame(Opcode::Close, code, &mut output);
                    stream.write_all(&output).await?;
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                Opcode::Text | Opcode::Binary if message.is_none() => {
                    message = Some((frame.opcode, frame.payload));
                    if frame.fin {
                        answer(message.take(), &context, &mut output);
                    }
                }
                Opcode::Continuation if message.is_some() => {
                    let (_, assembled) = message.as_mut().expect("checked");
                    if assembled.len() + frame.payload.len() > MAX_MESSAGE {
                        write_close(Violation::TooBig.code(), &mut output);
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                    assembled.extend_from_slice(&frame.payload);
                    if frame.fin {
                        answer(message.take(), &context, &mut output);
                    }
                }
                _ => {
                    write_close(Violation::Protocol.code(), &mut output);
                    stream.write_all(&output).await?;
                    return Ok(());
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        // Between two messages: nothing owed to the client, nothing half
        // put together; the next frame's first bytes travel as the buffer.
        if drain.is_draining() && !offered && message.is_none() {
            offered = true;
            match handover.offer(&name, stream, &input, STATE).await {
                Ok(()) => return Ok(()),
                Err(kept) => stream = kept,
            }
        }
        let read = if drain.is_draining() && message.is_none() {
            let deadline =
                *quiet_deadline.get_or_insert_with(|| Instant::now() + context.drain_idle_grace());
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut input)).await {
                Ok(read) => {
                    quiet_deadline = Some(Instant::now() + context.drain_idle_grace());
                    read?
                }
                Err(_) => {
                    // Going away.
                    write_close(1001, &mut output);
                    stream.write_all(&output).await?;
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
            }
        } else {
            tokio::select! {
                read = stream.read_buf(&mut input) => read?,
                // Once draining, a half-assembled message is read to its end
                // before the connection is offered.
                _ = drain.draining(), if !offered && !drain.is_draining() => continue,
            }
        };
        if read == 0 {
            return Ok(());
        }
    }
}

fn answer(message: Option<(Opcode, Vec<u8>)>, context: &HttpContext, output: &mut Vec<u8>) {
    let Some((opcode, payload)) = message else {
        return;
    };
    if opcode == Opcode::Text && payload == b"generation" {
        write_frame(Opcode::Text, context.generation().as_bytes(), output);
    } else {
        write_frame(opcode, &payload, output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    pub fn client_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = Vec::new();
        frame.push(if fin { 0x80 } else { 0 } | opcode.bits());
        match payload.len() {
            length @ 0..=125 => frame.push(0x80 | length as u8),
            length @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(index, byte)| byte ^ mask[index % 4]),
        );
        frame
    }

    #[test]
    fn the_accept_key_is_the_one_of_the_rfc() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_are_read_whole_and_unmasked() {
        let long = vec![7u8; 300];
        let mut input = BytesMut::new();
        input.extend_from_slice(&client_frame(true, Opcode::Text, b"hello"));
        input.extend_from_slice(&client_frame(false, Opcode::Binary, &long));
        let second_end = input.len();
        input.extend_from_slice(&client_frame(true, Opcode::Ping, b"")[..3]);
        let first = parse_client_frame(&mut input).unwrap().unwrap();
        assert_eq!(
            first,
            Frame {
                fin: true,
                opcode: Opcode::Text,
                payload: b"hello".to_vec()
            }
        );
        let second = parse_client_frame(&mut input).unwrap().unwrap();
        assert_eq!((second.fin, second.payload.len()), (false, 300));
        assert!(second_end > 0);
        assert_eq!(parse_client_frame(&mut input), Ok(None));
        assert_eq!(input.len(), 3, "a partial frame stays in the buffer");
    }

    #[test]
    fn unmasked_oversized_and_bad_control_frames_are_refused() {
        let mut unmasked = BytesMut::from(&[0x81u8, 0x01, b'x'][..]);
        assert_eq!(parse_client_frame(&mut unmasked), Err(Violation::Protocol));
        let mut too_big =
            BytesMut::from(&client_frame(true, Opcode::Binary, &vec![0; MAX_MESSAGE + 1])[..]);
        assert_eq!(parse_client_frame(&mut too_big), Err(Violation::TooBig));
        let mut long_ping = BytesMut::from(&client_frame(true, Opcode::Ping, &[0; 126])[..]);
        assert_eq!(parse_client_frame(&mut long_ping), Err(Violation::Protocol));
        let mut fragmented_close = BytesMut::from(&client_frame(false, Opcode::Close, b"")[..]);
        assert_eq!(
            parse_client_frame(&mut fragmented_close),
            Err(Violation::Protocol)
        );
        let mut unknown = BytesMut::from(&[0x83u8, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(parse_client_frame(&mut unknown), Err(Violation::Protocol));
    }

    #[test]
    fn server_frames_carry_their_length_in_the_shortest_form() {
        let mut output = Vec::new();
        write_frame(Opcode::Text, b"hi", &mut output);
        assert_eq!(output, [0x81, 2, b'h', b'i']);
        output.clear();
        write_frame(Opcode::Binary, &[0; 200], &mut output);
        assert_eq!(&output[..4], &[0x82, 126, 0, 200]);
        output.clear();
        write_frame(Opcode::Binary, &[0; 70_000], &mut output);
        assert_eq!(&output[..2], &[0x82, 127]);
        assert_eq!(output.len(), 10 + 70_000);
    }
}
