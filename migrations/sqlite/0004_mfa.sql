-- Second factors: TOTP, WebAuthn credentials, recovery codes; the
-- half-finished logins waiting for a second factor; failure counters for
-- exponential lockout (they survive restarts and new sessions).

CREATE TABLE totp_credentials (
    user_id        TEXT PRIMARY KEY REFERENCES users(id),
    secret_base32  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    confirmed_at   BIGINT,
    -- Highest time step accepted so far: a code is accepted once.
    last_used_step BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE webauthn_credentials (
    id           TEXT PRIMARY KEY,           -- credential id, base64url
    user_id      TEXT NOT NULL REFERENCES users(id),
    name         TEXT NOT NULL,
    passkey      TEXT NOT NULL,              -- webauthn-rs credential, JSON
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

-- Registration and authentication ceremony state, kept server-side and
-- used once.
CREATE TABLE webauthn_challenges (
    id         TEXT PRIMARY KEY,
    user_id    TEXT REFERENCES users(id),
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE recovery_codes (
    code_hash  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

-- A password was accepted; the second factor is still due.
CREATE TABLE login_challenges (
    secret_hash TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    request_id  TEXT,
    ip          TEXT,
    user_agent  TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE TABLE auth_failures (
    subject      TEXT PRIMARY KEY,           -- e.g. mfa:<user id>
    failures     INTEGER NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL
);
