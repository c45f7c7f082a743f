-- The token janitor (server/src/tokens/janitor.rs) looks for dead families
-- among those created before its cutoff; without this it would read the
-- whole table on every pass.
CREATE INDEX token_families_created ON token_families (created_at);
