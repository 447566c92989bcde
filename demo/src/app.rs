//! One generation's life: start (optionally slowly), serve, say READY, drain
//! on request, exit when the last connection is done.
//!
//! `run` is the seam of the crate (after mini-redis): the caller supplies the
//! sockets and the future that asks for a drain, so tests can drive a whole
//! generation in-process without signals.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tracing::Instrument as _;

use crate::behaviour::Behaviour;
use crate::drain::{self, DrainWatch, TaskGuard, TaskTracker};
use crate::echo;
use crate::handover::Handover;
use crate::http::{self, HttpContext};
use crate::sockets::{NamedSocket, ServiceSocket};
use crate::udp;
use crate::warmup;
use crate::ws;
use baton_sdk::handoff::{Channel, Handoff, Incomings};
use baton_sdk::notify::{Notifier, NotifyState};
use baton_sdk::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use bytes::BytesMut;

/// The socket name served with the line-echo protocol; every other stream
/// socket serves HTTP (and WebSocket at `/ws`).
pub const ECHO_SOCKET: &str = "echo";

/// How often a draining generation reports what it is still waiting for.
const DRAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A pause after a failed accept, so that running out of fds does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Everything about this generation that is not a socket.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BATON_GENERATION`, shown in every response.
    pub generation: String,
    pub pid: u32,
    /// Crash, never-ready, ignore-sigterm and start delay, for tests.
    pub behaviour: Behaviour,
    /// CPU-bound start-up time before READY.
    pub warmup: Duration,
    /// How long an idle keep-alive connection may still send one request once
    /// draining has begun.
    pub drain_idle_grace: Duration,
    /// Loopback listeners that only this generation owns, opened after the
    /// warm-up, so that an HTTP probe proves *this* generation is up.
    pub probe_addresses: Vec<SocketAddr>,
    /// Print `listening on ADDR` lines on stdout, so a test that bound port 0
    /// can learn the port.
    pub print_addresses: bool,
    /// Take connections from the previous generation and hand ours to the
    /// next (`--no-handoff` turns it off).
    pub handoff: bool,
}

/// Runs one generation until it has drained. `stop` resolves when the
/// supervisor asks us to stop (SIGTERM); with `ignore_sigterm` the caller
/// simply passes a future that never resolves.
pub async fn run(
    settings: Settings,
    sockets: Vec<NamedSocket>,
    notifier: Notifier,
    channel: Option<Channel>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let channel = channel.filter(|_| settings.handoff);
    tokio::pin!(stop);
    tokio::select! {
        _ = start_up(&settings) => {}
        _ = &mut stop => {
            tracing::info!("stop requested before ready; exiting");
            return Ok(());
        }
    }

    let context = HttpContext::new(
        &settings.generation,
        settings.pid,
        settings.drain_idle_grace,
    );
    let (trigger, drain_watch) = drain::channel();
    let tracker = TaskTracker::default();
    // The exit coordinator, here only for handing connections over; the
    // demo's own drain (below) does the rest, as it always did.
    let drain_timeout = baton_sdk::generation::Generation::from_env()
        .ok()
        .flatten()
        .and_then(|generation| generation.drain_timeout)
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    let shutdown = Shutdown::builder()
        .signal(None)
        .drain_timeout(drain_timeout)
        .channel(channel.clone())
        .build()?;
    let exit_handle = shutdown.handle();
    let handover = match &channel {
        Some(_) => Handover::new(shutdown.handle()),
        None => Handover::disabled(),
    };
    let serve = Serve {
        context: context.clone(),
        drain_watch: drain_watch.clone(),
        handover,
    };
    let mut printed = Vec::new();
    for named in sockets {
        printed.push(format!("listening on {}", named.describe()));
        spawn_socket(named, &serve, tracker.guard())?;
    }
    // Before READY=1: the agent reads HANDOFF=1 when it acts on readiness.
    if let Some(channel) = &channel {
        let incomings = Handoff::new().accept(channel)?;
        tokio::spawn(take_handed_over(incomings, serve.clone(), tracker.guard()).in_current_span());
    }
    for address in &settings.probe_addresses {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to bind probe listener on {address}"))?;
        printed.push(format!("probe listening on {}", listener.local_addr()?));
        let guard = tracker.guard();
        let task = accept_tcp(listener, "probe".into(), serve.clone(), guard);
        tokio::spawn(task.in_current_span());
    }
    if settings.print_addresses {
        for line in &printed {
            println!("{line}");
        }
    }

    if settings.behaviour.never_ready {
        tracing::warn!("serving, but never sending READY=1 (never-ready mode)");
    } else {
        let status = format!("serving, generation {}", context.generation());
        if let Err(error) = notifier.ready_with_status(&status) {
            tracing::error!(%error, "failed to notify readiness");
        }
        tracing::info!(notify = notifier.is_enabled(), "ready");
    }

    stop.await;
    tracing::info!(tasks = tracker.active(), "draining");
    exit_handle.trigger();
    let exit = tokio::spawn(shutdown.run().in_current_span());
    trigger.start();
    let status = format!("draining, generation {}", context.generation());
    if let Err(error) = notifier.send(&[NotifyState::Stopping, NotifyState::Status(&status)]) {
        tracing::warn!(%error, "failed to notify stopping");
    }
    let active = tracker.active_count();
    let all_done = tracker.wait_all_done();
    tokio::pin!(all_done);
    let mut progress = tokio::time::interval(DRAIN_PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            _ = progress.tick() => tracing::info!(tasks = active.get(), "still draining"),
        }
    }
    if let Ok(report) = exit.await {
        tracing::info!(handed_over = report.handed_over, "drained");
    }
    Ok(())
}

async fn start_up(settings: &Settings) {
    if !settings.behaviour.start_delay.is_zero() {
        tracing::info!(delay = ?settings.behaviour.start_delay, "slow start");
        tokio::time::sleep(settings.behaviour.start_delay).await;
    }
    if !settings.warmup.is_zero() {
        tracing::info!(warmup = ?settings.warmup, "warming up");
        warmup::burn_cpu(settings.warmup).await;
    }
}

/// What every connection of this generation is served with.
#[derive(Debug, Clone)]
struct Serve {
    context: Arc<HttpContext>,
    drain_watch: DrainWatch,
    handover: Handover,
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Echo,
    WebSocket,
}

impl Protocol {
    fn of_socket(name: &str) -> Protocol {
        if name == ECHO_SOCKET {
            Protocol::Echo
        } else {
            Protocol::Http
        }
    }
}

fn spawn_socket(named: NamedSocket, serve: &Serve, guard: TaskGuard) -> anyhow::Result<()> {
    let NamedSocket { name, socket } = named;
    let serve = serve.clone();
    match socket {
        ServiceSocket::Tcp(listener) => {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tokio::spawn(accept_tcp(listener, name.into(), serve, guard).in_current_span());
        }
        ServiceSocket::Unix(listener) => {
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            tokio::spawn(accept_unix(listener, name.into(), serve, guard).in_current_span());
        }
        ServiceSocket::Udp(socket) => {
            socket.set_nonblocking(true)?;
            let socket = UdpSocket::from_std(socket)?;
            let generation = serve.context.generation().to_owned();
            tokio::spawn(
                udp::serve_udp(socket, generation, serve.drain_watch, guard).in_current_span(),
            );
        }
    }
    Ok(())
}

/// Accepts until draining begins, then drops the listener. Our fd closes, but
/// the agent holds the same socket, so connections still queued on it wait
/// for the next generation instead of being refused.
async fn accept_tcp(listener: TcpListener, name: Arc<str>, serve: Serve, guard: TaskGuard) {
    let mut drain_watch = serve.drain_watch.clone();
    let protocol = Protocol::of_socket(&name);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain_watch.draining() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Responses are written whole; Nagle would only delay them.
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, protocol, &name, BytesMut::new(), &serve, &guard);
            }
            Err(error) => accept_failed(&name, error).await,
        }
    }
    drop(listener);
    tracing::info!(socket = %name, "stopped accepting");
}

async fn accept_unix(listener: UnixListener, name: Arc<str>, serve: Serve, guard: TaskGuard) {
    let mut drain_watch = serve.drain_watch.clone();
    let protocol = Protocol::of_socket(&name);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain_watch.draining() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                spawn_connection(stream, protocol, &name, BytesMut::new(), &serve, &guard)
            }
            Err(error) => accept_failed(&name, error).await,
        }
    }
    drop(listener);
    tracing::info!(socket = %name, "stopped accepting");
}

/// Serves the connections the previous generation hands over, each as if
/// just accepted, until this generation itself drains.
async fn take_handed_over(mut incomings: Incomings, serve: Serve, guard: TaskGuard) {
    let mut drain_watch = serve.drain_watch.clone();
    loop {
        let incoming = tokio::select! {
            _ = drain_watch.draining() => break,
            incoming = incomings.recv() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let protocol = if incoming.state == ws::STATE {
            Protocol::WebSocket
        } else {
            Protocol::of_socket(&incoming.name)
        };
        let input = BytesMut::from(&incoming.buffer[..]);
        let name: Arc<str> = incoming.name.into();
        match incoming.stream {
            baton_sdk::handoff::Stream::Tcp(stream) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, protocol, &name, input, &serve, &guard);
            }
            baton_sdk::handoff::Stream::Unix(stream) => {
                spawn_connection(stream, protocol, &name, input, &serve, &guard)
            }
        }
    }
}

fn spawn_connection<S>(
    stream: S,
    protocol: Protocol,
    name: &Arc<str>,
    input: BytesMut,
    serve: &Serve,
    guard: &TaskGuard,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static,
{
    let Serve {
        context,
        drain_watch,
        handover,
    } = serve.clone();
    let name = name.clone();
    let guard = guard.clone();
    let connection = async move {
        let served = match protocol {
            Protocol::Http => {
                http::serve_connection(stream, name, input, context, drain_watch, handover).await
            }
            Protocol::Echo => {
                echo::serve_echo(stream, name, input, context, drain_watch, handover).await
            }
            Protocol::WebSocket => {
                ws::serve_ws(stream, name, input, context, drain_watch, handover).await
            }
        };
        if let Err(error) = served {
            tracing::debug!(%error, "connection ended with an error");
        }
        drop(guard);
    };
    tokio::spawn(connection.in_current_span());
}

async fn accept_failed(name: &str, error: std::io::Error) {
    tracing::warn!(socket = %name, %error, "accept failed");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}
