-- The token janitor (server/src/tokens/janitor.rs) deletes the tokens and
-- the code of a family nothing can use any more, and keeps the family row:
-- it records which clients a session gave tokens to (the admin session
-- view, back-channel logout). `purged_at` marks the families already
-- emptied; the partial index finds the rest among those created before
-- the janitor's cutoff without reading the whole table.
ALTER TABLE token_families ADD COLUMN purged_at BIGINT;
CREATE INDEX token_families_unpurged ON token_families (created_at) WHERE purged_at IS NULL;
