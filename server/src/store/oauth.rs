//! Pending authorization requests, consents and authorization codes.

use super::tokens::{PURGE_BATCH, purge_batch};
use super::{Store, StoreResult, Tx};
use crate::oauth::authorize::CodeRecord;

pub async fn insert_request(
    store: &Store,
    id: &str,
    client_id: &str,
    params: &str,
    now: i64,
    expires_at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO authorization_requests (id, client_id, params, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(client_id)
    .bind(params)
    .bind(now)
    .bind(expires_at)
    .execute(store.writer())
    .await?;
    Ok(())
}

/// `(params JSON, expires_at, completed_at)`.
pub async fn find_request(
    store: &Store,
    id: &str,
) -> StoreResult<Option<(String, i64, Option<i64>)>> {
    Ok(sqlx::query_as(
        "SELECT params, expires_at, completed_at FROM authorization_requests WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.reader())
    .await?)
}

pub async fn update_request_params(store: &Store, id: &str, params: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE authorization_requests SET params = $1 WHERE id = $2 AND completed_at IS NULL",
    )
    .bind(params)
    .bind(id)
    .execute(store.writer())
    .await?;
    Ok(())
}

/// Marks a request finished; false when it already was (a replayed resume).
pub async fn complete_request(tx: &mut Tx, id: &str, now: i64) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE authorization_requests SET completed_at = $1 WHERE id = $2 AND completed_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find_consent(
    store: &Store,
    user_id: &str,
    client_id: &str,
) -> StoreResult<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT scopes FROM consents WHERE user_id = $1 AND client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .fetch_optional(store.reader())
            .await?;
    Ok(row.map(|(s,)| s))
}

pub async fn upsert_consent(
    tx: &mut Tx,
    user_id: &str,
    client_id: &str,
    scopes: &str,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO consents (user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, client_id) DO UPDATE SET scopes = excluded.scopes, granted_at = excluded.granted_at",
    )
    .bind(user_id)
    .bind(client_id)
    .bind(scopes)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `(client_id, scopes, granted_at)` for every consent the user gave.
pub async fn list_consents(
    store: &Store,
    user_id: &str,
) -> StoreResult<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT client_id, scopes, granted_at FROM consents WHERE user_id = $1 ORDER BY client_id",
    )
    .bind(user_id)
    .fetch_all(store.reader())
    .await?)
}

pub async fn delete_consent(tx: &mut Tx, user_id: &str, client_id: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM consents WHERE user_id = $1 AND client_id = $2")
        .bind(user_id)
        .bind(client_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}

const CODE_COLUMNS: &str = "code_hash, client_id, user_id, session_id, redirect_uri, scope, nonce, \
     code_challenge, auth_time, amr, acr, created_at, expires_at, used_at, family_id";

pub async fn insert_code(tx: &mut Tx, c: &CodeRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO authorization_codes (code_hash, client_id, user_id, session_id, redirect_uri, scope, \
         nonce, code_challenge, auth_time, amr, acr, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&c.code_hash)
    .bind(&c.client_id)
    .bind(&c.user_id)
    .bind(&c.session_id)
    .bind(&c.redirect_uri)
    .bind(&c.scope)
    .bind(&c.nonce)
    .bind(&c.code_challenge)
    .bind(c.auth_time)
    .bind(&c.amr)
    .bind(&c.acr)
    .bind(c.created_at)
    .bind(c.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn find_code_for_update(
    store: &Store,
    tx: &mut Tx,
    code_hash: &str,
) -> StoreResult<Option<CodeRecord>> {
    let lock = super::users::for_update(store);
    let sql = format!("SELECT {CODE_COLUMNS} FROM authorization_codes WHERE code_hash = $1{lock}");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(code_hash)
        .fetch_optional(&mut **tx)
        .await?)
}

/// Redeems a code once; false when it was already used.
pub async fn mark_code_used(
    tx: &mut Tx,
    code_hash: &str,
    now: i64,
    family_id: &str,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE authorization_codes SET used_at = $1, family_id = $2 WHERE code_hash = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .bind(code_hash)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes up to [`PURGE_BATCH`] authorization requests that
/// expired before `cutoff` (each lives minutes; `/authorize` creates one for
/// anyone who asks, so they must not pile up).
pub async fn purge_expired_requests(store: &Store, cutoff: i64) -> StoreResult<u64> {
    let sql = format!(
        "DELETE FROM authorization_requests WHERE id IN (SELECT id FROM authorization_requests \
         WHERE expires_at < $1 LIMIT {PURGE_BATCH})"
    );
    purge_batch(store, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cutoff)).await
}

/// Deletes up to [`PURGE_BATCH`] codes never redeemed that
/// expired before `cutoff`. A redeemed code belongs to its token family and
/// goes with it ([`super::tokens::purge_dead_families`]), so that replaying
/// it is caught for as long as the family lives.
pub async fn purge_expired_codes(store: &Store, cutoff: i64) -> StoreResult<u64> {
    let sql = format!(
        "DELETE FROM authorization_codes WHERE code_hash IN (SELECT code_hash FROM authorization_codes \
         WHERE family_id IS NULL AND expires_at < $1 LIMIT {PURGE_BATCH})"
    );
    purge_batch(store, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cutoff)).await
}
