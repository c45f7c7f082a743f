//! Internal JWT access tokens (RFC 9068, `typ: at+jwt`) for services behind
//! the gateway: short-lived, ES256, `kid` set.

use josekit::jwt::JwtPayload;

use crate::app::AppState;
use crate::crypto;
use crate::keys::{KeyError, SigningAlg};
use crate::tokens::AccessTokenRecord;

pub const INTERNAL_ALG: SigningAlg = SigningAlg::ES256;

/// Mints an internal JWT for `audience` from an active opaque token. The
/// JWT never outlives the opaque token. `actor` is the client that asked
/// (RFC 8693 `act`), if not the token's own client.
pub fn mint(
    state: &AppState,
    record: &AccessTokenRecord,
    audience: &str,
    scope: &str,
    actor: Option<&str>,
) -> Result<(String, i64), KeyError> {
    let now = state.clock.now();
    let ttl = i64::try_from(state.config.tokens.internal_jwt_ttl.as_secs()).unwrap_or(300);
    let exp = (now + ttl).min(record.expires_at);
    let mut p = JwtPayload::new();
    let mut set = |k: &str, v: serde_json::Value| {
        let _ = p.set_claim(k, Some(v));
    };
    set("iss", state.config.issuer.clone().into());
    set(
        "sub",
        record
            .user_id
            .clone()
            .unwrap_or_else(|| record.client_id.clone())
            .into(),
    );
    set("aud", audience.into());
    set("client_id", record.client_id.clone().into());
    set("scope", scope.into());
    set("jti", crypto::random_id().into());
    set("iat", now.into());
    set("exp", exp.into());
    if let Some(t) = record.auth_time {
        set("auth_time", t.into());
    }
    if let Some(acr) = &record.acr {
        set("acr", acr.clone().into());
    }
    if record.user_id.is_some() {
        set("amr", record.amr_list().into());
    }
    if let Some(sid) = &record.session_id {
        set("sid", sid.clone().into());
    }
    if let Some(actor) = actor {
        set("act", serde_json::json!({ "sub": actor }));
    }
    let jwt = state.keys.current().sign(INTERNAL_ALG, "at+jwt", &p)?;
    Ok((jwt, exp - now))
}
