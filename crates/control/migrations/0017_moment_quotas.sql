-- Moments count against quotas: who captured each one (its session's owner, or an API
-- key's id) and its size, so a quota check reads no blob.
ALTER TABLE moments ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE moments ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
UPDATE moments SET size = length(data);
CREATE INDEX moments_by_owner ON moments (tenant_id, owner);
