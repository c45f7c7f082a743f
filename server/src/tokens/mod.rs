//! Opaque tokens handed to external clients: `pct_at_…` (access) and
//! `pct_rt_…` (refresh), 256 random bits each, stored only as SHA-256.
//! Every token records its client, user, session (`sid`), scope and family,
//! so revoking a family or ending a session kills all of them at once.

pub mod batch;
pub mod cache;
pub mod exchange;
pub mod introspect;
pub mod janitor;
pub mod jwt;
pub mod preissue;
pub mod revoke;

use axum::Router;

use crate::app::AppState;
use crate::crypto;
use crate::store::{StoreResult, Tx};

pub const ACCESS_PREFIX: &str = "pct_at_";
pub const REFRESH_PREFIX: &str = "pct_rt_";

/// The kind of opaque token a presented string has the shape of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueKind {
    Access,
    Refresh,
}

/// What `presented` could be, from its shape alone: one of our prefixes
/// followed by exactly 43 base64url characters (256 bits, as
/// [`crypto::random_secret`] makes them). Anything else is no token of ours
/// and is never hashed or looked up. Pure and total (fuzzed by
/// `fuzz/fuzz_targets/token_parser.rs`).
pub fn opaque_kind(presented: &str) -> Option<OpaqueKind> {
    let (kind, body) = if let Some(body) = presented.strip_prefix(ACCESS_PREFIX) {
        (OpaqueKind::Access, body)
    } else if let Some(body) = presented.strip_prefix(REFRESH_PREFIX) {
        (OpaqueKind::Refresh, body)
    } else {
        return None;
    };
    let shaped = body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    shaped.then_some(kind)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessTokenRecord {
    pub id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub family_id: Option<String>,
    pub scope: String,
    pub audience: Option<String>,
    pub auth_time: Option<i64>,
    pub amr: Option<String>,
    pub acr: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    #[sqlx(default)]
    pub revoked_at: Option<i64>,
    #[sqlx(default)]
    pub family_revoked_at: Option<i64>,
    #[sqlx(default)]
    pub session_ended_at: Option<i64>,
    #[sqlx(default)]
    pub session_created_at: Option<i64>,
    #[sqlx(default)]
    pub session_last_seen_at: Option<i64>,
}

impl AccessTokenRecord {
    /// Active means: not expired, not revoked, its family not revoked, its
    /// session not ended.
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at > now
            && self.revoked_at.is_none()
            && self.family_revoked_at.is_none()
            && self.session_ended_at.is_none()
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    pub fn amr_list(&self) -> Vec<String> {
        self.amr
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshTokenRecord {
    pub token_hash: String,
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub scope: String,
    pub nonce: Option<String>,
    pub auth_time: i64,
    pub amr: String,
    pub acr: String,
    pub issued_at: i64,
    pub expires_at: i64,
    #[sqlx(default)]
    pub used_at: Option<i64>,
    #[sqlx(default)]
    pub revoked_at: Option<i64>,
    #[sqlx(default)]
    pub family_revoked_at: Option<i64>,
    #[sqlx(default)]
    pub session_ended_at: Option<i64>,
    #[sqlx(default)]
    pub session_created_at: Option<i64>,
    #[sqlx(default)]
    pub session_last_seen_at: Option<i64>,
}

/// Who and what a new set of tokens is for.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub client_id: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub scope: String,
    pub nonce: Option<String>,
    pub auth_time: Option<i64>,
    /// JSON array, e.g. `["pwd"]`.
    pub amr: Option<String>,
    pub acr: Option<String>,
}

impl TokenGrant {
    /// A grant with no user behind it (client credentials).
    pub fn standalone(client_id: String, scope: String) -> Self {
        TokenGrant {
            client_id,
            user_id: None,
            session_id: None,
            scope,
            nonce: None,
            auth_time: None,
            amr: None,
            acr: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Minted {
    pub access_token: String,
    pub access_id: String,
    pub expires_in: i64,
    pub refresh_token: Option<String>,
}

fn access_ttl(state: &AppState) -> i64 {
    i64::try_from(state.config.tokens.access_ttl.as_secs()).unwrap_or(600)
}

/// A new access-token record for `grant`, issued at `now_ms`, living
/// `tokens.access_ttl`.
fn new_access_record(
    state: &AppState,
    grant: &TokenGrant,
    family_id: Option<&str>,
    now_ms: i64,
) -> AccessTokenRecord {
    let now = now_ms.div_euclid(1000);
    let access_ttl = access_ttl(state);
    AccessTokenRecord {
        id: crypto::time_ordered_id(now_ms),
        client_id: grant.client_id.clone(),
        user_id: grant.user_id.clone(),
        session_id: grant.session_id.clone(),
        family_id: family_id.map(str::to_string),
        scope: grant.scope.clone(),
        audience: None,
        auth_time: grant.auth_time,
        amr: grant.amr.clone(),
        acr: grant.acr.clone(),
        issued_at: now,
        expires_at: now + access_ttl,
        revoked_at: None,
        family_revoked_at: None,
        session_ended_at: None,
        session_created_at: None,
        session_last_seen_at: None,
    }
}

/// Issues a standalone access token (client credentials: no user, session,
/// family or refresh token): one already stored ahead of demand
/// (`preissue`), or a new one through the group-commit writer. Either way
/// the token's row is durable before the token is returned.
pub async fn mint_standalone(state: &AppState, grant: &TokenGrant) -> StoreResult<Minted> {
    let now_ms = state.clock.now_ms();
    if let Some(minted) = preissue::take(state, grant, now_ms) {
        return Ok(minted);
    }
    let access_token = crypto::random_secret(ACCESS_PREFIX);
    let record = new_access_record(state, grant, None, now_ms);
    let access_id = record.id.clone();
    state
        .token_writer
        .insert(record, crypto::sha256_hex(&access_token))
        .await?;
    Ok(Minted {
        access_token,
        access_id,
        expires_in: access_ttl(state),
        refresh_token: None,
    })
}

/// Issues an access token (and, with a family, a refresh token) inside `tx`.
pub async fn mint(
    state: &AppState,
    tx: &mut Tx,
    grant: &TokenGrant,
    family_id: Option<&str>,
    with_refresh: bool,
) -> StoreResult<Minted> {
    let now = state.clock.now();
    let access_ttl = access_ttl(state);
    let access_token = crypto::random_secret(ACCESS_PREFIX);
    let record = new_access_record(state, grant, family_id, state.clock.now_ms());
    crate::store::tokens::insert_access(
        &state.store,
        tx,
        &record,
        &crypto::sha256_hex(&access_token),
    )
    .await?;
    let refresh_token = match (with_refresh, family_id, &grant.user_id) {
        (true, Some(family), Some(user_id)) => {
            let refresh_ttl =
                i64::try_from(state.config.tokens.refresh_ttl.as_secs()).unwrap_or(86_400);
            let token = crypto::random_secret(REFRESH_PREFIX);
            let rt = RefreshTokenRecord {
                token_hash: crypto::sha256_hex(&token),
                family_id: family.to_string(),
                client_id: grant.client_id.clone(),
                user_id: user_id.clone(),
                session_id: grant.session_id.clone(),
                scope: grant.scope.clone(),
                nonce: grant.nonce.clone(),
                auth_time: grant.auth_time.unwrap_or(now),
                amr: grant.amr.clone().unwrap_or_else(|| "[]".into()),
                acr: grant.acr.clone().unwrap_or_default(),
                issued_at: now,
                expires_at: now + refresh_ttl,
                used_at: None,
                revoked_at: None,
                family_revoked_at: None,
                session_ended_at: None,
                session_created_at: None,
                session_last_seen_at: None,
            };
            crate::store::tokens::insert_refresh(tx, &rt).await?;
            Some(token)
        }
        _ => None,
    };
    Ok(Minted {
        access_token,
        access_id: record.id,
        expires_in: access_ttl,
        refresh_token,
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(introspect::router())
        .merge(revoke::router())
}

/// The access token's record if it is one of ours and active now; served
/// from the introspection cache when possible.
pub async fn active_access_token(
    state: &AppState,
    token: &str,
) -> StoreResult<Option<AccessTokenRecord>> {
    if opaque_kind(token) != Some(OpaqueKind::Access) {
        return Ok(None);
    }
    active_access_token_by_hash(state, crypto::sha256_hex(token)).await
}

/// [`active_access_token`] for a token known only by its SHA-256 (the admin
/// UI keeps the hash, never the token, in its session row).
pub async fn active_access_token_by_hash(
    state: &AppState,
    hash: String,
) -> StoreResult<Option<AccessTokenRecord>> {
    let now = state.clock.now();
    if let Some(hit) = state.introspection_cache.get(&hash, now) {
        return Ok(Some(hit));
    }
    let generation = state.introspection_cache.generation();
    let record = crate::store::tokens::find_access(&state.store, &hash).await?;
    let Some(record) = record.filter(|r| r.is_active(now)) else {
        return Ok(None);
    };
    if let (Some(sid), Some(created), Some(seen)) = (
        &record.session_id,
        record.session_created_at,
        record.session_last_seen_at,
    ) && let Some(reason) = crate::sessions::timed_out(state, created, seen, now)
    {
        crate::sessions::expire(state, sid, reason).await?;
        return Ok(None);
    }
    let active = Some(record);
    if let Some(r) = &active {
        state
            .introspection_cache
            .insert(hash, r.clone(), generation);
    }
    Ok(active)
}
