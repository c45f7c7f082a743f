//! RP-initiated logout (OIDC RP-Initiated Logout 1.0) at `/logout`.
//!
//! With a valid `id_token_hint` for the browser's current session the
//! session ends at once; otherwise the person confirms with a CSRF-protected
//! form, so a cross-site link cannot sign anyone out. A
//! `post_logout_redirect_uri` is followed only if it exactly matches one the
//! client registered; otherwise the result is shown here, never redirected.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::keys::SigningAlg;
use crate::oauth::clients::{self, Client};
use crate::sessions::end::{self, Ender};
use crate::sessions::{self, SESSION_COOKIE};
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html;

pub fn router() -> Router<AppState> {
    Router::new().route("/logout", get(logout_get).post(logout_post))
}

struct LogoutRequest {
    hinted_sid: Option<String>,
    redirect: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

fn bad(message: &str) -> Response {
    html::error_page(StatusCode::BAD_REQUEST, message)
}

/// The validated request, or the message to show.
async fn parse(state: &AppState, params: &Params) -> Result<LogoutRequest, String> {
    let get = |n: &str| params.get(n).map_err(|e| e.to_string());
    let mut client_id = get("client_id")?.map(str::to_string);
    let mut hinted_sid = None;
    if let Some(hint) = get("id_token_hint")? {
        // An expired id_token is still a valid hint; the signature, issuer
        // and type must hold.
        let claims = state
            .keys
            .current()
            .verify(
                hint,
                &[SigningAlg::RS256, SigningAlg::ES256],
                "JWT",
                state.clock.now(),
                state.config.retired_key_retention(),
            )
            .map_err(|_| {
                "The id_token_hint is not a valid ID token from this server.".to_string()
            })?;
        if claims.issuer() != Some(state.config.issuer.as_str()) {
            return Err("The id_token_hint was issued by someone else.".into());
        }
        let aud = claims
            .audience()
            .and_then(|a| a.first().map(|s| s.to_string()));
        if let (Some(c), Some(a)) = (&client_id, &aud)
            && c != a
        {
            return Err("client_id does not match the id_token_hint.".into());
        }
        client_id = client_id.or(aud);
        hinted_sid = claims
            .claim("sid")
            .and_then(|v| v.as_str())
            .map(str::to_string);
    }
    let redirect = get("post_logout_redirect_uri")?.map(str::to_string);
    if let Some(uri) = &redirect {
        let client: Option<Client> = match &client_id {
            Some(id) => clients::find(&state.store, id).await.ok(),
            None => None,
        };
        let registered =
            client.is_some_and(|c| c.post_logout_redirect_uris.iter().any(|r| r == uri));
        if !registered {
            return Err(
                "The post_logout_redirect_uri is not registered for this application, so you are not being sent back to it."
                    .into(),
            );
        }
    }
    Ok(LogoutRequest {
        hinted_sid,
        redirect,
        state: get("state")?.map(str::to_string),
        client_id,
    })
}

async fn logout_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let params = match Params::parse(q.unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(e) => return bad(&e.to_string()),
    };
    let req = match parse(&state, &params).await {
        Ok(r) => r,
        Err(m) => return bad(&m),
    };
    let session = match sessions::current(&state, &headers).await {
        Ok(s) => s,
        Err(e) => return crate::error::AppError::from(e).into_response(),
    };
    match session {
        None => finish(&state, &req, false),
        Some(s) if req.hinted_sid.as_deref() == Some(s.id.as_str()) => {
            sign_out(&state, &headers, &s, &req).await
        }
        Some(_) => confirm(&state, &headers, &req),
    }
}

async fn logout_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match Params::parse(&body) {
        Ok(p) => p,
        Err(e) => return bad(&e.to_string()),
    };
    if !csrf::verify(
        &sessions::cookie_policy(&state),
        &headers,
        params.field(csrf::CSRF_FIELD),
    ) {
        return bad("invalid or missing CSRF token: go back, reload the page and try again");
    }
    let mut req = match parse(&state, &params).await {
        Ok(r) => r,
        Err(m) => return bad(&m),
    };
    req.hinted_sid = None;
    match sessions::current(&state, &headers).await {
        Ok(Some(s)) => sign_out(&state, &headers, &s, &req).await,
        Ok(None) => finish(&state, &req, false),
        Err(e) => crate::error::AppError::from(e).into_response(),
    }
}

fn confirm(state: &AppState, headers: &HeaderMap, req: &LogoutRequest) -> Response {
    let (token, cookie) = csrf::token_for_form(&sessions::cookie_policy(state), headers);
    let mut fields = html::hidden(csrf::CSRF_FIELD, &token);
    for (name, value) in [
        ("post_logout_redirect_uri", &req.redirect),
        ("state", &req.state),
        ("client_id", &req.client_id),
    ] {
        if let Some(v) = value {
            fields.push_str(&html::hidden(name, v));
        }
    }
    let body = format!(
        "<p>Do you want to sign out?</p><form method=\"post\" action=\"/logout\">{fields}\
         <button type=\"submit\">Sign out</button></form>"
    );
    let mut resp = html::page(StatusCode::OK, "Sign out", &body);
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn sign_out(
    state: &AppState,
    headers: &HeaderMap,
    session: &sessions::Session,
    req: &LogoutRequest,
) -> Response {
    let ctx = sessions::account::self_ctx(session, headers);
    if let Err(e) = end::end_session(
        state,
        &session.id,
        &Ender::logout(&session.user_id),
        "signed out",
        None,
        &ctx,
    )
    .await
    {
        return crate::error::AppError::from(e).into_response();
    }
    finish(state, req, true)
}

fn finish(state: &AppState, req: &LogoutRequest, clear_cookie: bool) -> Response {
    let mut resp = match &req.redirect {
        Some(uri) => {
            let mut url = match url::Url::parse(uri) {
                Ok(u) => u,
                Err(_) => return bad("invalid post_logout_redirect_uri"),
            };
            if let Some(s) = &req.state {
                url.query_pairs_mut().append_pair("state", s);
            }
            (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response()
        }
        None => html::page(StatusCode::OK, "Signed out", "<p>You are signed out.</p>"),
    };
    if clear_cookie {
        resp.headers_mut().append(
            header::SET_COOKIE,
            sessions::cookie_policy(state).clear(SESSION_COOKIE),
        );
    }
    resp
}
