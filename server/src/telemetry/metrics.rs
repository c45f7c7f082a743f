//! Prometheus text exposition without a metrics framework: a fixed set of
//! atomic counters is all the server needs, and it keeps the hot path cheap.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Status classes tracked per listener.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Default)]
pub struct Metrics {
    public_responses: [AtomicU64; 5],
    admin_responses: [AtomicU64; 5],
    pub key_reloads: AtomicU64,
    pub outbox_delivered: AtomicU64,
    pub outbox_attempt_failures: AtomicU64,
    pub outbox_failed: AtomicU64,
    /// 429 answers of the rate limiter, per `security::limits::Class`.
    pub rate_limited: [AtomicU64; crate::security::limits::Class::ALL.len()],
    /// Lockouts set (passwords and second-factor codes).
    pub lockouts: AtomicU64,
    /// Group commits of access tokens (`tokens::batch`) and the tokens they
    /// carried: their ratio is the batch size the load produces.
    pub token_batches: AtomicU64,
    pub token_batch_rows: AtomicU64,
    /// Client-credentials tokens stored ahead of demand, handed out from
    /// there, and dropped unused (`tokens::preissue`).
    pub token_preissued: AtomicU64,
    pub token_preissue_hits: AtomicU64,
    pub token_preissue_discarded: AtomicU64,
    /// Rows purged by the token janitor (`tokens::janitor`).
    pub tokens_purged: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub enum Listener {
    Public,
    Admin,
}

impl Metrics {
    pub fn record_response(&self, listener: Listener, status: u16) {
        let idx = usize::from((status / 100).clamp(1, 5) - 1);
        let counters = match listener {
            Listener::Public => &self.public_responses,
            Listener::Admin => &self.admin_responses,
        };
        counters[idx].fetch_add(1, Ordering::Relaxed);
    }

    /// `preissue_held`: tokens stored ahead of demand and not yet handed
    /// out (`tokens::preissue`).
    pub fn render(&self, db_up: bool, signing_keys: usize, preissue_held: usize) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP portcullis_http_responses_total HTTP responses by listener and status class.\n",
        );
        out.push_str("# TYPE portcullis_http_responses_total counter\n");
        for (listener, counters) in [
            ("public", &self.public_responses),
            ("admin", &self.admin_responses),
        ] {
            for (class, counter) in CLASSES.iter().zip(counters.iter()) {
                let _ = writeln!(
                    out,
                    "portcullis_http_responses_total{{listener=\"{listener}\",class=\"{class}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP portcullis_database_up Whether the last readiness query succeeded.\n");
        out.push_str("# TYPE portcullis_database_up gauge\n");
        let _ = writeln!(out, "portcullis_database_up {}", u8::from(db_up));
        out.push_str("# HELP portcullis_signing_keys Signing keys currently published in JWKS.\n");
        out.push_str("# TYPE portcullis_signing_keys gauge\n");
        let _ = writeln!(out, "portcullis_signing_keys {signing_keys}");
        out.push_str(
            "# HELP portcullis_token_preissue_held Client-credentials tokens stored ahead of demand, not yet handed out.\n",
        );
        out.push_str("# TYPE portcullis_token_preissue_held gauge\n");
        let _ = writeln!(out, "portcullis_token_preissue_held {preissue_held}");
        out.push_str(
            "# HELP portcullis_key_reloads_total Times the key set was reloaded from disk.\n",
        );
        out.push_str("# TYPE portcullis_key_reloads_total counter\n");
        let _ = writeln!(
            out,
            "portcullis_key_reloads_total {}",
            self.key_reloads.load(Ordering::Relaxed)
        );
        for (name, help, counter) in [
            (
                "portcullis_outbox_delivered_total",
                "Outbox messages delivered.",
                &self.outbox_delivered,
            ),
            (
                "portcullis_outbox_attempt_failures_total",
                "Failed outbox delivery attempts (retried).",
                &self.outbox_attempt_failures,
            ),
            (
                "portcullis_outbox_failed_total",
                "Outbox messages given up on after all attempts.",
                &self.outbox_failed,
            ),
            (
                "portcullis_token_batches_total",
                "Group commits of access tokens.",
                &self.token_batches,
            ),
            (
                "portcullis_token_batch_rows_total",
                "Access tokens stored by group commits.",
                &self.token_batch_rows,
            ),
            (
                "portcullis_token_preissued_total",
                "Client-credentials tokens stored ahead of demand.",
                &self.token_preissued,
            ),
            (
                "portcullis_token_preissue_hits_total",
                "Client-credentials requests answered with a token stored ahead of demand.",
                &self.token_preissue_hits,
            ),
            (
                "portcullis_token_preissue_discarded_total",
                "Tokens stored ahead of demand and never handed out (too old, or their client changed); their rows expire unused.",
                &self.token_preissue_discarded,
            ),
            (
                "portcullis_tokens_purged_total",
                "Rows purged by the token janitor: access tokens, emptied token families, codes, authorization requests, login challenges.",
                &self.tokens_purged,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP portcullis_rate_limited_total Requests refused with 429 by a rate limit, by endpoint class.\n\
             # TYPE portcullis_rate_limited_total counter\n",
        );
        for (class, counter) in crate::security::limits::Class::ALL
            .iter()
            .zip(self.rate_limited.iter())
        {
            let _ = writeln!(
                out,
                "portcullis_rate_limited_total{{class=\"{}\"}} {}",
                class.as_str(),
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_lockouts_total Lockouts after repeated failed logins or codes.\n\
             # TYPE portcullis_lockouts_total counter\nportcullis_lockouts_total {}",
            self.lockouts.load(Ordering::Relaxed)
        );
        out
    }
}
