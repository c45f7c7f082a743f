//! Refund endpoints on the admin listener. Handlers are thin: they
//! authenticate, read the body, and call [`crate::refunds::Refunds`].
//!
//! Staff (bearer tokens from a first-party client):
//! `POST /admin/api/refunds` (`refunds:request`, `Idempotency-Key` required),
//! `GET /admin/api/refunds?status=&page=` and `GET /admin/api/refunds/{id}`
//! (`refunds:request` or `refunds:approve`),
//! `POST /admin/api/refunds/{id}/approve | reject` (`refunds:approve`),
//! `POST /admin/api/refunds/{id}/cancel` (the requester).
//!
//! The payments service (an access token from `client_credentials` with
//! scope `refunds:execute`): `POST /admin/api/refunds/{id}/executed` with
//! `{"approval_token"}`.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Justification, Staff};
use crate::app::{AppState, RequestId};
use crate::audit::{Actor, ActorKind, AuditContext};
use crate::error::AppError;
use crate::permissions::Permission;
use crate::refunds::{NewRefund, RefundError, Refunds, StaffMember, Status, validate};

/// Scope the payments service's access token must carry.
pub const EXECUTE_SCOPE: &str = "refunds:execute";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/refunds", get(list).post(create))
        .route("/admin/api/refunds/{id}", get(show))
        .route("/admin/api/refunds/{id}/approve", post(approve))
        .route("/admin/api/refunds/{id}/reject", post(reject))
        .route("/admin/api/refunds/{id}/cancel", post(cancel))
        .route("/admin/api/refunds/{id}/executed", post(executed))
}

fn member(staff: &Staff) -> StaffMember {
    StaffMember {
        user_id: staff.user_id.clone(),
        username: staff.username.clone(),
        permissions: staff.permissions.clone(),
        amr: staff.amr.clone(),
        auth_time: staff.auth_time,
    }
}

fn may_read(staff: &Staff) -> Result<(), AppError> {
    if staff.permissions.contains(&Permission::RefundsRequest)
        || staff.permissions.contains(&Permission::RefundsApprove)
    {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "reading refunds needs the permission refunds:request or refunds:approve".into(),
        ))
    }
}

/// A JSON body with `no-store` (responses name money and people).
fn json_text(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_value(v: &Value) -> Response {
    json_text(StatusCode::OK, v.to_string())
}

/// Staff operation: requests a refund under an idempotency key (the raw
/// key bytes; a missing key is refused before the body is looked at).
pub async fn request(
    state: &AppState,
    staff: &Staff,
    idempotency_key: Option<&[u8]>,
    body: &[u8],
) -> Result<crate::refunds::idempotency::IdempotentResponse, AppError> {
    staff.require(Permission::RefundsRequest)?;
    crate::refunds::idempotency::key(idempotency_key)?;
    let new = NewRefund::from_json(body)?;
    Ok(Refunds::from_state(state)
        .create(&member(staff), idempotency_key, new, &staff.audit_ctx())
        .await?)
}

/// Staff operation: refunds newest first, optionally in one status.
pub async fn list_refunds(
    state: &AppState,
    staff: &Staff,
    status: Option<&str>,
    page: i64,
) -> Result<super::Paged<crate::refunds::Refund>, AppError> {
    may_read(staff)?;
    let status = match status.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            AppError::BadRequest(format!("status must be one of {}", names.join(", ")))
        })?),
    };
    let (limit, offset) = super::page_window(page);
    let rows = Refunds::from_state(state)
        .list(status, limit, offset)
        .await?;
    Ok(super::Paged::from_rows(rows, page))
}

/// Staff operation: one refund.
pub async fn show_refund(
    state: &AppState,
    staff: &Staff,
    id: &str,
) -> Result<crate::refunds::Refund, AppError> {
    may_read(staff)?;
    Ok(Refunds::from_state(state).get(id).await?)
}

/// Staff operation: approves (the four-eyes rule, including the step-up
/// challenge, is decided by the domain with the refund row locked);
/// returns the refund and its approval token.
pub async fn approve_refund(
    state: &AppState,
    staff: &Staff,
    id: &str,
    j: &Justification,
) -> Result<(crate::refunds::Refund, String), AppError> {
    staff.require(Permission::RefundsApprove)?;
    let (reason, ticket) = j.validate()?;
    Ok(Refunds::from_state(state)
        .approve(
            &member(staff),
            id,
            &reason,
            ticket.as_deref(),
            &staff.audit_ctx(),
        )
        .await?)
}

/// Staff operation: an approver turns a request down.
pub async fn reject_refund(
    state: &AppState,
    staff: &Staff,
    id: &str,
    j: &Justification,
) -> Result<crate::refunds::Refund, AppError> {
    staff.require(Permission::RefundsApprove)?;
    let (reason, ticket) = j.validate()?;
    Ok(Refunds::from_state(state)
        .reject(
            &member(staff),
            id,
            &reason,
            ticket.as_deref(),
            &staff.audit_ctx(),
        )
        .await?)
}

/// Staff operation: the requester withdraws a request.
pub async fn cancel_refund(
    state: &AppState,
    staff: &Staff,
    id: &str,
    j: &Justification,
) -> Result<crate::refunds::Refund, AppError> {
    staff.require(Permission::RefundsRequest)?;
    let (reason, ticket) = j.validate()?;
    Ok(Refunds::from_state(state)
        .cancel(
            &member(staff),
            id,
            &reason,
            ticket.as_deref(),
            &staff.audit_ctx(),
        )
        .await?)
}

async fn create(
    State(state): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let key = headers
        .get(crate::refunds::idempotency::HEADER)
        .map(HeaderValue::as_bytes);
    let answer = request(&state, &staff, key, &body).await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::CREATED);
    let mut resp = json_text(status, answer.body);
    if answer.replayed {
        resp.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    page: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<ListQuery>,
) -> Result<Response, AppError> {
    let page = super::parse_page(q.page.as_deref())?;
    let rows = list_refunds(&state, &staff, q.status.as_deref(), page).await?;
    let items: Vec<Value> = rows.items.iter().map(|r| r.view()).collect();
    Ok(json_value(
        &json!({ "items": items, "next_page": rows.next_page }),
    ))
}

async fn show(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    Ok(json_value(&show_refund(&state, &staff, &id).await?.view()))
}

fn justification(
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Justification, AppError> {
    payload.map(|Json(j)| j).map_err(|e| {
        AppError::BadRequest(format!(
            "send a JSON body {{\"reason\", \"ticket_id\"}}: {}",
            e.body_text()
        ))
    })
}

async fn approve(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = justification(payload)?;
    let (refund, token) = approve_refund(&state, &staff, &id, &j).await?;
    let mut body = refund.view();
    body["approval_token"] = token.into();
    Ok(json_value(&body))
}

async fn reject(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = justification(payload)?;
    Ok(json_value(
        &reject_refund(&state, &staff, &id, &j).await?.view(),
    ))
}

async fn cancel(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    payload: Result<Json<Justification>, JsonRejection>,
) -> Result<Response, AppError> {
    let j = justification(payload)?;
    Ok(json_value(
        &cancel_refund(&state, &staff, &id, &j).await?.view(),
    ))
}

/// The payments service, authenticated by an access token it obtained
/// with `client_credentials` and scope `refunds:execute` (RFC 6750).
#[derive(Debug, Clone)]
pub struct PaymentsService {
    pub client_id: String,
    pub request_id: Option<String>,
    pub ip: Option<String>,
}

impl PaymentsService {
    fn audit_ctx(&self) -> AuditContext {
        AuditContext {
            actor: Actor {
                kind: ActorKind::Client,
                id: self.client_id.clone(),
                session: None,
            },
            request_id: self.request_id.clone(),
            ip: self.ip.clone(),
        }
    }
}

/// RFC 6750 §3.1 `insufficient_scope`.
fn insufficient_scope(message: &str) -> Response {
    let mut resp = (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": "insufficient_scope", "message": message })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"refunds:execute\"",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl FromRequestParts<AppState> for PaymentsService {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| AppError::Unauthorized.into_response())?;
        let record = crate::tokens::active_access_token(state, token.trim())
            .await
            .map_err(|e| AppError::from(e).into_response())?
            .ok_or_else(|| AppError::Unauthorized.into_response())?;
        if record.user_id.is_some() {
            return Err(insufficient_scope(
                "executing refunds needs a client_credentials token of the payments service, \
                 not a user's token",
            ));
        }
        if !record.scopes().any(|s| s == EXECUTE_SCOPE) {
            return Err(insufficient_scope(
                "executing refunds needs an access token with scope refunds:execute",
            ));
        }
        Ok(PaymentsService {
            client_id: record.client_id,
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            ip: crate::web::client_ip(&parts.extensions),
        })
    }
}

async fn executed(
    State(state): State<AppState>,
    service: PaymentsService,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let shape = "{\"approval_token\"}";
    let body = validate::object(&body, shape)?;
    validate::only_fields(&body, &["approval_token"])?;
    let token = match body.get("approval_token") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            return Err(RefundError::invalid(format!(
                "approval_token is required: send {shape} with the token from the approval"
            ))
            .into());
        }
    };
    let refund = Refunds::from_state(&state)
        .execute(&service.client_id, &id, &token, &service.audit_ctx())
        .await?;
    Ok(json_value(&refund.view()))
}
