//! Token introspection (RFC 7662), with signed JWT responses (RFC 9701).
//! Inactive, expired, revoked, unknown and malformed tokens all answer
//! `{"active": false}` and nothing else.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use josekit::jwt::JwtPayload;

use crate::app::AppState;
use crate::crypto;
use crate::oauth::client_auth;
use crate::oauth::clients::Client;
use crate::oauth::error::{ErrorCode, OAuthError};
use crate::tokens::{self, ACCESS_PREFIX, REFRESH_PREFIX};
use crate::web::form::Params;

pub const JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";

pub fn router() -> Router<AppState> {
    Router::new().route("/introspect", post(introspect))
}

fn wants_jwt(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(JWT_MEDIA_TYPE))
}

async fn introspect(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let want_jwt = wants_jwt(&headers);
    let result = async {
        let params = Params::parse(&body)?;
        let (caller, _) = client_auth::authenticate(&state, &headers, &params).await?;
        if !caller.may_introspect {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "this client is not allowed to introspect tokens",
            ));
        }
        let token = params
            .get("token")?
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let token_hash = crypto::sha256_hex(token);
        if want_jwt
            && let Some(jwt) = state
                .introspection_cache
                .get_signed(&caller.id, &token_hash)
        {
            return Ok((caller, Answer::Signed(jwt)));
        }
        let generation = state.introspection_cache.generation();
        let claims = describe(&state, token).await?;
        Ok((caller, Answer::Claims(claims, token_hash, generation)))
    }
    .await;
    let (caller, answer) = match result {
        Ok(x) => x,
        Err(e) if e.code == ErrorCode::UnauthorizedClient => {
            let mut resp = e.into_response();
            *resp.status_mut() = StatusCode::FORBIDDEN;
            return resp;
        }
        Err(e) => return e.into_response(),
    };
    let jwt = match answer {
        Answer::Signed(jwt) => jwt,
        Answer::Claims(claims, _, _) if !want_jwt => {
            let mut resp = axum::Json(claims).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return resp;
        }
        Answer::Claims(claims, token_hash, generation) => {
            let active = claims["active"] == true;
            match jwt_response(&state, &caller, claims) {
                Ok(jwt) => {
                    // Active answers are reused within the cache TTL, and
                    // dropped with the rest of the cache on any revocation.
                    if active {
                        state.introspection_cache.insert_signed(
                            &caller.id,
                            &token_hash,
                            jwt.clone(),
                            generation,
                        );
                    }
                    jwt
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign an introspection response");
                    return OAuthError::new(ErrorCode::ServerError, "internal error")
                        .into_response();
                }
            }
        }
    };
    let mut resp = jwt.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JWT_MEDIA_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

enum Answer {
    /// A signed answer from the cache.
    Signed(String),
    /// Fresh claims, with the token hash and cache generation they were read at.
    Claims(serde_json::Value, String, u64),
}

fn inactive() -> serde_json::Value {
    serde_json::json!({ "active": false })
}

/// The RFC 7662 response members for `token`.
pub async fn describe(state: &AppState, token: &str) -> Result<serde_json::Value, OAuthError> {
    let now = state.clock.now();
    if token.starts_with(ACCESS_PREFIX) {
        let Some(r) = tokens::active_access_token(state, token).await? else {
            return Ok(inactive());
        };
        let mut v = serde_json::json!({
            "active": true,
            "token_type": "Bearer",
            "scope": r.scope,
            "client_id": r.client_id,
            "sub": r.user_id.clone().unwrap_or_else(|| r.client_id.clone()),
            "iss": state.config.issuer,
            "iat": r.issued_at,
            "exp": r.expires_at,
            "jti": r.id,
        });
        if let Some(aud) = &r.audience {
            v["aud"] = aud.clone().into();
        }
        if let Some(sid) = &r.session_id {
            v["sid"] = sid.clone().into();
        }
        if let Some(t) = r.auth_time {
            v["auth_time"] = t.into();
        }
        if let Some(acr) = &r.acr {
            v["acr"] = acr.clone().into();
        }
        if r.user_id.is_some() {
            v["amr"] = r.amr_list().into();
        }
        return Ok(v);
    }
    if token.starts_with(REFRESH_PREFIX) && token.len() <= 100 {
        let found =
            crate::store::tokens::find_refresh(&state.store, &crypto::sha256_hex(token)).await?;
        let Some(r) = found else {
            return Ok(inactive());
        };
        let active = r.expires_at > now
            && r.used_at.is_none()
            && r.revoked_at.is_none()
            && r.family_revoked_at.is_none()
            && r.session_ended_at.is_none();
        if !active {
            return Ok(inactive());
        }
        if let (Some(sid), Some(created), Some(seen)) =
            (&r.session_id, r.session_created_at, r.session_last_seen_at)
            && let Some(reason) = crate::sessions::timed_out(state, created, seen, now)
        {
            crate::sessions::expire(state, sid, reason).await?;
            return Ok(inactive());
        }
        return Ok(serde_json::json!({
            "active": true,
            "token_type": "refresh_token",
            "scope": r.scope,
            "client_id": r.client_id,
            "sub": r.user_id,
            "iss": state.config.issuer,
            "iat": r.issued_at,
            "exp": r.expires_at,
            "sid": r.session_id,
            "auth_time": r.auth_time,
        }));
    }
    Ok(inactive())
}

/// RFC 9701: `typ: token-introspection+jwt`, `aud` = the caller, the
/// introspection members under `token_introspection`.
fn jwt_response(
    state: &AppState,
    caller: &Client,
    claims: serde_json::Value,
) -> Result<String, crate::keys::KeyError> {
    let mut p = JwtPayload::new();
    let mut set = |k: &str, v: serde_json::Value| {
        let _ = p.set_claim(k, Some(v));
    };
    set("iss", state.config.issuer.clone().into());
    set("aud", caller.id.clone().into());
    set("iat", state.clock.now().into());
    set("jti", crypto::random_id().into());
    set("token_introspection", claims);
    state
        .keys
        .current()
        .sign(super::jwt::INTERNAL_ALG, "token-introspection+jwt", &p)
}
