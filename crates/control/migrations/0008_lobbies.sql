-- Lobbies: a signed-in player gathers others (of their own tenant, or of tenants with a
-- cross-play agreement for the game's title key) into one session. The lobby belongs to
-- its owner's tenant, where the session runs; each member row belongs to the member's
-- tenant and records who joined from where.
CREATE TABLE lobbies (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    owner_user_id TEXT NOT NULL REFERENCES users (id),
    game_id       TEXT NOT NULL,
    -- the game's crossplay_key; NULL: members of the owner's tenant only
    title_key     TEXT,
    code          TEXT NOT NULL UNIQUE,
    -- open or started
    state         TEXT NOT NULL,
    session_id    TEXT,
    max_members   BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE TABLE lobby_members (
    lobby_id     TEXT NOT NULL REFERENCES lobbies (id),
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    user_id      TEXT NOT NULL REFERENCES users (id),
    display_name TEXT NOT NULL,
    -- the member's measured RTTs, JSON {"region": ms}
    rtt_ms       TEXT NOT NULL,
    seat         BIGINT NOT NULL,
    joined_at    BIGINT NOT NULL,
    PRIMARY KEY (lobby_id, tenant_id, user_id)
);
