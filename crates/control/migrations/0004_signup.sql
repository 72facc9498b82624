-- Who may sign up to a tenant: anyone ('open'), holders of an invite ('invite'), or
-- nobody ('closed': the tenant's admins or back end make the accounts).
ALTER TABLE tenants ADD COLUMN signup TEXT NOT NULL DEFAULT 'open';

CREATE TABLE invites (
    code_hash   TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    expires_at  BIGINT NOT NULL,
    used_by     TEXT
);
