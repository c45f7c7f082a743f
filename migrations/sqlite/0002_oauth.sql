-- OAuth / OIDC core: login sessions, pending authorization requests,
-- consents, authorization codes, opaque tokens grouped in families.

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,           -- public id: the `sid` claim
    secret_hash  TEXT NOT NULL UNIQUE,       -- SHA-256 of the cookie value
    user_id      TEXT NOT NULL REFERENCES users(id),
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    auth_time    BIGINT NOT NULL,
    amr          TEXT NOT NULL,              -- JSON array
    acr          TEXT NOT NULL,
    ip           TEXT,
    user_agent   TEXT,
    ended_at     BIGINT,
    ended_by     TEXT,
    end_reason   TEXT,
    ticket_id    TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE authorization_requests (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients(id),
    params     TEXT NOT NULL,                -- validated request, JSON
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    completed_at BIGINT
);

CREATE TABLE consents (
    user_id    TEXT NOT NULL REFERENCES users(id),
    client_id  TEXT NOT NULL REFERENCES clients(id),
    scopes     TEXT NOT NULL,                -- space-separated
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- Every refresh token and the access tokens minted with it belong to one
-- family, born at code redemption; revoking the family revokes them all.
CREATE TABLE token_families (
    id             TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL REFERENCES clients(id),
    user_id        TEXT REFERENCES users(id),
    session_id     TEXT REFERENCES sessions(id),
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);

CREATE TABLE authorization_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL REFERENCES clients(id),
    user_id        TEXT NOT NULL REFERENCES users(id),
    session_id     TEXT NOT NULL REFERENCES sessions(id),
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    nonce          TEXT,
    code_challenge TEXT,
    auth_time      BIGINT NOT NULL,
    amr            TEXT NOT NULL,
    acr            TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT,
    family_id      TEXT UNIQUE REFERENCES token_families(id)
);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,         -- `jti`
    client_id  TEXT NOT NULL REFERENCES clients(id),
    user_id    TEXT REFERENCES users(id),
    session_id TEXT REFERENCES sessions(id),
    family_id  TEXT REFERENCES token_families(id),
    scope      TEXT NOT NULL,
    audience   TEXT,
    auth_time  BIGINT,
    amr        TEXT,
    acr        TEXT,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX access_tokens_family ON access_tokens (family_id);
CREATE INDEX access_tokens_session ON access_tokens (session_id);
CREATE INDEX access_tokens_client ON access_tokens (client_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES token_families(id),
    client_id  TEXT NOT NULL REFERENCES clients(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    session_id TEXT REFERENCES sessions(id),
    scope      TEXT NOT NULL,
    nonce      TEXT,
    auth_time  BIGINT NOT NULL,
    amr        TEXT NOT NULL,
    acr        TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,                       -- rotated: presenting it again is reuse
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
