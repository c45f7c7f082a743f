//! Security events: the one table that says which audit actions are
//! security events and under which stable name they leave the server.
//!
//! `audit::record` calls [`on_audit`] for every row it appends; a row whose
//! action is in [`EVENT_TYPES`] also queues one webhook delivery per
//! configured endpoint, in the same transaction. An event is therefore
//! never lost (the queue is durable) and never sent for a decision that was
//! rolled back. Delivery: `security::webhooks` through the outbox.
//!
//! Events the server detects itself are recorded here too: a login from a
//! device and IP never seen for the user ([`check_new_device`]), a broken
//! audit chain ([`verify_audit_chain`]); error spikes live in
//! `security::spikes`.

use serde_json::{Value, json};

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent, AuditRecord, VerifyReport};
use crate::sessions::Session;
use crate::store::{Store, StoreResult, Tx};

/// `schema` of every webhook body; bumped on any incompatible change.
pub const SCHEMA: &str = "portcullis.security_event/v1";

/// A security event type: the stable name receivers match on, and the
/// audit action it is recorded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    pub name: &'static str,
    pub audit_action: &'static str,
    pub description: &'static str,
}

/// Audit actions written by this module and `security::spikes`.
pub const NEW_DEVICE_LOGIN: &str = "security.new_device_login";
pub const AUDIT_CHAIN_FAILURE: &str = "audit.chain_failure";
pub const CLIENT_ERROR_SPIKE: &str = "security.client_error_spike";

/// Every security event. Names are part of the webhook contract (README
/// "Security events"): add, never rename.
pub const EVENT_TYPES: &[EventType] = &[
    EventType {
        name: "refresh_token_reuse",
        audit_action: "oauth.refresh_reuse",
        description: "a rotated refresh token was presented again; its whole family was revoked",
    },
    EventType {
        name: "code_reuse",
        audit_action: "oauth.code_reuse",
        description: "an authorization code was redeemed twice; what it issued was revoked",
    },
    EventType {
        name: "lockout",
        audit_action: "security.lockout",
        description: "an account or subject was locked after repeated failures",
    },
    EventType {
        name: "new_device_login",
        audit_action: NEW_DEVICE_LOGIN,
        description: "a login from a device and an IP address never seen for this user",
    },
    EventType {
        name: "recovery_code_used",
        audit_action: "mfa.recovery_code_used",
        description: "a second-factor recovery code was used",
    },
    EventType {
        name: "admin_termination",
        audit_action: "session.terminate",
        description: "staff terminated a user's session",
    },
    EventType {
        name: "key_rotation",
        audit_action: "keys.rotate",
        description: "the signing keys were rotated",
    },
    EventType {
        name: "client_secret_rotation",
        audit_action: "client.secret_rotated",
        description: "a client's secret was rotated",
    },
    EventType {
        name: "audit_chain_failure",
        audit_action: AUDIT_CHAIN_FAILURE,
        description: "the audit log's hash chain does not verify",
    },
    EventType {
        name: "client_error_spike",
        audit_action: CLIENT_ERROR_SPIKE,
        description: "a client's share of failed /token or /introspect requests spiked",
    },
];

/// The event type an audit action is, if it is one.
pub fn for_action(action: &str) -> Option<&'static EventType> {
    EVENT_TYPES.iter().find(|t| t.audit_action == action)
}

pub fn is_event_type(name: &str) -> bool {
    EVENT_TYPES.iter().any(|t| t.name == name)
}

/// Called by `audit::record` for every appended row, inside its
/// transaction: a security event is queued for each webhook that wants it.
pub async fn on_audit(store: &Store, tx: &mut Tx, row: &AuditRecord) -> StoreResult<()> {
    let Some(kind) = for_action(&row.action) else {
        return Ok(());
    };
    if store.webhooks().is_empty() {
        return Ok(());
    }
    let event_id = uuid::Uuid::new_v4().to_string();
    let body = payload(row, kind, &event_id).to_string();
    super::webhooks::enqueue(store, tx, row.at_ms.div_euclid(1000), kind.name, &body).await
}

/// The webhook body for one audit row (schema `portcullis.security_event/v1`).
/// Nothing secret goes out: `details` passes through the central redaction
/// (fields named like secrets, our token prefixes, credentials, JWTs).
pub fn payload(row: &AuditRecord, kind: &EventType, event_id: &str) -> Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.to_string())))
            .map(redact)
    };
    json!({
        "schema": SCHEMA,
        "id": event_id,
        "type": kind.name,
        "occurred_at": crate::clock::rfc3339_ms(row.at_ms),
        "actor": {
            "kind": row.actor_kind,
            "id": row.actor_id,
            "session": row.actor_session,
            "ip": row.ip,
        },
        "target": row.target,
        "details": {
            "audit_action": row.action,
            "reason": row.reason.as_deref().map(crate::telemetry::redact::redact_text),
            "ticket_id": row.ticket_id,
            "before": parse(&row.before_json),
            "after": parse(&row.after_json),
        },
        "audit_seq": row.seq,
        "request_id": row.request_id,
    })
}

/// Recursively replaces values of secret-named fields and masks secrets in text.
fn redact(v: Value) -> Value {
    use crate::telemetry::redact::{REDACTED, is_secret_field, redact_text};
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if is_secret_field(&k) && !v.is_null() {
                        Value::String(REDACTED.to_string())
                    } else {
                        redact(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_text(&s)),
        other => other,
    }
}

/// After a successful login that created `session`: if the user signed in
/// before, and neither this device (the label of its User-Agent, e.g.
/// "Firefox on Linux (desktop)") nor this IP address appears in any of
/// their earlier sessions, records `security.new_device_login`.
pub async fn check_new_device(state: &AppState, session: &Session) -> StoreResult<()> {
    let earlier =
        crate::store::security::earlier_devices(&state.store, &session.user_id, &session.id, 1000)
            .await?;
    if earlier.is_empty() {
        // The very first login: nothing to compare with.
        return Ok(());
    }
    let device = crate::sessions::device::describe(session.user_agent.as_deref());
    let ip_seen = earlier
        .iter()
        .any(|(ip, _)| ip.is_some() && ip == &session.ip);
    let device_seen = earlier
        .iter()
        .any(|(_, ua)| crate::sessions::device::describe(ua.as_deref()) == device);
    if ip_seen || device_seen {
        return Ok(());
    }
    let ctx = AuditContext {
        actor: audit::Actor {
            kind: audit::ActorKind::User,
            id: session.user_id.clone(),
            session: Some(session.id.clone()),
        },
        request_id: None,
        ip: session.ip.clone(),
    };
    audit::record_alone(
        &state.store,
        state.clock.now_ms(),
        &ctx,
        AuditEvent::new(NEW_DEVICE_LOGIN, format!("user_id:{}", session.user_id)).after(json!({
            "device": device,
            "ip": session.ip,
            "user_agent": session.user_agent,
            "sid": session.id,
            "amr": session.amr,
        })),
    )
    .await?;
    state.outbox_wake.notify_one();
    tracing::warn!(event = NEW_DEVICE_LOGIN, user_id = %session.user_id, device = %device, "login from a new device and IP address");
    Ok(())
}

/// Verifies the audit chain; a break is recorded as `audit.chain_failure`
/// (a new row appended after the broken one), once per distinct break
/// (same first bad row, same problem), however often verification runs.
/// Returns the report and whether this call recorded the break.
pub async fn verify_audit_chain(
    store: &Store,
    now_ms: i64,
    ctx: &AuditContext,
) -> StoreResult<(VerifyReport, bool)> {
    let report = audit::verify(store).await?;
    let Some(b) = &report.first_break else {
        return Ok((report, false));
    };
    let target = format!("audit_log:{}", b.seq);
    let mut tx = store.begin().await?;
    // Hold the append lock while checking, so two verifiers (replicas, the
    // CLI) cannot both record the same break.
    crate::store::audit::lock_head(store, &mut tx).await?;
    let already = crate::store::security::audit_rows_for(&mut tx, AUDIT_CHAIN_FAILURE, &target)
        .await?
        .iter()
        .flatten()
        .filter_map(|a| serde_json::from_str::<Value>(a).ok())
        .any(|a| a["problem"] == b.problem.as_str());
    if already {
        tx.rollback().await?;
        return Ok((report, false));
    }
    audit::record(
        store,
        &mut tx,
        now_ms,
        ctx,
        AuditEvent::new(AUDIT_CHAIN_FAILURE, target).after(json!({
            "first_bad_seq": b.seq,
            "problem": b.problem,
            "rows_verified": report.rows_checked,
            "last_good_seq": report.head_seq,
            "last_good_hash": report.head_hash,
        })),
    )
    .await?;
    tx.commit().await?;
    tracing::error!(event = AUDIT_CHAIN_FAILURE, seq = b.seq, problem = %b.problem, "audit chain broken");
    Ok((report, true))
}

/// The background verification (`alerts.audit_verify_interval`; off with
/// `off`). The first run is one interval after start-up.
pub async fn verify_audit_chain_periodically(state: AppState) {
    let Some(every) = state.config.alerts.audit_verify_interval else {
        return;
    };
    let ctx = AuditContext::system("audit_verify");
    loop {
        tokio::time::sleep(every).await;
        match verify_audit_chain(&state.store, state.clock.now_ms(), &ctx).await {
            Ok((_, true)) => state.outbox_wake.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "periodic audit verification failed"),
        }
    }
}
