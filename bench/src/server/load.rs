//! A lean HTTP/1.1 keep-alive `GET` load with a bearer token, through
//! [`baton_loadgen::Client`]: the connections are spread over the servers
//! and each one goes round the paths from its own starting point, so every
//! page is asked of every server. Each answer's body is counted without
//! being kept (a gzipped body is not unpacked), so that as little of the
//! shared cores as possible goes to the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_loadgen::{Body, Client, Target};

pub struct LoadSettings {
    /// Connection `i` goes to `addresses[i % n]`.
    pub addresses: Vec<SocketAddr>,
    pub paths: Vec<String>,
    pub token: String,
    pub connections: usize,
    /// Client threads, each with a single-threaded runtime driving its share
    /// of the connections.
    pub threads: usize,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub requests: u64,
    pub elapsed: Duration,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// The largest body, in bytes as sent.
    pub body_bytes: u64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run(settings: &LoadSettings) -> anyhow::Result<Throughput> {
    if settings.addresses.is_empty() || settings.paths.is_empty() {
        bail!("a load needs at least one server and one path");
    }
    let threads = settings.threads.clamp(1, settings.connections.max(1));
    let started = Instant::now();
    let deadline = started + settings.duration;
    let paths = Arc::new(settings.paths.clone());
    let authorization = Arc::new(format!("Bearer {}", settings.token));
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            // Connection numbers of this thread: thread, thread + threads, ...
            let connections: Vec<Connection> = (thread..settings.connections)
                .step_by(threads)
                .map(|number| Connection {
                    target: Target::Tcp(settings.addresses[number % settings.addresses.len()]),
                    paths: paths.clone(),
                    first_path: number * 7919 % paths.len(),
                    authorization: authorization.clone(),
                })
                .collect();
            std::thread::Builder::new()
                .name(format!("http-load-{thread}"))
                .spawn(move || -> anyhow::Result<Vec<ConnectionResult>> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a load runtime")?;
                    runtime.block_on(async move {
                        let tasks: Vec<_> = connections
                            .into_iter()
                            .map(|connection| tokio::spawn(connection.run(deadline)))
                            .collect();
                        let mut results = Vec::with_capacity(tasks.len());
                        for task in tasks {
                            results.push(task.await.context("a load task panicked")??);
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
        for mut result in results {
            latencies.append(&mut result.latencies);
            body_bytes = body_bytes.max(result.body_bytes);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Throughput {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        body_bytes,
    })
}

/// One keep-alive connection's server and share of the paths.
struct Connection {
    target: Target,
    paths: Arc<Vec<String>>,
    first_path: usize,
    authorization: Arc<String>,
}

struct ConnectionResult {
    latencies: Vec<Duration>,
    body_bytes: u64,
}

impl Connection {
    /// Sends the next path as soon as the previous answer is complete,
    /// until `deadline`.
    async fn run(self, deadline: Instant) -> anyhow::Result<ConnectionResult> {
        let connect = || async {
            Client::connect(&self.target, Duration::from_secs(5))
                .await
                .with_context(|| format!("cannot connect to {}", self.target))
        };
        let mut client = connect().await?;
        let mut result = ConnectionResult {
            latencies: Vec::with_capacity(16 * 1024),
            body_bytes: 0,
        };
        let headers = [
            ("Authorization", self.authorization.as_str()),
            ("Accept", "application/json"),
            // As browsers, curl --compressed, Python requests and Go's
            // net/http ask.
            ("Accept-Encoding", "gzip"),
        ];
        let mut next = self.first_path;
        while Instant::now() < deadline {
            let path = &self.paths[next];
            next = (next + 1) % self.paths.len();
            let sent = Instant::now();
            let answer = client
                .get(path, &headers, Body::Discard)
                .await
                .with_context(|| format!("GET {path} from {}", self.target))?;
            result.latencies.push(sent.elapsed());
            match answer.status {
                200 => result.body_bytes = result.body_bytes.max(answer.body_len as u64),
                status => bail!("GET {path}: expected 200, got {status}"),
            }
            if !answer.keep_alive {
                client = connect().await?;
            }
        }
        Ok(result)
    }
}
