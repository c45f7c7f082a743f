//! OIDC id_token (Core §2): signed with the client's algorithm (RS256 by
//! default, ES256 per client), `typ: JWT`, `kid` set.

use josekit::jwt::JwtPayload;

use crate::app::AppState;
use crate::keys::{KeyError, SigningAlg};
use crate::oauth::clients::Client;
use crate::tokens::TokenGrant;

pub fn mint(state: &AppState, client: &Client, grant: &TokenGrant) -> Result<String, KeyError> {
    let now = state.clock.now();
    let ttl = i64::try_from(state.config.tokens.id_token_ttl.as_secs()).unwrap_or(3600);
    let mut p = JwtPayload::new();
    p.set_issuer(&state.config.issuer);
    p.set_subject(grant.user_id.as_deref().unwrap_or_default());
    p.set_audience(vec![client.id.clone()]);
    let set = |p: &mut JwtPayload, k: &str, v: serde_json::Value| {
        let _ = p.set_claim(k, Some(v));
    };
    // Integers, not josekit's SystemTime encoding (which may emit floats).
    set(&mut p, "iat", now.into());
    set(&mut p, "exp", (now + ttl).into());
    set(&mut p, "azp", client.id.clone().into());
    if let Some(t) = grant.auth_time {
        set(&mut p, "auth_time", t.into());
    }
    if let Some(n) = &grant.nonce {
        set(&mut p, "nonce", n.clone().into());
    }
    if let Some(acr) = &grant.acr {
        set(&mut p, "acr", acr.clone().into());
    }
    let amr: Vec<String> = grant
        .amr
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    set(&mut p, "amr", amr.into());
    if let Some(sid) = &grant.session_id {
        set(&mut p, "sid", sid.clone().into());
    }
    let alg = SigningAlg::parse(&client.id_token_alg).unwrap_or(SigningAlg::RS256);
    state.keys.current().sign(alg, "JWT", &p)
}
