-- Creators and their channels. A tenant's admin makes a user a creator (or bans one); a
-- creator's channels go live when a publisher presents the channel's stream key by WHIP.
-- Only the key's hash is kept. `broadcast_id` and `host_id` name the live broadcast, if
-- any: set by the one publisher that claims the channel, cleared when it is over.
CREATE TABLE creators (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    banned     BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE channels (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    owner_id     TEXT NOT NULL REFERENCES users (id),
    title        TEXT NOT NULL,
    key_hash     TEXT NOT NULL,
    broadcast_id TEXT,
    host_id      TEXT,
    live_since   BIGINT,
    created_at   BIGINT NOT NULL
);

CREATE INDEX channels_by_owner ON channels (tenant_id, owner_id);
CREATE INDEX channels_live ON channels (tenant_id, live_since);
