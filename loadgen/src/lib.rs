//! A strict HTTP/1.1 keep-alive load generator, written to prove that a restart
//! lost nothing: every request either gets a complete `200` or is counted as a
//! failure of a named kind. A response that says `Connection: close` is not a
//! failure (the server asked politely); a keep-alive connection closed under a
//! request is.
//!
//! ```no_run
//! # async fn example() {
//! use baton_loadgen::{LoadConfig, Target};
//! let target = Target::Tcp("127.0.0.1:8080".parse().unwrap());
//! let config = LoadConfig { connections: 8, ..LoadConfig::new(target) };
//! let report = baton_loadgen::run(config, tokio::time::sleep(std::time::Duration::from_secs(5))).await;
//! assert_eq!(report.failed, 0, "{report}");
//! # }
//! ```
#![forbid(unsafe_code)]

mod client;
mod connection;
mod report;
mod response;
mod worker;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use client::{Body, Client, Response};
pub use report::{FailureEvent, LoadReport, Sample};

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(address) => write!(formatter, "{address}"),
            Target::Unix(path) => write!(formatter, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// `HOST:PORT` (an IP address), `unix:/path` or an absolute path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(Target::Unix(PathBuf::from(text)));
        }
        text.parse()
            .map(Target::Tcp)
            .map_err(|_| format!("{text:?} is neither IP:PORT nor unix:/path"))
    }
}

/// What to send, where, and how patiently.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    /// Concurrent connections, each with one request in flight at a time.
    pub connections: usize,
    /// Request target, such as `/` or `/sleep?ms=100`.
    pub path: String,
    /// From sending a request (or starting to connect for it) to its complete
    /// response; longer is a `request_timeout` failure.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// When set, a `200` whose body does not start with this is a failure.
    pub expect_body_prefix: Option<String>,
    /// A safety net: the run stops after this long even if `stop` never resolves.
    pub max_duration: Duration,
}

impl LoadConfig {
    /// Four connections doing `GET /`, 5 s per request, 1 s per connect, at
    /// most ten minutes.
    pub fn new(target: Target) -> Self {
        LoadConfig {
            target,
            connections: 4,
            path: "/".to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            expect_body_prefix: None,
            max_duration: Duration::from_secs(600),
        }
    }
}

/// Why a request did not count as a success. The names are the keys of
/// [`LoadReport::failures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Nothing listens (`ECONNREFUSED`), or a unix socket file is missing.
    ConnectRefused,
    ConnectTimeout,
    /// Any other connect error.
    ConnectError,
    /// `ECONNRESET`, `ECONNABORTED` or `EPIPE` while sending or reading.
    Reset,
    /// The server closed before a complete response head, including closing a
    /// reused keep-alive connection without answering (zero bytes).
    EofBeforeResponse,
    RequestTimeout,
    /// A complete head whose status is not 200.
    BadStatus,
    /// The response ended before the body its head announced.
    ShortBody,
    /// The body does not start with `expect_body_prefix`.
    UnexpectedBody,
    /// Not parseable as HTTP/1.x, bad framing, or bytes nobody asked for.
    InvalidResponse,
    /// Any other I/O error.
    Io,
}

impl FailureKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::ConnectRefused => "connect_refused",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::ConnectError => "connect_error",
            FailureKind::Reset => "reset",
            FailureKind::EofBeforeResponse => "eof_before_response",
            FailureKind::RequestTimeout => "request_timeout",
            FailureKind::BadStatus => "bad_status",
            FailureKind::ShortBody => "short_body",
            FailureKind::UnexpectedBody => "unexpected_body",
            FailureKind::InvalidResponse => "invalid_response",
            FailureKind::Io => "io_error",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::error::Error for FailureKind {}

/// Runs the load until `stop` resolves or `max_duration` passes. Requests in
/// flight at that moment may finish (up to `request_timeout`) and count as
/// usual; connects and pauses in progress are abandoned without counting.
pub async fn run(
    config: LoadConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> LoadReport {
    let (stop_sender, stop_receiver) = watch::channel(false);
    let max_duration = config.max_duration;
    let stopper = tokio::spawn(async move {
        tokio::select! {
            _ = stop => {}
            _ = tokio::time::sleep(max_duration) => {}
        }
        stop_sender.send_replace(true);
        // Keep the sender alive: workers treat a closed channel as "stop".
        std::future::pending::<()>().await;
    });
    let started = tokio::time::Instant::now();
    let shared = Arc::new(worker::Shared::new(&config));
    let workers: Vec<_> = (0..config.connections)
        .map(|_| {
            tokio::spawn(worker::run_worker(
                shared.clone(),
                stop_receiver.clone(),
                started,
            ))
        })
        .collect();
    if workers.is_empty() {
        let mut stop_receiver = stop_receiver.clone();
        let _ = stop_receiver.wait_for(|stopped| *stopped).await;
    }
    let mut report = LoadReport::default();
    for worker in workers {
        match worker.await {
            Ok(outcome) => report.merge(outcome),
            Err(error) => report.record_lost_worker(&error.to_string()),
        }
    }
    stopper.abort();
    report.finish(started.elapsed());
    report
}
