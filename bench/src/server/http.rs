//! A lean HTTP/1.1 keep-alive load for one `GET` path with a bearer token.
//! It parses only the status line and headers and counts the body's bytes
//! without keeping them, so that as little of the shared cores as possible
//! goes to the client.

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
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub path: String,
    pub requests: u64,
    pub elapsed: Duration,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// The body of the last response, in bytes.
    pub body_bytes: u64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run(settings: &LoadSettings) -> anyhow::Result<Throughput> {
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\r\n",
        settings.path, settings.token
    )
    .into_bytes()
    .into();
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
                .spawn(move || -> anyhow::Result<Vec<(Vec<Duration>, u64)>> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a load runtime")?;
                    runtime.block_on(async move {
                        let connections: Vec<_> = (0..share)
                            .map(|_| tokio::spawn(connection(address, request.clone(), deadline)))
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
    for worker in workers {
        let results = match worker.join() {
            Ok(results) => results?,
            Err(_) => bail!("a load thread panicked"),
        };
        for (mut connection_latencies, bytes) in results {
            latencies.append(&mut connection_latencies);
            body_bytes = body_bytes.max(bytes);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Throughput {
        path: settings.path.clone(),
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        body_bytes,
    })
}

/// One keep-alive connection sending the request again as soon as the
/// previous answer is complete, until `deadline`.
async fn connection(
    address: SocketAddr,
    request: Arc<[u8]>,
    deadline: Instant,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut body_bytes = 0;
    while Instant::now() < deadline {
        let sent = Instant::now();
        stream.write_all(&request).await?;
        body_bytes = read_response(&mut stream, &mut buffer).await?;
        latencies.push(sent.elapsed());
    }
    Ok((latencies, body_bytes))
}

/// Reads one whole response; fails on anything but a `200` with a
/// `Content-Length` body, which is all the server sends to this request.
async fn read_response(stream: &mut TcpStream, buffer: &mut [u8]) -> anyhow::Result<u64> {
    let mut filled = 0;
    let (header_len, body_len) = loop {
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
            if response.code != Some(200) {
                bail!(
                    "expected 200, got {:?}: {}",
                    response.code,
                    String::from_utf8_lossy(&buffer[header_len..filled])
                );
            }
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .context("response without Content-Length")?;
            break (header_len, length);
        }
    };
    let mut left = body_len.saturating_sub((filled - header_len) as u64);
    while left > 0 {
        let read = stream.read(buffer).await?;
        if read == 0 {
            bail!("the server closed the connection mid-body");
        }
        left = left.saturating_sub(read as u64);
    }
    Ok(body_len)
}
