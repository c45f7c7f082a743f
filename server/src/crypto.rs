//! Small shared primitives for secrets: generation, hashing, comparison.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `prefix` + 256 random bits, base64url. The prefix lets secret scanners
/// recognise a leaked value.
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Random id with 128 bits of entropy, base64url, no prefix.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// 128-bit id that sorts by creation time: 48 bits of milliseconds since
/// the epoch, then 80 random bits, as 32 lower-case hex digits. Rows keyed
/// by it are appended at the end of their index instead of landing on a
/// random page, which keeps the write per stored token small.
///
/// An id is not a secret: its random part comes from the thread-local
/// CSPRNG (seeded from the OS), not from a system call per id as secrets do.
pub fn time_ordered_id(now_ms: i64) -> String {
    let mut bytes = time_ordered_bytes(now_ms);
    rand::thread_rng().fill_bytes(&mut bytes[6..]);
    lower_hex(&bytes)
}

/// The smallest [`time_ordered_id`] of the millisecond `ms`: every id made
/// before `ms` sorts below it.
pub fn time_ordered_bound(ms: i64) -> String {
    lower_hex(&time_ordered_bytes(ms))
}

/// 48 bits of milliseconds, then zeros.
fn time_ordered_bytes(ms: i64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let ms = u64::try_from(ms).unwrap_or(0).to_be_bytes();
    bytes[..6].copy_from_slice(&ms[2..]);
    bytes
}

/// A random (version 4) UUID for request ids; like [`time_ordered_id`], from
/// the thread-local CSPRNG.
pub fn request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Lower-case hex in one allocation (`hex::encode` builds its string a
/// character at a time; this runs for every token presented or issued).
fn lower_hex<const N: usize>(bytes: &[u8; N]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * N);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Lower-case hex SHA-256: how high-entropy secrets are stored. (Passwords
/// use argon2id; a 256-bit random secret needs no stretching, and this keeps
/// the introspection hot path cheap.)
pub fn sha256_hex(data: &str) -> String {
    lower_hex(&Sha256::digest(data.as_bytes()).into())
}

/// Compares a presented secret with a stored SHA-256 hex digest in constant time.
pub fn secret_matches(presented: &str, stored_hash_hex: &str) -> bool {
    let presented = sha256_hex(presented);
    presented
        .as_bytes()
        .ct_eq(stored_hash_hex.as_bytes())
        .into()
}

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}
