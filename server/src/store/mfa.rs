//! SQL for second factors and login challenges (lockout counters:
//! `store::lockout`).

use super::tokens::{PURGE_BATCH, purge_batch};
use super::{Store, StoreResult, Tx};

/// `(secret_base32, confirmed_at, last_used_step)`.
pub type TotpRow = (String, Option<i64>, i64);

pub async fn totp(store: &Store, user_id: &str) -> StoreResult<Option<TotpRow>> {
    Ok(sqlx::query_as(
        "SELECT secret_base32, confirmed_at, last_used_step FROM totp_credentials WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(store.reader())
    .await?)
}

/// Replaces an unconfirmed secret (a confirmed one must be removed first).
pub async fn put_unconfirmed_totp(
    tx: &mut Tx,
    user_id: &str,
    secret: &str,
    now: i64,
) -> StoreResult<bool> {
    sqlx::query("DELETE FROM totp_credentials WHERE user_id = $1 AND confirmed_at IS NULL")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    let done = sqlx::query(
        "INSERT INTO totp_credentials (user_id, secret_base32, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(secret)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a verified time step; false if that step (or a later one) was
/// already used — the code is a replay.
pub async fn use_totp_step(
    tx: &mut Tx,
    user_id: &str,
    step: i64,
    confirm_at: Option<i64>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE totp_credentials SET last_used_step = $1, confirmed_at = COALESCE(confirmed_at, $2) \
         WHERE user_id = $3 AND last_used_step < $1",
    )
    .bind(step)
    .bind(confirm_at)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_totp(tx: &mut Tx, user_id: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM totp_credentials WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn webauthn_count(store: &Store, user_id: &str) -> StoreResult<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM webauthn_credentials WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(store.reader())
            .await?;
    Ok(n)
}

pub async fn replace_recovery_codes(
    tx: &mut Tx,
    user_id: &str,
    hashes: &[String],
    now: i64,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    for h in hashes {
        sqlx::query(
            "INSERT INTO recovery_codes (code_hash, user_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(h)
        .bind(user_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Uses a recovery code once; false if unknown, someone else's, or used.
pub async fn use_recovery_code(
    tx: &mut Tx,
    user_id: &str,
    hash: &str,
    now: i64,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE recovery_codes SET used_at = $1 WHERE code_hash = $2 AND user_id = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(hash)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn recovery_codes_left(store: &Store, user_id: &str) -> StoreResult<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(store.reader())
    .await?;
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_login_challenge(
    store: &Store,
    secret_hash: &str,
    user_id: &str,
    request_id: Option<&str>,
    ip: Option<&str>,
    user_agent: Option<&str>,
    now: i64,
    expires_at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO login_challenges (secret_hash, user_id, request_id, ip, user_agent, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(secret_hash)
    .bind(user_id)
    .bind(request_id)
    .bind(ip)
    .bind(user_agent)
    .bind(now)
    .bind(expires_at)
    .execute(store.writer())
    .await?;
    Ok(())
}

/// `(user_id, request_id, ip, user_agent)` of a live challenge.
pub type LoginChallengeRow = (String, Option<String>, Option<String>, Option<String>);

pub async fn find_login_challenge(
    store: &Store,
    secret_hash: &str,
    now: i64,
) -> StoreResult<Option<LoginChallengeRow>> {
    Ok(sqlx::query_as(
        "SELECT user_id, request_id, ip, user_agent FROM login_challenges \
         WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(secret_hash)
    .bind(now)
    .fetch_optional(store.reader())
    .await?)
}

pub async fn consume_login_challenge(
    tx: &mut Tx,
    secret_hash: &str,
    now: i64,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE login_challenges SET used_at = $1 WHERE secret_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(secret_hash)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes up to [`PURGE_BATCH`] login challenges (the
/// second-factor step after a password) that expired before `cutoff`,
/// used or not: an expired one is refused either way, and a deleted one
/// is refused as unknown (`tokens::janitor`).
pub async fn purge_expired_login_challenges(store: &Store, cutoff: i64) -> StoreResult<u64> {
    let sql = format!(
        "DELETE FROM login_challenges WHERE secret_hash IN (SELECT secret_hash FROM login_challenges \
         WHERE expires_at < $1 LIMIT {PURGE_BATCH})"
    );
    purge_batch(store, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cutoff)).await
}

/// Deletes every recovery code of the user; returns how many were unused.
pub async fn delete_recovery_codes(tx: &mut Tx, user_id: &str) -> StoreResult<i64> {
    let (left,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(left)
}
