-- An Idempotency-Key belongs to the token that sent it and to the service it
-- restarted, and names its restart only for a while (the server's
-- --idempotency-key-lifetime): another operator's key, or the same key for
-- another service, starts a restart of its own. `restarts.idempotency_key`
-- stays as history and is no longer written; its keys named no token, so
-- none is carried over.
CREATE TABLE idempotency_keys (
    token_hash TEXT NOT NULL,
    service TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    restart_id BIGINT NOT NULL REFERENCES restarts (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (token_hash, service, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
