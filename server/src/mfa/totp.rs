//! TOTP (RFC 6238): SHA-1, 6 digits, 30-second steps, ±1 step accepted,
//! each step accepted once.

use totp_rs::{Builder, Secret, Totp};

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::store::StoreError;

use super::MfaError;

pub const ISSUER_LABEL: &str = "Portcullis";

fn build(secret_base32: &str, account: &str) -> Option<Totp> {
    let secret = Secret::try_from_base32(secret_base32).ok()?;
    Builder::new()
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER_LABEL))
        .build()
        .ok()
}

/// What the person needs to add the account to an authenticator app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrolment {
    pub secret: String,
    pub otpauth_uri: String,
    /// SVG of the QR code for `otpauth_uri`.
    #[serde(skip)]
    pub qr_svg: String,
}

/// Starts (or restarts) enrolment with a fresh 160-bit secret; it becomes
/// active only after [`confirm`].
pub async fn start(state: &AppState, user_id: &str, username: &str) -> Result<Enrolment, MfaError> {
    let mut bytes = [0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let secret = Secret::new(Box::new(bytes)).to_base32();
    let totp = build(&secret, username).ok_or(MfaError::InvalidCode)?;
    let uri = totp.to_url().map_err(|_| MfaError::InvalidCode)?;
    let mut tx = state.store.begin().await?;
    if !crate::store::mfa::put_unconfirmed_totp(&mut tx, user_id, &secret, state.clock.now())
        .await?
    {
        return Err(MfaError::AlreadyEnrolled);
    }
    tx.commit().await.map_err(StoreError::from)?;
    let qr_svg = qrcode::QrCode::new(uri.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    Ok(Enrolment {
        secret,
        otpauth_uri: uri,
        qr_svg,
    })
}

/// Checks `code` for the user's secret (confirmed, or the pending one when
/// `confirming`). On success the step is burnt, so the same code cannot be
/// used again. Lockout is the caller's job.
async fn verify_inner(
    state: &AppState,
    user_id: &str,
    code: &str,
    confirming: Option<&AuditContext>,
) -> Result<(), MfaError> {
    let is_confirming = confirming.is_some();
    let Some((secret, confirmed_at, _)) = crate::store::mfa::totp(&state.store, user_id).await?
    else {
        return Err(if is_confirming {
            MfaError::NotEnrolling
        } else {
            MfaError::InvalidCode
        });
    };
    if is_confirming == confirmed_at.is_some() {
        return Err(if is_confirming {
            MfaError::AlreadyEnrolled
        } else {
            MfaError::InvalidCode
        });
    }
    let totp = build(&secret, "").ok_or(MfaError::InvalidCode)?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let now = u64::try_from(state.clock.now()).unwrap_or(0);
    let step = totp.check(&code, now).ok_or(MfaError::InvalidCode)?;
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    let mut tx = state.store.begin().await?;
    let confirm_at = is_confirming.then(|| state.clock.now());
    if !crate::store::mfa::use_totp_step(&mut tx, user_id, step, confirm_at).await? {
        // A code for a step at or before the last accepted one: replay.
        return Err(MfaError::InvalidCode);
    }
    if let Some(ctx) = confirming {
        audit::record(
            &state.store,
            &mut tx,
            state.clock.now_ms(),
            ctx,
            AuditEvent::new("mfa.totp_enrolled", format!("user_id:{user_id}")),
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Verifies a login code, with lockout.
pub async fn verify(state: &AppState, user_id: &str, code: &str) -> Result<(), MfaError> {
    guarded(state, user_id, verify_inner(state, user_id, code, None)).await
}

/// Activates a pending enrolment with its first code, with lockout.
pub async fn confirm(
    state: &AppState,
    user_id: &str,
    code: &str,
    ctx: &AuditContext,
) -> Result<(), MfaError> {
    guarded(
        state,
        user_id,
        verify_inner(state, user_id, code, Some(ctx)),
    )
    .await
}

/// Runs a code check under the user's lockout counter. The attempt is
/// counted before the code is checked, so guesses sent in parallel cannot
/// get past the threshold before any of them is recorded as failed.
pub async fn guarded(
    state: &AppState,
    user_id: &str,
    check: impl std::future::Future<Output = Result<(), MfaError>>,
) -> Result<(), MfaError> {
    use crate::security::lockout::{self, Admission, Policy};
    let subject = format!("mfa:{user_id}");
    let attempt = match lockout::admit(state, &Policy::codes(state), &subject).await? {
        Admission::Locked { retry_after } => return Err(MfaError::LockedOut(retry_after)),
        Admission::Admitted(attempt) => attempt,
    };
    match check.await {
        Ok(()) => {
            lockout::clear(state, &subject).await?;
            Ok(())
        }
        Err(MfaError::InvalidCode) => {
            let ctx = lockout::context(None, None);
            match attempt
                .failed(state, &format!("user:{user_id}"), &ctx)
                .await?
            {
                Some(secs) => Err(MfaError::LockedOut(secs)),
                None => Err(MfaError::InvalidCode),
            }
        }
        Err(e) => {
            // Not a wrong code (e.g. a replayed one, a store error): the
            // attempt's provisional count stays, as for a wrong code, but no
            // lock is confirmed beyond what admit set.
            Err(e)
        }
    }
}

/// Removes the authenticator app (the caller checked step-up freshness).
pub async fn remove(state: &AppState, user_id: &str, ctx: &AuditContext) -> Result<bool, MfaError> {
    let mut tx = state.store.begin().await?;
    let removed = crate::store::mfa::delete_totp(&mut tx, user_id).await?;
    if removed {
        audit::record(
            &state.store,
            &mut tx,
            state.clock.now_ms(),
            ctx,
            AuditEvent::new("mfa.totp_removed", format!("user_id:{user_id}")),
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(removed)
}
