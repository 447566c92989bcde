-- One row the server rewrites to learn whether its database can still be
-- written (`/healthz`, `baton_database_writable`): reads keep working on a
-- full disk, so only a write tells.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);

-- A host's restart settled from the report the server fetched from its
-- agent (its events were lost while the link was down): the report's steps,
-- as JSON. NULL when the outcome came with the events.
ALTER TABLE restart_hosts ADD COLUMN fetched_steps TEXT;
