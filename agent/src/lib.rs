//! baton-agent: holds the listening sockets of a host's services and
//! hot-restarts them without dropping a connection.
//!
//! `unsafe` is denied everywhere but in `sys`, which holds the fork/exec.
#![deny(unsafe_code)]

pub mod agent;
pub mod cgroup;
pub mod channel;
pub mod config;
pub mod connections;
pub mod control;
pub mod events;
pub mod handover;
pub mod lineage;
pub mod log_reader;
pub mod notify;
pub mod notify_router;
pub mod output;
pub mod probe;
pub mod program;
pub mod reaper;
pub mod recovery;
pub mod runtime_dir;
pub mod service;
pub mod sockets;
pub mod spawn;
pub mod state;
pub mod sys;
pub mod uplink;
pub mod usage;
pub mod view;
