-- PostgreSQL only: a moment is its tenant's row.
ALTER TABLE moments ENABLE ROW LEVEL SECURITY;
ALTER TABLE moments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON moments
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));
