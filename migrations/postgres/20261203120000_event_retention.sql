-- Events are pruned by age (the server's --event-retention); the index keeps
-- the periodic look for old events from reading the whole table.
CREATE INDEX events_by_at ON events (at);
