-- Tenants, accounts, catalogue, entitlements, fleet and sessions.
-- Portable SQL for SQLite and PostgreSQL: TEXT ids, BIGINT times (Unix ms) and flags.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    brand_color TEXT NOT NULL,
    logo_url    TEXT NOT NULL,
    max_rtt_ms  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    is_admin      BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE user_tokens (
    token_hash TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    expires_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    prefix      TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE tiers (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    id        TEXT NOT NULL,
    name      TEXT NOT NULL,
    rank      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE games (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    id            TEXT NOT NULL,
    title         TEXT NOT NULL,
    description   TEXT NOT NULL,
    art_url       TEXT NOT NULL,
    runtime       TEXT NOT NULL,
    required_tier TEXT,
    max_players   BIGINT NOT NULL,
    controls      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE entitlements (
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    tier_id    TEXT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (tenant_id, user_id, tier_id)
);

CREATE TABLE hosts (
    id               TEXT PRIMARY KEY,
    region           TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    capacity         BIGINT NOT NULL,
    used             BIGINT NOT NULL,
    runtimes         TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    state            TEXT NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    user_id         TEXT,
    game_id         TEXT NOT NULL,
    host_id         TEXT,
    state           TEXT NOT NULL,
    options         TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      BIGINT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX sessions_by_host ON sessions (host_id, state);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id, state, created_at);
