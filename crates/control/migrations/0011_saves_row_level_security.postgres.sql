-- PostgreSQL only: a save is its player's tenant's row.
ALTER TABLE saves ENABLE ROW LEVEL SECURITY;
ALTER TABLE saves FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON saves
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));
