-- The SQLite step of this version redeclares hosts.online (BOOLEAN there
-- cannot be read through sqlx's `Any` driver). PostgreSQL has a real
-- boolean type: nothing changes here.
SELECT 1;
