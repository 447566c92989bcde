//! Every SQL statement of the server, one file per group of tables.
//! Statements use `$N` parameters and standard SQL (ON CONFLICT, partial
//! indexes, RETURNING) so that a PostgreSQL pool can follow without
//! rewriting them.
//!
//! Columns that hold a state are read into enums (`sqlx::Type`): a value no
//! variant names is an error, never a silent default.

mod db;
mod events;
mod generations;
mod hosts;
mod restarts;
mod sessions;
mod tokens;

pub use db::{Db, open, probe_write};
pub use events::{
    EventGap, LastCrash, find_drain_finished, find_restart_finished, find_restart_started_after,
    forget_events_after, last_crash, max_seq, prune_event_gaps, prune_events, store_events,
};
pub use generations::{GenerationPhase, list_generations};
pub use hosts::{
    HostForgotten, HostRow, forget_host, host_names, hosts_offline_since, load_hosts,
    mark_all_hosts_offline, save_host_status, upsert_host,
};
pub use restarts::{
    CommandSent, Created, HostRestartState, IdempotencyKey, NewRestart, NewlyCreated, Outcome,
    RestartFilter, RestartHostRow, RestartRow, RestartState, count_restarts_by_outcome,
    create_restart, finish_host, finish_host_from_report, finish_restart, get_restart,
    list_restarts, mark_host_running, record_connections, record_output_tail,
    restart_by_idempotency_key, restart_host_rows, restart_row, running_restart_of,
    running_restarts, set_agent_restart_id, skip_host,
};
pub use sessions::{
    NewSession, SessionRow, close_session, close_sessions_of_token, find_session, open_session,
    touch_session,
};
pub use tokens::{
    FoundToken, TokenRow, TokenSelector, bind_token_host, find_token, insert_token, list_tokens,
    revoke_tokens,
};
