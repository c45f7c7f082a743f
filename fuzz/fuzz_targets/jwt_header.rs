//! JWT verification (`keys::KeySet::verify`) on arbitrary input, as
//! `id_token_hint`, approval tokens and the admin UI's ID tokens reach it,
//! against a freshly generated key set. Nothing here was signed by those
//! keys, so every input must be refused, and none may panic. Half of the
//! inputs are built around a fuzzed header (base64url of the fuzz bytes as
//! the JOSE header) so that header parsing is explored, not just base64.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use portcullis::keys::{self, KeySet, SigningAlg};

fn key_set() -> &'static KeySet {
    static SET: OnceLock<KeySet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let set = keys::load_or_create(&dir, 1_800_000_000)
            .expect("generate keys")
            .set;
        let _ = std::fs::remove_dir_all(&dir);
        set
    })
}

fn refuse(set: &KeySet, token: &str) {
    let retention = Duration::from_secs(3600);
    for (algs, typ) in [
        (&[SigningAlg::RS256, SigningAlg::ES256][..], "JWT"),
        (&[SigningAlg::ES256][..], "refund-approval+jwt"),
    ] {
        assert!(
            set.verify(token, algs, typ, 1_800_000_000, retention).is_err(),
            "an unsigned input verified: {token:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let set = key_set();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            refuse(set, text);
        }
    } else {
        // header bytes | payload bytes, split at the first 0xFF.
        let (header, tail) = match rest.iter().position(|b| *b == 0xff) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(tail),
            URL_SAFE_NO_PAD.encode(&tail[..tail.len().min(64)])
        );
        refuse(set, &token);
    }
});
