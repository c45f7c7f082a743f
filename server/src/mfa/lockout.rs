//! Exponential lockout for second-factor codes (TOTP, recovery codes,
//! security keys): subject `mfa:<user id>`, policy `rate_limits.code_lockout_*`
//! (5 wrong answers, then 30 s, doubling, capped at 1 h). A thin layer over
//! the one lockout implementation shared with passwords,
//! [`crate::security::lockout`]: the counter lives in the database, so
//! restarting the server or starting a new login does not reset it; only a
//! success does.

use crate::app::AppState;
use crate::security::lockout::{self, Policy};
use crate::store::StoreError;

/// `Err(seconds)` while locked.
pub async fn check(state: &AppState, subject: &str) -> Result<Result<(), i64>, StoreError> {
    Ok(match lockout::locked_for(state, subject).await? {
        Some(secs) => Err(secs),
        None => Ok(()),
    })
}

/// Counts a failure; returns the lock length in seconds if the subject is
/// (now) locked. A lock is audited as `security.lockout`.
pub async fn fail(state: &AppState, subject: &str) -> Result<Option<i64>, StoreError> {
    let user_id = subject.strip_prefix("mfa:").unwrap_or(subject);
    lockout::record_failure(
        state,
        &Policy::codes(state),
        subject,
        &format!("user:{user_id}"),
        &lockout::context(None, None),
    )
    .await
}

pub async fn succeed(state: &AppState, subject: &str) -> Result<(), StoreError> {
    lockout::clear(state, subject).await
}
