//! Ending sessions: by the person, by staff, by timeout, by logout. One
//! transaction marks the session ended, revokes every token issued through
//! it, queues back-channel logout to each client that got tokens, and
//! writes the audit row; then every replica's introspection cache is
//! cleared (NOTIFY), so the tokens are dead everywhere at once.

use serde_json::json;

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::store::StoreError;

use super::Session;

pub const IDLE_TIMEOUT: &str = "idle timeout";
pub const ABSOLUTE_TIMEOUT: &str = "absolute timeout";

/// Who ended a session, as the person will see it.
#[derive(Debug, Clone)]
pub struct Ender {
    /// `user`, `support`, `system` or `logout`.
    pub kind: &'static str,
    pub id: String,
}

impl Ender {
    pub fn user(user_id: &str) -> Self {
        Ender {
            kind: "user",
            id: user_id.to_string(),
        }
    }

    pub fn support(staff_username: &str) -> Self {
        Ender {
            kind: "support",
            id: staff_username.to_string(),
        }
    }

    pub fn system() -> Self {
        Ender {
            kind: "system",
            id: "sessions".to_string(),
        }
    }

    pub fn logout(user_id: &str) -> Self {
        Ender {
            kind: "logout",
            id: user_id.to_string(),
        }
    }
}

/// What an end did: the session before and after, or `None` if it had
/// already ended (ending twice is a no-op, not an error).
pub type Ended = Option<(Session, Session)>;

pub async fn end_session(
    state: &AppState,
    session_id: &str,
    ender: &Ender,
    reason: &str,
    ticket_id: Option<&str>,
    ctx: &AuditContext,
) -> Result<Ended, StoreError> {
    let mut tx = state.store.begin().await?;
    let ended = end_in(state, &mut tx, session_id, ender, reason, ticket_id, ctx).await?;
    tx.commit().await?;
    if ended.is_some() {
        after_end(state);
    }
    Ok(ended)
}

/// Ends every live session of `user_id` except `keep`; returns how many.
pub async fn end_all_for_user(
    state: &AppState,
    user_id: &str,
    keep: Option<&str>,
    ender: &Ender,
    reason: &str,
    ticket_id: Option<&str>,
    ctx: &AuditContext,
) -> Result<Vec<(Session, Session)>, StoreError> {
    let mut tx = state.store.begin().await?;
    let ended =
        end_all_for_user_in(state, &mut tx, user_id, keep, ender, reason, ticket_id, ctx).await?;
    tx.commit().await?;
    if !ended.is_empty() {
        after_end(state);
    }
    Ok(ended)
}

/// [`end_all_for_user`] inside the caller's transaction, for changes that
/// must end the sessions atomically with something else (locking an
/// account, resetting its second factors). The caller commits, then calls
/// [`after_end`] if anything ended.
#[allow(clippy::too_many_arguments)]
pub async fn end_all_for_user_in(
    state: &AppState,
    tx: &mut crate::store::Tx,
    user_id: &str,
    keep: Option<&str>,
    ender: &Ender,
    reason: &str,
    ticket_id: Option<&str>,
    ctx: &AuditContext,
) -> Result<Vec<(Session, Session)>, StoreError> {
    let ids = crate::store::sessions::live_ids_for_user(tx, user_id).await?;
    let mut ended = Vec::new();
    for id in ids.iter().filter(|id| Some(id.as_str()) != keep) {
        if let Some(pair) = end_in(state, tx, id, ender, reason, ticket_id, ctx).await? {
            ended.push(pair);
        }
    }
    Ok(ended)
}

/// After a committed end: clears this replica's introspection cache (the
/// NOTIFY sent inside the transaction clears the others') and wakes the
/// back-channel logout outbox.
pub fn after_end(state: &AppState) {
    state.introspection_cache.clear();
    state.outbox_wake.notify_one();
}

async fn end_in(
    state: &AppState,
    tx: &mut crate::store::Tx,
    session_id: &str,
    ender: &Ender,
    reason: &str,
    ticket_id: Option<&str>,
    ctx: &AuditContext,
) -> Result<Ended, StoreError> {
    let Some(before) =
        crate::store::sessions::find_for_update(&state.store, tx, session_id).await?
    else {
        return Ok(None);
    };
    if !before.is_live() {
        return Ok(None);
    }
    let now = state.clock.now();
    if !crate::store::sessions::mark_ended(
        tx, session_id, now, ender.kind, &ender.id, reason, ticket_id,
    )
    .await?
    {
        return Ok(None);
    }
    crate::store::sessions::revoke_tokens(&state.store, tx, session_id, now).await?;
    let clients = crate::store::sessions::client_ids_tx(tx, session_id).await?;
    let notified = crate::outbox::queue_backchannel_logout(state, tx, &before, &clients).await?;
    let after = Session {
        ended_at: Some(now),
        ended_by: Some(ender.kind.to_string()),
        ended_by_id: Some(ender.id.clone()),
        end_reason: Some(reason.to_string()),
        ticket_id: ticket_id.map(str::to_string),
        ..before.clone()
    };
    let mut after_view = after.view(None);
    after_view["tokens_revoked"] = true.into();
    after_view["backchannel_logout"] = json!(notified);
    let action = match ender.kind {
        "support" => "session.terminate",
        "system" => "session.expire",
        "logout" => "session.logout",
        _ => "session.end",
    };
    audit::record(
        &state.store,
        tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new(action, format!("session:{session_id}"))
            .reason(Some(reason.to_string()), ticket_id.map(str::to_string))
            .before(json!({"session": before.view(None), "clients": clients, "user_id": before.user_id}))
            .after(after_view),
    )
    .await?;
    Ok(Some((before, after)))
}

/// Ends sessions past their idle or absolute timeout (a background job, so
/// tokens die even if the person never comes back).
pub async fn sweep_timeouts(state: &AppState) -> Result<usize, StoreError> {
    let now = state.clock.now();
    let idle = i64::try_from(state.config.sessions.idle_timeout.as_secs()).unwrap_or(i64::MAX);
    let absolute =
        i64::try_from(state.config.sessions.absolute_timeout.as_secs()).unwrap_or(i64::MAX);
    let due = crate::store::sessions::timed_out(
        &state.store,
        now.saturating_sub(idle),
        now.saturating_sub(absolute),
        200,
    )
    .await?;
    let ctx = AuditContext::system("sessions");
    let mut n = 0;
    for (id, idle_out) in due {
        let reason = if idle_out == 1 {
            IDLE_TIMEOUT
        } else {
            ABSOLUTE_TIMEOUT
        };
        if end_session(state, &id, &Ender::system(), reason, None, &ctx)
            .await?
            .is_some()
        {
            n += 1;
        }
    }
    Ok(n)
}
