//! Token exchange (RFC 8693): a gateway presents an opaque access token and
//! receives an internal JWT for one audience it is registered for
//! (`--exchange-audience`). Any other audience is `invalid_target`.

use crate::app::AppState;
use crate::oauth::clients::Client;
use crate::oauth::error::{ErrorCode, OAuthError};
use crate::tokens;
use crate::web::form::Params;

pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

pub async fn exchange(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<serde_json::Value, OAuthError> {
    let subject = params
        .get("subject_token")?
        .ok_or_else(|| OAuthError::invalid_request("subject_token is required"))?;
    match params.get("subject_token_type")? {
        Some(ACCESS_TOKEN_TYPE) => {}
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "subject_token_type must be urn:ietf:params:oauth:token-type:access_token",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                "subject_token_type is required",
            ));
        }
    }
    match params.get("requested_token_type")? {
        None | Some(JWT_TOKEN_TYPE) | Some(ACCESS_TOKEN_TYPE) => {}
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "requested_token_type must be urn:ietf:params:oauth:token-type:jwt",
            ));
        }
    }
    if params.get("actor_token")?.is_some() {
        return Err(OAuthError::invalid_request("actor_token is not supported"));
    }
    let target = match (params.get("audience")?, params.get("resource")?) {
        (Some(a), None) | (None, Some(a)) => a,
        (Some(a), Some(r)) if a == r => a,
        (Some(_), Some(_)) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "name one target: audience or resource",
            ));
        }
        (None, None) => {
            return Err(OAuthError::invalid_request(
                "audience (or resource) is required",
            ));
        }
    };
    if !client.exchange_audiences.iter().any(|a| a == target) {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!("this client may not request tokens for audience `{target}`"),
        ));
    }
    let record = tokens::active_access_token(state, subject)
        .await?
        .ok_or_else(|| OAuthError::invalid_grant("subject_token is not an active access token"))?;
    let scope = crate::oauth::token::narrow_scope(
        &record.scope,
        params.get("scope")?,
        "is not in the subject token",
    )?;
    let actor = (client.id != record.client_id).then_some(client.id.as_str());
    let (jwt, expires_in) =
        super::jwt::mint(state, &record, target, &scope, actor).map_err(|e| {
            tracing::error!(error = %e, "cannot sign an internal JWT");
            OAuthError::new(ErrorCode::ServerError, "internal error")
        })?;
    Ok(serde_json::json!({
        "access_token": jwt,
        "issued_token_type": JWT_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
    }))
}
