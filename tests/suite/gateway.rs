//! Issue 4: opaque tokens outside, signed JWTs inside — introspection
//! (RFC 7662 / RFC 9701), revocation (RFC 7009), token exchange (RFC 8693),
//! and revocation reaching every replica.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::oauth::flow::{ClientAuth, Oidc};
use crate::support::{Backend, eventually, raw_pool, unix_now};

backend_tests!(
    introspection_answers_inactive_for_every_dead_token,
    introspection_requires_an_allowed_caller,
    jwt_introspection_verifies_with_an_independent_library,
    revoking_a_refresh_token_kills_its_family,
    revoking_someone_elses_token_changes_nothing,
    token_exchange_is_limited_to_registered_audiences,
    concurrent_client_credentials_tokens_are_each_stored,
    issuance_and_revocation_interleave,
    pooled_token_batches_store_every_field_and_are_all_or_nothing,
);

const INACTIVE: &str = r#"{"active":false}"#;

pub(crate) async fn gateway(oidc: &Oidc) -> crate::oauth::flow::Client {
    oidc.client(
        "gw",
        &[
            "--grant",
            "client_credentials",
            "--scope",
            "api",
            "--may-introspect",
            "--exchange-audience",
            "orders-api",
        ],
    )
    .await
}

pub(crate) async fn service(oidc: &Oidc) -> crate::oauth::flow::Client {
    oidc.client(
        "svc",
        &["--grant", "client_credentials", "--scope", "api read write"],
    )
    .await
}

/// POST a form with Basic auth; returns (status, headers, body text).
async fn post(
    oidc: &Oidc,
    path: &str,
    client: &crate::oauth::flow::Client,
    form: &[(&str, &str)],
    accept: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = oidc
        .http
        .post(oidc.url(path))
        .basic_auth(&client.id, client.secret.as_deref())
        .form(form);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

pub(crate) async fn introspect(
    oidc: &Oidc,
    gw: &crate::oauth::flow::Client,
    token: &str,
) -> serde_json::Value {
    let (status, headers, body) = post(oidc, "/introspect", gw, &[("token", token)], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    serde_json::from_str(&body).unwrap()
}

async fn introspect_raw(oidc: &Oidc, gw: &crate::oauth::flow::Client, token: &str) -> String {
    let (status, _, body) = post(oidc, "/introspect", gw, &[("token", token)], None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn introspection_answers_inactive_for_every_dead_token(backend: Backend) {
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_TOKENS_ACCESS_TTL", "2s")]).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let app = oidc
        .code_client("shop", "openid profile", &["--first-party"])
        .await;
    oidc.user("alice").await;

    let live = oidc
        .client_credentials(&svc, Some("api read"))
        .await
        .str("access_token");
    assert!(
        live.starts_with("pct_at_") && live.len() == 7 + 43,
        "{live}"
    );
    let claims = introspect(&oidc, &gw, &live).await;
    assert_eq!(claims["active"], true);
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["scope"], "api read");
    assert_eq!(claims["token_type"], "Bearer");
    assert_eq!(claims["iss"], oidc.issuer);
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    // User tokens carry the session and how the user signed in.
    let tokens = oidc.login_and_redeem(&app, "alice", "openid profile").await;
    let user_at = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let claims = introspect(&oidc, &gw, &user_at).await;
    assert_eq!(claims["active"], true);
    assert!(
        claims["sid"].as_str().is_some_and(|s| !s.is_empty()),
        "{claims}"
    );
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    let rt_claims = introspect(&oidc, &gw, &refresh).await;
    assert_eq!(rt_claims["active"], true);
    assert_eq!(rt_claims["token_type"], "refresh_token");

    // Unknown, malformed, empty-ish and foreign-looking tokens.
    for token in [
        "pct_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "pct_rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "not-a-token",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        &"pct_at_x".repeat(500),
        "%00",
    ] {
        assert_eq!(
            introspect_raw(&oidc, &gw, token).await,
            INACTIVE,
            "{token:.40}"
        );
    }

    // Revoked (by its client through RFC 7009).
    let doomed = oidc
        .client_credentials(&svc, None)
        .await
        .str("access_token");
    assert_eq!(introspect(&oidc, &gw, &doomed).await["active"], true);
    let (status, _, _) = post(&oidc, "/revoke", &svc, &[("token", &doomed)], None).await;
    assert_eq!(status, 200);
    assert_eq!(introspect_raw(&oidc, &gw, &doomed).await, INACTIVE);

    // A rotated (used) refresh token.
    let rotated = oidc.refresh(&app, &refresh).await;
    rotated.ok();
    assert_eq!(introspect_raw(&oidc, &gw, &refresh).await, INACTIVE);

    // Expired: access_ttl is 2s here.
    let expired_ok = eventually(Duration::from_secs(10), || async {
        introspect_raw(&oidc, &gw, &live).await == INACTIVE
    })
    .await;
    assert!(expired_ok, "an expired token must become inactive");
}

async fn introspection_requires_an_allowed_caller(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let token = oidc
        .client_credentials(&svc, None)
        .await
        .str("access_token");
    // A client without --may-introspect.
    let (status, _, body) = post(&oidc, "/introspect", &svc, &[("token", &token)], None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unauthorized_client"), "{body}");
    // Wrong secret.
    let mut wrong = gw.clone();
    wrong.secret = Some("pcs_wrong".into());
    let (status, headers, body) =
        post(&oidc, "/introspect", &wrong, &[("token", &token)], None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_client"));
    assert!(headers.contains_key("www-authenticate"));
    // No credentials at all.
    let resp = oidc
        .http
        .post(oidc.url("/introspect"))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Missing token parameter.
    let (status, _, body) = post(&oidc, "/introspect", &gw, &[], None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_request"));
    // Revocation needs client authentication too.
    let resp = oidc
        .http
        .post(oidc.url("/revoke"))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(introspect(&oidc, &gw, &token).await["active"], true);
}

/// The interpreter of the interop venv (see `.ci/run`).
fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{python} cannot import {module}; .ci/run installs tests/interop/requirements.txt");
    }
    eprintln!("skipped: {python} has no {module} (pip install -r tests/interop/requirements.txt)");
    None
}

/// Verifies a JWT with PyJWT against our JWKS; returns (header, claims).
async fn pyjwt_verify(oidc: &Oidc, token: &str, typ: &str, aud: &str) -> Option<serde_json::Value> {
    let python = python_with("jwt")?;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/interop/verify_jwt.py"
    );
    let out = tokio::process::Command::new(python)
        .args([
            script,
            &oidc.url("/jwks.json"),
            token,
            typ,
            aud,
            &oidc.issuer,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT rejected the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

async fn jwt_introspection_verifies_with_an_independent_library(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let token = oidc
        .client_credentials(&svc, Some("api"))
        .await
        .str("access_token");
    let accept = Some("application/token-introspection+jwt");
    let (status, headers, jwt) =
        post(&oidc, "/introspect", &gw, &[("token", &token)], accept).await;
    assert_eq!(status, 200, "{jwt}");
    assert_eq!(
        headers["content-type"],
        "application/token-introspection+jwt"
    );
    let (header, claims) = oidc.verify_jwt(&jwt).await;
    assert_eq!(header["typ"], "token-introspection+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["aud"], "gw");
    assert_eq!(claims["iss"], oidc.issuer);
    assert_eq!(claims["token_introspection"]["active"], true);
    assert_eq!(claims["token_introspection"]["client_id"], "svc");

    if let Some(v) = pyjwt_verify(&oidc, &jwt, "token-introspection+jwt", "gw").await {
        assert_eq!(v["claims"]["token_introspection"]["scope"], "api");
        assert_eq!(v["header"]["kid"], header["kid"]);
    }

    // An inactive token's signed answer says only that.
    let (_, _, jwt) = post(
        &oidc,
        "/introspect",
        &gw,
        &[("token", "pct_at_nope")],
        accept,
    )
    .await;
    let (_, claims) = oidc.verify_jwt(&jwt).await;
    assert_eq!(
        claims["token_introspection"],
        serde_json::json!({"active": false})
    );

    // A forged response (payload swapped) does not verify.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    parts[1] = portcullis::crypto::b64url(
        br#"{"iss":"x","aud":"gw","token_introspection":{"active":true}}"#,
    );
    let forged = parts.join(".");
    let keys = portcullis::keys::load(&oidc.env.keys_dir()).unwrap();
    let now = unix_now();
    assert!(
        keys.verify(
            &forged,
            &[portcullis::keys::SigningAlg::ES256],
            "token-introspection+jwt",
            now,
            Duration::from_secs(3600)
        )
        .is_err()
    );
}

async fn revoking_a_refresh_token_kills_its_family(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let app = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    let first = oidc.login_and_redeem(&app, "alice", "openid").await;
    let at1 = first["access_token"].as_str().unwrap().to_string();
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    let second = oidc.refresh(&app, &rt1).await;
    let at2 = second.str("access_token");
    let rt2 = second.str("refresh_token");
    // Another login of the same user is a different family and survives.
    let other = oidc.login_and_redeem(&app, "alice", "openid").await;
    let other_at = other["access_token"].as_str().unwrap().to_string();

    let (status, _, body) = post(
        &oidc,
        "/revoke",
        &app,
        &[("token", &rt2), ("token_type_hint", "refresh_token")],
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    for t in [&at1, &at2, &rt2] {
        assert_eq!(introspect_raw(&oidc, &gw, t).await, INACTIVE);
    }
    oidc.refresh(&app, &rt2)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(oidc.userinfo(&at2).await.status, 401);
    assert_eq!(introspect(&oidc, &gw, &other_at).await["active"], true);
    // Revoking again is still a 200.
    let (status, _, _) = post(&oidc, "/revoke", &app, &[("token", &rt2)], None).await;
    assert_eq!(status, 200);
}

async fn revoking_someone_elses_token_changes_nothing(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let mallory = oidc
        .client(
            "mallory",
            &["--grant", "client_credentials", "--scope", "api"],
        )
        .await;
    let token = oidc
        .client_credentials(&svc, None)
        .await
        .str("access_token");
    let (status, _, body) = post(&oidc, "/revoke", &mallory, &[("token", &token)], None).await;
    assert_eq!((status, body.as_str()), (200, ""), "silent no-op");
    assert_eq!(introspect(&oidc, &gw, &token).await["active"], true);
    // Unknown tokens too.
    let (status, _, _) = post(
        &oidc,
        "/revoke",
        &mallory,
        &[("token", "pct_at_unknown")],
        None,
    )
    .await;
    assert_eq!(status, 200);
}

async fn token_exchange_is_limited_to_registered_audiences(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let app = oidc
        .code_client("shop", "openid profile", &["--first-party"])
        .await;
    oidc.user("alice").await;
    let tokens = oidc.login_and_redeem(&app, "alice", "openid profile").await;
    let subject = tokens["access_token"].as_str().unwrap().to_string();
    let exchange = |audience: &'static str, token: String, client: crate::oauth::flow::Client| {
        let oidc = &oidc;
        async move {
            oidc.token(
                &ClientAuth::Basic(client.id.clone(), client.secret.clone().unwrap()),
                &[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", &token),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("audience", audience),
                ],
            )
            .await
        }
    };
    let ok = exchange("orders-api", subject.clone(), gw.clone()).await;
    let body = ok.ok().clone();
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(body["token_type"], "Bearer");
    let jwt = body["access_token"].as_str().unwrap();
    let (header, claims) = oidc.verify_jwt(jwt).await;
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["client_id"], "shop");
    assert_eq!(claims["act"]["sub"], "gw");
    assert_eq!(claims["scope"], "openid profile");
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    for claim in ["iss", "sub", "jti", "exp", "iat", "auth_time", "acr", "sid"] {
        assert!(
            !claims[claim].is_null(),
            "RFC 9068 claim {claim} missing: {claims}"
        );
    }
    let intro = introspect(&oidc, &gw, &subject).await;
    assert!(
        claims["exp"].as_i64().unwrap() <= intro["exp"].as_i64().unwrap(),
        "JWT outlives its opaque token"
    );
    if let Some(v) = pyjwt_verify(&oidc, jwt, "at+jwt", "orders-api").await {
        assert_eq!(v["claims"]["sub"], claims["sub"]);
    }

    exchange("payments-api", subject.clone(), gw.clone())
        .await
        .assert_error(400, "invalid_target");
    // A client registered without exchange audiences may not use the grant.
    exchange("orders-api", subject.clone(), svc.clone())
        .await
        .assert_error(400, "unauthorized_client");
    // An inactive subject token.
    exchange("orders-api", "pct_at_unknown".into(), gw.clone())
        .await
        .assert_error(400, "invalid_grant");
    let (status, _, _) = post(&oidc, "/revoke", &app, &[("token", &subject)], None).await;
    assert_eq!(status, 200);
    exchange("orders-api", subject, gw)
        .await
        .assert_error(400, "invalid_grant");
}

/// The PostgreSQL pool skips its ping for connections used in the last
/// 500 ms but pings idle ones, so every connection the server holds dying
/// at once (a database restart or failover) costs no request: after a
/// pause, the very first token request and introspection succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_while_idle_cost_no_request() {
    let Some(Backend::Postgres(admin)) = Backend::postgres() else {
        return;
    };
    let oidc = Oidc::start(Backend::Postgres(admin.clone())).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let issue = || {
        post(
            &oidc,
            "/token",
            &svc,
            &[("grant_type", "client_credentials"), ("scope", "api")],
            None,
        )
    };
    // Warm the pool: several connections in use, then back in the pool.
    for _ in 0..8 {
        assert_eq!(issue().await.0, 200);
    }
    let killed = oidc.env.terminate_backends(&admin, "true").await;
    assert!(killed > 0, "the server held no connection to kill");
    tokio::time::sleep(Duration::from_millis(800)).await;

    let (status, _, body) = issue().await;
    assert_eq!(status, 200, "first token request after the kill: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(introspect(&oidc, &gw, token).await["active"], true);
}

/// Two real server processes share one PostgreSQL database. The
/// introspection cache TTL is set to a minute, so only LISTEN/NOTIFY can make
/// replica B notice a revocation made through replica A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_other_replica_through_notify() {
    let Some(pg) = Backend::postgres() else {
        return;
    };
    let ttl = [("PORTCULLIS_TOKENS_INTROSPECTION_CACHE_TTL", "60s")];
    let a = Oidc::start_with(pg, &ttl).await;
    let gw = gateway(&a).await;
    let svc = service(&a).await;
    // Replica B: same database and keys, its own port.
    let b = a.replica(&ttl).await;
    let introspect_b = |token: String| {
        let b = &b;
        let gw = gw.clone();
        async move {
            let resp = reqwest::Client::new()
                .post(b.url("/introspect"))
                .basic_auth(&gw.id, gw.secret.as_deref())
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let token = a.client_credentials(&svc, None).await.str("access_token");
    // B must have its listener up (cache enabled) and the token cached active.
    let cached = eventually(Duration::from_secs(10), || async {
        introspect_b(token.clone()).await["active"] == true
    })
    .await;
    assert!(cached);
    assert_eq!(introspect_b(token.clone()).await["active"], true);

    let (status, _, _) = post(&a, "/revoke", &svc, &[("token", &token)], None).await;
    assert_eq!(status, 200);
    assert_eq!(
        introspect_raw(&a, &gw, &token).await,
        INACTIVE,
        "same replica: at once"
    );
    // Far below the 60 s cache TTL: only the NOTIFY can have cleared B's cache.
    let seen = eventually(Duration::from_secs(10), || async {
        introspect_b(token.clone()).await == serde_json::json!({"active": false})
    })
    .await;
    assert!(seen, "replica B still says active for a revoked token");
    b.stop().await;
}

/// Client-credentials tokens are written in batches (group commit, several
/// writers on PostgreSQL): many issued at once must each come back as a
/// distinct token that is stored with its own record, client and scope.
async fn concurrent_client_credentials_tokens_are_each_stored(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let other = oidc
        .client(
            "other",
            &["--grant", "client_credentials", "--scope", "read"],
        )
        .await;

    let rows_before = oidc
        .metric("portcullis_token_batch_rows_total")
        .await
        .unwrap();
    let batches_before = oidc.metric("portcullis_token_batches_total").await.unwrap();
    const N: usize = 120;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let http = oidc.http.clone();
        let url = oidc.url("/token");
        // Two clients with different scopes, interleaved, so a batch that
        // mixed up rows would show.
        let (id, secret, scope) = if i % 3 == 0 {
            (other.id.clone(), other.secret.clone(), "read")
        } else {
            (svc.id.clone(), svc.secret.clone(), "api write")
        };
        set.spawn(async move {
            let resp = http
                .post(url)
                .basic_auth(&id, secret.as_deref())
                .form(&[("grant_type", "client_credentials"), ("scope", scope)])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            (
                id,
                scope,
                body["access_token"].as_str().unwrap().to_string(),
            )
        });
    }
    let mut issued = Vec::new();
    while let Some(done) = set.join_next().await {
        issued.push(done.unwrap());
    }
    assert_eq!(issued.len(), N);
    let distinct: std::collections::HashSet<_> = issued.iter().map(|(_, _, t)| t).collect();
    assert_eq!(distinct.len(), N, "every request gets its own token");
    // The group-commit counters account for every token, in 1..=N commits
    // (plus those of tokens stored ahead, `tokens.preissue`): each is
    // either written for its request or taken from those stored ahead. A
    // refill may still be committing, so the books balance eventually.
    let balanced = eventually(Duration::from_secs(10), || async {
        let rows = oidc
            .metric("portcullis_token_batch_rows_total")
            .await
            .unwrap()
            - rows_before;
        let hits = oidc
            .metric("portcullis_token_preissue_hits_total")
            .await
            .unwrap();
        let preissued = oidc
            .metric("portcullis_token_preissued_total")
            .await
            .unwrap();
        rows == N as f64 - hits + preissued
    })
    .await;
    assert!(balanced, "stored rows do not add up to the tokens issued");
    let rows = oidc
        .metric("portcullis_token_batch_rows_total")
        .await
        .unwrap()
        - rows_before;
    let batches = oidc.metric("portcullis_token_batches_total").await.unwrap() - batches_before;
    assert!(
        (1.0..=rows).contains(&batches),
        "{batches} batches of {rows} rows"
    );

    let mut jtis = std::collections::HashSet::new();
    for (client_id, scope, token) in &issued {
        let claims = introspect(&oidc, &gw, token).await;
        assert_eq!(claims["active"], true, "{claims}");
        assert_eq!(claims["client_id"], client_id.as_str());
        assert_eq!(claims["scope"], *scope);
        let jti = claims["jti"].as_str().unwrap().to_string();
        assert!(
            jti.len() == 32 && jti.bytes().all(|b| b.is_ascii_hexdigit()),
            "{jti}"
        );
        jtis.insert(jti);
    }
    assert_eq!(jtis.len(), N, "every stored token has its own id");

    // Each is revocable on its own: revoking one leaves the next active.
    let (_, _, first) = issued.iter().find(|(c, _, _)| c == "svc").unwrap();
    let (status, _, _) = post(&oidc, "/revoke", &svc, &[("token", first)], None).await;
    assert_eq!(status, 200);
    assert_eq!(introspect_raw(&oidc, &gw, first).await, INACTIVE);
    let (_, _, second) = issued.iter().filter(|(c, _, _)| c == "svc").nth(1).unwrap();
    assert_eq!(introspect(&oidc, &gw, second).await["active"], true);
}

/// Issuing client-credentials tokens while revoking others: on SQLite the
/// two go through different connections (the token writer's own and the
/// pool's writer), serialised by SQLite's write lock with a busy timeout;
/// neither may fail for it, and each ends in the state it asked for.
async fn issuance_and_revocation_interleave(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    const REVOKED: usize = 40;
    let mut victims = Vec::new();
    for _ in 0..REVOKED {
        let (status, _, body) = post(
            &oidc,
            "/token",
            &svc,
            &[("grant_type", "client_credentials"), ("scope", "api")],
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        victims.push(body["access_token"].as_str().unwrap().to_string());
    }

    let mut set = tokio::task::JoinSet::new();
    for i in 0..3 * REVOKED {
        let req = oidc
            .http
            .post(oidc.url(if i % 3 == 0 { "/revoke" } else { "/token" }))
            .basic_auth(&svc.id, svc.secret.as_deref());
        let req = if i % 3 == 0 {
            req.form(&[("token", victims[i / 3].as_str())])
        } else {
            req.form(&[("grant_type", "client_credentials"), ("scope", "api")])
        };
        set.spawn(async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        });
    }
    let mut issued = Vec::new();
    while let Some(done) = set.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 200, "{body}");
        if !body.is_empty() {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            issued.push(body["access_token"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(issued.len(), 2 * REVOKED);
    for token in &victims {
        assert_eq!(introspect_raw(&oidc, &gw, token).await, INACTIVE);
    }
    for token in &issued {
        assert_eq!(introspect(&oidc, &gw, token).await["active"], true);
    }
}

/// The SQLite token writer's own connection
/// (`store::tokens::DirectTokenWriter`) keeps the store's rules: a batch is
/// one transaction (a row that breaks a constraint takes the others down
/// with it), foreign keys hold, a second row with the same hash is a
/// conflict, and once the store is closed it refuses as the pools do.
#[tokio::test]
async fn sqlite_token_writer_batches_are_all_or_nothing() {
    use portcullis::store::tokens::{DirectTokenWriter, find_access};
    use portcullis::store::{PoolSettings, Store, StoreError};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display());
    let store = Store::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let clock = portcullis::clock::ManualClock::new(1_800_000_000_000);
    portcullis::oauth::clients::register(
        &store,
        &clock,
        &portcullis::audit::AuditContext::system("test"),
        portcullis::oauth::clients::NewClient {
            name: "svc".into(),
            id: Some("svc".into()),
            grant_types: vec!["client_credentials".into()],
            scope: Some("api".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let record = |client: &str| standalone_token(client, 1_800_000_000, 1_800_000_600);
    let mut writer = DirectTokenWriter::open(&store)
        .unwrap()
        .expect("a SQLite file gets its own token writer");

    let (good, orphan) = (record("svc"), record("no-such-client"));
    let err = writer
        .insert_batch(&[(&good, "hash-1"), (&orphan, "hash-2")])
        .unwrap_err();
    assert!(
        !err.is_unavailable(),
        "a broken row is not an outage: {err}"
    );
    assert!(
        find_access(&store, "hash-1").await.unwrap().is_none(),
        "the good row went down with the orphan"
    );
    assert!(find_access(&store, "hash-2").await.unwrap().is_none());

    writer.insert_batch(&[(&good, "hash-1")]).unwrap();
    let stored = find_access(&store, "hash-1").await.unwrap().unwrap();
    assert_eq!(
        (stored.id.as_str(), stored.client_id.as_str()),
        (good.id.as_str(), "svc")
    );
    let twin = record("svc");
    assert!(
        matches!(
            writer.insert_batch(&[(&twin, "hash-1")]),
            Err(StoreError::Conflict(_))
        ),
        "a second row with the same hash"
    );

    store.close().await;
    let err = writer
        .insert_batch(&[(&record("svc"), "hash-3")])
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");

    // An in-memory database has no file to open twice: its pools write.
    let memory = Store::connect("sqlite::memory:", &PoolSettings::default())
        .await
        .unwrap();
    assert!(DirectTokenWriter::open(&memory).unwrap().is_none());
}

/// On SQLite the write-ahead log is copied into the database file by a
/// background task, long before the writer's own checkpoint threshold
/// (`wal_autocheckpoint` in `store::SQLITE_CONNECTION_SETUP`) would: tokens just issued reach the
/// main file, which an `immutable` connection reads without the log.
#[tokio::test]
async fn sqlite_log_is_checkpointed_in_the_background() {
    let oidc = Oidc::start(Backend::Sqlite).await;
    let svc = service(&oidc).await;
    const N: usize = 20;
    let mut hashes = Vec::new();
    for _ in 0..N {
        let (status, _, body) = post(
            &oidc,
            "/token",
            &svc,
            &[("grant_type", "client_credentials"), ("scope", "api")],
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let token = body["access_token"].as_str().unwrap();
        hashes.push(hex::encode(Sha256::digest(token.as_bytes())));
    }
    let main_file = format!(
        "sqlite://{}/data/portcullis.db?immutable=true",
        oidc.env.dir.path().display()
    );
    let in_main_file = || {
        let url = main_file.clone();
        let hashes = hashes.clone();
        async move {
            // A new connection each time: an immutable one caches freely.
            let pool = raw_pool(&url).await;
            let mut found = 0;
            for h in &hashes {
                // An error too (no table yet) means: not in the main file.
                let row: Result<Option<(String,)>, _> =
                    sqlx::query_as("SELECT id FROM access_tokens WHERE token_hash = ?")
                        .bind(h)
                        .fetch_optional(&pool)
                        .await;
                found += usize::from(matches!(row, Ok(Some(_))));
            }
            pool.close().await;
            found == N
        }
    };
    assert!(
        eventually(Duration::from_secs(20), in_main_file).await,
        "issued tokens never reached the database file"
    );
}

#[test]
fn token_hashes_and_request_ids_have_their_standard_form() {
    // FIPS 180-2 test vector, so the hex encoding is checked independently.
    assert_eq!(
        portcullis::crypto::sha256_hex("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let a = portcullis::crypto::request_id();
    let b = portcullis::crypto::request_id();
    assert_ne!(a, b);
    let parsed = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
    assert_eq!(parsed.to_string(), a, "lower-case hyphenated form");
}

#[test]
fn access_token_ids_sort_by_creation_time_and_differ() {
    use portcullis::crypto::time_ordered_id;
    let earlier = time_ordered_id(1_700_000_000_000);
    let later = time_ordered_id(1_700_000_000_001);
    let same_ms = time_ordered_id(1_700_000_000_001);
    assert_eq!(earlier.len(), 32);
    assert!(earlier.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(earlier < later, "{earlier} < {later}");
    assert_ne!(later, same_ms, "80 random bits follow the time");
    assert_eq!(&later[..12], &same_ms[..12]);
    assert_eq!(&earlier[..12], "018bcfe56800");
}

/// A client-credentials access-token row (no user, session or family) of
/// `client`, issued and expiring at the given unix seconds, with a
/// time-ordered id of its issuance, as the server makes them.
pub fn standalone_token(
    client: &str,
    issued_at: i64,
    expires_at: i64,
) -> portcullis::tokens::AccessTokenRecord {
    portcullis::tokens::AccessTokenRecord {
        id: portcullis::crypto::time_ordered_id(issued_at * 1000),
        client_id: client.into(),
        user_id: None,
        session_id: None,
        family_id: None,
        scope: "api".into(),
        audience: None,
        auth_time: None,
        amr: None,
        acr: None,
        issued_at,
        expires_at,
        revoked_at: None,
        family_revoked_at: None,
        session_ended_at: None,
        session_created_at: None,
        session_last_seen_at: None,
    }
}

/// The pooled token writer (PostgreSQL: one JSON array per batch) stores
/// every field as given, text with quotes and non-ASCII included; a batch
/// is one statement, so a row that breaks a constraint takes the others
/// down with it; a second row with the same hash is a conflict.
async fn pooled_token_batches_store_every_field_and_are_all_or_nothing(backend: Backend) {
    use portcullis::store::StoreError;
    use portcullis::store::tokens::{find_access, insert_access_batch};

    let oidc = Oidc::start(backend).await;
    service(&oidc).await;
    let store = oidc.env.store().await;
    let now = unix_now();
    let full = portcullis::tokens::AccessTokenRecord {
        scope: "api read".into(),
        audience: Some("payments \"eu\" ünï".into()),
        auth_time: Some(now - 30),
        amr: Some("pwd otp".into()),
        acr: Some("urn:mace:incommon:iap:silver".into()),
        ..standalone_token("svc", now, now + 600)
    };
    let plain = standalone_token("svc", now, now + 60);
    insert_access_batch(&store, &[(&full, "hash-full"), (&plain, "hash-plain")])
        .await
        .unwrap();
    for (want, hash) in [(&full, "hash-full"), (&plain, "hash-plain")] {
        let got = find_access(&store, hash).await.unwrap().unwrap();
        assert_eq!(
            (&got.id, &got.client_id, &got.user_id, &got.session_id),
            (&want.id, &want.client_id, &want.user_id, &want.session_id)
        );
        assert_eq!(
            (&got.family_id, &got.scope, &got.audience, got.auth_time),
            (&want.family_id, &want.scope, &want.audience, want.auth_time)
        );
        assert_eq!(
            (
                &got.amr,
                &got.acr,
                got.issued_at,
                got.expires_at,
                got.revoked_at
            ),
            (&want.amr, &want.acr, want.issued_at, want.expires_at, None)
        );
    }

    let (good, orphan) = (
        standalone_token("svc", now, now + 600),
        standalone_token("no-such-client", now, now + 600),
    );
    let err = insert_access_batch(&store, &[(&good, "hash-good"), (&orphan, "hash-orphan")])
        .await
        .unwrap_err();
    assert!(
        !err.is_unavailable(),
        "a broken row is not an outage: {err}"
    );
    assert!(
        find_access(&store, "hash-good").await.unwrap().is_none(),
        "the good row went down with the orphan"
    );
    let twin = standalone_token("svc", now, now + 600);
    assert!(
        matches!(
            insert_access_batch(&store, &[(&twin, "hash-full")]).await,
            Err(StoreError::Conflict(_))
        ),
        "a second row with the same hash"
    );
    store.close().await;
}
