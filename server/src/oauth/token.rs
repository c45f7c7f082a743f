//! The token endpoint (RFC 6749 §3.2): `authorization_code`,
//! `refresh_token` (rotation, reuse detection) and `client_credentials`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::app::AppState;
use crate::audit::{self, Actor, ActorKind, AuditContext, AuditEvent};
use crate::crypto;
use crate::oauth::client_auth;
use crate::oauth::clients::{Client, GrantType};
use crate::oauth::error::{ErrorCode, OAuthError};
use crate::oauth::pkce;
use crate::store::{StoreError, Tx};
use crate::tokens::{self, Minted, TokenGrant};
use crate::web::form::Params;

pub fn router() -> Router<AppState> {
    Router::new().route("/token", post(token))
}

async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&state, &headers, &body).await {
        Ok(json) => {
            let mut resp = axum::Json(json).into_response();
            let h = resp.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "the token request must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(body)?;
    if let Some(dup) = params.first_duplicate() {
        return Err(OAuthError::invalid_request(format!(
            "parameter `{dup}` was sent more than once"
        )));
    }
    let (client, _method) = client_auth::authenticate(state, headers, &params).await?;
    let grant_type = params
        .get("grant_type")?
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
    let Some(grant) = GrantType::parse(grant_type) else {
        return Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            format!("grant_type `{grant_type}` is not supported"),
        ));
    };
    if !client.allows_grant(grant) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client may not use the {grant} grant"),
        ));
    }
    match grant {
        GrantType::AuthorizationCode => authorization_code(state, &client, &params).await,
        GrantType::RefreshToken => refresh(state, &client, &params).await,
        GrantType::ClientCredentials => client_credentials(state, &client, &params).await,
        GrantType::TokenExchange => {
            crate::tokens::exchange::exchange(state, &client, &params).await
        }
    }
}

fn client_ctx(client: &Client) -> AuditContext {
    AuditContext {
        actor: Actor {
            kind: ActorKind::Client,
            id: client.id.clone(),
            session: None,
        },
        request_id: None,
        ip: None,
    }
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, OAuthError> {
    params
        .get(name)?
        .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
}

async fn authorization_code(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<serde_json::Value, OAuthError> {
    let code = required(params, "code")?;
    let redirect_uri = required(params, "redirect_uri")?;
    let verifier = params.get("code_verifier")?;
    let now = state.clock.now();
    let bad = || {
        OAuthError::invalid_grant(
            "the authorization code is invalid, expired or was issued to another client",
        )
    };
    if !code.starts_with(crate::oauth::authorize::CODE_PREFIX) || code.len() > 100 {
        return Err(bad());
    }
    let code_hash = crypto::sha256_hex(code);
    let mut tx = state.store.begin().await?;
    let record = crate::store::oauth::find_code_for_update(&state.store, &mut tx, &code_hash)
        .await?
        .ok_or_else(bad)?;
    if record.client_id != client.id {
        return Err(bad());
    }
    if record.used_at.is_some() {
        // RFC 6749 §4.1.2: a replayed code revokes what its first use issued.
        revoke_for_reuse(
            state,
            &mut tx,
            client,
            "oauth.code_reuse",
            record.family_id.as_deref(),
            &record.user_id,
            Some(&record.session_id),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        state.introspection_cache.clear();
        tracing::warn!(event = "oauth.code_reuse", client_id = %client.id, "authorization code replayed; its tokens are revoked");
        return Err(OAuthError::invalid_grant(
            "the authorization code was already used; tokens issued with it are revoked",
        ));
    }
    if record.expires_at <= now {
        return Err(bad());
    }
    if record.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    match (&record.code_challenge, verifier) {
        (Some(challenge), Some(v)) if pkce::verify(v, challenge) => {}
        (Some(_), _) => {
            return Err(OAuthError::invalid_grant(
                "code_verifier is missing or does not match",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_grant(
                "code_verifier sent but the authorization request had no code_challenge",
            ));
        }
        (None, None) => {}
    }
    let session = crate::store::sessions::find(&state.store, &record.session_id).await?;
    let Some(session) = session.filter(|s| s.is_live()) else {
        return Err(OAuthError::invalid_grant("the sign-in session has ended"));
    };
    if let Some(reason) =
        crate::sessions::timed_out(state, session.created_at, session.last_seen_at, now)
    {
        drop(tx);
        crate::sessions::expire(state, &session.id, reason).await?;
        return Err(OAuthError::invalid_grant("the sign-in session has ended"));
    }
    let family_id = crypto::random_id();
    crate::store::tokens::insert_family(
        &mut tx,
        &family_id,
        &client.id,
        Some(&record.user_id),
        Some(&record.session_id),
        now,
    )
    .await?;
    if !crate::store::oauth::mark_code_used(&mut tx, &code_hash, now, &family_id).await? {
        return Err(bad());
    }
    let grant = TokenGrant {
        client_id: client.id.clone(),
        user_id: Some(record.user_id.clone()),
        session_id: Some(record.session_id.clone()),
        scope: record.scope.clone(),
        nonce: record.nonce.clone(),
        auth_time: Some(record.auth_time),
        amr: Some(record.amr.clone()),
        acr: Some(record.acr.clone()),
    };
    let minted = mint_user_tokens(state, &mut tx, client, &grant, &family_id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    respond(state, client, &grant, minted)
}

async fn mint_user_tokens(
    state: &AppState,
    tx: &mut Tx,
    client: &Client,
    grant: &TokenGrant,
    family_id: &str,
) -> Result<Minted, OAuthError> {
    let with_refresh = client.allows_grant(GrantType::RefreshToken);
    Ok(tokens::mint(state, tx, grant, Some(family_id), with_refresh).await?)
}

/// The success body, with an id_token when `openid` was granted.
fn respond(
    state: &AppState,
    client: &Client,
    grant: &TokenGrant,
    minted: Minted,
) -> Result<serde_json::Value, OAuthError> {
    let mut body = serde_json::json!({
        "access_token": minted.access_token,
        "token_type": "Bearer",
        "expires_in": minted.expires_in,
        "scope": grant.scope,
    });
    if let Some(rt) = minted.refresh_token {
        body["refresh_token"] = serde_json::Value::String(rt);
    }
    if grant.user_id.is_some() && grant.scope.split(' ').any(|s| s == "openid") {
        let id_token = crate::oidc::id_token::mint(state, client, grant).map_err(|e| {
            tracing::error!(error = %e, "cannot sign an id_token");
            OAuthError::new(ErrorCode::ServerError, "internal error")
        })?;
        body["id_token"] = serde_json::Value::String(id_token);
    }
    Ok(body)
}

async fn refresh(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<serde_json::Value, OAuthError> {
    let presented = required(params, "refresh_token")?;
    let now = state.clock.now();
    let bad = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    if !presented.starts_with(tokens::REFRESH_PREFIX) || presented.len() > 100 {
        return Err(bad());
    }
    let hash = crypto::sha256_hex(presented);
    let mut tx = state.store.begin().await?;
    let record = crate::store::tokens::find_refresh_for_update(&state.store, &mut tx, &hash)
        .await?
        .ok_or_else(bad)?;
    if record.client_id != client.id {
        return Err(bad());
    }
    if record.revoked_at.is_some() || record.family_revoked_at.is_some() {
        return Err(bad());
    }
    if record.used_at.is_some() {
        // Reuse of a rotated token: someone holds a copy. Kill the family.
        revoke_for_reuse(
            state,
            &mut tx,
            client,
            "oauth.refresh_reuse",
            Some(&record.family_id),
            &record.user_id,
            record.session_id.as_deref(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        state.introspection_cache.clear();
        tracing::warn!(event = "oauth.refresh_reuse", client_id = %client.id, family_id = %record.family_id, "refresh token reused; family revoked");
        return Err(OAuthError::invalid_grant(
            "the refresh token was already used; every token of this grant is revoked",
        ));
    }
    if record.expires_at <= now || record.session_ended_at.is_some() {
        return Err(bad());
    }
    if let (Some(sid), Some(created), Some(seen)) = (
        &record.session_id,
        record.session_created_at,
        record.session_last_seen_at,
    ) && let Some(reason) = crate::sessions::timed_out(state, created, seen, now)
    {
        drop(tx);
        crate::sessions::expire(state, sid, reason).await?;
        return Err(bad());
    }
    let user = crate::store::users::find_by_id(&state.store, &record.user_id).await?;
    if user.is_none_or(|u| u.locked) {
        return Err(bad());
    }
    let scope = narrow_scope(
        &record.scope,
        params.get("scope")?,
        "was not granted originally",
    )?;
    if !crate::store::tokens::mark_refresh_used(&mut tx, &hash, now).await? {
        return Err(bad());
    }
    // Using the grant is activity in the session (idle timeout).
    if let Some(sid) = &record.session_id {
        crate::store::sessions::touch_tx(&mut tx, sid, now).await?;
    }
    let grant = TokenGrant {
        client_id: client.id.clone(),
        user_id: Some(record.user_id.clone()),
        session_id: record.session_id.clone(),
        scope,
        nonce: None,
        auth_time: Some(record.auth_time),
        amr: Some(record.amr.clone()),
        acr: Some(record.acr.clone()),
    };
    let minted = tokens::mint(state, &mut tx, &grant, Some(&record.family_id), true).await?;
    tx.commit().await.map_err(StoreError::from)?;
    respond(state, client, &grant, minted)
}

async fn client_credentials(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<serde_json::Value, OAuthError> {
    let scope = match params.get("scope")? {
        None => client
            .scopes
            .iter()
            .filter(|s| *s != "openid")
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
        Some(requested) => {
            let mut out: Vec<&str> = Vec::new();
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if s == "openid" || !client.scopes.iter().any(|c| c == s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!("scope `{s}` is not allowed for this client"),
                    ));
                }
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            out.join(" ")
        }
    };
    let grant = TokenGrant::standalone(client.id.clone(), scope);
    let minted = tokens::mint_standalone(state, &grant).await?;
    respond(state, client, &grant, minted)
}

/// A requested scope that must be within `granted` (refresh, token
/// exchange); absent means all of it.
pub(crate) fn narrow_scope(
    granted: &str,
    requested: Option<&str>,
    refusal: &str,
) -> Result<String, OAuthError> {
    let Some(requested) = requested else {
        return Ok(granted.to_string());
    };
    let granted: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty()).collect();
    let requested: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
    if let Some(extra) = requested.iter().find(|s| !granted.contains(s)) {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            format!("scope `{extra}` {refusal}"),
        ));
    }
    Ok(requested.join(" "))
}

/// A replayed code or refresh token: someone holds a copy. Revokes the
/// whole family and records it, in the caller's transaction.
async fn revoke_for_reuse(
    state: &AppState,
    tx: &mut Tx,
    client: &Client,
    action: &str,
    family_id: Option<&str>,
    user_id: &str,
    session_id: Option<&str>,
) -> Result<(), OAuthError> {
    let now = state.clock.now();
    if let Some(family) = family_id {
        crate::store::tokens::revoke_family(&state.store, tx, family, now, action).await?;
    }
    audit::record(
        &state.store,
        tx,
        state.clock.now_ms(),
        &client_ctx(client),
        AuditEvent::new(action, format!("user:{user_id}")).after(serde_json::json!({
            "client_id": client.id, "family_id": family_id, "session_id": session_id, "revoked": true,
        })),
    )
    .await?;
    Ok(())
}
