-- What each generation ran, as its agent reported it on its
-- `generation_spawned` and `generation_ready` events: the executable
-- (symlinks resolved), its build id or content hash, the script an
-- interpreter ran, and the version the service declared. JSON text of
-- `baton_proto::Program`; NULL for generations of agents that do not say.
ALTER TABLE generations ADD COLUMN program TEXT;
