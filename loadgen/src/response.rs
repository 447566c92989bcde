//! Reading and judging one HTTP/1.x response, strictly: every byte the server
//! sends must belong to the response to the request we sent.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::FailureKind;
use crate::connection::classify_io_error;

/// A head larger than this is not something a test server sends.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A body read until EOF is cut off here rather than exhaust memory.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const MAX_HEADERS: usize = 64;
/// Reads ask for at least this much room, so a full buffer does not turn
/// into many tiny reads.
const READ_RESERVE: usize = 8 * 1024;
/// Reads of a body that is not kept go here, as large as a socket's
/// receive buffer commonly is, so a big body takes few reads.
const SCRATCH_BYTES: usize = 256 * 1024;

/// Buffers reused across requests, so the hot path does not allocate.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    input: Vec<u8>,
    chunked_body: Vec<u8>,
    /// Where a body that is not kept is read into and forgotten.
    scratch: Vec<u8>,
    /// Where the last body read is, when it was kept.
    body: BodyAt,
    /// `X-Baton-Generation` of the last response, when it had one.
    pub(crate) generation: String,
}

#[derive(Debug, Default, Clone, Copy)]
enum BodyAt {
    #[default]
    Nowhere,
    Input {
        start: usize,
        end: usize,
    },
    Chunked,
}

impl Buffers {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Buffers {
            input: Vec::with_capacity(capacity),
            ..Buffers::default()
        }
    }

    /// The head of the last response read, status line to blank line.
    pub(crate) fn head(&self, head: &Head) -> &[u8] {
        &self.input[..head.length]
    }

    /// The last body read, when it was kept.
    pub(crate) fn body(&self) -> Option<&[u8]> {
        match self.body {
            BodyAt::Nowhere => None,
            BodyAt::Input { start, end } => Some(&self.input[start..end]),
            BodyAt::Chunked => Some(&self.chunked_body),
        }
    }
}

/// A complete, valid `200` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// False when the server asked to close (or framed the body by closing).
    pub(crate) keep_alive: bool,
    /// True when `Buffers::generation` holds this response's generation.
    pub(crate) has_generation: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
    Empty,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    length: usize,
    pub(crate) status: u16,
    keep_alive: bool,
    framing: Framing,
    has_generation: bool,
}

/// How a body ended: its length, and whether the connection can carry
/// another request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyEnd {
    pub(crate) length: usize,
    pub(crate) keep_alive: bool,
}

/// Reads one response from `stream`, which must hold nothing else, and
/// accepts only a `200` whose body starts with `expect_body_prefix`.
pub(crate) async fn read_response<S>(
    stream: &mut S,
    buffers: &mut Buffers,
    expect_body_prefix: Option<&[u8]>,
) -> Result<Accepted, FailureKind>
where
    S: AsyncRead + Unpin,
{
    let head = read_head(stream, buffers).await?;
    if head.status != 200 {
        return Err(FailureKind::BadStatus);
    }
    let end = read_body(stream, buffers, &head, true).await?;
    let body = buffers.body().unwrap_or_default();
    let unexpected_prefix = expect_body_prefix.filter(|prefix| !body.starts_with(prefix));
    if let Some(prefix) = unexpected_prefix {
        let truncated = body.len() < prefix.len() && prefix.starts_with(body);
        return Err(if truncated {
            FailureKind::ShortBody
        } else {
            FailureKind::UnexpectedBody
        });
    }
    Ok(Accepted {
        keep_alive: end.keep_alive,
        has_generation: head.has_generation,
    })
}

/// Reads the head of the next final response (skipping interim ones); any
/// bytes of the body read with it stay in the input buffer.
pub(crate) async fn read_head<S>(stream: &mut S, buffers: &mut Buffers) -> Result<Head, FailureKind>
where
    S: AsyncRead + Unpin,
{
    buffers.input.clear();
    buffers.body = BodyAt::Nowhere;
    loop {
        if let Some(head) = parse_head(&buffers.input, &mut buffers.generation)? {
            if (100..200).contains(&head.status) {
                // An interim response (100 Continue, 103 Early Hints): the real one follows.
                buffers.input.drain(..head.length);
                continue;
            }
            return Ok(head);
        }
        if buffers.input.len() > MAX_HEAD_BYTES {
            return Err(FailureKind::InvalidResponse);
        }
        if read_more(stream, &mut buffers.input).await? == 0 {
            return Err(FailureKind::EofBeforeResponse);
        }
    }
}

/// Reads the body `head` announced. A kept body is in [`Buffers::body`].
/// One that is not kept is counted without being stored when it has a
/// `Content-Length`; a chunked body or one that runs to the close is read
/// whole all the same, but not handed out.
pub(crate) async fn read_body<S>(
    stream: &mut S,
    buffers: &mut Buffers,
    head: &Head,
    keep: bool,
) -> Result<BodyEnd, FailureKind>
where
    S: AsyncRead + Unpin,
{
    let mut keep_alive = head.keep_alive;
    let length = match head.framing {
        Framing::Empty => {
            if buffers.input.len() > head.length {
                return Err(FailureKind::InvalidResponse);
            }
            0
        }
        Framing::Length(length) if !keep => {
            let already = buffers.input.len() - head.length;
            if already > length {
                return Err(FailureKind::InvalidResponse);
            }
            buffers.input.truncate(head.length);
            let mut left = length - already;
            if left > 0 && buffers.scratch.is_empty() {
                buffers.scratch = vec![0; SCRATCH_BYTES];
            }
            while left > 0 {
                let read = stream
                    .read(&mut buffers.scratch)
                    .await
                    .map_err(|error| classify_io_error(&error))?;
                if read == 0 {
                    return Err(FailureKind::ShortBody);
                }
                left = left.checked_sub(read).ok_or(FailureKind::InvalidResponse)?;
            }
            length
        }
        Framing::Length(length) => {
            let end = head
                .length
                .checked_add(length)
                .ok_or(FailureKind::InvalidResponse)?;
            while buffers.input.len() < end {
                if read_more(stream, &mut buffers.input).await? == 0 {
                    return Err(FailureKind::ShortBody);
                }
            }
            if buffers.input.len() > end {
                return Err(FailureKind::InvalidResponse);
            }
            buffers.body = BodyAt::Input {
                start: head.length,
                end,
            };
            length
        }
        Framing::Chunked => {
            loop {
                if let Some(consumed) =
                    decode_chunked(&buffers.input[head.length..], &mut buffers.chunked_body)?
                {
                    if head.length + consumed != buffers.input.len() {
                        return Err(FailureKind::InvalidResponse);
                    }
                    break;
                }
                if read_more(stream, &mut buffers.input).await? == 0 {
                    return Err(FailureKind::ShortBody);
                }
            }
            buffers.body = BodyAt::Chunked;
            buffers.chunked_body.len()
        }
        Framing::UntilEof => {
            keep_alive = false;
            while read_more(stream, &mut buffers.input).await? > 0 {
                if buffers.input.len() - head.length > MAX_BODY_BYTES {
                    return Err(FailureKind::InvalidResponse);
                }
            }
            let end = buffers.input.len();
            buffers.body = BodyAt::Input {
                start: head.length,
                end,
            };
            end - head.length
        }
    };
    if !keep {
        buffers.body = BodyAt::Nowhere;
    }
    Ok(BodyEnd { length, keep_alive })
}

async fn read_more<S>(stream: &mut S, input: &mut Vec<u8>) -> Result<usize, FailureKind>
where
    S: AsyncRead + Unpin,
{
    if input.capacity() - input.len() < READ_RESERVE {
        input.reserve(READ_RESERVE);
    }
    stream
        .read_buf(input)
        .await
        .map_err(|error| classify_io_error(&error))
}

fn parse_head(input: &[u8], generation: &mut String) -> Result<Option<Head>, FailureKind> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(FailureKind::InvalidResponse),
    };
    let status = response.code.ok_or(FailureKind::InvalidResponse)?;
    let http_10 = response.version == Some(0);
    let mut keep_alive = !http_10;
    let mut content_length: Option<usize> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut has_generation = false;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http_10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = parse_decimal(header.value).ok_or(FailureKind::InvalidResponse)?;
            if content_length.is_some_and(|previous| previous != value) {
                return Err(FailureKind::InvalidResponse);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(header.value);
        } else if name.eq_ignore_ascii_case("x-baton-generation") {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| FailureKind::InvalidResponse)?
                .trim();
            generation.clear();
            generation.push_str(value);
            has_generation = true;
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if let Some(codings) = transfer_encoding {
        // Only a final `chunked` frames the body; any other coding runs to EOF.
        let last = codings
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilEof
        }
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        Framing::UntilEof
    };
    if status == 101 {
        // We never ask to switch protocols.
        return Err(FailureKind::InvalidResponse);
    }
    Ok(Some(Head {
        length,
        status,
        keep_alive,
        framing,
        has_generation,
    }))
}

fn parse_decimal(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Decodes a chunked body from the start of `data` into `body`. Returns the
/// bytes consumed once the last chunk and trailers are complete, `None` when
/// more bytes are needed.
fn decode_chunked(data: &[u8], body: &mut Vec<u8>) -> Result<Option<usize>, FailureKind> {
    body.clear();
    let mut position = 0;
    loop {
        let Some(line_length) = find_line(&data[position..])? else {
            return Ok(None);
        };
        let line = &data[position..position + line_length];
        let size_text = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(size_text)
            .ok()
            .filter(|text| !text.is_empty())
            .and_then(|text| usize::from_str_radix(text, 16).ok())
            .filter(|size| *size <= MAX_BODY_BYTES)
            .ok_or(FailureKind::InvalidResponse)?;
        position += line_length + 2;
        if size == 0 {
            loop {
                let Some(trailer_length) = find_line(&data[position..])? else {
                    return Ok(None);
                };
                position += trailer_length + 2;
                if trailer_length == 0 {
                    return Ok(Some(position));
                }
            }
        }
        if data.len() - position < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[position..position + size]);
        if body.len() > MAX_BODY_BYTES || &data[position + size..position + size + 2] != b"\r\n" {
            return Err(FailureKind::InvalidResponse);
        }
        position += size + 2;
    }
}

/// The length of the line at the start of `data`, without its CRLF.
fn find_line(data: &[u8]) -> Result<Option<usize>, FailureKind> {
    match data.windows(2).position(|pair| pair == b"\r\n") {
        Some(length) => Ok(Some(length)),
        None if data.len() > MAX_HEAD_BYTES => Err(FailureKind::InvalidResponse),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn judge(bytes: &[u8], prefix: Option<&str>) -> Result<Accepted, FailureKind> {
        let mut stream = bytes;
        let mut buffers = Buffers::default();
        read_response(&mut stream, &mut buffers, prefix.map(str::as_bytes)).await
    }

    #[tokio::test]
    async fn accepts_each_framing() {
        let length = judge(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Some("hel"),
        )
        .await;
        assert_eq!(
            length,
            Ok(Accepted {
                keep_alive: true,
                has_generation: false
            })
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer: 1\r\n\r\n";
        assert!(judge(chunked, Some("hello")).await.is_ok());
        let until_eof = judge(b"HTTP/1.1 200 OK\r\n\r\nhello", Some("hello"))
            .await
            .unwrap();
        assert!(!until_eof.keep_alive);
        let interim = judge(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            None,
        )
        .await;
        assert!(interim.is_ok());
        let http_10 = judge(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", None)
            .await
            .unwrap();
        assert!(!http_10.keep_alive);
        let closing = judge(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            None,
        )
        .await
        .unwrap();
        assert!(!closing.keep_alive);
    }

    #[tokio::test]
    async fn a_body_not_kept_is_counted_across_reads() {
        let body = vec![b'x'; 300 * 1024];
        let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 307200\r\n\r\n".to_vec();
        response.extend_from_slice(&body);
        let mut stream = &response[..];
        let mut buffers = Buffers::default();
        let head = read_head(&mut stream, &mut buffers).await.unwrap();
        let end = read_body(&mut stream, &mut buffers, &head, false)
            .await
            .unwrap();
        assert_eq!(end.length, 300 * 1024);
        assert!(end.keep_alive);
        assert_eq!(buffers.body(), None);
        assert!(buffers.head(&head).starts_with(b"HTTP/1.1 200 OK"));

        let mut longer = response.clone();
        longer.extend_from_slice(b"extra");
        let mut stream = &longer[..];
        let head = read_head(&mut stream, &mut buffers).await.unwrap();
        let overrun = read_body(&mut stream, &mut buffers, &head, false).await;
        assert_eq!(overrun.unwrap_err(), FailureKind::InvalidResponse);
    }

    #[tokio::test]
    async fn records_the_generation() {
        let mut stream =
            &b"HTTP/1.1 200 OK\r\nX-Baton-Generation: 12\r\nContent-Length: 0\r\n\r\n"[..];
        let mut buffers = Buffers::default();
        let accepted = read_response(&mut stream, &mut buffers, None)
            .await
            .unwrap();
        assert!(accepted.has_generation);
        assert_eq!(buffers.generation, "12");
    }

    #[tokio::test]
    async fn names_each_kind_of_bad_response() {
        assert_eq!(judge(b"", None).await, Err(FailureKind::EofBeforeResponse));
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nContent-Le", None).await,
            Err(FailureKind::EofBeforeResponse)
        );
        assert_eq!(
            judge(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", None).await,
            Err(FailureKind::BadStatus)
        );
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello", None).await,
            Err(FailureKind::ShortBody)
        );
        assert_eq!(
            judge(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Some("bye")
            )
            .await,
            Err(FailureKind::UnexpectedBody)
        );
        assert_eq!(
            judge(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                Some("hi there")
            )
            .await,
            Err(FailureKind::ShortBody)
        );
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", None).await,
            Err(FailureKind::InvalidResponse)
        );
        assert_eq!(
            judge(b"SMTP ready\r\n\r\n", None).await,
            Err(FailureKind::InvalidResponse)
        );
        assert_eq!(
            judge(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                None
            )
            .await,
            Err(FailureKind::InvalidResponse)
        );
        assert_eq!(
            judge(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                None
            )
            .await,
            Err(FailureKind::ShortBody)
        );
        assert_eq!(
            judge(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                None
            )
            .await,
            Err(FailureKind::InvalidResponse)
        );
    }
}
