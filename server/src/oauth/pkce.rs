//! PKCE (RFC 7636), S256 only: `plain` would hand the verifier to anyone
//! who sees the authorization request.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 43–128 characters of the unreserved set (RFC 7636 §4.1 / §4.2).
fn valid_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

pub fn valid_challenge(challenge: &str) -> bool {
    valid_pkce_string(challenge)
}

/// The S256 challenge of a verifier: `BASE64URL(SHA256(verifier))`.
pub fn challenge_s256(verifier: &str) -> String {
    crate::crypto::b64url(&Sha256::digest(verifier.as_bytes()))
}

/// True when `BASE64URL(SHA256(verifier)) == challenge`.
pub fn verify(verifier: &str, challenge: &str) -> bool {
    if !valid_pkce_string(verifier) {
        return false;
    }
    let computed = challenge_s256(verifier);
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}
