-- WebAuthn: the per-user WebAuthn handle and passwordless opt-in, the
-- binding of a ceremony to the browser that started it, and suspension of
-- a credential whose signature counter went backwards (possible clone).

CREATE TABLE webauthn_users (
    user_id       TEXT PRIMARY KEY REFERENCES users(id),
    -- WebAuthn user.id: a random UUID, never the user id (no PII on the
    -- authenticator); a discoverable credential returns it as userHandle.
    user_handle   TEXT NOT NULL UNIQUE,
    -- 1: the user may sign in with a passkey alone (no password).
    passkey_login INTEGER NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- SHA-256 of what the ceremony is bound to: the session (registration),
-- the pending login challenge (second factor) or a browser cookie
-- (passwordless sign-in).
ALTER TABLE webauthn_challenges ADD COLUMN binding TEXT;
CREATE INDEX webauthn_challenges_expires ON webauthn_challenges (expires_at);

-- Set when an assertion's signature counter did not increase: the key is
-- refused until the person removes it and registers it again.
ALTER TABLE webauthn_credentials ADD COLUMN suspended_at BIGINT;
