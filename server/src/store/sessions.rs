use super::{Store, StoreResult, Tx};
use crate::sessions::{Session, SessionFilter};

const COLUMNS: &str = "id, user_id, created_at, last_seen_at, auth_time, amr, acr, ip, user_agent, \
     ended_at, ended_by, ended_by_id, end_reason, ticket_id";

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
    ended_by: Option<String>,
    ended_by_id: Option<String>,
    end_reason: Option<String>,
    ticket_id: Option<String>,
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
            ended_by: r.ended_by,
            ended_by_id: r.ended_by_id,
            end_reason: r.end_reason,
            ticket_id: r.ticket_id,
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

pub async fn find_for_update(store: &Store, tx: &mut Tx, id: &str) -> StoreResult<Option<Session>> {
    let lock = super::users::for_update(store);
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1{lock}");
    let row: Option<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(Session::from))
}

/// Ends a live session; false when it had already ended.
#[allow(clippy::too_many_arguments)]
pub async fn mark_ended(
    tx: &mut Tx,
    id: &str,
    now: i64,
    ended_by: &str,
    ended_by_id: &str,
    reason: &str,
    ticket_id: Option<&str>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE sessions SET ended_at = $1, ended_by = $2, ended_by_id = $3, end_reason = $4, ticket_id = $5 \
         WHERE id = $6 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(ended_by)
    .bind(ended_by_id)
    .bind(reason)
    .bind(ticket_id)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes every token issued through the session.
pub async fn revoke_tokens(
    store: &Store,
    tx: &mut Tx,
    session_id: &str,
    now: i64,
) -> StoreResult<()> {
    super::tokens::notify_revocation(store, tx).await?;
    for sql in [
        "UPDATE token_families SET revoked_at = $1, revoked_reason = 'session ended' WHERE session_id = $2 AND revoked_at IS NULL",
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE session_id = $2 AND revoked_at IS NULL",
        "UPDATE access_tokens SET revoked_at = $1 WHERE session_id = $2 AND revoked_at IS NULL",
    ] {
        sqlx::query(sql)
            .bind(now)
            .bind(session_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Clients that received tokens through the session.
pub async fn client_ids(store: &Store, session_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT client_id FROM token_families WHERE session_id = $1 ORDER BY client_id",
    )
    .bind(session_id)
    .fetch_all(store.reader())
    .await?;
    Ok(rows.into_iter().map(|(c,)| c).collect())
}

pub async fn client_ids_tx(tx: &mut Tx, session_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT client_id FROM token_families WHERE session_id = $1 ORDER BY client_id",
    )
    .bind(session_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(c,)| c).collect())
}

/// The user's sessions, newest first (live and ended).
pub async fn list_for_user(store: &Store, user_id: &str, limit: i64) -> StoreResult<Vec<Session>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2"
    );
    let rows: Vec<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(limit)
        .fetch_all(store.reader())
        .await?;
    Ok(rows.into_iter().map(Session::from).collect())
}

/// Ids of the user's live sessions.
pub async fn live_ids_for_user(tx: &mut Tx, user_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM sessions WHERE user_id = $1 AND ended_at IS NULL ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(i,)| i).collect())
}

/// Live sessions past a timeout: `(id, idle)` where `idle` tells which.
pub async fn timed_out(
    store: &Store,
    idle_before: i64,
    created_before: i64,
    limit: i64,
) -> StoreResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT id, CASE WHEN created_at < $2 THEN 0 ELSE 1 END FROM sessions \
         WHERE ended_at IS NULL AND (last_seen_at < $1 OR created_at < $2) LIMIT $3",
    )
    .bind(idle_before)
    .bind(created_before)
    .bind(limit)
    .fetch_all(store.reader())
    .await?)
}

/// Staff search: `(session, username)` newest first. Filters are optional;
/// the SQL is fixed and unused filters bind NULL.
pub async fn search(
    store: &Store,
    f: &SessionFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<(Session, String)>> {
    let sql = format!(
        "SELECT {cols}, u.username AS username FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE ($1 IS NULL OR u.username = $1) \
           AND ($2 IS NULL OR s.ip = $2) \
           AND ($3 IS NULL OR ($3 = 'active' AND s.ended_at IS NULL) OR ($3 = 'ended' AND s.ended_at IS NOT NULL)) \
           AND ($4 IS NULL OR s.created_at >= $4) \
           AND ($5 IS NULL OR s.created_at <= $5) \
           AND ($6 IS NULL OR EXISTS (SELECT 1 FROM token_families t WHERE t.session_id = s.id AND t.client_id = $6)) \
         ORDER BY s.created_at DESC, s.id LIMIT $7 OFFSET $8",
        cols = COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        session: SessionRow,
        username: String,
    }
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&f.username)
        .bind(&f.ip)
        .bind(&f.state)
        .bind(f.created_from)
        .bind(f.created_to)
        .bind(&f.client_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(store.reader())
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (Session::from(r.session), r.username))
        .collect())
}

pub async fn touch_tx(tx: &mut Tx, id: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
