//! End-to-end tests: the real binaries run together. One test binary, one module per area.

mod agent_recovery;
mod api_contract;
mod bad_input;
mod cli;
mod dashboard;
mod deploy;
mod disk_full;
mod env_check;
mod fleet;
mod gunicorn;
mod handoff_broker;
mod host_binding;
mod lifecycle;
mod link_faults;
mod mainpid;
mod notify_attribution;
mod notify_flood;
mod outcomes;
mod process_tracking;
mod restart_by_signal;
mod restart_under_load;
mod runtime_folders;
mod sockets;
mod tls;
mod tokens;
mod upgrade;
