//! Staff members for admin API tests: a user with roles who enrolled an
//! authenticator app and signed in with it through a first-party client,
//! so the bearer token's session carries `amr` `["pwd", "otp"]`.
//!
//! Codes here come from the `totp-rs` crate for convenience; the tests that
//! prove TOTP itself use an independent implementation (pyotp).

use super::flow::{AuthRequest, Browser, Client, Oidc, PASSWORD};

pub struct StaffLogin {
    pub username: String,
    pub access_token: String,
    pub totp_secret: String,
    pub browser: Browser,
}

/// The TOTP code for `secret` at `offset_steps` steps from now.
pub fn totp_code(secret: &str, offset_steps: i64) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let now = crate::support::unix_now();
    totp.generate((now + 30 * offset_steps) as u64).to_string()
}

/// Signs `username` in (password only) and enrols an authenticator app;
/// returns the browser (with its session) and the TOTP secret.
pub async fn enrol_totp(oidc: &Oidc, username: &str) -> (Browser, String) {
    let browser = oidc.browser();
    let page = browser.get(&oidc.url("/login")).await;
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    let page = browser
        .post_form(
            "/login",
            &[
                ("username", username),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "password login: {}", page.body);
    let secret = start_totp(oidc, &browser).await;
    let code = totp_code(&secret, 0);
    let resp = browser
        .http
        .post(oidc.url("/account/mfa/totp/confirm"))
        .header("accept", "application/json")
        .header("x-csrf-token", &csrf)
        .form(&[("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "confirm: {}",
        resp.text().await.unwrap()
    );
    (browser, secret)
}

/// POST /account/mfa/totp (JSON) with the browser's session; the secret.
pub async fn start_totp(oidc: &Oidc, browser: &Browser) -> String {
    let csrf = csrf_of(oidc, browser).await;
    let resp = browser
        .http
        .post(oidc.url("/account/mfa/totp"))
        .header("accept", "application/json")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "start TOTP: {body}");
    body["secret"].as_str().unwrap().to_string()
}

/// The CSRF token the account pages expect from this browser.
pub async fn csrf_of(oidc: &Oidc, browser: &Browser) -> String {
    let body: serde_json::Value = browser
        .http
        .get(oidc.url("/account/mfa"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["csrf_token"].as_str().unwrap().to_string()
}

/// A staff member holding `roles`, signed in with password and TOTP through
/// the first-party `client`; the access token is fresh for step-up.
pub async fn staff(oidc: &Oidc, client: &Client, username: &str, roles: &[&str]) -> StaffLogin {
    oidc.user(username).await;
    for role in roles {
        oidc.env
            .cli(&["role", "grant", "--username", username, "--role", role])
            .await
            .assert_ok();
    }
    let (browser, secret) = enrol_totp(oidc, username).await;
    // The enrolment burnt this step's code; the next step's is accepted (±1).
    browser.set_mfa_code(&totp_code(&secret, 1));
    let req = AuthRequest::new(client, "openid").set("prompt", "login");
    let done = browser.authorize(&req, Some((username, PASSWORD))).await;
    let tokens = oidc
        .exchange_code(client, &done.code(), &req.pkce.verifier)
        .await;
    let access_token = tokens.str("access_token");
    StaffLogin {
        username: username.to_string(),
        access_token,
        totp_secret: secret,
        browser,
    }
}
