//! Idempotency keys (the `Idempotency-Key` request header): the first
//! request with a key wins through a UNIQUE constraint scoped to the
//! requester and the endpoint; a replay gets the stored status and body
//! byte for byte; the same key with a different request is refused (422).
//! Keys and their responses are kept for `refunds.idempotency_ttl`.

use sha2::{Digest, Sha256};

use super::RefundError;

pub const HEADER: &str = "idempotency-key";
pub const MAX_KEY_LEN: usize = 255;

/// A response as first sent, for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentResponse {
    pub status: u16,
    /// The exact JSON text of the body.
    pub body: String,
    /// True when this is the stored answer to an earlier request.
    pub replayed: bool,
}

/// The key from the header value: required, 1–255 printable ASCII characters.
pub fn key(header: Option<&[u8]>) -> Result<String, RefundError> {
    let Some(raw) = header else {
        return Err(RefundError::invalid(
            "the Idempotency-Key header is required: send a unique value (e.g. a UUID) \
             per refund request, and the same value when retrying it",
        ));
    };
    let text = std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_KEY_LEN)
        .filter(|t| t.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    text.map(str::to_string).ok_or_else(|| {
        RefundError::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"
        ))
    })
}

/// SHA-256 (hex) of the canonical form of a request, to tell a replay from
/// a different request under the same key.
pub fn request_hash(canonical: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}
