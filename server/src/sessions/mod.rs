//! Server-side login sessions. The browser holds a random secret in a
//! cookie; only its SHA-256 is stored. The session's public id is the `sid`
//! claim that links every token issued through it.

pub mod account;
pub mod device;
pub mod end;
pub mod login;

use serde::Serialize;

use crate::app::AppState;
use crate::audit::AuditContext;
use crate::crypto;
use crate::store::StoreError;
use crate::web::cookies::{CookiePolicy, SameSite};

pub const SESSION_COOKIE: &str = "pc_session";

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub auth_time: i64,
    pub amr: Vec<String>,
    pub acr: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub ended_at: Option<i64>,
    /// `user` (the person), `support` (staff), `system` (timeout), `logout` (RP logout).
    pub ended_by: Option<String>,
    pub ended_by_id: Option<String>,
    pub end_reason: Option<String>,
    pub ticket_id: Option<String>,
}

impl Session {
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }

    /// The JSON shape shared by `/account/sessions` and the admin API.
    pub fn view(&self, current_id: Option<&str>) -> serde_json::Value {
        let time = |t: i64| crate::clock::rfc3339_ms(t.saturating_mul(1000));
        let mut v = serde_json::json!({
            "id": self.id,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "device": device::describe(self.user_agent.as_deref()),
            "created_at": time(self.created_at),
            "last_seen_at": time(self.last_seen_at),
            "auth_time": time(self.auth_time),
            "amr": self.amr,
            "acr": self.acr,
            "state": if self.is_live() { "active" } else { "ended" },
            "ended_at": self.ended_at.map(time),
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
            "ticket_id": self.ticket_id,
        });
        if let Some(current) = current_id {
            v["current"] = (current == self.id).into();
        }
        v
    }
}

/// Staff search filters (all optional).
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub username: Option<String>,
    pub client_id: Option<String>,
    pub ip: Option<String>,
    /// `active` or `ended`.
    pub state: Option<String>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
}

/// How the person authenticated, recorded at login.
#[derive(Debug, Clone)]
pub struct Authentication {
    pub user_id: String,
    pub amr: Vec<String>,
    pub acr: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Authentication context class for password-only logins (ISO/IEC 29115 level 1).
pub const ACR_PASSWORD: &str = "urn:portcullis:acr:pwd";

/// Starts a session, or re-authenticates the caller's current session of
/// the same user. Either way a new cookie secret is issued, so a secret
/// planted before login is worthless afterwards (no fixation), while the
/// session id (`sid`) of a re-authenticated session stays the same.
pub async fn login(
    state: &AppState,
    current: Option<&Session>,
    auth: Authentication,
) -> Result<(Session, String), StoreError> {
    let secret = crypto::random_secret("pcsid_");
    let secret_hash = crypto::sha256_hex(&secret);
    let now = state.clock.now();
    let session = match current.filter(|s| s.user_id == auth.user_id) {
        Some(existing) => {
            crate::store::sessions::reauthenticate(
                &state.store,
                &existing.id,
                &secret_hash,
                now,
                &auth.amr,
                &auth.acr,
            )
            .await?;
            Session {
                auth_time: now,
                last_seen_at: now,
                amr: auth.amr,
                acr: auth.acr,
                ..existing.clone()
            }
        }
        None => {
            let session = Session {
                id: crypto::random_id(),
                user_id: auth.user_id,
                created_at: now,
                last_seen_at: now,
                auth_time: now,
                amr: auth.amr,
                acr: auth.acr,
                ip: auth.ip,
                user_agent: auth.user_agent,
                ended_at: None,
                ended_by: None,
                ended_by_id: None,
                end_reason: None,
                ticket_id: None,
            };
            crate::store::sessions::insert(&state.store, &session, &secret_hash).await?;
            crate::security::events::check_new_device(state, &session).await?;
            session
        }
    };
    Ok((session, secret))
}

pub fn cookie_policy(state: &AppState) -> CookiePolicy {
    CookiePolicy::for_issuer(&state.config.issuer)
}

pub fn set_cookie(state: &AppState, secret: &str) -> axum::http::HeaderValue {
    cookie_policy(state).set(SESSION_COOKIE, secret, None, SameSite::Lax)
}

/// The live session named by the request's cookie: not ended, within the
/// idle and absolute timeouts. Touches `last_seen_at` at most once a minute.
pub async fn current(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Session>, StoreError> {
    let Some(secret) = cookie_policy(state).get(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    if !secret.starts_with("pcsid_") || secret.len() > 100 {
        return Ok(None);
    }
    let Some(session) =
        crate::store::sessions::find_by_secret_hash(&state.store, &crypto::sha256_hex(&secret))
            .await?
    else {
        return Ok(None);
    };
    if session.ended_at.is_some() {
        return Ok(None);
    }
    let now = state.clock.now();
    if let Some(reason) = timed_out(state, session.created_at, session.last_seen_at, now) {
        expire(state, &session.id, reason).await?;
        return Ok(None);
    }
    // Often enough that the idle timeout sees the activity, at most once a minute.
    let idle = i64::try_from(state.config.sessions.idle_timeout.as_secs()).unwrap_or(i64::MAX);
    if now - session.last_seen_at >= (idle / 4).clamp(1, 60) {
        crate::store::sessions::touch(&state.store, &session.id, now).await?;
    }
    Ok(Some(session))
}

/// Which timeout a live session has passed at `now`, if any. Every path
/// that relies on a session (cookie, token use, introspection) asks this,
/// so a timed-out session is dead at once, not when the sweeper next runs.
pub fn timed_out(
    state: &AppState,
    created_at: i64,
    last_seen_at: i64,
    now: i64,
) -> Option<&'static str> {
    let idle = i64::try_from(state.config.sessions.idle_timeout.as_secs()).unwrap_or(i64::MAX);
    let absolute =
        i64::try_from(state.config.sessions.absolute_timeout.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(created_at) > absolute {
        Some(end::ABSOLUTE_TIMEOUT)
    } else if now.saturating_sub(last_seen_at) > idle {
        Some(end::IDLE_TIMEOUT)
    } else {
        None
    }
}

/// Ends a timed-out session (revoking its tokens, auditing, notifying).
pub async fn expire(state: &AppState, session_id: &str, reason: &str) -> Result<(), StoreError> {
    end::end_session(
        state,
        session_id,
        &end::Ender::system(),
        reason,
        None,
        &AuditContext::system("sessions"),
    )
    .await?;
    Ok(())
}
