-- Four-eyes refunds (issue 7): refund requests and their life cycle, the
-- idempotency keys of POST /admin/api/refunds, and the ids of approval
-- tokens already spent. Instants are unix seconds; flags INTEGER 0/1.

CREATE TABLE refunds (
    id                  TEXT PRIMARY KEY,
    -- Written only through the state machine (server/src/refunds/state.rs).
    status              TEXT NOT NULL CHECK (status IN ('pending_approval', 'approved',
                            'rejected', 'cancelled', 'expired', 'executed')),
    payment_id          TEXT NOT NULL,
    amount_minor        BIGINT NOT NULL CHECK (amount_minor > 0),
    currency            TEXT NOT NULL CHECK (length(currency) = 3),
    reason              TEXT NOT NULL,
    ticket_id           TEXT,
    requested_by        TEXT NOT NULL REFERENCES users(id),
    -- 1 when the amount was above the threshold and a second person had to approve.
    four_eyes           INTEGER NOT NULL CHECK (four_eyes IN (0, 1)),
    threshold_minor     BIGINT NOT NULL,
    approved_by         TEXT REFERENCES users(id),
    approved_at         BIGINT,
    rejected_by         TEXT REFERENCES users(id),
    cancelled_by        TEXT REFERENCES users(id),
    -- Reason given with the approval, rejection, cancellation or expiry.
    decision_reason     TEXT,
    approval_jti        TEXT UNIQUE,
    approval_expires_at BIGINT,
    -- Client id of the payments service that executed the refund.
    executed_by         TEXT,
    executed_at         BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    -- When a pending request expires; NULL for requests approved on creation.
    expires_at          BIGINT,
    -- Defence in depth for the rules the state machine enforces.
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK (status <> 'pending_approval' OR expires_at IS NOT NULL),
    CHECK (status NOT IN ('approved', 'executed') OR approval_jti IS NOT NULL),
    CHECK (four_eyes = 0 OR status NOT IN ('approved', 'executed') OR approved_by IS NOT NULL),
    CHECK (status <> 'executed' OR executed_at IS NOT NULL)
);
CREATE INDEX refunds_due ON refunds (status, expires_at);
CREATE INDEX refunds_created ON refunds (created_at);

-- First write wins: the UNIQUE scope makes a concurrent second request with
-- the same key wait for, then lose to, the first. The stored response is
-- replayed byte for byte until `expires_at`.
CREATE TABLE idempotency_keys (
    requester       TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    CONSTRAINT idempotency_keys_scope UNIQUE (requester, endpoint, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- An approval token executes once: its jti is recorded here on use.
CREATE TABLE refund_approval_jtis (
    jti        TEXT NOT NULL,
    refund_id  TEXT NOT NULL REFERENCES refunds(id),
    client_id  TEXT NOT NULL,
    used_at    BIGINT NOT NULL,
    CONSTRAINT refund_approval_jtis_jti UNIQUE (jti)
);
