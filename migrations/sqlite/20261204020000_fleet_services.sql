-- One row per host and service: what the host's agent last reported about
-- the service, so `GET /services` pages, filters and counts in SQL, and any
-- server replica answers it whichever replica holds the host's link.
-- Written with the host row (`hosts.services`) in one transaction; a
-- forgotten host takes its rows with it.
CREATE TABLE fleet_services (
    host TEXT NOT NULL REFERENCES hosts (name) ON DELETE CASCADE,
    service TEXT NOT NULL,
    -- The service's state on the host (`ServiceState`, snake_case).
    state TEXT NOT NULL CHECK (state IN ('starting', 'ready', 'restarting', 'crash_looping', 'stopped')),
    -- Generations draining there, for the overview's sums.
    draining BIGINT NOT NULL,
    -- Crash-looping or stopped with nothing draining, or blocked: the
    -- overview counts it (an offline host counts too, from `hosts.online`).
    -- 0 or 1: sqlx's Any driver cannot read a column SQLite declares BOOLEAN.
    troubled INTEGER NOT NULL CHECK (troubled IN (0, 1)),
    -- The reported status (JSON of `baton_proto::ServiceStatus`).
    status TEXT NOT NULL,
    PRIMARY KEY (host, service)
);

CREATE INDEX fleet_services_by_service ON fleet_services (service, host);
CREATE INDEX fleet_services_by_state ON fleet_services (state, host, service);
