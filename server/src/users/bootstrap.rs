//! The first administrator. On an empty user table `serve` prints a one-time
//! code; `portcullis user create … --bootstrap-code CODE` consumes it and
//! grants the first account the `security_admin` role. No other path creates
//! an account holding a role without an audited `role grant`.

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::Clock;
use crate::crypto;
use crate::store::{Store, StoreError};

use super::{NewUser, User, UserError};

pub const FIRST_ADMIN_ROLE: &str = "security_admin";
const CODE_TTL_SECS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "users already exist, so bootstrap is closed: ask an administrator to create your account"
    )]
    AlreadyBootstrapped,
    #[error(
        "the bootstrap code is wrong, expired or already used: restart `portcullis serve` to print a new one"
    )]
    BadCode,
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues a fresh code when no user exists yet; `None` otherwise.
pub async fn issue_code_if_needed(
    store: &Store,
    clock: &dyn Clock,
) -> Result<Option<String>, StoreError> {
    if crate::store::users::count(store).await? > 0 {
        return Ok(None);
    }
    let code = crypto::random_secret("pcb_");
    let now = clock.now();
    let mut tx = store.begin().await?;
    crate::store::users::replace_bootstrap_code(
        &mut tx,
        &crypto::random_id(),
        &crypto::sha256_hex(&code),
        now,
        now + CODE_TTL_SECS,
    )
    .await?;
    audit::record(
        store,
        &mut tx,
        clock.now_ms(),
        &AuditContext::system("bootstrap"),
        AuditEvent::new("bootstrap.code_issued", "bootstrap")
            .after(serde_json::json!({"expires_at": now + CODE_TTL_SECS})),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(code))
}

pub async fn create_first_admin(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    code: &str,
    new: NewUser,
) -> Result<User, BootstrapError> {
    let mut tx = store.begin().await?;
    if crate::store::users::count_tx(&mut tx).await? > 0 {
        return Err(BootstrapError::AlreadyBootstrapped);
    }
    if !crate::store::users::consume_bootstrap_code(&mut tx, &crypto::sha256_hex(code), clock.now())
        .await?
    {
        return Err(BootstrapError::BadCode);
    }
    let user = super::insert_user(store, &mut tx, clock, new).await?;
    crate::store::roles::grant(&mut tx, &user.id, FIRST_ADMIN_ROLE, clock.now()).await?;
    let mut after = user.audit_view();
    after["roles"] = serde_json::json!([FIRST_ADMIN_ROLE]);
    audit::record(
        store,
        &mut tx,
        clock.now_ms(),
        ctx,
        AuditEvent::new("bootstrap.first_admin", format!("user:{}", user.username)).after(after),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(user)
}
