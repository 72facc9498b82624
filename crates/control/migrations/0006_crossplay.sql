-- Cross-play between tenants. Catalogue entries that are "the same game" on several
-- platforms share a title key; an agreement lets two tenants' players meet in the titles
-- it names. One side offers, the other accepts; either side revokes.
ALTER TABLE games ADD COLUMN crossplay_key TEXT;

CREATE TABLE crossplay_agreements (
    id         TEXT PRIMARY KEY,
    offered_by TEXT NOT NULL REFERENCES tenants (id),
    offered_to TEXT NOT NULL REFERENCES tenants (id),
    title_key  TEXT NOT NULL,
    -- offered, accepted or revoked
    state      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);

CREATE INDEX crossplay_agreements_by_pair ON crossplay_agreements (offered_by, offered_to, title_key);
