//! The pieces of `baton-server-bench`, kept apart from `baton-bench`'s own
//! modules, which measure the agent alone.

#[path = "../child.rs"]
pub mod child;
pub mod fleet;
pub mod http;
pub mod procs;
pub mod report;
pub mod scenarios;
pub mod stats;
