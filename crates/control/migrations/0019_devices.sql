-- What a platform lets its players' devices bring into a game: the microphone (on, 1, by
-- default; the host then hears a player who turns theirs on).
ALTER TABLE tenants ADD COLUMN microphone BIGINT NOT NULL DEFAULT 1;
