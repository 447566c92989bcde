-- An agent token speaks for exactly one host. A token created before this
-- column existed has none: it binds to the first host its agent names and is
-- pinned there (`link.rs`); every new agent token names its host.
ALTER TABLE api_tokens ADD COLUMN host TEXT CHECK (host IS NULL OR role = 'agent');

-- Holes in an agent's event sequence, as the server saw them: the events
-- after `after_seq` up to `next_seq` never arrived (the agent had evicted
-- them, or something else went wrong). Recorded, never skipped silently.
CREATE TABLE event_gaps (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    after_seq BIGINT NOT NULL,
    next_seq BIGINT NOT NULL,
    detected_at BIGINT NOT NULL
);
CREATE INDEX event_gaps_by_host ON event_gaps (host, boot_id, id);
