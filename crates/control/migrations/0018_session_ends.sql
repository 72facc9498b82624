-- When a session ended (or was lost): a host may still commit its last in-game save for a
-- little while after, and never long after.
ALTER TABLE sessions ADD COLUMN ended_at BIGINT;
