//! Permissions grouped into roles. There is no superuser: every built-in
//! role is a strict subset of the permissions (see DESIGN.md).

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::Clock;
use crate::store::{Store, StoreError};
use crate::users::{self, UserError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Permission {
    SessionsRead,
    SessionsTerminate,
    UsersRead,
    UsersManage,
    ClientsManage,
    RefundsRequest,
    RefundsApprove,
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 8] = [
        Permission::SessionsRead,
        Permission::SessionsTerminate,
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::ClientsManage,
        Permission::RefundsRequest,
        Permission::RefundsApprove,
        Permission::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SessionsRead => "sessions:read",
            Permission::SessionsTerminate => "sessions:terminate",
            Permission::UsersRead => "users:read",
            Permission::UsersManage => "users:manage",
            Permission::ClientsManage => "clients:manage",
            Permission::RefundsRequest => "refunds:request",
            Permission::RefundsApprove => "refunds:approve",
            Permission::AuditRead => "audit:read",
        }
    }

    pub fn parse(text: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl From<Permission> for &'static str {
    fn from(p: Permission) -> Self {
        p.as_str()
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("unknown role {0:?}; `portcullis role list` shows the roles that exist")]
    UnknownRole(String),
    #[error("user {user:?} already holds role {role:?}")]
    AlreadyGranted { user: String, role: String },
    #[error("user {user:?} does not hold role {role:?}")]
    NotGranted { user: String, role: String },
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn list_roles(store: &Store) -> Result<Vec<Role>, StoreError> {
    crate::store::roles::list(store).await
}

/// The user's permissions right now (roles are read at the time of the call).
pub async fn permissions_of(
    store: &Store,
    user_id: &str,
) -> Result<BTreeSet<Permission>, StoreError> {
    let names = crate::store::roles::permissions_of_user(store, user_id).await?;
    Ok(names.iter().filter_map(|n| Permission::parse(n)).collect())
}

pub async fn roles_of(store: &Store, user_id: &str) -> Result<Vec<String>, StoreError> {
    crate::store::roles::roles_of_user(store, user_id).await
}

pub async fn grant(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    role: &str,
) -> Result<(), RoleError> {
    change(store, clock, ctx, username, role, true).await
}

pub async fn revoke(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    role: &str,
) -> Result<(), RoleError> {
    change(store, clock, ctx, username, role, false).await
}

async fn change(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    role: &str,
    grant: bool,
) -> Result<(), RoleError> {
    let name = users::normalize_username(username)?;
    let mut tx = store.begin().await?;
    let user = crate::store::users::find_by_username_for_update(store, &mut tx, &name)
        .await?
        .ok_or_else(|| UserError::NotFound(name.clone()))?;
    if !crate::store::roles::exists(&mut tx, role).await? {
        return Err(RoleError::UnknownRole(role.to_string()));
    }
    let before = crate::store::roles::roles_of_user_tx(&mut tx, &user.id).await?;
    if grant {
        match crate::store::roles::grant(&mut tx, &user.id, role, clock.now()).await {
            Err(StoreError::Conflict(_)) => {
                return Err(RoleError::AlreadyGranted {
                    user: name,
                    role: role.to_string(),
                });
            }
            other => other?,
        }
    } else if !crate::store::roles::revoke(&mut tx, &user.id, role).await? {
        return Err(RoleError::NotGranted {
            user: name,
            role: role.to_string(),
        });
    }
    let after = crate::store::roles::roles_of_user_tx(&mut tx, &user.id).await?;
    let action = if grant { "role.grant" } else { "role.revoke" };
    audit::record(
        store,
        &mut tx,
        clock.now_ms(),
        ctx,
        AuditEvent::new(action, format!("user:{name}"))
            .before(serde_json::json!({ "roles": before }))
            .after(serde_json::json!({ "roles": after, "changed": role })),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}
