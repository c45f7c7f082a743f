//! SQL for the append-only audit log. There is deliberately no UPDATE or
//! DELETE here; the database refuses them too (triggers on both backends).

use super::{Backend, Store, StoreResult, Tx};
use crate::audit::AuditRecord;

const COLUMNS: &str = "seq, at_ms, actor_kind, actor_id, actor_session, action, target, reason, \
     ticket_id, before_json, after_json, request_id, ip, prev_hash, hash";

/// Locks the log against other appenders until `tx` ends and returns the
/// current head `(seq, hash)`. Readers are not blocked.
pub async fn lock_head(store: &Store, tx: &mut Tx) -> StoreResult<Option<(i64, String)>> {
    if store.backend() == Backend::Postgres {
        // SHARE ROW EXCLUSIVE conflicts with itself and with INSERT, not with SELECT.
        sqlx::query("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut **tx)
            .await?;
    }
    // SQLite: the caller's transaction began IMMEDIATE, so it already holds
    // the database's single write lock.
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(head)
}

pub async fn insert(tx: &mut Tx, r: &AuditRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor_kind, actor_id, actor_session, action, target, \
         reason, ticket_id, before_json, after_json, request_id, ip, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(r.seq)
    .bind(r.at_ms)
    .bind(&r.actor_kind)
    .bind(&r.actor_id)
    .bind(&r.actor_session)
    .bind(&r.action)
    .bind(&r.target)
    .bind(&r.reason)
    .bind(&r.ticket_id)
    .bind(&r.before_json)
    .bind(&r.after_json)
    .bind(&r.request_id)
    .bind(&r.ip)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rows with `seq > after_seq` in chain order, at most `limit`.
pub async fn page(store: &Store, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
    let rows = sqlx::query_as::<_, AuditRecord>(sqlx::AssertSqlSafe(sql))
        .bind(after_seq)
        .bind(limit)
        .fetch_all(store.reader())
        .await?;
    Ok(rows)
}

/// Rows matching `f` (see [`crate::audit::AuditFilter`] for what each field
/// matches) with `seq > after_seq`: newest first for the staff listing,
/// chain order for export. One SQL text; unused filters bind NULL.
pub async fn search(
    store: &Store,
    f: &crate::audit::AuditFilter,
    after_seq: i64,
    newest_first: bool,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<AuditRecord>> {
    let (action, action_prefix) = f.action_match();
    let (target, target_prefix) = f.target_match();
    let len = |p: &Option<String>| p.as_ref().map(|p| p.chars().count() as i64);
    let order = if newest_first { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 \
           AND ($2 IS NULL OR actor_id = $2 OR actor_id IN (SELECT id FROM users WHERE username = lower($2))) \
           AND ($3 IS NULL OR action = $3) \
           AND ($4 IS NULL OR substr(action, 1, CAST($5 AS INTEGER)) = $4) \
           AND ($6 IS NULL OR target = $6) \
           AND ($7 IS NULL OR substr(target, 1, CAST($8 AS INTEGER)) = $7) \
           AND ($9 IS NULL OR at_ms >= $9) \
           AND ($10 IS NULL OR at_ms <= $10) \
         ORDER BY seq {order} LIMIT $11 OFFSET $12"
    );
    let rows = sqlx::query_as::<_, AuditRecord>(sqlx::AssertSqlSafe(sql))
        .bind(after_seq)
        .bind(f.actor.clone())
        .bind(action)
        .bind(action_prefix.clone())
        .bind(len(&action_prefix))
        .bind(target)
        .bind(target_prefix.clone())
        .bind(len(&target_prefix))
        .bind(f.from_ms)
        .bind(f.to_ms)
        .bind(limit)
        .bind(offset)
        .fetch_all(store.reader())
        .await?;
    Ok(rows)
}
