use super::{Store, StoreResult, Tx};
use crate::permissions::Role;

pub async fn exists(tx: &mut Tx, role: &str) -> StoreResult<bool> {
    let row: Option<(String,)> = sqlx::query_as("SELECT name FROM roles WHERE name = $1")
        .bind(role)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

pub async fn grant(tx: &mut Tx, user_id: &str, role: &str, now: i64) -> StoreResult<()> {
    sqlx::query("INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(role)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// True when a grant was removed.
pub async fn revoke(tx: &mut Tx, user_id: &str, role: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2")
        .bind(user_id)
        .bind(role)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn roles_of_user(store: &Store, user_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
            .bind(user_id)
            .fetch_all(store.reader())
            .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

pub async fn roles_of_user_tx(tx: &mut Tx, user_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
            .bind(user_id)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

pub async fn permissions_of_user(store: &Store, user_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT rp.permission FROM user_roles ur \
         JOIN role_permissions rp ON rp.role = ur.role WHERE ur.user_id = $1",
    )
    .bind(user_id)
    .fetch_all(store.reader())
    .await?;
    Ok(rows.into_iter().map(|(p,)| p).collect())
}

pub async fn list(store: &Store) -> StoreResult<Vec<Role>> {
    let roles: Vec<(String, String)> =
        sqlx::query_as("SELECT name, description FROM roles ORDER BY name")
            .fetch_all(store.reader())
            .await?;
    let perms: Vec<(String, String)> =
        sqlx::query_as("SELECT role, permission FROM role_permissions ORDER BY role, permission")
            .fetch_all(store.reader())
            .await?;
    Ok(roles
        .into_iter()
        .map(|(name, description)| Role {
            permissions: perms
                .iter()
                .filter(|(r, _)| *r == name)
                .map(|(_, p)| p.clone())
                .collect(),
            name,
            description,
        })
        .collect())
}
