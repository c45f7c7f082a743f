//! People who sign in: creation, password hashing (argon2id), locking.

pub mod bootstrap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Serialize;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::Clock;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub locked: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl User {
    /// Snapshot for audit before/after (never includes the password hash).
    pub fn audit_view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "username": self.username, "email": self.email, "locked": self.locked,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid username {0:?}: use 1 to 64 characters from a-z, 0-9, '.', '_', '-', '@'")]
    InvalidUsername(String),
    #[error("invalid email address {0:?}")]
    InvalidEmail(String),
    #[error("password too weak: {0}")]
    WeakPassword(&'static str),
    #[error("a user named {0:?} already exists")]
    AlreadyExists(String),
    #[error("no user named {0:?}")]
    NotFound(String),
    #[error("cannot hash the password")]
    Hashing,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        UserError::Store(e)
    }
}

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Usernames are case-insensitive: stored lower-case so `Alice` and `alice`
/// can never be two accounts.
pub fn normalize_username(raw: &str) -> Result<String, UserError> {
    let name = raw.trim().to_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    if ok {
        Ok(name)
    } else {
        Err(UserError::InvalidUsername(raw.to_string()))
    }
}

fn check_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(UserError::WeakPassword("use at least 12 characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::WeakPassword("use at most 1024 bytes"));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), UserError> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidEmail(email.to_string()))
    }
}

/// argon2id with the OWASP minimum: 19 MiB, 2 iterations, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| UserError::Hashing)
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(hash) => argon2().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
}

pub async fn create_user(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    new: NewUser,
) -> Result<User, UserError> {
    let mut tx = store.begin().await?;
    let user = insert_user(store, &mut tx, clock, new).await?;
    audit::record(
        store,
        &mut tx,
        clock.now_ms(),
        ctx,
        AuditEvent::new("user.create", format!("user:{}", user.username)).after(user.audit_view()),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(user)
}

/// Validates and inserts inside the caller's transaction (no audit row).
pub(crate) async fn insert_user(
    _store: &Store,
    tx: &mut crate::store::Tx,
    clock: &dyn Clock,
    new: NewUser,
) -> Result<User, UserError> {
    let username = normalize_username(&new.username)?;
    check_password(&new.password)?;
    let email = match new.email.as_deref().map(str::trim) {
        Some("") | None => None,
        Some(e) => {
            check_email(e)?;
            Some(e.to_string())
        }
    };
    let password_hash = hash_password(&new.password)?;
    let now = clock.now();
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.clone(),
        email,
        locked: false,
        created_at: now,
        updated_at: now,
    };
    match crate::store::users::insert(tx, &user, &password_hash).await {
        Err(StoreError::Conflict("username")) => Err(UserError::AlreadyExists(username)),
        other => other.map_err(UserError::from),
    }?;
    Ok(user)
}

pub async fn find_by_username(store: &Store, username: &str) -> Result<User, UserError> {
    let name = normalize_username(username)?;
    crate::store::users::find_by_username(store, &name)
        .await?
        .ok_or(UserError::NotFound(name))
}

/// Locks or unlocks an account. Returns false when it already was in that
/// state (nothing changes and nothing is audited).
pub async fn set_locked(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    locked: bool,
    reason: Option<String>,
    ticket_id: Option<String>,
) -> Result<bool, UserError> {
    let mut tx = store.begin().await?;
    let changed = set_locked_in(
        store, &mut tx, clock, ctx, username, locked, reason, ticket_id,
    )
    .await?;
    if changed.is_none() {
        return Ok(false);
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(true)
}

/// [`set_locked`] inside the caller's transaction (the user row is locked
/// until it ends): `Some((before, after))` when the state changed and was
/// audited, `None` when the account already was in that state.
#[allow(clippy::too_many_arguments)]
pub async fn set_locked_in(
    store: &Store,
    tx: &mut crate::store::Tx,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    locked: bool,
    reason: Option<String>,
    ticket_id: Option<String>,
) -> Result<Option<(User, User)>, UserError> {
    let name = normalize_username(username)?;
    let before = crate::store::users::find_by_username_for_update(store, tx, &name)
        .await?
        .ok_or_else(|| UserError::NotFound(name.clone()))?;
    if before.locked == locked {
        return Ok(None);
    }
    let now = clock.now();
    crate::store::users::set_locked(tx, &before.id, locked, now).await?;
    let after = User {
        locked,
        updated_at: now,
        ..before.clone()
    };
    let action = if locked { "user.lock" } else { "user.unlock" };
    audit::record(
        store,
        tx,
        clock.now_ms(),
        ctx,
        AuditEvent::new(action, format!("user:{name}"))
            .reason(reason, ticket_id)
            .before(before.audit_view())
            .after(after.audit_view()),
    )
    .await?;
    Ok(Some((before, after)))
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong password or locked account: one answer for all,
    /// so the login form cannot be used to enumerate accounts.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A valid argon2id hash of a random password, verified against when the
/// user does not exist so both paths cost the same.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&crate::crypto::random_id()).unwrap_or_default())
}

/// Checks a username and password. argon2 runs on the blocking pool.
pub async fn authenticate(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<User, AuthError> {
    let found = match normalize_username(username) {
        Ok(name) if password.len() <= MAX_PASSWORD_BYTES => {
            crate::store::users::find_with_password(store, &name).await?
        }
        _ => None,
    };
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, dummy_hash().to_string()),
    };
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    match user {
        Some(user) if ok && !user.locked => Ok(user),
        _ => Err(AuthError::InvalidCredentials),
    }
}

/// Sets a new password (the caller has verified the old one).
pub async fn change_password(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    user_id: &str,
    new_password: &str,
) -> Result<(), UserError> {
    check_password(new_password)?;
    let hash = hash_password(new_password)?;
    let mut tx = store.begin().await?;
    crate::store::users::set_password(&mut tx, user_id, &hash, clock.now()).await?;
    audit::record(
        store,
        &mut tx,
        clock.now_ms(),
        ctx,
        AuditEvent::new("user.password_change", format!("user_id:{user_id}")),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}
