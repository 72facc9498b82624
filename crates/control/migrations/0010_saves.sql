-- Cloud saves: a player's in-game saves (libretro SRAM) and save states, per game, kept
-- by the control plane so they follow the player to any host. Each write is a new
-- version (the last few are kept); the checksum is of the bytes as written.
CREATE TABLE saves (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    game_id    TEXT NOT NULL,
    -- sram or state
    kind       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    size       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    data       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id, game_id, kind, version)
);
