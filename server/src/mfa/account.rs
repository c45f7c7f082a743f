//! `/account/mfa`: enrol and remove an authenticator app, regenerate
//! recovery codes, list security keys (registered, renamed and removed
//! through `mfa::webauthn_http`). Changing factors when one exists needs a
//! second factor used within the last five minutes. HTML, or JSON with
//! `Accept: application/json`; CSRF token on every POST.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;

use crate::app::AppState;
use crate::error::AppError;
use crate::sessions::Session;
use crate::sessions::account::{check_csrf, require_session, self_ctx, wants_json};
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html::{self, escape};

use super::MfaError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account/mfa", get(overview))
        .route("/account/mfa/totp", post(totp_start))
        .route("/account/mfa/totp/confirm", post(totp_confirm))
        .route("/account/mfa/totp/remove", post(totp_remove))
        .route("/account/mfa/recovery-codes", post(recovery_regenerate))
}

fn mfa_error(e: MfaError) -> Response {
    match e {
        MfaError::InvalidCode => {
            AppError::BadRequest("the code is not valid".into()).into_response()
        }
        MfaError::LockedOut(secs) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(
                    serde_json::json!({"error": "too_many_requests", "message": e.to_string()}),
                ),
            )
                .into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        MfaError::AlreadyEnrolled => AppError::Conflict(e.to_string()).into_response(),
        MfaError::NotEnrolling => AppError::Conflict(e.to_string()).into_response(),
        MfaError::StepUpRequired => AppError::Forbidden(e.to_string()).into_response(),
        MfaError::Store(s) => AppError::from(s).into_response(),
    }
}

/// Session, parsed form and CSRF check for every POST here.
async fn guard(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Session, Params), Response> {
    let session = require_session(state, headers).await?;
    let params = Params::parse(body).unwrap_or_default();
    check_csrf(state, headers, &params).map_err(IntoResponse::into_response)?;
    Ok((session, params))
}

/// Changing factors when one exists needs a fresh second factor.
async fn require_fresh_if_enrolled(state: &AppState, session: &Session) -> Result<(), Response> {
    let factors = super::factors(&state.store, &session.user_id)
        .await
        .map_err(|e| AppError::from(e).into_response())?;
    if factors.any() && !super::session_is_fresh(state, session) {
        return Err(mfa_error(MfaError::StepUpRequired));
    }
    Ok(())
}

async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let factors = match super::factors(&state.store, &session.user_id).await {
        Ok(f) => f,
        Err(e) => return AppError::from(e).into_response(),
    };
    let (keys, passkey_login) =
        match super::webauthn_http::account_json(&state, &session.user_id).await {
            Ok(x) => x,
            Err(e) => return AppError::from(e).into_response(),
        };
    let (token, cookie) = csrf::token_for_form(&crate::sessions::cookie_policy(&state), &headers);
    let mut resp = if wants_json(&headers) {
        axum::Json(serde_json::json!({
            "factors": factors,
            "credentials": keys,
            "passkey_login": passkey_login,
            "webauthn": {
                "available": state.webauthn.available(),
                "user_verification": state.webauthn.user_verification().as_str(),
            },
            "csrf_token": token,
        }))
        .into_response()
    } else {
        let totp = if factors.totp {
            format!(
                "<p>Authenticator app: <strong>active</strong></p><form method=\"post\" action=\"/account/mfa/totp/remove\">{}\
                 <button type=\"submit\" class=\"secondary\">Remove authenticator app</button></form>",
                html::hidden(csrf::CSRF_FIELD, &token)
            )
        } else {
            format!(
                "<p>Authenticator app: not set up</p><form method=\"post\" action=\"/account/mfa/totp\">{}\
                 <button type=\"submit\">Set up an authenticator app</button></form>",
                html::hidden(csrf::CSRF_FIELD, &token)
            )
        };
        let body = format!(
            "{totp}{}<p>Recovery codes left: {}</p><form method=\"post\" action=\"/account/mfa/recovery-codes\">{}\
             <button type=\"submit\" class=\"secondary\">New recovery codes</button></form>",
            super::webauthn_http::account_html(&state, &token, &keys, passkey_login),
            factors.recovery_codes_left,
            html::hidden(csrf::CSRF_FIELD, &token)
        );
        html::page(StatusCode::OK, "Second factors", &body)
    };
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn totp_start(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (session, params) = match guard(&state, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = require_fresh_if_enrolled(&state, &session).await {
        return r;
    }
    let user = match crate::store::users::find_by_id(&state.store, &session.user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return AppError::Unauthorized.into_response(),
        Err(e) => return AppError::from(e).into_response(),
    };
    let enrolment = match super::totp::start(&state, &user.id, &user.username).await {
        Ok(e) => e,
        Err(e) => return mfa_error(e),
    };
    if wants_json(&headers) {
        return axum::Json(serde_json::json!({
            "secret": enrolment.secret,
            "otpauth_uri": enrolment.otpauth_uri,
            "qr_svg_base64": base64::engine::general_purpose::STANDARD.encode(&enrolment.qr_svg),
        }))
        .into_response();
    }
    let token = params.field(csrf::CSRF_FIELD).unwrap_or_default();
    let img = base64::engine::general_purpose::STANDARD.encode(&enrolment.qr_svg);
    let body = format!(
        "<p>Scan this code with your authenticator app:</p>\
         <p><img src=\"data:image/svg+xml;base64,{img}\" alt=\"QR code for your authenticator app\" width=\"200\" height=\"200\"></p>\
         <p>Or enter this key by hand: <code>{}</code></p><p><small>{}</small></p>\
         <form method=\"post\" action=\"/account/mfa/totp/confirm\">{}\
         <label for=\"code\">Code shown by the app</label>\
         <input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required>\
         <button type=\"submit\">Activate</button></form>",
        escape(&enrolment.secret),
        escape(&enrolment.otpauth_uri),
        html::hidden(csrf::CSRF_FIELD, token)
    );
    html::page(StatusCode::OK, "Set up an authenticator app", &body)
}

async fn totp_confirm(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (session, params) = match guard(&state, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ctx = self_ctx(&session, &headers);
    let code = params.field("code").unwrap_or("");
    if let Err(e) = super::totp::confirm(&state, &session.user_id, code, &ctx).await {
        return mfa_error(e);
    }
    // The first factor comes with a set of recovery codes, shown once.
    let left = crate::store::mfa::recovery_codes_left(&state.store, &session.user_id)
        .await
        .unwrap_or(0);
    let codes = if left == 0 {
        match super::recovery::regenerate(&state, &session.user_id, &ctx).await {
            Ok(c) => c,
            Err(e) => return AppError::from(e).into_response(),
        }
    } else {
        Vec::new()
    };
    if wants_json(&headers) {
        return axum::Json(serde_json::json!({"totp": "active", "recovery_codes": codes}))
            .into_response();
    }
    html::page(
        StatusCode::OK,
        "Authenticator app active",
        &recovery_html(&codes),
    )
}

fn recovery_html(codes: &[String]) -> String {
    if codes.is_empty() {
        return "<p>Your authenticator app is active.</p>".into();
    }
    let list: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", escape(c)))
        .collect();
    format!(
        "<p>Keep these recovery codes somewhere safe. Each works once, and they are shown only now.</p><ul>{list}</ul>"
    )
}

async fn totp_remove(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (session, _) = match guard(&state, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !super::session_is_fresh(&state, &session) {
        return mfa_error(MfaError::StepUpRequired);
    }
    match super::totp::remove(&state, &session.user_id, &self_ctx(&session, &headers)).await {
        Ok(true) if wants_json(&headers) => {
            axum::Json(serde_json::json!({"totp": "removed"})).into_response()
        }
        Ok(true) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/account/mfa")]).into_response(),
        Ok(false) => AppError::NotFound("no authenticator app is set up".into()).into_response(),
        Err(e) => mfa_error(e),
    }
}

async fn recovery_regenerate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, _) = match guard(&state, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match super::factors(&state.store, &session.user_id).await {
        Ok(f) if !f.any() => {
            return AppError::Conflict(
                "set up a second factor before creating recovery codes".into(),
            )
            .into_response();
        }
        Ok(_) => {}
        Err(e) => return AppError::from(e).into_response(),
    }
    if !super::session_is_fresh(&state, &session) {
        return mfa_error(MfaError::StepUpRequired);
    }
    let codes =
        match super::recovery::regenerate(&state, &session.user_id, &self_ctx(&session, &headers))
            .await
        {
            Ok(c) => c,
            Err(e) => return AppError::from(e).into_response(),
        };
    if wants_json(&headers) {
        return axum::Json(serde_json::json!({"recovery_codes": codes})).into_response();
    }
    html::page(StatusCode::OK, "New recovery codes", &recovery_html(&codes))
}
