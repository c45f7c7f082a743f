//! Token revocation (RFC 7009). Revoking a refresh token revokes its whole
//! family (and the access tokens minted with it); revoking an access token
//! revokes that token. A token that is unknown or belongs to another client
//! is a silent no-op (200) that changes nothing.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::app::AppState;
use crate::crypto;
use crate::oauth::client_auth;
use crate::oauth::clients::Client;
use crate::oauth::error::OAuthError;
use crate::store::StoreError;
use crate::tokens::{ACCESS_PREFIX, REFRESH_PREFIX};
use crate::web::form::Params;

pub fn router() -> Router<AppState> {
    Router::new().route("/revoke", post(revoke))
}

async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let params = Params::parse(&body)?;
        let (client, _) = client_auth::authenticate(&state, &headers, &params).await?;
        let token = params
            .get("token")?
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        revoke_token(&state, &client, token).await?;
        Ok::<_, OAuthError>(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut resp = StatusCode::OK.into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Revokes `token` if `client` owns it; true when something was revoked.
pub async fn revoke_token(
    state: &AppState,
    client: &Client,
    token: &str,
) -> Result<bool, StoreError> {
    if token.len() > 100 {
        return Ok(false);
    }
    let hash = crypto::sha256_hex(token);
    let now = state.clock.now();
    // Read first: unknown, foreign and already revoked tokens (the common
    // no-op cases) never take the write lock.
    let worth_writing = if token.starts_with(REFRESH_PREFIX) {
        crate::store::tokens::find_refresh(&state.store, &hash)
            .await?
            .is_some_and(|r| r.client_id == client.id && r.family_revoked_at.is_none())
    } else if token.starts_with(ACCESS_PREFIX) {
        crate::store::tokens::find_access(&state.store, &hash)
            .await?
            .is_some_and(|r| r.client_id == client.id && r.revoked_at.is_none())
    } else {
        false
    };
    if !worth_writing {
        return Ok(false);
    }
    let mut tx = state.store.begin().await?;
    let revoked = if token.starts_with(REFRESH_PREFIX) {
        match crate::store::tokens::find_refresh_for_update(&state.store, &mut tx, &hash).await? {
            Some(r) if r.client_id == client.id => {
                crate::store::tokens::revoke_family(
                    &state.store,
                    &mut tx,
                    &r.family_id,
                    now,
                    "revoked by client",
                )
                .await?;
                true
            }
            _ => false,
        }
    } else if token.starts_with(ACCESS_PREFIX) {
        crate::store::tokens::revoke_access(&state.store, &mut tx, &hash, &client.id, now).await?
    } else {
        false
    };
    tx.commit().await?;
    if revoked {
        state.introspection_cache.clear();
        tracing::info!(event = "token.revoked", client_id = %client.id, "token revoked by its client");
    }
    Ok(revoked)
}
