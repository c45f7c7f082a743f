//! Staff sign-in for the admin UI: Portcullis's own OIDC code flow with
//! PKCE, as a confidential first-party client, in the BFF pattern. The
//! browser only ever holds a random `HttpOnly`, `SameSite=Strict` cookie;
//! the code, the tokens and the PKCE verifier stay on the server.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{
    CLIENT_ID, FLOW_COOKIE, Page, SESSION_COOKIE, StaffSession, admin_base, cookie_policy,
    html_response, safe_return_to,
};
use crate::app::AppState;
use crate::audit::AuditContext;
use crate::crypto;
use crate::error::AppError;
use crate::keys::SigningAlg;
use crate::oauth::clients::{ClientError, NewClient};
use crate::store::admin_ui::{AdminUiSession, PendingLogin};
use crate::web::cookies::SameSite;

/// How long a started sign-in may take.
const LOGIN_TTL: i64 = 600;
/// The secret of the admin UI's client lives next to the signing keys.
const SECRET_FILE: &str = "admin-ui-client.secret";

pub fn redirect_uri(state: &AppState) -> String {
    format!("{}/auth/callback", admin_base(state))
}

/// The admin UI's client secret: read from `keys/admin-ui-client.secret`,
/// created (mode 0600) on first start. Replicas sharing the keys directory
/// share it.
fn client_secret(state: &AppState) -> std::io::Result<String> {
    let path = state.config.keys.dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is too short; delete it and restart to generate a new one",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = crypto::random_secret("pcs_");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            Ok(secret)
        }
        // Another replica won the race: use its secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_string())
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("cannot read or create the admin UI client secret: {0}")]
    Secret(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Registers the admin UI as a first-party confidential client on start-up,
/// or brings its secret and redirect URI up to date (audited either way).
pub async fn register_client(state: &AppState) -> Result<(), RegistrationError> {
    let secret = client_secret(state)?;
    let secret_hash = crypto::sha256_hex(&secret);
    let callback = redirect_uri(state);
    let ctx = AuditContext::system("admin-ui");
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let existing = crate::store::clients::find_for_update(&state.store, &mut tx, CLIENT_ID).await?;
    match existing {
        None => {
            drop(tx);
            let new = NewClient {
                name: admin_ui::PRODUCT_NAME.to_string(),
                id: Some(CLIENT_ID.to_string()),
                is_public: false,
                redirect_uris: vec![callback],
                post_logout_redirect_uris: vec![],
                grant_types: vec!["authorization_code".into()],
                scope: Some("openid".into()),
                backchannel_logout_uri: None,
                first_party: true,
                may_introspect: false,
                exchange_audiences: vec![],
                id_token_alg: Some("ES256".into()),
            };
            match crate::oauth::clients::register_with_secret(
                &state.store,
                state.clock.as_ref(),
                &ctx,
                new,
                &secret_hash,
            )
            .await
            {
                // A replica starting at the same moment registered it.
                Ok(_) | Err(ClientError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Some(client) => {
            let secret_current = client
                .secret_hash
                .as_deref()
                .is_some_and(|h| bool::from(h.as_bytes().ct_eq(secret_hash.as_bytes())));
            let uri_known = client.redirect_uris.contains(&callback);
            if secret_current && uri_known {
                return Ok(());
            }
            let before = client.audit_view();
            let mut uris = client.redirect_uris.clone();
            if !uri_known {
                uris.push(callback);
            }
            crate::store::clients::update_settings(&mut tx, CLIENT_ID, &uris, &client.scopes, now)
                .await?;
            if !secret_current {
                crate::store::clients::set_secret_hash(&mut tx, CLIENT_ID, &secret_hash, now)
                    .await?;
            }
            let mut after = client.clone();
            after.redirect_uris = uris;
            crate::audit::record(
                &state.store,
                &mut tx,
                state.clock.now_ms(),
                &ctx,
                crate::audit::AuditEvent::new("client.update", format!("client:{CLIENT_ID}"))
                    .reason(
                        Some("admin UI client brought up to date on start-up".into()),
                        None,
                    )
                    .before(before)
                    .after(serde_json::json!({
                        "client": after.audit_view(),
                        "secret_replaced": !secret_current,
                    })),
            )
            .await?;
            tx.commit().await.map_err(crate::store::StoreError::from)?;
            state.introspection_cache.clear();
            Ok(())
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    /// Ask for a fresh sign-in with a second factor (step-up).
    step_up: Option<String>,
}

/// Starts the code flow: state, nonce and PKCE verifier are kept
/// server-side under a short-lived flow cookie.
pub async fn login(
    State(state): State<AppState>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, Page> {
    let now = state.clock.now();
    let flow = crypto::random_secret("");
    let pending = PendingLogin {
        oauth_state: crypto::random_id(),
        nonce: crypto::random_id(),
        pkce_verifier: crypto::random_secret(""),
        return_to: safe_return_to(q.return_to.as_deref()),
        expires_at: now + LOGIN_TTL,
    };
    crate::store::admin_ui::insert_login(&state.store, &crypto::sha256_hex(&flow), &pending, now)
        .await
        .map_err(|e| Page::error(None, AppError::from(e)))?;
    let challenge = crate::oauth::pkce::challenge_s256(&pending.pkce_verifier);
    let mut url = url::Url::parse(&format!("{}/authorize", state.config.issuer))
        .map_err(|e| Page::error(None, AppError::Internal(e.to_string())))?;
    {
        let mut qp = url.query_pairs_mut();
        qp.append_pair("response_type", "code")
            .append_pair("client_id", CLIENT_ID)
            .append_pair("redirect_uri", &redirect_uri(&state))
            .append_pair("scope", "openid")
            .append_pair("state", &pending.oauth_state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            // Staff always sign in with a second factor.
            .append_pair("acr_values", crate::mfa::ACR_MFA);
        if q.step_up.as_deref() == Some("1") {
            qp.append_pair("max_age", "0");
        }
    }
    let policy = cookie_policy(&state);
    // Lax: the flow cookie must come back on the top-level redirect from
    // the sign-in server, which may be on another site.
    let cookie = policy.set(FLOW_COOKIE, &flow, Some(LOGIN_TTL), SameSite::Lax);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        [(header::SET_COOKIE, cookie)],
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    id_token: String,
    expires_in: i64,
}

fn sign_in_again(message: &str) -> Page {
    Page::message(
        StatusCode::BAD_REQUEST,
        None,
        "Sign-in failed",
        message,
        Some(("/auth/login", "Sign in again")),
    )
}

/// The redirect back from the sign-in server: checks state and issuer,
/// redeems the code with the client secret and the PKCE verifier, checks
/// the ID token's signature, audience and nonce, and opens a BFF session.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, Page> {
    let policy = cookie_policy(&state);
    let flow = policy.get(&headers, FLOW_COOKIE).ok_or_else(|| {
        sign_in_again(
            "This sign-in was not started in this browser, or it took longer than 10 minutes.",
        )
    })?;
    let pending = crate::store::admin_ui::take_login(&state.store, &crypto::sha256_hex(&flow))
        .await
        .map_err(|e| Page::error(None, AppError::from(e)))?
        .filter(|p| p.expires_at >= state.clock.now())
        .ok_or_else(|| sign_in_again("This sign-in has expired or was already completed."))?;
    let state_ok = q
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(pending.oauth_state.as_bytes())));
    if !state_ok {
        return Err(sign_in_again(
            "The sign-in answer does not belong to this browser's sign-in (state mismatch).",
        ));
    }
    if q.iss.as_deref() != Some(state.config.issuer.as_str()) {
        return Err(sign_in_again(
            "The sign-in answer came from an unexpected issuer.",
        ));
    }
    if let Some(error) = q.error {
        let detail = q.error_description.unwrap_or_default();
        return Err(Page::message(
            StatusCode::FORBIDDEN,
            None,
            "Sign-in refused",
            &format!("The sign-in server answered {error}: {detail}"),
            Some(("/auth/login", "Try again")),
        ));
    }
    let code = q
        .code
        .ok_or_else(|| sign_in_again("The sign-in answer carries no code."))?;
    let secret =
        client_secret(&state).map_err(|e| Page::error(None, AppError::Internal(e.to_string())))?;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("redirect_uri", &redirect_uri(&state))
        .append_pair("code_verifier", &pending.pkce_verifier)
        .finish();
    let answer = state
        .http_client
        .post(format!("{}/token", state.config.issuer))
        .basic_auth(CLIENT_ID, Some(secret))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|e| Page::error(None, AppError::Internal(format!("token request: {e}"))))?;
    if !answer.status().is_success() {
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        tracing::warn!(%status, body = %crate::telemetry::redact::redact_text(&text), "admin UI code redemption refused");
        return Err(sign_in_again(
            "The sign-in server refused to redeem the code.",
        ));
    }
    let text = answer
        .text()
        .await
        .map_err(|e| Page::error(None, AppError::Internal(format!("token answer: {e}"))))?;
    let tokens: TokenAnswer = serde_json::from_str(&text)
        .map_err(|e| Page::error(None, AppError::Internal(format!("token answer: {e}"))))?;
    verify_id_token(&state, &tokens.id_token, &pending.nonce)?;
    let record = crate::tokens::active_access_token(&state, &tokens.access_token)
        .await
        .map_err(|e| Page::error(None, AppError::from(e)))?
        .ok_or_else(|| sign_in_again("The new access token is not active."))?;
    let staff = crate::admin_api::Staff::from_access_token(&state, &record, None, None)
        .await
        .map_err(|e| Page::error(None, e))?;
    if staff.permissions.is_empty() {
        return Err(Page::message(
            StatusCode::FORBIDDEN,
            None,
            "Not a staff account",
            &format!(
                "{} holds no staff role. Ask a security administrator for one.",
                staff.username
            ),
            None,
        ));
    }
    let now = state.clock.now();
    let session_secret = crypto::random_secret("");
    let session = AdminUiSession {
        id_hash: crypto::sha256_hex(&session_secret),
        user_id: staff.user_id.clone(),
        access_token_hash: crypto::sha256_hex(&tokens.access_token),
        csrf_token: crypto::random_id(),
        created_at: now,
        expires_at: now + tokens.expires_in.clamp(0, 24 * 3600),
    };
    crate::store::admin_ui::insert_session(&state.store, &session)
        .await
        .map_err(|e| Page::error(None, AppError::from(e)))?;
    // A previous admin session of this browser is replaced.
    if let Some(old) = policy.get(&headers, SESSION_COOKIE) {
        let _ =
            crate::store::admin_ui::delete_session(&state.store, &crypto::sha256_hex(&old)).await;
    }
    // A page that moves on by itself (no script): the Strict cookie is sent
    // on the next request, which this site starts.
    let target = pending.return_to;
    let body = admin_ui::message_page(
        None,
        "Signed in",
        &format!("Welcome, {}.", staff.username),
        Some((&target, "Continue")),
    )
    .replace(
        "<head>",
        &format!(
            "<head><meta http-equiv=\"refresh\" content=\"0;url={}\">",
            crate::web::html::escape(&target)
        ),
    );
    let mut resp = html_response(StatusCode::OK, body);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        policy.set(SESSION_COOKIE, &session_secret, None, SameSite::Strict),
    );
    h.append(header::SET_COOKIE, policy.clear(FLOW_COOKIE));
    Ok(resp)
}

fn verify_id_token(state: &AppState, id_token: &str, nonce: &str) -> Result<(), Page> {
    let claims = state
        .keys
        .current()
        .verify(
            id_token,
            &[SigningAlg::ES256, SigningAlg::RS256],
            "JWT",
            state.clock.now(),
            state.config.retired_key_retention(),
        )
        .map_err(|_| sign_in_again("The ID token's signature does not verify."))?;
    let aud_ok = claims.audience().is_some_and(|a| a.contains(&CLIENT_ID));
    let nonce_ok = claims
        .claim("nonce")
        .and_then(|v| v.as_str())
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())));
    if claims.issuer() != Some(state.config.issuer.as_str()) || !aud_ok || !nonce_ok {
        return Err(sign_in_again(
            "The ID token was not issued for this sign-in (issuer, audience or nonce).",
        ));
    }
    Ok(())
}

/// Sign-out ends the admin UI session and the sign-in server's session
/// behind it (which revokes its tokens).
pub async fn logout(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Page> {
    session.check_post(&state, &headers, &body)?;
    crate::store::admin_ui::delete_session(&state.store, &session.id_hash)
        .await
        .map_err(|e| Page::error(None, AppError::from(e)))?;
    if let Some(sid) = &session.staff.session_id {
        crate::sessions::end::end_session(
            &state,
            sid,
            &crate::sessions::end::Ender::logout(&session.staff.user_id),
            "signed out of the admin UI",
            None,
            &session.staff.audit_ctx(),
        )
        .await
        .map_err(|e| Page::error(None, AppError::from(e)))?;
    }
    let body = admin_ui::message_page(
        None,
        "Signed out",
        "You have signed out of the admin UI and of the sign-in server.",
        Some(("/auth/login", "Sign in again")),
    );
    let mut resp = html_response(StatusCode::OK, body);
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_policy(&state).clear(SESSION_COOKIE),
    );
    Ok(resp)
}
