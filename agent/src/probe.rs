//! Readiness probes: an HTTP `GET` answered 2xx, or a TCP connect, on an
//! address the new generation owns, tried until it succeeds or the
//! generation's start ends.

use crate::config::Readiness;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// One try that hangs this long has failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A probe of one generation, its templates filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    Http { authority: String, path: String },
    Tcp { addr: String },
}

impl ProbeTarget {
    /// `None` when readiness is not probed (`notify`, `exec`).
    pub fn of(ready: &Readiness, generation: u64, port: Option<u16>) -> Option<Self> {
        match ready {
            Readiness::Http(http) => Some(ProbeTarget::Http {
                authority: http.authority.fill(generation, port),
                path: http.path.fill(generation, port),
            }),
            Readiness::Tcp { addr } => Some(ProbeTarget::Tcp {
                addr: addr.fill(generation, port),
            }),
            Readiness::Notify | Readiness::Exec => None,
        }
    }
}

/// Probes until one try succeeds (true) or `stop` is cancelled (false).
pub async fn until_ready(target: ProbeTarget, stop: CancellationToken) -> bool {
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => return false,
            ok = tokio::time::timeout(PROBE_TIMEOUT, once(&target)) => ok.unwrap_or(false),
        };
        if ok {
            return true;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

async fn once(target: &ProbeTarget) -> bool {
    match target {
        ProbeTarget::Tcp { addr } => TcpStream::connect(addr.as_str()).await.is_ok(),
        ProbeTarget::Http { authority, path } => {
            let Ok(mut stream) = TcpStream::connect(authority.as_str()).await else {
                return false;
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: baton-agent\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = [0u8; 32];
            let mut filled = 0;
            while filled < 12 {
                match stream.read(&mut head[filled..]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => filled += n,
                }
            }
            // "HTTP/1.x 2xx"
            head.starts_with(b"HTTP/1.") && head[9] == b'2'
        }
    }
}
