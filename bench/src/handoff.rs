//! Many idle keep-alive connections handed over in one restart: how long the
//! restart takes, what one connection costs, and whether every connection
//! still answers afterwards, from the new generation.

use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_loadgen::{Body, Client, Target};
use baton_proto::ConnectionTally;
use futures::StreamExt as _;

use crate::agent::Agent;
use crate::binaries::Binaries;

const SERVICE: &str = "web";
/// Connections opened (and asked their first request) at once.
const OPENING_CONCURRENCY: usize = 200;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct IdleHandoff {
    pub connections: usize,
    /// From the restart command to its report, on the bench's clock.
    pub restart: Duration,
    pub outcome: String,
    pub tally: Option<ConnectionTally>,
    /// From the agent brokering the handoff to the old generation's count,
    /// on the agent's clock (millisecond events), and that count.
    pub handoff: Option<(Duration, u32)>,
    /// Connections that answered a request after the restart, and how many
    /// of those answers came from the new generation.
    pub answered_after: usize,
    pub from_new_generation: usize,
}

impl IdleHandoff {
    /// The old generation's time per connection handed over.
    pub fn per_connection(&self) -> Option<Duration> {
        let (span, count) = self.handoff?;
        (count > 0).then(|| span / count)
    }
}

pub fn idle_connections(binaries: &Binaries, connections: usize) -> anyhow::Result<IdleHandoff> {
    raise_open_files(connections)?;
    let services = format!(
        r#"
[[service]]
name = "{SERVICE}"
command = ["{demo}", "--warmup", "0s"]
drain_timeout = "30s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
backlog = 4096
"#,
        demo = binaries.demo.display(),
    );
    let agent = Agent::start(&binaries.agent, &services)?;
    agent.wait_all_ready(Duration::from_secs(60))?;
    let target = Target::Tcp(agent.tcp_address(SERVICE)?);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the bench's runtime")?;
    let mut clients = runtime.block_on(open(&target, connections))?;

    let record = agent
        .restart(SERVICE)
        .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
    let outcome = record
        .outcome
        .map_or_else(|| "unknown".to_owned(), |o| o.to_string());

    let (answered_after, from_new_generation) = runtime.block_on(ask_each(&mut clients));
    drop(clients);
    drop(agent);
    Ok(IdleHandoff {
        connections,
        restart: record.finished.saturating_duration_since(record.sent),
        outcome,
        tally: record.connections,
        handoff: record.handoff,
        answered_after,
        from_new_generation,
    })
}

/// `connections` keep-alive connections, each having had one answer from
/// generation 1, so that each is established and idle on the service's side.
async fn open(target: &Target, connections: usize) -> anyhow::Result<Vec<Client>> {
    let opened: Vec<anyhow::Result<Client>> = futures::stream::iter(0..connections)
        .map(|_| async move {
            let mut client = Client::connect(target, REQUEST_TIMEOUT)
                .await
                .map_err(|kind| anyhow::anyhow!("connect: {kind:?}"))?;
            let response = client
                .get("/", &[], Body::Discard)
                .await
                .map_err(|kind| anyhow::anyhow!("first request: {kind:?}"))?;
            if response.status != 200 || !response.keep_alive {
                bail!(
                    "first request answered {} (keep-alive {})",
                    response.status,
                    response.keep_alive
                );
            }
            Ok(client)
        })
        .buffer_unordered(OPENING_CONCURRENCY)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// One request on every connection: how many answered, and how many of them
/// from a generation other than the first.
async fn ask_each(clients: &mut [Client]) -> (usize, usize) {
    let answers: Vec<Option<bool>> = futures::stream::iter(clients.iter_mut())
        .map(|client| async move {
            let response = client.get("/", &[], Body::Discard).await.ok()?;
            (response.status == 200).then(|| response.header("x-baton-generation") != Some("1"))
        })
        .buffer_unordered(OPENING_CONCURRENCY)
        .collect()
        .await;
    let answered = answers.iter().flatten().count();
    let from_new = answers.iter().flatten().filter(|new| **new).count();
    (answered, from_new)
}

/// Every connection is a descriptor here, in the old generation and then in
/// the new one (which inherit this limit through the agent).
fn raise_open_files(connections: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    let needed = connections as u64 + 1024;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{connections} connections need {needed} open files; the hard limit is {hard} (raise it with ulimit -Hn)"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")
}
