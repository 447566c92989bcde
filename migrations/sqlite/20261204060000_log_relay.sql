-- Log streams of hosts linked to another replica (docs/replicas.md).
--
-- The replica a client asks writes the request in `log_relays` and an
-- `open_logs` command (its `command_id` the stream id) in `host_commands`
-- for the replica holding the host's link. That one opens the stream with
-- the agent and appends what comes to `log_relay_chunks`; the asking
-- replica reads and deletes the chunks and renews `lease_until`. A lease
-- that lapsed, or a request row that is gone, stops the stream.
CREATE TABLE log_relays (
    stream_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    -- The link the request was for: another link of the host does not
    -- serve it.
    link_id BIGINT NOT NULL,
    service TEXT NOT NULL,
    generation BIGINT,
    lines BIGINT NOT NULL,
    follow BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE INDEX log_relays_by_lease ON log_relays (lease_until);

-- What the agent sent for a stream, in order: a JSON array of output lines
-- (bounded per row), or its refusal (`error`, JSON); `done` ends the
-- stream. `bytes` is the row's size, bounded per stream while unread.
-- AUTOINCREMENT: the reader deletes what it read, and a plain rowid would
-- give the next chunk an id it has read past.
CREATE TABLE log_relay_chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    lines TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    done BIGINT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX log_relay_chunks_by_stream ON log_relay_chunks (stream_id, id);
CREATE INDEX log_relay_chunks_by_age ON log_relay_chunks (created_at);

-- The outbox takes the new command kind. SQLite cannot change a CHECK in
-- place: the table is made again with its rows.
CREATE TABLE host_commands_next (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    link_id BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('restart', 'fetch_report', 'open_logs')),
    -- restart: its command id, service and reason; fetch_report: the agent
    -- lifetime and the agent's restart id; open_logs: the stream id (in
    -- `command_id`), whose request is in `log_relays`.
    command_id TEXT,
    service TEXT,
    reason TEXT,
    boot_id TEXT,
    agent_restart_id BIGINT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'answered')),
    -- JSON of the answer, once answered.
    answer TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
INSERT INTO host_commands_next (id, host, link_id, kind, command_id, service, reason, boot_id,
        agent_restart_id, state, answer, created_at, expires_at)
    SELECT id, host, link_id, kind, command_id, service, reason, boot_id,
        agent_restart_id, state, answer, created_at, expires_at
    FROM host_commands;
DROP TABLE host_commands;
ALTER TABLE host_commands_next RENAME TO host_commands;
CREATE INDEX host_commands_by_host ON host_commands (host, state);
CREATE INDEX host_commands_by_expiry ON host_commands (expires_at);
