//! Staff view of sessions: search, terminate one, terminate all of a user's.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Justification, Paged, Staff};
use crate::app::AppState;
use crate::error::AppError;
use crate::permissions::Permission;
use crate::sessions::SessionFilter;
use crate::sessions::end::{self, Ender};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/sessions", get(search_handler))
        .route("/admin/api/sessions/{id}/terminate", post(terminate))
        .route(
            "/admin/api/users/{username}/sessions/terminate",
            post(terminate_user),
        )
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn instant(name: &str, v: Option<String>) -> Result<Option<i64>, AppError> {
    match non_empty(v) {
        None => Ok(None),
        Some(t) => crate::clock::parse_rfc3339_ms(&t)
            .map(|ms| Some(ms.div_euclid(1000)))
            .ok_or_else(|| {
                AppError::BadRequest(format!(
                    "{name} must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z"
                ))
            }),
    }
}

/// A session as staff see it: with its user's name and the clients that
/// hold tokens from it.
#[derive(Debug, Clone)]
pub struct SessionListing {
    pub session: crate::sessions::Session,
    pub username: String,
    pub client_ids: Vec<String>,
}

impl SessionListing {
    pub fn view(&self) -> Value {
        let mut v = self.session.view(None);
        v["user"] = self.username.as_str().into();
        v["client_ids"] = self.client_ids.clone().into();
        v
    }
}

async fn listing(
    state: &AppState,
    session: crate::sessions::Session,
    username: String,
) -> Result<SessionListing, AppError> {
    let client_ids = crate::store::sessions::client_ids(&state.store, &session.id).await?;
    Ok(SessionListing {
        session,
        username,
        client_ids,
    })
}

/// Raw search parameters, as typed into the API query or the UI's form.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchQuery {
    pub user: Option<String>,
    pub client: Option<String>,
    pub ip: Option<String>,
    pub state: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub page: Option<String>,
}

/// Staff operation: one page of sessions matching `q` (`sessions:read`).
pub async fn search(
    state: &AppState,
    staff: &Staff,
    q: SearchQuery,
) -> Result<Paged<SessionListing>, AppError> {
    staff.require(Permission::SessionsRead)?;
    let state_filter = non_empty(q.state);
    if let Some(s) = &state_filter
        && s != "active"
        && s != "ended"
    {
        return Err(AppError::BadRequest("state must be active or ended".into()));
    }
    let page = super::parse_page(q.page.as_deref())?;
    let filter = SessionFilter {
        username: non_empty(q.user).map(|u| u.to_lowercase()),
        client_id: non_empty(q.client),
        ip: non_empty(q.ip),
        state: state_filter,
        created_from: instant("from", q.from)?,
        created_to: instant("to", q.to)?,
    };
    let (limit, offset) = super::page_window(page);
    let rows = crate::store::sessions::search(&state.store, &filter, limit, offset).await?;
    let mut items = Vec::with_capacity(rows.len());
    for (s, username) in rows {
        items.push(listing(state, s, username).await?);
    }
    Ok(Paged::from_rows(items, page))
}

/// Staff operation: ends one session and revokes its tokens
/// (`sessions:terminate`, fresh second factor, reason required).
pub async fn terminate_one(
    state: &AppState,
    staff: &Staff,
    id: &str,
    j: &Justification,
) -> Result<SessionListing, AppError> {
    staff.require(Permission::SessionsTerminate)?;
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = j.validate()?;
    let session = crate::store::sessions::find(&state.store, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no session {id}")))?;
    if !session.is_live() {
        return Err(AppError::Conflict(format!(
            "session {id} has already ended"
        )));
    }
    let ended = end::end_session(
        state,
        id,
        &Ender::support(&staff.username),
        &reason,
        ticket.as_deref(),
        &staff.audit_ctx(),
    )
    .await?;
    let Some((_, after)) = ended else {
        return Err(AppError::Conflict(format!(
            "session {id} has already ended"
        )));
    };
    let user = crate::store::users::find_by_id(&state.store, &after.user_id).await?;
    let username = user.map(|u| u.username).unwrap_or_default();
    listing(state, after, username).await
}

/// Staff operation: ends every live session of a user; returns the user's
/// name and the ended session ids.
pub async fn terminate_all_of_user(
    state: &AppState,
    staff: &Staff,
    username: &str,
    j: &Justification,
) -> Result<(String, Vec<String>), AppError> {
    staff.require(Permission::SessionsTerminate)?;
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = j.validate()?;
    let user = crate::users::find_by_username(&state.store, username)
        .await
        .map_err(|_| AppError::NotFound(format!("no user named {username:?}")))?;
    let ended = end::end_all_for_user(
        state,
        &user.id,
        None,
        &Ender::support(&staff.username),
        &reason,
        ticket.as_deref(),
        &staff.audit_ctx(),
    )
    .await?;
    let ids = ended.into_iter().map(|(b, _)| b.id).collect();
    Ok((user.username, ids))
}

async fn search_handler(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, AppError> {
    let page = search(&state, &staff, q).await?;
    Ok(Json(json!({
        "items": page.items.iter().map(SessionListing::view).collect::<Vec<_>>(),
        "next_page": page.next_page,
    })))
}

fn body(payload: Result<Json<Justification>, JsonRejection>) -> Result<Justification, AppError> {
    payload.map(|Json(j)| j).map_err(|e| {
        AppError::BadRequest(format!(
            "send a JSON body {{\"reason\", \"ticket_id\"}}: {}",
            e.body_text()
        ))
    })
}

async fn terminate(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let j = body(payload)?;
    Ok(Json(terminate_one(&state, &staff, &id, &j).await?.view()))
}

async fn terminate_user(
    State(state): State<AppState>,
    staff: Staff,
    Path(username): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let j = body(payload)?;
    let (user, ids) = terminate_all_of_user(&state, &staff, &username, &j).await?;
    Ok(Json(
        json!({ "user": user, "terminated": ids.len(), "session_ids": ids }),
    ))
}
