-- Dashboard sessions, so that every server on one database serves a person
-- who signed in on any of them. The browser's cookie holds a random id; only
-- its sha256 is kept here, so a copy of the table hands out no live cookie.
-- A session belongs to the token it signed in with: revoking the token ends
-- it, and a token holds at most a few (the server evicts the oldest, by id).
CREATE TABLE dashboard_sessions (
    id INTEGER PRIMARY KEY,
    id_hash TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL,
    -- Sent back in a hidden field of every form that changes something.
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions (token_hash, id);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
