-- What became of the old generation's connections on a host of a restart,
-- once its drain ended: handed over to the new generation, drained by the
-- old one, cut at the drain deadline. Written once, from the agent's
-- `drain_finished` event or from the restart's fetched report; NULL until
-- then, and for restarts that replaced no serving generation.
ALTER TABLE restart_hosts ADD COLUMN connections_handed_over BIGINT;
ALTER TABLE restart_hosts ADD COLUMN connections_drained BIGINT;
ALTER TABLE restart_hosts ADD COLUMN connections_cut BIGINT;
