//! The admin UI on the admin listener: a backend-for-frontend that signs
//! staff in through Portcullis's own code flow, keeps their tokens on the
//! server, and renders the Leptos pages of the `admin-ui` crate. Every
//! action calls the same staff operations as the admin JSON API
//! (`crate::admin_api::*`), so rules, permissions, step-up and audit rows
//! are decided in one place; this module only translates forms and pages.
//!
//! CSRF: the session cookie is `SameSite=Strict`, every POST must carry the
//! session's synchronizer token, and a POST whose `Origin` (or
//! `Sec-Fetch-Site`) shows another site is refused before anything runs.

mod actions;
pub mod auth;
mod pages;

use axum::Router;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::admin_api::Staff;
use crate::app::{AppState, RequestId};
use crate::crypto;
use crate::error::AppError;
use crate::web::cookies::CookiePolicy;
use crate::web::form::Params;
use admin_ui::model::Nav;

/// The admin UI's own OAuth client, registered on start-up.
pub const CLIENT_ID: &str = "portcullis-admin-ui";
const SESSION_COOKIE: &str = "pc_admin";
const FLOW_COOKIE: &str = "pc_admin_flow";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route(admin_ui::STYLESHEET_PATH, get(stylesheet))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", post(auth::logout))
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}/terminate", post(actions::terminate_session))
        .route(
            "/users/{username}/sessions/terminate",
            post(actions::terminate_user_sessions),
        )
        .route("/users", get(pages::users))
        .route("/users/{username}", get(pages::user))
        .route("/users/{username}/lock", post(actions::lock_user))
        .route("/users/{username}/unlock", post(actions::unlock_user))
        .route("/users/{username}/mfa/reset", post(actions::reset_mfa))
        .route(
            "/clients",
            get(pages::clients).post(actions::register_client),
        )
        .route(
            "/clients/{id}",
            get(pages::client).post(actions::update_client),
        )
        .route("/clients/{id}/secret/rotate", post(actions::rotate_secret))
        .route("/clients/{id}/tokens/revoke", post(actions::revoke_tokens))
        .route(
            "/refunds",
            get(pages::refunds).post(actions::request_refund),
        )
        .route("/refunds/{id}", get(pages::refund))
        .route("/refunds/{id}/approve", post(actions::approve_refund))
        .route("/refunds/{id}/reject", post(actions::reject_refund))
        .route("/refunds/{id}/cancel", post(actions::cancel_refund))
        .route("/audit", get(pages::audit))
        .route("/audit/export", get(pages::audit_export))
}

pub use auth::register_client;

/// The admin listener's external URL.
pub fn admin_base(state: &AppState) -> String {
    state
        .config
        .http
        .admin_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", state.config.http.admin_addr))
}

fn cookie_policy(state: &AppState) -> CookiePolicy {
    CookiePolicy {
        secure: admin_base(state).starts_with("https://"),
    }
}

/// Only local paths: a crafted `return_to` must not send staff elsewhere.
fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.contains("/auth/")
                && p.len() <= 1000
                && !p.chars().any(char::is_control) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        admin_ui::STYLESHEET,
    )
        .into_response()
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Admin pages name people, money and secrets.
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A page answer for anything that went wrong: the error's own sentence,
/// the right status, and a way on. Internal errors are logged, not shown.
#[derive(Debug)]
pub struct Page(Box<Response>);

impl Page {
    fn message(
        status: StatusCode,
        layout: Option<&admin_ui::model::Layout>,
        title: &str,
        message: &str,
        link: Option<(&str, &str)>,
    ) -> Page {
        Page(Box::new(html_response(
            status,
            admin_ui::message_page(layout, title, message, link),
        )))
    }

    fn error(layout: Option<&admin_ui::model::Layout>, e: AppError) -> Page {
        let (status, title, message, link) = match &e {
            AppError::BadRequest(m) | AppError::Unprocessable(m) => (
                StatusCode::BAD_REQUEST,
                "That did not work",
                m.clone(),
                None,
            ),
            AppError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Sign in again",
                "Your admin session has ended.".to_string(),
                Some(("/auth/login", "Sign in")),
            ),
            AppError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m.clone(), None),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m.clone(), None),
            AppError::Conflict(m) => (StatusCode::CONFLICT, "Already changed", m.clone(), None),
            AppError::StepUpRequired { message, .. } => (
                StatusCode::UNAUTHORIZED,
                "Confirm it is you",
                message.clone(),
                // Back to the section the action came from afterwards.
                Some((
                    match layout.map(|l| l.nav) {
                        Some(Nav::Sessions) => "/auth/login?step_up=1&return_to=%2Fsessions",
                        Some(Nav::Users) => "/auth/login?step_up=1&return_to=%2Fusers",
                        Some(Nav::Clients) => "/auth/login?step_up=1&return_to=%2Fclients",
                        Some(Nav::Refunds) => "/auth/login?step_up=1&return_to=%2Frefunds",
                        Some(Nav::Audit) => "/auth/login?step_up=1&return_to=%2Faudit",
                        Some(Nav::Home) | None => "/auth/login?step_up=1",
                    },
                    "Confirm with your second factor",
                )),
            ),
            AppError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                e.to_string(),
                None,
            ),
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "admin UI request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The request failed on the server; it has been logged.".to_string(),
                    None,
                )
            }
        };
        let status = match &e {
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => status,
        };
        Page::message(status, layout, title, &message, link)
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A signed-in staff member in the admin UI.
#[derive(Debug, Clone)]
pub struct StaffSession {
    pub staff: Staff,
    id_hash: String,
    csrf: String,
}

impl StaffSession {
    fn layout(&self, title: &str, nav: admin_ui::model::Nav) -> admin_ui::model::Layout {
        admin_ui::model::Layout {
            title: title.to_string(),
            nav,
            username: self.staff.username.clone(),
            permissions: self
                .staff
                .permissions
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            csrf: self.csrf.clone(),
            flash: None,
        }
    }

    /// Refuses a POST from another site or without this session's token;
    /// returns the form.
    fn check_post(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Params, Page> {
        let forbidden = |m: &str| {
            Page::message(
                StatusCode::FORBIDDEN,
                None,
                "Request refused",
                m,
                Some(("/", "Back to the admin UI")),
            )
        };
        // With `Referrer-Policy: no-referrer` browsers send `Origin: null`
        // on form posts; then `Sec-Fetch-Site` tells where the form was.
        let origin_ok = match headers.get(header::ORIGIN).map(HeaderValue::as_bytes) {
            None | Some(b"null") => true,
            Some(o) => o == admin_base(state).as_bytes(),
        };
        let fetch_site_ok = headers
            .get("sec-fetch-site")
            .is_none_or(|v| matches!(v.as_bytes(), b"same-origin" | b"none"));
        if !origin_ok || !fetch_site_ok {
            return Err(forbidden("This form was sent from another site."));
        }
        let params = Params::parse(body).map_err(|e| {
            Page::message(
                StatusCode::BAD_REQUEST,
                None,
                "That did not work",
                &e.to_string(),
                None,
            )
        })?;
        let token_ok = params
            .field(crate::web::csrf::CSRF_FIELD)
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.csrf.as_bytes())));
        if !token_ok {
            return Err(forbidden(
                "This form is out of date or was not sent from the admin UI. Reload the page and try again.",
            ));
        }
        Ok(params)
    }
}

impl FromRequestParts<AppState> for StaffSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let sign_in = |parts: &Parts| -> Response {
            if parts.method == Method::GET {
                let here = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                let target = format!(
                    "/auth/login?return_to={}",
                    form_urlencoded::byte_serialize(safe_return_to(Some(&here)).as_bytes())
                        .collect::<String>()
                );
                let mut resp = StatusCode::SEE_OTHER.into_response();
                if let Ok(v) = HeaderValue::from_str(&target) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            } else {
                Page::error(None, AppError::Unauthorized).into_response()
            }
        };
        let policy = cookie_policy(state);
        let Some(cookie) = policy.get(&parts.headers, SESSION_COOKIE) else {
            return Err(sign_in(parts));
        };
        let id_hash = crypto::sha256_hex(&cookie);
        let row = crate::store::admin_ui::find_session(&state.store, &id_hash)
            .await
            .map_err(|e| Page::error(None, AppError::from(e)).into_response())?;
        let Some(row) = row.filter(|r| r.expires_at > state.clock.now()) else {
            return Err(sign_in(parts));
        };
        let record =
            crate::tokens::active_access_token_by_hash(state, row.access_token_hash.clone())
                .await
                .map_err(|e| Page::error(None, AppError::from(e)).into_response())?;
        let Some(record) = record else {
            // Revoked, expired, or its session ended: sign in again.
            let _ = crate::store::admin_ui::delete_session(&state.store, &id_hash).await;
            return Err(sign_in(parts));
        };
        let ip = crate::web::client_ip(&parts.extensions);
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        // The same per-staff-member budget as bearer calls to the admin API.
        if let Err(l) = state.limiter.hit(
            crate::security::limits::Rule::AdminPerUser,
            &row.user_id,
            state.clock.now_ms(),
        ) {
            return Err(crate::security::limits::refused(
                state,
                l,
                parts.uri.path(),
                &parts.headers,
            ));
        }
        let staff = match Staff::from_access_token(state, &record, request_id, ip).await {
            Ok(s) => s,
            Err(AppError::Unauthorized) => return Err(sign_in(parts)),
            Err(e) => return Err(Page::error(None, e).into_response()),
        };
        Ok(StaffSession {
            staff,
            id_hash,
            csrf: row.csrf_token,
        })
    }
}
