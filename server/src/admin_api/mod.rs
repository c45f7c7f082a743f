//! The admin JSON API on the internal listener. Callers are staff holding a
//! bearer access token that Portcullis issued to a first-party client
//! through the code flow; permissions are the user's roles at the time of
//! the call. Every mutating action needs a `reason` and is audited.

pub mod refunds;
pub mod sessions;

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
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string());
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
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
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

async fn me(staff: Staff) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "user_id": staff.user_id,
        "username": staff.username,
        "permissions": staff.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "amr": staff.amr,
        "auth_time": staff.auth_time,
    }))
}
