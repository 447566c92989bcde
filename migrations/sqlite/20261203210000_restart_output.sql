-- The last lines the new generation of a restart that did not succeed
-- wrote on a host (the agent's `output_tail`), as a JSON array of
-- `OutputLine`s: why the restart failed, in the service's own words.
-- Written once; bounded by the agent (40 lines, 8 KiB of text) and checked
-- again by the server before it is stored.
ALTER TABLE restart_hosts ADD COLUMN output_tail TEXT;
