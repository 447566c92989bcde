-- The server's history. Written for SQLite first; every statement sticks to
-- forms PostgreSQL also accepts (BIGINT times in Unix milliseconds, TEXT JSON,
-- partial indexes, ON CONFLICT), so a PostgreSQL migration differs only in
-- how the surrogate keys are generated.

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'agent')),
    -- sha256 of the token, hex: tokens are 32 random bytes, so a plain hash
    -- is enough and lets a request be authenticated with one indexed lookup.
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    agent_version TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    online BOOLEAN NOT NULL,
    -- The last reported services (JSON array of proto ServiceStatus), so
    -- GET /services answers right after a server restart.
    services TEXT NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    service TEXT NOT NULL,
    agent_restart_id BIGINT,
    kind TEXT NOT NULL,
    -- The whole proto Event as JSON.
    body TEXT NOT NULL,
    UNIQUE (host, boot_id, seq)
);
CREATE INDEX events_by_agent_restart ON events (host, boot_id, agent_restart_id, seq);
CREATE INDEX events_by_service_kind ON events (host, boot_id, service, kind, seq);

CREATE TABLE generations (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    service TEXT NOT NULL,
    generation BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('starting', 'ready', 'draining', 'exited')),
    spawned_at BIGINT,
    ready_at BIGINT,
    draining_at BIGINT,
    exited_at BIGINT,
    exit_status TEXT,
    connections_cut BIGINT,
    agent_restart_id BIGINT,
    UNIQUE (host, boot_id, service, generation)
);
CREATE INDEX generations_by_service ON generations (service, id);

CREATE TABLE restarts (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    reason TEXT,
    requested_by TEXT,
    idempotency_key TEXT UNIQUE,
    max_parallel INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'finished')),
    outcome TEXT,
    outcome_reason TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX restarts_by_service ON restarts (service, id);
CREATE INDEX restarts_by_outcome ON restarts (outcome, id);
-- At most one running restart per service, enforced where it cannot race.
CREATE UNIQUE INDEX restarts_one_running_per_service ON restarts (service) WHERE state = 'running';

CREATE TABLE restart_hosts (
    restart_id BIGINT NOT NULL REFERENCES restarts (id),
    host TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'finished', 'skipped')),
    outcome TEXT,
    outcome_reason TEXT,
    command_id TEXT,
    -- The agent lifetime the command went to, and the highest event sequence
    -- stored for it when the command was sent: after a server crash that lost
    -- the agent's answer, the restart is the first restart_started event of
    -- the service after that sequence.
    boot_id TEXT,
    seq_at_command BIGINT,
    agent_restart_id BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (restart_id, host)
);
CREATE INDEX restart_hosts_by_host ON restart_hosts (host, restart_id);
