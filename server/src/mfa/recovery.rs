//! Recovery codes: ten 80-bit codes shown once, stored as SHA-256, each
//! usable once; regenerating replaces the whole set. Using one is audited.

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::crypto;
use crate::store::StoreError;

use super::MfaError;

pub const COUNT: usize = 10;
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

fn new_code() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    // 16 symbols from a 31-letter alphabet ≈ 79 bits.
    let chars: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!(
        "{}-{}-{}-{}",
        &chars[0..4],
        &chars[4..8],
        &chars[8..12],
        &chars[12..16]
    )
}

fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn hash(code: &str) -> String {
    crypto::sha256_hex(&format!("portcullis-recovery:{}", normalize(code)))
}

/// A new set; the old codes stop working.
pub async fn regenerate(
    state: &AppState,
    user_id: &str,
    ctx: &AuditContext,
) -> Result<Vec<String>, StoreError> {
    let codes: Vec<String> = (0..COUNT).map(|_| new_code()).collect();
    let hashes: Vec<String> = codes.iter().map(|c| hash(c)).collect();
    let mut tx = state.store.begin().await?;
    crate::store::mfa::replace_recovery_codes(&mut tx, user_id, &hashes, state.clock.now()).await?;
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new("mfa.recovery_codes_generated", format!("user_id:{user_id}"))
            .after(serde_json::json!({"count": COUNT})),
    )
    .await?;
    tx.commit().await?;
    Ok(codes)
}

/// Uses one code (with lockout); audited as a security event.
pub async fn redeem(state: &AppState, user_id: &str, code: &str) -> Result<(), MfaError> {
    let check = async {
        let mut tx = state.store.begin().await?;
        if !crate::store::mfa::use_recovery_code(&mut tx, user_id, &hash(code), state.clock.now())
            .await?
        {
            return Err(MfaError::InvalidCode);
        }
        audit::record(
            &state.store,
            &mut tx,
            state.clock.now_ms(),
            &AuditContext::system("mfa"),
            AuditEvent::new("mfa.recovery_code_used", format!("user_id:{user_id}")),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::warn!(event = "security.recovery_code_used", user_id = %user_id, "recovery code used");
        Ok(())
    };
    super::totp::guarded(state, user_id, check).await
}
