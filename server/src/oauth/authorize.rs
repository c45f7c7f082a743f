//! The authorization endpoint (RFC 6749 §4.1, OIDC Core §3.1.2): code flow
//! only. The request is validated, stored server-side under a random id,
//! and carried through login and consent by that id; the browser never
//! gets a chance to alter it in between.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::audit::{self, Actor, ActorKind, AuditContext, AuditEvent};
use crate::crypto;
use crate::oauth::clients::{self, Client, ClientError, GrantType, valid_scope_token};
use crate::oauth::error::ErrorCode;
use crate::oauth::pkce;
use crate::sessions::{self, Session, login::valid_request_id};
use crate::store::StoreError;
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html::{self, escape};

/// How long a pending request may wait for login and consent.
const REQUEST_TTL_SECS: i64 = 600;
/// Authorization codes are exchanged immediately by real clients.
const CODE_TTL_SECS: i64 = 60;
pub const CODE_PREFIX: &str = "pct_ac_";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/authorize", get(authorize_get).post(authorize_post))
        .route("/authorize/resume", get(resume))
        .route("/consent", get(consent_page).post(consent_submit))
}

/// A validated authorization request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Vec<String>,
    pub max_age: Option<i64>,
    /// Requested authentication context classes (OIDC `acr_values`).
    #[serde(default)]
    pub acr_values: Vec<String>,
    pub created_at: i64,
    /// The session that signed in for this very request (via `/login` or
    /// `/login/mfa`); such a login satisfies `prompt=login`, `max_age` and
    /// `acr_values` however soon it followed the request.
    #[serde(default)]
    pub authenticated_session: Option<String>,
}

impl AuthorizationRequest {
    fn scope_text(&self) -> String {
        self.scopes.join(" ")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CodeRecord {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub session_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: i64,
    pub amr: String,
    pub acr: String,
    pub created_at: i64,
    pub expires_at: i64,
    #[sqlx(default)]
    pub used_at: Option<i64>,
    #[sqlx(default)]
    pub family_id: Option<String>,
}

/// Why a request cannot go on.
enum Failure {
    /// Before the redirect URI is trusted: shown to the person, never redirected.
    Page(StatusCode, String),
    /// After: sent back to the client's redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        code: ErrorCode,
        description: String,
    },
    Internal(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Internal(e)
    }
}

async fn authorize_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes());
    start(&state, &headers, params).await
}

async fn authorize_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    start(&state, &headers, Params::parse(&body)).await
}

async fn start(
    state: &AppState,
    headers: &HeaderMap,
    params: Result<Params, crate::web::form::FormError>,
) -> Response {
    let params = match params {
        Ok(p) => p,
        Err(e) => return render(state, Failure::Page(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let (request, client) = match validate(state, &params).await {
        Ok(x) => x,
        Err(f) => return render(state, f),
    };
    let id = crypto::random_id();
    let json = serde_json::to_string(&request).unwrap_or_default();
    let now = state.clock.now();
    if let Err(e) = crate::store::oauth::insert_request(
        &state.store,
        &id,
        &client.id,
        &json,
        now,
        now + REQUEST_TTL_SECS,
    )
    .await
    {
        return render(state, Failure::Internal(e));
    }
    let session = match sessions::current(state, headers).await {
        Ok(s) => s,
        Err(e) => return render(state, Failure::Internal(e)),
    };
    match proceed(state, &id, &request, &client, session.as_ref()).await {
        Ok(resp) => resp,
        Err(f) => render(state, f),
    }
}

fn redirect_failure(req_uri: &str, st: Option<&str>, code: ErrorCode, d: &str) -> Failure {
    Failure::Redirect {
        redirect_uri: req_uri.to_string(),
        state: st.map(str::to_string),
        code,
        description: d.to_string(),
    }
}

/// RFC 6749 §4.1.2.1: client and redirect URI first (errors shown to the
/// person), then everything else (errors redirected to the client).
async fn validate(state: &AppState, p: &Params) -> Result<(AuthorizationRequest, Client), Failure> {
    let page = |m: &str| Failure::Page(StatusCode::BAD_REQUEST, m.to_string());
    let client_id = p
        .get("client_id")
        .map_err(|e| page(&e.to_string()))?
        .ok_or_else(|| page("The request has no client_id."))?;
    let client = match clients::find(&state.store, client_id).await {
        Ok(c) => c,
        Err(ClientError::NotFound(_)) => {
            return Err(page(
                "The application that sent you here is not registered.",
            ));
        }
        Err(ClientError::Store(e)) => return Err(Failure::Internal(e)),
        Err(_) => {
            return Err(page(
                "The application that sent you here is not registered.",
            ));
        }
    };
    let redirect_uri = p
        .get("redirect_uri")
        .map_err(|e| page(&e.to_string()))?
        .ok_or_else(|| page("The request has no redirect_uri."))?;
    // Exact string comparison: no normalisation, no prefix or pattern match.
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(page(
            "The redirect_uri is not registered for this application, so you are not being sent back to it.",
        ));
    }
    let st = p.get("state").ok().flatten();
    let fail = |code: ErrorCode, d: &str| redirect_failure(redirect_uri, st, code, d);
    if let Some(dup) = p.first_duplicate() {
        return Err(fail(
            ErrorCode::InvalidRequest,
            &format!("parameter `{dup}` was sent more than once"),
        ));
    }
    let get = |name: &str| p.get(name).ok().flatten();
    if let Some(s) = st
        && s.len() > 1024
    {
        return Err(redirect_failure(
            redirect_uri,
            None,
            ErrorCode::InvalidRequest,
            "state is too long",
        ));
    }
    match get("response_type") {
        None => return Err(fail(ErrorCode::InvalidRequest, "response_type is required")),
        Some("code") => {}
        Some(_) => {
            return Err(fail(
                ErrorCode::UnsupportedResponseType,
                "only response_type=code is supported",
            ));
        }
    }
    if get("request").is_some() || get("request_uri").is_some() {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "request objects are not supported",
        ));
    }
    if !client.allows_grant(GrantType::AuthorizationCode) {
        return Err(fail(
            ErrorCode::UnauthorizedClient,
            "this client may not use the authorization code flow",
        ));
    }
    let scopes: Vec<String> = match get("scope") {
        None => client.scopes.clone(),
        Some(text) => {
            let mut out: Vec<String> = Vec::new();
            for s in text.split(' ').filter(|s| !s.is_empty()) {
                if !valid_scope_token(s) {
                    return Err(fail(ErrorCode::InvalidScope, "malformed scope"));
                }
                if !client.scopes.iter().any(|c| c == s) {
                    return Err(fail(
                        ErrorCode::InvalidScope,
                        &format!("scope `{s}` is not allowed for this client"),
                    ));
                }
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            out
        }
    };
    let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (None, None) => None,
        (Some(c), Some("S256")) => {
            if !pkce::valid_challenge(c) {
                return Err(fail(
                    ErrorCode::InvalidRequest,
                    "code_challenge must be 43-128 base64url characters",
                ));
            }
            Some(c.to_string())
        }
        (Some(_), None) | (None, Some(_)) | (Some(_), Some(_)) => {
            return Err(fail(
                ErrorCode::InvalidRequest,
                "code_challenge_method must be S256 (plain is not accepted)",
            ));
        }
    };
    if client.is_public && code_challenge.is_none() {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "PKCE is required for public clients: send code_challenge with code_challenge_method=S256",
        ));
    }
    let prompt: Vec<String> = get("prompt")
        .map(|p| {
            p.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for value in &prompt {
        if !["none", "login", "consent", "select_account"].contains(&value.as_str()) {
            return Err(fail(
                ErrorCode::InvalidRequest,
                &format!("unsupported prompt value `{value}`"),
            ));
        }
    }
    if prompt.iter().any(|p| p == "none") && prompt.len() > 1 {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "prompt=none cannot be combined with other values",
        ));
    }
    let max_age = match get("max_age") {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return Err(fail(
                    ErrorCode::InvalidRequest,
                    "max_age must be a non-negative integer",
                ));
            }
        },
    };
    let nonce = get("nonce").map(str::to_string);
    if nonce.as_ref().is_some_and(|n| n.len() > 512) {
        return Err(fail(ErrorCode::InvalidRequest, "nonce is too long"));
    }
    Ok((
        AuthorizationRequest {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.to_string(),
            scopes,
            state: st.map(str::to_string),
            nonce,
            code_challenge,
            prompt,
            max_age,
            authenticated_session: None,
            acr_values: get("acr_values")
                .map(|v| {
                    v.split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            created_at: state.clock.now(),
        },
        client,
    ))
}

/// Login, then consent, then the code.
async fn proceed(
    state: &AppState,
    request_id: &str,
    req: &AuthorizationRequest,
    client: &Client,
    session: Option<&Session>,
) -> Result<Response, Failure> {
    let now = state.clock.now();
    let prompt_none = req.prompt.iter().any(|p| p == "none");
    let wants_mfa = req.acr_values.iter().any(|a| a == crate::mfa::ACR_MFA);
    let fail = |code, d: &str| redirect_failure(&req.redirect_uri, req.state.as_deref(), code, d);
    let needs_login = match session {
        None => true,
        // A login made for this request satisfies prompt=login, max_age and
        // acr_values; otherwise each can force a new one.
        Some(s) if req.authenticated_session.as_deref() == Some(s.id.as_str()) => {
            if wants_mfa && s.acr != crate::mfa::ACR_MFA {
                return Err(fail(
                    ErrorCode::UnmetAuthenticationRequirements,
                    "a second factor is required and the user has none",
                ));
            }
            false
        }
        Some(s) => {
            req.prompt.iter().any(|p| p == "login")
                || req
                    .max_age
                    .is_some_and(|max| max == 0 || now - s.auth_time > max)
                || (wants_mfa && s.acr != crate::mfa::ACR_MFA)
        }
    };
    let session = match session {
        Some(s) if !needs_login => s,
        _ if prompt_none => {
            return Err(fail(ErrorCode::LoginRequired, "the user is not signed in"));
        }
        _ => return Ok(see_other(&format!("/login?request={request_id}"))),
    };
    let needs_consent = if client.first_party {
        false
    } else {
        let given =
            crate::store::oauth::find_consent(&state.store, &session.user_id, &client.id).await?;
        let given: Vec<&str> = given.as_deref().unwrap_or("").split(' ').collect();
        req.prompt.iter().any(|p| p == "consent")
            || !req.scopes.iter().all(|s| given.contains(&s.as_str()))
    };
    if needs_consent {
        if prompt_none {
            return Err(fail(
                ErrorCode::ConsentRequired,
                "the user has not consented to this client",
            ));
        }
        return Ok(see_other(&format!("/consent?request={request_id}")));
    }
    issue_code(state, request_id, req, session).await
}

async fn issue_code(
    state: &AppState,
    request_id: &str,
    req: &AuthorizationRequest,
    session: &Session,
) -> Result<Response, Failure> {
    let now = state.clock.now();
    let code = crypto::random_secret(CODE_PREFIX);
    let record = CodeRecord {
        code_hash: crypto::sha256_hex(&code),
        client_id: req.client_id.clone(),
        user_id: session.user_id.clone(),
        session_id: session.id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        scope: req.scope_text(),
        nonce: req.nonce.clone(),
        code_challenge: req.code_challenge.clone(),
        auth_time: session.auth_time,
        amr: serde_json::to_string(&session.amr).unwrap_or_else(|_| "[]".into()),
        acr: session.acr.clone(),
        created_at: now,
        expires_at: now + CODE_TTL_SECS,
        used_at: None,
        family_id: None,
    };
    let mut tx = state.store.begin().await?;
    if !crate::store::oauth::complete_request(&mut tx, request_id, now).await? {
        return Err(Failure::Page(
            StatusCode::BAD_REQUEST,
            "This sign-in request was already completed. Start again from the application.".into(),
        ));
    }
    crate::store::oauth::insert_code(&mut tx, &record).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &req.state {
        params.push(("state", s));
    }
    params.push(("iss", &state.config.issuer));
    Ok(see_other(&with_query(&req.redirect_uri, &params)))
}

/// Appends parameters to a registered redirect URI, keeping its own query.
fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            url.to_string()
        }
        Err(_) => uri.to_string(),
    }
}

fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

fn render(state: &AppState, failure: Failure) -> Response {
    match failure {
        Failure::Page(status, message) => html::error_page(status, &message),
        Failure::Redirect {
            redirect_uri,
            state: st,
            code,
            description,
        } => {
            let mut params = vec![
                ("error", code.as_str()),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = &st {
                params.push(("state", s));
            }
            params.push(("iss", &state.config.issuer));
            see_other(&with_query(&redirect_uri, &params))
        }
        Failure::Internal(e) => {
            tracing::error!(error = %e, "storage error at the authorization endpoint");
            let status = if e.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            html::error_page(
                status,
                "Sign-in is temporarily unavailable. Please try again.",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct RequestQuery {
    request: Option<String>,
}

/// Loads a pending, unexpired, uncompleted request.
async fn load_request(
    state: &AppState,
    id: Option<&str>,
) -> Result<(AuthorizationRequest, Client), Failure> {
    let expired = || {
        Failure::Page(
            StatusCode::BAD_REQUEST,
            "This sign-in request is unknown or has expired. Start again from the application."
                .into(),
        )
    };
    let id = id.filter(|i| valid_request_id(i)).ok_or_else(expired)?;
    let (json, expires_at, completed_at) = crate::store::oauth::find_request(&state.store, id)
        .await?
        .ok_or_else(expired)?;
    if completed_at.is_some() || expires_at <= state.clock.now() {
        return Err(expired());
    }
    let req: AuthorizationRequest = serde_json::from_str(&json).map_err(|_| expired())?;
    let client = match clients::find(&state.store, &req.client_id).await {
        Ok(c) => c,
        Err(ClientError::Store(e)) => return Err(Failure::Internal(e)),
        Err(_) => return Err(expired()),
    };
    Ok((req, client))
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RequestQuery>,
) -> Response {
    let result = async {
        let (req, client) = load_request(&state, q.request.as_deref()).await?;
        let session = sessions::current(&state, &headers).await?;
        let id = q.request.as_deref().unwrap_or_default();
        proceed(&state, id, &req, &client, session.as_ref()).await
    }
    .await;
    result.unwrap_or_else(|f| render(&state, f))
}

async fn consent_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RequestQuery>,
) -> Response {
    let result = async {
        let (req, client) = load_request(&state, q.request.as_deref()).await?;
        let id = q.request.clone().unwrap_or_default();
        let Some(_session) = sessions::current(&state, &headers).await? else {
            return Ok(see_other(&format!("/login?request={id}")));
        };
        let policy = sessions::cookie_policy(&state);
        let (token, set_cookie) = csrf::token_for_form(&policy, &headers);
        let scopes: String = req
            .scopes
            .iter()
            .map(|s| format!("<li>{}</li>", escape(s)))
            .collect();
        let body = format!(
            "<p><strong>{}</strong> asks to access your account with these permissions:</p>\
             <ul class=\"scopes\">{scopes}</ul>\
             <form method=\"post\" action=\"/consent\">{}{}\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button> \
             <button type=\"submit\" class=\"secondary\" name=\"decision\" value=\"deny\">Deny</button></form>",
            escape(&client.name),
            html::hidden(csrf::CSRF_FIELD, &token),
            html::hidden("request", &id),
        );
        let mut resp = html::page(StatusCode::OK, "Allow access?", &body);
        if let Some(c) = set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(resp)
    }
    .await;
    result.unwrap_or_else(|f| render(&state, f))
}

async fn consent_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = Params::parse(&body)
            .map_err(|e| Failure::Page(StatusCode::BAD_REQUEST, e.to_string()))?;
        let policy = sessions::cookie_policy(&state);
        if !csrf::verify(&policy, &headers, params.field(csrf::CSRF_FIELD)) {
            return Err(Failure::Page(
                StatusCode::BAD_REQUEST,
                "invalid or missing CSRF token: go back, reload the page and try again".into(),
            ));
        }
        let id = params.field("request").unwrap_or_default().to_string();
        let (req, client) = load_request(&state, Some(&id)).await?;
        let Some(session) = sessions::current(&state, &headers).await? else {
            return Ok(see_other(&format!("/login?request={id}")));
        };
        let now = state.clock.now();
        if params.field("decision") != Some("allow") {
            let mut tx = state.store.begin().await?;
            crate::store::oauth::complete_request(&mut tx, &id, now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Err(redirect_failure(
                &req.redirect_uri,
                req.state.as_deref(),
                ErrorCode::AccessDenied,
                "the user denied access",
            ));
        }
        // Remember the union of what was granted before and now.
        let before =
            crate::store::oauth::find_consent(&state.store, &session.user_id, &client.id).await?;
        let mut granted: Vec<String> = before
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        for s in &req.scopes {
            if !granted.contains(s) {
                granted.push(s.clone());
            }
        }
        let mut tx = state.store.begin().await?;
        crate::store::oauth::upsert_consent(
            &mut tx,
            &session.user_id,
            &client.id,
            &granted.join(" "),
            now,
        )
        .await?;
        audit::record(
            &state.store,
            &mut tx,
            state.clock.now_ms(),
            &AuditContext {
                actor: Actor {
                    kind: ActorKind::User,
                    id: session.user_id.clone(),
                    session: Some(session.id.clone()),
                },
                request_id: None,
                ip: None,
            },
            AuditEvent::new("consent.grant", format!("client:{}", client.id))
                .before(serde_json::json!({ "scopes": before }))
                .after(serde_json::json!({ "scopes": granted.join(" ") })),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        issue_code(&state, &id, &req, &session).await
    }
    .await;
    result.unwrap_or_else(|f| render(&state, f))
}

/// Records that `session_id` just signed in to continue request
/// `request_id` (called by the login steps).
pub async fn mark_authenticated(
    state: &AppState,
    request_id: &str,
    session_id: &str,
) -> Result<(), StoreError> {
    let Some((json, _, completed)) =
        crate::store::oauth::find_request(&state.store, request_id).await?
    else {
        return Ok(());
    };
    if completed.is_some() {
        return Ok(());
    }
    let Ok(mut req) = serde_json::from_str::<AuthorizationRequest>(&json) else {
        return Ok(());
    };
    req.authenticated_session = Some(session_id.to_string());
    let json = serde_json::to_string(&req).unwrap_or_default();
    crate::store::oauth::update_request_params(&state.store, request_id, &json).await
}
