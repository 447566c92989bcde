//! The pieces of `baton-server-bench`, kept apart from `baton-bench`'s own
//! modules, which measure the agent alone.

pub mod database;
pub mod fleet;
pub mod load;
pub mod procs;
pub mod report;
pub mod scenarios;
pub mod stats;
