use super::{Backend, Store, StoreResult, Tx};
use crate::users::User;

const USER_COLUMNS: &str = "id, username, email, locked, created_at, updated_at";

pub async fn insert(tx: &mut Tx, u: &User, password_hash: &str) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO users (id, username, email, password_hash, locked, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&u.id)
    .bind(&u.username)
    .bind(&u.email)
    .bind(password_hash)
    .bind(i64::from(u.locked))
    .bind(u.created_at)
    .bind(u.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn find_by_username(store: &Store, username: &str) -> StoreResult<Option<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
    let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(username)
        .fetch_optional(store.reader())
        .await?;
    Ok(row.map(User::from))
}

/// Row-locked read for read-modify-write (PostgreSQL `FOR UPDATE`; SQLite's
/// IMMEDIATE transaction already holds the write lock).
pub async fn find_by_username_for_update(
    store: &Store,
    tx: &mut Tx,
    username: &str,
) -> StoreResult<Option<User>> {
    let lock = for_update(store);
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1{lock}");
    let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(username)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(User::from))
}

/// The stored argon2id hash and the user, for password verification.
pub async fn find_with_password(
    store: &Store,
    username: &str,
) -> StoreResult<Option<(User, String)>> {
    let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1");
    let row: Option<UserWithHash> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(username)
        .fetch_optional(store.reader())
        .await?;
    Ok(row.map(|r| (User::from(r.user), r.password_hash)))
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    username: String,
    email: Option<String>,
    locked: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            email: r.email,
            locked: r.locked != 0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct UserWithHash {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

pub async fn set_locked(tx: &mut Tx, id: &str, locked: bool, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE users SET locked = $1, updated_at = $2 WHERE id = $3")
        .bind(i64::from(locked))
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn count(store: &Store) -> StoreResult<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(store.reader())
        .await?;
    Ok(n)
}

pub async fn count_tx(tx: &mut Tx) -> StoreResult<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(&mut **tx)
        .await?;
    Ok(n)
}

pub(super) fn for_update(store: &Store) -> &'static str {
    match store.backend() {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    }
}

// ---- bootstrap codes -------------------------------------------------------

/// Replaces any earlier unused code: only the newest printed code works.
pub async fn replace_bootstrap_code(
    tx: &mut Tx,
    id: &str,
    code_hash: &str,
    now: i64,
    expires_at: i64,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM bootstrap_codes WHERE used_at IS NULL")
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO bootstrap_codes (id, code_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(code_hash)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks the code used if it is unused and unexpired; true when it was.
pub async fn consume_bootstrap_code(tx: &mut Tx, code_hash: &str, now: i64) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE bootstrap_codes SET used_at = $1 \
         WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(code_hash)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find_by_id(store: &Store, id: &str) -> StoreResult<Option<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.reader())
        .await?;
    Ok(row.map(User::from))
}

pub async fn set_password(tx: &mut Tx, id: &str, hash: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(hash)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A user as the staff listing shows it, with the number of live sessions.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserListRow {
    pub id: String,
    pub username: String,
    pub locked: i64,
    pub created_at: i64,
    pub active_sessions: i64,
}

/// Staff search: users whose (lower-case) username contains `needle`
/// (`None`: everyone), by username.
pub async fn search(
    store: &Store,
    needle: Option<&str>,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<UserListRow>> {
    // LIKE with every wildcard in the needle escaped: a plain substring test
    // that reads the same on both backends (usernames are lower-case ASCII,
    // so SQLite's case-insensitive LIKE changes nothing).
    let pattern = needle.map(|n| {
        let escaped: String = n
            .chars()
            .flat_map(|c| match c {
                '\\' | '%' | '_' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("%{escaped}%")
    });
    Ok(sqlx::query_as(
        "SELECT u.id, u.username, u.locked, u.created_at, \
         (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id AND s.ended_at IS NULL) AS active_sessions \
         FROM users u WHERE ($1 IS NULL OR u.username LIKE $1 ESCAPE '\\') \
         ORDER BY u.username LIMIT $2 OFFSET $3",
    )
    .bind(pattern)
    .bind(limit)
    .bind(offset)
    .fetch_all(store.reader())
    .await?)
}

/// One user's listing row (see [`search`]).
pub async fn list_row(store: &Store, user_id: &str) -> StoreResult<Option<UserListRow>> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.username, u.locked, u.created_at, \
         (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id AND s.ended_at IS NULL) AS active_sessions \
         FROM users u WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(store.reader())
    .await?)
}
