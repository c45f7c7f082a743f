//! Self-service at `/account`: my sessions (list, end one, end all others)
//! and my password. HTML by default, JSON with `Accept: application/json`;
//! every POST needs the CSRF token (form field `csrf_token` or header
//! `X-CSRF-Token`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::AppState;
use crate::audit::{Actor, ActorKind, AuditContext};
use crate::error::AppError;
use crate::store::StoreError;
use crate::users::{self, AuthError};
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html::{self, escape};

use super::end::{self, Ender};
use super::{SESSION_COOKIE, Session};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account", get(index))
        .route("/account/sessions", get(list))
        .route("/account/sessions/end-others", post(end_others))
        .route("/account/sessions/{id}/end", post(end_one))
        .route(
            "/account/password",
            get(password_form).post(change_password),
        )
}

pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The caller's live session, or the answer to send instead (401 JSON or a
/// redirect to the login page).
pub async fn require_session(state: &AppState, headers: &HeaderMap) -> Result<Session, Response> {
    match super::current(state, headers).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) if wants_json(headers) => Err(AppError::Unauthorized.into_response()),
        Ok(None) => Err((StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()),
        Err(e) => Err(AppError::from(e).into_response()),
    }
}

/// CSRF check for account POSTs: form field or `X-CSRF-Token` header.
pub fn check_csrf(state: &AppState, headers: &HeaderMap, params: &Params) -> Result<(), AppError> {
    let header_token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let submitted = params.field(csrf::CSRF_FIELD).or(header_token);
    if csrf::verify(&super::cookie_policy(state), headers, submitted) {
        Ok(())
    } else {
        Err(AppError::Forbidden("invalid or missing CSRF token".into()))
    }
}

/// The audit actor for a person acting on their own account.
pub fn self_ctx(session: &Session, headers: &HeaderMap) -> AuditContext {
    AuditContext {
        actor: Actor {
            kind: ActorKind::User,
            id: session.user_id.clone(),
            session: Some(session.id.clone()),
        },
        request_id: headers
            .get(&crate::app::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ip: None,
    }
}

fn with_cookie(mut resp: Response, cookie: Option<axum::http::HeaderValue>) -> Response {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_session(&state, &headers).await {
        return r;
    }
    html::page(
        StatusCode::OK,
        "Your account",
        "<ul><li><a href=\"/account/sessions\">Where you are signed in</a></li>\
         <li><a href=\"/account/consents\">Applications with access</a></li>\
         <li><a href=\"/account/password\">Change password</a></li></ul>",
    )
}

fn ended_text(s: &Session) -> String {
    let by = match s.ended_by.as_deref() {
        Some("support") => "ended by support",
        Some("user") => "ended by you",
        Some("logout") => "signed out",
        Some("system") => "expired",
        _ => "ended",
    };
    match &s.end_reason {
        Some(r) if s.ended_by.as_deref() != Some("logout") => format!("{by}: {r}"),
        _ => by.to_string(),
    }
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sessions =
        match crate::store::sessions::list_for_user(&state.store, &session.user_id, 100).await {
            Ok(s) => s,
            Err(e) => return AppError::from(e).into_response(),
        };
    let (token, cookie) = csrf::token_for_form(&super::cookie_policy(&state), &headers);
    if wants_json(&headers) {
        let items: Vec<_> = sessions.iter().map(|s| s.view(Some(&session.id))).collect();
        let body = serde_json::json!({ "items": items, "csrf_token": token });
        return with_cookie(axum::Json(body).into_response(), cookie);
    }
    let mut rows = String::new();
    for s in &sessions {
        let v = s.view(Some(&session.id));
        let label = if s.id == session.id {
            " <strong>(this device)</strong>"
        } else {
            ""
        };
        let state_text = if s.is_live() {
            format!(
                "active, last seen {} <form method=\"post\" action=\"/account/sessions/{}/end\">{}\
                 <button type=\"submit\" class=\"secondary\">End</button></form>",
                escape(v["last_seen_at"].as_str().unwrap_or("")),
                escape(&s.id),
                html::hidden(csrf::CSRF_FIELD, &token)
            )
        } else {
            escape(&ended_text(s))
        };
        rows.push_str(&format!(
            "<li>{}{label} — {} — {}</li>",
            escape(v["device"].as_str().unwrap_or("")),
            escape(s.ip.as_deref().unwrap_or("unknown IP")),
            state_text
        ));
    }
    let body = format!(
        "<ul class=\"sessions\">{rows}</ul>\
         <form method=\"post\" action=\"/account/sessions/end-others\">{}\
         <button type=\"submit\">Sign out everywhere else</button></form>",
        html::hidden(csrf::CSRF_FIELD, &token)
    );
    with_cookie(
        html::page(StatusCode::OK, "Where you are signed in", &body),
        cookie,
    )
}

async fn end_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = Params::parse(&body).unwrap_or_default();
    if let Err(e) = check_csrf(&state, &headers, &params) {
        return e.into_response();
    }
    // Only the caller's own sessions; anything else looks like "not found".
    let target = match crate::store::sessions::find(&state.store, &id).await {
        Ok(Some(s)) if s.user_id == session.user_id => s,
        Ok(_) => return AppError::NotFound("no such session".into()).into_response(),
        Err(e) => return AppError::from(e).into_response(),
    };
    let ctx = self_ctx(&session, &headers);
    let result = end::end_session(
        &state,
        &target.id,
        &Ender::user(&session.user_id),
        "ended by the user",
        None,
        &ctx,
    )
    .await;
    if let Err(e) = result {
        return AppError::from(e).into_response();
    }
    let clear =
        (target.id == session.id).then(|| super::cookie_policy(&state).clear(SESSION_COOKIE));
    if wants_json(&headers) {
        return with_cookie(
            axum::Json(serde_json::json!({"ended": target.id})).into_response(),
            clear,
        );
    }
    let to = if clear.is_some() {
        "/login"
    } else {
        "/account/sessions"
    };
    with_cookie(
        (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response(),
        clear,
    )
}

async fn end_others(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = Params::parse(&body).unwrap_or_default();
    if let Err(e) = check_csrf(&state, &headers, &params) {
        return e.into_response();
    }
    let ctx = self_ctx(&session, &headers);
    let ended = end::end_all_for_user(
        &state,
        &session.user_id,
        Some(&session.id),
        &Ender::user(&session.user_id),
        "ended by the user (sign out everywhere else)",
        None,
        &ctx,
    )
    .await;
    match ended {
        Ok(e) if wants_json(&headers) => {
            axum::Json(serde_json::json!({"ended": e.len()})).into_response()
        }
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/account/sessions")],
        )
            .into_response(),
        Err(e) => AppError::from(e).into_response(),
    }
}

async fn password_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_session(&state, &headers).await {
        return r;
    }
    let (token, cookie) = csrf::token_for_form(&super::cookie_policy(&state), &headers);
    let body = format!(
        "<form method=\"post\" action=\"/account/password\">{}\
         <label for=\"current_password\">Current password</label>\
         <input type=\"password\" id=\"current_password\" name=\"current_password\" autocomplete=\"current-password\" required>\
         <label for=\"new_password\">New password (at least 12 characters)</label>\
         <input type=\"password\" id=\"new_password\" name=\"new_password\" autocomplete=\"new-password\" required>\
         <button type=\"submit\">Change password</button></form>",
        html::hidden(csrf::CSRF_FIELD, &token)
    );
    with_cookie(html::page(StatusCode::OK, "Change password", &body), cookie)
}

/// A password change ends every other session and re-keys this one.
async fn change_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = Params::parse(&body).unwrap_or_default();
    if let Err(e) = check_csrf(&state, &headers, &params) {
        return e.into_response();
    }
    let current = params.field("current_password").unwrap_or("");
    let new = params.field("new_password").unwrap_or("");
    let ctx = self_ctx(&session, &headers);
    let result = async {
        let user = crate::store::users::find_by_id(&state.store, &session.user_id)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        users::authenticate(&state.store, &user.username, current).await?;
        Ok::<_, AuthError>(user)
    }
    .await;
    let user = match result {
        Ok(u) => u,
        Err(AuthError::InvalidCredentials) => {
            return AppError::Forbidden("the current password is wrong".into()).into_response();
        }
        Err(AuthError::Store(e)) => return AppError::from(e).into_response(),
    };
    match users::change_password(&state.store, state.clock.as_ref(), &ctx, &user.id, new).await {
        Ok(()) => {}
        Err(users::UserError::WeakPassword(why)) => {
            return AppError::BadRequest(format!("password too weak: {why}")).into_response();
        }
        Err(e) => return AppError::Internal(e.to_string()).into_response(),
    }
    let ended = end::end_all_for_user(
        &state,
        &session.user_id,
        Some(&session.id),
        &Ender::user(&session.user_id),
        "password changed",
        None,
        &ctx,
    )
    .await;
    let ended = match ended {
        Ok(e) => e.len(),
        Err(e) => return AppError::from(e).into_response(),
    };
    // Privilege change: a new cookie secret for this session.
    let rekeyed = rekey(&state, &session).await;
    let cookie = match rekeyed {
        Ok(secret) => Some(super::set_cookie(&state, &secret)),
        Err(e) => return AppError::from(e).into_response(),
    };
    if wants_json(&headers) {
        return with_cookie(
            axum::Json(serde_json::json!({"changed": true, "sessions_ended": ended}))
                .into_response(),
            cookie,
        );
    }
    with_cookie(
        html::page(
            StatusCode::OK,
            "Password changed",
            &format!("<p>Your password was changed. {ended} other session(s) were signed out.</p>"),
        ),
        cookie,
    )
}

async fn rekey(state: &AppState, session: &Session) -> Result<String, StoreError> {
    let auth = super::Authentication {
        user_id: session.user_id.clone(),
        amr: session.amr.clone(),
        acr: session.acr.clone(),
        ip: session.ip.clone(),
        user_agent: session.user_agent.clone(),
    };
    let (_, secret) = super::login(state, Some(session), auth).await?;
    Ok(secret)
}
