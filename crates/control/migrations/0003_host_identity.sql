-- Hosts enrol once with a one-time token (only its hash is kept) and from then on are
-- known by the fingerprint of their TLS certificate: re-registering a host id takes that
-- certificate's key.
CREATE TABLE host_enrolments (
    token_hash  TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL,
    used_by     TEXT
);

CREATE TABLE host_credentials (
    host_id      TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    enrolled_at  BIGINT NOT NULL
);
