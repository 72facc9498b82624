-- Every session has an owner (`user:<id>`, `guest:<hash of the guest cookie>` or
-- `key:<api key id>`); sessions from before this migration have none and only the
-- tenant's admins and API keys may act on them. A watch grant (its hash) lets anyone who
-- holds it watch, never play; clearing it revokes every share link at once.
ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN watch_grant_hash TEXT;
CREATE INDEX sessions_by_owner ON sessions (tenant_id, owner, state);
