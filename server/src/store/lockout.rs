//! SQL for failure counters and lockouts (`auth_failures`): subjects
//! `login:<normalised username>` (passwords) and `mfa:<user id>`
//! (second-factor codes). See `security::lockout`.

use super::{Store, StoreResult, Tx};

/// `(failures, locked_until)` of a subject.
pub async fn get(store: &Store, subject: &str) -> StoreResult<Option<(i64, i64)>> {
    Ok(
        sqlx::query_as("SELECT failures, locked_until FROM auth_failures WHERE subject = $1")
            .bind(subject)
            .fetch_optional(store.reader())
            .await?,
    )
}

/// The same, read inside a transaction.
pub async fn get_in(tx: &mut Tx, subject: &str) -> StoreResult<Option<(i64, i64)>> {
    Ok(
        sqlx::query_as("SELECT failures, locked_until FROM auth_failures WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// Counts one failure atomically unless the subject is locked at `now`;
/// returns the new count, or `None` (nothing counted) while locked. A
/// subject whose last failure is older than `reset_before` starts again at 1.
pub async fn count(
    tx: &mut Tx,
    subject: &str,
    now: i64,
    reset_before: i64,
) -> StoreResult<Option<i64>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO auth_failures (subject, failures, locked_until, updated_at) VALUES ($1, 1, 0, $2) \
         ON CONFLICT (subject) DO UPDATE SET \
           failures = CASE WHEN auth_failures.updated_at < $3 THEN 1 ELSE auth_failures.failures + 1 END, \
           updated_at = $2 \
         WHERE auth_failures.locked_until <= $2 \
         RETURNING failures",
    )
    .bind(subject)
    .bind(now)
    .bind(reset_before)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(n,)| n))
}

/// Locks the subject until `until` if it still has `failures` failures
/// (a success in between deleted the row); true if it did.
pub async fn lock(tx: &mut Tx, subject: &str, failures: i64, until: i64) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE auth_failures SET locked_until = $1 WHERE subject = $2 AND failures = $3",
    )
    .bind(until)
    .bind(subject)
    .bind(failures)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets the subject's failures (after a success).
pub async fn clear(store: &Store, subject: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM auth_failures WHERE subject = $1")
        .bind(subject)
        .execute(store.writer())
        .await?;
    Ok(())
}

/// Deletes counters that are not locked and saw no failure since
/// `reset_before` (they would start from zero anyway).
pub async fn purge(store: &Store, now: i64, reset_before: i64) -> StoreResult<u64> {
    let done =
        sqlx::query("DELETE FROM auth_failures WHERE updated_at < $1 AND locked_until <= $2")
            .bind(reset_before)
            .bind(now)
            .execute(store.writer())
            .await?;
    Ok(done.rows_affected())
}
