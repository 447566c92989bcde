//! A small HTTP/1.1 server, written by hand so that every keep-alive and
//! draining decision is visible: while draining, a connection is never closed
//! under a client that may be sending; the next response says
//! `Connection: close` instead, and only then is the connection closed.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::drain::DrainWatch;
use crate::handover::Handover;
use crate::ws;

/// A request head larger than this is refused: no route needs one.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// `/sleep` is for draining tests, not for parking connections for days.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How long a closing connection waits for the client's own close, so that
/// bytes it already sent do not turn our close into a reset that could destroy
/// the last response before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Everything a connection needs to answer, shared by all connections.
#[derive(Debug)]
pub struct HttpContext {
    generation: String,
    pid: u32,
    hello_body: String,
    identity_headers: String,
    drain_idle_grace: Duration,
}

impl HttpContext {
    /// `generation` is `BATON_GENERATION`; it goes into a header, so anything
    /// but visible ASCII is replaced by `0` rather than corrupt the response.
    pub fn new(generation: &str, pid: u32, drain_idle_grace: Duration) -> Arc<Self> {
        let generation =
            if !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_graphic()) {
                generation.to_owned()
            } else {
                "0".to_owned()
            };
        Arc::new(HttpContext {
            hello_body: format!("hello from generation {generation} pid {pid}\n"),
            identity_headers: format!("X-Baton-Generation: {generation}\r\nX-Baton-Pid: {pid}\r\n"),
            generation,
            pid,
            drain_idle_grace,
        })
    }

    pub fn generation(&self) -> &str {
        &self.generation
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// While draining, how long an idle connection may stay open.
    pub fn drain_idle_grace(&self) -> Duration {
        self.drain_idle_grace
    }
}

/// What a parsed request asks for, decided while the head is still borrowed
/// from the read buffer.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Hello,
    Health,
    Sleep(Duration),
    /// An upgrade to a WebSocket, with its `Sec-WebSocket-Accept`.
    WebSocket(String),
    NotFound,
    BadRequest(&'static str),
}

#[derive(Debug)]
struct Request {
    route: Route,
    head_only: bool,
    keep_alive: bool,
    http_10: bool,
    body_length: u64,
}

enum Parsed {
    Complete {
        head_length: usize,
        request: Request,
    },
    Partial,
    /// The request cannot be answered in a way the client could frame; the
    /// connection ends after this response.
    Unframeable {
        status: u16,
        reason: &'static str,
    },
}

/// Serves one connection until the client leaves, an error occurs, or
/// draining ends it: handed over to the next generation between two
/// requests (with the part of the next one already read), else politely.
/// `input` holds bytes read before (by a previous generation).
pub async fn serve_connection<S>(
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
    let mut output: Vec<u8> = Vec::with_capacity(4096);
    // Set once this connection was offered to the next generation.
    let mut offered = false;
    // Set when this connection first sits idle during a drain: the client gets
    // `drain_idle_grace` from then to send one last request.
    let mut idle_deadline: Option<Instant> = None;
    loop {
        match parse_request(&input) {
            Parsed::Complete {
                head_length,
                request,
            } => {
                input.advance(head_length);
                if !discard_body(&mut stream, &mut input, request.body_length).await? {
                    break;
                }
                if let Route::Sleep(duration) = request.route {
                    flush(&mut stream, &mut output).await?;
                    tokio::time::sleep(duration).await;
                }
                if let Route::WebSocket(accept) = &request.route {
                    write_upgrade(&context, accept, &mut output);
                    flush(&mut stream, &mut output).await?;
                    return ws::serve_ws(stream, name, input, context, drain, handover).await;
                }
                // Decided after any sleep: a drain may have begun meanwhile.
                // A connection the next generation may still take stays
                // open: closing it is what handoff avoids.
                let keep_alive = request.keep_alive
                    && (!drain.is_draining() || (!offered && handover.possible().await));
                write_response(&context, &request, keep_alive, &mut output);
                if !keep_alive {
                    break;
                }
            }
            Parsed::Unframeable { status, reason } => {
                write_simple(&context, status, reason, &mut output);
                break;
            }
            Parsed::Partial => {
                if input.len() > MAX_HEAD_BYTES {
                    write_simple(&context, 431, "request head too large\n", &mut output);
                    break;
                }
                // Responses to pipelined requests go out together, before we wait.
                flush(&mut stream, &mut output).await?;
                // Between two requests, every response written: the part of
                // the next request already read travels with it.
                if drain.is_draining() && !offered {
                    offered = true;
                    match handover.offer(&name, stream, &input, b"").await {
                        Ok(()) => return Ok(()),
                        Err(kept) => stream = kept,
                    }
                }
                let idle = input.is_empty();
                let read = if idle && drain.is_draining() {
                    let deadline = *idle_deadline
                        .get_or_insert_with(|| Instant::now() + context.drain_idle_grace);
                    match tokio::time::timeout_at(deadline, stream.read_buf(&mut input)).await {
                        Ok(read) => read?,
                        Err(_) => break,
                    }
                } else if idle {
                    tokio::select! {
                        read = stream.read_buf(&mut input) => read?,
                        _ = drain.draining() => continue,
                    }
                } else if !offered {
                    // Half a request: it may travel with the connection.
                    tokio::select! {
                        read = stream.read_buf(&mut input) => read?,
                        _ = drain.draining() => continue,
                    }
                } else {
                    stream.read_buf(&mut input).await?
                };
                if read == 0 {
                    // The client closed; a half-sent request cannot be answered.
                    return Ok(());
                }
            }
        }
    }
    flush(&mut stream, &mut output).await?;
    close_lingering(&mut stream, &mut input).await;
    Ok(())
}

fn parse_request(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_length = match request.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Unframeable {
                status: 431,
                reason: "too many headers\n",
            };
        }
        Err(_) => {
            return Parsed::Unframeable {
                status: 400,
                reason: "malformed request\n",
            };
        }
    };
    let http_10 = request.version == Some(0);
    let mut keep_alive = !http_10;
    let mut body_length: Option<u64> = None;
    let mut upgrade = Upgrade::default();
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http_10 {
                    keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    upgrade.connection = true;
                }
            }
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade.websocket = header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"));
        } else if header.name.eq_ignore_ascii_case("sec-websocket-key") {
            upgrade.key = Some(header.value.trim_ascii().to_vec());
        } else if header.name.eq_ignore_ascii_case("sec-websocket-version") {
            upgrade.version_13 = header.value.trim_ascii() == b"13";
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .map(str::trim)
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<u64>().ok());
            match (parsed, body_length) {
                (Some(length), None) => body_length = Some(length),
                (Some(length), Some(previous)) if length == previous => {}
                _ => {
                    return Parsed::Unframeable {
                        status: 400,
                        reason: "invalid Content-Length\n",
                    };
                }
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Unframeable {
                status: 501,
                reason: "request bodies must have a Content-Length\n",
            };
        }
    }
    let method = request.method.unwrap_or_default();
    let path = request.path.unwrap_or_default();
    let route = if method == "GET" && path.split('?').next() == Some("/ws") {
        match upgrade.accept() {
            Some(accept) if !http_10 => Route::WebSocket(accept),
            _ => Route::BadRequest("expected a WebSocket upgrade (RFC 6455)\n"),
        }
    } else if method == "GET" || method == "HEAD" {
        route(path)
    } else {
        Route::NotFound
    };
    Parsed::Complete {
        head_length,
        request: Request {
            route,
            head_only: method == "HEAD",
            keep_alive,
            http_10,
            body_length: body_length.unwrap_or(0),
        },
    }
}

/// What a request says about upgrading to a WebSocket.
#[derive(Debug, Default)]
struct Upgrade {
    connection: bool,
    websocket: bool,
    version_13: bool,
    key: Option<Vec<u8>>,
}

impl Upgrade {
    fn accept(&self) -> Option<String> {
        let key = self.key.as_ref()?;
        (self.connection && self.websocket && self.version_13 && !key.is_empty())
            .then(|| ws::accept_key(key))
    }
}

fn route(target: &str) -> Route {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" => Route::Hello,
        "/healthz" => Route::Health,
        "/sleep" => {
            let milliseconds = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("ms="))
                .and_then(|value| value.parse::<u64>().ok());
            match milliseconds {
                Some(milliseconds) => {
                    Route::Sleep(Duration::from_millis(milliseconds).min(MAX_SLEEP))
                }
                None => Route::BadRequest("expected /sleep?ms=<milliseconds>\n"),
            }
        }
        _ => Route::NotFound,
    }
}

/// Reads and drops a request body. Returns false when the client left midway.
async fn discard_body<S>(
    stream: &mut S,
    input: &mut BytesMut,
    mut remaining: u64,
) -> std::io::Result<bool>
where
    S: AsyncRead + Unpin,
{
    loop {
        let buffered = remaining.min(input.len() as u64) as usize;
        input.advance(buffered);
        remaining -= buffered as u64;
        if remaining == 0 {
            return Ok(true);
        }
        if stream.read_buf(input).await? == 0 {
            return Ok(false);
        }
    }
}

fn write_response(
    context: &HttpContext,
    request: &Request,
    keep_alive: bool,
    output: &mut Vec<u8>,
) {
    let sleep_body;
    let (status, body): (u16, &str) = match &request.route {
        Route::Hello => (200, &context.hello_body),
        Route::Health => (200, "ok\n"),
        Route::Sleep(duration) => {
            sleep_body = format!("slept {} ms\n", duration.as_millis());
            (200, &sleep_body)
        }
        Route::NotFound => (404, "not found\n"),
        Route::BadRequest(reason) => (400, reason),
        // Answered by `write_upgrade`.
        Route::WebSocket(_) => (500, "not upgraded\n"),
    };
    let connection = match (keep_alive, request.http_10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    write_head(context, status, body.len(), connection, output);
    if !request.head_only {
        output.extend_from_slice(body.as_bytes());
    }
}

/// `101 Switching Protocols` to a WebSocket.
fn write_upgrade(context: &HttpContext, accept: &str, output: &mut Vec<u8>) {
    let _ = write!(
        output,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{}\r\n",
        context.identity_headers
    );
}

/// A response after which the connection closes.
fn write_simple(context: &HttpContext, status: u16, body: &str, output: &mut Vec<u8>) {
    write_head(context, status, body.len(), "Connection: close\r\n", output);
    output.extend_from_slice(body.as_bytes());
}

fn write_head(
    context: &HttpContext,
    status: u16,
    body_length: usize,
    connection: &str,
    output: &mut Vec<u8>,
) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        output,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_length}\r\n{}{connection}\r\n",
        context.identity_headers
    );
}

async fn flush<S>(stream: &mut S, output: &mut Vec<u8>) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if !output.is_empty() {
        stream.write_all(output).await?;
        output.clear();
    }
    Ok(())
}

/// Half-closes, then reads until the client closes (or `LINGER` passes), so
/// that unread bytes in our receive queue do not make the kernel answer our
/// close with a reset.
async fn close_lingering<S>(stream: &mut S, scratch: &mut BytesMut)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            scratch.clear();
            match stream.read_buf(scratch).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// A parsed response, as much as these tests need.
    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<Response> {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.ok()?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':')?;
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))?
            .1
            .parse()
            .ok()?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.ok()?;
        Some(Response {
            status,
            headers,
            body: String::from_utf8(body).ok()?,
        })
    }

    /// Starts a server on port 0 whose connections share one drain trigger.
    async fn start_server(grace: Duration) -> (std::net::SocketAddr, drain::DrainTrigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, watch) = drain::channel();
        let context = HttpContext::new("7", 4242, grace);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve_connection(
                    stream,
                    "http".into(),
                    BytesMut::new(),
                    context.clone(),
                    watch.clone(),
                    Handover::disabled(),
                ));
            }
        });
        (address, trigger)
    }

    #[tokio::test]
    async fn answers_pipelined_keep_alive_requests_in_order() {
        let (address, _trigger) = start_server(Duration::from_secs(2)).await;
        let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
        stream
            .get_mut()
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
                  POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await
            .unwrap();
        let hello = read_response(&mut stream).await.unwrap();
        assert_eq!(hello.status, 200);
        assert_eq!(hello.body, "hello from generation 7 pid 4242\n");
        assert_eq!(hello.header("x-baton-generation"), Some("7"));
        assert_eq!(hello.header("x-baton-pid"), Some("4242"));
        assert_eq!(hello.header("connection"), None);
        assert_eq!(
            read_response(&mut stream).await.unwrap().status,
            404,
            "POST is not routed"
        );
        let health = read_response(&mut stream).await.unwrap();
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        assert_eq!(read_response(&mut stream).await.unwrap().status, 404);
        // Still open: a request sent later in pieces is answered too.
        stream.get_mut().write_all(b"GET /heal").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream
            .get_mut()
            .write_all(b"thz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.unwrap().body, "ok\n");
    }

    #[tokio::test]
    async fn honours_connection_close_and_http_10() {
        let (address, _trigger) = start_server(Duration::from_secs(2)).await;
        for (request, expected_connection) in [
            (
                &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
                Some("close"),
            ),
            (&b"GET / HTTP/1.0\r\n\r\n"[..], Some("close")),
        ] {
            let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
            stream.get_mut().write_all(request).await.unwrap();
            let response = read_response(&mut stream).await.unwrap();
            assert_eq!(response.header("connection"), expected_connection);
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "the server closes after the response");
        }
        let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
        stream
            .get_mut()
            .write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await.unwrap();
        assert_eq!(response.header("connection"), Some("keep-alive"));
        stream
            .get_mut()
            .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn malformed_and_bad_requests_are_refused() {
        let (address, _trigger) = start_server(Duration::from_secs(2)).await;
        let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
        stream
            .get_mut()
            .write_all(b"GET /sleep HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.unwrap().status, 400);
        stream
            .get_mut()
            .write_all(b"NOT HTTP AT ALL\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await.unwrap();
        assert_eq!(response.status, 400);
        assert_eq!(response.header("connection"), Some("close"));
    }

    #[tokio::test]
    async fn draining_answers_the_next_request_with_connection_close() {
        let (address, trigger) = start_server(Duration::from_secs(5)).await;
        let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
        stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let before = read_response(&mut stream).await.unwrap();
        assert_eq!(before.header("connection"), None);
        trigger.start();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The connection is idle but inside its grace period: still answered.
        stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let last = read_response(&mut stream).await.unwrap();
        assert_eq!(last.status, 200);
        assert_eq!(last.header("connection"), Some("close"));
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn draining_finishes_a_request_in_flight() {
        let (address, trigger) = start_server(Duration::from_secs(5)).await;
        let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
        stream
            .get_mut()
            .write_all(b"GET /sleep?ms=300 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.start();
        let response = read_response(&mut stream).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "slept 300 ms\n");
        assert_eq!(response.header("connection"), Some("close"));
    }

    #[tokio::test]
    async fn draining_closes_an_idle_connection_after_the_grace() {
        let (address, trigger) = start_server(Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut reader = BufReader::new(&mut stream);
        read_response(&mut reader).await.unwrap();
        let started = std::time::Instant::now();
        trigger.start();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
            .await
            .expect("an idle connection is closed once the grace has passed")
            .unwrap();
        assert!(rest.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn rejects_conflicting_content_lengths_and_chunked_bodies() {
        for request in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(parse_request(request), Parsed::Unframeable { .. }));
        }
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\n"),
            Parsed::Partial
        ));
        assert_eq!(
            route("/sleep?x=1&ms=25"),
            Route::Sleep(Duration::from_millis(25))
        );
    }
}
