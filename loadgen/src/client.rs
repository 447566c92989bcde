//! One keep-alive HTTP/1.1 connection for callers that send their own
//! requests and judge the answers themselves: any status, headers on
//! request, and a body that can be counted without being kept.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::connection::{Connection, classify_io_error};
use crate::response::{Buffers, read_body, read_head};
use crate::{FailureKind, Target};

/// Whether [`Client::get`] keeps the response's body for
/// [`Response::body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Keep,
    /// Count it only: a large body costs reads, not memory copies.
    Discard,
}

/// A keep-alive connection sending one request at a time.
pub struct Client {
    connection: Connection,
    buffers: Buffers,
    request: Vec<u8>,
    host: String,
}

/// A complete response, borrowed from its [`Client`] until the next request.
#[derive(Debug)]
pub struct Response<'a> {
    /// `304 Not Modified` among them: its empty body is not a short one.
    pub status: u16,
    /// The body's length in bytes as sent (still compressed when the server
    /// compressed it).
    pub body_len: usize,
    /// False when the server asked to close the connection, or ended the
    /// body by closing it: the next request needs a new [`Client`].
    pub keep_alive: bool,
    head: &'a [u8],
    body: Option<&'a [u8]>,
}

impl Response<'_> {
    /// The first header called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        response.parse(self.head).ok()?;
        let value = response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))?
            .value;
        std::str::from_utf8(value).ok().map(str::trim)
    }

    /// The body, when it was asked for with [`Body::Keep`].
    pub fn body(&self) -> Option<&[u8]> {
        self.body
    }
}

impl Client {
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Client, FailureKind> {
        let host = match target {
            Target::Tcp(address) => address.to_string(),
            Target::Unix(_) => "localhost".to_owned(),
        };
        Ok(Client {
            connection: Connection::open(target, timeout).await?,
            buffers: Buffers::with_capacity(16 * 1024),
            request: Vec::with_capacity(512),
            host,
        })
    }

    /// Sends `GET path` with `headers` (besides `Host`) and reads the whole
    /// answer, whatever its status.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Response<'_>, FailureKind> {
        self.request.clear();
        for part in ["GET ", path, " HTTP/1.1\r\nHost: ", &self.host, "\r\n"] {
            self.request.extend_from_slice(part.as_bytes());
        }
        for (name, value) in headers {
            for part in [*name, ": ", *value, "\r\n"] {
                self.request.extend_from_slice(part.as_bytes());
            }
        }
        self.request.extend_from_slice(b"\r\n");
        self.connection
            .write_all(&self.request)
            .await
            .map_err(|error| classify_io_error(&error))?;
        let head = read_head(&mut self.connection, &mut self.buffers).await?;
        let end = read_body(
            &mut self.connection,
            &mut self.buffers,
            &head,
            body == Body::Keep,
        )
        .await?;
        Ok(Response {
            status: head.status,
            body_len: end.length,
            keep_alive: end.keep_alive,
            head: self.buffers.head(&head),
            body: self.buffers.body(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    /// A server that answers each request on one connection with the next
    /// of `answers`, and hands back every request it read.
    async fn serve(answers: Vec<&'static str>) -> (Target, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::Tcp(listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut requests = Vec::new();
            for answer in answers {
                let mut request = Vec::new();
                while !request.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read(&mut byte).await.unwrap() == 0 {
                        return requests;
                    }
                    request.push(byte[0]);
                }
                requests.push(String::from_utf8(request).unwrap());
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        (target, server)
    }

    #[tokio::test]
    async fn a_revalidating_client_sends_its_headers_and_understands_304() {
        let (target, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: 11\r\n\r\nhello world",
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut client = Client::connect(&target, Duration::from_secs(1))
            .await
            .unwrap();
        let first = client
            .get("/services", &[("Accept-Encoding", "gzip")], Body::Discard)
            .await
            .unwrap();
        assert_eq!(
            (first.status, first.body_len, first.keep_alive),
            (200, 11, true)
        );
        assert_eq!(first.body(), None);
        let etag = first.header("ETAG").unwrap().to_owned();
        assert_eq!(etag, "\"v1\"");
        let second = client
            .get("/services", &[("If-None-Match", &etag)], Body::Discard)
            .await
            .unwrap();
        assert_eq!((second.status, second.body_len), (304, 0));
        // The 304's empty body did not swallow the next answer.
        let third = client.get("/healthz", &[], Body::Keep).await.unwrap();
        assert_eq!(third.body(), Some(&b"ok"[..]));
        assert_eq!(third.header("etag"), None);
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("GET /services HTTP/1.1\r\n"));
        assert!(requests[0].contains("\r\nAccept-Encoding: gzip\r\n"));
        assert!(requests[1].contains("\r\nIf-None-Match: \"v1\"\r\n"));
        assert!(requests[2].starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:"));
    }

    #[tokio::test]
    async fn any_status_is_an_answer_and_a_short_body_is_a_failure() {
        let (target, _server) = serve(vec![
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut",
        ])
        .await;
        let mut client = Client::connect(&target, Duration::from_secs(1))
            .await
            .unwrap();
        let refused = client.get("/", &[], Body::Keep).await.unwrap();
        assert_eq!((refused.status, refused.body()), (401, Some(&b"nope"[..])));
        let cut = client.get("/", &[], Body::Discard).await;
        assert_eq!(cut.unwrap_err(), FailureKind::ShortBody);
    }
}
