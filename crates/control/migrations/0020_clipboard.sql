-- Whether a platform's players may paste into native games' clipboard and copy from it
-- (on, 1, by default; always on the player's own gesture, text only, 64 KiB at most).
ALTER TABLE tenants ADD COLUMN clipboard BIGINT NOT NULL DEFAULT 1;
