//! The load generator on a thread of its own, so that the scenario can drive
//! restarts with plain blocking code while the load runs.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use baton_loadgen::{LoadConfig, LoadReport, Target};
use tokio::sync::oneshot;

/// Every response of the demo service starts with this.
const DEMO_BODY_PREFIX: &str = "hello from generation";

pub struct RunningLoad {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<anyhow::Result<LoadReport>>,
    /// The zero of the report's sample times, on the bench's clock. Taken
    /// just before the generator starts its own clock, a few microseconds
    /// earlier than that: far below anything the tables show.
    pub started: Instant,
}

/// Starts `connections` keep-alive connections doing `GET /` against `target`.
///
/// One thread drives them all: the generator shares the machine's cores with
/// the service it measures, and a single thread keeps it from taking more
/// than one of them.
pub fn start(target: SocketAddr, connections: usize) -> anyhow::Result<RunningLoad> {
    let (stop, stop_requested) = oneshot::channel::<()>();
    let (started_sender, started_receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("load".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the load generator's runtime")?;
            let mut config = LoadConfig::new(Target::Tcp(target));
            config.connections = connections;
            config.expect_body_prefix = Some(DEMO_BODY_PREFIX.to_owned());
            config.max_duration = Duration::from_secs(24 * 3600);
            let report = runtime.block_on(async move {
                let _ = started_sender.send(Instant::now());
                baton_loadgen::run(config, async move {
                    let _ = stop_requested.await;
                })
                .await
            });
            Ok(report)
        })
        .context("cannot start the load thread")?;
    let Ok(started) = started_receiver.recv() else {
        return match thread.join() {
            Ok(Err(error)) => Err(error),
            _ => Err(anyhow::anyhow!("the load thread ended before starting")),
        };
    };
    Ok(RunningLoad {
        stop,
        thread,
        started,
    })
}

impl RunningLoad {
    /// Stops the load (requests in flight may finish) and returns its report.
    pub fn finish(self) -> anyhow::Result<LoadReport> {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(report) => report,
            Err(_) => anyhow::bail!("the load thread panicked"),
        }
    }
}
