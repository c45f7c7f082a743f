//! OAuth 2.0 protocol: clients, the authorization endpoint, the token
//! endpoint.
//!
//! Why not `oxide-auth` here: its token endpoint has a fixed JSON body (no
//! `id_token`), answers a wrong PKCE verifier or a used code with
//! `invalid_request` instead of `invalid_grant`, never produces
//! `unauthorized_client`, cannot enforce the registered client
//! authentication method, does not support `client_secret_post` on refresh,
//! cannot express refresh-token family revocation, and its axum frontend
//! turns every error into a 500 and has no POST `/authorize`, no `iss`
//! response parameter (RFC 9207) and no OIDC parameters (`nonce`, `prompt`,
//! `max_age`). Each of those is a requirement here, so both endpoints are
//! implemented directly, following RFC 6749, RFC 7636, RFC 9207, RFC 9700
//! and OIDC Core; the scope syntax (RFC 6749 §3.3) and S256 check mirror
//! what `oxide-auth` does.

pub mod authorize;
pub mod client_auth;
pub mod clients;
pub mod consents;
pub mod error;
pub mod pkce;
pub mod token;

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(authorize::router())
        .merge(token::router())
        .merge(consents::router())
}
