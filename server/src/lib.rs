//! baton-server: the control plane. Agents connect to it over a WebSocket
//! (`link`), report their services and stream their events, which are stored
//! (`store`) and derived into a generation history; the REST API (`routes`)
//! reads the live picture (`fleet`) and the history, and starts rolling
//! restarts (`restarts`) that the `orchestrator` drives by sending commands
//! back over the links.
//!
//! `dashboard` renders the same reads as HTML for browsers and starts
//! restarts through the same `restarts`. `startup` registers each shared part
//! as its own `web::Data`.
//!
//! Architecture invariant: only `store` contains SQL, and only `link` speaks
//! the WebSocket protocol.
#![forbid(unsafe_code)]

pub mod agent_input;
pub mod auth;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod fleet;
pub mod housekeeping;
pub mod limits;
pub mod link;
pub mod log_relay;
pub mod metrics;
pub mod openapi;
pub mod orchestrator;
pub mod replicas;
pub mod restarts;
pub mod rollout;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod status_writer;
pub mod store;
pub mod write_probe;
