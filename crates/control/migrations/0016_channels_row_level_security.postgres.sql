-- PostgreSQL only: creators and channels are their tenant's rows.
ALTER TABLE creators ENABLE ROW LEVEL SECURITY;
ALTER TABLE creators FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON creators
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));
ALTER TABLE channels ENABLE ROW LEVEL SECURITY;
ALTER TABLE channels FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON channels
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));
