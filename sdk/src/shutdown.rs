//! A graceful exit in the phases a hot restart needs, all within the drain
//! timeout the agent gives (`BATON_DRAIN_TIMEOUT_MS`).
//!
//! When the stop signal arrives (SIGTERM by default, the agent's
//! `stop_signal`), or [`ShutdownHandle::trigger`] is called, [`Shutdown::run`]
//! goes through:
//!
//! 1. **Stop accepting**: `STOPPING=1` is sent, and the
//!    [`accepting`](ShutdownHandle::accept_token) token is cancelled. Accept
//!    loops watch it and drop their listener. Under baton the agent holds the
//!    same socket, so connections still queued wait for the next generation.
//! 2. **Stop consuming**: the [`consuming`](ShutdownHandle::consume_token)
//!    token is cancelled. Loops that pull work (a queue, a stream of jobs)
//!    watch it and stop taking more; what they took is in-flight work.
//! 3. **Finish in-flight work**: waits until every
//!    [`in_flight`](ShutdownHandle::in_flight) guard is dropped.
//! 4. **Close idle connections**: the
//!    [`close_idle`](ShutdownHandle::close_idle_token) token is cancelled and
//!    the coordinator waits until every [`connection`](ShutdownHandle::connection)
//!    guard is dropped.
//! 5. **At-exit hooks**, in the order they were added, each within its own
//!    deadline.
//!
//! Then `run` returns a [`Report`], and `main` returns. Every wait is cut
//! short at the drain deadline: the drain timeout less a small margin, so
//! that the process exits on its own before the agent's SIGKILL.
//!
//! ## Closing idle HTTP keep-alive connections
//!
//! A server that closes an idle keep-alive connection at the moment its
//! client sends the next request on it makes that request fail: the client
//! cannot tell whether it was processed. So, in a connection handler:
//! - once [`is_draining`](ShutdownHandle::is_draining), answer the next
//!   request with `Connection: close` and close after that response;
//! - when [`close_idle`](ShutdownHandle::close_idle_token) fires, close a
//!   connection only if nothing has arrived on it for a quiet period (a
//!   second or two, longer than a client's pause between requests), and keep
//!   waiting for that quiet otherwise.
//!
//! ```
//! use std::time::Duration;
//! use baton_sdk::shutdown::Shutdown;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), baton_sdk::shutdown::Error> {
//! let mut shutdown = Shutdown::from_env()?;
//! let handle = shutdown.handle();
//! shutdown.at_exit("flush the log", Duration::from_secs(1), async {
//!     // write what is buffered
//! });
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let accepting = handle.clone();
//! tokio::spawn(async move {
//!     loop {
//!         tokio::select! {
//!             _ = accepting.accepting_stopped() => break,
//!             accepted = listener.accept() => {
//!                 let Ok((stream, _)) = accepted else { continue };
//!                 let connection = accepting.connection();
//!                 tokio::spawn(async move {
//!                     let _request = connection.in_flight();
//!                     drop(stream); // serve it
//!                 });
//!             }
//!         }
//!     }
//! });
//!
//! # handle.trigger();
//! let report = shutdown.run().await;
//! assert!(!report.timed_out);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::handoff::{self, Channel, NotTaken, Offering, Returned};
use crate::notify::{self, Notifier};

/// The drain timeout when the agent gives none (not started by baton): the
/// agent's own default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The most the drain deadline is kept short of the drain timeout.
const MAX_MARGIN: Duration = Duration::from_secs(1);

/// Why the coordinator could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stop signal's handler could not be installed (outside a tokio
    /// runtime, or no signal driver).
    #[error("listening for the stop signal: {0}")]
    Signal(#[source] std::io::Error),
    /// `NOTIFY_SOCKET` names no socket.
    #[error(transparent)]
    Notify(#[from] notify::Error),
    /// `BATON_CHANNEL_FD` names no channel.
    #[error(transparent)]
    Handoff(#[from] handoff::Error),
}

/// Where the exit is; published on a `watch` channel
/// ([`ShutdownHandle::phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Phase {
    /// Not asked to stop.
    Running,
    /// Accept loops stop.
    StopAccepting,
    /// Consumer loops stop taking work.
    StopConsuming,
    /// Waiting for in-flight work.
    FinishingInFlight,
    /// Idle connections close; waiting for every connection.
    ClosingIdle,
    /// At-exit hooks run.
    AtExit,
    /// Done: the process may exit.
    Done,
}

/// Counts guards; wakes waiters when the count reaches zero.
#[derive(Debug, Default)]
struct Counter {
    count: AtomicUsize,
    zero: Notify,
}

impl Counter {
    fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn zero(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a drop in between
            // still wakes us.
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    started: CancellationToken,
    accept: CancellationToken,
    consume: CancellationToken,
    close_idle: CancellationToken,
    in_flight: Counter,
    connections: Counter,
    /// Cancelled once the exit knows whether a successor takes connections.
    handoff_decided: CancellationToken,
    offering: std::sync::Mutex<Option<Arc<Offering>>>,
}

/// Held while one piece of work (a request, a message) or one connection is
/// open; dropping it says it is done.
#[derive(Debug)]
#[must_use = "the work counts as done as soon as the guard is dropped"]
pub struct Guard {
    state: Arc<State>,
    connection: bool,
}

impl Guard {
    fn new(state: &Arc<State>, connection: bool) -> Guard {
        state
            .counter(connection)
            .count
            .fetch_add(1, Ordering::AcqRel);
        Guard {
            state: state.clone(),
            connection,
        }
    }

    /// A guard for a piece of work done on this connection.
    pub fn in_flight(&self) -> Guard {
        Guard::new(&self.state, false)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let counter = self.state.counter(self.connection);
        if counter.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            counter.zero.notify_waiters();
        }
    }
}

impl State {
    fn counter(&self, connection: bool) -> &Counter {
        if connection {
            &self.connections
        } else {
            &self.in_flight
        }
    }
}

/// What the parts of a service hold: the tokens to watch and the guards to
/// take. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    state: Arc<State>,
    phases: watch::Receiver<Phase>,
}

impl ShutdownHandle {
    /// Starts the exit, as the stop signal does.
    pub fn trigger(&self) {
        self.state.started.cancel();
    }

    /// Whether the exit has begun.
    pub fn is_draining(&self) -> bool {
        self.state.started.is_cancelled()
    }

    /// Resolves when the exit begins.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.state.started.cancelled()
    }

    /// Resolves when accept loops must stop (phase 1).
    pub fn accepting_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.state.accept.cancelled()
    }

    /// Resolves when consumer loops must stop taking work (phase 2).
    pub fn consuming_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.state.consume.cancelled()
    }

    /// Resolves when idle connections must close (phase 4).
    pub fn closing_idle(&self) -> WaitForCancellationFuture<'_> {
        self.state.close_idle.cancelled()
    }

    /// Cancelled when the exit begins; the same moment as
    /// [`accept_token`](ShutdownHandle::accept_token).
    pub fn draining_token(&self) -> CancellationToken {
        self.state.started.clone()
    }

    /// Cancelled when accept loops must stop (phase 1).
    pub fn accept_token(&self) -> CancellationToken {
        self.state.accept.clone()
    }

    /// Cancelled when consumer loops must stop taking work (phase 2).
    pub fn consume_token(&self) -> CancellationToken {
        self.state.consume.clone()
    }

    /// Cancelled once in-flight work is done (or its time is up): idle
    /// connections close (phase 4).
    pub fn close_idle_token(&self) -> CancellationToken {
        self.state.close_idle.clone()
    }

    /// A guard for one piece of work; phase 3 waits for it.
    pub fn in_flight(&self) -> Guard {
        Guard::new(&self.state, false)
    }

    /// A guard for one open connection; phase 4 waits for it.
    pub fn connection(&self) -> Guard {
        Guard::new(&self.state, true)
    }

    /// In-flight guards alive.
    pub fn in_flight_count(&self) -> usize {
        self.state.in_flight.get()
    }

    /// Connection guards alive.
    pub fn connection_count(&self) -> usize {
        self.state.connections.get()
    }

    /// The phases as they pass.
    pub fn phases(&self) -> watch::Receiver<Phase> {
        self.phases.clone()
    }

    /// Hands a connection over to the next generation (see
    /// [`handoff`]): call it at a message boundary once the
    /// exit has begun, with the listener's `name`, the bytes read from the
    /// connection and not processed (`buffer`, at most
    /// [`MAX_BUFFER`](crate::handoff::MAX_BUFFER)) and the application's
    /// `state` (at most [`MAX_STATE`](crate::handoff::MAX_STATE)).
    ///
    /// `Ok`: the successor owns the connection; drop `stream` (this
    /// closes only this process's copy) and end the connection's task.
    /// `Err` gives it back, with the reason: serve it and drain it as
    /// without handoff. It waits at most about a second, and answers at
    /// once when nobody takes connections. [`Shutdown::run`] must be
    /// running: it reads the successor's pair from the channel when the
    /// exit begins, and ends the offering.
    pub async fn hand_over<S: AsFd>(
        &self,
        name: &str,
        stream: S,
        buffer: &[u8],
        state: &[u8],
    ) -> Result<(), Returned<S>> {
        if !self.is_draining() {
            return Err(Returned {
                stream,
                reason: NotTaken::NotDraining,
            });
        }
        match self.offering().await {
            Some(offering) => offering.offer(name, stream, buffer, state).await,
            None => Err(Returned {
                stream,
                reason: NotTaken::NoSuccessor,
            }),
        }
    }

    /// Whether connections may still be handed over: the exit has begun, a
    /// successor takes them, and the offering is not over. A connection
    /// task may skip preparing a handoff when it is `false`.
    pub async fn can_hand_over(&self) -> bool {
        if !self.is_draining() {
            return false;
        }
        self.offering()
            .await
            .is_some_and(|offering| offering.is_open())
    }

    async fn offering(&self) -> Option<Arc<Offering>> {
        self.state.handoff_decided.cancelled().await;
        self.state
            .offering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Hook {
    name: String,
    deadline: Duration,
    future: HookFuture,
}

/// How one at-exit hook went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// The name it was added with.
    pub name: String,
    /// Whether it finished within its deadline (and the drain's).
    pub finished: bool,
    /// How long it ran.
    pub took: Duration,
}

/// How the exit went.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// Whether the drain deadline cut a wait short.
    pub timed_out: bool,
    /// In-flight guards still alive at the end.
    pub in_flight_left: usize,
    /// Connection guards still alive at the end.
    pub connections_left: usize,
    /// Every at-exit hook, in order.
    pub hooks: Vec<HookOutcome>,
    /// From the start of the exit to the end.
    pub took: Duration,
    /// Connections the next generation took.
    pub handed_over: usize,
}

/// Builds a [`Shutdown`] with settings other than the environment's.
#[derive(Debug)]
pub struct Builder {
    drain_timeout: Duration,
    signal: Option<SignalKind>,
    notifier: Notifier,
    channel: Option<Channel>,
}

impl Builder {
    /// The generation's channel, on which the successor's handoff pair
    /// comes; without one, nothing is handed over.
    pub fn channel(mut self, channel: Option<Channel>) -> Builder {
        self.channel = channel;
        self
    }

    /// The time the whole exit may take. The coordinator keeps a margin of
    /// a twentieth of it (at most a second) to return before it is up.
    pub fn drain_timeout(mut self, timeout: Duration) -> Builder {
        self.drain_timeout = timeout;
        self
    }

    /// The signal that starts the exit; `None` for none (only
    /// [`ShutdownHandle::trigger`]).
    pub fn signal(mut self, signal: Option<SignalKind>) -> Builder {
        self.signal = signal;
        self
    }

    /// Where `STOPPING=1` goes.
    pub fn notifier(mut self, notifier: Notifier) -> Builder {
        self.notifier = notifier;
        self
    }

    /// Installs the signal's handler: from here on the signal starts the
    /// exit rather than killing the process. Must be called within a tokio
    /// runtime.
    pub fn build(self) -> Result<Shutdown, Error> {
        let signal = self
            .signal
            .map(tokio::signal::unix::signal)
            .transpose()
            .map_err(Error::Signal)?;
        let (phase, phases) = watch::channel(Phase::Running);
        Ok(Shutdown {
            state: Arc::default(),
            phase,
            phases,
            hooks: Vec::new(),
            drain_timeout: self.drain_timeout,
            signal,
            notifier: self.notifier,
            channel: self.channel,
        })
    }
}

/// The graceful exit coordinator; see the [module](self) documentation.
pub struct Shutdown {
    state: Arc<State>,
    phase: watch::Sender<Phase>,
    phases: watch::Receiver<Phase>,
    hooks: Vec<Hook>,
    drain_timeout: Duration,
    signal: Option<Signal>,
    notifier: Notifier,
    channel: Option<Channel>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &*self.phases.borrow())
            .field("hooks", &self.hooks.len())
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// SIGTERM, the drain timeout from `BATON_DRAIN_TIMEOUT_MS` (else
    /// [`DEFAULT_DRAIN_TIMEOUT`]), `STOPPING=1` to `NOTIFY_SOCKET`, and
    /// handoff to the successor on [`Channel::from_env`].
    /// Must be called within a tokio runtime, early: a SIGTERM before it
    /// kills the process.
    pub fn from_env() -> Result<Shutdown, Error> {
        Shutdown::builder()
            .drain_timeout(
                crate::generation::drain_timeout_from_env().unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            )
            .notifier(Notifier::from_env()?)
            .channel(Channel::from_env()?)
            .build()
    }

    /// Settings of your own: SIGTERM, [`DEFAULT_DRAIN_TIMEOUT`] and no
    /// notifications unless changed.
    pub fn builder() -> Builder {
        Builder {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            signal: Some(SignalKind::terminate()),
            notifier: Notifier::disabled(),
            channel: None,
        }
    }

    /// The handle the service's parts hold.
    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            state: self.state.clone(),
            phases: self.phases.clone(),
        }
    }

    /// The drain timeout in force.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Adds an at-exit hook: `hook` runs after every connection closed (or
    /// the time for it is up), after the hooks added before it, for at most
    /// `deadline` and never past the drain deadline.
    pub fn at_exit(
        &mut self,
        name: impl Into<String>,
        deadline: Duration,
        hook: impl Future<Output = ()> + Send + 'static,
    ) {
        self.hooks.push(Hook {
            name: name.into(),
            deadline,
            future: Box::pin(hook),
        });
    }

    /// Waits for the stop signal (or a trigger), then runs the exit to its
    /// end and says how it went.
    pub async fn run(mut self) -> Report {
        let started = self.state.started.clone();
        match self.signal.as_mut() {
            Some(signal) => {
                tokio::select! {
                    _ = signal.recv() => started.cancel(),
                    _ = started.cancelled() => {}
                }
            }
            None => started.cancelled().await,
        }
        self.exit().await
    }

    async fn exit(self) -> Report {
        let begun = Instant::now();
        let margin = (self.drain_timeout / 20).min(MAX_MARGIN);
        let deadline = begun + self.drain_timeout.saturating_sub(margin);
        let state = &self.state;
        let enter = |phase| {
            self.phase.send_replace(phase);
        };

        // The agent sent the successor's pair before the stop signal: it is
        // queued on the channel by now.
        let offering = self.channel.as_ref().and_then(|channel| {
            let pair = channel.take_successor()?;
            Offering::start(channel.clone(), pair.fd, begun + self.drain_timeout / 2).ok()
        });
        *state.offering.lock().unwrap_or_else(|e| e.into_inner()) = offering.clone();
        state.handoff_decided.cancel();

        enter(Phase::StopAccepting);
        // The agent learns the exit has begun even if it takes long.
        let _ = self.notifier.stopping();
        state.accept.cancel();

        enter(Phase::StopConsuming);
        state.consume.cancel();

        enter(Phase::FinishingInFlight);
        let mut timed_out = tokio::time::timeout_at(deadline, state.in_flight.zero())
            .await
            .is_err();

        enter(Phase::ClosingIdle);
        state.close_idle.cancel();
        timed_out |= tokio::time::timeout_at(deadline, state.connections.zero())
            .await
            .is_err();
        // Whatever was not taken by now stays ours.
        let handed_over = offering.map_or(0, |offering| {
            offering.close();
            offering.handed_over()
        });

        enter(Phase::AtExit);
        let mut hooks = Vec::with_capacity(self.hooks.len());
        for hook in self.hooks {
            let start = Instant::now();
            let until = deadline.min(start + hook.deadline);
            let finished = tokio::time::timeout_at(until, hook.future).await.is_ok();
            hooks.push(HookOutcome {
                name: hook.name,
                finished,
                took: start.elapsed(),
            });
        }

        let report = Report {
            timed_out,
            in_flight_left: state.in_flight.get(),
            connections_left: state.connections.get(),
            hooks,
            took: begun.elapsed(),
            handed_over,
        };
        self.phase.send_replace(Phase::Done);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn coordinator(drain_timeout: Duration) -> Shutdown {
        Shutdown::builder()
            .signal(None)
            .drain_timeout(drain_timeout)
            .build()
            .unwrap()
    }

    type Log = Arc<Mutex<Vec<String>>>;

    fn note(log: &Log, line: &str) {
        log.lock().unwrap().push(line.to_owned());
    }

    #[tokio::test]
    async fn the_phases_come_in_the_order_of_a_graceful_exit() {
        let mut shutdown = coordinator(Duration::from_secs(10));
        let handle = shutdown.handle();
        let log = Log::default();

        let accept = handle.accept_token();
        let consume = handle.consume_token();
        let (accept_log, consume_log) = (log.clone(), log.clone());
        tokio::spawn(async move {
            accept.cancelled().await;
            note(&accept_log, "stopped accepting");
        });
        tokio::spawn(async move {
            consume.cancelled().await;
            note(&consume_log, "stopped consuming");
        });
        // A connection with a request under way, and an idle one.
        let busy = handle.connection();
        let request = busy.in_flight();
        let idle = handle.connection();
        let (request_log, idle_log, watcher) = (log.clone(), log.clone(), handle.clone());
        tokio::spawn(async move {
            watcher.draining_token().cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            note(&request_log, "request done");
            drop(request);
            drop(busy);
        });
        let closer = handle.close_idle_token();
        tokio::spawn(async move {
            closer.cancelled().await;
            note(&idle_log, "idle closed");
            drop(idle);
        });
        for name in ["first hook", "second hook"] {
            let hook_log = log.clone();
            shutdown.at_exit(name, Duration::from_secs(1), async move {
                note(&hook_log, name);
            });
        }

        let mut phases = handle.phases();
        assert_eq!(*phases.borrow_and_update(), Phase::Running);
        handle.trigger();
        let report = shutdown.run().await;

        // Spawned watchers run when the coordinator yields; the first two
        // may come in either order but before the request is waited for.
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 6, "{log:?}");
        let mut first_two = log[..2].to_vec();
        first_two.sort();
        assert_eq!(first_two, ["stopped accepting", "stopped consuming"]);
        assert_eq!(
            log[2..],
            ["request done", "idle closed", "first hook", "second hook"]
        );
        assert!(!report.timed_out);
        assert_eq!((report.in_flight_left, report.connections_left), (0, 0));
        assert!(report.hooks.iter().all(|hook| hook.finished));
        assert_eq!(*phases.borrow_and_update(), Phase::Done);
    }

    #[tokio::test]
    async fn close_idle_waits_for_the_in_flight_work() {
        let shutdown = coordinator(Duration::from_secs(10));
        let handle = shutdown.handle();
        let request = handle.in_flight();
        handle.trigger();
        let running = tokio::spawn(shutdown.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(handle.accept_token().is_cancelled());
        assert!(handle.consume_token().is_cancelled());
        assert!(!handle.close_idle_token().is_cancelled());
        assert_eq!(*handle.phases().borrow(), Phase::FinishingInFlight);
        drop(request);
        let report = running.await.unwrap();
        assert!(handle.close_idle_token().is_cancelled());
        assert!(!report.timed_out);
    }

    #[tokio::test]
    async fn the_drain_timeout_bounds_the_whole_exit() {
        let mut shutdown = coordinator(Duration::from_millis(400));
        let handle = shutdown.handle();
        let _stuck = handle.in_flight();
        let _hanging = handle.connection();
        shutdown.at_exit(
            "never ends",
            Duration::from_secs(60),
            std::future::pending(),
        );
        handle.trigger();
        let report = shutdown.run().await;
        assert!(report.timed_out);
        assert_eq!((report.in_flight_left, report.connections_left), (1, 1));
        assert!(!report.hooks[0].finished);
        // Within the timeout less its margin (20 ms of 400).
        assert!(
            report.took < Duration::from_millis(400),
            "{:?}",
            report.took
        );
        assert!(
            report.took >= Duration::from_millis(370),
            "{:?}",
            report.took
        );
    }

    #[tokio::test]
    async fn a_hook_past_its_deadline_is_left_and_the_next_one_runs() {
        let mut shutdown = coordinator(Duration::from_secs(10));
        let handle = shutdown.handle();
        let ran = Arc::new(AtomicUsize::new(0));
        shutdown.at_exit(
            "slow",
            Duration::from_millis(50),
            tokio::time::sleep(Duration::from_secs(60)),
        );
        let counted = ran.clone();
        shutdown.at_exit("quick", Duration::from_secs(1), async move {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        handle.trigger();
        let report = shutdown.run().await;
        assert!(!report.hooks[0].finished);
        assert!(report.hooks[0].took < Duration::from_secs(1));
        assert!(report.hooks[1].finished);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!report.timed_out);
    }

    #[tokio::test]
    async fn stopping_is_sent_when_the_exit_begins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let supervisor = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let shutdown = Shutdown::builder()
            .signal(None)
            .notifier(Notifier::to(path).unwrap())
            .build()
            .unwrap();
        shutdown.handle().trigger();
        shutdown.run().await;
        let mut buffer = [0u8; 64];
        let length = supervisor.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1\n");
    }
}
