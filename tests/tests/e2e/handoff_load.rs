//! Connections survive restarts: with handoff, keep-alive HTTP, line-echo
//! and WebSocket connections go on through twenty restarts of the real
//! agent and demo, every byte echoed in order, none closed, and the
//! `generation` answer rising on each of them. The same load with
//! `--no-handoff` sees connections closed: the test proves the difference.
//! A load test: run it alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_loadgen::{LoadReport, Target};
use baton_proto::{EventKind, RestartOutcome, RestartReport};
use baton_tests::{AgentUnderTest, bin, load};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

const RESTARTS: usize = 20;
const HTTP_CONNECTIONS: usize = 64;
const ECHO_CONNECTIONS: usize = 32;
const WS_CONNECTIONS: usize = 16;
/// Echo and WebSocket clients send a message this often.
const PACE: Duration = Duration::from_millis(20);
/// Longer than any pause a restart may cause: a reply later than this is a
/// connection lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Every this many messages, a client asks for the serving generation.
const GENERATION_EVERY: u64 = 10;

/// What one long-lived client saw.
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Messages echoed back correctly.
    echoed: u64,
    /// Times the connection ended under it (closed, reset, or silent).
    closed: u64,
    /// Replies that were not what was sent, in order.
    wrong: Vec<String>,
    /// The `generation` answers on the first connection, in order.
    generations: Vec<u64>,
}

impl Tally {
    fn note_generation(&mut self, answer: &str, first_connection: bool) {
        match answer.trim().parse::<u64>() {
            Ok(generation) if first_connection => self.generations.push(generation),
            Ok(_) => {}
            Err(_) => self.wrong.push(format!("generation answered {answer:?}")),
        }
    }
}

/// A line-echo client: a line every `PACE`, each checked.
async fn echo_client(address: SocketAddr, id: usize, stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let mut sequence = 0u64;
    let mut first_connection = true;
    while !*stop.borrow() {
        let Ok(stream) = TcpStream::connect(address).await else {
            tokio::time::sleep(PACE).await;
            continue;
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut line = String::new();
        loop {
            if *stop.borrow() {
                return tally;
            }
            sequence += 1;
            let asks_generation = sequence.is_multiple_of(GENERATION_EVERY);
            let sent = if asks_generation {
                "generation\n".to_owned()
            } else {
                format!(
                    "echo {id} {sequence} {}\n",
                    "x".repeat((sequence % 50) as usize)
                )
            };
            line.clear();
            let exchange = async {
                write.write_all(sent.as_bytes()).await?;
                lines.read_line(&mut line).await
            };
            match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
                Ok(Ok(1..)) if asks_generation => tally.note_generation(&line, first_connection),
                Ok(Ok(1..)) if line == sent => tally.echoed += 1,
                Ok(Ok(1..)) => tally.wrong.push(format!("sent {sent:?}, got {line:?}")),
                _ => {
                    tally.closed += 1;
                    first_connection = false;
                    break;
                }
            }
            tokio::time::sleep(PACE).await;
        }
    }
    tally
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x0f, 0xa5, 0xf0];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Opens a WebSocket at `/ws`; `None` when the upgrade fails.
async fn websocket(address: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? != 1 {
            return None;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101 ").then_some(stream)
}

/// One text frame's payload; `None` for a close frame or a lost connection.
async fn read_text(stream: &mut TcpStream) -> Option<String> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.ok()?;
    if header[0] != 0x81 {
        return None;
    }
    let mut payload = vec![0; usize::from(header[1] & 0x7f)];
    stream.read_exact(&mut payload).await.ok()?;
    String::from_utf8(payload).ok()
}

/// A WebSocket client: a text message every `PACE`, each checked.
async fn ws_client(address: SocketAddr, id: usize, stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let mut sequence = 0u64;
    let mut first_connection = true;
    while !*stop.borrow() {
        let Some(mut stream) = websocket(address).await else {
            tokio::time::sleep(PACE).await;
            continue;
        };
        loop {
            if *stop.borrow() {
                return tally;
            }
            sequence += 1;
            let asks_generation = sequence.is_multiple_of(GENERATION_EVERY);
            let sent = if asks_generation {
                "generation".to_owned()
            } else {
                format!("ws {id} {sequence}")
            };
            let exchange = async {
                stream.write_all(&masked_text(sent.as_bytes())).await.ok()?;
                read_text(&mut stream).await
            };
            match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
                Ok(Some(reply)) if asks_generation => {
                    tally.note_generation(&reply, first_connection)
                }
                Ok(Some(reply)) if reply == sent => tally.echoed += 1,
                Ok(Some(reply)) => tally.wrong.push(format!("sent {sent:?}, got {reply:?}")),
                _ => {
                    tally.closed += 1;
                    first_connection = false;
                    break;
                }
            }
            tokio::time::sleep(PACE).await;
        }
    }
    tally
}

/// What a run of restarts under load saw.
struct Run {
    restarts: Vec<RestartReport>,
    http: LoadReport,
    echo: Vec<Tally>,
    ws: Vec<Tally>,
    final_generation: u64,
}

fn service(args: &[&str], drain_timeout: &str) -> String {
    baton_testkit::demo_service_with_echo(
        &bin("baton-demo"),
        "web",
        args,
        &format!("drain_timeout = \"{drain_timeout}\""),
    )
}

async fn restarts_under_load(args: &[&str], drain_timeout: &str) -> Run {
    let agent = Arc::new(AgentUnderTest::start(&service(args, drain_timeout)));
    let http = agent.tcp_addr("web", "http");
    let echo = agent.tcp_addr("web", "echo");
    let (stop, stopped) = watch::channel(false);

    let mut load_stop = stopped.clone();
    let http_load = tokio::spawn(load(Target::Tcp(http), HTTP_CONNECTIONS, async move {
        let _ = load_stop.wait_for(|stop| *stop).await;
    }));
    let echo_clients: Vec<_> = (0..ECHO_CONNECTIONS)
        .map(|id| tokio::spawn(echo_client(echo, id, stopped.clone())))
        .collect();
    let ws_clients: Vec<_> = (0..WS_CONNECTIONS)
        .map(|id| tokio::spawn(ws_client(http, id, stopped.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let restarter = agent.clone();
    let restarts = tokio::task::spawn_blocking(move || {
        (0..RESTARTS)
            .map(|_| {
                let (_, report) = restarter.restart("web");
                std::thread::sleep(Duration::from_millis(100));
                report
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);

    let http = http_load.await.unwrap();
    let mut echo = Vec::new();
    for client in echo_clients {
        echo.push(client.await.unwrap());
    }
    let mut ws = Vec::new();
    for client in ws_clients {
        ws.push(client.await.unwrap());
    }
    let status = agent.service("web");
    Run {
        restarts,
        http,
        echo,
        ws,
        final_generation: status.generations[0].generation,
    }
}

fn print(run: &Run) {
    eprintln!("http: {}", run.http);
    for (protocol, tallies) in [("echo", &run.echo), ("ws", &run.ws)] {
        let echoed: u64 = tallies.iter().map(|t| t.echoed).sum();
        let closed: u64 = tallies.iter().map(|t| t.closed).sum();
        let wrong: usize = tallies.iter().map(|t| t.wrong.len()).sum();
        eprintln!("{protocol}: {echoed} echoed, {closed} closed, {wrong} wrong");
    }
    for restart in &run.restarts {
        eprintln!(
            "restart {}: {:?}, connections {:?}",
            restart.id, restart.outcome, restart.connections
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_handoff_every_connection_survives_twenty_restarts_under_load() {
    let run = restarts_under_load(&[], "10s").await;
    print(&run);
    for restart in &run.restarts {
        assert_eq!(
            restart.outcome,
            Some(RestartOutcome::Succeeded),
            "restart {}: {:?}",
            restart.id,
            restart.outcome_reason
        );
        assert!(
            restart
                .steps
                .iter()
                .any(|step| matches!(step.kind, EventKind::HandoffBrokered { .. })),
            "restart {} brokered no handoff",
            restart.id
        );
        // Every connection open when the drain began went to the next one.
        let tally = restart.connections.expect("the drain's tally");
        let all = (HTTP_CONNECTIONS + ECHO_CONNECTIONS + WS_CONNECTIONS) as u32;
        assert_eq!(
            (tally.handed_over, tally.cut),
            (all, 0),
            "restart {}: {tally}",
            restart.id
        );
    }
    assert_eq!(run.final_generation, 1 + RESTARTS as u64);

    // HTTP keep-alive: not one failed request, not one connection closed.
    assert_eq!(run.http.failed, 0, "{:?}", run.http.failures);
    assert_eq!(run.http.reconnects, 0, "keep-alive connections were closed");
    assert!(run.http.ok > 5_000, "too little load: {}", run.http);
    assert!(run.http.generations_seen.len() > RESTARTS);

    for (protocol, tallies) in [("echo", &run.echo), ("ws", &run.ws)] {
        for (id, tally) in tallies.iter().enumerate() {
            assert_eq!(tally.closed, 0, "{protocol} {id} was closed: {tally:?}");
            assert!(tally.wrong.is_empty(), "{protocol} {id}: {:?}", tally.wrong);
            assert!(tally.echoed > 50, "{protocol} {id}: {tally:?}");
            // The same connection, served by one generation after another.
            assert!(
                tally.generations.windows(2).all(|pair| pair[0] <= pair[1]),
                "{protocol} {id}: {:?}",
                tally.generations
            );
            let first = tally.generations.first().copied().unwrap_or(0);
            let last = tally.generations.last().copied().unwrap_or(0);
            assert!(
                first <= 2 && last >= RESTARTS as u64,
                "{protocol} {id} went from generation {first} to {last}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_handoff_the_same_restarts_close_long_lived_and_keep_alive_connections() {
    // A short drain timeout: clients that never go quiet hold the old
    // generation until it is killed.
    let run = restarts_under_load(&["--no-handoff"], "2s").await;
    print(&run);
    assert_eq!(run.final_generation, 1 + RESTARTS as u64);
    for restart in &run.restarts {
        assert!(
            !restart
                .steps
                .iter()
                .any(|step| matches!(step.kind, EventKind::HandoffBrokered { .. })),
            "--no-handoff declares no HANDOFF=1"
        );
    }
    // Clients that never go quiet keep the old generation until it is
    // killed at the deadline, their connections cut.
    let forced = run
        .restarts
        .iter()
        .filter(|restart| restart.outcome == Some(RestartOutcome::Forced))
        .count();
    assert!(forced >= RESTARTS / 2, "only {forced} restarts were forced");
    // Keep-alive connections are closed at every restart (politely: a
    // `Connection: close` response, or an idle close after the grace).
    assert!(
        run.http.reconnects >= (HTTP_CONNECTIONS * RESTARTS / 2) as u64,
        "{}",
        run.http
    );
    // Long-lived connections are cut.
    for (protocol, tallies) in [("echo", &run.echo), ("ws", &run.ws)] {
        let closed: u64 = tallies.iter().map(|t| t.closed).sum();
        assert!(
            closed >= (tallies.len() * RESTARTS / 2) as u64,
            "{protocol}: only {closed} closed"
        );
        for tally in tallies {
            assert!(tally.wrong.is_empty(), "{protocol}: {:?}", tally.wrong);
        }
    }
}
