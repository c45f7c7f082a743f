//! OpenID Connect: discovery, JWKS, id_token, userinfo.

pub mod id_token;
pub mod logout;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::web::form::Params;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route("/userinfo", get(userinfo_get).post(userinfo_post))
        .merge(logout::router())
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let body = state
        .keys
        .current()
        .jwks(state.clock.now(), state.config.retired_key_retention());
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body.to_string(),
    )
}

pub const SCOPES_SUPPORTED: &[&str] = &["openid", "profile", "email"];

/// Exactly what is implemented (RFC 8414 / OIDC Discovery).
pub fn discovery_document(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "azp",
            "preferred_username", "email", "email_verified"],
        "prompt_values_supported": ["none", "login", "consent"],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
    })
}

async fn discovery(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(discovery_document(&state.config.issuer)),
    )
}

/// RFC 6750 §3 error for the userinfo endpoint.
fn bearer_error(status: StatusCode, error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"portcullis\", error=\"{e}\""),
        None => "Bearer realm=\"portcullis\"".to_string(),
    };
    let mut resp = match error {
        Some(e) => (status, axum::Json(serde_json::json!({ "error": e }))).into_response(),
        None => status.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The bearer token from the header or (POST) the form body, never both.
fn bearer_token(headers: &HeaderMap, body: Option<&[u8]>) -> Result<Option<String>, ()> {
    let from_header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let text = v.to_str().map_err(|_| ())?;
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .ok_or(())?;
            Some(token.trim().to_string())
        }
    };
    let from_body = match body {
        Some(b) if !b.is_empty() => Params::parse(b)
            .map_err(|_| ())?
            .get("access_token")
            .map_err(|_| ())?
            .map(str::to_string),
        _ => None,
    };
    match (from_header, from_body) {
        (Some(_), Some(_)) => Err(()),
        (h, b) => Ok(h.or(b)),
    }
}

async fn userinfo_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    userinfo(&state, &headers, None).await
}

async fn userinfo_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    userinfo(&state, &headers, Some(&body)).await
}

async fn userinfo(state: &AppState, headers: &HeaderMap, body: Option<&[u8]>) -> Response {
    let token = match bearer_token(headers, body) {
        Ok(Some(t)) => t,
        Ok(None) => return bearer_error(StatusCode::UNAUTHORIZED, None),
        Err(()) => return bearer_error(StatusCode::BAD_REQUEST, Some("invalid_request")),
    };
    let record = match crate::tokens::active_access_token(state, &token).await {
        Ok(Some(r)) => r,
        Ok(None) => return bearer_error(StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Err(e) => return crate::error::AppError::from(e).into_response(),
    };
    let Some(user_id) = record.user_id.as_deref() else {
        return bearer_error(StatusCode::FORBIDDEN, Some("insufficient_scope"));
    };
    let scopes: Vec<&str> = record.scopes().collect();
    if !scopes.contains(&"openid") {
        return bearer_error(StatusCode::FORBIDDEN, Some("insufficient_scope"));
    }
    let user = match crate::store::users::find_by_id(&state.store, user_id).await {
        Ok(Some(u)) if !u.locked => u,
        Ok(_) => return bearer_error(StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Err(e) => return crate::error::AppError::from(e).into_response(),
    };
    let mut claims = serde_json::json!({ "sub": user.id });
    if scopes.contains(&"profile") {
        claims["preferred_username"] = user.username.clone().into();
    }
    if scopes.contains(&"email")
        && let Some(email) = &user.email
    {
        claims["email"] = email.clone().into();
        claims["email_verified"] = false.into();
    }
    let mut resp = axum::Json(claims).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
