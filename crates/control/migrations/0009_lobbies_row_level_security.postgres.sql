-- PostgreSQL only: a lobby is its owner's tenant's row, a member row its member's
-- tenant's. Joining by code and showing a lobby's members across tenants is the
-- platform's work (the code is the capability; the store checks membership and
-- agreements before it shows or changes anything).
ALTER TABLE lobbies ENABLE ROW LEVEL SECURITY;
ALTER TABLE lobbies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lobbies
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE lobby_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE lobby_members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lobby_members
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));
