//! Spikes in a client's error ratio at `/token` and `/introspect`: a
//! client whose requests mostly fail is being probed (guessed secrets,
//! replayed codes) or is broken. Counted in memory per client over a
//! sliding window (`alerts.error_spike_window`, in twelve buckets); when a
//! client made at least `alerts.error_spike_min_requests` requests in the
//! window and at least `alerts.error_spike_percent` of them were answered
//! 4xx, `security.client_error_spike` is recorded — at most once per client
//! per window. Recording happens on a task of its own: the request that
//! tipped the ratio does not wait for it.
//!
//! The client is the one the request claims to be (HTTP Basic user or the
//! `client_id` field), authenticated or not: failed authentication is the
//! most telling error. Memory is bounded ([`MAX_CLIENTS`]).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::config::AlertsConfig;

const BUCKETS: usize = 12;
/// Clients tracked at once; beyond this, idle entries are dropped first and
/// new clients are not counted until there is room.
pub const MAX_CLIENTS: usize = 10_000;
/// Same as axum's default body limit, which the handlers behind apply.
const BODY_LIMIT: usize = 2 * 1024 * 1024;
const MAX_CLIENT_ID_LEN: usize = 128;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    index: i64,
    total: u32,
    errors: u32,
}

#[derive(Debug, Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
    last_alert_ms: Option<i64>,
    last_seen_ms: i64,
}

/// A spike to report: requests and errors in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spike {
    pub requests: u32,
    pub errors: u32,
}

#[derive(Debug, Default)]
pub struct ErrorSpikes {
    clients: Mutex<HashMap<String, Window>>,
}

impl ErrorSpikes {
    /// Counts one answered request; returns a spike when this one tips the
    /// client over the threshold and no spike was reported for it within
    /// the window.
    pub fn observe(
        &self,
        client_id: &str,
        error: bool,
        now_ms: i64,
        cfg: &AlertsConfig,
    ) -> Option<Spike> {
        let window_ms = i64::try_from(cfg.error_spike_window.as_millis())
            .unwrap_or(i64::MAX)
            .max(BUCKETS as i64);
        let bucket_ms = window_ms / BUCKETS as i64;
        let index = now_ms.div_euclid(bucket_ms);
        let Ok(mut clients) = self.clients.lock() else {
            return None;
        };
        if !clients.contains_key(client_id) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, w| now_ms - w.last_seen_ms < window_ms);
            if clients.len() >= MAX_CLIENTS {
                return None;
            }
        }
        let w = clients.entry(client_id.to_string()).or_default();
        w.last_seen_ms = now_ms;
        let slot = usize::try_from(index.rem_euclid(BUCKETS as i64)).unwrap_or(0);
        let b = &mut w.buckets[slot];
        if b.index != index {
            *b = Bucket {
                index,
                total: 0,
                errors: 0,
            };
        }
        b.total = b.total.saturating_add(1);
        if error {
            b.errors = b.errors.saturating_add(1);
        }
        let (requests, errors) = w
            .buckets
            .iter()
            .filter(|b| b.index > index - BUCKETS as i64)
            .fold((0u32, 0u32), |(t, e), b| {
                (t.saturating_add(b.total), e.saturating_add(b.errors))
            });
        let over = requests >= cfg.error_spike_min_requests
            && u64::from(errors) * 100 >= u64::from(cfg.error_spike_percent) * u64::from(requests);
        let quiet = w.last_alert_ms.is_none_or(|t| now_ms - t >= window_ms);
        if error && over && quiet {
            w.last_alert_ms = Some(now_ms);
            return Some(Spike { requests, errors });
        }
        None
    }
}

/// Middleware on the public listener: counts `/token` and `/introspect`
/// answers per claimed client (2xx success, 4xx error; other statuses are
/// not the client's doing and are not counted).
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = match (req.method(), req.uri().path()) {
        (&Method::POST, "/token") => "/token",
        (&Method::POST, "/introspect") => "/introspect",
        _ => return next.run(req).await,
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let client = claimed_client(&parts.headers, &bytes);
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = resp.status();
    if let Some(client) = client
        && (status.is_success() || status.is_client_error())
    {
        let now_ms = state.clock.now_ms();
        if let Some(spike) = state.error_spikes.observe(
            &client,
            status.is_client_error(),
            now_ms,
            &state.config.alerts,
        ) {
            let state = state.clone();
            tokio::spawn(async move { record(&state, &client, endpoint, spike, now_ms).await });
        }
    }
    resp
}

async fn record(state: &AppState, client: &str, endpoint: &str, spike: Spike, now_ms: i64) {
    let cfg = &state.config.alerts;
    let result = audit::record_alone(
        &state.store,
        now_ms,
        &AuditContext::system("error_spikes"),
        AuditEvent::new(
            super::events::CLIENT_ERROR_SPIKE,
            format!("client:{client}"),
        )
        .after(json!({
            "client_id": client,
            "requests": spike.requests,
            "errors": spike.errors,
            "window_seconds": cfg.error_spike_window.as_secs(),
            "threshold_percent": cfg.error_spike_percent,
            "min_requests": cfg.error_spike_min_requests,
            "endpoint": endpoint,
        })),
    )
    .await;
    match result {
        Ok(_) => {
            state.outbox_wake.notify_one();
            tracing::warn!(event = super::events::CLIENT_ERROR_SPIKE, client_id = %client, requests = spike.requests, errors = spike.errors, "client error ratio spiked");
        }
        Err(e) => {
            tracing::error!(error = %e, client_id = %client, "cannot record a client error spike")
        }
    }
}

/// The client a request claims to be: HTTP Basic user name (form-decoded,
/// RFC 6749 §2.3.1) or the `client_id` form field.
fn claimed_client(headers: &axum::http::HeaderMap, body: &[u8]) -> Option<String> {
    let from_basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|text| {
            let (id, _) = text.split_once(':')?;
            form_urlencoded::parse(format!("id={id}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        });
    let id = from_basic.or_else(|| {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.into_owned())
    })?;
    let ok = !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN && !id.chars().any(|c| c.is_control());
    ok.then_some(id)
}
