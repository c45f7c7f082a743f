//! The parameter decoding of `/token` and `/authorize` (query string or
//! form body): the request guard (`security::hardening::check_params`),
//! `web::form::Params::parse`, and the extraction of every parameter the
//! two endpoints read, plus the pure PKCE checks they apply.
//! Never panics; the guard and the parser agree on what is malformed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oauth::pkce;
use portcullis::security::hardening::{check_params, ParamError};
use portcullis::web::form::Params;

const TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "client_id",
    "client_secret",
    "subject_token",
    "subject_token_type",
    "audience",
    "resource",
    "requested_token_type",
    "token",
    "token_type_hint",
];

const AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "acr_values",
    "request",
    "request_uri",
];

fuzz_target!(|data: &[u8]| {
    let strict = check_params(data, 8192, false);
    let lenient = check_params(data, usize::MAX, true);
    // The public listener's check is stricter than the decoder's own.
    if strict.is_ok() {
        assert!(lenient.is_ok());
    }
    if let Err(ParamError::TooLong(max)) = strict {
        assert_eq!(max, 8192);
    }
    let parsed = Params::parse(data);
    assert_eq!(
        parsed.is_ok(),
        lenient.is_ok(),
        "Params::parse and check_params disagree on {:?}: {:?} vs {:?}",
        String::from_utf8_lossy(data),
        parsed.as_ref().err(),
        lenient
    );
    let Ok(params) = parsed else {
        return;
    };
    let _ = params.first_duplicate();
    for name in TOKEN_PARAMS.iter().chain(AUTHORIZE_PARAMS) {
        match params.get(name) {
            Ok(Some(value)) => {
                assert!(!value.is_empty());
                assert!(!value.contains('\0'));
                let _ = params.field(name);
                if *name == "code_challenge" {
                    let _ = pkce::valid_challenge(value);
                }
                if *name == "code_verifier" {
                    let _ = pkce::verify(value, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSZw-cM");
                }
                if *name == "max_age" {
                    let _ = value.parse::<i64>();
                }
                if *name == "scope" || *name == "prompt" || *name == "acr_values" {
                    let _: Vec<&str> = value.split(' ').filter(|s| !s.is_empty()).collect();
                }
            }
            Ok(None) => {}
            Err(_) => assert!(params.first_duplicate().is_some()),
        }
    }
});
