-- Admin UI (BFF): sign-ins in flight and signed-in staff browsers. The
-- browser holds only a random cookie; its SHA-256 is the key here. Tokens
-- never leave the server: a session row keeps the hash of the access token
-- the admin UI obtained through the code flow.

CREATE TABLE admin_ui_logins (
    flow_hash     TEXT PRIMARY KEY,
    oauth_state   TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX admin_ui_logins_expiry ON admin_ui_logins (expires_at);

CREATE TABLE admin_ui_sessions (
    id_hash           TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES users(id),
    access_token_hash TEXT NOT NULL,
    csrf_token        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL
);
CREATE INDEX admin_ui_sessions_expiry ON admin_ui_sessions (expires_at);

-- Read-only support desk: can look at sessions and users, cannot end or
-- change anything (the UI shows it no controls; the server refuses anyway).
INSERT INTO roles (name, description) VALUES
    ('support_viewer', 'Read-only support desk: see sessions and users');
INSERT INTO role_permissions (role, permission) VALUES
    ('support_viewer', 'sessions:read'),
    ('support_viewer', 'users:read');
