use super::{Backend, Store, StoreResult, Tx};
use crate::outbox::OutboxMessage;

const COLUMNS: &str = "id, kind, target_url, client_id, payload, created_at, next_attempt_at, attempts, \
     last_error, delivered_at, failed_at";

pub async fn insert(tx: &mut Tx, m: &OutboxMessage) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO outbox (id, kind, target_url, client_id, payload, created_at, next_attempt_at, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
    )
    .bind(&m.id)
    .bind(&m.kind)
    .bind(&m.target_url)
    .bind(&m.client_id)
    .bind(&m.payload)
    .bind(m.created_at)
    .bind(m.next_attempt_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Claims up to `limit` due messages by pushing their next attempt `lease`
/// seconds out, so no other replica sends them meanwhile (a crash mid-send
/// means a retry after the lease: at-least-once delivery).
pub async fn claim_due(
    store: &Store,
    now: i64,
    lease: i64,
    limit: i64,
) -> StoreResult<Vec<OutboxMessage>> {
    let mut tx = store.begin().await?;
    let skip = match store.backend() {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL \
         AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2{skip}"
    );
    let rows: Vec<OutboxMessage> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    for r in &rows {
        sqlx::query("UPDATE outbox SET next_attempt_at = $1 WHERE id = $2")
            .bind(now + lease)
            .bind(&r.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows)
}

pub async fn mark_delivered(store: &Store, id: &str, now: i64, attempts: i64) -> StoreResult<()> {
    sqlx::query(
        "UPDATE outbox SET delivered_at = $1, attempts = $2, last_error = NULL WHERE id = $3",
    )
    .bind(now)
    .bind(attempts)
    .bind(id)
    .execute(store.writer())
    .await?;
    Ok(())
}

pub async fn mark_retry(
    store: &Store,
    id: &str,
    attempts: i64,
    next: i64,
    error: &str,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4",
    )
    .bind(attempts)
    .bind(next)
    .bind(error)
    .bind(id)
    .execute(store.writer())
    .await?;
    Ok(())
}

pub async fn mark_failed(
    tx: &mut Tx,
    id: &str,
    now: i64,
    attempts: i64,
    error: &str,
) -> StoreResult<()> {
    sqlx::query("UPDATE outbox SET failed_at = $1, attempts = $2, last_error = $3 WHERE id = $4")
        .bind(now)
        .bind(attempts)
        .bind(error)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Counts for metrics: `(pending, delivered, failed)`.
pub async fn counts(store: &Store) -> StoreResult<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT \
           COALESCE(SUM(CASE WHEN delivered_at IS NULL AND failed_at IS NULL THEN 1 ELSE 0 END), 0), \
           COALESCE(SUM(CASE WHEN delivered_at IS NOT NULL THEN 1 ELSE 0 END), 0), \
           COALESCE(SUM(CASE WHEN failed_at IS NOT NULL THEN 1 ELSE 0 END), 0) \
         FROM outbox",
    )
    .fetch_one(store.reader())
    .await?)
}
