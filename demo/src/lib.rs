//! A demo network service that behaves the way a well-written production
//! service should under baton: it serves on inherited sockets, says `READY=1`
//! only once it can really answer, and on SIGTERM stops accepting while it
//! finishes what it has already read, so that a restart loses nothing.
//!
//! The binary (`main.rs`) only wires these modules together; the modules are a
//! library so that tests can drive each one in-process on port 0.
#![forbid(unsafe_code)]

pub mod app;
pub mod behaviour;
pub mod drain;
pub mod echo;
pub mod handover;
pub mod http;
pub mod sockets;
pub mod udp;
pub mod warmup;
pub mod ws;
