//! A lean HTTP/1.1 keep-alive load for one `GET` path with a bearer token.
//! It parses only the status line and headers and counts the body's bytes
//! without keeping them (a gzipped body is not unpacked), so that as little
//! of the shared cores as possible goes to the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub struct LoadSettings {
    pub address: SocketAddr,
    pub path: String,
    pub token: String,
    pub connections: usize,
    /// Client threads, each with a single-threaded runtime driving its share
    /// of the connections.
    pub threads: usize,
    pub duration: Duration,
    pub client: ClientKind,
}

/// What the client says it can take, as the clients of `GET /services` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// No `Accept-Encoding`: curl without `--compressed`.
    Plain,
    /// `Accept-Encoding: gzip`: browsers, Python requests, Go's net/http.
    Gzip,
    /// Gzip, and each connection sends the last `ETag` it saw as
    /// `If-None-Match`, as a poller that caches does.
    Revalidating,
}

impl ClientKind {
    pub fn label(self) -> &'static str {
        match self {
            ClientKind::Plain => "plain",
            ClientKind::Gzip => "gzip",
            ClientKind::Revalidating => "gzip + `If-None-Match`",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub path: String,
    pub client: ClientKind,
    pub requests: u64,
    pub elapsed: Duration,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// The largest body of a `200`, in bytes as sent.
    pub body_bytes: u64,
    /// Answers that were `304 Not Modified`.
    pub not_modified: u64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run(settings: &LoadSettings) -> anyhow::Result<Throughput> {
    let encoding = match settings.client {
        ClientKind::Plain => "",
        ClientKind::Gzip | ClientKind::Revalidating => "Accept-Encoding: gzip\r\n",
    };
    // Ends before the blank line, so a revalidating client can add its tag.
    let request: Arc<str> = format!(
        "GET {} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n{encoding}",
        settings.path, settings.token
    )
    .into();
    let revalidate = settings.client == ClientKind::Revalidating;
    let threads = settings.threads.clamp(1, settings.connections.max(1));
    let started = Instant::now();
    let deadline = started + settings.duration;
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let share = settings.connections / threads
                + usize::from(thread < settings.connections % threads);
            let request = request.clone();
            let address = settings.address;
            std::thread::Builder::new()
                .name(format!("http-load-{thread}"))
                .spawn(move || -> anyhow::Result<Vec<ConnectionResult>> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a load runtime")?;
                    runtime.block_on(async move {
                        let connections: Vec<_> = (0..share)
                            .map(|_| {
                                tokio::spawn(connection(
                                    address,
                                    request.clone(),
                                    revalidate,
                                    deadline,
                                ))
                            })
                            .collect();
                        let mut results = Vec::with_capacity(share);
                        for connection in connections {
                            results.push(connection.await.context("a load task panicked")??);
                        }
                        Ok(results)
                    })
                })
                .context("cannot start a load thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut latencies = Vec::new();
    let mut body_bytes = 0;
    let mut not_modified = 0;
    for worker in workers {
        let results = match worker.join() {
            Ok(results) => results?,
            Err(_) => bail!("a load thread panicked"),
        };
        for mut result in results {
            latencies.append(&mut result.latencies);
            body_bytes = body_bytes.max(result.body_bytes);
            not_modified += result.not_modified;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Throughput {
        path: settings.path.clone(),
        client: settings.client,
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        body_bytes,
        not_modified,
    })
}

struct ConnectionResult {
    latencies: Vec<Duration>,
    body_bytes: u64,
    not_modified: u64,
}

/// One keep-alive connection sending the request again as soon as the
/// previous answer is complete, until `deadline`.
async fn connection(
    address: SocketAddr,
    request: Arc<str>,
    revalidate: bool,
    deadline: Instant,
) -> anyhow::Result<ConnectionResult> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_nodelay(true)?;
    let mut result = ConnectionResult {
        latencies: Vec::with_capacity(64 * 1024),
        body_bytes: 0,
        not_modified: 0,
    };
    let mut buffer = vec![0u8; 256 * 1024];
    let mut etag: Option<String> = None;
    let mut outgoing = String::with_capacity(request.len() + 128);
    while Instant::now() < deadline {
        outgoing.clear();
        outgoing.push_str(&request);
        if let Some(tag) = etag.as_deref().filter(|_| revalidate) {
            outgoing.push_str("If-None-Match: ");
            outgoing.push_str(tag);
            outgoing.push_str("\r\n");
        }
        outgoing.push_str("\r\n");
        let sent = Instant::now();
        stream.write_all(outgoing.as_bytes()).await?;
        let answer = read_response(&mut stream, &mut buffer).await?;
        result.latencies.push(sent.elapsed());
        if answer.not_modified {
            result.not_modified += 1;
        } else {
            result.body_bytes = result.body_bytes.max(answer.body_len);
        }
        if answer.etag.is_some() {
            etag = answer.etag;
        }
    }
    Ok(result)
}

struct Answer {
    body_len: u64,
    not_modified: bool,
    etag: Option<String>,
}

/// Reads one whole response; fails on anything but a `200` with a
/// `Content-Length` body or a `304`, which is all the server sends to this
/// request.
async fn read_response(stream: &mut TcpStream, buffer: &mut [u8]) -> anyhow::Result<Answer> {
    let mut filled = 0;
    let (header_len, answer) = loop {
        if filled == buffer.len() {
            bail!("response headers larger than {} bytes", buffer.len());
        }
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            bail!("the server closed the connection mid-response");
        }
        filled += read;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(header_len) = response.parse(&buffer[..filled])? {
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::trim)
            };
            let etag = header("etag").map(str::to_owned);
            let answer = match response.code {
                Some(304) => Answer {
                    body_len: 0,
                    not_modified: true,
                    etag,
                },
                Some(200) => Answer {
                    body_len: header("content-length")
                        .and_then(|v| v.parse::<u64>().ok())
                        .context("response without Content-Length")?,
                    not_modified: false,
                    etag,
                },
                code => bail!(
                    "expected 200 or 304, got {code:?}: {}",
                    String::from_utf8_lossy(&buffer[header_len..filled])
                ),
            };
            break (header_len, answer);
        }
    };
    let mut left = answer.body_len.saturating_sub((filled - header_len) as u64);
    while left > 0 {
        let read = stream.read(buffer).await?;
        if read == 0 {
            bail!("the server closed the connection mid-body");
        }
        left = left.saturating_sub(read as u64);
    }
    Ok(answer)
}
