//! Deletes what can no longer be used: access tokens past expiry, the
//! tokens and authorization code of token families that are revoked or
//! have no valid token left, codes never redeemed, and pending
//! authorization requests, and expired login challenges (the second-factor
//! step after a password) — each kept `tokens.purge_after` beyond the
//! instant it died, for investigation. Without it every issued token stays
//! a row forever, and `/authorize` lets anyone add rows. Family rows stay
//! (marked purged): like the sessions they belong to, they are the record
//! of which clients a session gave tokens to.
//!
//! Deleting changes no answer: introspection of an expired, revoked or
//! unknown token is the same `{"active":false}`, revoking it the same
//! 200, and a family is only purged once none of its refresh tokens could
//! be refreshed, so reuse of a rotated token is still caught while it
//! matters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::app::AppState;
use crate::store::{Store, StoreResult};

/// What one [`purge`] removed, by kind (`families`: families emptied).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub families: u64,
    pub access_tokens: u64,
    pub codes: u64,
    pub requests: u64,
    pub login_challenges: u64,
}

impl Purged {
    pub fn total(&self) -> u64 {
        self.families + self.access_tokens + self.codes + self.requests + self.login_challenges
    }
}

/// Deletes everything that was dead before `cutoff` (unix seconds; `now`
/// marks the families emptied), in
/// batches of [`crate::store::tokens::PURGE_BATCH`] rows; between batches
/// it pauses so that token issuance, which shares SQLite's write lock, is
/// never held up for long.
pub async fn purge(store: &Store, cutoff: i64, now: i64) -> StoreResult<Purged> {
    use crate::store::{mfa, oauth, tokens};
    // Families first: they take their own access tokens and code with them.
    Ok(Purged {
        families: drain(|| tokens::purge_dead_families(store, cutoff, now)).await?,
        access_tokens: drain(|| tokens::purge_expired_access(store, cutoff)).await?,
        codes: drain(|| oauth::purge_expired_codes(store, cutoff)).await?,
        requests: drain(|| oauth::purge_expired_requests(store, cutoff)).await?,
        login_challenges: drain(|| mfa::purge_expired_login_challenges(store, cutoff)).await?,
    })
}

/// Runs `batch` until it removes less than a full batch; the sum.
async fn drain<F, Fut>(mut batch: F) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let full = u64::try_from(crate::store::tokens::PURGE_BATCH).unwrap_or(u64::MAX);
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < full {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The background job: a [`purge`] every `tokens.purge_interval`.
pub async fn purge_periodically(state: AppState) {
    let keep = i64::try_from(state.config.tokens.purge_after.as_secs()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(state.config.tokens.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = state.clock.now();
        match purge(&state.store, now.saturating_sub(keep), now).await {
            Ok(p) => {
                state
                    .metrics
                    .tokens_purged
                    .fetch_add(p.total(), Ordering::Relaxed);
                if p.total() > 0 {
                    tracing::info!(
                        families = p.families,
                        access_tokens = p.access_tokens,
                        codes = p.codes,
                        requests = p.requests,
                        login_challenges = p.login_challenges,
                        "purged expired tokens and requests"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "token purge failed; retrying next interval"),
        }
    }
}
