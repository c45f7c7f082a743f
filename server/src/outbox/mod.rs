//! The durable outbox: messages to other systems (OIDC back-channel logout,
//! security-event webhooks: `security::webhooks`) are written in the same transaction as the
//! decision that causes them, then delivered by a background worker with
//! retries and exponential backoff. Nothing here blocks a request, and
//! queued messages survive restarts.

use std::time::Duration;

use josekit::jwt::JwtPayload;
use serde_json::json;

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::crypto;
use crate::keys::SigningAlg;
use crate::security::webhooks::{self, Failure};
use crate::sessions::Session;
use crate::store::{StoreError, Tx};

pub const BACKCHANNEL_LOGOUT: &str = "backchannel_logout";
const LEASE_SECS: i64 = 60;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxMessage {
    pub id: String,
    pub kind: String,
    pub target_url: String,
    pub client_id: Option<String>,
    pub payload: String,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub failed_at: Option<i64>,
}

/// Queues an OIDC Back-Channel Logout token for every client of the session
/// that registered a `backchannel_logout_uri`; returns their ids.
pub async fn queue_backchannel_logout(
    state: &AppState,
    tx: &mut Tx,
    session: &Session,
    client_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let now = state.clock.now();
    let mut queued = Vec::new();
    for client_id in client_ids {
        let Some(client) = crate::store::clients::find_tx(tx, client_id).await? else {
            continue;
        };
        let Some(uri) = &client.backchannel_logout_uri else {
            continue;
        };
        let mut p = JwtPayload::new();
        let mut set = |k: &str, v: serde_json::Value| {
            let _ = p.set_claim(k, Some(v));
        };
        set("iss", state.config.issuer.clone().into());
        set("aud", client.id.clone().into());
        set("iat", now.into());
        set("exp", (now + 120).into());
        set("jti", crypto::random_id().into());
        set("sub", session.user_id.clone().into());
        set("sid", session.id.clone().into());
        set(
            "events",
            json!({"http://schemas.openid.net/event/backchannel-logout": {}}),
        );
        let alg = SigningAlg::parse(&client.id_token_alg).unwrap_or(SigningAlg::RS256);
        let token = match state.keys.current().sign(alg, "logout+jwt", &p) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, client_id = %client.id, "cannot sign a logout token");
                continue;
            }
        };
        let payload: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", &token)
            .finish();
        let msg = OutboxMessage {
            id: crypto::random_id(),
            kind: BACKCHANNEL_LOGOUT.to_string(),
            target_url: uri.clone(),
            client_id: Some(client.id.clone()),
            payload,
            created_at: now,
            next_attempt_at: now,
            attempts: 0,
            last_error: None,
            delivered_at: None,
            failed_at: None,
        };
        crate::store::outbox::insert(tx, &msg).await?;
        queued.push(client.id.clone());
    }
    Ok(queued)
}

/// Delay before attempt `attempts + 1`: base · 2^(attempts-1), capped at 1 h.
pub fn backoff(base: Duration, attempts: i64) -> i64 {
    let base = i64::try_from(base.as_secs()).unwrap_or(5).max(1);
    let exp = u32::try_from((attempts - 1).clamp(0, 20)).unwrap_or(20);
    base.saturating_mul(1i64 << exp).min(3600)
}

/// The delivery loop: runs until the process stops.
pub async fn run(state: AppState) {
    loop {
        match deliver_due(&state).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "outbox: cannot read due messages"),
        }
        tokio::select! {
            () = state.outbox_wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One pass: claims and sends every due message. Returns how many were sent.
pub async fn deliver_due(state: &AppState) -> Result<usize, StoreError> {
    let now = state.clock.now();
    let due = crate::store::outbox::claim_due(&state.store, now, LEASE_SECS, 50).await?;
    let mut sent = 0;
    for msg in due {
        let attempts = msg.attempts + 1;
        let policy = RetryPolicy::for_kind(state, &msg.kind);
        match send(state, &msg).await {
            Ok(()) => {
                crate::store::outbox::mark_delivered(
                    &state.store,
                    &msg.id,
                    state.clock.now(),
                    attempts,
                )
                .await?;
                state
                    .metrics
                    .outbox_delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sent += 1;
            }
            Err(failure) => {
                state
                    .metrics
                    .outbox_attempt_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (error, permanent) = match failure {
                    Failure::Retry(e) => (e, false),
                    Failure::Permanent(e) => (e, true),
                };
                tracing::warn!(kind = %msg.kind, client_id = ?msg.client_id, attempts, error = %error, "outbox delivery failed");
                let now = state.clock.now();
                let next = now + backoff(policy.retry_base, attempts);
                let too_old = policy
                    .max_age
                    .is_some_and(|age| next.saturating_sub(msg.created_at) > age);
                if permanent || attempts >= policy.max_attempts || too_old {
                    give_up(state, &msg, attempts, &error).await?;
                } else {
                    crate::store::outbox::mark_retry(&state.store, &msg.id, attempts, next, &error)
                        .await?;
                }
            }
        }
    }
    Ok(sent)
}

/// Retries per message kind: back-channel logout uses `[outbox]`, security
/// webhooks `[webhooks]` (which also bounds a message's age).
struct RetryPolicy {
    retry_base: Duration,
    max_attempts: i64,
    /// Seconds after `created_at` past which no attempt is scheduled.
    max_age: Option<i64>,
}

impl RetryPolicy {
    fn for_kind(state: &AppState, kind: &str) -> RetryPolicy {
        if kind == webhooks::KIND {
            let w = &state.config.webhooks;
            RetryPolicy {
                retry_base: w.retry_base,
                max_attempts: w.max_attempts,
                max_age: Some(i64::try_from(w.max_age.as_secs()).unwrap_or(i64::MAX)),
            }
        } else {
            RetryPolicy {
                retry_base: state.config.outbox.retry_base,
                max_attempts: state.config.outbox.max_attempts,
                max_age: None,
            }
        }
    }
}

async fn send(state: &AppState, msg: &OutboxMessage) -> Result<(), Failure> {
    if msg.kind == webhooks::KIND {
        return webhooks::deliver(state, msg).await;
    }
    send_backchannel_logout(state, msg)
        .await
        .map_err(Failure::Retry)
}

async fn send_backchannel_logout(state: &AppState, msg: &OutboxMessage) -> Result<(), String> {
    let resp = state
        .http_client
        .post(&msg.target_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(msg.payload.clone())
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("endpoint answered HTTP {}", resp.status().as_u16()))
    }
}

/// Out of attempts: recorded as failed, audited, counted.
async fn give_up(
    state: &AppState,
    msg: &OutboxMessage,
    attempts: i64,
    error: &str,
) -> Result<(), StoreError> {
    let mut tx = state.store.begin().await?;
    crate::store::outbox::mark_failed(&mut tx, &msg.id, state.clock.now(), attempts, error).await?;
    let event = if msg.kind == webhooks::KIND {
        // A webhook URL's path is often a credential (chat bridges): only
        // its origin is recorded.
        let origin = webhooks::origin(&msg.target_url);
        let event: serde_json::Value = serde_json::from_str(&msg.payload).unwrap_or_default();
        AuditEvent::new("outbox.delivery_failed", format!("webhook:{origin}")).after(json!({
            "kind": msg.kind, "target": origin, "event_id": event["id"], "event_type": event["type"],
            "attempts": attempts, "error": error,
        }))
    } else {
        AuditEvent::new("outbox.delivery_failed", format!("client:{}", msg.client_id.clone().unwrap_or_default()))
            .after(json!({"kind": msg.kind, "target_url": msg.target_url, "attempts": attempts, "error": error}))
    };
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        &AuditContext::system("outbox"),
        event,
    )
    .await?;
    tx.commit().await?;
    state
        .metrics
        .outbox_failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
