//! One connection's loop: connect, send, read, judge, repeat.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{Connection, classify_io_error};
use crate::report::{FailureEvent, Sample, WorkerOutcome};
use crate::response::{Buffers, read_response};
use crate::{FailureKind, LoadConfig, Target};

/// After a failed connect, wait this long before the next one, so that a
/// service that is down is not hammered (and the failure count stays readable).
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Failures remembered with their time, per connection; counts stay exact.
const MAX_FAILURE_EVENTS: usize = 10_000;

/// What every worker reads and nobody changes.
#[derive(Debug)]
pub(crate) struct Shared {
    target: Target,
    request: Vec<u8>,
    request_timeout: Duration,
    connect_timeout: Duration,
    expect_body_prefix: Option<Vec<u8>>,
}

impl Shared {
    pub(crate) fn new(config: &LoadConfig) -> Self {
        let host = match &config.target {
            Target::Tcp(address) => address.to_string(),
            Target::Unix(_) => "localhost".to_owned(),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-loadgen\r\n\r\n",
            config.path
        );
        Shared {
            target: config.target.clone(),
            request: request.into_bytes(),
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            expect_body_prefix: config.expect_body_prefix.clone().map(String::into_bytes),
        }
    }
}

impl WorkerOutcome {
    fn fail(&mut self, kind: FailureKind, at: Duration) {
        *self.failures.entry(kind).or_default() += 1;
        if self.failure_events.len() < MAX_FAILURE_EVENTS {
            self.failure_events.push(FailureEvent { at, kind });
        }
    }
}

pub(crate) async fn run_worker(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    started: Instant,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome::default();
    let mut buffers = Buffers::with_capacity(16 * 1024);
    let mut connection: Option<Connection> = None;
    let mut connected_before = false;
    while !*stop.borrow() {
        let attempt_started = Instant::now();
        let mut open = match connection.take() {
            Some(open) => open,
            None => {
                let connecting = Connection::open(&shared.target, shared.connect_timeout);
                let connected = tokio::select! {
                    connected = connecting => connected,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                };
                match connected {
                    Ok(open) => {
                        if connected_before {
                            outcome.reconnects += 1;
                        }
                        connected_before = true;
                        open
                    }
                    Err(kind) => {
                        outcome.fail(kind, started.elapsed());
                        tokio::select! {
                            _ = tokio::time::sleep(CONNECT_RETRY_PAUSE) => continue,
                            _ = stop.wait_for(|stopped| *stopped) => break,
                        }
                    }
                }
            }
        };
        // Not raced against `stop`: a request in flight is allowed to finish.
        let exchange = async {
            open.write_all(&shared.request)
                .await
                .map_err(|error| classify_io_error(&error))?;
            read_response(
                &mut open,
                &mut buffers,
                shared.expect_body_prefix.as_deref(),
            )
            .await
        };
        let result = tokio::time::timeout(shared.request_timeout, exchange).await;
        let completed = Instant::now();
        let at = completed - started;
        match result {
            Ok(Ok(accepted)) => {
                outcome.ok += 1;
                outcome.samples.push(Sample {
                    at,
                    latency: completed - attempt_started,
                });
                if accepted.has_generation
                    && !outcome.generations.contains(buffers.generation.as_str())
                {
                    outcome.generations.insert(buffers.generation.clone());
                }
                if accepted.keep_alive {
                    connection = Some(open);
                }
            }
            Ok(Err(kind)) => outcome.fail(kind, at),
            Err(_) => outcome.fail(FailureKind::RequestTimeout, at),
        }
    }
    outcome
}
