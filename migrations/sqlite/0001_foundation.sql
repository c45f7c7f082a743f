-- Foundation: users, clients, roles and permissions, bootstrap codes, audit log.
-- Instants are unix seconds (BIGINT) unless the column name ends in _ms.
-- Flags are INTEGER 0/1 on both backends (sqlx's Any driver cannot decode
-- SQLite's BOOLEAN, so one type serves both).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    password_hash TEXT NOT NULL,
    locked        INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE clients (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    secret_hash            TEXT,
    is_public              INTEGER NOT NULL CHECK (is_public IN (0, 1)),
    redirect_uris          TEXT NOT NULL,
    grant_types            TEXT NOT NULL,
    scopes                 TEXT NOT NULL,
    backchannel_logout_uri TEXT,
    first_party            INTEGER NOT NULL DEFAULT 0 CHECK (first_party IN (0, 1)),
    may_introspect         INTEGER NOT NULL DEFAULT 0 CHECK (may_introspect IN (0, 1)),
    exchange_audiences     TEXT NOT NULL,
    id_token_alg           TEXT NOT NULL DEFAULT 'RS256',
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    CHECK ((is_public = 1 AND secret_hash IS NULL) OR (is_public = 0 AND secret_hash IS NOT NULL))
);

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles(name),
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);

CREATE TABLE user_roles (
    user_id    TEXT NOT NULL REFERENCES users(id),
    role       TEXT NOT NULL REFERENCES roles(name),
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, role)
);

INSERT INTO roles (name, description) VALUES
    ('support', 'Support staff: see and end sessions, read users, request refunds'),
    ('refund_approver', 'Second pair of eyes for refunds above the threshold'),
    ('security_admin', 'Manage users, clients and sessions'),
    ('auditor', 'Read and export the audit log');

INSERT INTO role_permissions (role, permission) VALUES
    ('support', 'sessions:read'),
    ('support', 'sessions:terminate'),
    ('support', 'users:read'),
    ('support', 'refunds:request'),
    ('refund_approver', 'refunds:approve'),
    ('security_admin', 'users:read'),
    ('security_admin', 'users:manage'),
    ('security_admin', 'clients:manage'),
    ('security_admin', 'sessions:read'),
    ('security_admin', 'sessions:terminate'),
    ('auditor', 'audit:read');

-- One-time code printed by `serve` on an empty user table; only its hash is kept.
CREATE TABLE bootstrap_codes (
    id         TEXT PRIMARY KEY,
    code_hash  TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

-- Append-only, hash-chained. `seq` is assigned by the appender as last+1 and
-- `prev_hash` must be unique, so two concurrent appenders can never fork the
-- chain: the second insert fails and retries on the new head.
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    at_ms         BIGINT NOT NULL,
    actor_kind    TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    actor_session TEXT,
    action        TEXT NOT NULL,
    target        TEXT,
    reason        TEXT,
    ticket_id     TEXT,
    before_json   TEXT,
    after_json    TEXT,
    request_id    TEXT,
    ip            TEXT,
    prev_hash     TEXT NOT NULL UNIQUE,
    hash          TEXT NOT NULL UNIQUE
);

CREATE INDEX audit_log_action ON audit_log (action);
CREATE INDEX audit_log_at ON audit_log (at_ms);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
