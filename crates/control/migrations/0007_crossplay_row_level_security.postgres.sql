-- PostgreSQL only: an agreement is a row of both its tenants.
ALTER TABLE crossplay_agreements ENABLE ROW LEVEL SECURITY;
ALTER TABLE crossplay_agreements FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON crossplay_agreements
    USING (current_setting('cloudplay.tenant', true) IN ('*', offered_by, offered_to))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', offered_by, offered_to));
