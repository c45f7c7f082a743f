use super::{Store, StoreResult};
use crate::sessions::Session;

const COLUMNS: &str =
    "id, user_id, created_at, last_seen_at, auth_time, amr, acr, ip, user_agent, ended_at";

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    user_id: String,
    created_at: i64,
    last_seen_at: i64,
    auth_time: i64,
    amr: String,
    acr: String,
    ip: Option<String>,
    user_agent: Option<String>,
    ended_at: Option<i64>,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            id: r.id,
            user_id: r.user_id,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            auth_time: r.auth_time,
            amr: serde_json::from_str(&r.amr).unwrap_or_default(),
            acr: r.acr,
            ip: r.ip,
            user_agent: r.user_agent,
            ended_at: r.ended_at,
        }
    }
}

pub async fn insert(store: &Store, s: &Session, secret_hash: &str) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO sessions (id, secret_hash, user_id, created_at, last_seen_at, auth_time, amr, acr, ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&s.id)
    .bind(secret_hash)
    .bind(&s.user_id)
    .bind(s.created_at)
    .bind(s.last_seen_at)
    .bind(s.auth_time)
    .bind(serde_json::to_string(&s.amr).unwrap_or_else(|_| "[]".into()))
    .bind(&s.acr)
    .bind(&s.ip)
    .bind(&s.user_agent)
    .execute(store.writer())
    .await?;
    Ok(())
}

pub async fn reauthenticate(
    store: &Store,
    id: &str,
    secret_hash: &str,
    now: i64,
    amr: &[String],
    acr: &str,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE sessions SET secret_hash = $1, auth_time = $2, last_seen_at = $2, amr = $3, acr = $4 \
         WHERE id = $5 AND ended_at IS NULL",
    )
    .bind(secret_hash)
    .bind(now)
    .bind(serde_json::to_string(amr).unwrap_or_else(|_| "[]".into()))
    .bind(acr)
    .bind(id)
    .execute(store.writer())
    .await?;
    Ok(())
}

pub async fn find_by_secret_hash(store: &Store, hash: &str) -> StoreResult<Option<Session>> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE secret_hash = $1");
    let row: Option<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(hash)
        .fetch_optional(store.reader())
        .await?;
    Ok(row.map(Session::from))
}

pub async fn find(store: &Store, id: &str) -> StoreResult<Option<Session>> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1");
    let row: Option<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.reader())
        .await?;
    Ok(row.map(Session::from))
}

pub async fn touch(store: &Store, id: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(store.writer())
        .await?;
    Ok(())
}
