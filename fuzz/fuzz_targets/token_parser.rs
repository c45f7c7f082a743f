//! The opaque token shape check every token lookup runs before hashing
//! (`tokens::opaque_kind`): total on arbitrary input, and it accepts only
//! our prefix plus 43 base64url characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tokens::{self, OpaqueKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tokens::opaque_kind(text) {
        Some(kind) => {
            let prefix = match kind {
                OpaqueKind::Access => tokens::ACCESS_PREFIX,
                OpaqueKind::Refresh => tokens::REFRESH_PREFIX,
            };
            assert!(text.starts_with(prefix));
            assert_eq!(text.len(), prefix.len() + 43);
            assert!(text[prefix.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        None => {
            // Anything of the right shape must be recognised.
            for prefix in [tokens::ACCESS_PREFIX, tokens::REFRESH_PREFIX] {
                if let Some(body) = text.strip_prefix(prefix) {
                    assert!(
                        body.len() != 43
                            || !body
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                        "a well-shaped token was not recognised: {text:?}"
                    );
                }
            }
        }
    }
    // What the server mints is always recognised.
    let minted = portcullis::crypto::random_secret(tokens::ACCESS_PREFIX);
    assert_eq!(tokens::opaque_kind(&minted), Some(OpaqueKind::Access));
});
