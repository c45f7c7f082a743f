-- Session ending (who, why), RP-initiated logout redirect URIs, and the
-- durable outbox for back-channel logout (and later webhooks).

ALTER TABLE sessions ADD COLUMN ended_by_id TEXT;
CREATE INDEX sessions_active ON sessions (ended_at, last_seen_at);
CREATE INDEX token_families_session ON token_families (session_id);

ALTER TABLE clients ADD COLUMN post_logout_redirect_uris TEXT NOT NULL DEFAULT '[]';

-- One row per message to deliver; survives restarts. Delivered rows keep
-- `delivered_at`; rows that exhausted their attempts keep `failed_at`.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    target_url      TEXT NOT NULL,
    client_id       TEXT,
    payload         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    delivered_at    BIGINT,
    failed_at       BIGINT
);
CREATE INDEX outbox_due ON outbox (delivered_at, failed_at, next_attempt_at);
