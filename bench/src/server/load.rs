//! A lean HTTP/1.1 keep-alive load for one `GET` path with a bearer token,
//! through [`baton_loadgen::Client`]: each answer's body is counted without
//! being kept (a gzipped body is not unpacked), so that as little of the
//! shared cores as possible goes to the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_loadgen::{Body, Client, Target};

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
    let threads = settings.threads.clamp(1, settings.connections.max(1));
    let started = Instant::now();
    let deadline = started + settings.duration;
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let share = settings.connections / threads
                + usize::from(thread < settings.connections % threads);
            let request = Request {
                target: Target::Tcp(settings.address),
                path: settings.path.clone(),
                authorization: format!("Bearer {}", settings.token),
                client: settings.client,
            };
            std::thread::Builder::new()
                .name(format!("http-load-{thread}"))
                .spawn(move || -> anyhow::Result<Vec<ConnectionResult>> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a load runtime")?;
                    runtime.block_on(async move {
                        let request = Arc::new(request);
                        let connections: Vec<_> = (0..share)
                            .map(|_| tokio::spawn(connection(request.clone(), deadline)))
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

/// What every connection of a thread sends.
struct Request {
    target: Target,
    path: String,
    authorization: String,
    client: ClientKind,
}

struct ConnectionResult {
    latencies: Vec<Duration>,
    body_bytes: u64,
    not_modified: u64,
}

/// One keep-alive connection sending the request again as soon as the
/// previous answer is complete, until `deadline`.
async fn connection(request: Arc<Request>, deadline: Instant) -> anyhow::Result<ConnectionResult> {
    let connect = || async {
        Client::connect(&request.target, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot connect to {}", request.target))
    };
    let mut client = connect().await?;
    let mut result = ConnectionResult {
        latencies: Vec::with_capacity(64 * 1024),
        body_bytes: 0,
        not_modified: 0,
    };
    let mut etag: Option<String> = None;
    while Instant::now() < deadline {
        let mut headers = [
            ("Authorization", request.authorization.as_str()),
            ("Accept", "application/json"),
            ("", ""),
            ("", ""),
        ];
        let mut count = 2;
        if request.client != ClientKind::Plain {
            headers[count] = ("Accept-Encoding", "gzip");
            count += 1;
        }
        if request.client == ClientKind::Revalidating
            && let Some(tag) = etag.as_deref()
        {
            headers[count] = ("If-None-Match", tag);
            count += 1;
        }
        let sent = Instant::now();
        let answer = client
            .get(&request.path, &headers[..count], Body::Discard)
            .await
            .with_context(|| format!("GET {}", request.path))?;
        result.latencies.push(sent.elapsed());
        match answer.status {
            304 => result.not_modified += 1,
            200 => result.body_bytes = result.body_bytes.max(answer.body_len as u64),
            status => bail!("expected 200 or 304, got {status}"),
        }
        let keep_alive = answer.keep_alive;
        if request.client == ClientKind::Revalidating
            && let Some(tag) = answer.header("etag")
            && etag.as_deref() != Some(tag)
        {
            etag = Some(tag.to_owned());
        }
        if !keep_alive {
            client = connect().await?;
        }
    }
    Ok(result)
}
