-- Several baton-server processes on one database (docs/replicas.md).
--
-- Every running server is a replica with a random id and a heartbeat, written
-- every second; one not heard from for 3 s is dead. `change_seq` moves when
-- something a page shows changed on that replica, so the others re-render.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    change_seq BIGINT NOT NULL DEFAULT 0
);

-- The replica holding the host's link, and that link's id (random, unique
-- across replicas), written at hello and cleared at close only if it still
-- names that link. A host whose replica is dead counts as offline.
ALTER TABLE hosts ADD COLUMN link_replica TEXT;
ALTER TABLE hosts ADD COLUMN link_id BIGINT;
-- The agent's `last_seq` at its hello and the highest sequence stored then:
-- whether every event the agent had is stored, as the holder sees it.
ALTER TABLE hosts ADD COLUMN link_announced_seq BIGINT;
ALTER TABLE hosts ADD COLUMN link_stored_seq BIGINT;

-- The replica driving a running restart, until `lease_until` (Unix ms). The
-- driver renews it every second; another replica claims a restart whose
-- lease ran out with one conditional UPDATE.
ALTER TABLE restarts ADD COLUMN driver TEXT;
ALTER TABLE restarts ADD COLUMN lease_until BIGINT;
CREATE INDEX restarts_by_lease ON restarts (state, lease_until);

-- Which replica stored an event: the change feed hands a replica only the
-- events others stored (its own links told it of theirs already).
ALTER TABLE events ADD COLUMN replica TEXT;

-- Commands for a host whose link another replica holds: that replica
-- delivers them on the link `link_id` and writes the agent's answer back.
-- Rows expire; at most a few wait per host.
CREATE TABLE host_commands (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    link_id BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('restart', 'fetch_report')),
    -- restart: its command id, service and reason; fetch_report: the agent
    -- lifetime and the agent's restart id.
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
CREATE INDEX host_commands_by_host ON host_commands (host, state);
CREATE INDEX host_commands_by_expiry ON host_commands (expires_at);
