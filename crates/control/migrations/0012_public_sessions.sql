-- A player may make a live session public: anyone of its tenant may then find it on the
-- tenant's "Live now" list and watch it. Private (0) is the default.
ALTER TABLE sessions ADD COLUMN public BIGINT NOT NULL DEFAULT 0;
