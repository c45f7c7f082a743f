//! Second factors: TOTP (RFC 6238), recovery codes, WebAuthn security keys
//! and passkeys (`webauthn`, HTTP in `webauthn_http`), the `/login/mfa`
//! step and exponential lockout on wrong codes.

pub mod account;
pub mod lockout;
pub mod login;
pub mod recovery;
pub mod totp;
pub mod webauthn;
pub mod webauthn_http;

use crate::sessions::Session;
use crate::store::{Store, StoreError};

/// amr values that prove a second factor (RFC 8176).
pub const SECOND_FACTOR_AMR: &[&str] = &["otp", "hwk", "swk"];
/// Default for `mfa.step_up_max_age`: sensitive actions need a second
/// factor used within this many seconds.
pub const STEP_UP_MAX_AGE: i64 = 300;
/// acr of a login with password and a second factor.
pub const ACR_MFA: &str = "urn:portcullis:acr:mfa";

#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error("the code is not valid")]
    InvalidCode,
    #[error("too many wrong codes; try again in {0} seconds")]
    LockedOut(i64),
    #[error("an authenticator app is already active; remove it first")]
    AlreadyEnrolled,
    #[error("no authenticator app enrolment is in progress")]
    NotEnrolling,
    #[error("this needs a recently used second factor: sign in again with it")]
    StepUpRequired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What second factors a user has.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Factors {
    pub totp: bool,
    pub webauthn: i64,
    pub recovery_codes_left: i64,
}

impl Factors {
    /// Recovery codes alone are a fallback, not a factor.
    pub fn any(&self) -> bool {
        self.totp || self.webauthn > 0
    }
}

pub async fn factors(store: &Store, user_id: &str) -> Result<Factors, StoreError> {
    let totp = crate::store::mfa::totp(store, user_id).await?;
    Ok(Factors {
        totp: totp.is_some_and(|(_, confirmed, _)| confirmed.is_some()),
        webauthn: crate::store::mfa::webauthn_count(store, user_id).await?,
        recovery_codes_left: crate::store::mfa::recovery_codes_left(store, user_id).await?,
    })
}

/// A second factor was used, at most `max_age` seconds ago.
pub fn fresh_second_factor(amr: &[String], auth_time: Option<i64>, now: i64, max_age: i64) -> bool {
    amr.iter().any(|m| SECOND_FACTOR_AMR.contains(&m.as_str()))
        && auth_time.is_some_and(|t| now - t <= max_age)
}

pub fn step_up_max_age(state: &crate::app::AppState) -> i64 {
    i64::try_from(state.config.mfa.step_up_max_age.as_secs()).unwrap_or(STEP_UP_MAX_AGE)
}

/// The session used a second factor within `mfa.step_up_max_age`.
pub fn session_is_fresh(state: &crate::app::AppState, session: &Session) -> bool {
    fresh_second_factor(
        &session.amr,
        Some(session.auth_time),
        state.clock.now(),
        step_up_max_age(state),
    )
}
