//! Opaque access and refresh tokens (stored as SHA-256) and their families.

use std::fmt::Write as _;

use super::{Store, StoreError, StoreResult, Tx};
use crate::tokens::{AccessTokenRecord, RefreshTokenRecord};

pub async fn insert_family(
    tx: &mut Tx,
    id: &str,
    client_id: &str,
    user_id: Option<&str>,
    session_id: Option<&str>,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO token_families (id, client_id, user_id, session_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(client_id)
    .bind(user_id)
    .bind(session_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Many access tokens in one statement, committed on its own (group
/// commit, `tokens::batch`; SQLite files use [`DirectTokenWriter`]).
///
/// On PostgreSQL the rows travel as one JSON array, so every batch size
/// shares one statement text: a `VALUES` list per size made each pooled
/// connection cache up to 100 prepared statements of up to 3328
/// parameters, which took peak RSS from 35 to 65 MiB under pre-issue
/// (bench/README.md, session 10).
pub async fn insert_access_batch(
    store: &Store,
    rows: &[(&AccessTokenRecord, &str)],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let query = match store.backend() {
        super::Backend::Postgres => {
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(t, hash)| {
                    serde_json::json!({
                        "token_hash": hash,
                        "id": t.id,
                        "client_id": t.client_id,
                        "user_id": t.user_id,
                        "session_id": t.session_id,
                        "family_id": t.family_id,
                        "scope": t.scope,
                        "audience": t.audience,
                        "auth_time": t.auth_time,
                        "amr": t.amr,
                        "acr": t.acr,
                        "issued_at": t.issued_at,
                        "expires_at": t.expires_at,
                    })
                })
                .collect();
            // `$1`: objects keyed by column name, typed by the table's
            // own row type. The text holds no data.
            let sql = format!(
                "INSERT INTO access_tokens ({ACCESS_INSERT_COLUMNS}) SELECT {ACCESS_INSERT_COLUMNS} \
                 FROM json_populate_recordset(NULL::access_tokens, $1::json)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(serde_json::Value::Array(json).to_string())
        }
        backend => insert_access_query(backend, rows),
    };
    query.execute(store.writer()).await?;
    Ok(())
}

/// The writer of access tokens minted on their own (client credentials)
/// on a SQLite file: a connection of its own, used
/// synchronously by one thread (`tokens::batch`).
///
/// Why not the pool's writer: through sqlx each batch is a round trip to
/// the connection's worker thread and back to the async task, and on two
/// busy cores those hand-overs cost more than the insert and its fsync
/// together (bench/README.md, "Where the time goes"). SQLite serialises it
/// with the pool's writer by its write lock; the loser waits out
/// `busy_timeout` like any second connection.
pub struct DirectTokenWriter {
    conn: rusqlite::Connection,
    insert_one: String,
    /// Once its pools are closed ([`Store::close`]) this writer refuses
    /// too, as they do.
    store: Store,
}

impl std::fmt::Debug for DirectTokenWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectTokenWriter")
    }
}

impl DirectTokenWriter {
    /// `None` unless `store` is a SQLite file (PostgreSQL and in-memory
    /// databases keep to the pools).
    pub fn open(store: &Store) -> StoreResult<Option<DirectTokenWriter>> {
        let Some(file) = store.sqlite_file() else {
            return Ok(None);
        };
        let conn = rusqlite::Connection::open_with_flags(
            file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(super::SQLITE_CONNECTION_SETUP)?;
        Ok(Some(DirectTokenWriter {
            conn,
            insert_one: insert_access_sql(super::Backend::Sqlite, 1),
            store: store.clone(),
        }))
    }

    /// Stores `rows` in one transaction (one fsync); blocks until it is
    /// durable. All or none: a failing row fails the batch.
    pub fn insert_batch(&mut self, rows: &[(&AccessTokenRecord, &str)]) -> StoreResult<()> {
        if self.store.is_closed() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            // One single-row statement, prepared once and cached: a
            // multi-row statement per batch size would keep up to 256
            // prepared programs of up to 3328 parameters in memory.
            let mut insert = tx.prepare_cached(&self.insert_one)?;
            for (t, hash) in rows {
                insert.execute(rusqlite::params![
                    hash,
                    t.id,
                    t.client_id,
                    t.user_id,
                    t.session_id,
                    t.family_id,
                    t.scope,
                    t.audience,
                    t.auth_time,
                    t.amr,
                    t.acr,
                    t.issued_at,
                    t.expires_at,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Columns of one access-token row, in the order every INSERT binds them.
const ACCESS_INSERT_COLUMNS: &str = "token_hash, id, client_id, user_id, session_id, family_id, scope, audience, \
     auth_time, amr, acr, issued_at, expires_at";
const ACCESS_COLUMN_COUNT: usize = 13;

/// `INSERT … VALUES (…), (…)` for `rows` rows. SQLite gets anonymous `?`
/// placeholders: it resolves each named `$n` by a linear search, which made
/// binding a batch quadratic in its size.
fn insert_access_sql(backend: super::Backend, rows: usize) -> String {
    let mut values = String::with_capacity(rows * ACCESS_COLUMN_COUNT * 6);
    for i in 0..rows {
        values.push_str(if i == 0 { "(" } else { ", (" });
        for c in 1..=ACCESS_COLUMN_COUNT {
            if c > 1 {
                values.push_str(", ");
            }
            match backend {
                super::Backend::Sqlite => values.push('?'),
                // Writing into a String cannot fail.
                super::Backend::Postgres => {
                    let _ = write!(values, "${}", i * ACCESS_COLUMN_COUNT + c);
                }
            }
        }
        values.push(')');
    }
    // The SQL text holds only generated placeholders, never data.
    format!("INSERT INTO access_tokens ({ACCESS_INSERT_COLUMNS}) VALUES {values}")
}

fn insert_access_query<'q>(
    backend: super::Backend,
    rows: &[(&AccessTokenRecord, &str)],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let sql = insert_access_sql(backend, rows.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (t, hash) in rows {
        q = q
            .bind(hash.to_string())
            .bind(t.id.clone())
            .bind(t.client_id.clone())
            .bind(t.user_id.clone())
            .bind(t.session_id.clone())
            .bind(t.family_id.clone())
            .bind(t.scope.clone())
            .bind(t.audience.clone())
            .bind(t.auth_time)
            .bind(t.amr.clone())
            .bind(t.acr.clone())
            .bind(t.issued_at)
            .bind(t.expires_at);
    }
    q
}

pub async fn insert_access(
    store: &Store,
    tx: &mut Tx,
    t: &AccessTokenRecord,
    token_hash: &str,
) -> StoreResult<()> {
    insert_access_query(store.backend(), &[(t, token_hash)])
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert_refresh(tx: &mut Tx, t: &RefreshTokenRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, client_id, user_id, session_id, scope, nonce, \
         auth_time, amr, acr, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&t.token_hash)
    .bind(&t.family_id)
    .bind(&t.client_id)
    .bind(&t.user_id)
    .bind(&t.session_id)
    .bind(&t.scope)
    .bind(&t.nonce)
    .bind(t.auth_time)
    .bind(&t.amr)
    .bind(&t.acr)
    .bind(t.issued_at)
    .bind(t.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const REFRESH_COLUMNS: &str = "r.token_hash, r.family_id, r.client_id, r.user_id, r.session_id, r.scope, \
     r.nonce, r.auth_time, r.amr, r.acr, r.issued_at, r.expires_at, r.used_at, r.revoked_at, \
     f.revoked_at AS family_revoked_at, s.ended_at AS session_ended_at, \
     s.created_at AS session_created_at, s.last_seen_at AS session_last_seen_at";

pub async fn find_refresh_for_update(
    store: &Store,
    tx: &mut Tx,
    token_hash: &str,
) -> StoreResult<Option<RefreshTokenRecord>> {
    let lock = match store.backend() {
        super::Backend::Postgres => " FOR UPDATE OF r",
        super::Backend::Sqlite => "",
    };
    let sql = format!(
        "SELECT {REFRESH_COLUMNS} FROM refresh_tokens r JOIN token_families f ON f.id = r.family_id \
         LEFT JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1{lock}"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token_hash)
        .fetch_optional(&mut **tx)
        .await?)
}

/// Rotates a refresh token out; false when it was already used.
pub async fn mark_refresh_used(tx: &mut Tx, token_hash: &str, now: i64) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(now)
    .bind(token_hash)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Tells every replica (PostgreSQL `NOTIFY`, delivered at commit) to drop
/// cached introspection results.
pub async fn notify_revocation(store: &Store, tx: &mut Tx) -> StoreResult<()> {
    if store.backend() == super::Backend::Postgres {
        sqlx::query("NOTIFY portcullis_revocations")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// [`notify_revocation`] for a change to a client: other replicas also
/// drop the tokens they hold ahead of demand (`tokens::preissue`).
pub async fn notify_client_change(store: &Store, tx: &mut Tx) -> StoreResult<()> {
    if store.backend() == super::Backend::Postgres {
        // The payload is `tokens::preissue::CLIENT_CHANGED`.
        sqlx::query("NOTIFY portcullis_revocations, 'client'")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Revokes a family and every token in it.
pub async fn revoke_family(
    store: &Store,
    tx: &mut Tx,
    family_id: &str,
    now: i64,
    reason: &str,
) -> StoreResult<()> {
    notify_revocation(store, tx).await?;
    sqlx::query(
        "UPDATE token_families SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE access_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const ACCESS_COLUMNS: &str = "a.id, a.client_id, a.user_id, a.session_id, a.family_id, a.scope, a.audience, \
     a.auth_time, a.amr, a.acr, a.issued_at, a.expires_at, a.revoked_at, \
     f.revoked_at AS family_revoked_at, s.ended_at AS session_ended_at, \
     s.created_at AS session_created_at, s.last_seen_at AS session_last_seen_at";

pub async fn find_access(
    store: &Store,
    token_hash: &str,
) -> StoreResult<Option<AccessTokenRecord>> {
    let sql = format!(
        "SELECT {ACCESS_COLUMNS} FROM access_tokens a LEFT JOIN token_families f ON f.id = a.family_id \
         LEFT JOIN sessions s ON s.id = a.session_id WHERE a.token_hash = $1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token_hash)
        .fetch_optional(store.reader())
        .await?)
}

/// Revokes every family (and its tokens) a user holds at a client.
pub async fn revoke_families_of(
    store: &Store,
    tx: &mut Tx,
    user_id: &str,
    client_id: &str,
    now: i64,
    reason: &str,
) -> StoreResult<()> {
    notify_revocation(store, tx).await?;
    let families = "SELECT id FROM token_families WHERE user_id = $2 AND client_id = $3";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN ({families})"
    )))
    .bind(now)
    .bind(user_id)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE access_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN ({families})"
    )))
    .bind(now)
    .bind(user_id)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE token_families SET revoked_at = $1, revoked_reason = $4 \
         WHERE user_id = $2 AND client_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(client_id)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes one access token if `client_id` owns it; true when it did.
pub async fn revoke_access(
    store: &Store,
    tx: &mut Tx,
    token_hash: &str,
    client_id: &str,
    now: i64,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE access_tokens SET revoked_at = $1 WHERE token_hash = $2 AND client_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(token_hash)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() > 0 {
        notify_revocation(store, tx).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Read-only lookup (introspection).
pub async fn find_refresh(
    store: &Store,
    token_hash: &str,
) -> StoreResult<Option<RefreshTokenRecord>> {
    let sql = format!(
        "SELECT {REFRESH_COLUMNS} FROM refresh_tokens r JOIN token_families f ON f.id = r.family_id \
         LEFT JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token_hash)
        .fetch_optional(store.reader())
        .await?)
}

/// Incident response: revokes every token of a client — each family (and
/// so each refresh token), each access token, including client-credentials
/// tokens outside families — and expires its unredeemed authorization
/// codes. Returns how many tokens were still usable (unrevoked, unexpired,
/// refresh tokens not yet rotated). Sends the replica-wide NOTIFY.
pub async fn revoke_all_of_client(
    store: &Store,
    tx: &mut Tx,
    client_id: &str,
    now: i64,
    reason: &str,
) -> StoreResult<u64> {
    notify_client_change(store, tx).await?;
    let (live_access,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM access_tokens a LEFT JOIN token_families f ON f.id = a.family_id \
         WHERE a.client_id = $1 AND a.revoked_at IS NULL AND f.revoked_at IS NULL AND a.expires_at > $2",
    )
    .bind(client_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let (live_refresh,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM refresh_tokens r JOIN token_families f ON f.id = r.family_id \
         WHERE r.client_id = $1 AND r.revoked_at IS NULL AND r.used_at IS NULL \
         AND f.revoked_at IS NULL AND r.expires_at > $2",
    )
    .bind(client_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE token_families SET revoked_at = $1, revoked_reason = $2 \
         WHERE client_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE access_tokens SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    // A code issued before the incident must not mint new tokens after it.
    sqlx::query(
        "UPDATE authorization_codes SET expires_at = $1 \
         WHERE client_id = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(client_id)
    .execute(&mut **tx)
    .await?;
    Ok(u64::try_from(live_access + live_refresh).unwrap_or(0))
}

/// Rows one purge statement removes at most: the SQLite write lock, which
/// token issuance shares, is then held for milliseconds, not seconds.
/// Written into the SQL text as a literal `LIMIT`: for a bound `LIMIT $n`
/// PostgreSQL's generic plan expects a tenth of the table and hashes all
/// of it instead of walking the index.
pub const PURGE_BATCH: i64 = 1000;

/// PostgreSQL advisory-lock key held by the janitor of one replica while
/// it purges a batch (the bytes of "pcpurge").
pub const PURGE_LOCK: i64 = 0x0070_6370_7572_6765;

/// Opens the transaction of one purge batch, or `None` while another
/// replica's janitor holds the purge lock. Two replicas deleting the same
/// rows at once would only queue on each other's row locks, or deadlock
/// when they meet them in different orders. On SQLite the one process is
/// the only writer.
pub(super) async fn begin_purge(store: &Store) -> StoreResult<Option<Tx>> {
    let mut tx = store.begin().await?;
    if store.backend() == super::Backend::Postgres {
        let (got,): (i32,) =
            sqlx::query_as("SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 1 ELSE 0 END")
                .bind(PURGE_LOCK)
                .fetch_one(&mut *tx)
                .await?;
        if got == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
    }
    Ok(Some(tx))
}

/// Runs one single-statement purge batch under [`begin_purge`]; the rows
/// it removed (0 while another replica holds the purge lock).
pub(super) async fn purge_batch(
    store: &Store,
    statement: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
) -> StoreResult<u64> {
    let Some(mut tx) = begin_purge(store).await? else {
        return Ok(0);
    };
    let done = statement.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// `(placeholders, …)` text `$first, …, $(first + n - 1)` for an `IN` list.
fn placeholders(first: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 5);
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "${}", first + i);
    }
    out
}

/// Empties up to [`PURGE_BATCH`] token families that nothing can use any
/// more — revoked before `cutoff`, or without a refresh or access token
/// still valid at `cutoff`: deletes all their tokens and the authorization
/// code they came from, and marks them `purged_at = now`, in one
/// transaction. A family that still has a valid token is kept whole, so
/// presenting one of its rotated refresh tokens is still caught as reuse.
/// The family row itself stays: it records which clients a session gave
/// tokens to (`sessions::client_ids`). Returns the number of families.
pub async fn purge_dead_families(store: &Store, cutoff: i64, now: i64) -> StoreResult<u64> {
    let Some(mut tx) = begin_purge(store).await? else {
        return Ok(0);
    };
    let ids: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT f.id FROM token_families f WHERE f.purged_at IS NULL AND f.created_at < $1 \
         AND (f.revoked_at < $1 OR ( \
           NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.family_id = f.id \
             AND r.expires_at >= $1 AND (r.revoked_at IS NULL OR r.revoked_at >= $1)) \
           AND NOT EXISTS (SELECT 1 FROM access_tokens a WHERE a.family_id = f.id \
             AND a.expires_at >= $1 AND (a.revoked_at IS NULL OR a.revoked_at >= $1)))) \
         LIMIT {PURGE_BATCH}"
    )))
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        // Ended here, not when dropped: a dropped transaction is rolled
        // back only when its connection is next used, and until then it
        // would keep holding the purge lock.
        tx.commit().await?;
        return Ok(0);
    }
    let n = ids.len();
    let list = placeholders(1, n);
    let bind_ids = |sql: String| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id,) in &ids {
            q = q.bind(id.as_str());
        }
        q
    };
    // Children first: each refers to the family.
    for table in ["access_tokens", "refresh_tokens", "authorization_codes"] {
        bind_ids(format!("DELETE FROM {table} WHERE family_id IN ({list})"))
            .execute(&mut *tx)
            .await?;
    }
    bind_ids(format!(
        "UPDATE token_families SET purged_at = ${} WHERE id IN ({list})",
        n + 1
    ))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
}

/// Deletes up to [`PURGE_BATCH`] access tokens that expired before
/// `cutoff`. Access-token ids are time-ordered by issuance
/// ([`crate::crypto::time_ordered_id`]) and a token expires after it is
/// issued, so `id < bound` narrows the search to the old end of the
/// `id` index instead of scanning the table; `expires_at` decides.
pub async fn purge_expired_access(store: &Store, cutoff: i64) -> StoreResult<u64> {
    let issued_before = crate::crypto::time_ordered_bound(cutoff.saturating_mul(1000));
    let sql = format!(
        "DELETE FROM access_tokens WHERE token_hash IN (SELECT token_hash FROM access_tokens \
         WHERE id < $1 AND expires_at < $2 LIMIT {PURGE_BATCH})"
    );
    let statement = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(issued_before)
        .bind(cutoff);
    purge_batch(store, statement).await
}
