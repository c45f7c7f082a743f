//! `/login/mfa`: the second step of a login for users with a second factor.
//! The password step leaves a short-lived, single-use login challenge
//! (cookie `pc_mfa`, only its hash stored); a valid TOTP or recovery code
//! turns it into a session with `amr` `["pwd", "otp"]` and the MFA `acr`.
//! A security key (JSON under `/login/webauthn/…`, see
//! `mfa::webauthn_http`) finishes through the same [`complete`].

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

use crate::app::AppState;
use crate::crypto;
use crate::error::AppError;
use crate::security::limits::{self, ClientIp, Rule};
use crate::sessions::{self, Authentication};
use crate::store::StoreError;
use crate::web::cookies::SameSite;
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html::{self, escape};

use super::{ACR_MFA, MfaError};

pub const MFA_COOKIE: &str = "pc_mfa";
const CHALLENGE_TTL_SECS: i64 = 300;

pub fn router() -> Router<AppState> {
    Router::new().route("/login/mfa", get(show).post(submit))
}

/// Called by the password step: records the challenge and answers with a
/// redirect to `/login/mfa` that sets the cookie.
pub async fn begin(
    state: &AppState,
    user_id: &str,
    request: Option<&str>,
    ip: Option<&str>,
    user_agent: Option<&str>,
) -> Result<Response, StoreError> {
    let secret = crypto::random_secret("pcmfa_");
    let now = state.clock.now();
    crate::store::mfa::insert_login_challenge(
        &state.store,
        &crypto::sha256_hex(&secret),
        user_id,
        request,
        ip,
        user_agent,
        now,
        now + CHALLENGE_TTL_SECS,
    )
    .await?;
    let policy = sessions::cookie_policy(state);
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login/mfa")]).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        policy.set(MFA_COOKIE, &secret, Some(CHALLENGE_TTL_SECS), SameSite::Lax),
    );
    Ok(resp)
}

/// A pending login: the password was accepted, a second factor is due.
pub(crate) struct Challenge {
    /// SHA-256 of the `pc_mfa` cookie secret.
    pub(crate) hash: String,
    pub(crate) user_id: String,
    request: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
}

/// The live login challenge named by the request's `pc_mfa` cookie.
pub(crate) async fn challenge(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Challenge>, StoreError> {
    let Some(secret) = sessions::cookie_policy(state).get(headers, MFA_COOKIE) else {
        return Ok(None);
    };
    if !secret.starts_with("pcmfa_") || secret.len() > 100 {
        return Ok(None);
    }
    let hash = crypto::sha256_hex(&secret);
    let found =
        crate::store::mfa::find_login_challenge(&state.store, &hash, state.clock.now()).await?;
    Ok(found.map(|(user_id, request, ip, user_agent)| Challenge {
        hash,
        user_id,
        request,
        ip,
        user_agent,
    }))
}

fn expired() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()
}

async fn show(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match challenge(&state, &headers).await {
        Ok(Some(c)) => form(&state, &headers, &c, None, StatusCode::OK).await,
        Ok(None) => expired(),
        Err(e) => AppError::from(e).into_response(),
    }
}

async fn form(
    state: &AppState,
    headers: &HeaderMap,
    c: &Challenge,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let factors = super::factors(&state.store, &c.user_id).await.ok();
    let (token, cookie) = csrf::token_for_form(&sessions::cookie_policy(state), headers);
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(e)
        ));
    }
    if factors.is_some_and(|f| f.webauthn > 0) && state.webauthn.available() {
        body.push_str(&super::webauthn_http::second_factor_html(&token));
    }
    if factors.is_some_and(|f| f.totp) {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/login/mfa\">{}\
             <label for=\"code\">Code from your authenticator app</label>\
             <input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
             <button type=\"submit\">Verify</button></form>",
            html::hidden(csrf::CSRF_FIELD, &token)
        ));
    }
    body.push_str(&format!(
        "<details><summary>Use a recovery code</summary><form method=\"post\" action=\"/login/mfa\">{}\
         <label for=\"recovery_code\">Recovery code</label>\
         <input type=\"text\" id=\"recovery_code\" name=\"recovery_code\" autocomplete=\"off\" required>\
         <button type=\"submit\" class=\"secondary\">Use recovery code</button></form></details>",
        html::hidden(csrf::CSRF_FIELD, &token)
    ));
    let mut resp = html::page(status, "Second factor", &body);
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn submit(
    State(state): State<AppState>,
    client_ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match challenge(&state, &headers).await {
        Ok(Some(c)) => c,
        Ok(None) => return expired(),
        Err(e) => return AppError::from(e).into_response(),
    };
    // Abuse limits: failures from this IP, attempts on this user.
    let ip_key = client_ip.map(|Extension(c)| limits::ip_key(c.0));
    let now_ms = state.clock.now_ms();
    if let Some(key) = &ip_key
        && let Err(l) = state.limiter.peek(Rule::LoginFailuresPerIp, key, now_ms)
    {
        return limits::refused(&state, l, "/login/mfa", &headers);
    }
    if let Err(l) = state
        .limiter
        .hit(Rule::LoginPerUser, &format!("id:{}", c.user_id), now_ms)
    {
        return limits::refused(&state, l, "/login/mfa", &headers);
    }
    let params = Params::parse(&body).unwrap_or_default();
    if !csrf::verify(
        &sessions::cookie_policy(&state),
        &headers,
        params.field(csrf::CSRF_FIELD),
    ) {
        return form(
            &state,
            &headers,
            &c,
            Some("invalid or missing CSRF token: reload the page and try again"),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let result = match (params.field("code"), params.field("recovery_code")) {
        (Some(code), None) => super::totp::verify(&state, &c.user_id, code).await,
        (None, Some(code)) => super::recovery::redeem(&state, &c.user_id, code).await,
        _ => Err(MfaError::InvalidCode),
    };
    if let (Err(MfaError::InvalidCode | MfaError::LockedOut(_)), Some(key)) = (&result, &ip_key) {
        let _ = state
            .limiter
            .hit(Rule::LoginFailuresPerIp, key, state.clock.now_ms());
    }
    match result {
        Ok(()) => {}
        Err(MfaError::InvalidCode) => {
            return form(
                &state,
                &headers,
                &c,
                Some("invalid code"),
                StatusCode::UNAUTHORIZED,
            )
            .await;
        }
        Err(MfaError::LockedOut(secs)) => {
            let mut resp = form(
                &state,
                &headers,
                &c,
                Some(&format!(
                    "too many wrong codes; try again in {secs} seconds"
                )),
                StatusCode::TOO_MANY_REQUESTS,
            )
            .await;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
        Err(MfaError::Store(e)) => return AppError::from(e).into_response(),
        Err(e) => return AppError::BadRequest(e.to_string()).into_response(),
    }
    match complete(&state, &headers, &c, "otp").await {
        Ok(Some(done)) => {
            let mut resp =
                (StatusCode::SEE_OTHER, [(header::LOCATION, done.location)]).into_response();
            for cookie in done.cookies {
                resp.headers_mut().append(header::SET_COOKIE, cookie);
            }
            resp
        }
        Ok(None) => expired(),
        Err(e) => AppError::from(e).into_response(),
    }
}

/// A login that succeeded: where the browser goes next and the cookies to set.
pub(crate) struct Completed {
    pub(crate) location: String,
    pub(crate) cookies: Vec<HeaderValue>,
}

/// Turns a login challenge whose second factor was verified into a session
/// with `amr` `["pwd", method]` and the MFA `acr`. The challenge is
/// single-use: `None` if it was already used (or expired) meanwhile, so a
/// second submission cannot mint another session.
pub(crate) async fn complete(
    state: &AppState,
    headers: &HeaderMap,
    c: &Challenge,
    method: &str,
) -> Result<Option<Completed>, StoreError> {
    let mut tx = state.store.begin().await?;
    let consumed =
        crate::store::mfa::consume_login_challenge(&mut tx, &c.hash, state.clock.now()).await?;
    tx.commit().await?;
    if !consumed {
        return Ok(None);
    }
    let auth = Authentication {
        user_id: c.user_id.clone(),
        amr: vec!["pwd".to_string(), method.to_string()],
        acr: ACR_MFA.to_string(),
        ip: c.ip.clone(),
        user_agent: c.user_agent.clone(),
    };
    let mut done = establish(state, headers, auth, c.request.as_deref()).await?;
    done.cookies
        .push(sessions::cookie_policy(state).clear(MFA_COOKIE));
    Ok(Some(done))
}

/// Starts (or re-authenticates) the browser's session after a login with a
/// second factor, and says where to continue: the pending authorization
/// request, or `/login/done`.
pub(crate) async fn establish(
    state: &AppState,
    headers: &HeaderMap,
    auth: Authentication,
    request: Option<&str>,
) -> Result<Completed, StoreError> {
    let current = sessions::current(state, headers).await.ok().flatten();
    let user_id = auth.user_id.clone();
    let amr = auth.amr.join(" ");
    let (session, secret) = sessions::login(state, current.as_ref(), auth).await?;
    tracing::info!(event = "login.succeeded", user_id = %user_id, sid = %session.id, mfa = true, amr = %amr, "login succeeded with a second factor");
    if let Some(r) = request {
        crate::oauth::authorize::mark_authenticated(state, r, &session.id).await?;
    }
    let location = match request {
        Some(r) => format!("/authorize/resume?request={r}"),
        None => "/login/done".to_string(),
    };
    Ok(Completed {
        location,
        cookies: vec![sessions::set_cookie(state, &secret)],
    })
}
