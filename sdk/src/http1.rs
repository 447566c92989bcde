//! One hyper 1.x HTTP/1.1 server connection that, once the exit has begun,
//! hands itself over to the next generation between two requests, with
//! what hyper has read of the next one; the next generation resumes from
//! that buffer before reading the socket ([`serve`] on an
//! [`Incoming`](crate::handoff::Incoming)).
//!
//! A connection is between two requests when every request has its whole
//! response (its body to the end) written and flushed to the socket:
//! nothing the client is owed stays in this process. A connection the next
//! generation does not take is served on; once it has been quiet for a
//! second it is closed between two requests (hyper's graceful shutdown), so
//! an idle keep-alive connection is not closed under a request on its way.
//!
//! Not handed over: a connection upgraded (hyper's upgrades are not
//! enabled here), or one whose unread bytes exceed
//! [`MAX_BUFFER`](crate::handoff::MAX_BUFFER); those drain.
//!
//! ```no_run
//! use baton_sdk::{http1, shutdown::ShutdownHandle};
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::Bytes, service::service_fn};
//!
//! # async fn connection(stream: tokio::net::TcpStream, handle: ShutdownHandle) {
//! let service = service_fn(|_: Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
//! });
//! let _ = http1::serve(stream, "http", Vec::new(), service, &handle).await;
//! # }
//! ```

use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming as IncomingBody;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::shutdown::ShutdownHandle;

/// How long a connection kept through a drain must be quiet before it is
/// closed between two requests.
const QUIET: Duration = Duration::from_secs(1);

/// How a connection ended for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The client or hyper closed it (or the drain did, politely).
    Closed,
    /// The next generation serves it now.
    HandedOver,
}

/// Serves one HTTP/1.1 connection with `service`, reading `buffer` (bytes
/// a previous generation read and did not process; empty for a connection
/// just accepted) before the socket. Once `handle` says the exit has
/// begun, the connection is offered to the next generation at the first
/// moment it is between two requests, as the listener `name`.
///
/// Hold a [`connection`](ShutdownHandle::connection) guard while it runs:
/// the exit offers connections while any is held.
pub async fn serve<S, Svc, B>(
    stream: S,
    name: &str,
    buffer: Vec<u8>,
    service: Svc,
    handle: &ShutdownHandle,
) -> Result<Outcome, hyper::Error>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
    Svc: Service<Request<IncomingBody>, Response = Response<B>> + Unpin,
    Svc::Future: Send + 'static,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let counts = Arc::new(Counts::new());
    let mut service = Tracked {
        inner: service,
        counts: counts.clone(),
    };
    let mut io = Resumed::new(stream, Bytes::from(buffer), counts.clone());
    let mut offering = true;
    loop {
        let mut connection =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
        match run(&mut connection, &counts, handle, offering).await {
            Ended::Done(result) => return result.map(|()| Outcome::Closed),
            Ended::Boundary => {}
        }
        // Between two requests, every response flushed: what hyper read of
        // the next request (after any of ours it did not reach) travels.
        let parts = connection.into_parts();
        service = parts.service;
        let (stream, mut unread) = parts.io.into_inner().into_parts();
        unread.extend_from_slice(&parts.read_buf);
        offering = false;
        match handle.hand_over(name, stream, &unread, b"").await {
            Ok(()) => return Ok(Outcome::HandedOver),
            Err(returned) => {
                io = Resumed::new(returned.stream, Bytes::from(unread), counts.clone());
            }
        }
    }
}

enum Ended {
    Done(Result<(), hyper::Error>),
    Boundary,
}

type Connection<S, Svc> = hyper::server::conn::http1::Connection<TokioIo<Resumed<S>>, Tracked<Svc>>;

/// Polls the connection until it ends, or (when `offering` and the exit has
/// begun) until it is between two requests. A connection kept through a
/// drain is closed between two requests once it has been quiet.
async fn run<S, Svc, B>(
    connection: &mut Connection<S, Svc>,
    counts: &Counts,
    handle: &ShutdownHandle,
    offering: bool,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Service<Request<IncomingBody>, Response = Response<B>> + Unpin,
    Svc::Future: Send + 'static,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut draining = std::pin::pin!(handle.draining());
    let mut quiet = std::pin::pin!(tokio::time::sleep(QUIET));
    let mut closing = false;
    poll_fn(|cx| {
        if let Poll::Ready(result) = connection.poll_without_shutdown(cx) {
            return Poll::Ready(Ended::Done(result));
        }
        // Checked after hyper's poll: a request it has just read has been
        // given to the service by now, and counts.
        if draining.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if offering {
            // Every change of `between_requests` happens inside hyper's
            // poll (a body's end, a flush), which wakes us again.
            return if counts.between_requests() {
                Poll::Ready(Ended::Boundary)
            } else {
                Poll::Pending
            };
        }
        if !closing {
            let quiet_until = counts.last_read() + QUIET;
            if Instant::now() >= quiet_until && counts.between_requests() {
                closing = true;
                Pin::new(&mut *connection).graceful_shutdown();
                cx.waker().wake_by_ref();
            } else {
                quiet
                    .as_mut()
                    .reset(quiet_until.max(Instant::now() + Duration::from_millis(10)));
                let _ = quiet.as_mut().poll(cx);
            }
        }
        Poll::Pending
    })
    .await
}

/// What tells "between two requests" apart.
#[derive(Debug)]
struct Counts {
    /// Requests given to the service whose response body has not ended.
    in_flight: AtomicU64,
    /// Responses whose body ended (or was dropped).
    finished: AtomicU64,
    /// `finished` as it was at the last completed flush of the socket.
    flushed: AtomicU64,
    /// When bytes last came from the client.
    last_read: std::sync::Mutex<Instant>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            in_flight: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            last_read: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// No request in flight, and the socket was flushed after the last
    /// response ended: hyper holds nothing the client is owed. (hyper
    /// flushes the socket only after writing out its own buffer.)
    fn between_requests(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.flushed.load(Ordering::Acquire) == self.finished.load(Ordering::Acquire)
    }

    fn last_read(&self) -> Instant {
        *self.last_read.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a request from the service's call to its response body's end.
struct InFlight(Arc<Counts>);

impl InFlight {
    fn new(counts: &Arc<Counts>) -> InFlight {
        counts.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(counts.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // `finished` first: between the two, `in_flight` still says busy.
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The application's service, counting requests in flight.
struct Tracked<Svc> {
    inner: Svc,
    counts: Arc<Counts>,
}

impl<Svc, B> Service<Request<IncomingBody>> for Tracked<Svc>
where
    Svc: Service<Request<IncomingBody>, Response = Response<B>>,
    Svc::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Svc::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: Request<IncomingBody>) -> Self::Future {
        let in_flight = InFlight::new(&self.counts);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                in_flight: Some(in_flight),
            }))
        })
    }
}

/// A response body that says when it ended.
struct TrackedBody<B> {
    body: B,
    in_flight: Option<InFlight>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, read after `unread` (bytes from before), noting flushes and
/// reads for [`Counts`].
struct Resumed<S> {
    stream: S,
    unread: Bytes,
    counts: Arc<Counts>,
}

impl<S> Resumed<S> {
    fn new(stream: S, unread: Bytes, counts: Arc<Counts>) -> Resumed<S> {
        Resumed {
            stream,
            unread,
            counts,
        }
    }

    /// The socket and what hyper did not reach of `unread`.
    fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.unread.to_vec())
    }
}

impl<S: AsFd> AsFd for Resumed<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Resumed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let length = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(length));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            *this
                .counts
                .last_read
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Resumed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Read before flushing: a response that ends meanwhile is not
        // counted as flushed by this flush.
        let finished = this.counts.finished.load(Ordering::Acquire);
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.counts.flushed.store(finished, Ordering::Release);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
