//! Black-box attack tests against the authorization and token endpoints
//! (issue 3), each on SQLite and PostgreSQL. Every check asserts the exact
//! status and error code of the contract; checks that share a setup share a
//! test to keep the number of server starts down.

use super::flow::{AuthRequest, Browser, ClientAuth, Oidc, PASSWORD, Page, Pkce, query};
use crate::support::Backend;

backend_tests!(
    code_flow_happy_path,
    redirect_uri_is_matched_exactly_and_never_an_open_redirect,
    authorize_errors_redirect_with_error_state_and_iss,
    code_redemption_attacks,
    code_replay_revokes_the_tokens_of_the_first_use,
    refresh_token_attacks,
    token_endpoint_rejects_bad_clients_grants_and_scopes,
    login_form_attacks,
    consent_is_skipped_for_first_party_and_remembered,
);

/// A 400 HTML error page: no redirect, and nothing in the headers or body
/// that points to the attacker's site.
#[track_caller]
fn assert_error_page(page: &Page, what: &str) {
    assert_eq!(
        page.status, 400,
        "{what}: expected a 400 error page, got {} {:?}\n{}",
        page.status, page.headers, page.body
    );
    assert!(
        page.location().is_none(),
        "{what}: error page must not redirect: {:?}",
        page.headers
    );
    for (name, value) in &page.headers {
        let v = value.to_str().unwrap_or("");
        assert!(
            !v.contains("evil.example"),
            "{what}: header {name} points to the attacker: {v}"
        );
    }
    assert!(
        !page.body.contains("evil.example"),
        "{what}: error page body mentions the attacker's URI:\n{}",
        page.body
    );
    let ct = page
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/html"), "{what}: content-type {ct}");
}

/// A 303 back to `redirect_uri` carrying `error`, the request's `state`
/// and `iss`, and no code.
#[track_caller]
fn assert_error_redirect(op: &Oidc, page: &Page, req: &AuthRequest, error: &str) {
    let location = page.location().unwrap_or_else(|| {
        panic!(
            "expected a redirect with error={error}, got {}:\n{}",
            page.status, page.body
        )
    });
    assert_eq!(page.status, 303, "error redirect status for {error}");
    let url = url::Url::parse(location).unwrap();
    let redirect_uri = req.get("redirect_uri");
    assert!(
        location.starts_with(&format!("{redirect_uri}?")),
        "error goes to the registered redirect_uri {redirect_uri}: {location}"
    );
    let q = query(&url);
    assert_eq!(
        q.get("error").map(String::as_str),
        Some(error),
        "{location}"
    );
    assert_eq!(
        q.get("state").map(String::as_str),
        Some(req.state()),
        "{location}"
    );
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(op.issuer.as_str()),
        "{location}"
    );
    assert!(!q.contains_key("code"), "no code with an error: {location}");
}

/// 401 with `WWW-Authenticate: Bearer …error="invalid_token"`.
#[track_caller]
fn assert_token_dead(resp: &super::flow::JsonResponse, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.text);
    let www = resp.header("www-authenticate");
    assert!(
        www.starts_with("Bearer") && www.contains("error=\"invalid_token\""),
        "{what}: WWW-Authenticate {www:?}"
    );
}

async fn code_flow_happy_path(backend: Backend) {
    let op = Oidc::start(backend).await;
    op.user("alice").await;
    let client = op
        .code_client("shop", "openid profile email", &["--first-party"])
        .await;

    let (status, disco) = op
        .server
        .get_json(&op.url("/.well-known/openid-configuration"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(disco["issuer"], op.issuer.as_str());
    assert_eq!(
        disco["authorization_response_iss_parameter_supported"],
        true
    );

    let req = AuthRequest::new(&client, "openid profile");
    let done = op
        .browser()
        .authorize(&req, Some(("alice", PASSWORD)))
        .await;
    assert!(
        done.location
            .starts_with(&format!("{}?", client.redirect_uri)),
        "{}",
        done.location
    );
    assert_eq!(done.pages, ["/login"], "first-party: login, no consent");
    assert_eq!(done.param("state"), Some(req.state()), "state echoed");
    assert_eq!(done.param("iss"), Some(op.issuer.as_str()), "iss = issuer");

    let tokens = op
        .exchange_code(&client, &done.code(), &req.pkce.verifier)
        .await;
    let body = tokens.ok().clone();
    assert!(
        tokens.header("cache-control").contains("no-store"),
        "{:?}",
        tokens.headers
    );
    assert_eq!(body["token_type"], "Bearer");
    let at = tokens.str("access_token");
    let rt = tokens.str("refresh_token");
    assert!(at.starts_with("pct_at_"), "{at}");
    assert!(rt.starts_with("pct_rt_"), "{rt}");
    let expires_in = body["expires_in"].as_i64().unwrap_or(0);
    assert!((1..=600).contains(&expires_in), "expires_in {expires_in}");
    assert_eq!(body["scope"], "openid profile");

    let (header, claims) = op.verify_jwt(&tokens.str("id_token")).await;
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(header["alg"], "RS256", "RS256 is the default id_token alg");
    assert_eq!(claims["iss"], op.issuer.as_str());
    let aud_ok = claims["aud"] == "shop"
        || claims["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "shop"));
    assert!(aud_ok, "aud {}", claims["aud"]);
    assert_eq!(claims["nonce"], req.get("nonce"));
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    for c in ["sub", "exp", "iat", "auth_time", "sid"] {
        assert!(!claims[c].is_null(), "claim {c} in {claims}");
    }
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());

    let info = op.userinfo(&at).await;
    assert_eq!(info.ok()["sub"], claims["sub"]);
    assert_eq!(info.json["preferred_username"], "alice");

    // Rotation: a new refresh token and a new id_token.
    let refreshed = op.refresh(&client, &rt).await;
    refreshed.ok();
    assert_ne!(refreshed.str("refresh_token"), rt);
    assert!(refreshed.json["id_token"].is_string(), "{}", refreshed.text);
    assert!(
        refreshed.header("cache-control").contains("no-store"),
        "{:?}",
        refreshed.headers
    );
}

async fn redirect_uri_is_matched_exactly_and_never_an_open_redirect(backend: Backend) {
    let op = Oidc::start(backend).await;
    let client = op.code_client("shop", "openid", &[]).await;
    let browser = op.browser();

    for (what, uri) in [
        ("unregistered", "https://evil.example/cb"),
        ("extra path", "https://shop.example/cb/extra"),
        ("trailing slash", "https://shop.example/cb/"),
        (
            "extra query",
            "https://shop.example/cb?next=https://evil.example",
        ),
        ("other scheme", "http://shop.example/cb"),
        ("userinfo trick", "https://shop.example@evil.example/cb"),
    ] {
        let req = AuthRequest::new(&client, "openid").set("redirect_uri", uri);
        assert_error_page(&browser.get(&req.url(&op.issuer)).await, what);
    }
    let req = AuthRequest::new(&client, "openid").remove("redirect_uri");
    assert_error_page(
        &browser.get(&req.url(&op.issuer)).await,
        "missing redirect_uri",
    );

    // Unknown client: its redirect_uri cannot be trusted.
    let req = AuthRequest::new(&client, "openid")
        .set("client_id", "nobody")
        .set("redirect_uri", "https://evil.example");
    assert_error_page(&browser.get(&req.url(&op.issuer)).await, "unknown client");

    // Another error on top of a bad redirect_uri must not redirect either.
    let req = AuthRequest::new(&client, "openid")
        .set("redirect_uri", "https://evil.example")
        .set("response_type", "token");
    assert_error_page(
        &browser.get(&req.url(&op.issuer)).await,
        "response_type=token with evil redirect_uri",
    );

    // The form-POST variant of /authorize behaves the same.
    let req = AuthRequest::new(&client, "openid").set("redirect_uri", "https://evil.example");
    let page = browser.post_form("/authorize", &pairs(&req)).await;
    assert_error_page(&page, "POST /authorize with evil redirect_uri");
}

fn pairs(req: &AuthRequest) -> Vec<(&str, &str)> {
    req.params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

async fn authorize_errors_redirect_with_error_state_and_iss(backend: Backend) {
    let op = Oidc::start(backend).await;
    let public = op
        .code_client("app", "openid", &["--public", "--first-party"])
        .await;
    let confidential = op
        .code_client("shop", "openid profile", &["--first-party"])
        .await;
    let browser = op.browser();
    let get = |req: AuthRequest| {
        let browser = &browser;
        let url = req.url(&op.issuer);
        async move { (browser.get(&url).await, req) }
    };

    // PKCE is mandatory for a public client.
    let (page, req) = get(AuthRequest::new(&public, "openid")
        .remove("code_challenge")
        .remove("code_challenge_method"))
    .await;
    assert_error_redirect(&op, &page, &req, "invalid_request");

    // `plain` is refused for every client.
    for client in [&public, &confidential] {
        let pkce = Pkce::new();
        let (page, req) = get(AuthRequest::new(client, "openid")
            .set("code_challenge", &pkce.verifier)
            .set("code_challenge_method", "plain"))
        .await;
        assert_error_redirect(&op, &page, &req, "invalid_request");
    }

    // A scope the client is not registered for.
    let (page, req) = get(AuthRequest::new(&confidential, "openid email")).await;
    assert_error_redirect(&op, &page, &req, "invalid_scope");

    // Implicit flow is not supported.
    let (page, req) =
        get(AuthRequest::new(&confidential, "openid").set("response_type", "token")).await;
    assert_error_redirect(&op, &page, &req, "unsupported_response_type");

    // prompt=none without a session.
    let (page, req) = get(AuthRequest::new(&confidential, "openid").set("prompt", "none")).await;
    assert_error_redirect(&op, &page, &req, "login_required");

    // Sanity: a valid request without a session goes to the login page.
    let (page, _) = get(AuthRequest::new(&confidential, "openid")).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let loc = page.location().unwrap_or("");
    let loc = url::Url::parse(&op.issuer).unwrap().join(loc).unwrap();
    assert_eq!(loc.path(), "/login", "{loc}");
    assert!(query(&loc).contains_key("request"), "{loc}");
}

async fn code_redemption_attacks(backend: Backend) {
    let op = Oidc::start(backend).await;
    op.user("alice").await;
    let a = op.code_client("shop", "openid", &["--first-party"]).await;
    let b = op.code_client("other", "openid", &["--first-party"]).await;
    let public = op
        .code_client("app", "openid", &["--public", "--first-party"])
        .await;
    let browser = op.browser();
    let login = Some(("alice", PASSWORD));
    let code_for = |client| {
        let browser = &browser;
        async move {
            let req = AuthRequest::new(client, "openid");
            let done = browser.authorize(&req, login).await;
            (done.code(), req.pkce.verifier)
        }
    };

    // Wrong code_verifier.
    let (code, _) = code_for(&a).await;
    op.exchange_code(&a, &code, &Pkce::new().verifier)
        .await
        .assert_error(400, "invalid_grant");
    // Wrong verifier, public client.
    let (code, _) = code_for(&public).await;
    op.exchange_code(&public, &code, &Pkce::new().verifier)
        .await
        .assert_error(400, "invalid_grant");
    // Missing code_verifier.
    let (code, _) = code_for(&a).await;
    op.token(
        &a.auth(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &a.redirect_uri),
        ],
    )
    .await
    .assert_error(400, "invalid_grant");
    // redirect_uri differing from the authorization request.
    let (code, verifier) = code_for(&a).await;
    op.token(
        &a.auth(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://shop.example/other"),
            ("code_verifier", &verifier),
        ],
    )
    .await
    .assert_error(400, "invalid_grant");
    // A's code redeemed by B (authenticated as itself, with the right
    // verifier and A's redirect_uri).
    let (code, verifier) = code_for(&a).await;
    op.token(
        &b.auth(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &a.redirect_uri),
            ("code_verifier", &verifier),
        ],
    )
    .await
    .assert_error(400, "invalid_grant");
    // ... and with B's own redirect_uri.
    let (code, verifier) = code_for(&a).await;
    op.exchange_code(&b, &code, &verifier)
        .await
        .assert_error(400, "invalid_grant");
    // An unknown code.
    op.exchange_code(&a, "not-a-code", &Pkce::new().verifier)
        .await
        .assert_error(400, "invalid_grant");
    // Sanity: the same steps done right succeed.
    let (code, verifier) = code_for(&a).await;
    op.exchange_code(&a, &code, &verifier).await.ok();
}

async fn code_replay_revokes_the_tokens_of_the_first_use(backend: Backend) {
    let op = Oidc::start(backend).await;
    op.user("alice").await;
    let client = op.code_client("shop", "openid", &["--first-party"]).await;
    let req = AuthRequest::new(&client, "openid");
    let code = op
        .browser()
        .authorize(&req, Some(("alice", PASSWORD)))
        .await
        .code();

    let first = op.exchange_code(&client, &code, &req.pkce.verifier).await;
    first.ok();
    let at = first.str("access_token");
    let rt = first.str("refresh_token");
    assert_eq!(op.userinfo(&at).await.status, 200);

    op.exchange_code(&client, &code, &req.pkce.verifier)
        .await
        .assert_error(400, "invalid_grant");
    op.refresh(&client, &rt)
        .await
        .assert_error(400, "invalid_grant");
    assert_token_dead(&op.userinfo(&at).await, "access token of a replayed code");
}

async fn refresh_token_attacks(backend: Backend) {
    let op = Oidc::start(backend).await;
    op.user("alice").await;
    let a = op.code_client("shop", "openid", &["--first-party"]).await;
    let b = op.code_client("other", "openid", &["--first-party"]).await;

    // A's refresh token presented by B.
    let tokens = op.login_and_redeem(&a, "alice", "openid").await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    op.refresh(&b, rt).await.assert_error(400, "invalid_grant");

    // Reuse of a rotated refresh token revokes the whole family.
    let tokens = op.login_and_redeem(&a, "alice", "openid").await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let at1 = tokens["access_token"].as_str().unwrap().to_string();
    let second = op.refresh(&a, &rt1).await;
    second.ok();
    let rt2 = second.str("refresh_token");
    let at2 = second.str("access_token");
    assert_ne!(rt1, rt2, "refresh tokens rotate");
    assert_eq!(op.userinfo(&at2).await.status, 200);

    op.refresh(&a, &rt1)
        .await
        .assert_error(400, "invalid_grant");
    op.refresh(&a, &rt2)
        .await
        .assert_error(400, "invalid_grant");
    assert_token_dead(
        &op.userinfo(&at2).await,
        "newest access token of a revoked family",
    );
    assert_token_dead(
        &op.userinfo(&at1).await,
        "first access token of a revoked family",
    );
}

async fn token_endpoint_rejects_bad_clients_grants_and_scopes(backend: Backend) {
    let op = Oidc::start(backend).await;
    let svc = op
        .client(
            "svc",
            &["--grant", "client_credentials", "--scope", "payments:read"],
        )
        .await;
    let secret = svc.secret.clone().unwrap();
    let shop = op.code_client("shop", "openid", &[]).await;

    // Sanity: the right secret, either way, within the registered scope.
    let ok = op.client_credentials(&svc, Some("payments:read")).await;
    assert_eq!(ok.ok()["token_type"], "Bearer");
    assert!(ok.header("cache-control").contains("no-store"));
    let form = [("grant_type", "client_credentials")];
    op.token(&ClientAuth::Post("svc".into(), secret.clone()), &form)
        .await
        .ok();

    // Scope beyond the registered ones.
    op.client_credentials(&svc, Some("payments:read payments:write"))
        .await
        .assert_error(400, "invalid_scope");

    // Bad client authentication: always 401 invalid_client + Basic challenge.
    for (what, auth) in [
        (
            "wrong secret, basic",
            ClientAuth::Basic("svc".into(), "pcs_wrong".into()),
        ),
        (
            "wrong secret, post",
            ClientAuth::Post("svc".into(), "pcs_wrong".into()),
        ),
        ("missing secret", ClientAuth::None("svc".into())),
        (
            "unknown client",
            ClientAuth::Basic("nobody".into(), secret.clone()),
        ),
        (
            "another client's secret",
            ClientAuth::Basic("shop".into(), secret.clone()),
        ),
    ] {
        let resp = op.token(&auth, &form).await;
        resp.assert_error(401, "invalid_client");
        let www = resp.header("www-authenticate");
        assert!(
            www.starts_with("Basic") && www.contains("realm=\"portcullis\""),
            "{what}: WWW-Authenticate {www:?}"
        );
    }

    // Unknown grant types.
    for grant in ["password", "implicit", "foo"] {
        op.token(
            &svc.auth(),
            &[
                ("grant_type", grant),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await
        .assert_error(400, "unsupported_grant_type");
    }

    // Grants the client is not registered for.
    op.client_credentials(&shop, None)
        .await
        .assert_error(400, "unauthorized_client");
    op.token(
        &svc.auth(),
        &[
            ("grant_type", "authorization_code"),
            ("code", "whatever"),
            ("redirect_uri", "https://svc.example/cb"),
            ("code_verifier", &Pkce::new().verifier),
        ],
    )
    .await
    .assert_error(400, "unauthorized_client");
}

/// GETs the login page `url` in `browser` and returns (csrf_token, request).
async fn login_form(browser: &Browser, url: &str) -> (String, String) {
    let page = browser.get(url).await;
    assert_eq!(page.status, 200, "login page: {}", page.body);
    let hidden = page.hidden_inputs();
    (
        hidden.get("csrf_token").cloned().expect("csrf_token input"),
        hidden.get("request").cloned().expect("request input"),
    )
}

async fn login_form_attacks(backend: Backend) {
    let op = Oidc::start(backend).await;
    op.user("alice").await;
    op.user("mallory").await;
    op.env
        .cli(&["user", "lock", "--username", "mallory", "--reason", "test"])
        .await
        .assert_ok();
    let client = op.code_client("shop", "openid", &["--first-party"]).await;
    let browser = op.browser();

    let req = AuthRequest::new(&client, "openid");
    let start = browser.get(&req.url(&op.issuer)).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let login_url = url::Url::parse(&op.issuer)
        .unwrap()
        .join(start.location().unwrap())
        .unwrap()
        .to_string();
    let first = browser.get(&login_url).await;
    assert!(
        first.set_cookies().contains("pc_csrf="),
        "login page sets pc_csrf: {}",
        first.set_cookies()
    );

    // CSRF token missing, wrong, or without its cookie: 400, no login.
    let (csrf, request) = login_form(&browser, &login_url).await;
    let no_csrf = [
        ("username", "alice"),
        ("password", PASSWORD),
        ("request", request.as_str()),
    ];
    let wrong_csrf = [
        ("username", "alice"),
        ("password", PASSWORD),
        ("csrf_token", "forged"),
        ("request", request.as_str()),
    ];
    let good = [
        ("username", "alice"),
        ("password", PASSWORD),
        ("csrf_token", csrf.as_str()),
        ("request", request.as_str()),
    ];
    let cookieless = op.browser();
    for (what, page) in [
        (
            "missing csrf_token",
            browser.post_form("/login", &no_csrf).await,
        ),
        (
            "wrong csrf_token",
            browser.post_form("/login", &wrong_csrf).await,
        ),
        (
            "no pc_csrf cookie",
            cookieless.post_form("/login", &good).await,
        ),
    ] {
        assert_eq!(page.status, 400, "{what}: {}", page.body);
        assert!(
            page.body.contains("invalid or missing CSRF token"),
            "{what}: {}",
            page.body
        );
        assert!(
            !page.set_cookies().contains("pc_session"),
            "{what}: no session: {}",
            page.set_cookies()
        );
        assert!(page.location().is_none(), "{what}: no redirect");
    }

    // Unknown user, wrong password, locked user: one message for all.
    for (what, user, pass) in [
        ("unknown user", "nobody", PASSWORD),
        ("wrong password", "alice", "wrong password, long enough"),
        ("locked user", "mallory", PASSWORD),
    ] {
        let (csrf, request) = login_form(&browser, &login_url).await;
        let page = browser
            .post_form(
                "/login",
                &[
                    ("username", user),
                    ("password", pass),
                    ("csrf_token", &csrf),
                    ("request", &request),
                ],
            )
            .await;
        assert_eq!(page.status, 401, "{what}: {}", page.body);
        assert!(
            page.body.contains("invalid username or password"),
            "{what}: {}",
            page.body
        );
        let lower = page.body.to_lowercase();
        for leak in [
            "locked",
            "unknown user",
            "no such user",
            "not found",
            "disabled",
        ] {
            assert!(!lower.contains(leak), "{what}: page reveals {leak:?}");
        }
        assert!(!page.set_cookies().contains("pc_session"), "{what}");
    }

    // The right password: session cookie, back to /authorize/resume.
    let (csrf, request) = login_form(&browser, &login_url).await;
    let page = browser
        .post_form(
            "/login",
            &[
                ("username", "alice"),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
                ("request", &request),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let loc = url::Url::parse(&op.issuer)
        .unwrap()
        .join(page.location().unwrap())
        .unwrap();
    assert_eq!(loc.path(), "/authorize/resume", "{loc}");
    assert_eq!(query(&loc).get("request"), Some(&request), "{loc}");
    let cookie = page
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("pc_session="))
        .unwrap_or_else(|| panic!("session cookie set: {}", page.set_cookies()))
        .to_lowercase();
    assert!(cookie.contains("httponly"), "{cookie}");
    assert!(cookie.contains("samesite=lax"), "{cookie}");
    let done = browser.follow(loc.as_str(), None, "allow").await;
    assert_eq!(done.param("state"), Some(req.state()));
    assert!(done.param("code").is_some(), "{}", done.location);
}

async fn consent_is_skipped_for_first_party_and_remembered(backend: Backend) {
    let op = Oidc::start(backend).await;
    op.user("alice").await;
    op.user("bob").await;
    let first = op.code_client("shop", "openid", &["--first-party"]).await;
    let third = op.code_client("news", "openid profile", &[]).await;
    let browser = op.browser();
    let alice = Some(("alice", PASSWORD));

    // First party: login, no consent.
    let done = browser
        .authorize(&AuthRequest::new(&first, "openid"), alice)
        .await;
    assert_eq!(done.pages, ["/login"]);
    assert!(done.param("code").is_some(), "{}", done.location);

    // Third party, same session: consent page; deny → access_denied.
    let req = AuthRequest::new(&third, "openid");
    let done = browser.follow(&req.url(&op.issuer), alice, "deny").await;
    assert_eq!(done.pages, ["/consent"], "{}", done.location);
    assert_eq!(
        done.param("error"),
        Some("access_denied"),
        "{}",
        done.location
    );
    assert_eq!(done.param("state"), Some(req.state()));
    assert_eq!(done.param("iss"), Some(op.issuer.as_str()));
    assert!(done.param("code").is_none());

    // A denial is not remembered: asked again; allow → code.
    let req = AuthRequest::new(&third, "openid");
    let done = browser.authorize(&req, alice).await;
    assert_eq!(done.pages, ["/consent"], "{}", done.location);
    assert_eq!(done.param("state"), Some(req.state()));
    op.exchange_code(&third, &done.code(), &req.pkce.verifier)
        .await
        .ok();

    // Remembered: straight back to the client.
    let req = AuthRequest::new(&third, "openid");
    let done = browser.authorize(&req, alice).await;
    assert!(
        done.pages.is_empty(),
        "consent remembered: {:?}",
        done.pages
    );
    assert_eq!(done.param("state"), Some(req.state()));
    assert_eq!(done.param("iss"), Some(op.issuer.as_str()));
    op.exchange_code(&third, &done.code(), &req.pkce.verifier)
        .await
        .ok();

    // More scopes than consented: asked again.
    let done = browser
        .authorize(&AuthRequest::new(&third, "openid profile"), alice)
        .await;
    assert_eq!(done.pages, ["/consent"], "new scope needs consent");

    // Consent is per user.
    let done = op
        .browser()
        .authorize(&AuthRequest::new(&third, "openid"), Some(("bob", PASSWORD)))
        .await;
    assert_eq!(done.pages, ["/login", "/consent"]);
}
