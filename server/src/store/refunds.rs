//! SQL for refunds, their idempotency keys and spent approval-token ids.
//! The status column is written only from a [`StatusChange`] made by the
//! state machine, and every update is a compare-and-set on the old status.

use super::{Backend, Store, StoreError, StoreResult, Tx};
use crate::refunds::Refund;
use crate::refunds::state::{Status, StatusChange};

const SELECT: &str = "SELECT r.id, r.status, r.payment_id, r.amount_minor, r.currency, r.reason, \
     r.ticket_id, r.requested_by, ru.username AS requested_by_username, r.four_eyes, \
     r.threshold_minor, r.approved_by, au.username AS approved_by_username, r.approved_at, \
     r.rejected_by, r.cancelled_by, r.decision_reason, r.approval_jti, r.approval_expires_at, \
     r.executed_by, r.executed_at, r.created_at, r.updated_at, r.expires_at \
     FROM refunds r JOIN users ru ON ru.id = r.requested_by \
     LEFT JOIN users au ON au.id = r.approved_by";

#[derive(sqlx::FromRow)]
struct RefundRow {
    id: String,
    status: String,
    payment_id: String,
    amount_minor: i64,
    currency: String,
    reason: String,
    ticket_id: Option<String>,
    requested_by: String,
    requested_by_username: String,
    four_eyes: i64,
    threshold_minor: i64,
    approved_by: Option<String>,
    approved_by_username: Option<String>,
    approved_at: Option<i64>,
    rejected_by: Option<String>,
    cancelled_by: Option<String>,
    decision_reason: Option<String>,
    approval_jti: Option<String>,
    approval_expires_at: Option<i64>,
    executed_by: Option<String>,
    executed_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
}

impl TryFrom<RefundRow> for Refund {
    type Error = StoreError;

    fn try_from(r: RefundRow) -> Result<Self, StoreError> {
        let status = Status::parse(&r.status).ok_or_else(|| {
            StoreError::Corrupt(format!("refund {} has unknown status {:?}", r.id, r.status))
        })?;
        Ok(Refund {
            id: r.id,
            status,
            payment_id: r.payment_id,
            amount_minor: r.amount_minor,
            currency: r.currency,
            reason: r.reason,
            ticket_id: r.ticket_id,
            requested_by: r.requested_by,
            requested_by_username: r.requested_by_username,
            four_eyes: r.four_eyes != 0,
            threshold_minor: r.threshold_minor,
            approved_by: r.approved_by,
            approved_by_username: r.approved_by_username,
            approved_at: r.approved_at,
            rejected_by: r.rejected_by,
            cancelled_by: r.cancelled_by,
            decision_reason: r.decision_reason,
            approval_jti: r.approval_jti,
            approval_expires_at: r.approval_expires_at,
            executed_by: r.executed_by,
            executed_at: r.executed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
        })
    }
}

/// Inserts a new refund with the status [`crate::refunds::state::initial`] chose.
pub async fn insert(tx: &mut Tx, change: &StatusChange, r: &Refund) -> StoreResult<()> {
    if change.from().is_some() || change.to() != r.status {
        return Err(StoreError::Corrupt(format!(
            "refund {} inserted without its initial status change",
            r.id
        )));
    }
    sqlx::query(
        "INSERT INTO refunds (id, status, payment_id, amount_minor, currency, reason, ticket_id, \
         requested_by, four_eyes, threshold_minor, approved_by, approved_at, approval_jti, \
         approval_expires_at, created_at, updated_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&r.id)
    .bind(change.to().as_str())
    .bind(&r.payment_id)
    .bind(r.amount_minor)
    .bind(&r.currency)
    .bind(&r.reason)
    .bind(&r.ticket_id)
    .bind(&r.requested_by)
    .bind(i64::from(r.four_eyes))
    .bind(r.threshold_minor)
    .bind(&r.approved_by)
    .bind(r.approved_at)
    .bind(&r.approval_jti)
    .bind(r.approval_expires_at)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(r.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes `after` over the refund, but only if it is still in the status
/// the change starts from; false when it was not (a concurrent change).
pub async fn apply(tx: &mut Tx, change: &StatusChange, after: &Refund) -> StoreResult<bool> {
    let Some(from) = change.from() else {
        return Err(StoreError::Corrupt(format!(
            "refund {}: an initial status cannot update a stored refund",
            after.id
        )));
    };
    if change.to() != after.status {
        return Err(StoreError::Corrupt(format!(
            "refund {}: status {} does not match the checked change to {}",
            after.id,
            after.status,
            change.to()
        )));
    }
    let done = sqlx::query(
        "UPDATE refunds SET status = $1, approved_by = $2, approved_at = $3, rejected_by = $4, \
         cancelled_by = $5, decision_reason = $6, approval_jti = $7, approval_expires_at = $8, \
         executed_by = $9, executed_at = $10, updated_at = $11 \
         WHERE id = $12 AND status = $13",
    )
    .bind(change.to().as_str())
    .bind(&after.approved_by)
    .bind(after.approved_at)
    .bind(&after.rejected_by)
    .bind(&after.cancelled_by)
    .bind(&after.decision_reason)
    .bind(&after.approval_jti)
    .bind(after.approval_expires_at)
    .bind(&after.executed_by)
    .bind(after.executed_at)
    .bind(after.updated_at)
    .bind(&after.id)
    .bind(from.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find(store: &Store, id: &str) -> StoreResult<Option<Refund>> {
    let sql = format!("{SELECT} WHERE r.id = $1");
    let row: Option<RefundRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.reader())
        .await?;
    row.map(Refund::try_from).transpose()
}

/// Row-locked read for read-modify-write: PostgreSQL `FOR UPDATE OF r`
/// (the joined user rows stay unlocked); SQLite's IMMEDIATE transaction
/// already holds the write lock.
pub async fn find_for_update(store: &Store, tx: &mut Tx, id: &str) -> StoreResult<Option<Refund>> {
    let lock = match store.backend() {
        Backend::Postgres => " FOR UPDATE OF r",
        Backend::Sqlite => "",
    };
    let sql = format!("{SELECT} WHERE r.id = $1{lock}");
    let row: Option<RefundRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(Refund::try_from).transpose()
}

/// Newest first, optionally only one status.
pub async fn list(
    store: &Store,
    status: Option<Status>,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<Refund>> {
    let sql = format!(
        "{SELECT} WHERE ($1 IS NULL OR r.status = $1) \
         ORDER BY r.created_at DESC, r.id LIMIT $2 OFFSET $3"
    );
    let rows: Vec<RefundRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(status.map(Status::as_str))
        .bind(limit)
        .bind(offset)
        .fetch_all(store.reader())
        .await?;
    rows.into_iter().map(Refund::try_from).collect()
}

/// Ids of pending refunds whose approval window has closed.
pub async fn due_for_expiry(store: &Store, now: i64, limit: i64) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM refunds WHERE status = $1 AND expires_at <= $2 ORDER BY expires_at LIMIT $3",
    )
    .bind(Status::PendingApproval.as_str())
    .bind(now)
    .bind(limit)
    .fetch_all(store.reader())
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Records that an approval token was used; false when its jti was
/// already spent (the UNIQUE constraint decides, also across replicas).
pub async fn spend_approval_jti(
    tx: &mut Tx,
    jti: &str,
    refund_id: &str,
    client_id: &str,
    now: i64,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO refund_approval_jtis (jti, refund_id, client_id, used_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(refund_id)
    .bind(client_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ---- idempotency keys -----------------------------------------------------

/// One stored idempotent response.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub requester: String,
    pub endpoint: String,
    pub idem_key: String,
    pub request_hash: String,
    pub response_status: i64,
    pub response_body: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Drops this one key if it has expired, so it can be used afresh.
pub async fn drop_expired_key(
    tx: &mut Tx,
    requester: &str,
    endpoint: &str,
    key: &str,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys \
         WHERE requester = $1 AND endpoint = $2 AND idem_key = $3 AND expires_at <= $4",
    )
    .bind(requester)
    .bind(endpoint)
    .bind(key)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// First write wins: false when the key is already taken in this scope.
/// On PostgreSQL a concurrent insert of the same key waits for the other
/// transaction and then loses (or wins, if that one rolled back).
pub async fn claim_key(tx: &mut Tx, r: &IdempotencyRecord) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (requester, endpoint, idem_key, request_hash, \
         response_status, response_body, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (requester, endpoint, idem_key) DO NOTHING",
    )
    .bind(&r.requester)
    .bind(&r.endpoint)
    .bind(&r.idem_key)
    .bind(&r.request_hash)
    .bind(r.response_status)
    .bind(&r.response_body)
    .bind(r.created_at)
    .bind(r.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The live stored response for a key, if any.
pub async fn find_key(
    store: &Store,
    requester: &str,
    endpoint: &str,
    key: &str,
    now: i64,
) -> StoreResult<Option<IdempotencyRecord>> {
    Ok(sqlx::query_as(
        "SELECT requester, endpoint, idem_key, request_hash, response_status, response_body, \
         created_at, expires_at FROM idempotency_keys \
         WHERE requester = $1 AND endpoint = $2 AND idem_key = $3 AND expires_at > $4",
    )
    .bind(requester)
    .bind(endpoint)
    .bind(key)
    .bind(now)
    .fetch_optional(store.reader())
    .await?)
}

/// Deletes keys past their retention; returns how many.
pub async fn purge_expired_keys(store: &Store, now: i64) -> StoreResult<u64> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
        .bind(now)
        .execute(store.writer())
        .await?;
    Ok(done.rows_affected())
}
