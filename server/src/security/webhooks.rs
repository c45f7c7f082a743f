//! Signed webhooks for security events, delivered through the durable
//! outbox (`crate::outbox`, kind [`KIND`]): queued in the transaction that
//! records the event, sent by the background worker with retries and
//! exponential backoff, kept across restarts, never on the request path.
//!
//! Each request is a JSON POST (schema in `security::events::payload`) with
//!
//! ```text
//! Portcullis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! Portcullis-Event-Id: <the body's id>
//! Portcullis-Event-Type: <the body's type>
//! ```
//!
//! The timestamp is the attempt's, so a receiver can refuse stale or
//! replayed requests; the event id stays the same across attempts (and
//! endpoints) for de-duplication. A 2xx answer is delivered; anything else
//! is retried until `webhooks.max_attempts` or `webhooks.max_age`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::app::AppState;
use crate::outbox::OutboxMessage;
use crate::store::{Store, StoreResult, Tx};

/// Outbox `kind` of a security-event webhook delivery.
pub const KIND: &str = "security_webhook";

pub const SIGNATURE_HEADER: &str = "portcullis-signature";
pub const EVENT_ID_HEADER: &str = "portcullis-event-id";
pub const EVENT_TYPE_HEADER: &str = "portcullis-event-type";

/// Queues `body` (one event) for every configured endpoint that wants
/// `event_type`, inside the caller's transaction.
pub async fn enqueue(
    store: &Store,
    tx: &mut Tx,
    now: i64,
    event_type: &str,
    body: &str,
) -> StoreResult<()> {
    for endpoint in store.webhooks().iter().filter(|e| e.wants(event_type)) {
        let msg = OutboxMessage {
            id: uuid::Uuid::new_v4().to_string(),
            kind: KIND.to_string(),
            target_url: endpoint.url.clone(),
            client_id: None,
            payload: body.to_string(),
            created_at: now,
            next_attempt_at: now,
            attempts: 0,
            last_error: None,
            delivered_at: None,
            failed_at: None,
        };
        crate::store::outbox::insert(tx, &msg).await?;
    }
    Ok(())
}

/// HMAC-SHA256 (RFC 2104) of `message` under `secret`.
pub fn hmac_sha256(secret: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The `Portcullis-Signature` value for `body` sent at unix time `t`.
pub fn signature_header(secret: &[u8], t: i64, body: &str) -> String {
    let signed = format!("{t}.{body}");
    format!(
        "t={t},v1={}",
        hex::encode(hmac_sha256(secret, signed.as_bytes()))
    )
}

/// Why an attempt did not deliver.
#[derive(Debug)]
pub enum Failure {
    /// Try again later (network error, timeout, non-2xx answer).
    Retry(String),
    /// Trying again cannot help (the endpoint is no longer configured).
    Permanent(String),
}

/// One delivery attempt of a queued event, signed now.
pub async fn deliver(state: &AppState, msg: &OutboxMessage) -> Result<(), Failure> {
    let Some(endpoint) = state
        .config
        .webhooks
        .endpoints
        .iter()
        .find(|e| e.url == msg.target_url)
    else {
        return Err(Failure::Permanent(
            "the webhook is no longer configured".to_string(),
        ));
    };
    let event: serde_json::Value = serde_json::from_str(&msg.payload)
        .map_err(|_| Failure::Permanent("the queued event is not JSON".to_string()))?;
    let header = |key: &str| event[key].as_str().unwrap_or_default().to_string();
    let signature = signature_header(endpoint.secret.as_bytes(), state.clock.now(), &msg.payload);
    let resp = state
        .http_client
        .post(&msg.target_url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, header("id"))
        .header(EVENT_TYPE_HEADER, header("type"))
        .body(msg.payload.clone())
        .send()
        .await
        // The URL may carry a token (chat bridges): never in the error text.
        .map_err(|e| Failure::Retry(format!("request failed: {}", e.without_url())))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(Failure::Retry(format!(
            "endpoint answered HTTP {}",
            resp.status().as_u16()
        )))
    }
}

/// `scheme://host[:port]` of a webhook URL: enough to name it in audit rows
/// and logs without the path, which for chat bridges is often a credential.
pub fn origin(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "invalid-url".to_string())
}
