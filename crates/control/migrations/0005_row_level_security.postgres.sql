-- PostgreSQL only: row-level security, a second line of defence behind the tenant every
-- query carries. Each connection works for one tenant at a time (`cloudplay.tenant`,
-- set by the store for the length of a tenant's request) or for the platform (`*`: the
-- fleet, the queue, credential look-ups). A query that forgot its tenant still sees only
-- that tenant's rows; a connection with no tenant set sees nothing. FORCE makes the
-- policies bind the tables' owner too (superusers and BYPASSRLS roles are never bound:
-- run cloudplay as an ordinary role).
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (current_setting('cloudplay.tenant', true) IN ('*', id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', id));

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE user_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON user_tokens
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE tiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE tiers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tiers
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE games ENABLE ROW LEVEL SECURITY;
ALTER TABLE games FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON games
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE entitlements ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON entitlements
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));

ALTER TABLE invites ENABLE ROW LEVEL SECURITY;
ALTER TABLE invites FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invites
    USING (current_setting('cloudplay.tenant', true) IN ('*', tenant_id))
    WITH CHECK (current_setting('cloudplay.tenant', true) IN ('*', tenant_id));
