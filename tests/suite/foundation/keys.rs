use std::time::Duration;

use crate::support::{Backend, TestEnv, eventually};

backend_tests!(jwks_lists_both_keys_and_rotation_keeps_the_old_kid);

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

async fn jwks_lists_both_keys_and_rotation_keeps_the_old_kid(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let server = env.serve().await;
    let (status, jwks) = server.get_json(&server.url("/jwks.json")).await;
    assert_eq!(status, 200);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    let ec = keys
        .iter()
        .find(|k| k["alg"] == "ES256")
        .expect("ES256 key");
    assert_eq!(ec["kty"], "EC");
    assert_eq!(ec["crv"], "P-256");
    assert_eq!(ec["use"], "sig");
    let rsa = keys
        .iter()
        .find(|k| k["alg"] == "RS256")
        .expect("RS256 key");
    assert_eq!(rsa["kty"], "RSA");
    for k in keys {
        assert!(
            k["kid"].as_str().is_some_and(|s| !s.is_empty()),
            "kid set: {k}"
        );
        assert!(
            k.get("d").is_none() && k.get("p").is_none(),
            "no private parts: {k}"
        );
    }
    let old = kids(&jwks);

    let listed = env.cli(&["keys", "list", "--json"]).await;
    listed.assert_ok();
    let listed = listed.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["state"] == "active")
    );

    // Rotate while the server runs: it picks up the new keys without a
    // restart and keeps publishing the old ones.
    env.cli(&["keys", "rotate"]).await.assert_ok();
    let url = server.url("/jwks.json");
    let published = eventually(Duration::from_secs(15), || async {
        let (_, jwks) = server.get_json(&url).await;
        kids(&jwks).len() == 4
    })
    .await;
    assert!(published, "rotated keys were not published");
    let (_, jwks) = server.get_json(&url).await;
    let now = kids(&jwks);
    for kid in &old {
        assert!(
            now.contains(kid),
            "old kid {kid} must stay in JWKS until its tokens expire"
        );
    }
    let listed = env.cli(&["keys", "list", "--json"]).await.json();
    let states: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "active").count(),
        2,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| s.starts_with("retired")).count(),
        2,
        "{states:?}"
    );

    // Rotation is audited.
    let export = env.cli(&["audit", "export"]).await;
    assert!(
        export.stdout.contains("\"keys.rotate\""),
        "{}",
        export.stdout
    );

    // Once the retention window has passed, the retired keys leave JWKS.
    let set = portcullis::keys::load(&env.keys_dir()).unwrap();
    let config = portcullis::config::Config::defaults().unwrap();
    let retention = config.retired_key_retention();
    let far = crate::support::unix_now() + retention.as_secs() as i64 + 60;
    let later = set.jwks(far, retention);
    let later_kids = kids(&later);
    assert_eq!(later_kids.len(), 2);
    for kid in &old {
        assert!(!later_kids.contains(kid));
    }
    server.stop().await;
}

/// Signing and RFC 8725 verification with the generated keys.
#[tokio::test]
async fn signatures_verify_only_with_the_right_alg_type_and_kid() {
    use portcullis::keys::{SigningAlg, VerifyError};
    let dir = tempfile::tempdir().unwrap();
    let now = 1_800_000_000;
    let set = portcullis::keys::load_or_create(dir.path(), now)
        .unwrap()
        .set;
    let retention = Duration::from_secs(3600);
    let mut payload = josekit::jwt::JwtPayload::new();
    payload.set_subject("alice");
    let es = set.sign(SigningAlg::ES256, "at+jwt", &payload).unwrap();
    let claims = set
        .verify(&es, &[SigningAlg::ES256], "at+jwt", now, retention)
        .unwrap();
    assert_eq!(claims.subject(), Some("alice"));

    assert_eq!(
        set.verify(&es, &[SigningAlg::ES256], "logout+jwt", now, retention)
            .unwrap_err(),
        VerifyError::WrongType
    );
    assert_eq!(
        set.verify(&es, &[SigningAlg::RS256], "at+jwt", now, retention)
            .unwrap_err(),
        VerifyError::AlgorithmNotAllowed
    );
    // Tampered payload.
    let mut parts: Vec<&str> = es.split('.').collect();
    let forged_body = portcullis::crypto::b64url(br#"{"sub":"mallory"}"#);
    parts[1] = &forged_body;
    assert_eq!(
        set.verify(
            &parts.join("."),
            &[SigningAlg::ES256],
            "at+jwt",
            now,
            retention
        )
        .unwrap_err(),
        VerifyError::BadSignature
    );
    // alg=none and an unknown kid are refused.
    let none_header = portcullis::crypto::b64url(br#"{"alg":"none","typ":"at+jwt"}"#);
    let unsigned = format!("{none_header}.{forged_body}.");
    assert_eq!(
        set.verify(&unsigned, &[SigningAlg::ES256], "at+jwt", now, retention)
            .unwrap_err(),
        VerifyError::AlgorithmNotAllowed
    );
    let other = tempfile::tempdir().unwrap();
    let foreign = portcullis::keys::load_or_create(other.path(), now)
        .unwrap()
        .set;
    let foreign_token = foreign.sign(SigningAlg::ES256, "at+jwt", &payload).unwrap();
    assert_eq!(
        set.verify(
            &foreign_token,
            &[SigningAlg::ES256],
            "at+jwt",
            now,
            retention
        )
        .unwrap_err(),
        VerifyError::UnknownKey
    );
}
