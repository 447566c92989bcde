-- hosts.online was declared BOOLEAN. SQLite stores it as 0 or 1 either way,
-- but sqlx's `Any` driver refuses to describe a column declared BOOLEAN on
-- SQLite, so the table is rebuilt with the column declared INTEGER (still
-- 0 or 1). No other table refers to hosts.
CREATE TABLE hosts_rebuilt (
    name TEXT PRIMARY KEY,
    agent_version TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    online INTEGER NOT NULL CHECK (online IN (0, 1)),
    -- The last reported services (JSON array of proto ServiceStatus), so
    -- GET /services answers right after a server restart.
    services TEXT NOT NULL
);
INSERT INTO hosts_rebuilt (name, agent_version, boot_id, first_seen, last_seen, online, services)
    SELECT name, agent_version, boot_id, first_seen, last_seen, online, services FROM hosts;
DROP TABLE hosts;
ALTER TABLE hosts_rebuilt RENAME TO hosts;
