//! In-memory caches for the gateway hot path: introspection results and
//! client records (client authentication runs on every introspection).
//!
//! Only *active* access-token records are cached, each for at most
//! `tokens.introspection_cache_ttl` (and never past the token's expiry).
//! Any revocation clears the whole cache: locally right after the commit,
//! and on every other replica through PostgreSQL `LISTEN/NOTIFY` (the
//! NOTIFY is sent inside the revoking transaction, so it is delivered only
//! if the revocation committed). While the listener is disconnected the
//! cache is bypassed. A generation counter stops a lookup that read the
//! database before a revocation from re-inserting the stale record after it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::oauth::clients::Client;
use crate::tokens::AccessTokenRecord;

pub const CHANNEL: &str = "portcullis_revocations";
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
pub struct IntrospectionCache {
    ttl: Duration,
    entries: RwLock<HashMap<String, (AccessTokenRecord, Instant)>>,
    clients: RwLock<HashMap<String, (Client, Instant)>>,
    /// Signed RFC 9701 answers for active tokens, by (caller, token hash):
    /// ES256 signing is the costliest step of a JWT introspection.
    signed: RwLock<HashMap<(String, String), (String, Instant)>>,
    generation: AtomicU64,
    enabled: AtomicBool,
}

impl IntrospectionCache {
    /// `enabled` is false until a replica-wide invalidation channel exists
    /// (PostgreSQL listener up); a single SQLite process enables it at once.
    pub fn new(ttl: Duration, enabled: bool) -> Self {
        IntrospectionCache {
            ttl,
            entries: RwLock::new(HashMap::new()),
            clients: RwLock::new(HashMap::new()),
            signed: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            enabled: AtomicBool::new(enabled),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, token_hash: &str, now: i64) -> Option<AccessTokenRecord> {
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        let entries = self.entries.read().ok()?;
        let (record, at) = entries.get(token_hash)?;
        (at.elapsed() < self.ttl && record.is_active(now)).then(|| record.clone())
    }

    /// Caches an active record read at `generation`, unless a revocation
    /// happened since.
    pub fn insert(&self, token_hash: String, record: AccessTokenRecord, generation: u64) {
        if !self.enabled.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut entries) = self.entries.write() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(token_hash, (record, Instant::now()));
        }
    }

    /// Forgets everything (a revocation or client change happened somewhere).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
        if let Ok(mut clients) = self.clients.write() {
            clients.clear();
        }
        if let Ok(mut signed) = self.signed.write() {
            signed.clear();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get_signed(&self, caller: &str, token_hash: &str) -> Option<String> {
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        let signed = self.signed.read().ok()?;
        let (jwt, at) = signed.get(&(caller.to_string(), token_hash.to_string()))?;
        (at.elapsed() < self.ttl).then(|| jwt.clone())
    }

    pub fn insert_signed(&self, caller: &str, token_hash: &str, jwt: String, generation: u64) {
        if !self.enabled.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut signed) = self.signed.write() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if signed.len() >= MAX_ENTRIES {
                signed.clear();
            }
            signed.insert(
                (caller.to_string(), token_hash.to_string()),
                (jwt, Instant::now()),
            );
        }
    }

    pub fn get_client(&self, id: &str) -> Option<Client> {
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        let clients = self.clients.read().ok()?;
        let (client, at) = clients.get(id)?;
        (at.elapsed() < self.ttl).then(|| client.clone())
    }

    pub fn insert_client(&self, client: Client, generation: u64) {
        if !self.enabled.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut clients) = self.clients.write() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if clients.len() >= MAX_ENTRIES {
                clients.clear();
            }
            clients.insert(client.id.clone(), (client, Instant::now()));
        }
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.clear();
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }
}

/// Keeps a `LISTEN` connection open and clears the cache on every
/// notification (and drops pre-issued tokens on a client change); on
/// disconnect both are disabled until listening again.
pub async fn listen_for_revocations(
    url: String,
    cache: std::sync::Arc<IntrospectionCache>,
    preissued: std::sync::Arc<crate::tokens::preissue::PreIssued>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "revocation listener cannot connect; introspection cache disabled");
                cache.set_enabled(false);
                preissued.set_enabled(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        cache.set_enabled(true);
        preissued.set_enabled(true);
        tracing::info!("listening for revocations");
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    cache.clear();
                    if notification.payload() == crate::tokens::preissue::CLIENT_CHANGED {
                        preissued.invalidate();
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "revocation listener lost its connection; introspection cache disabled"
                    );
                    cache.set_enabled(false);
                    preissued.set_enabled(false);
                    break;
                }
            }
        }
    }
}
