//! HTTP for WebAuthn (`mfa::webauthn` does the work): JSON endpoints the
//! page script `/static/webauthn.js` calls, and the HTML the account and
//! login pages embed. Every POST needs the CSRF token (header
//! `X-CSRF-Token`, or the `csrf_token` field of a form); errors are
//! `{"error", "message"}`.
//!
//! | endpoint | body | answer |
//! |---|---|---|
//! | `POST /account/mfa/webauthn/register/start` | – | `{challenge_id, publicKey}` |
//! | `POST /account/mfa/webauthn/register/finish` | `{challenge_id, name, credential}` | `{credential, recovery_codes}` |
//! | `POST /account/mfa/webauthn/{id}/rename` | `{name}` | `{credential}` |
//! | `POST /account/mfa/webauthn/{id}/remove` | – | `{removed}` |
//! | `POST /account/mfa/passkey-login` | `{enabled}` | `{passkey_login}` |
//! | `POST /login/webauthn/start` | – (cookie `pc_mfa`) | `{challenge_id, publicKey}` |
//! | `POST /login/webauthn/finish` | `{challenge_id, credential}` | `{redirect}` + session cookie |
//! | `POST /login/passkey/start` | `{request?}` | `{challenge_id, publicKey, mediation}` |
//! | `POST /login/passkey/finish` | `{challenge_id, credential}` | `{redirect}` + session cookie |

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use crate::app::AppState;
use crate::audit::{Actor, ActorKind, AuditContext};
use crate::error::AppError;
use crate::sessions::account::{check_csrf, self_ctx, wants_json};
use crate::sessions::{self, Authentication, Session};
use crate::web::cookies::SameSite;
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html::{self, escape};

use super::ACR_MFA;
use super::webauthn::{self as wa, Attempt, CredentialView, KeyError};

/// The page script, served as `/static/webauthn.js`.
pub const SCRIPT: &str = include_str!("../../static/webauthn.js");
/// Cookie binding a passwordless ceremony to the browser that started it.
pub const PASSKEY_COOKIE: &str = "pc_passkey";
/// Largest accepted request body (a registration with an attestation
/// certificate chain is a few kilobytes).
const MAX_BODY: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/webauthn.js", get(script))
        .route("/account/mfa/webauthn/register/start", post(register_start))
        .route(
            "/account/mfa/webauthn/register/finish",
            post(register_finish),
        )
        .route("/account/mfa/webauthn/{id}/rename", post(rename))
        .route("/account/mfa/webauthn/{id}/remove", post(remove))
        .route("/account/mfa/passkey-login", post(passkey_login))
        .route("/login/webauthn/start", post(second_factor_start))
        .route("/login/webauthn/finish", post(second_factor_finish))
        .route("/login/passkey/start", post(passwordless_start))
        .route("/login/passkey/finish", post(passwordless_finish))
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

// ---- plumbing ----------------------------------------------------------------

/// A request split into what the handlers need.
struct Incoming {
    headers: HeaderMap,
    ip: Option<String>,
    body: axum::body::Bytes,
}

async fn read(request: Request) -> Result<Incoming, Response> {
    let (parts, body) = request.into_parts();
    let ip = crate::web::client_ip(&parts.extensions);
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| bad_request("the request body is too large or could not be read"))?;
    Ok(Incoming {
        headers: parts.headers,
        ip,
        body,
    })
}

impl Incoming {
    fn is_json(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    }

    /// JSON answers for script and API callers, redirects for HTML forms.
    fn wants_json(&self) -> bool {
        self.is_json() || wants_json(&self.headers)
    }

    /// The form fields (empty for a JSON body).
    fn form(&self) -> Params {
        if self.is_json() {
            Params::default()
        } else {
            Params::parse(&self.body).unwrap_or_default()
        }
    }

    /// The JSON body as `T` (an empty body reads as `{}`).
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, AppError> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body).map_err(|e| {
            AppError::BadRequest(format!(
                "the request body is not the expected JSON: {}",
                e.to_string().chars().take(200).collect::<String>()
            ))
        })
    }

    fn user_agent(&self) -> Option<String> {
        crate::web::user_agent(&self.headers)
    }
}

fn bad_request(message: &str) -> Response {
    AppError::BadRequest(message.to_string()).into_response()
}

/// A JSON answer that no cache keeps (challenges, credentials, codes).
fn no_store(body: serde_json::Value) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn key_error(e: KeyError) -> Response {
    let message = e.to_string();
    match e {
        KeyError::Unavailable => AppError::NotFound(message).into_response(),
        KeyError::NoCredentials
        | KeyError::AlreadyRegistered
        | KeyError::TooMany
        | KeyError::PasswordlessNeedsKey => AppError::Conflict(message).into_response(),
        KeyError::ChallengeInvalid => {
            json_error(StatusCode::BAD_REQUEST, "invalid_challenge", &message)
        }
        KeyError::Rejected => json_error(StatusCode::UNAUTHORIZED, "invalid_credential", &message),
        KeyError::PossibleClone => {
            json_error(StatusCode::FORBIDDEN, "credential_suspended", &message)
        }
        KeyError::NotFound => AppError::NotFound(message).into_response(),
        KeyError::InvalidName => AppError::BadRequest(message).into_response(),
        KeyError::PasswordlessNotEnabled | KeyError::StepUpRequired => {
            AppError::Forbidden(message).into_response()
        }
        KeyError::LockedOut(secs) => {
            let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", &message);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        KeyError::Internal(detail) => AppError::Internal(detail).into_response(),
        KeyError::Store(s) => AppError::from(s).into_response(),
    }
}

fn login_expired() -> Response {
    json_error(
        StatusCode::UNAUTHORIZED,
        "login_expired",
        "the sign-in has expired; sign in again",
    )
}

/// The signed-in caller, with the CSRF token checked.
async fn account(state: &AppState, incoming: &Incoming) -> Result<Session, Response> {
    let session = match sessions::current(state, &incoming.headers).await {
        Ok(Some(s)) => s,
        Ok(None) if incoming.wants_json() => return Err(AppError::Unauthorized.into_response()),
        Ok(None) => {
            return Err((StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response());
        }
        Err(e) => return Err(AppError::from(e).into_response()),
    };
    check_csrf(state, &incoming.headers, &incoming.form()).map_err(IntoResponse::into_response)?;
    Ok(session)
}

/// Changing factors when one exists needs a second factor used recently.
async fn require_fresh_if_enrolled(state: &AppState, session: &Session) -> Result<(), Response> {
    let factors = super::factors(&state.store, &session.user_id)
        .await
        .map_err(|e| AppError::from(e).into_response())?;
    if factors.any() && !super::session_is_fresh(state, session) {
        return Err(key_error(KeyError::StepUpRequired));
    }
    Ok(())
}

/// The CSRF token of a login-page script call (header only).
fn check_login_csrf(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if csrf::verify(&sessions::cookie_policy(state), headers, token) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "invalid or missing CSRF token: reload the page".into(),
        ))
    }
}

/// Audit actor for decisions taken during a sign-in, before anyone is
/// signed in.
fn login_ctx(incoming: &Incoming) -> AuditContext {
    AuditContext {
        actor: Actor {
            kind: ActorKind::System,
            id: "mfa".to_string(),
            session: None,
        },
        request_id: incoming
            .headers
            .get(&crate::app::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ip: incoming.ip.clone(),
    }
}

/// A JSON answer for an HTML form's POST goes back to the account page.
fn done(incoming: &Incoming, body: serde_json::Value) -> Response {
    if incoming.wants_json() {
        no_store(body)
    } else {
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/account/mfa")]).into_response()
    }
}

/// An error for an HTML form's POST is a page, for scripts JSON.
fn failed(incoming: &Incoming, e: KeyError) -> Response {
    if incoming.wants_json() {
        return key_error(e);
    }
    let message = e.to_string();
    html::error_page(key_error(e).status(), &message)
}

// ---- account -------------------------------------------------------------------

async fn register_start(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let session = match account(&state, &incoming).await {
        Ok(s) => s,
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
    match wa::start_registration(&state, &user.id, &user.username, &session.id).await {
        Ok(options) => no_store(options),
        Err(e) => key_error(e),
    }
}

#[derive(Deserialize)]
struct RegisterFinish {
    challenge_id: String,
    #[serde(default)]
    name: String,
    credential: RegisterPublicKeyCredential,
}

async fn register_finish(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let session = match account(&state, &incoming).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body: RegisterFinish = match incoming.json() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let ctx = self_ctx(&session, &incoming.headers);
    match wa::finish_registration(
        &state,
        &session.user_id,
        &session.id,
        &body.challenge_id,
        &body.name,
        &body.credential,
        &ctx,
    )
    .await
    {
        Ok(r) => no_store(serde_json::json!({
            "credential": r.credential,
            "recovery_codes": r.recovery_codes,
        })),
        Err(e) => key_error(e),
    }
}

#[derive(Deserialize)]
struct RenameBody {
    #[serde(default)]
    name: String,
}

async fn rename(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let session = match account(&state, &incoming).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = if incoming.is_json() {
        match incoming.json::<RenameBody>() {
            Ok(b) => b.name,
            Err(e) => return e.into_response(),
        }
    } else {
        incoming.form().field("name").unwrap_or("").to_string()
    };
    let ctx = self_ctx(&session, &incoming.headers);
    match wa::rename(&state, &session.user_id, &id, &name, &ctx).await {
        Ok(c) => done(&incoming, serde_json::json!({ "credential": c })),
        Err(e) => failed(&incoming, e),
    }
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let session = match account(&state, &incoming).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !super::session_is_fresh(&state, &session) {
        return failed(&incoming, KeyError::StepUpRequired);
    }
    let ctx = self_ctx(&session, &incoming.headers);
    match wa::remove(&state, &session.user_id, &id, &ctx).await {
        Ok(()) => done(&incoming, serde_json::json!({ "removed": id })),
        Err(e) => failed(&incoming, e),
    }
}

#[derive(Deserialize)]
struct PasskeyLoginBody {
    enabled: bool,
}

async fn passkey_login(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let session = match account(&state, &incoming).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let enabled = if incoming.is_json() {
        match incoming.json::<PasskeyLoginBody>() {
            Ok(b) => b.enabled,
            Err(e) => return e.into_response(),
        }
    } else {
        match incoming.form().field("enabled") {
            Some("true") => true,
            Some("false") => false,
            _ => return bad_request("`enabled` must be true or false"),
        }
    };
    if !super::session_is_fresh(&state, &session) {
        return failed(&incoming, KeyError::StepUpRequired);
    }
    let ctx = self_ctx(&session, &incoming.headers);
    match wa::set_passkey_login(&state, &session.user_id, enabled, &ctx).await {
        Ok(on) => done(&incoming, serde_json::json!({ "passkey_login": on })),
        Err(e) => failed(&incoming, e),
    }
}

// ---- sign-in -------------------------------------------------------------------

async fn second_factor_start(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(e) = check_login_csrf(&state, &incoming.headers) {
        return e.into_response();
    }
    let c = match super::login::challenge(&state, &incoming.headers).await {
        Ok(Some(c)) => c,
        Ok(None) => return login_expired(),
        Err(e) => return AppError::from(e).into_response(),
    };
    // A locked-out user gets no new challenge either.
    match super::lockout::check(&state, &format!("mfa:{}", c.user_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(secs)) => return key_error(KeyError::LockedOut(secs)),
        Err(e) => return AppError::from(e).into_response(),
    }
    match wa::start_second_factor(&state, &c.user_id, &c.hash).await {
        Ok(options) => no_store(options),
        Err(e) => key_error(e),
    }
}

#[derive(Deserialize)]
struct AssertionBody {
    challenge_id: String,
    credential: PublicKeyCredential,
}

async fn second_factor_finish(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(e) = check_login_csrf(&state, &incoming.headers) {
        return e.into_response();
    }
    let c = match super::login::challenge(&state, &incoming.headers).await {
        Ok(Some(c)) => c,
        Ok(None) => return login_expired(),
        Err(e) => return AppError::from(e).into_response(),
    };
    let body: AssertionBody = match incoming.json() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let ctx = login_ctx(&incoming);
    let attempt = Attempt {
        challenge_id: &body.challenge_id,
        binding: &c.hash,
        response: &body.credential,
        ctx: &ctx,
    };
    let verified = match wa::finish_second_factor(&state, &c.user_id, &attempt).await {
        Ok(v) => v,
        Err(e) => return key_error(e),
    };
    match super::login::complete(&state, &incoming.headers, &c, verified.method).await {
        Ok(Some(done)) => signed_in(done),
        Ok(None) => login_expired(),
        Err(e) => AppError::from(e).into_response(),
    }
}

fn signed_in(done: super::login::Completed) -> Response {
    let mut resp = no_store(serde_json::json!({ "redirect": done.location }));
    for cookie in done.cookies {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    resp
}

#[derive(Deserialize, Default)]
struct PasswordlessStart {
    #[serde(default)]
    request: Option<String>,
}

async fn passwordless_start(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(e) = check_login_csrf(&state, &incoming.headers) {
        return e.into_response();
    }
    let body: PasswordlessStart = match incoming.json() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let request_id = body
        .request
        .filter(|r| sessions::login::valid_request_id(r));
    let secret = crate::crypto::random_secret("pcpk_");
    let binding = crate::crypto::sha256_hex(&secret);
    match wa::start_passwordless(&state, &binding, request_id.as_deref()).await {
        Ok(options) => {
            let mut resp = no_store(options);
            resp.headers_mut().append(
                header::SET_COOKIE,
                sessions::cookie_policy(&state).set(
                    PASSKEY_COOKIE,
                    &secret,
                    Some(wa::CEREMONY_TTL_SECS),
                    SameSite::Strict,
                ),
            );
            resp
        }
        Err(e) => key_error(e),
    }
}

async fn passwordless_finish(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match read(request).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(e) = check_login_csrf(&state, &incoming.headers) {
        return e.into_response();
    }
    let policy = sessions::cookie_policy(&state);
    let Some(secret) = policy
        .get(&incoming.headers, PASSKEY_COOKIE)
        .filter(|s| s.starts_with("pcpk_") && s.len() <= 100)
    else {
        return key_error(KeyError::ChallengeInvalid);
    };
    let binding = crate::crypto::sha256_hex(&secret);
    let body: AssertionBody = match incoming.json() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let user_id = match wa::passwordless_user(&state, &body.credential).await {
        Ok(u) => u,
        Err(e) => return key_error(e),
    };
    let ctx = login_ctx(&incoming);
    let attempt = Attempt {
        challenge_id: &body.challenge_id,
        binding: &binding,
        response: &body.credential,
        ctx: &ctx,
    };
    let verified = match wa::finish_passwordless(&state, &user_id, &attempt).await {
        Ok(v) => v,
        Err(e) => return key_error(e),
    };
    let auth = Authentication {
        user_id: verified.user_id.clone(),
        amr: vec![verified.method.to_string(), "user".to_string()],
        acr: ACR_MFA.to_string(),
        ip: incoming.ip.clone(),
        user_agent: incoming.user_agent(),
    };
    match super::login::establish(&state, &incoming.headers, auth, verified.request.as_deref())
        .await
    {
        Ok(mut done) => {
            done.cookies.push(policy.clear(PASSKEY_COOKIE));
            signed_in(done)
        }
        Err(e) => AppError::from(e).into_response(),
    }
}

// ---- HTML fragments ----------------------------------------------------------------

const SCRIPT_TAG: &str = "<script src=\"/static/webauthn.js\" defer></script>";

/// The security-key option of `/login/mfa`.
pub fn second_factor_html(csrf_token: &str) -> String {
    format!(
        "<section class=\"webauthn\" data-webauthn=\"second-factor\" data-csrf-token=\"{}\">\
         <p>Use a security key or passkey registered to your account.</p>\
         <button type=\"button\" id=\"webauthn-second-factor\" data-webauthn-action=\"start\">Use security key</button>\
         <p class=\"error\" role=\"alert\" data-webauthn-status hidden></p></section>{SCRIPT_TAG}",
        escape(csrf_token)
    )
}

/// The passkey option of `/login` (for accounts that turned it on).
pub fn passkey_login_html(csrf_token: &str, request: Option<&str>) -> String {
    format!(
        "<section class=\"webauthn\" data-webauthn=\"passkey-login\" data-csrf-token=\"{}\" data-request=\"{}\">\
         <button type=\"button\" class=\"secondary\" id=\"webauthn-passkey-login\" data-webauthn-action=\"start\">Sign in with a passkey</button>\
         <p class=\"error\" role=\"alert\" data-webauthn-status hidden></p></section>{SCRIPT_TAG}",
        escape(csrf_token),
        escape(request.unwrap_or(""))
    )
}

/// The security-key part of `/account/mfa`: the keys with rename and
/// remove forms, registration, and the passkey sign-in switch.
pub fn account_html(
    state: &AppState,
    csrf_token: &str,
    keys: &[CredentialView],
    passkey_login: bool,
) -> String {
    if !state.webauthn.available() {
        return "<p>Security keys: not available on this server.</p>".into();
    }
    let hidden = html::hidden(csrf::CSRF_FIELD, csrf_token);
    let mut out = String::from("<h2>Security keys and passkeys</h2>");
    if keys.is_empty() {
        out.push_str("<p>None registered.</p>");
    } else {
        out.push_str("<ul class=\"webauthn-keys\">");
        for k in keys {
            let id = escape(&k.id);
            let used = k
                .last_used_at
                .as_deref()
                .map(|t| format!("last used {}", escape(t)))
                .unwrap_or_else(|| "never used".into());
            let suspended = if k.suspended_at.is_some() {
                " <strong class=\"error\">suspended: possible clone</strong>"
            } else {
                ""
            };
            out.push_str(&format!(
                "<li><strong>{}</strong> — added {}, {used}{suspended}\
                 <form method=\"post\" action=\"/account/mfa/webauthn/{id}/rename\">{hidden}\
                 <label for=\"rename-{id}\">New name</label>\
                 <input type=\"text\" id=\"rename-{id}\" name=\"name\" maxlength=\"{}\" required>\
                 <button type=\"submit\" class=\"secondary\">Rename</button></form>\
                 <form method=\"post\" action=\"/account/mfa/webauthn/{id}/remove\">{hidden}\
                 <button type=\"submit\" class=\"secondary\">Remove</button></form></li>",
                escape(&k.name),
                escape(&k.created_at),
                wa::MAX_NAME_CHARS
            ));
        }
        out.push_str("</ul>");
    }
    out.push_str(&format!(
        "<section class=\"webauthn\" data-webauthn=\"register\" data-csrf-token=\"{}\">\
         <label for=\"webauthn-name\">Name for a new key</label>\
         <input type=\"text\" id=\"webauthn-name\" maxlength=\"{}\" placeholder=\"e.g. YubiKey on my keyring\">\
         <button type=\"button\" id=\"webauthn-register\" data-webauthn-action=\"start\">Add a security key</button>\
         <p class=\"error\" role=\"alert\" data-webauthn-status hidden></p></section>{SCRIPT_TAG}",
        escape(csrf_token),
        wa::MAX_NAME_CHARS
    ));
    let (label, value) = if passkey_login {
        ("Turn off passkey sign-in", "false")
    } else {
        ("Allow sign-in with a passkey alone", "true")
    };
    out.push_str(&format!(
        "<p>Passkey sign-in without password: <strong>{}</strong></p>\
         <form method=\"post\" action=\"/account/mfa/passkey-login\">{hidden}{}\
         <button type=\"submit\" class=\"secondary\">{label}</button></form>",
        if passkey_login { "on" } else { "off" },
        html::hidden("enabled", value)
    ));
    out
}

/// `/account/mfa` JSON additions: the keys and the passkey sign-in switch.
pub async fn account_json(
    state: &AppState,
    user_id: &str,
) -> Result<(Vec<CredentialView>, bool), crate::store::StoreError> {
    Ok((
        wa::list(state, user_id).await?,
        wa::passkey_login_enabled(state, user_id).await?,
    ))
}
