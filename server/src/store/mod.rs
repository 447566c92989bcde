//! Every SQL statement of the server, one file per group of tables.
//! Statements use `$N` parameters and standard SQL (ON CONFLICT, partial
//! indexes, RETURNING) so that a PostgreSQL pool can follow without
//! rewriting them.
//!
//! Everything goes through sqlx's `Any` driver, on SQLite (the default) or
//! PostgreSQL; [`Db::backend`] tells which when a statement must differ.
//! Columns that hold a state are read into enums ([`text_enum!`]): a value
//! no variant names is an error, never a silent default. Booleans are read
//! through [`Flag`]: SQLite returns them as integers.

mod copy;
mod db;
mod events;
mod fleet_services;
mod generations;
mod hosts;
mod log_relay;
mod replicas;
mod restarts;
mod sessions;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod tokens;

pub use copy::{
    CopiedTable, CopyRefused, NOT_COPIED, TABLES, column_names, copy_database, schema_tables,
};
pub(crate) use db::text_enum;
pub use db::{
    Backend, BadLocation, BadPoolSize, Db, Flag, Location, MigrationStep, PoolSize,
    apply_migrations, connect, connect_with, migrator, open, open_with, pending_migrations,
    probe_write,
};
pub use events::{
    EventGap, LastCrash, find_drain_finished, find_restart_finished, find_restart_started_after,
    forget_events_after, last_crash, max_seq, prune_event_gaps, prune_events, store_events,
    store_events_by,
};
pub use fleet_services::{
    FleetCounts, FleetFilter, FleetPage, FleetServiceRow, backfill_fleet_services, fleet_counts,
    list_fleet_services, state_name,
};
pub use generations::{GenerationPhase, list_generations};
pub use hosts::{
    HostForgotten, HostRow, HostStatus, forget_host, host_names, hosts_offline_since, load_hosts,
    mark_all_hosts_offline, save_host_status, save_host_statuses, upsert_host,
};
pub use log_relay::{
    Appended, LogChunkRow, LogRelayRequest, append_log_chunk, close_log_relay, log_chunks,
    log_relay_request, log_relay_wanted, open_log_relay, prune_log_relays, took_log_chunks,
};
pub use replicas::{
    CHANGES_CHANNEL, Change, FEED_HOLE_LIFETIME, FEED_MAX_HOLES, FedEvent, FeedCursor, FeedRead,
    HostCommandKind, HostCommandRow, LinkedHostRow, NewHostCommand, ReplicaRow,
    answer_host_command, claim_restart, commands_to_deliver, heartbeat, hold_host_link,
    host_command_answer, last_event_id, linked_hosts, mark_host_running_as_driver,
    orphaned_restarts, prune_host_commands, queue_host_command, register_replica,
    release_dead_replicas, release_host_link, release_leases, remove_replica, renew_leases,
    replica_rows, still_commanding, take_host_command, take_host_command_named,
};
pub use replicas::{links_of_replica, reassert_host_link};
pub use restarts::{
    CommandSent, Created, HostRestartState, IdempotencyKey, NewRestart, NewlyCreated, Outcome,
    RestartFilter, RestartHostRow, RestartRow, RestartState, begin_pause,
    count_restarts_by_outcome, create_restart, finish_host, finish_host_from_report,
    finish_restart, get_restart, list_restarts, mark_host_running, record_connections,
    record_output_tail, restart_by_idempotency_key, restart_host_rows, restart_row,
    running_restart_of, running_restarts, set_agent_restart_id, skip_host, skip_pending_hosts,
};
pub use sessions::{
    NewSession, SessionRow, close_session, close_sessions_of_token, find_session, open_session,
    touch_session,
};
pub use tokens::{
    FoundToken, TokenRow, TokenSelector, bind_token_host, find_token, insert_token, list_tokens,
    revoke_tokens,
};
