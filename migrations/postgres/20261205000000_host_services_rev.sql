-- Moves by one at every write of `hosts.services`: the other replicas read
-- the hosts' links often (a rollout changes them many times a second), and
-- read the services, the bulk of the row, only of the hosts whose
-- revision moved since they last read them.
ALTER TABLE hosts ADD COLUMN services_rev BIGINT NOT NULL DEFAULT 0;
