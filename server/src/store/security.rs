//! SQL for security events (`crate::security`): what a user's earlier
//! sessions looked like, and which audit-chain breaks were already reported.

use super::{Store, StoreResult, Tx};

/// Distinct `(ip, user_agent)` pairs of the user's sessions other than
/// `except_session`, most recent first, at most `limit`.
pub async fn earlier_devices(
    store: &Store,
    user_id: &str,
    except_session: &str,
    limit: i64,
) -> StoreResult<Vec<(Option<String>, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT ip, user_agent FROM sessions WHERE user_id = $1 AND id <> $2 \
         GROUP BY ip, user_agent ORDER BY MAX(created_at) DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(except_session)
    .bind(limit)
    .fetch_all(store.reader())
    .await?)
}

/// `after_json` of every audit row with `action` and `target`, read inside
/// `tx` (which holds the audit log's append lock, so no other appender can
/// add one meanwhile).
pub async fn audit_rows_for(
    tx: &mut Tx,
    action: &str,
    target: &str,
) -> StoreResult<Vec<Option<String>>> {
    let rows: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT after_json FROM audit_log WHERE action = $1 AND target = $2")
            .bind(action)
            .bind(target)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().map(|(a,)| a).collect())
}
