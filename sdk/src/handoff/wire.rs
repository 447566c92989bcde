//! The handoff pair's messages (`BHO1`), as `docs/handoff.md` writes them
//! down: a 24-byte little-endian header, then `name`, `buffer` and `state`.
//! Encoding and decoding only; which descriptor travels with a message is
//! the caller's.

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"BHO1";
/// The header's size.
pub const HEADER_LENGTH: usize = 24;
/// The longest listener name (`LISTEN_FDNAMES` entry).
pub const MAX_NAME: usize = 255;
/// The most unprocessed bytes a connection may carry.
pub const MAX_BUFFER: usize = 65_536;
/// The largest application state.
pub const MAX_STATE: usize = 16_384;
/// The largest message: a receive buffer of this size never truncates a
/// message within bounds.
pub const MAX_MESSAGE: usize = HEADER_LENGTH + MAX_NAME + MAX_BUFFER + MAX_STATE;

const TYPE_CONNECTION: u8 = 1;
const TYPE_ACKNOWLEDGEMENT: u8 = 2;
const TYPE_END: u8 = 3;

/// What the new generation answers to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It owns the connection (if this very message was sent).
    Taken,
    /// It does not take it; the old generation keeps serving it.
    Refused,
}

/// One message of the handoff pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Old → new, with the connection's descriptor.
    Connection {
        id: u64,
        name: Vec<u8>,
        buffer: Vec<u8>,
        state: Vec<u8>,
    },
    /// New → old, no descriptor.
    Acknowledgement { id: u64, status: Status },
    /// Old → new: nothing more will be sent.
    End,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a message of {0} bytes is shorter than the header")]
    Short(usize),
    #[error("bad magic {0:?}")]
    Magic([u8; 4]),
    #[error("unknown message type {0}")]
    Type(u8),
    #[error("flags {0:#04x} where 0 is expected")]
    Flags(u8),
    #[error("unknown acknowledgement status {0}")]
    Status(u16),
    #[error("{field} of {length} bytes is over its bound of {bound}")]
    TooLong {
        field: &'static str,
        length: usize,
        bound: usize,
    },
    #[error("the lengths in the header ({declared}) do not match the message ({actual})")]
    Length { declared: usize, actual: usize },
    #[error("a {0} message carries nothing after its header")]
    Body(&'static str),
}

fn check(field: &'static str, length: usize, bound: usize) -> Result<(), WireError> {
    if length > bound {
        return Err(WireError::TooLong {
            field,
            length,
            bound,
        });
    }
    Ok(())
}

impl Message {
    /// The message's bytes; a connection over the bounds is refused here
    /// rather than by the receiver.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let (kind, field, id, name, buffer, state): (u8, u16, u64, &[u8], &[u8], &[u8]) = match self
        {
            Message::Connection {
                id,
                name,
                buffer,
                state,
            } => {
                check("name", name.len(), MAX_NAME)?;
                check("buffer", buffer.len(), MAX_BUFFER)?;
                check("state", state.len(), MAX_STATE)?;
                // Within MAX_NAME, so it fits.
                let name_length = name.len() as u16;
                (TYPE_CONNECTION, name_length, *id, name, buffer, state)
            }
            Message::Acknowledgement { id, status } => {
                let status = match status {
                    Status::Taken => 0,
                    Status::Refused => 1,
                };
                (TYPE_ACKNOWLEDGEMENT, status, *id, &[], &[], &[])
            }
            Message::End => (TYPE_END, 0, 0, &[], &[], &[]),
        };
        let mut bytes = Vec::with_capacity(HEADER_LENGTH + name.len() + buffer.len() + state.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(kind);
        bytes.push(0);
        bytes.extend_from_slice(&field.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        // Both within their bounds, far below u32::MAX.
        bytes.extend_from_slice(&(buffer.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(state.len() as u32).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(buffer);
        bytes.extend_from_slice(state);
        Ok(bytes)
    }

    /// Reads one whole datagram.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let Some(header) = bytes.get(..HEADER_LENGTH) else {
            return Err(WireError::Short(bytes.len()));
        };
        let magic: [u8; 4] = [header[0], header[1], header[2], header[3]];
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        let kind = header[4];
        let flags = header[5];
        if flags != 0 {
            return Err(WireError::Flags(flags));
        }
        let field = u16::from_le_bytes([header[6], header[7]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[8..16]);
        let id = u64::from_le_bytes(id);
        let buffer_length = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let state_length = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
        let body = &bytes[HEADER_LENGTH..];
        match kind {
            TYPE_CONNECTION => {
                let name_length = usize::from(field);
                let buffer_length = usize::try_from(buffer_length).unwrap_or(usize::MAX);
                let state_length = usize::try_from(state_length).unwrap_or(usize::MAX);
                check("name", name_length, MAX_NAME)?;
                check("buffer", buffer_length, MAX_BUFFER)?;
                check("state", state_length, MAX_STATE)?;
                // Each within its bound: the sum cannot overflow.
                let declared = name_length + buffer_length + state_length;
                if declared != body.len() {
                    return Err(WireError::Length {
                        declared,
                        actual: body.len(),
                    });
                }
                let (name, rest) = body.split_at(name_length);
                let (buffer, state) = rest.split_at(buffer_length);
                Ok(Message::Connection {
                    id,
                    name: name.to_vec(),
                    buffer: buffer.to_vec(),
                    state: state.to_vec(),
                })
            }
            TYPE_ACKNOWLEDGEMENT | TYPE_END => {
                let what = if kind == TYPE_END {
                    "end"
                } else {
                    "acknowledgement"
                };
                if buffer_length != 0 || state_length != 0 || !body.is_empty() {
                    return Err(WireError::Body(what));
                }
                if kind == TYPE_END {
                    return Ok(Message::End);
                }
                let status = match field {
                    0 => Status::Taken,
                    1 => Status::Refused,
                    other => return Err(WireError::Status(other)),
                };
                Ok(Message::Acknowledgement { id, status })
            }
            other => Err(WireError::Type(other)),
        }
    }

    /// The id of a connection or an acknowledgement found in a header, even
    /// when the rest of the message is refused: the refusal can then name
    /// the connection it answers.
    pub fn id_in_header(bytes: &[u8]) -> Option<u64> {
        let header = bytes.get(..HEADER_LENGTH)?;
        if header[..4] != MAGIC || header[4] != TYPE_CONNECTION {
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[8..16]);
        Some(u64::from_le_bytes(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(name: &[u8], buffer: &[u8], state: &[u8]) -> Message {
        Message::Connection {
            id: 0x0102_0304_0506_0708,
            name: name.to_vec(),
            buffer: buffer.to_vec(),
            state: state.to_vec(),
        }
    }

    #[test]
    fn every_message_comes_back_as_it_was_encoded() {
        for message in [
            connection(b"http", b"GET / HT", b""),
            connection(b"echo", b"", b"ws"),
            connection(b"", b"", b""),
            connection(&[b'n'; MAX_NAME], &[7; MAX_BUFFER], &[9; MAX_STATE]),
            Message::Acknowledgement {
                id: 42,
                status: Status::Taken,
            },
            Message::Acknowledgement {
                id: u64::MAX,
                status: Status::Refused,
            },
            Message::End,
        ] {
            let bytes = message.encode().unwrap();
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(Message::decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn the_header_is_laid_out_as_the_protocol_says() {
        let bytes = connection(b"ab", b"xyz", b"s").encode().unwrap();
        assert_eq!(&bytes[..4], b"BHO1");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 0);
        assert_eq!(&bytes[6..8], &[2, 0]);
        assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[16..20], &[3, 0, 0, 0]);
        assert_eq!(&bytes[20..24], &[1, 0, 0, 0]);
        assert_eq!(&bytes[24..], b"abxyzs");
        let ack = Message::Acknowledgement {
            id: 5,
            status: Status::Refused,
        }
        .encode()
        .unwrap();
        assert_eq!(ack.len(), HEADER_LENGTH);
        assert_eq!((ack[4], &ack[6..8]), (2, &[1u8, 0][..]));
        assert_eq!(Message::End.encode().unwrap()[4], 3);
    }

    #[test]
    fn a_connection_over_a_bound_is_not_encoded() {
        for (message, field) in [
            (connection(&[b'n'; MAX_NAME + 1], b"", b""), "name"),
            (connection(b"x", &vec![0; MAX_BUFFER + 1], b""), "buffer"),
            (connection(b"x", b"", &vec![0; MAX_STATE + 1]), "state"),
        ] {
            assert!(
                matches!(message.encode(), Err(WireError::TooLong { field: f, .. }) if f == field),
                "{field}"
            );
        }
    }

    #[test]
    fn malformed_and_oversized_messages_are_refused() {
        let good = connection(b"http", b"abc", b"s").encode().unwrap();
        let with = |index: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[index] = value;
            bytes
        };
        let mut oversized_buffer = good.clone();
        oversized_buffer[16..20].copy_from_slice(&((MAX_BUFFER + 1) as u32).to_le_bytes());
        let mut oversized_state = good.clone();
        oversized_state[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut ack_with_body = Message::Acknowledgement {
            id: 1,
            status: Status::Taken,
        }
        .encode()
        .unwrap();
        ack_with_body.push(0);
        let mut bad_status = Message::Acknowledgement {
            id: 1,
            status: Status::Taken,
        }
        .encode()
        .unwrap();
        bad_status[6] = 2;
        type Expected = fn(&WireError) -> bool;
        let cases: Vec<(Vec<u8>, Expected)> = vec![
            (Vec::new(), |e| matches!(e, WireError::Short(0))),
            (good[..23].to_vec(), |e| matches!(e, WireError::Short(23))),
            (with(0, b'X'), |e| matches!(e, WireError::Magic(_))),
            (with(4, 9), |e| matches!(e, WireError::Type(9))),
            (with(5, 1), |e| matches!(e, WireError::Flags(1))),
            (good[..good.len() - 1].to_vec(), |e| {
                matches!(e, WireError::Length { .. })
            }),
            ([&good[..], b"!"].concat(), |e| {
                matches!(e, WireError::Length { .. })
            }),
            (with(7, 1), |e| {
                matches!(e, WireError::TooLong { field: "name", .. })
            }),
            (oversized_buffer, |e| {
                matches!(
                    e,
                    WireError::TooLong {
                        field: "buffer",
                        ..
                    }
                )
            }),
            (oversized_state, |e| {
                matches!(e, WireError::TooLong { field: "state", .. })
            }),
            (ack_with_body, |e| matches!(e, WireError::Body(_))),
            (bad_status, |e| matches!(e, WireError::Status(2))),
        ];
        for (index, (bytes, expected)) in cases.into_iter().enumerate() {
            let error = Message::decode(&bytes).unwrap_err();
            assert!(expected(&error), "case {index}: {error:?}");
        }
    }

    #[test]
    fn a_refusal_can_name_the_connection_of_a_bad_message() {
        let mut bytes = connection(b"http", b"", b"").encode().unwrap();
        bytes[16] = 0xff;
        assert!(Message::decode(&bytes).is_err());
        assert_eq!(Message::id_in_header(&bytes), Some(0x0102_0304_0506_0708));
        assert_eq!(Message::id_in_header(b"BHO1"), None);
    }
}
