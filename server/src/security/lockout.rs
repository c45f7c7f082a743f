//! Exponential lockout for guessable secrets: passwords (subject
//! `login:<normalised username>`, for known and unknown names alike) and
//! second-factor codes (`mfa:<user id>`, through `mfa::lockout`). After
//! `after` failures the subject is locked for `base`, and every further
//! failure once the lock is over locks it for twice as long, up to `max`
//! (`[rate_limits]` `login_lockout_*`, `code_lockout_*`). The counter lives
//! in the database (`auth_failures`), so a restart, another replica or a
//! new browser session does not reset it; only a success does, or `reset`
//! without any failure.
//!
//! Every lock writes a `security.lockout` audit row (target `user:<id>`, or
//! `username:<name>` for a name no account has; after `{"subject",
//! "failures", "locked_until"}`) in the transaction that sets it.

use std::sync::atomic::Ordering;

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::config::LockoutConfig;
use crate::store::StoreError;

/// One lockout policy in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub after: i64,
    pub base_secs: i64,
    pub max_secs: i64,
    pub reset_secs: i64,
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Policy {
    pub fn from_config(c: &LockoutConfig) -> Policy {
        Policy {
            after: c.after.max(1),
            base_secs: secs(c.base).max(1),
            max_secs: secs(c.max).max(1),
            reset_secs: secs(c.reset).max(1),
        }
    }

    /// Passwords (`rate_limits.login_lockout_*`).
    pub fn login(state: &AppState) -> Policy {
        Policy::from_config(&state.config.rate_limits.login_lockout)
    }

    /// Second-factor codes (`rate_limits.code_lockout_*`).
    pub fn codes(state: &AppState) -> Policy {
        Policy::from_config(&state.config.rate_limits.code_lockout)
    }

    /// How long `failures` failures lock for: nothing below `after`, then
    /// `base`, doubling per failure, capped at `max`.
    pub fn lock_secs(&self, failures: i64) -> Option<i64> {
        if failures < self.after {
            return None;
        }
        let doublings = u32::try_from((failures - self.after).clamp(0, 40)).unwrap_or(40);
        let factor = 1i64.checked_shl(doublings).unwrap_or(i64::MAX);
        Some(
            self.base_secs
                .saturating_mul(factor)
                .min(self.max_secs.max(self.base_secs)),
        )
    }
}

/// Seconds the subject is still locked for, if it is.
pub async fn locked_for(state: &AppState, subject: &str) -> Result<Option<i64>, StoreError> {
    let now = state.clock.now();
    Ok(crate::store::lockout::get(&state.store, subject)
        .await?
        .and_then(|(_, until)| (until > now).then_some(until - now)))
}

/// Forgets the subject's failures: call after a success.
pub async fn clear(state: &AppState, subject: &str) -> Result<(), StoreError> {
    crate::store::lockout::clear(&state.store, subject).await
}

/// The answer to [`admit`].
#[derive(Debug)]
pub enum Admission {
    /// Locked: refuse without checking the secret.
    Locked { retry_after: i64 },
    /// Go ahead; report the outcome with [`Attempt::failed`] or [`clear`].
    Admitted(Attempt),
}

/// An admitted attempt, already counted as a failure (so that attempts
/// racing in parallel cannot get past the limit before any of them fails).
#[derive(Debug)]
pub struct Attempt {
    pub subject: String,
    pub failures: i64,
    /// The lock this attempt set, if it fails: `(seconds, until)`.
    pub lock: Option<(i64, i64)>,
}

/// Before checking a secret: refuses while locked; otherwise counts the
/// attempt as a failure up front and, if that reaches the threshold, locks
/// provisionally (lifted by [`clear`] if the secret turns out right).
pub async fn admit(
    state: &AppState,
    policy: &Policy,
    subject: &str,
) -> Result<Admission, StoreError> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let Some(failures) =
        crate::store::lockout::count(&mut tx, subject, now, now - policy.reset_secs).await?
    else {
        let until = crate::store::lockout::get_in(&mut tx, subject)
            .await?
            .map_or(now + 1, |(_, until)| until);
        tx.rollback().await?;
        return Ok(Admission::Locked {
            retry_after: (until - now).max(1),
        });
    };
    let lock = policy.lock_secs(failures).map(|s| (s, now + s));
    if let Some((_, until)) = lock {
        crate::store::lockout::lock(&mut tx, subject, failures, until).await?;
    }
    tx.commit().await?;
    Ok(Admission::Admitted(Attempt {
        subject: subject.to_string(),
        failures,
        lock,
    }))
}

impl Attempt {
    /// The secret was wrong. If this attempt locks the subject, the lock is
    /// confirmed and audited in one transaction; returns its length.
    pub async fn failed(
        &self,
        state: &AppState,
        target: &str,
        ctx: &AuditContext,
    ) -> Result<Option<i64>, StoreError> {
        let Some((secs, until)) = self.lock else {
            return Ok(None);
        };
        let mut tx = state.store.begin().await?;
        // A success in between cleared the counter: nothing to confirm.
        if !crate::store::lockout::lock(&mut tx, &self.subject, self.failures, until).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        audit_lock(
            state,
            &mut tx,
            ctx,
            target,
            &self.subject,
            self.failures,
            until,
        )
        .await?;
        tx.commit().await?;
        locked(state, &self.subject, self.failures, secs);
        Ok(Some(secs))
    }
}

/// After a wrong secret was presented (codes: the check runs first): counts
/// the failure and, if it reaches the threshold, locks and audits in the
/// same transaction. Returns the seconds the subject is locked for, if it
/// is (also when it already was).
pub async fn record_failure(
    state: &AppState,
    policy: &Policy,
    subject: &str,
    target: &str,
    ctx: &AuditContext,
) -> Result<Option<i64>, StoreError> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let Some(failures) =
        crate::store::lockout::count(&mut tx, subject, now, now - policy.reset_secs).await?
    else {
        // Locked meanwhile by a parallel failure.
        let until = crate::store::lockout::get_in(&mut tx, subject)
            .await?
            .map_or(now + 1, |(_, until)| until);
        tx.rollback().await?;
        return Ok(Some((until - now).max(1)));
    };
    let Some(secs) = policy.lock_secs(failures) else {
        tx.commit().await?;
        return Ok(None);
    };
    let until = now + secs;
    crate::store::lockout::lock(&mut tx, subject, failures, until).await?;
    audit_lock(state, &mut tx, ctx, target, subject, failures, until).await?;
    tx.commit().await?;
    locked(state, subject, failures, secs);
    Ok(Some(secs))
}

async fn audit_lock(
    state: &AppState,
    tx: &mut crate::store::Tx,
    ctx: &AuditContext,
    target: &str,
    subject: &str,
    failures: i64,
    until: i64,
) -> Result<(), StoreError> {
    audit::record(
        &state.store,
        tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new("security.lockout", target).after(serde_json::json!({
            "subject": subject,
            "failures": failures,
            "locked_until": until,
        })),
    )
    .await
    .map(|_| ())
}

fn locked(state: &AppState, subject: &str, failures: i64, secs: i64) {
    state.metrics.lockouts.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(event = "security.lockout", subject = %subject, failures, seconds = secs, "locked out after repeated failures");
}

/// The audit context of a lock decided while serving a request.
pub fn context(request_id: Option<String>, ip: Option<String>) -> AuditContext {
    let mut ctx = AuditContext::system("lockout");
    ctx.request_id = request_id;
    ctx.ip = ip;
    ctx
}

/// Deletes stale counters now and then (`lockout_reset` without failures).
pub async fn purge_periodically(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        tick.tick().await;
        let now = state.clock.now();
        let reset = Policy::login(&state)
            .reset_secs
            .max(Policy::codes(&state).reset_secs);
        match crate::store::lockout::purge(&state.store, now, now - reset).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged stale lockout counters"),
            Err(e) => tracing::warn!(error = %e, "lockout purge failed"),
        }
    }
}
