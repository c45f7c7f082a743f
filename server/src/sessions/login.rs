//! `/login`: the username/password form. On success the browser gets a
//! fresh session cookie and continues the pending authorization request.

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::app::{AppState, RequestId};
use crate::security::limits::{self, ClientIp, Rule};
use crate::security::lockout::{self, Admission, Policy};
use crate::users::{self, AuthError};
use crate::web::form::Params;
use crate::web::html::{self, escape};
use crate::web::{csrf, user_agent};

use super::{ACR_PASSWORD, Authentication};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(show).post(submit))
        .route("/login/done", get(done))
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    request: Option<String>,
}

/// Pending authorization request ids are our own random ids; anything else
/// is dropped rather than echoed into a page or a redirect.
pub fn valid_request_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let request = q.request.filter(|r| valid_request_id(r));
    form(&state, &headers, request.as_deref(), None, StatusCode::OK)
}

/// Where a login without a pending authorization request lands.
async fn done(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match super::current(&state, &headers).await {
        Ok(Some(_)) => html::page(
            StatusCode::OK,
            "Signed in",
            "<p>You are signed in. You can close this page.</p>",
        ),
        Ok(None) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response(),
        Err(e) => crate::error::AppError::from(e).into_response(),
    }
}

fn form(
    state: &AppState,
    headers: &HeaderMap,
    request: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let policy = super::cookie_policy(state);
    let (token, set_cookie) = csrf::token_for_form(&policy, headers);
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(e)
        ));
    }
    body.push_str("<form method=\"post\" action=\"/login\">");
    body.push_str(&html::hidden(csrf::CSRF_FIELD, &token));
    if let Some(r) = request {
        body.push_str(&html::hidden("request", r));
    }
    body.push_str(
        "<label for=\"username\">Username</label>\
         <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
    );
    if state.webauthn.available() {
        body.push_str(&crate::mfa::webauthn_http::passkey_login_html(
            &token, request,
        ));
    }
    let mut resp = html::page(status, "Sign in", &body);
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The one answer to every failed login — unknown user, wrong password,
/// locked or lockout-locked account — so none of them can be told apart.
fn login_failed(state: &AppState, headers: &HeaderMap, request: Option<&str>) -> Response {
    form(
        state,
        headers,
        request,
        Some("invalid username or password"),
        StatusCode::UNAUTHORIZED,
    )
}

async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    client_ip: Option<Extension<ClientIp>>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(params) = Params::parse(&body) else {
        return html::error_page(StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let request = params.field("request").filter(|r| valid_request_id(r));
    let policy = super::cookie_policy(&state);
    if !csrf::verify(&policy, &headers, params.field(csrf::CSRF_FIELD)) {
        return form(
            &state,
            &headers,
            request,
            Some("invalid or missing CSRF token: reload the page and try again"),
            StatusCode::BAD_REQUEST,
        );
    }
    let username = params.field("username").unwrap_or("");
    let password = params.field("password").unwrap_or("");
    // Abuse limits: failures from this IP, attempts on this name (known or
    // not, so a 429 says nothing about the account).
    let ip = client_ip.map_or(peer.ip(), |Extension(c)| c.0);
    let ip_key = limits::ip_key(ip);
    let now_ms = state.clock.now_ms();
    if let Err(l) = state
        .limiter
        .peek(Rule::LoginFailuresPerIp, &ip_key, now_ms)
    {
        return limits::refused(&state, l, "/login", &headers);
    }
    let name = users::normalize_username(username).ok();
    if let Some(name) = &name
        && let Err(l) = state.limiter.hit(Rule::LoginPerUser, name, now_ms)
    {
        return limits::refused(&state, l, "/login", &headers);
    }
    // The persistent lockout, per name: while locked the password is not
    // even checked, and the answer is the same as for a wrong one.
    let attempt = match &name {
        Some(name) => {
            match lockout::admit(&state, &Policy::login(&state), &format!("login:{name}")).await {
                Ok(Admission::Admitted(a)) => Some(a),
                Ok(Admission::Locked { .. }) => {
                    let _ = state.limiter.hit(Rule::LoginFailuresPerIp, &ip_key, now_ms);
                    tracing::info!(event = "login.failed", locked = true, "login failed");
                    return login_failed(&state, &headers, request);
                }
                Err(e) => return crate::error::AppError::from(e).into_response(),
            }
        }
        None => None,
    };
    let user = match users::authenticate(&state.store, username, password).await {
        Ok(user) => user,
        Err(AuthError::InvalidCredentials) => {
            let _ = state
                .limiter
                .hit(Rule::LoginFailuresPerIp, &ip_key, state.clock.now_ms());
            if let (Some(a), Some(name)) = (&attempt, &name)
                && a.lock.is_some()
            {
                let target = match crate::store::users::find_by_username(&state.store, name).await {
                    Ok(Some(u)) => format!("user:{}", u.id),
                    Ok(None) => format!("username:{name}"),
                    Err(e) => return crate::error::AppError::from(e).into_response(),
                };
                let ctx = lockout::context(request_id.map(|r| r.0.0), Some(ip.to_string()));
                if let Err(e) = a.failed(&state, &target, &ctx).await {
                    return crate::error::AppError::from(e).into_response();
                }
            }
            tracing::info!(event = "login.failed", "login failed");
            return login_failed(&state, &headers, request);
        }
        Err(AuthError::Store(e)) => return crate::error::AppError::from(e).into_response(),
    };
    if let Some(a) = &attempt
        && let Err(e) = lockout::clear(&state, &a.subject).await
    {
        return crate::error::AppError::from(e).into_response();
    }
    // Users with a second factor finish at /login/mfa.
    match crate::mfa::factors(&state.store, &user.id).await {
        Ok(f) if f.any() => {
            let ip = ip.to_string();
            let ua = user_agent(&headers);
            return crate::mfa::login::begin(&state, &user.id, request, Some(&ip), ua.as_deref())
                .await
                .unwrap_or_else(|e| crate::error::AppError::from(e).into_response());
        }
        Ok(_) => {}
        Err(e) => return crate::error::AppError::from(e).into_response(),
    }
    let current = match super::current(&state, &headers).await {
        Ok(s) => s,
        Err(e) => return crate::error::AppError::from(e).into_response(),
    };
    let auth = Authentication {
        user_id: user.id.clone(),
        amr: vec!["pwd".to_string()],
        acr: ACR_PASSWORD.to_string(),
        ip: Some(ip.to_string()),
        user_agent: user_agent(&headers),
    };
    let (session, secret) = match super::login(&state, current.as_ref(), auth).await {
        Ok(x) => x,
        Err(e) => return crate::error::AppError::from(e).into_response(),
    };
    tracing::info!(event = "login.succeeded", user_id = %user.id, sid = %session.id, "login succeeded");
    if let Some(r) = request
        && let Err(e) = crate::oauth::authorize::mark_authenticated(&state, r, &session.id).await
    {
        return crate::error::AppError::from(e).into_response();
    }
    let location = match request {
        Some(r) => format!("/authorize/resume?request={r}"),
        None => "/login/done".to_string(),
    };
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, super::set_cookie(&state, &secret));
    resp
}
