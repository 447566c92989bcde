-- A restart's rollout policy, stored with it so that whichever server
-- process drives the restart (after a restart of the server, or another
-- replica) goes on by the same rules. `max_parallel` keeps the count the
-- restart runs with; `max_parallel_percent` is set when it was asked for as
-- a percentage of the restart's hosts. `pause_until` (Unix ms) is written
-- when the pause after the canary batch begins: a server that takes over
-- waits until then, not for a new pause.
ALTER TABLE restarts ADD COLUMN max_parallel_percent BIGINT;
ALTER TABLE restarts ADD COLUMN canary BIGINT NOT NULL DEFAULT 0;
ALTER TABLE restarts ADD COLUMN pause_ms BIGINT;
ALTER TABLE restarts ADD COLUMN pause_until BIGINT;
ALTER TABLE restarts ADD COLUMN failure_budget BIGINT NOT NULL DEFAULT 0;
