//! The admin UI's sign-ins in flight and signed-in browsers (BFF sessions).

use super::{Store, StoreResult};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingLogin {
    pub oauth_state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminUiSession {
    pub id_hash: String,
    pub user_id: String,
    pub access_token_hash: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert_login(
    store: &Store,
    flow_hash: &str,
    login: &PendingLogin,
    now: i64,
) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    // Abandoned sign-ins do not pile up.
    sqlx::query("DELETE FROM admin_ui_logins WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO admin_ui_logins (flow_hash, oauth_state, nonce, pkce_verifier, return_to, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(flow_hash)
    .bind(&login.oauth_state)
    .bind(&login.nonce)
    .bind(&login.pkce_verifier)
    .bind(&login.return_to)
    .bind(now)
    .bind(login.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes and returns a sign-in in flight: each can complete once.
pub async fn take_login(store: &Store, flow_hash: &str) -> StoreResult<Option<PendingLogin>> {
    let mut tx = store.begin().await?;
    let row: Option<PendingLogin> = sqlx::query_as(
        "SELECT oauth_state, nonce, pkce_verifier, return_to, expires_at FROM admin_ui_logins WHERE flow_hash = $1",
    )
    .bind(flow_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let deleted = sqlx::query("DELETE FROM admin_ui_logins WHERE flow_hash = $1")
        .bind(flow_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    // Two callbacks racing: only the one whose DELETE removed the row wins.
    Ok(row.filter(|_| deleted == 1))
}

pub async fn insert_session(store: &Store, s: &AdminUiSession) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    sqlx::query("DELETE FROM admin_ui_sessions WHERE expires_at < $1")
        .bind(s.created_at)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO admin_ui_sessions (id_hash, user_id, access_token_hash, csrf_token, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&s.id_hash)
    .bind(&s.user_id)
    .bind(&s.access_token_hash)
    .bind(&s.csrf_token)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn find_session(store: &Store, id_hash: &str) -> StoreResult<Option<AdminUiSession>> {
    Ok(sqlx::query_as(
        "SELECT id_hash, user_id, access_token_hash, csrf_token, created_at, expires_at \
         FROM admin_ui_sessions WHERE id_hash = $1",
    )
    .bind(id_hash)
    .fetch_optional(store.reader())
    .await?)
}

pub async fn delete_session(store: &Store, id_hash: &str) -> StoreResult<bool> {
    let mut tx = store.begin().await?;
    let n = sqlx::query("DELETE FROM admin_ui_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}
