-- "Play this moment": the whole state of a running game, captured and kept for a while so
-- that anyone of the tenant who has the link starts a session of their own from exactly
-- there.
CREATE TABLE moments (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    game_id    TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    data       BYTEA NOT NULL,
    -- the session it was taken from
    session_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
