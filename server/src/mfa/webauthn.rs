//! WebAuthn with `webauthn-rs`: security keys and passkeys as a second
//! factor, and passwordless passkey sign-in for users who opt in.
//!
//! * The relying party is the issuer: RP ID = the issuer's host, origin =
//!   the issuer's origin. WebAuthn needs a domain name, so with an issuer
//!   on an IP address (the development default) it is off.
//! * `webauthn.user_verification = required` (default) registers and
//!   authenticates through the passkey API (the authenticator must verify
//!   the person: PIN or biometric); `preferred` through the security-key
//!   API (user verification when the key can do it). The stored credential
//!   records which API registered it; every ceremony uses the API of the
//!   current policy, and webauthn-rs still enforces the policy a credential
//!   was registered with (a passkey keeps requiring user verification).
//! * Ceremony state lives in `webauthn_challenges`, bound to the session
//!   (registration), the pending login (second factor) or a browser cookie
//!   (passwordless), expires after [`CEREMONY_TTL_SECS`] and is used once:
//!   it is marked used before the response is verified.
//! * Signature counters: webauthn-rs refuses an assertion whose counter
//!   did not increase (`CredentialPossibleCompromise`); the counter is also
//!   compared with the stored one under a row lock, which catches a clone
//!   that answers a challenge issued before the genuine key's last use.
//!   Either way the login is refused, the counter is left alone, the key is
//!   suspended (a clone could otherwise simply count past the genuine key)
//!   and `mfa.webauthn_possible_clone` is audited.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    Credential, DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey, SecurityKeyAuthentication,
    SecurityKeyRegistration, Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::config::{Config, UserVerification};
use crate::crypto;
use crate::store::StoreError;
use crate::store::webauthn::{self as store, CredentialRow};

use super::MfaError;

/// How long a started ceremony can be finished. The WebAuthn default
/// timeout: shorter ones fail people who need time to find and use a key.
pub const CEREMONY_TTL_SECS: i64 = 300;
/// Registered credentials per user.
pub const MAX_CREDENTIALS: i64 = 20;
/// Longest credential name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

const KIND_REGISTER: &str = "register";
const KIND_SECOND_FACTOR: &str = "second_factor";
const KIND_PASSWORDLESS: &str = "passwordless";

/// The relying party, built once at start-up from the issuer.
#[derive(Debug)]
pub struct RelyingParty {
    webauthn: Option<Webauthn>,
    user_verification: UserVerification,
    rp_id: Option<String>,
}

impl RelyingParty {
    /// `Ok` with WebAuthn off when the issuer's host is not a domain name;
    /// `Err` when webauthn-rs refuses the configuration.
    pub fn from_config(config: &Config) -> Result<RelyingParty, String> {
        let issuer = Url::parse(&config.issuer).map_err(|e| format!("issuer: {e}"))?;
        let user_verification = config.webauthn.user_verification;
        let Some(host) = issuer.domain().map(str::to_string) else {
            return Ok(RelyingParty {
                webauthn: None,
                user_verification,
                rp_id: None,
            });
        };
        let origin = Url::parse(&issuer.origin().ascii_serialization())
            .map_err(|e| format!("issuer origin: {e}"))?;
        let webauthn = WebauthnBuilder::new(&host, &origin)
            .and_then(|b| {
                b.rp_name(super::totp::ISSUER_LABEL)
                    .timeout(Duration::from_secs(CEREMONY_TTL_SECS.unsigned_abs()))
                    .build()
            })
            .map_err(|e| format!("WebAuthn relying party for {host}: {e}"))?;
        Ok(RelyingParty {
            webauthn: Some(webauthn),
            user_verification,
            rp_id: Some(host),
        })
    }

    /// False when the issuer is on an IP address.
    pub fn available(&self) -> bool {
        self.webauthn.is_some()
    }

    pub fn rp_id(&self) -> Option<&str> {
        self.rp_id.as_deref()
    }

    pub fn user_verification(&self) -> UserVerification {
        self.user_verification
    }

    fn get(&self) -> Result<&Webauthn, KeyError> {
        self.webauthn.as_ref().ok_or(KeyError::Unavailable)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "security keys are not available: the server's issuer URL must use a domain name, not an IP address"
    )]
    Unavailable,
    #[error("no usable security key is registered for this account")]
    NoCredentials,
    #[error("this security key request has expired or was already used; start again")]
    ChallengeInvalid,
    #[error("the security key was not accepted")]
    Rejected,
    #[error(
        "this security key may have been cloned (its signature counter went backwards); it was refused and suspended: use another factor, then remove the key and register it again"
    )]
    PossibleClone,
    #[error("this security key is already registered")]
    AlreadyRegistered,
    #[error("an account can have at most {MAX_CREDENTIALS} security keys; remove one first")]
    TooMany,
    #[error("no such security key")]
    NotFound,
    #[error("name the security key: 1 to {MAX_NAME_CHARS} characters, no control characters")]
    InvalidName,
    #[error("passkey sign-in is not enabled for this account; sign in with your password")]
    PasswordlessNotEnabled,
    #[error("register a security key or passkey before turning on passkey sign-in")]
    PasswordlessNeedsKey,
    #[error("too many failed attempts; try again in {0} seconds")]
    LockedOut(i64),
    #[error("this needs a recently used second factor: sign in again with it")]
    StepUpRequired,
    /// A bug or an impossible state: logged, answered with a plain 500.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<MfaError> for KeyError {
    fn from(e: MfaError) -> Self {
        match e {
            MfaError::LockedOut(secs) => KeyError::LockedOut(secs),
            MfaError::StepUpRequired => KeyError::StepUpRequired,
            MfaError::Store(s) => KeyError::Store(s),
            _ => KeyError::Rejected,
        }
    }
}

/// A credential as stored in `webauthn_credentials.passkey`: the
/// webauthn-rs type, tagged with the API that registered it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredKey {
    Passkey { key: Passkey },
    SecurityKey { key: SecurityKey },
}

impl StoredKey {
    fn parse(json: &str) -> Result<StoredKey, StoreError> {
        serde_json::from_str(json)
            .map_err(|e| StoreError::Corrupt(format!("webauthn credential: {e}")))
    }

    fn to_json(&self) -> Result<String, StoreError> {
        serde_json::to_string(self)
            .map_err(|e| StoreError::Corrupt(format!("webauthn credential: {e}")))
    }

    fn kind(&self) -> &'static str {
        match self {
            StoredKey::Passkey { .. } => "passkey",
            StoredKey::SecurityKey { .. } => "security_key",
        }
    }

    fn credential(&self) -> Credential {
        match self {
            StoredKey::Passkey { key } => Credential::from(key.clone()),
            StoredKey::SecurityKey { key } => Credential::from(key.clone()),
        }
    }

    fn cred_id(&self) -> Vec<u8> {
        match self {
            StoredKey::Passkey { key } => key.cred_id().clone(),
            StoredKey::SecurityKey { key } => key.cred_id().clone(),
        }
    }

    /// Applies a verified assertion (counter, backup flags) to the key.
    fn update(&mut self, result: &webauthn_rs::prelude::AuthenticationResult) {
        match self {
            StoredKey::Passkey { key } => {
                key.update_credential(result);
            }
            StoredKey::SecurityKey { key } => {
                key.update_credential(result);
            }
        }
    }
}

/// Ceremony state kept server-side between start and finish.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Ceremony {
    RegisterPasskey {
        state: PasskeyRegistration,
    },
    RegisterSecurityKey {
        state: SecurityKeyRegistration,
    },
    SecondFactorPasskey {
        state: PasskeyAuthentication,
    },
    SecondFactorSecurityKey {
        state: SecurityKeyAuthentication,
    },
    Passwordless {
        state: DiscoverableAuthentication,
        request: Option<String>,
    },
}

fn encode_state(c: &Ceremony) -> Result<String, KeyError> {
    serde_json::to_string(c).map_err(|e| KeyError::Internal(format!("webauthn state: {e}")))
}

fn decode_state(text: &str) -> Result<Ceremony, KeyError> {
    serde_json::from_str(text)
        .map_err(|e| KeyError::Store(StoreError::Corrupt(format!("webauthn state: {e}"))))
}

/// What the browser needs to start a ceremony: `challenge_id` plus the
/// options for `navigator.credentials.create/get` (`publicKey`, and
/// `mediation` for passwordless sign-in).
fn options_json(
    challenge_id: &str,
    options: impl Serialize,
) -> Result<serde_json::Value, KeyError> {
    let mut v = serde_json::to_value(options).map_err(json_internal)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("challenge_id".into(), challenge_id.into());
    }
    Ok(v)
}

async fn save_ceremony(
    state: &AppState,
    user_id: Option<&str>,
    kind: &str,
    ceremony: &Ceremony,
    binding: &str,
) -> Result<String, KeyError> {
    let id = crypto::random_id();
    let now = state.clock.now();
    store::insert_challenge(
        &state.store,
        &id,
        user_id,
        kind,
        &encode_state(ceremony)?,
        binding,
        now,
        now + CEREMONY_TTL_SECS,
    )
    .await?;
    Ok(id)
}

/// Uses the ceremony once; `ChallengeInvalid` if it is unknown, of another
/// kind or binding, expired, used, or (with `user_id`) someone else's.
async fn take_ceremony(
    state: &AppState,
    challenge_id: &str,
    kind: &str,
    binding: &str,
    user_id: Option<&str>,
) -> Result<Ceremony, KeyError> {
    if challenge_id.is_empty() || challenge_id.len() > 64 {
        return Err(KeyError::ChallengeInvalid);
    }
    let taken =
        store::take_challenge(&state.store, challenge_id, kind, binding, state.clock.now()).await?;
    match taken {
        Some((owner, text)) if user_id.is_none() || owner.as_deref() == user_id => {
            decode_state(&text)
        }
        _ => Err(KeyError::ChallengeInvalid),
    }
}

/// Binding of a registration ceremony to the session that started it.
pub fn session_binding(session_id: &str) -> String {
    crypto::sha256_hex(&format!("webauthn-session:{session_id}"))
}

fn credential_id(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

// ---- listing and management --------------------------------------------------

/// A registered credential as the account pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    pub id: String,
    pub name: String,
    /// `passkey` or `security_key`: the API that registered it.
    pub kind: &'static str,
    pub created_at: String,
    pub last_used_at: Option<String>,
    /// Set when the key was refused as a possible clone.
    pub suspended_at: Option<String>,
}

fn time(secs: i64) -> String {
    crate::clock::rfc3339_ms(secs.saturating_mul(1000))
}

fn view(row: &CredentialRow) -> Result<CredentialView, StoreError> {
    Ok(CredentialView {
        id: row.id.clone(),
        name: row.name.clone(),
        kind: StoredKey::parse(&row.passkey)?.kind(),
        created_at: time(row.created_at),
        last_used_at: row.last_used_at.map(time),
        suspended_at: row.suspended_at.map(time),
    })
}

pub async fn list(state: &AppState, user_id: &str) -> Result<Vec<CredentialView>, StoreError> {
    store::list_credentials(&state.store, user_id)
        .await?
        .iter()
        .map(view)
        .collect()
}

pub async fn passkey_login_enabled(state: &AppState, user_id: &str) -> Result<bool, StoreError> {
    store::passkey_login(&state.store, user_id).await
}

/// Trimmed name, or `InvalidName`.
pub fn valid_name(name: &str) -> Result<String, KeyError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(KeyError::InvalidName);
    }
    Ok(name.to_string())
}

/// Starts registering a key for the user (the caller checked the session,
/// CSRF and step-up freshness). Keys the user already has are excluded.
pub async fn start_registration(
    state: &AppState,
    user_id: &str,
    username: &str,
    session_id: &str,
) -> Result<serde_json::Value, KeyError> {
    let webauthn = state.webauthn.get()?;
    let rows = store::list_credentials(&state.store, user_id).await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= MAX_CREDENTIALS {
        return Err(KeyError::TooMany);
    }
    let exclude = rows
        .iter()
        .map(|r| StoredKey::parse(&r.passkey).map(|k| k.cred_id()))
        .collect::<Result<Vec<_>, _>>()?;
    let handle = store::user_handle(&state.store, user_id, state.clock.now()).await?;
    let handle = Uuid::parse_str(&handle)
        .map_err(|e| KeyError::Store(StoreError::Corrupt(format!("webauthn handle: {e}"))))?;
    let (options, ceremony) = match state.webauthn.user_verification {
        UserVerification::Required => {
            let (ccr, reg) = webauthn
                .start_passkey_registration(handle, username, username, Some(exclude))
                .map_err(internal)?;
            (
                serde_json::to_value(&ccr).map_err(json_internal)?,
                Ceremony::RegisterPasskey { state: reg },
            )
        }
        UserVerification::Preferred => {
            let (ccr, reg) = webauthn
                .start_securitykey_registration(
                    handle,
                    username,
                    username,
                    Some(exclude),
                    None,
                    None,
                )
                .map_err(internal)?;
            (
                serde_json::to_value(&ccr).map_err(json_internal)?,
                Ceremony::RegisterSecurityKey { state: reg },
            )
        }
    };
    let id = save_ceremony(
        state,
        Some(user_id),
        KIND_REGISTER,
        &ceremony,
        &session_binding(session_id),
    )
    .await?;
    options_json(&id, options)
}

/// What a finished registration produced.
#[derive(Debug)]
pub struct Registered {
    pub credential: CredentialView,
    /// A new set when the account had no recovery codes (first factor).
    pub recovery_codes: Vec<String>,
}

/// Verifies the browser's answer and stores the key under `name`.
pub async fn finish_registration(
    state: &AppState,
    user_id: &str,
    session_id: &str,
    challenge_id: &str,
    name: &str,
    response: &RegisterPublicKeyCredential,
    ctx: &AuditContext,
) -> Result<Registered, KeyError> {
    let webauthn = state.webauthn.get()?;
    let name = valid_name(name)?;
    let ceremony = take_ceremony(
        state,
        challenge_id,
        KIND_REGISTER,
        &session_binding(session_id),
        Some(user_id),
    )
    .await?;
    let key = match ceremony {
        Ceremony::RegisterPasskey { state: reg } => webauthn
            .finish_passkey_registration(response, &reg)
            .map(|key| StoredKey::Passkey { key }),
        Ceremony::RegisterSecurityKey { state: reg } => webauthn
            .finish_securitykey_registration(response, &reg)
            .map(|key| StoredKey::SecurityKey { key }),
        _ => return Err(KeyError::ChallengeInvalid),
    }
    .map_err(|e| {
        tracing::info!(event = "mfa.webauthn_registration_failed", user_id = %user_id, error = %e, "security key registration refused");
        KeyError::Rejected
    })?;
    let now = state.clock.now();
    let row = CredentialRow {
        id: credential_id(&key.cred_id()),
        user_id: user_id.to_string(),
        name: name.clone(),
        passkey: key.to_json()?,
        created_at: now,
        last_used_at: None,
        suspended_at: None,
    };
    let mut tx = state.store.begin().await?;
    if store::count_credentials_tx(&mut tx, user_id).await? >= MAX_CREDENTIALS {
        return Err(KeyError::TooMany);
    }
    if !store::insert_credential(&mut tx, &row).await? {
        return Err(KeyError::AlreadyRegistered);
    }
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new("mfa.webauthn_registered", format!("user_id:{user_id}"))
            .after(serde_json::json!({"credential_id": row.id, "name": name, "kind": key.kind()})),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    // The first factor comes with a set of recovery codes, shown once.
    let recovery_codes =
        if crate::store::mfa::recovery_codes_left(&state.store, user_id).await? == 0 {
            super::recovery::regenerate(state, user_id, ctx).await?
        } else {
            Vec::new()
        };
    Ok(Registered {
        credential: view(&row)?,
        recovery_codes,
    })
}

pub async fn rename(
    state: &AppState,
    user_id: &str,
    id: &str,
    name: &str,
    ctx: &AuditContext,
) -> Result<CredentialView, KeyError> {
    let name = valid_name(name)?;
    let mut tx = state.store.begin().await?;
    let Some(old) = store::rename_credential(&state.store, &mut tx, user_id, id, &name).await?
    else {
        return Err(KeyError::NotFound);
    };
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new("mfa.webauthn_renamed", format!("user_id:{user_id}"))
            .before(serde_json::json!({"credential_id": id, "name": old}))
            .after(serde_json::json!({"credential_id": id, "name": name})),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let row = store::find_credential(&state.store, id)
        .await?
        .ok_or(KeyError::NotFound)?;
    Ok(view(&row)?)
}

/// Removes a key (the caller checked step-up freshness). Removing the last
/// one also turns passkey sign-in off.
pub async fn remove(
    state: &AppState,
    user_id: &str,
    id: &str,
    ctx: &AuditContext,
) -> Result<(), KeyError> {
    let mut tx = state.store.begin().await?;
    let Some(row) = store::delete_credential(&state.store, &mut tx, user_id, id).await? else {
        return Err(KeyError::NotFound);
    };
    let left = store::count_credentials_tx(&mut tx, user_id).await?;
    let mut after = serde_json::json!({"credentials_left": left});
    if left == 0
        && store::set_passkey_login(&state.store, &mut tx, user_id, false, state.clock.now())
            .await?
    {
        after["passkey_login"] = false.into();
    }
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new("mfa.webauthn_removed", format!("user_id:{user_id}"))
            .before(serde_json::json!({"credential_id": row.id, "name": row.name}))
            .after(after),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Turns passwordless passkey sign-in on or off (the caller checked
/// step-up freshness). Turning it on needs a usable key.
pub async fn set_passkey_login(
    state: &AppState,
    user_id: &str,
    enabled: bool,
    ctx: &AuditContext,
) -> Result<bool, KeyError> {
    state.webauthn.get()?;
    let now = state.clock.now();
    if enabled {
        let usable = store::list_credentials(&state.store, user_id)
            .await?
            .iter()
            .any(|r| r.suspended_at.is_none());
        if !usable {
            return Err(KeyError::PasswordlessNeedsKey);
        }
    }
    store::user_handle(&state.store, user_id, now).await?;
    let mut tx = state.store.begin().await?;
    let before = store::set_passkey_login(&state.store, &mut tx, user_id, enabled, now).await?;
    if before != enabled {
        let action = if enabled {
            "mfa.passkey_login_enabled"
        } else {
            "mfa.passkey_login_disabled"
        };
        audit::record(
            &state.store,
            &mut tx,
            state.clock.now_ms(),
            ctx,
            AuditEvent::new(action, format!("user_id:{user_id}"))
                .before(serde_json::json!({"passkey_login": before}))
                .after(serde_json::json!({"passkey_login": enabled})),
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(enabled)
}

// ---- authentication ------------------------------------------------------------

/// Starts a second-factor ceremony for the user of a pending login
/// (`binding`: the login challenge's hash), offering every usable key.
///
/// The request asks for user verification under `required`, and under
/// `preferred` too when every offered key will be held to it anyway
/// (registered as a passkey, or verified at registration: webauthn-rs
/// keeps enforcing that); some authenticators skip verification when it is
/// only preferred, which such a key would then fail.
pub async fn start_second_factor(
    state: &AppState,
    user_id: &str,
    binding: &str,
) -> Result<serde_json::Value, KeyError> {
    let webauthn = state.webauthn.get()?;
    let stored = store::list_credentials(&state.store, user_id)
        .await?
        .iter()
        .filter(|r| r.suspended_at.is_none())
        .map(|r| StoredKey::parse(&r.passkey))
        .collect::<Result<Vec<StoredKey>, _>>()?;
    if stored.is_empty() {
        return Err(KeyError::NoCredentials);
    }
    let all_verify = stored
        .iter()
        .all(|k| matches!(k, StoredKey::Passkey { .. }) || k.credential().user_verified);
    let verification = match state.webauthn.user_verification {
        UserVerification::Preferred if all_verify => UserVerification::Required,
        policy => policy,
    };
    let keys: Vec<Credential> = stored.iter().map(StoredKey::credential).collect();
    let (options, ceremony) = match verification {
        UserVerification::Required => {
            let keys: Vec<Passkey> = keys.into_iter().map(Passkey::from).collect();
            let (rcr, auth) = webauthn
                .start_passkey_authentication(&keys)
                .map_err(internal)?;
            (
                serde_json::to_value(&rcr).map_err(json_internal)?,
                Ceremony::SecondFactorPasskey { state: auth },
            )
        }
        UserVerification::Preferred => {
            let keys: Vec<SecurityKey> = keys.into_iter().map(SecurityKey::from).collect();
            let (rcr, auth) = webauthn
                .start_securitykey_authentication(&keys)
                .map_err(internal)?;
            (
                serde_json::to_value(&rcr).map_err(json_internal)?,
                Ceremony::SecondFactorSecurityKey { state: auth },
            )
        }
    };
    let id = save_ceremony(state, Some(user_id), KIND_SECOND_FACTOR, &ceremony, binding).await?;
    options_json(&id, options)
}

/// A verified assertion.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user_id: String,
    /// `hwk` for a device-bound key, `swk` for a synced (backup-eligible) passkey.
    pub method: &'static str,
    /// The pending authorization request (passwordless sign-in only).
    pub request: Option<String>,
}

/// Who is answering, for the audit row of a possible clone.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub challenge_id: &'a str,
    pub binding: &'a str,
    pub response: &'a PublicKeyCredential,
    pub ctx: &'a AuditContext,
}

/// Finishes a second-factor ceremony for `user_id`. Every failure counts
/// toward the user's lockout.
pub async fn finish_second_factor(
    state: &AppState,
    user_id: &str,
    attempt: &Attempt<'_>,
) -> Result<Verified, KeyError> {
    state.webauthn.get()?;
    counted(state, user_id, async {
        let ceremony = take_ceremony(
            state,
            attempt.challenge_id,
            KIND_SECOND_FACTOR,
            attempt.binding,
            Some(user_id),
        )
        .await?;
        if !matches!(
            ceremony,
            Ceremony::SecondFactorPasskey { .. } | Ceremony::SecondFactorSecurityKey { .. }
        ) {
            return Err(KeyError::ChallengeInvalid);
        }
        verify(state, user_id, ceremony, attempt).await
    })
    .await
}

/// The user a passwordless answer names (by its userHandle), if they
/// opted in to passkey sign-in and their account is not locked.
pub async fn passwordless_user(
    state: &AppState,
    response: &PublicKeyCredential,
) -> Result<String, KeyError> {
    let webauthn = state.webauthn.get()?;
    let (handle, _) = webauthn
        .identify_discoverable_authentication(response)
        .map_err(|_| KeyError::Rejected)?;
    let Some((user_id, enabled)) = store::find_by_handle(&state.store, &handle.to_string()).await?
    else {
        return Err(KeyError::Rejected);
    };
    let user = crate::store::users::find_by_id(&state.store, &user_id).await?;
    if !enabled || user.is_none_or(|u| u.locked) {
        return Err(KeyError::PasswordlessNotEnabled);
    }
    Ok(user_id)
}

/// Starts a passwordless (discoverable) ceremony bound to a browser cookie.
pub async fn start_passwordless(
    state: &AppState,
    binding: &str,
    request: Option<&str>,
) -> Result<serde_json::Value, KeyError> {
    let webauthn = state.webauthn.get()?;
    let (rcr, auth) = webauthn
        .start_discoverable_authentication()
        .map_err(internal)?;
    let ceremony = Ceremony::Passwordless {
        state: auth,
        request: request.map(str::to_string),
    };
    let id = save_ceremony(state, None, KIND_PASSWORDLESS, &ceremony, binding).await?;
    options_json(&id, rcr)
}

/// Finishes passwordless sign-in for the user [`passwordless_user`] found.
pub async fn finish_passwordless(
    state: &AppState,
    user_id: &str,
    attempt: &Attempt<'_>,
) -> Result<Verified, KeyError> {
    state.webauthn.get()?;
    counted(state, user_id, async {
        let ceremony = take_ceremony(
            state,
            attempt.challenge_id,
            KIND_PASSWORDLESS,
            attempt.binding,
            None,
        )
        .await?;
        if !matches!(ceremony, Ceremony::Passwordless { .. }) {
            return Err(KeyError::ChallengeInvalid);
        }
        verify(state, user_id, ceremony, attempt).await
    })
    .await
}

/// Runs `check` under the user's lockout (`mfa::totp::guarded`): any
/// failure but a database error counts as a wrong attempt.
async fn counted(
    state: &AppState,
    user_id: &str,
    check: impl std::future::Future<Output = Result<Verified, KeyError>>,
) -> Result<Verified, KeyError> {
    let mut verified: Option<Verified> = None;
    let mut failure: Option<KeyError> = None;
    let guarded = super::totp::guarded(state, user_id, async {
        match check.await {
            Ok(v) => {
                verified = Some(v);
                Ok(())
            }
            Err(KeyError::Store(e)) => Err(MfaError::Store(e)),
            // Not the person's fault: not counted.
            Err(KeyError::Internal(detail)) => Err(MfaError::Store(StoreError::Corrupt(detail))),
            Err(e) => {
                failure = Some(e);
                Err(MfaError::InvalidCode)
            }
        }
    })
    .await;
    match guarded {
        Ok(()) => verified.ok_or(KeyError::Rejected),
        // A clone matters more than the lock it may have triggered.
        Err(MfaError::LockedOut(_)) if matches!(failure, Some(KeyError::PossibleClone)) => {
            Err(KeyError::PossibleClone)
        }
        Err(MfaError::InvalidCode) => Err(failure.unwrap_or(KeyError::Rejected)),
        Err(e) => Err(e.into()),
    }
}

/// Checks the assertion against the stored key, then records the use (or
/// the possible clone) under a row lock.
async fn verify(
    state: &AppState,
    user_id: &str,
    ceremony: Ceremony,
    attempt: &Attempt<'_>,
) -> Result<Verified, KeyError> {
    let webauthn = state.webauthn.get()?;
    let rsp = attempt.response;
    let cred_id = credential_id(&rsp.raw_id);
    // Only the user's own, unsuspended keys.
    let Some(row) = store::find_credential(&state.store, &cred_id).await? else {
        return Err(KeyError::Rejected);
    };
    if row.user_id != user_id || row.suspended_at.is_some() {
        return Err(KeyError::Rejected);
    }
    let stored = StoredKey::parse(&row.passkey)?;
    let (result, request) = match ceremony {
        Ceremony::SecondFactorPasskey { state: auth } => {
            (webauthn.finish_passkey_authentication(rsp, &auth), None)
        }
        Ceremony::SecondFactorSecurityKey { state: auth } => {
            (webauthn.finish_securitykey_authentication(rsp, &auth), None)
        }
        Ceremony::Passwordless {
            state: auth,
            request,
        } => (
            webauthn.finish_discoverable_authentication_v2(rsp, auth, stored.credential()),
            request,
        ),
        _ => return Err(KeyError::ChallengeInvalid),
    };
    let result = match result {
        Ok(r) => r,
        Err(WebauthnError::CredentialPossibleCompromise) => {
            let presented = authenticator_counter(rsp);
            return Err(possible_clone(state, &row, presented, attempt.ctx).await);
        }
        Err(e) => {
            tracing::info!(event = "mfa.webauthn_failed", user_id = %user_id, error = %e, "security key assertion refused");
            return Err(KeyError::Rejected);
        }
    };
    let mut tx = state.store.begin().await?;
    let Some(current) = store::find_credential_for_update(&state.store, &mut tx, &cred_id).await?
    else {
        return Err(KeyError::Rejected);
    };
    if current.user_id != user_id || current.suspended_at.is_some() {
        return Err(KeyError::Rejected);
    }
    let mut key = StoredKey::parse(&current.passkey)?;
    // The ceremony checked the counter against the key as it was when the
    // ceremony started; the key may have been used since.
    let stored_counter = key.credential().counter;
    if (result.counter() > 0 || stored_counter > 0) && result.counter() <= stored_counter {
        tx.rollback().await.map_err(StoreError::from)?;
        return Err(possible_clone(state, &current, Some(result.counter()), attempt.ctx).await);
    }
    key.update(&result);
    store::record_use(&mut tx, &cred_id, &key.to_json()?, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Verified {
        user_id: user_id.to_string(),
        method: if result.backup_eligible() {
            "swk"
        } else {
            "hwk"
        },
        request,
    })
}

/// The signature counter in the authenticator data (bytes 33..37), for the
/// audit row; None if the data is too short.
fn authenticator_counter(rsp: &PublicKeyCredential) -> Option<u32> {
    let data = rsp.response.authenticator_data.get(33..37)?;
    Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
}

/// Suspends the key and audits `mfa.webauthn_possible_clone`; the
/// counter is not updated.
async fn possible_clone(
    state: &AppState,
    row: &CredentialRow,
    presented: Option<u32>,
    ctx: &AuditContext,
) -> KeyError {
    let stored = StoredKey::parse(&row.passkey)
        .map(|k| k.credential().counter)
        .ok();
    let result = async {
        let mut tx = state.store.begin().await?;
        store::suspend_credential(&mut tx, &row.id, state.clock.now()).await?;
        audit::record(
            &state.store,
            &mut tx,
            state.clock.now_ms(),
            ctx,
            AuditEvent::new(
                "mfa.webauthn_possible_clone",
                format!("user_id:{}", row.user_id),
            )
            .before(
                serde_json::json!({"credential_id": row.id, "name": row.name, "counter": stored}),
            )
            .after(serde_json::json!({"presented_counter": presented, "suspended": true})),
        )
        .await?;
        tx.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    tracing::warn!(event = "security.webauthn_possible_clone", user_id = %row.user_id, credential_id = %row.id, "security key signature counter went backwards: possible clone; key suspended");
    match result {
        Ok(()) => KeyError::PossibleClone,
        Err(e) => KeyError::Store(e),
    }
}

fn internal(e: WebauthnError) -> KeyError {
    KeyError::Internal(format!("webauthn: {e}"))
}

fn json_internal(e: serde_json::Error) -> KeyError {
    KeyError::Internal(format!("webauthn options: {e}"))
}
