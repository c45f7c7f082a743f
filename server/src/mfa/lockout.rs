//! Exponential lockout for guessable secrets (second-factor codes). The
//! counter lives in the database, so restarting the server or starting a
//! new login does not reset it; only a success does.

use crate::app::AppState;
use crate::store::StoreError;

/// Wrong attempts allowed before the first lock.
pub const FREE_ATTEMPTS: i64 = 5;
const BASE_LOCK_SECS: i64 = 30;
const MAX_LOCK_SECS: i64 = 3600;

/// `Err(seconds)` while locked.
pub async fn check(state: &AppState, subject: &str) -> Result<Result<(), i64>, StoreError> {
    let now = state.clock.now();
    Ok(
        match crate::store::mfa::failures(&state.store, subject).await? {
            Some((_, until)) if until > now => Err(until - now),
            _ => Ok(()),
        },
    )
}

/// Counts a failure; returns the lock length in seconds if this one locks.
pub async fn fail(state: &AppState, subject: &str) -> Result<Option<i64>, StoreError> {
    let now = state.clock.now();
    let n = crate::store::mfa::add_failure(&state.store, subject, now).await?;
    if n < FREE_ATTEMPTS {
        return Ok(None);
    }
    let exp = u32::try_from((n - FREE_ATTEMPTS).clamp(0, 16)).unwrap_or(16);
    let secs = BASE_LOCK_SECS.saturating_mul(1 << exp).min(MAX_LOCK_SECS);
    crate::store::mfa::set_locked_until(&state.store, subject, now + secs).await?;
    tracing::warn!(event = "security.lockout", subject = %subject, failures = n, seconds = secs, "locked out after repeated failures");
    Ok(Some(secs))
}

pub async fn succeed(state: &AppState, subject: &str) -> Result<(), StoreError> {
    crate::store::mfa::clear_failures(&state.store, subject).await
}
