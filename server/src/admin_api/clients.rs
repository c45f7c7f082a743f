//! Staff operations on OAuth clients (`clients:manage`): list, show,
//! register, update redirect URIs and scopes, rotate the secret, revoke
//! every token (incident response). Both the JSON API (handlers below) and
//! the admin UI call these functions; permission, step-up, validation and
//! audit happen inside them.
//!
//! First-party clients (the admin UI's own, `portcullis-admin-ui`, and
//! anything created with `client create --first-party`) carry staff
//! authority, so they are managed with the CLI only: staff can see them
//! here but not change them, and cannot create new ones.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Justification, Paged, Staff, no_store_json, page_window};
use crate::app::AppState;
use crate::audit::{self, AuditEvent};
use crate::error::AppError;
use crate::oauth::clients::{self, Client, ClientError, GrantType, NewClient};
use crate::permissions::Permission;
use crate::store::StoreError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/api/clients",
            get(list_handler).post(register_handler),
        )
        .route(
            "/admin/api/clients/{id}",
            get(show_handler).post(update_handler),
        )
        .route(
            "/admin/api/clients/{id}/secret/rotate",
            post(rotate_handler),
        )
        .route(
            "/admin/api/clients/{id}/tokens/revoke",
            post(revoke_handler),
        )
}

/// A client as staff see it: never any secret material.
#[derive(Debug, Clone, Serialize)]
pub struct ClientView {
    pub client_id: String,
    pub name: String,
    pub public: bool,
    pub first_party: bool,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub may_introspect: bool,
    pub exchange_audiences: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<&Client> for ClientView {
    fn from(c: &Client) -> Self {
        ClientView {
            client_id: c.id.clone(),
            name: c.name.clone(),
            public: c.is_public,
            first_party: c.first_party,
            redirect_uris: c.redirect_uris.clone(),
            scopes: c.scopes.clone(),
            grant_types: c
                .grant_types
                .iter()
                .map(|g| g.as_str().to_string())
                .collect(),
            may_introspect: c.may_introspect,
            exchange_audiences: c.exchange_audiences.clone(),
            created_at: c.created_at,
        }
    }
}

impl ClientView {
    fn audit(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// `POST /admin/api/clients`. Unknown fields are refused (a
/// `"first_party": true` must not pass silently).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRegistration {
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub may_introspect: bool,
    pub reason: Option<String>,
    pub ticket_id: Option<String>,
}

/// `POST /admin/api/clients/{id}`: the new complete lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientUpdate {
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub reason: Option<String>,
    pub ticket_id: Option<String>,
}

/// `clients:manage`; oldest first.
pub async fn list(
    state: &AppState,
    staff: &Staff,
    page: i64,
) -> Result<Paged<ClientView>, AppError> {
    staff.require(Permission::ClientsManage)?;
    let (limit, offset) = page_window(page);
    let rows = crate::store::clients::list(&state.store, limit, offset).await?;
    Ok(Paged::from_rows(rows, page).map(|c| ClientView::from(&c)))
}

/// `clients:manage`; 404 if unknown.
pub async fn show(
    state: &AppState,
    staff: &Staff,
    client_id: &str,
) -> Result<ClientView, AppError> {
    staff.require(Permission::ClientsManage)?;
    let client = crate::store::clients::find(&state.store, client_id)
        .await?
        .ok_or_else(|| not_found(client_id))?;
    Ok(ClientView::from(&client))
}

/// `clients:manage`. Validated exactly as `portcullis client create`
/// (same code); never first-party. Returns the plaintext secret once
/// (`None` for a public client). Duplicate id: `409`. Audited
/// `client.register`.
pub async fn register(
    state: &AppState,
    staff: &Staff,
    reg: ClientRegistration,
) -> Result<(ClientView, Option<String>), AppError> {
    staff.require(Permission::ClientsManage)?;
    let (reason, ticket) = Justification {
        reason: reg.reason,
        ticket_id: reg.ticket_id,
    }
    .validate()?;
    if reg.client_id.trim().is_empty() {
        return Err(AppError::BadRequest("client_id is required".into()));
    }
    for g in &reg.grant_types {
        if g == GrantType::TOKEN_EXCHANGE_URN {
            return Err(AppError::BadRequest(
                "the token-exchange grant is configured with the CLI (--exchange-audience)".into(),
            ));
        }
    }
    let scope =
        clients::parse_scopes(reg.scopes.iter().map(String::as_str)).map_err(client_error)?;
    let new = NewClient {
        name: reg.client_id.clone(),
        id: Some(reg.client_id),
        is_public: reg.public,
        redirect_uris: reg.redirect_uris,
        grant_types: reg.grant_types,
        // None: the CLI's default (`openid`).
        scope: (!scope.is_empty()).then(|| scope.join(" ")),
        first_party: false,
        may_introspect: reg.may_introspect,
        ..NewClient::default()
    };
    let (client, secret) = clients::register_as(
        &state.store,
        state.clock.as_ref(),
        &staff.audit_ctx(),
        new,
        AuditEvent::new("client.register", "").reason(Some(reason), ticket),
    )
    .await
    .map_err(client_error)?;
    Ok((ClientView::from(&client), secret.map(|s| s.0)))
}

/// `clients:manage`. Replaces redirect URIs and scopes, validated exactly
/// as at registration; not for first-party clients (`409`). Drops the
/// client from every replica's cache. Audited `client.update`.
pub async fn update(
    state: &AppState,
    staff: &Staff,
    client_id: &str,
    upd: ClientUpdate,
) -> Result<ClientView, AppError> {
    staff.require(Permission::ClientsManage)?;
    let (reason, ticket) = Justification {
        reason: upd.reason,
        ticket_id: upd.ticket_id,
    }
    .validate()?;
    let mut redirect_uris: Vec<String> = Vec::new();
    for uri in upd.redirect_uris {
        clients::check_redirect_uri(&uri).map_err(client_error)?;
        if !redirect_uris.contains(&uri) {
            redirect_uris.push(uri);
        }
    }
    let scopes =
        clients::parse_scopes(upd.scopes.iter().map(String::as_str)).map_err(client_error)?;
    let mut tx = state.store.begin().await?;
    let before = locked_client(state, &mut tx, client_id).await?;
    if before.allows_grant(GrantType::AuthorizationCode) && redirect_uris.is_empty() {
        return Err(AppError::BadRequest(
            "the authorization_code grant needs at least one redirect URI".into(),
        ));
    }
    let now = state.clock.now();
    crate::store::clients::update_settings(&mut tx, client_id, &redirect_uris, &scopes, now)
        .await?;
    let after = Client {
        redirect_uris,
        scopes,
        updated_at: now,
        ..before.clone()
    };
    crate::store::tokens::notify_client_change(&state.store, &mut tx).await?;
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        &staff.audit_ctx(),
        AuditEvent::new("client.update", format!("client:{client_id}"))
            .reason(Some(reason), ticket)
            .before(ClientView::from(&before).audit())
            .after(ClientView::from(&after).audit()),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    state.introspection_cache.clear();
    state.preissued.invalidate();
    Ok(ClientView::from(&after))
}

/// `clients:manage` and a fresh second factor. A new secret, shown once;
/// the old one stops working at once on every replica. Public clients
/// (`409`) have none; first-party clients are CLI-only (`409`). Audited
/// `client.secret_rotated` (never the secret).
pub async fn rotate_secret(
    state: &AppState,
    staff: &Staff,
    client_id: &str,
    j: &Justification,
) -> Result<(ClientView, String), AppError> {
    staff.require(Permission::ClientsManage)?;
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = j.validate()?;
    let mut tx = state.store.begin().await?;
    let before = locked_client(state, &mut tx, client_id).await?;
    if before.is_public {
        return Err(AppError::Conflict(format!(
            "client {client_id} is public and has no secret to rotate"
        )));
    }
    let secret = crate::crypto::random_secret("pcs_");
    let now = state.clock.now();
    crate::store::clients::set_secret_hash(
        &mut tx,
        client_id,
        &crate::crypto::sha256_hex(&secret),
        now,
    )
    .await?;
    crate::store::tokens::notify_client_change(&state.store, &mut tx).await?;
    let view = ClientView::from(&before);
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        &staff.audit_ctx(),
        AuditEvent::new("client.secret_rotated", format!("client:{client_id}"))
            .reason(Some(reason), ticket)
            .before(view.audit())
            .after(json!({"client_id": client_id, "secret_rotated_at": now})),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    state.introspection_cache.clear();
    state.preissued.invalidate();
    Ok((view, secret))
}

/// `clients:manage` and a fresh second factor. Incident response: every
/// access and refresh token of the client revoked (and its unredeemed
/// codes expired) in one transaction, every replica's cache dropped.
/// Returns how many tokens were still usable. First-party clients are
/// CLI-only (`409`). Audited `client.tokens_revoked`.
pub async fn revoke_all_tokens(
    state: &AppState,
    staff: &Staff,
    client_id: &str,
    j: &Justification,
) -> Result<u64, AppError> {
    staff.require(Permission::ClientsManage)?;
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = j.validate()?;
    let mut tx = state.store.begin().await?;
    let client = locked_client(state, &mut tx, client_id).await?;
    let now = state.clock.now();
    let revoked = crate::store::tokens::revoke_all_of_client(
        &state.store,
        &mut tx,
        client_id,
        now,
        "revoked by staff",
    )
    .await?;
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        &staff.audit_ctx(),
        AuditEvent::new("client.tokens_revoked", format!("client:{client_id}"))
            .reason(Some(reason), ticket)
            .before(json!({"client": ClientView::from(&client).audit(), "usable_tokens": revoked}))
            .after(json!({"client_id": client_id, "usable_tokens": 0, "revoked": revoked})),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    state.introspection_cache.clear();
    state.preissued.invalidate();
    tracing::info!(event = "client.tokens_revoked", client_id = %client_id, revoked, "every token of a client revoked by staff");
    Ok(revoked)
}

// ---- helpers -------------------------------------------------------------------

fn not_found(client_id: &str) -> AppError {
    AppError::NotFound(format!("no client with id {client_id:?}"))
}

fn client_error(e: ClientError) -> AppError {
    match e {
        ClientError::AlreadyExists(_) => AppError::Conflict(e.to_string()),
        ClientError::NotFound(id) => not_found(&id),
        ClientError::Store(e) => e.into(),
        other => AppError::BadRequest(other.to_string()),
    }
}

fn first_party_refusal(client_id: &str) -> AppError {
    AppError::Conflict(format!(
        "client {client_id} is a first-party client (it carries staff authority); \
         change it with the portcullis CLI, not the admin API"
    ))
}

/// The client, row-locked in `tx`: unknown → 404, first-party → 409.
async fn locked_client(
    state: &AppState,
    tx: &mut crate::store::Tx,
    client_id: &str,
) -> Result<Client, AppError> {
    let client = crate::store::clients::find_for_update(&state.store, tx, client_id)
        .await?
        .ok_or_else(|| not_found(client_id))?;
    if client.first_party {
        return Err(first_party_refusal(client_id));
    }
    Ok(client)
}

// ---- HTTP ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ListQuery {
    page: Option<String>,
}

fn body<T>(payload: Result<Json<T>, JsonRejection>, shape: &str) -> Result<T, AppError> {
    payload
        .map(|Json(v)| v)
        .map_err(|e| AppError::BadRequest(format!("send a JSON body {shape}: {}", e.body_text())))
}

async fn list_handler(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<ListQuery>,
) -> Result<Response, AppError> {
    let page = super::parse_page(q.page.as_deref())?;
    Ok(no_store_json(
        StatusCode::OK,
        &list(&state, &staff, page).await?,
    ))
}

async fn show_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    Ok(no_store_json(
        StatusCode::OK,
        &show(&state, &staff, &id).await?,
    ))
}

async fn register_handler(
    State(state): State<AppState>,
    staff: Staff,
    payload: Result<Json<ClientRegistration>, JsonRejection>,
) -> Result<Response, AppError> {
    let reg = body(
        payload,
        "{\"client_id\", \"redirect_uris\", \"scopes\", \"grant_types\", \"public\", \"may_introspect\", \"reason\", \"ticket_id\"}",
    )?;
    let (view, secret) = register(&state, &staff, reg).await?;
    let mut out = serde_json::to_value(&view).map_err(|e| AppError::Internal(e.to_string()))?;
    if let Some(secret) = secret {
        out["client_secret"] = secret.into();
    }
    Ok(no_store_json(StatusCode::CREATED, &out))
}

async fn update_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<ClientUpdate>, JsonRejection>,
) -> Result<Response, AppError> {
    let upd = body(
        payload,
        "{\"redirect_uris\", \"scopes\", \"reason\", \"ticket_id\"}",
    )?;
    Ok(no_store_json(
        StatusCode::OK,
        &update(&state, &staff, &id, upd).await?,
    ))
}

async fn rotate_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = super::users::justification(payload)?;
    let (view, secret) = rotate_secret(&state, &staff, &id, &j).await?;
    let mut out = serde_json::to_value(&view).map_err(|e| AppError::Internal(e.to_string()))?;
    out["client_secret"] = secret.into();
    Ok(no_store_json(StatusCode::OK, &out))
}

async fn revoke_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = super::users::justification(payload)?;
    let revoked = revoke_all_tokens(&state, &staff, &id, &j).await?;
    Ok(no_store_json(
        StatusCode::OK,
        &json!({"client_id": id, "revoked": revoked}),
    ))
}
