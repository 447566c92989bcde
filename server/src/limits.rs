//! What one client may hold: its connections, and the time it takes to send
//! a request body. Without these, a client that trickles a body a byte a
//! second keeps a connection (and a worker's attention) for ever, before
//! any token is checked.
//!
//! Actix cuts a connection whose request head is late
//! (`client_request_timeout`, set in `startup`); this module adds the rest as
//! one middleware:
//! - a connection takes a place among its peer address's connections when it
//!   is accepted (over TLS: at its first request) and gives it back when it
//!   closes (its place lives in the connection's data, put there by
//!   `HttpServer::on_connect`); past `connections_per_ip`, its requests are
//!   answered `429` and it is closed;
//! - a request body must arrive in full within `request_timeout`; a late one
//!   ends in a read error (the handler answers `400`) and the connection is
//!   closed.
//!
//! Both are logged at most once a second, with how many were not logged.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use futures::StreamExt;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits and the count of connections per address; one per server.
pub struct ClientLimits {
    connections_per_ip: usize,
    request_timeout: Duration,
    open: Mutex<HashMap<IpAddr, usize>>,
    refused_log: RateLimitedLog,
    slow_log: RateLimitedLog,
}

impl ClientLimits {
    pub fn new(connections_per_ip: usize, request_timeout: Duration) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            connections_per_ip,
            request_timeout,
            open: Mutex::new(HashMap::new()),
            refused_log: RateLimitedLog::default(),
            slow_log: RateLimitedLog::default(),
        })
    }

    /// How many connections of this address hold a place now.
    pub fn connections_of(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .expect("connection count lock")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    fn take_place(self: &Arc<Self>, ip: IpAddr) -> Option<Place> {
        let mut open = self.open.lock().expect("connection count lock");
        let count = open.entry(ip).or_insert(0);
        if *count >= self.connections_per_ip {
            return None;
        }
        *count += 1;
        Some(Place {
            limits: self.clone(),
            ip,
        })
    }
}

/// One connection's place among its address's connections.
struct Place {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("connection count lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Put into each connection's data when it is accepted (`on_connect`), and
/// dropped with the connection.
pub struct ConnectionSlot {
    slot: RefCell<Slot>,
    limits: Arc<ClientLimits>,
    opened: Instant,
    served: Cell<bool>,
}

#[derive(Default)]
enum Slot {
    #[default]
    Unclaimed,
    Counted(#[allow(dead_code)] Place),
    Refused,
}

impl ClientLimits {
    /// The slot of a connection just accepted. Over plain TCP its peer is
    /// known at once and its place is taken now, so connections that never
    /// finish a request head count too; over TLS the place is taken at the
    /// first request.
    pub fn on_connect(self: &Arc<Self>, io: &dyn Any) -> ConnectionSlot {
        let peer = io
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|stream| stream.peer_addr().ok())
            .map(|address| address.ip());
        let connection = ConnectionSlot {
            slot: RefCell::new(Slot::Unclaimed),
            limits: self.clone(),
            opened: Instant::now(),
            served: Cell::new(false),
        };
        if let Some(ip) = peer {
            connection.claim(ip);
        }
        connection
    }

    fn refused(&self, ip: IpAddr) {
        self.refused_log.log(|suppressed| {
            tracing::warn!(
                peer = %ip,
                limit = self.connections_per_ip,
                suppressed,
                "refused a connection: too many from one address"
            )
        });
    }
}

impl ConnectionSlot {
    fn claim(&self, ip: IpAddr) {
        let mut slot = self.slot.borrow_mut();
        *slot = match self.limits.take_place(ip) {
            Some(place) => Slot::Counted(place),
            None => {
                self.limits.refused(ip);
                Slot::Refused
            }
        };
    }

    /// Whether the connection may be served: its place is taken at accept
    /// (or its first request) and kept until it closes.
    fn admit(&self, peer: Option<IpAddr>) -> bool {
        self.served.set(true);
        let unclaimed = matches!(*self.slot.borrow(), Slot::Unclaimed);
        if unclaimed && let Some(ip) = peer {
            self.claim(ip);
        }
        !matches!(*self.slot.borrow(), Slot::Refused)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // Actix cut it for a request head that never came in time.
        if !self.served.get() && self.opened.elapsed() >= self.limits.request_timeout {
            self.limits.slow_log.log(|suppressed| {
                tracing::info!(
                    timeout = ?self.limits.request_timeout,
                    suppressed,
                    "closed a connection that sent no complete request in time"
                )
            });
        }
    }
}

/// The middleware: places per address, and the deadline of request bodies.
pub async fn limit_clients(
    mut request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(limits) = request
        .app_data::<web::Data<Arc<ClientLimits>>>()
        .map(|limits| limits.get_ref().clone())
    else {
        return next
            .call(request)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let peer = request.peer_addr().map(|address| address.ip());
    let admitted = request
        .conn_data::<ConnectionSlot>()
        .is_none_or(|slot| slot.admit(peer));
    if !admitted {
        let response = HttpResponse::TooManyRequests()
            .force_close()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(baton_proto::api::ApiError {
                error: "too many connections from this address".into(),
                restart_id: None,
            });
        return Ok(request.into_response(response).map_into_right_body());
    }
    // An upgraded connection (the agent link) streams for as long as it
    // lives; its silence is the link's own business.
    if !request.headers().contains_key(header::UPGRADE) {
        let payload = request.take_payload();
        let deadline = tokio::time::Instant::now() + limits.request_timeout;
        request.set_payload(Payload::Stream {
            payload: Box::pin(body_until(payload, deadline, limits.clone(), peer)),
        });
    }
    next.call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn body_until(
    payload: Payload,
    deadline: tokio::time::Instant,
    limits: Arc<ClientLimits>,
    peer: Option<IpAddr>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, PayloadError>> {
    futures::stream::unfold(Some(payload), move |payload| {
        let limits = limits.clone();
        async move {
            let mut payload = payload?;
            match tokio::time::timeout_at(deadline, payload.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(payload))),
                Ok(None) => None,
                Err(_) => {
                    limits.slow_log.log(|suppressed| {
                        tracing::warn!(
                            peer = ?peer,
                            timeout = ?limits.request_timeout,
                            suppressed,
                            "cut a client whose request body was too slow"
                        )
                    });
                    let late = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    );
                    Some((Err(PayloadError::Io(late)), None))
                }
            }
        }
    })
}

/// A warning that repeats at most once a second, with how many were left
/// out since the last one.
#[derive(Default)]
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn log(&self, write: impl FnOnce(u64)) {
        let mut last = self.last.lock().expect("log limit lock");
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        write(self.suppressed.swap(0, Ordering::Relaxed));
    }
}
