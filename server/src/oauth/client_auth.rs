//! Client authentication at the token endpoint (RFC 6749 §2.3):
//! `client_secret_basic`, `client_secret_post`, or `none` for public clients.
//! Exactly one method per request; a confidential client can never fall
//! back to `none`.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::app::AppState;
use crate::oauth::clients::{self, Client, ClientError};
use crate::oauth::error::OAuthError;
use crate::web::form::Params;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    SecretBasic,
    SecretPost,
    None,
}

fn form_decode(s: &str) -> Option<String> {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
    let with_spaces = s.replace('+', " ");
    percent_decode(&with_spaces)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| OAuthError::invalid_client())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err(OAuthError::invalid_client());
    };
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| OAuthError::invalid_client())?;
    let decoded = String::from_utf8(decoded).map_err(|_| OAuthError::invalid_client())?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(OAuthError::invalid_client)?;
    let id = form_decode(id).ok_or_else(OAuthError::invalid_client)?;
    let secret = form_decode(secret).ok_or_else(OAuthError::invalid_client)?;
    Ok(Some((id, secret)))
}

/// Authenticates the calling client or answers `invalid_client` (401).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<(Client, AuthMethod), OAuthError> {
    let basic = basic_credentials(headers)?;
    let body_id = params.get("client_id")?;
    let body_secret = params.get("client_secret")?;
    let (client_id, secret, method) = match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use exactly one client authentication method",
            ));
        }
        (Some((id, secret)), body_id, None) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::invalid_request(
                    "client_id does not match the Authorization header",
                ));
            }
            (id, Some(secret), AuthMethod::SecretBasic)
        }
        (None, Some(id), Some(secret)) => (
            id.to_string(),
            Some(secret.to_string()),
            AuthMethod::SecretPost,
        ),
        (None, Some(id), None) => (id.to_string(), None, AuthMethod::None),
        (None, None, _) => return Err(OAuthError::invalid_client()),
    };
    let client = match clients::find_cached(state, &client_id).await {
        Ok(c) => c,
        Err(ClientError::NotFound(_)) => {
            // Same cost as a wrong secret, so ids cannot be probed by timing.
            let _ = crate::crypto::secret_matches(secret.as_deref().unwrap_or(""), "");
            return Err(OAuthError::invalid_client());
        }
        Err(ClientError::Store(e)) => return Err(e.into()),
        Err(_) => return Err(OAuthError::invalid_client()),
    };
    let ok = match (&secret, client.is_public) {
        (Some(s), false) => client.secret_matches(s),
        (None, true) => method == AuthMethod::None,
        // A public client presenting a secret, or a confidential one without.
        _ => false,
    };
    if !ok {
        tracing::info!(event = "client_auth.failed", client_id = %client.id, "client authentication failed");
        return Err(OAuthError::invalid_client());
    }
    Ok((client, method))
}
