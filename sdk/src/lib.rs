//! Write services for baton.
//!
//! baton's agent holds a service's listening sockets and replaces one
//! generation of the service by the next on the same sockets. A service
//! does its part with this crate:
//!
//! - [`sockets`]: its sockets by name from `LISTEN_FDS`/`LISTEN_FDNAMES`,
//!   each checked with the kernel to be what the code expects; outside baton
//!   it binds the same names itself, so one binary runs both ways;
//! - [`notify`]: `READY=1` once it answers (the agent lets the previous
//!   generation go only then), status, `STOPPING=1`, more time, `MAINPID=`;
//! - [`generation`]: its generation number, its service, and whether it
//!   replaces a generation that is serving;
//! - [`shutdown`] (feature `tokio`): a graceful exit in phases (stop
//!   accepting, stop consuming, finish in-flight work, close idle
//!   connections, at-exit hooks) within the drain timeout;
//! - [`handoff`] (feature `tokio`): established connections, with the bytes
//!   read from them, handed to the next generation instead of drained;
//! - [`http1`] (feature `hyper`): a hyper HTTP/1.1 connection that hands
//!   itself over between two requests.
//!
//! The same binary speaks systemd's socket activation and `sd_notify`, so it
//! runs under systemd too.
//!
//! # Example
//!
//! A TCP echo service. Run on its own it binds `127.0.0.1:7000`; under baton
//! (`[[service.socket]] name = "echo"`) it serves the agent's socket.
//!
//! ```
//! use baton_sdk::{notify::Notifier, shutdown::Shutdown, sockets::Listeners};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First, while the process has one thread.
//!     let mut listeners = Listeners::from_env()?.or_bind("echo", "127.0.0.1:0");
//!     let echo = listeners.tcp("echo")?;
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     runtime.block_on(async {
//!         let shutdown = Shutdown::from_env()?;
//!         let handle = shutdown.handle();
//!         echo.set_nonblocking(true)?;
//!         let echo = tokio::net::TcpListener::from_std(echo)?;
//!         let accepting = handle.clone();
//!         tokio::spawn(async move {
//!             loop {
//!                 let (mut stream, _) = tokio::select! {
//!                     _ = accepting.accepting_stopped() => break,
//!                     accepted = echo.accept() => match accepted {
//!                         Ok(accepted) => accepted,
//!                         Err(_) => continue,
//!                     },
//!                 };
//!                 let connection = accepting.connection();
//!                 let connection_handle = accepting.clone();
//!                 tokio::spawn(async move {
//!                     let mut buffer = [0u8; 4096];
//!                     loop {
//!                         let read = tokio::select! {
//!                             _ = connection_handle.closing_idle() => break,
//!                             read = stream.read(&mut buffer) => read,
//!                         };
//!                         let Ok(length @ 1..) = read else { break };
//!                         let _working = connection.in_flight();
//!                         if stream.write_all(&buffer[..length]).await.is_err() {
//!                             break;
//!                         }
//!                     }
//!                 });
//!             }
//!         });
//!         Notifier::from_env()?.ready_with_status("echoing")?;
//!         # handle.trigger();
//!         let report = shutdown.run().await;
//!         assert!(!report.timed_out);
//!         Ok::<_, Box<dyn std::error::Error>>(())
//!     })?;
//!     Ok(())
//! }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod generation;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod handoff;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod http1;
pub mod notify;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod shutdown;
pub mod sockets;
#[cfg(feature = "tokio")]
mod sys;
