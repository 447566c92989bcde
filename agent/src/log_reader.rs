//! Reading a service's output for someone: the last lines, then (when
//! following) every new one. The control socket's `logs` and the server
//! link's `logs` command both read through it, so they show the same lines.

use crate::view::AgentView;
use baton_proto::{ErrorBody, ErrorKind, OutputLine, OutputStream};
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

/// Follows one service's output after its past was read.
pub struct LogReader {
    live: broadcast::Receiver<OutputLine>,
    generation: Option<u64>,
    /// The time of the newest past line: a live line read before it is in
    /// the past already.
    newest: Option<u64>,
    shutting_down: CancellationToken,
}

/// The last `lines` of `service`'s output (of `generation`, or of all), and
/// a reader of what comes after. Subscribed before the past is read, so no
/// line falls between.
pub async fn open(
    agent: &AgentView,
    service: &str,
    generation: Option<u64>,
    lines: usize,
) -> Result<(Vec<OutputLine>, LogReader), ErrorBody> {
    let known = agent
        .services
        .read()
        .map(|services| services.contains_key(service))
        .unwrap_or(false);
    if !known {
        return Err(ErrorBody {
            kind: ErrorKind::UnknownService,
            message: format!("no service named {service:?}"),
            running_restart: None,
        });
    }
    let output = agent.output.service(service);
    let live = output.subscribe();
    let outputs = agent.output.clone();
    let past_output = Arc::clone(&output);
    let past = tokio::task::spawn_blocking(move || outputs.last(&past_output, generation, lines))
        .await
        .unwrap_or_default();
    let newest = past.last().map(|line| line.time);
    Ok((
        past,
        LogReader {
            live,
            generation,
            newest,
            shutting_down: agent.shutting_down.clone(),
        },
    ))
}

impl LogReader {
    /// The next new line; `None` once the agent shuts down or the service's
    /// output ends. A reader too slow for the service misses lines rather
    /// than slow it, and is told how many in a line of its own.
    pub async fn next(&mut self) -> Option<OutputLine> {
        loop {
            let line = tokio::select! {
                _ = self.shutting_down.cancelled() => return None,
                line = self.live.recv() => line,
            };
            match line {
                Ok(line) => {
                    if self.generation.is_some_and(|g| g != line.generation) {
                        continue;
                    }
                    if self.newest.is_some_and(|time| line.time < time) {
                        continue;
                    }
                    self.newest = None;
                    return Some(line);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "a log follower fell behind");
                    return Some(OutputLine {
                        time: baton_proto::now_millis(),
                        generation: self.generation.unwrap_or(0),
                        stream: OutputStream::Stderr,
                        text: format!("[baton: {missed} lines missed: this reader fell behind]"),
                    });
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
