-- A revoked token stays listed (who had access, until when) but no longer
-- authenticates anything.
ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT;
