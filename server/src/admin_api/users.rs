//! Staff operations on people: search, detail, lock / unlock, reset second
//! factors. The functions here are what both the JSON API (handlers below)
//! and the admin UI call; permission, step-up, validation and audit happen
//! inside them, never in a handler.
//!
//! `GET /admin/api/users?q=&page=`, `GET /admin/api/users/{username}`
//! (`users:read`); `POST /admin/api/users/{username}/lock | unlock`,
//! `POST /admin/api/users/{username}/mfa/reset` (`users:manage`, fresh
//! second factor, body `{"reason", "ticket_id"}`).

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
use crate::permissions::Permission;
use crate::sessions::end::{self, Ender};
use crate::store::StoreError;
use crate::users::{self, User, UserError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/users", get(search_handler))
        .route("/admin/api/users/{username}", get(detail_handler))
        .route("/admin/api/users/{username}/lock", post(lock_handler))
        .route("/admin/api/users/{username}/unlock", post(unlock_handler))
        .route("/admin/api/users/{username}/mfa/reset", post(reset_handler))
}

/// A user as staff see them in a listing (never a password hash or factor
/// secret).
#[derive(Debug, Clone, Serialize)]
pub struct UserSummary {
    pub id: String,
    pub username: String,
    pub locked: bool,
    /// Unix seconds.
    pub created_at: i64,
    pub roles: Vec<String>,
    /// Sessions not yet ended.
    pub active_sessions: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecurityKeyView {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondFactors {
    /// An authenticator app is active (confirmed).
    pub totp: bool,
    pub security_keys: Vec<SecurityKeyView>,
    pub recovery_codes_left: i64,
    /// Passwordless passkey sign-in opted in.
    pub passkey_sign_in: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: UserSummary,
    pub factors: SecondFactors,
}

/// Longest `q` accepted (a username is at most 64 characters).
const MAX_QUERY_CHARS: usize = 64;

/// `users:read`. `q`: case-insensitive substring of the username (absent
/// or blank: everyone); by username, [`super::PAGE_SIZE`] per page.
pub async fn search(
    state: &AppState,
    staff: &Staff,
    q: Option<&str>,
    page: i64,
) -> Result<Paged<UserSummary>, AppError> {
    staff.require(Permission::UsersRead)?;
    let needle = q
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_lowercase);
    if needle
        .as_deref()
        .is_some_and(|n| n.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(AppError::BadRequest(format!(
            "q is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    let (limit, offset) = page_window(page);
    let rows = crate::store::users::search(&state.store, needle.as_deref(), limit, offset).await?;
    let rows = Paged::from_rows(rows, page);
    let mut items = Vec::with_capacity(rows.items.len());
    for row in rows.items {
        items.push(summary_of(state, row).await?);
    }
    Ok(Paged {
        items,
        page: rows.page,
        next_page: rows.next_page,
    })
}

/// `users:read`; 404 if there is no such user.
pub async fn detail(
    state: &AppState,
    staff: &Staff,
    username: &str,
) -> Result<UserDetail, AppError> {
    staff.require(Permission::UsersRead)?;
    let user = find_user(state, username).await?;
    detail_of(state, &user.id).await
}

/// `users:manage` and a fresh second factor. Locking also ends every live
/// session of the user, revoking their tokens, in the same transaction.
/// `409` if the account already is in that state; staff cannot lock
/// themselves out (`403`). Audited `user.lock` / `user.unlock` with
/// before/after, reason and ticket (and `session.terminate` per session).
pub async fn set_locked(
    state: &AppState,
    staff: &Staff,
    username: &str,
    locked: bool,
    j: &Justification,
) -> Result<UserSummary, AppError> {
    staff.require(Permission::UsersManage)?;
    let name = valid_name(username)?;
    if locked && name == staff.username {
        return Err(AppError::Forbidden(
            "you cannot lock your own account; ask another administrator".into(),
        ));
    }
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = j.validate()?;
    let ctx = staff.audit_ctx();
    let mut tx = state.store.begin().await?;
    let changed = users::set_locked_in(
        &state.store,
        &mut tx,
        state.clock.as_ref(),
        &ctx,
        &name,
        locked,
        Some(reason.clone()),
        ticket.clone(),
    )
    .await
    .map_err(user_error)?;
    let Some((_, after)) = changed else {
        let how = if locked { "locked" } else { "unlocked" };
        return Err(AppError::Conflict(format!(
            "user {name} is already {how}; nothing changed"
        )));
    };
    let ended = if locked {
        end::end_all_for_user_in(
            state,
            &mut tx,
            &after.id,
            None,
            &Ender::support(&staff.username),
            &format!("account locked: {reason}"),
            ticket.as_deref(),
            &ctx,
        )
        .await?
    } else {
        Vec::new()
    };
    tx.commit().await.map_err(StoreError::from)?;
    if !ended.is_empty() {
        end::after_end(state);
    }
    if !locked {
        // Unlocking after an identity check also lifts a brute-force
        // lockout of the sign-in (as Keycloak's "unlock user" does).
        crate::security::lockout::clear(state, &format!("login:{name}")).await?;
    }
    summary_by_id(state, &after.id).await
}

/// `users:manage` and a fresh second factor; not on one's own account
/// (`403`). In one transaction: removes the authenticator app, every
/// recovery code, every WebAuthn credential and the passkey sign-in
/// opt-in, ends the user's sessions (tokens revoked) and writes one
/// `user.mfa_reset` row with before/after (plus `session.terminate` per
/// session). `409` when the user has nothing to reset.
pub async fn reset_second_factors(
    state: &AppState,
    staff: &Staff,
    username: &str,
    j: &Justification,
) -> Result<UserDetail, AppError> {
    staff.require(Permission::UsersManage)?;
    let name = valid_name(username)?;
    if name == staff.username {
        return Err(AppError::Forbidden(
            "you cannot reset your own second factors; ask another administrator".into(),
        ));
    }
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = j.validate()?;
    let ctx = staff.audit_ctx();
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let user = crate::store::users::find_by_username_for_update(&state.store, &mut tx, &name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let totp = crate::store::mfa::delete_totp(&mut tx, &user.id).await?;
    let recovery_codes_left = crate::store::mfa::delete_recovery_codes(&mut tx, &user.id).await?;
    let keys =
        crate::store::webauthn::delete_all_credentials(&state.store, &mut tx, &user.id).await?;
    let passkey_sign_in =
        crate::store::webauthn::set_passkey_login(&state.store, &mut tx, &user.id, false, now)
            .await?;
    if !totp && recovery_codes_left == 0 && keys.is_empty() && !passkey_sign_in {
        return Err(AppError::Conflict(format!(
            "user {name} has no second factor to reset"
        )));
    }
    let key_views: Vec<_> = keys
        .iter()
        .map(|k| json!({"id": k.id, "name": k.name}))
        .collect();
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        &ctx,
        AuditEvent::new("user.mfa_reset", format!("user:{name}"))
            .reason(Some(reason.clone()), ticket.clone())
            .before(json!({
                "user_id": user.id,
                "totp": totp,
                "security_keys": key_views,
                "recovery_codes_left": recovery_codes_left,
                "passkey_sign_in": passkey_sign_in,
            }))
            .after(json!({
                "user_id": user.id,
                "totp": false,
                "security_keys": [],
                "recovery_codes_left": 0,
                "passkey_sign_in": false,
            })),
    )
    .await?;
    let ended = end::end_all_for_user_in(
        state,
        &mut tx,
        &user.id,
        None,
        &Ender::support(&staff.username),
        &format!("second factors reset: {reason}"),
        ticket.as_deref(),
        &ctx,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    if !ended.is_empty() {
        end::after_end(state);
    }
    detail_of(state, &user.id).await
}

// ---- helpers -------------------------------------------------------------------

fn not_found(name: &str) -> AppError {
    AppError::NotFound(format!("no user named {name:?}"))
}

/// The normalised username; a name no user can have is simply unknown.
fn valid_name(username: &str) -> Result<String, AppError> {
    users::normalize_username(username).map_err(|_| not_found(username.trim()))
}

fn user_error(e: UserError) -> AppError {
    match e {
        UserError::NotFound(name) | UserError::InvalidUsername(name) => not_found(&name),
        UserError::Store(e) => e.into(),
        other => AppError::BadRequest(other.to_string()),
    }
}

async fn find_user(state: &AppState, username: &str) -> Result<User, AppError> {
    users::find_by_username(&state.store, username)
        .await
        .map_err(user_error)
}

async fn summary_of(
    state: &AppState,
    row: crate::store::users::UserListRow,
) -> Result<UserSummary, AppError> {
    let roles = crate::permissions::roles_of(&state.store, &row.id).await?;
    Ok(UserSummary {
        id: row.id,
        username: row.username,
        locked: row.locked != 0,
        created_at: row.created_at,
        roles,
        active_sessions: row.active_sessions,
    })
}

async fn summary_by_id(state: &AppState, user_id: &str) -> Result<UserSummary, AppError> {
    let row = crate::store::users::list_row(&state.store, user_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no user with id {user_id}")))?;
    summary_of(state, row).await
}

async fn detail_of(state: &AppState, user_id: &str) -> Result<UserDetail, AppError> {
    let user = summary_by_id(state, user_id).await?;
    let totp = crate::store::mfa::totp(&state.store, user_id)
        .await?
        .is_some_and(|(_, confirmed, _)| confirmed.is_some());
    let security_keys = crate::store::webauthn::list_credentials(&state.store, user_id)
        .await?
        .into_iter()
        .map(|k| SecurityKeyView {
            id: k.id,
            name: k.name,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        })
        .collect();
    let factors = SecondFactors {
        totp,
        security_keys,
        recovery_codes_left: crate::store::mfa::recovery_codes_left(&state.store, user_id).await?,
        passkey_sign_in: crate::store::webauthn::passkey_login(&state.store, user_id).await?,
    };
    Ok(UserDetail { user, factors })
}

// ---- HTTP ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: Option<String>,
    page: Option<String>,
}

/// The `{"reason", "ticket_id"}` body, or a 400 saying what to send.
pub(super) fn justification(
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Justification, AppError> {
    payload.map(|Json(j)| j).map_err(|e| {
        AppError::BadRequest(format!(
            "send a JSON body {{\"reason\", \"ticket_id\"}}: {}",
            e.body_text()
        ))
    })
}

async fn search_handler(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<SearchQuery>,
) -> Result<Response, AppError> {
    let page = super::parse_page(q.page.as_deref())?;
    let found = search(&state, &staff, q.q.as_deref(), page).await?;
    Ok(no_store_json(StatusCode::OK, &found))
}

async fn detail_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(username): Path<String>,
) -> Result<Response, AppError> {
    let user = detail(&state, &staff, &username).await?;
    Ok(no_store_json(StatusCode::OK, &user))
}

async fn lock_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(username): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = justification(payload)?;
    let user = set_locked(&state, &staff, &username, true, &j).await?;
    Ok(no_store_json(StatusCode::OK, &user))
}

async fn unlock_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(username): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = justification(payload)?;
    let user = set_locked(&state, &staff, &username, false, &j).await?;
    Ok(no_store_json(StatusCode::OK, &user))
}

async fn reset_handler(
    State(state): State<AppState>,
    staff: Staff,
    Path(username): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = justification(payload)?;
    let user = reset_second_factors(&state, &staff, &username, &j).await?;
    Ok(no_store_json(StatusCode::OK, &user))
}
