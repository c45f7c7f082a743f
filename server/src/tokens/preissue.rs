//! Client-credentials tokens stored ahead of demand.
//!
//! Under sustained load what bounds issuance is the wait for the durable
//! commit that holds each new token (one fsync per group commit,
//! bench/README.md). So when one client keeps asking for the same scope,
//! its next few tokens are minted and committed, through the same
//! group-commit writer, before anyone asks, and a request takes one that is
//! already durable. Nothing is revealed before its row is committed. A
//! crash loses only tokens nobody was given (their secrets lived only in
//! this process's memory); their rows expire like any other.
//!
//! What a client sees: `iat` up to [`MAX_AGE_MS`] before the response, and
//! `expires_in` shorter by as much. Held tokens are dropped when they get
//! older than that; when anything about their client changes (staff
//! update, secret rotation, revocation of all its tokens): locally at once,
//! on other replicas through the NOTIFY payload [`CLIENT_CHANGED`]; and
//! while the PostgreSQL listener is down.
//!
//! How many: none for a client and scope until two of its requests find
//! none within [`BURST_MS`]. Each further such miss doubles the number held
//! (up to `tokens.preissue`), and each time held tokens grow old it halves,
//! so a client that stops asking leaves few unused rows behind.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::app::AppState;
use crate::telemetry::metrics::Metrics;
use crate::tokens::{ACCESS_PREFIX, Minted, TokenGrant};

/// A held token older than this is never handed out.
pub const MAX_AGE_MS: i64 = 1000;
/// Two misses closer than this mean the client is asking faster than a
/// commit: worth holding tokens for it.
pub const BURST_MS: i64 = 100;
/// NOTIFY payload on the revocation channel for a change to a client.
pub const CLIENT_CHANGED: &str = "client";
/// The number held once a client starts bursting.
const MIN_HELD: usize = 4;
/// Clients and scopes tracked at once; beyond, the rest are served
/// directly. Bounds memory against a client cycling through scopes.
const MAX_KEYS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    client_id: String,
    scope: String,
}

/// A token whose row is committed and whose secret nobody has seen yet.
pub struct HeldToken {
    token: String,
    id: String,
    minted_ms: i64,
    expires_at: i64,
}

impl std::fmt::Debug for HeldToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldToken").field("id", &self.id).finish()
    }
}

impl HeldToken {
    fn into_minted(self, now: i64) -> Minted {
        Minted {
            access_token: self.token,
            access_id: self.id,
            expires_in: self.expires_at - now,
            refresh_token: None,
        }
    }
}

#[derive(Debug, Default)]
struct ClientPool {
    held: VecDeque<HeldToken>,
    target: usize,
    refilling: bool,
    last_miss_ms: Option<i64>,
}

/// An order to mint and store `count` tokens for one client and scope.
#[derive(Debug)]
pub struct Refill {
    key: PoolKey,
    count: usize,
    epoch: u64,
}

#[derive(Debug)]
pub struct PreIssued {
    max: usize,
    enabled: AtomicBool,
    /// Bumped by every invalidation: a refill ordered before one is
    /// discarded when it completes.
    epoch: AtomicU64,
    pools: Mutex<HashMap<PoolKey, ClientPool>>,
    metrics: Arc<Metrics>,
}

impl PreIssued {
    /// `max` tokens at most per client and scope (0: never). `enabled` is
    /// false until a replica-wide invalidation channel exists, as for the
    /// introspection cache.
    pub fn new(max: usize, enabled: bool, metrics: Arc<Metrics>) -> Self {
        PreIssued {
            max,
            enabled: AtomicBool::new(enabled),
            epoch: AtomicU64::new(0),
            pools: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// A held token for `client_id` and `scope` if one is fresh, and an
    /// order to store more if the client is bursting and none is under way.
    pub fn take(
        &self,
        client_id: &str,
        scope: &str,
        now_ms: i64,
    ) -> (Option<HeldToken>, Option<Refill>) {
        if self.max == 0 || !self.enabled.load(Ordering::SeqCst) {
            return (None, None);
        }
        let Ok(mut pools) = self.pools.lock() else {
            return (None, None);
        };
        let key = PoolKey {
            client_id: client_id.to_string(),
            scope: scope.to_string(),
        };
        if !pools.contains_key(&key) && pools.len() >= MAX_KEYS {
            pools.retain(|_, p| !p.held.is_empty() || p.refilling);
            if pools.len() >= MAX_KEYS {
                return (None, None);
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let pool = pools.entry(key.clone()).or_default();
        let mut stale = 0u64;
        while let Some(front) = pool.held.front() {
            let age = now_ms - front.minted_ms;
            if (0..MAX_AGE_MS).contains(&age) {
                break;
            }
            pool.held.pop_front();
            stale += 1;
        }
        if stale > 0 {
            pool.target /= 2;
            self.metrics
                .token_preissue_discarded
                .fetch_add(stale, Ordering::Relaxed);
        }
        let held = pool.held.pop_front();
        match held {
            Some(_) => {
                self.metrics
                    .token_preissue_hits
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if let Some(prev) = pool.last_miss_ms
                    && (0..BURST_MS).contains(&(now_ms - prev))
                {
                    pool.target = (pool.target * 2).max(MIN_HELD).min(self.max);
                }
                pool.last_miss_ms = Some(now_ms);
            }
        }
        let refill = (!pool.refilling && pool.target > 0 && pool.held.len() * 2 <= pool.target)
            .then(|| {
                pool.refilling = true;
                Refill {
                    key,
                    count: pool.target - pool.held.len(),
                    epoch,
                }
            });
        (held, refill)
    }

    /// Takes tokens stored for `refill` (committed: the caller waited for
    /// the writer), unless an invalidation came in between.
    pub fn fill(&self, refill: Refill, stored: Vec<HeldToken>) {
        let stored_count = stored.len() as u64;
        let Ok(mut pools) = self.pools.lock() else {
            return;
        };
        let current = refill.epoch == self.epoch.load(Ordering::SeqCst)
            && self.enabled.load(Ordering::SeqCst);
        match pools.get_mut(&refill.key) {
            Some(pool) if current => {
                pool.refilling = false;
                pool.held.extend(stored);
            }
            _ => {
                self.metrics
                    .token_preissue_discarded
                    .fetch_add(stored_count, Ordering::Relaxed);
            }
        }
    }

    /// Drops every held token and every refill under way (a client changed
    /// somewhere).
    pub fn invalidate(&self) {
        let Ok(mut pools) = self.pools.lock() else {
            return;
        };
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let dropped: usize = pools.values().map(|p| p.held.len()).sum();
        pools.clear();
        self.metrics
            .token_preissue_discarded
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.invalidate();
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Tokens held right now, over all clients.
    pub fn held(&self) -> usize {
        self.pools
            .lock()
            .map(|p| p.values().map(|p| p.held.len()).sum())
            .unwrap_or(0)
    }
}

/// A held token for a client-credentials `grant`, if there is one; orders
/// a refill on the side when it is due.
pub fn take(state: &AppState, grant: &TokenGrant, now_ms: i64) -> Option<Minted> {
    let (held, refill) = state.preissued.take(&grant.client_id, &grant.scope, now_ms);
    if let Some(order) = refill {
        tokio::spawn(run_refill(state.clone(), order));
    }
    held.map(|h| h.into_minted(now_ms.div_euclid(1000)))
}

/// Mints the ordered tokens, waits until the writer has committed them,
/// and hands the stored ones to the pool.
async fn run_refill(state: AppState, order: Refill) {
    let grant = TokenGrant::standalone(order.key.client_id.clone(), order.key.scope.clone());
    let now_ms = state.clock.now_ms();
    let mut held = Vec::with_capacity(order.count);
    let mut rows = Vec::with_capacity(order.count);
    for _ in 0..order.count {
        let token = crate::crypto::random_secret(ACCESS_PREFIX);
        let record = super::new_access_record(&state, &grant, None, now_ms);
        rows.push((record.clone(), crate::crypto::sha256_hex(&token)));
        held.push(HeldToken {
            token,
            id: record.id,
            minted_ms: now_ms,
            expires_at: record.expires_at,
        });
    }
    let stored = state.token_writer.insert_many(rows).await;
    let held: Vec<HeldToken> = held
        .into_iter()
        .zip(stored)
        .filter_map(|(h, ok)| ok.then_some(h))
        .collect();
    state
        .metrics
        .token_preissued
        .fetch_add(held.len() as u64, Ordering::Relaxed);
    state.preissued.fill(order, held);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn held(minted_ms: i64) -> HeldToken {
        HeldToken {
            token: format!("pct_at_{minted_ms}"),
            id: minted_ms.to_string(),
            minted_ms,
            expires_at: minted_ms / 1000 + 600,
        }
    }

    fn pool(max: usize) -> PreIssued {
        PreIssued::new(max, true, Arc::new(Metrics::default()))
    }

    #[test]
    fn nothing_is_held_until_two_misses_come_close_together() {
        let p = pool(256);
        assert!(matches!(p.take("c", "api", 0), (None, None)));
        // A second miss 5 s later is no burst.
        assert!(matches!(p.take("c", "api", 5_000), (None, None)));
        let (none, refill) = p.take("c", "api", 5_050);
        assert!(none.is_none());
        let refill = refill.expect("a burst orders a refill");
        assert_eq!(refill.count, MIN_HELD);
        // One refill at a time.
        assert!(p.take("c", "api", 5_060).1.is_none());
        p.fill(
            refill,
            (0..MIN_HELD as i64).map(|i| held(5_070 + i)).collect(),
        );
        assert_eq!(p.held(), MIN_HELD);
        let (hit, _) = p.take("c", "api", 5_080);
        assert_eq!(hit.unwrap().minted_ms, 5_070, "oldest first");
        // Another client or scope gets nothing of it.
        assert!(p.take("c", "read", 5_080).0.is_none());
        assert!(p.take("d", "api", 5_080).0.is_none());
    }

    #[test]
    fn misses_during_a_refill_double_the_target_up_to_the_maximum() {
        let p = pool(16);
        p.take("c", "api", 0);
        let first = p.take("c", "api", 1).1.unwrap();
        assert_eq!(first.count, 4);
        for t in 2..10 {
            assert!(p.take("c", "api", t).1.is_none());
        }
        p.fill(first, vec![]);
        // A failed refill leaves nothing; the next miss orders the maximum.
        let next = p.take("c", "api", 11).1.unwrap();
        assert_eq!(next.count, 16);
    }

    #[test]
    fn old_tokens_are_never_handed_out_and_shrink_the_target() {
        let p = pool(256);
        p.take("c", "api", 0);
        let refill = p.take("c", "api", 1).1.unwrap();
        p.fill(refill, vec![held(2), held(3), held(4), held(5)]);
        let (hit, _) = p.take("c", "api", 2 + MAX_AGE_MS);
        assert_eq!(hit.unwrap().minted_ms, 3, "only the expired one goes");
        let (hit, _) = p.take("c", "api", 10 * MAX_AGE_MS);
        assert!(hit.is_none(), "all too old");
        assert_eq!(p.held(), 0);
        // A clock that went back is no reason to trust a token either.
        let p = pool(256);
        p.take("c", "api", 10_000);
        let refill = p.take("c", "api", 10_001).1.unwrap();
        p.fill(refill, vec![held(10_002)]);
        assert!(p.take("c", "api", 9_000).0.is_none());
    }

    #[test]
    fn an_invalidation_drops_held_tokens_and_refills_under_way() {
        let p = pool(256);
        p.take("c", "api", 0);
        let first = p.take("c", "api", 1).1.unwrap();
        p.fill(first, vec![held(2), held(3), held(4), held(5)]);
        let (hit, refill) = p.take("c", "api", 6);
        assert!(hit.is_some() && refill.is_none(), "three of four left");
        let (hit, refill) = p.take("c", "api", 7);
        assert!(hit.is_some());
        let in_flight = refill.expect("half the target left: a refill is due");
        p.invalidate();
        assert_eq!(p.held(), 0);
        p.fill(in_flight, vec![held(8)]);
        assert_eq!(p.held(), 0, "ordered before the invalidation: discarded");
        assert!(p.take("c", "api", 9).0.is_none());
    }

    #[test]
    fn disabled_or_zero_maximum_holds_nothing() {
        let p = pool(0);
        p.take("c", "api", 0);
        assert!(matches!(p.take("c", "api", 1), (None, None)));
        let p = pool(256);
        p.set_enabled(false);
        p.take("c", "api", 0);
        assert!(matches!(p.take("c", "api", 1), (None, None)));
    }
}
