//! Staff view of sessions: search, terminate one, terminate all of a user's.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Justification, Staff};
use crate::app::AppState;
use crate::error::AppError;
use crate::permissions::Permission;
use crate::sessions::SessionFilter;
use crate::sessions::end::{self, Ender};

const PAGE_SIZE: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/sessions", get(search))
        .route("/admin/api/sessions/{id}/terminate", post(terminate))
        .route(
            "/admin/api/users/{username}/sessions/terminate",
            post(terminate_user),
        )
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    user: Option<String>,
    client: Option<String>,
    ip: Option<String>,
    state: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<String>,
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

async fn item(
    state: &AppState,
    s: &crate::sessions::Session,
    username: &str,
) -> Result<Value, AppError> {
    let mut v = s.view(None);
    v["user"] = username.into();
    v["client_ids"] = crate::store::sessions::client_ids(&state.store, &s.id)
        .await?
        .into();
    Ok(v)
}

async fn search(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, AppError> {
    staff.require(Permission::SessionsRead)?;
    let state_filter = non_empty(q.state);
    if let Some(s) = &state_filter
        && s != "active"
        && s != "ended"
    {
        return Err(AppError::BadRequest("state must be active or ended".into()));
    }
    let page = match non_empty(q.page) {
        None => 1,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=100_000).contains(p))
            .ok_or_else(|| AppError::BadRequest("page must be a positive whole number".into()))?,
    };
    let filter = SessionFilter {
        username: non_empty(q.user).map(|u| u.to_lowercase()),
        client_id: non_empty(q.client),
        ip: non_empty(q.ip),
        state: state_filter,
        created_from: instant("from", q.from)?,
        created_to: instant("to", q.to)?,
    };
    let rows = crate::store::sessions::search(
        &state.store,
        &filter,
        PAGE_SIZE + 1,
        (page - 1) * PAGE_SIZE,
    )
    .await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    let mut items = Vec::new();
    for (s, username) in rows.iter().take(PAGE_SIZE as usize) {
        items.push(item(&state, s, username).await?);
    }
    Ok(Json(
        json!({ "items": items, "next_page": more.then_some(page + 1) }),
    ))
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
    staff.require(Permission::SessionsTerminate)?;
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = body(payload)?.validate()?;
    let session = crate::store::sessions::find(&state.store, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no session {id}")))?;
    if !session.is_live() {
        return Err(AppError::Conflict(format!(
            "session {id} has already ended"
        )));
    }
    let ended = end::end_session(
        &state,
        &id,
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
    Ok(Json(item(&state, &after, &username).await?))
}

async fn terminate_user(
    State(state): State<AppState>,
    staff: Staff,
    Path(username): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    staff.require(Permission::SessionsTerminate)?;
    staff.require_step_up(state.clock.now())?;
    let (reason, ticket) = body(payload)?.validate()?;
    let user = crate::users::find_by_username(&state.store, &username)
        .await
        .map_err(|_| AppError::NotFound(format!("no user named {username:?}")))?;
    let ended = end::end_all_for_user(
        &state,
        &user.id,
        None,
        &Ender::support(&staff.username),
        &reason,
        ticket.as_deref(),
        &staff.audit_ctx(),
    )
    .await?;
    let ids: Vec<&str> = ended.iter().map(|(b, _)| b.id.as_str()).collect();
    Ok(Json(
        json!({ "user": user.username, "terminated": ids.len(), "session_ids": ids }),
    ))
}
