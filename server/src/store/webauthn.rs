//! SQL for WebAuthn: registered credentials, ceremony state (single use),
//! per-user WebAuthn handles and the passwordless opt-in.

use super::{Backend, Store, StoreResult, Tx};

/// One registered credential. `passkey` is the webauthn-rs credential as
/// JSON, wrapped with the API it was registered through.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub passkey: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub suspended_at: Option<i64>,
}

const CREDENTIAL_COLUMNS: &str =
    "id, user_id, name, passkey, created_at, last_used_at, suspended_at";

fn for_update(store: &Store) -> &'static str {
    match store.backend() {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    }
}

pub async fn list_credentials(store: &Store, user_id: &str) -> StoreResult<Vec<CredentialRow>> {
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(store.reader())
        .await?)
}

pub async fn count_credentials_tx(tx: &mut Tx, user_id: &str) -> StoreResult<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM webauthn_credentials WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut **tx)
            .await?;
    Ok(n)
}

/// The credential, locked for a read-modify-write of its counter.
pub async fn find_credential_for_update(
    store: &Store,
    tx: &mut Tx,
    id: &str,
) -> StoreResult<Option<CredentialRow>> {
    let lock = for_update(store);
    let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM webauthn_credentials WHERE id = $1{lock}");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?)
}

pub async fn find_credential(store: &Store, id: &str) -> StoreResult<Option<CredentialRow>> {
    let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM webauthn_credentials WHERE id = $1");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.reader())
        .await?)
}

/// False when the credential id is already registered (to anyone).
pub async fn insert_credential(tx: &mut Tx, row: &CredentialRow) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO webauthn_credentials (id, user_id, name, passkey, created_at, last_used_at) \
         VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&row.id)
    .bind(&row.user_id)
    .bind(&row.name)
    .bind(&row.passkey)
    .bind(row.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The old name, if the user owns the credential.
pub async fn rename_credential(
    store: &Store,
    tx: &mut Tx,
    user_id: &str,
    id: &str,
    name: &str,
) -> StoreResult<Option<String>> {
    let lock = for_update(store);
    let sql = format!("SELECT name FROM webauthn_credentials WHERE id = $1 AND user_id = $2{lock}");
    let old: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((old,)) = old else {
        return Ok(None);
    };
    sqlx::query("UPDATE webauthn_credentials SET name = $1 WHERE id = $2 AND user_id = $3")
        .bind(name)
        .bind(id)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(Some(old))
}

/// The removed row, if the user owned it.
pub async fn delete_credential(
    store: &Store,
    tx: &mut Tx,
    user_id: &str,
    id: &str,
) -> StoreResult<Option<CredentialRow>> {
    let lock = for_update(store);
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM webauthn_credentials WHERE id = $1 AND user_id = $2{lock}"
    );
    let row: Option<CredentialRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?;
    if row.is_some() {
        sqlx::query("DELETE FROM webauthn_credentials WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(row)
}

/// After a verified assertion: the updated credential JSON and the time.
pub async fn record_use(tx: &mut Tx, id: &str, passkey: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE webauthn_credentials SET passkey = $1, last_used_at = $2 WHERE id = $3")
        .bind(passkey)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks a credential as possibly cloned; it is refused from then on.
pub async fn suspend_credential(tx: &mut Tx, id: &str, now: i64) -> StoreResult<()> {
    sqlx::query(
        "UPDATE webauthn_credentials SET suspended_at = $1 WHERE id = $2 AND suspended_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// ---- ceremony state ---------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub async fn insert_challenge(
    store: &Store,
    id: &str,
    user_id: Option<&str>,
    kind: &str,
    state: &str,
    binding: &str,
    now: i64,
    expires_at: i64,
) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    // Expired ceremonies are useless; clear them as new ones arrive.
    sqlx::query("DELETE FROM webauthn_challenges WHERE expires_at < $1")
        .bind(now - 3600)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO webauthn_challenges (id, user_id, kind, state, created_at, expires_at, binding) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(user_id)
    .bind(kind)
    .bind(state)
    .bind(now)
    .bind(expires_at)
    .bind(binding)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Uses a ceremony once: marks it used and returns `(user_id, state)` if it
/// exists, is of `kind`, was bound to `binding`, is unexpired and unused.
/// The caller verifies afterwards, so a failed attempt burns it too.
pub async fn take_challenge(
    store: &Store,
    id: &str,
    kind: &str,
    binding: &str,
    now: i64,
) -> StoreResult<Option<(Option<String>, String)>> {
    Ok(sqlx::query_as(
        "UPDATE webauthn_challenges SET used_at = $1 \
         WHERE id = $2 AND kind = $3 AND binding = $4 AND used_at IS NULL AND expires_at > $1 \
         RETURNING user_id, state",
    )
    .bind(now)
    .bind(id)
    .bind(kind)
    .bind(binding)
    .fetch_optional(store.writer())
    .await?)
}

// ---- per-user settings --------------------------------------------------------

/// The user's WebAuthn handle, created on first use.
pub async fn user_handle(store: &Store, user_id: &str, now: i64) -> StoreResult<String> {
    let candidate = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO webauthn_users (user_id, user_handle, passkey_login, created_at, updated_at) \
         VALUES ($1, $2, 0, $3, $3) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(&candidate)
    .bind(now)
    .execute(store.writer())
    .await?;
    let (handle,): (String,) =
        sqlx::query_as("SELECT user_handle FROM webauthn_users WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(store.writer())
            .await?;
    Ok(handle)
}

/// `(user_id, passkey_login)` of a WebAuthn handle.
pub async fn find_by_handle(store: &Store, handle: &str) -> StoreResult<Option<(String, bool)>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT user_id, passkey_login FROM webauthn_users WHERE user_handle = $1")
            .bind(handle)
            .fetch_optional(store.reader())
            .await?;
    Ok(row.map(|(u, p)| (u, p != 0)))
}

pub async fn passkey_login(store: &Store, user_id: &str) -> StoreResult<bool> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT passkey_login FROM webauthn_users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(store.reader())
            .await?;
    Ok(row.is_some_and(|(p,)| p != 0))
}

/// Sets the passwordless opt-in; returns the previous value. The user row
/// must exist (see [`user_handle`]).
pub async fn set_passkey_login(
    store: &Store,
    tx: &mut Tx,
    user_id: &str,
    enabled: bool,
    now: i64,
) -> StoreResult<bool> {
    let lock = for_update(store);
    let sql = format!("SELECT passkey_login FROM webauthn_users WHERE user_id = $1{lock}");
    let before: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?;
    sqlx::query("UPDATE webauthn_users SET passkey_login = $1, updated_at = $2 WHERE user_id = $3")
        .bind(i64::from(enabled))
        .bind(now)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(before.is_some_and(|(p,)| p != 0))
}

/// Deletes every credential of the user (staff reset); the removed rows.
pub async fn delete_all_credentials(
    store: &Store,
    tx: &mut Tx,
    user_id: &str,
) -> StoreResult<Vec<CredentialRow>> {
    let lock = for_update(store);
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, id{lock}"
    );
    let rows: Vec<CredentialRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM webauthn_credentials WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(rows)
}
