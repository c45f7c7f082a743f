//! The admin JSON API on the internal listener. Callers are staff holding a
//! bearer access token that Portcullis issued to a first-party client
//! through the code flow; permissions are the user's roles at the time of
//! the call. Every mutating action needs a `reason` and is audited.

pub mod audit;
pub mod clients;
pub mod refunds;
pub mod sessions;
pub mod users;

use std::collections::BTreeSet;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;

use crate::app::{AppState, RequestId};
use crate::audit::{Actor, ActorKind, AuditContext};
use crate::error::AppError;
use crate::permissions::Permission;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/me", axum::routing::get(me))
        .merge(sessions::router())
        .merge(refunds::router())
        .merge(users::router())
        .merge(clients::router())
        .merge(audit::router())
}

/// An authenticated staff member.
#[derive(Debug, Clone)]
pub struct Staff {
    pub user_id: String,
    pub username: String,
    pub session_id: Option<String>,
    pub auth_time: Option<i64>,
    pub amr: Vec<String>,
    pub permissions: BTreeSet<Permission>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    /// `mfa.step_up_max_age` in seconds.
    pub step_up_max_age: i64,
}

pub use crate::mfa::{ACR_MFA, SECOND_FACTOR_AMR};

impl Staff {
    /// True when the staff member's session used a second factor.
    pub fn has_second_factor(&self) -> bool {
        self.amr
            .iter()
            .any(|m| SECOND_FACTOR_AMR.contains(&m.as_str()))
    }

    /// Sensitive actions (approve a refund, terminate sessions, manage MFA,
    /// rotate keys, grant roles): a second factor within the last five
    /// minutes, or an RFC 9470 step-up challenge.
    pub fn require_step_up(&self, now: i64) -> Result<(), AppError> {
        if crate::mfa::fresh_second_factor(&self.amr, self.auth_time, now, self.step_up_max_age) {
            return Ok(());
        }
        Err(AppError::StepUpRequired {
            message: "sign in again with a second factor (within the last 5 minutes) to do this"
                .into(),
            acr_values: ACR_MFA,
            max_age: Some(self.step_up_max_age),
        })
    }

    pub fn require(&self, permission: Permission) -> Result<(), AppError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this action needs the permission {permission}"
            )))
        }
    }

    pub fn audit_ctx(&self) -> AuditContext {
        AuditContext {
            actor: Actor {
                kind: ActorKind::User,
                id: self.user_id.clone(),
                session: self.session_id.clone(),
            },
            request_id: self.request_id.clone(),
            ip: self.ip.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = AppError;

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
            .ok_or(AppError::Unauthorized)?;
        let record = crate::tokens::active_access_token(state, token.trim())
            .await?
            .ok_or(AppError::Unauthorized)?;
        let ip = crate::web::client_ip(&parts.extensions);
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        Staff::from_access_token(state, &record, request_id, ip).await
    }
}

impl Staff {
    /// The staff member an active access token speaks for: the bearer path
    /// of the admin API and the admin UI's server-side session both end
    /// here, so both apply the same rules.
    pub async fn from_access_token(
        state: &AppState,
        record: &crate::tokens::AccessTokenRecord,
        request_id: Option<String>,
        ip: Option<String>,
    ) -> Result<Staff, AppError> {
        let user_id = record.user_id.clone().ok_or(AppError::Unauthorized)?;
        // Only tokens from our own first-party clients carry staff authority.
        let client = crate::oauth::clients::find(&state.store, &record.client_id)
            .await
            .map_err(|_| AppError::Unauthorized)?;
        if !client.first_party {
            return Err(AppError::Forbidden(
                "admin API tokens must come from a first-party client".into(),
            ));
        }
        let user = crate::store::users::find_by_id(&state.store, &user_id)
            .await?
            .filter(|u| !u.locked)
            .ok_or(AppError::Unauthorized)?;
        let permissions = crate::permissions::permissions_of(&state.store, &user.id).await?;
        // Freshness comes from the token's session as it is now, so a
        // step-up in the same session counts without a new token.
        let (auth_time, amr) = match &record.session_id {
            Some(sid) => match crate::store::sessions::find(&state.store, sid).await? {
                Some(s) if s.is_live() => (Some(s.auth_time), s.amr),
                _ => return Err(AppError::Unauthorized),
            },
            None => (record.auth_time, record.amr_list()),
        };
        // Staff must sign in with a second factor (RFC 9470 challenge).
        let staff = !permissions.is_empty();
        if staff && !amr.iter().any(|m| SECOND_FACTOR_AMR.contains(&m.as_str())) {
            return Err(AppError::StepUpRequired {
                message: "staff must sign in with a second factor (enrol one at /account/mfa)"
                    .into(),
                acr_values: ACR_MFA,
                max_age: None,
            });
        }
        Ok(Staff {
            amr,
            auth_time,
            session_id: record.session_id.clone(),
            user_id: user.id,
            username: user.username,
            permissions,
            request_id,
            step_up_max_age: crate::mfa::step_up_max_age(state),
            ip,
        })
    }
}

/// `{"reason", "ticket_id"}` on every mutating call.
#[derive(Debug, Deserialize)]
pub struct Justification {
    pub reason: Option<String>,
    pub ticket_id: Option<String>,
}

impl Justification {
    /// The trimmed reason (required, at most 500 characters) and ticket id.
    pub fn validate(&self) -> Result<(String, Option<String>), AppError> {
        let reason = self.reason.as_deref().map(str::trim).unwrap_or("");
        if reason.is_empty() {
            return Err(AppError::BadRequest(
                "a reason is required for this action".into(),
            ));
        }
        if reason.chars().count() > 500 {
            return Err(AppError::BadRequest(
                "reason is longer than 500 characters".into(),
            ));
        }
        let ticket = self
            .ticket_id
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if ticket.is_some_and(|t| t.chars().count() > 100) {
            return Err(AppError::BadRequest(
                "ticket_id is longer than 100 characters".into(),
            ));
        }
        Ok((reason.to_string(), ticket.map(str::to_string)))
    }
}

/// One page of a staff listing: at most [`PAGE_SIZE`] items and the next
/// page's number when there is one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub next_page: Option<i64>,
}

impl<T> Paged<T> {
    /// Builds a page from `rows` fetched with `LIMIT PAGE_SIZE + 1`: the
    /// extra row only tells that another page exists.
    pub fn from_rows(mut rows: Vec<T>, page: i64) -> Paged<T> {
        let more = rows.len() as i64 > PAGE_SIZE;
        rows.truncate(PAGE_SIZE as usize);
        Paged {
            items: rows,
            page,
            next_page: more.then_some(page + 1),
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U> {
        Paged {
            items: self.items.into_iter().map(f).collect(),
            page: self.page,
            next_page: self.next_page,
        }
    }
}

/// Items per page of every admin listing.
pub const PAGE_SIZE: i64 = 50;

/// `(LIMIT, OFFSET)` for `page`, with one extra row (see [`Paged::from_rows`]).
pub fn page_window(page: i64) -> (i64, i64) {
    (PAGE_SIZE + 1, (page.max(1) - 1) * PAGE_SIZE)
}

/// `page` query value: absent/empty = 1; otherwise 1..=100000 or AppError::BadRequest.
pub fn parse_page(raw: Option<&str>) -> Result<i64, AppError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(1),
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=100_000).contains(p))
            .ok_or_else(|| {
                AppError::BadRequest("page must be a whole number from 1 to 100000".into())
            }),
    }
}

/// A JSON answer with `Cache-Control: no-store` (admin answers name people,
/// clients and secrets).
pub fn no_store_json<T: serde::Serialize>(
    status: axum::http::StatusCode,
    body: &T,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

async fn me(staff: Staff) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "user_id": staff.user_id,
        "username": staff.username,
        "permissions": staff.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "amr": staff.amr,
        "auth_time": staff.auth_time,
    }))
}
