//! Issue 6: second factors — TOTP enrolment and login, replay refusal,
//! exponential lockout, recovery codes, `amr`/`acr` in every token view,
//! step-up through `max_age` / `acr_values`, and RFC 9470 challenges from
//! the admin API.
//!
//! TOTP codes come from an independent implementation, PyPI `pyotp`, run
//! through the Python interpreter (`PORTCULLIS_TEST_PYTHON`, default
//! `python3`). Without pyotp these tests are skipped, except under `CI`
//! where that fails. The admin API test uses `oauth::staff::staff()`,
//! whose codes come from `totp-rs`; TOTP itself is proven here with pyotp.
//!
//! Codes are computed for explicit time steps (unix time / 30). Before a
//! sequence that depends on which step the server is in, the tests wait
//! until enough of the current step is left (`settled_step`); that is a
//! precondition, never a timing assertion.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::oauth::flow::{AuthRequest, Browser, Client, ClientAuth, Oidc, PASSWORD, Page};
use crate::oauth::staff::{csrf_of, staff};
use crate::support::{Backend, unix_ms};

backend_tests!(
    totp_enrolment_shows_a_qr_code_and_activates_only_after_a_correct_code,
    a_totp_login_carries_amr_and_acr_into_id_token_introspection_and_exchange,
    totp_codes_are_accepted_once_and_within_one_step,
    wrong_codes_are_counted_and_lock_out_exponentially_across_a_restart,
    recovery_codes_are_single_use_audited_and_replaced_only_with_a_fresh_factor,
    max_age_zero_and_acr_values_force_a_new_login,
    a_login_in_the_same_second_as_the_request_does_not_satisfy_step_up,
    admin_api_challenges_staff_without_a_fresh_second_factor,
    removing_totp_needs_a_fresh_second_factor,
);

const ACR_MFA: &str = "urn:portcullis:acr:mfa";

// ---------------------------------------------------------------- pyotp

/// The Python interpreter with pyotp, or `None` (skip) outside CI.
struct Pyotp(String);

impl Pyotp {
    fn find() -> Option<Pyotp> {
        let python = std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = std::process::Command::new(&python)
            .args(["-c", "import pyotp"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(Pyotp(python));
        }
        if std::env::var_os("CI").is_some() {
            panic!("{python} cannot import pyotp; .ci/run installs tests/interop/requirements.txt");
        }
        eprintln!("skipped: {python} has no pyotp (pip install -r tests/interop/requirements.txt)");
        None
    }

    /// pyotp's code for `secret` at time step `step` (the 30 seconds
    /// starting at `step * 30`).
    async fn code(&self, secret: &str, step: i64) -> String {
        let at = (step * 30).to_string();
        let out = tokio::process::Command::new(&self.0)
            .args([
                "-c",
                "import sys, pyotp; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))",
                secret,
                &at,
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "pyotp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(
            code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
            "pyotp code {code:?}"
        );
        code
    }

    /// A six-digit code that is valid for no step within ±2 of `step`.
    async fn wrong_code(&self, secret: &str, step: i64) -> String {
        let mut valid = Vec::new();
        for s in step - 2..=step + 2 {
            valid.push(self.code(secret, s).await);
        }
        let mut n: u32 = valid[2].parse().unwrap();
        loop {
            n = (n + 1) % 1_000_000;
            let candidate = format!("{n:06}");
            if !valid.contains(&candidate) {
                return candidate;
            }
        }
    }
}

/// The current TOTP step, once at least `margin` seconds of it are left
/// (waits for the next step otherwise).
async fn settled_step(margin: u64) -> i64 {
    loop {
        let now = unix_ms();
        let left = 30_000 - now % 30_000;
        if left >= i64::try_from(margin).unwrap() * 1000 {
            return now / 30_000;
        }
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap() + 50)).await;
    }
}

/// Waits until the wall clock has entered a later second than `after`
/// (unix seconds); `auth_time` has one-second resolution.
async fn past_second(after: i64) {
    while unix_ms() / 1000 <= after {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until just after a second boundary, so the next few hundred
/// milliseconds fall within one second.
async fn start_of_a_second() {
    let ms = unix_ms() % 1000;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(1000 - ms).unwrap() + 10,
    ))
    .await;
}

// ---------------------------------------------------------------- HTTP helpers

/// GET /login, POST /login (no pending authorization request).
async fn password_login(browser: &Browser, oidc: &Oidc, username: &str) -> Page {
    let page = browser.get(&oidc.url("/login")).await;
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    browser
        .post_form(
            "/login",
            &[
                ("username", username),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
            ],
        )
        .await
}

/// A fresh browser signed in with the password only (user without factors).
async fn signed_in(oidc: &Oidc, username: &str) -> Browser {
    let browser = oidc.browser();
    let page = password_login(&browser, oidc, username).await;
    assert_eq!(
        (page.status, page.location()),
        (303, Some("/login/done")),
        "password-only login: {}",
        page.body
    );
    browser
}

/// A fresh browser that passed the password step and now faces /login/mfa.
async fn at_second_factor(oidc: &Oidc, username: &str) -> Browser {
    let browser = oidc.browser();
    let page = password_login(&browser, oidc, username).await;
    assert_eq!(
        (page.status, page.location()),
        (303, Some("/login/mfa")),
        "a user with a factor continues at /login/mfa: {}",
        page.body
    );
    browser
}

/// Submits `field` (`code` or `recovery_code`) on the /login/mfa page.
async fn submit_second_factor(oidc: &Oidc, browser: &Browser, field: &str, value: &str) -> Page {
    let page = browser.get(&oidc.url("/login/mfa")).await;
    assert_eq!(page.status, 200, "/login/mfa: {}", page.body);
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    browser
        .post_form("/login/mfa", &[(field, value), ("csrf_token", &csrf)])
        .await
}

#[track_caller]
fn assert_mfa_accepted(page: &Page) {
    assert_eq!(
        (page.status, page.location()),
        (303, Some("/login/done")),
        "second factor should be accepted: {}",
        page.body
    );
}

#[track_caller]
fn assert_code_refused(page: &Page, what: &str) {
    assert_eq!(page.status, 401, "{what} must be refused: {}", page.body);
    assert!(
        page.body.contains("invalid code") && page.body.contains("name=\"code\""),
        "{what}: the form comes back with an error: {}",
        page.body
    );
}

/// Retry-After in seconds (panics if absent).
#[track_caller]
fn retry_after(page: &Page) -> i64 {
    page.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", page.headers))
}

#[track_caller]
fn assert_locked(page: &Page, what: &str) -> i64 {
    assert_eq!(page.status, 429, "{what}: locked out: {}", page.body);
    assert!(page.body.contains("too many wrong codes"), "{}", page.body);
    let secs = retry_after(page);
    assert!(secs > 0, "{what}: Retry-After {secs}");
    secs
}

/// POST an account form as JSON with the browser's session and CSRF token.
async fn account_post(
    oidc: &Oidc,
    browser: &Browser,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let csrf = csrf_of(oidc, browser).await;
    let resp = browser
        .http
        .post(oidc.url(path))
        .header("accept", "application/json")
        .header("x-csrf-token", &csrf)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// GET /account/mfa as JSON: `factors` and the raw text.
async fn factors(oidc: &Oidc, browser: &Browser) -> (Value, String) {
    let resp = browser
        .http
        .get(oidc.url("/account/mfa"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    (body["factors"].clone(), text)
}

struct Enrolled {
    /// The browser that enrolled; its session is password-only.
    browser: Browser,
    secret: String,
    recovery_codes: Vec<String>,
    /// The time step whose code confirmed the enrolment (now burnt); at
    /// least `margin` seconds of it were left at confirmation.
    step: i64,
}

/// Creates `username`, signs in with the password, enrols TOTP (JSON) and
/// confirms with pyotp's code for the current step.
async fn enrol(oidc: &Oidc, py: &Pyotp, username: &str, margin: u64) -> Enrolled {
    oidc.user(username).await;
    let browser = signed_in(oidc, username).await;
    let (status, body) = account_post(oidc, &browser, "/account/mfa/totp", &[]).await;
    assert_eq!(status, 200, "start enrolment: {body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    let step = settled_step(margin).await;
    let code = py.code(&secret, step).await;
    let (status, body) = account_post(
        oidc,
        &browser,
        "/account/mfa/totp/confirm",
        &[("code", &code)],
    )
    .await;
    assert_eq!(status, 200, "confirm enrolment: {body}");
    let recovery_codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    Enrolled {
        browser,
        secret,
        recovery_codes,
        step,
    }
}

/// Verified id_token claims of a token response.
async fn id_claims(oidc: &Oidc, tokens: &Value) -> Value {
    oidc.verify_jwt(tokens["id_token"].as_str().unwrap())
        .await
        .1
}

/// Runs `req` in `browser` (logging in as `username` if asked) and redeems
/// the code; returns (pages shown, token response).
async fn authorize_and_redeem(
    oidc: &Oidc,
    browser: &Browser,
    client: &Client,
    req: &AuthRequest,
    username: &str,
) -> (Vec<String>, Value) {
    let done = browser.authorize(req, Some((username, PASSWORD))).await;
    let tokens = oidc
        .exchange_code(client, &done.code(), &req.pkce.verifier)
        .await;
    (done.pages, tokens.ok().clone())
}

/// The audit log as exported by the CLI (JSON lines).
async fn audit_rows(oidc: &Oidc) -> Vec<Value> {
    let out = oidc
        .env
        .cli(&["audit", "export", "--format", "jsonl"])
        .await;
    out.assert_ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn with_action<'a>(rows: &'a [Value], action: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["action"] == action).collect()
}

/// Inline script, inline style or event-handler attributes in `html`.
fn inline_code(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for needle in ["<script", "<style", " style=", "javascript:"] {
        if lower.contains(needle) {
            found.push(needle.to_string());
        }
    }
    // on…= attributes (onclick, onload, …) inside tags.
    let bytes = lower.as_bytes();
    for i in 0..bytes.len().saturating_sub(3) {
        if bytes[i].is_ascii_whitespace() && &bytes[i + 1..i + 3] == b"on" {
            let rest = &lower[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            if name_len > 0 && rest[name_len..].starts_with('=') {
                found.push(format!("on{}=", &rest[..name_len]));
            }
        }
    }
    found
}

// ---------------------------------------------------------------- tests

async fn totp_enrolment_shows_a_qr_code_and_activates_only_after_a_correct_code(backend: Backend) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start(backend).await;
    let app = oidc.code_client("app", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    let browser = signed_in(&oidc, "alice").await;

    // HTML: the QR code as an image, the otpauth URI and the secret.
    let csrf = csrf_of(&oidc, &browser).await;
    let page = browser
        .post_form("/account/mfa/totp", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.headers
    );
    let marker = "<img src=\"data:image/svg+xml;base64,";
    let start = page
        .body
        .find(marker)
        .unwrap_or_else(|| panic!("no QR image in the page: {}", page.body))
        + marker.len();
    let len = page.body[start..].find('"').unwrap();
    let svg = String::from_utf8(STANDARD.decode(&page.body[start..start + len]).unwrap()).unwrap();
    assert!(svg.contains("<svg"), "the QR image is an SVG: {svg}");
    let html_secret = {
        let at = page.body.find("<code>").expect("the secret is shown") + "<code>".len();
        let end = page.body[at..].find("</code>").unwrap();
        page.body[at..at + end].to_string()
    };
    assert!(
        html_secret.len() >= 32
            && html_secret
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "a base32 secret of at least 160 bits: {html_secret:?}"
    );
    assert!(
        page.body.contains(&format!(
            "otpauth://totp/Portcullis:alice?secret={html_secret}&amp;issuer=Portcullis"
        )),
        "the otpauth URI is shown: {}",
        page.body
    );
    let form = page.hidden_inputs();
    assert!(form.contains_key("csrf_token"), "{}", page.body);
    assert!(
        page.body.contains("action=\"/account/mfa/totp/confirm\"")
            && page.body.contains("name=\"code\""),
        "a form with field `code`: {}",
        page.body
    );
    assert_eq!(
        inline_code(&page.body),
        Vec::<String>::new(),
        "no inline script or style: {}",
        page.body
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        !csp.contains("unsafe-inline") && csp.contains("img-src 'self' data:"),
        "CSP allows the data: image and nothing inline: {csp}"
    );

    // JSON: restarting enrolment replaces the pending secret.
    let (status, body) = account_post(&oidc, &browser, "/account/mfa/totp", &[]).await;
    assert_eq!(status, 200, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    assert_ne!(secret, html_secret, "a restart draws a new secret");
    assert_eq!(
        body["otpauth_uri"],
        format!("otpauth://totp/Portcullis:alice?secret={secret}&issuer=Portcullis")
    );
    let svg = STANDARD
        .decode(body["qr_svg_base64"].as_str().unwrap())
        .unwrap();
    assert!(String::from_utf8(svg).unwrap().contains("<svg"));

    // Not active yet: a password login is enough.
    assert_eq!(factors(&oidc, &browser).await.0["totp"], false);
    let req = AuthRequest::new(&app, "openid");
    let (pages, tokens) = authorize_and_redeem(&oidc, &oidc.browser(), &app, &req, "alice").await;
    assert_eq!(pages, ["/login"], "no second factor before confirmation");
    let claims = id_claims(&oidc, &tokens).await;
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_ne!(claims["acr"], ACR_MFA);

    // A wrong code, and a code for the replaced secret, do not activate it.
    let step = settled_step(10).await;
    let wrong = py.wrong_code(&secret, step).await;
    let (status, body) = account_post(
        &oidc,
        &browser,
        "/account/mfa/totp/confirm",
        &[("code", &wrong)],
    )
    .await;
    assert_eq!(status, 400, "wrong confirmation code: {body}");
    let stale = py.code(&html_secret, step).await;
    if stale != py.code(&secret, step).await {
        let (status, body) = account_post(
            &oidc,
            &browser,
            "/account/mfa/totp/confirm",
            &[("code", &stale)],
        )
        .await;
        assert_eq!(status, 400, "code of the replaced secret: {body}");
    }
    assert_eq!(factors(&oidc, &browser).await.0["totp"], false);
    let page = password_login(&oidc.browser(), &oidc, "alice").await;
    assert_eq!(
        page.location(),
        Some("/login/done"),
        "still no second factor after a wrong confirmation"
    );

    // The correct code (HTML form) activates it and shows ten recovery codes.
    let code = py.code(&secret, step).await;
    let page = browser
        .post_form(
            "/account/mfa/totp/confirm",
            &[("code", &code), ("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let codes: Vec<&str> = page
        .body
        .split("<li><code>")
        .skip(1)
        .map(|s| s.split("</code>").next().unwrap())
        .collect();
    assert_eq!(codes.len(), 10, "ten recovery codes: {}", page.body);
    let mut unique = codes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 10, "distinct recovery codes: {codes:?}");
    assert_eq!(inline_code(&page.body), Vec::<String>::new());
    let (f, text) = factors(&oidc, &browser).await;
    assert_eq!(
        (f["totp"].clone(), f["recovery_codes_left"].clone()),
        (json!(true), json!(10))
    );
    assert!(
        codes.iter().all(|c| !text.contains(c)),
        "recovery codes are shown only once: {text}"
    );
    let (status, body) = account_post(
        &oidc,
        &browser,
        "/account/mfa/totp/confirm",
        &[("code", &code)],
    )
    .await;
    assert_eq!(status, 409, "nothing left to confirm: {body}");

    // Now a login goes /login → /login/mfa → code.
    let login = oidc.browser();
    login.set_mfa_code(&py.code(&secret, step + 1).await);
    let req = AuthRequest::new(&app, "openid");
    let (pages, tokens) = authorize_and_redeem(&oidc, &login, &app, &req, "alice").await;
    assert_eq!(pages, ["/login", "/login/mfa"]);
    assert_eq!(
        id_claims(&oidc, &tokens).await["amr"],
        json!(["pwd", "otp"])
    );
}

async fn a_totp_login_carries_amr_and_acr_into_id_token_introspection_and_exchange(
    backend: Backend,
) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start(backend).await;
    let app = oidc
        .code_client("shop", "openid profile", &["--first-party"])
        .await;
    let gw = oidc
        .client(
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
        .await;
    let gw_auth = ClientAuth::Basic(gw.id.clone(), gw.secret.clone().unwrap());
    let e = enrol(&oidc, &py, "bob", 10).await;

    let browser = oidc.browser();
    browser.set_mfa_code(&py.code(&e.secret, e.step + 1).await);
    let req = AuthRequest::new(&app, "openid profile");
    let (pages, tokens) = authorize_and_redeem(&oidc, &browser, &app, &req, "bob").await;
    assert_eq!(pages, ["/login", "/login/mfa"]);

    let claims = id_claims(&oidc, &tokens).await;
    assert_eq!(claims["amr"], json!(["pwd", "otp"]), "{claims}");
    assert_eq!(claims["acr"], ACR_MFA, "{claims}");
    assert!(claims["auth_time"].is_i64(), "{claims}");

    // Introspection (RFC 7662) for a gateway.
    let access = tokens["access_token"].as_str().unwrap();
    let resp = oidc
        .http
        .post(oidc.url("/introspect"))
        .basic_auth(&gw.id, gw.secret.as_deref())
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let intro: Value = resp.json().await.unwrap();
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["amr"], json!(["pwd", "otp"]), "{intro}");
    assert_eq!(intro["acr"], ACR_MFA, "{intro}");

    // The internal JWT from token exchange (RFC 8693 / RFC 9068).
    let exchanged = oidc
        .token(
            &gw_auth,
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", access),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("audience", "orders-api"),
            ],
        )
        .await;
    let jwt = exchanged.ok()["access_token"].as_str().unwrap().to_string();
    let (_, jwt_claims) = oidc.verify_jwt(&jwt).await;
    assert_eq!(jwt_claims["amr"], json!(["pwd", "otp"]), "{jwt_claims}");
    assert_eq!(jwt_claims["acr"], ACR_MFA, "{jwt_claims}");

    // A refreshed id_token still describes the same login.
    let refreshed = oidc
        .refresh(&app, tokens["refresh_token"].as_str().unwrap())
        .await;
    let again = id_claims(&oidc, refreshed.ok()).await;
    assert_eq!(again["amr"], json!(["pwd", "otp"]), "{again}");
    assert_eq!(again["acr"], ACR_MFA, "{again}");

    // The session records it too.
    let resp = browser
        .http
        .get(oidc.url("/account/sessions"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let sessions: Value = resp.json().await.unwrap();
    let current = sessions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap_or_else(|| panic!("{sessions}"));
    assert_eq!(current["amr"], json!(["pwd", "otp"]), "{current}");
}

async fn totp_codes_are_accepted_once_and_within_one_step(backend: Backend) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start(backend).await;
    oidc.user("carol").await;
    let browser = signed_in(&oidc, "carol").await;
    let (status, body) = account_post(&oidc, &browser, "/account/mfa/totp", &[]).await;
    assert_eq!(status, 200, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    // Everything below happens within step `s`.
    let s = settled_step(15).await;
    let code = |step: i64| py.code(&secret, step);
    let confirm = |c: String| {
        let (oidc, browser) = (&oidc, &browser);
        async move { account_post(oidc, browser, "/account/mfa/totp/confirm", &[("code", &c)]).await }
    };

    // Two steps away is outside the window; one step back is inside.
    assert_eq!(confirm(code(s - 2).await).await.0, 400, "step s-2");
    assert_eq!(confirm(code(s + 2).await).await.0, 400, "step s+2");
    let (status, body) = confirm(code(s - 1).await).await;
    assert_eq!(status, 200, "step s-1 is within ±1: {body}");

    // Login 1: the confirmation code is burnt; the current step works.
    let login = at_second_factor(&oidc, "carol").await;
    let page = submit_second_factor(&oidc, &login, "code", &code(s - 1).await).await;
    assert_code_refused(&page, "the code used for confirmation");
    let page = submit_second_factor(&oidc, &login, "code", &code(s + 2).await).await;
    assert_code_refused(&page, "a code two steps ahead");
    let page = submit_second_factor(&oidc, &login, "code", &code(s).await).await;
    assert_mfa_accepted(&page);

    // Login 2: replaying that code is refused; the next step works.
    let login = at_second_factor(&oidc, "carol").await;
    let page = submit_second_factor(&oidc, &login, "code", &code(s).await).await;
    assert_code_refused(&page, "a replayed code");
    let page = submit_second_factor(&oidc, &login, "code", &code(s + 1).await).await;
    assert_mfa_accepted(&page);

    // Login 3: nothing at or before the last accepted step works any more.
    let login = at_second_factor(&oidc, "carol").await;
    let page = submit_second_factor(&oidc, &login, "code", &code(s + 1).await).await;
    assert_code_refused(&page, "a replayed step s+1 code");
    let page = submit_second_factor(&oidc, &login, "code", &code(s).await).await;
    assert_code_refused(&page, "an earlier step's code");
    // The refused challenge did not become a session.
    let page = login.get(&oidc.url("/login/done")).await;
    assert_eq!(
        (page.status, page.location()),
        (303, Some("/login")),
        "no session from refused codes"
    );
}

async fn wrong_codes_are_counted_and_lock_out_exponentially_across_a_restart(backend: Backend) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start(backend).await;
    let e = enrol(&oidc, &py, "dave", 10).await;
    let wrong = py.wrong_code(&e.secret, e.step).await;

    // Four wrong codes are refused and counted per user, across challenges.
    let a = at_second_factor(&oidc, "dave").await;
    let b = at_second_factor(&oidc, "dave").await;
    for (i, browser) in [&a, &a, &b, &b].into_iter().enumerate() {
        let page = submit_second_factor(&oidc, browser, "code", &wrong).await;
        assert_code_refused(&page, &format!("wrong code {}", i + 1));
        assert!(page.headers.get("retry-after").is_none());
    }
    // The fifth locks.
    let page = submit_second_factor(&oidc, &a, "code", &wrong).await;
    let first_lock = assert_locked(&page, "fifth wrong code");
    assert!(first_lock <= 30, "first lock: {first_lock}s");

    // While locked, a correct code and a recovery code are refused too.
    let good = py.code(&e.secret, e.step + 1).await;
    let page = submit_second_factor(&oidc, &a, "code", &good).await;
    assert_locked(&page, "correct code while locked");
    let page = submit_second_factor(&oidc, &b, "recovery_code", &e.recovery_codes[0]).await;
    assert_locked(&page, "recovery code while locked");

    // The lock survives a restart (same address, same database).
    let Oidc {
        server,
        env,
        issuer,
        http,
    } = oidc;
    assert_eq!(server.stop().await, 0);
    let addr = issuer.trim_start_matches("http://").to_string();
    let server = env
        .serve_with(&[
            ("PORTCULLIS_HTTP_PUBLIC_ADDR", &addr),
            ("PORTCULLIS_ISSUER", &issuer),
        ])
        .await;
    let oidc = Oidc {
        server,
        env,
        issuer,
        http,
    };
    let page = submit_second_factor(&oidc, &a, "code", &good).await;
    let after_restart = assert_locked(&page, "correct code after a restart");
    assert!(after_restart <= first_lock);

    // After the lock ends, the next wrong code locks at once, for longer.
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(after_restart).unwrap() + 1,
    ))
    .await;
    let c = at_second_factor(&oidc, "dave").await;
    let page = submit_second_factor(&oidc, &c, "code", &wrong).await;
    let second_lock = assert_locked(&page, "first wrong code after the lock");
    assert!(
        second_lock > 30,
        "the second lock is longer than the first (exponential): {second_lock}s"
    );
    let good = py.code(&e.secret, settled_step(0).await).await;
    let page = submit_second_factor(&oidc, &c, "code", &good).await;
    assert_locked(&page, "correct code during the second lock");
}

async fn recovery_codes_are_single_use_audited_and_replaced_only_with_a_fresh_factor(
    backend: Backend,
) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start(backend).await;
    let e = enrol(&oidc, &py, "erin", 0).await;
    assert_eq!(e.recovery_codes.len(), 10, "{:?}", e.recovery_codes);
    let mut unique = e.recovery_codes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 10);

    // Regenerating needs a fresh second factor: the enrolling session is
    // password-only.
    let (status, body) = account_post(&oidc, &e.browser, "/account/mfa/recovery-codes", &[]).await;
    assert_eq!(status, 403, "password-only session: {body}");

    // A recovery code signs in once, and its use is audited.
    let a = at_second_factor(&oidc, "erin").await;
    let page = submit_second_factor(&oidc, &a, "recovery_code", &e.recovery_codes[0]).await;
    assert_mfa_accepted(&page);
    let rows = audit_rows(&oidc).await;
    let enrolled = with_action(&rows, "mfa.totp_enrolled");
    assert_eq!(enrolled.len(), 1, "{rows:?}");
    let used = with_action(&rows, "mfa.recovery_code_used");
    assert_eq!(used.len(), 1, "one mfa.recovery_code_used row: {rows:?}");
    assert_eq!(used[0]["target"], enrolled[0]["target"], "{:?}", used[0]);
    assert!(
        !serde_json::to_string(&rows)
            .unwrap()
            .contains(&e.recovery_codes[0]),
        "the audit log never holds the code"
    );
    assert_eq!(factors(&oidc, &a).await.0["recovery_codes_left"], 9);

    let b = at_second_factor(&oidc, "erin").await;
    let page = submit_second_factor(&oidc, &b, "recovery_code", &e.recovery_codes[0]).await;
    assert_code_refused(&page, "a used recovery code");

    // With the fresh second factor, a new set replaces the old one.
    let (status, body) = account_post(&oidc, &a, "/account/mfa/recovery-codes", &[]).await;
    assert_eq!(status, 200, "{body}");
    let fresh: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(fresh.len(), 10, "{body}");
    assert!(fresh.iter().all(|c| !e.recovery_codes.contains(c)));
    assert_eq!(factors(&oidc, &a).await.0["recovery_codes_left"], 10);
    let page = submit_second_factor(&oidc, &b, "recovery_code", &e.recovery_codes[1]).await;
    assert_code_refused(&page, "an unused code of the old set");
    let page = submit_second_factor(&oidc, &b, "recovery_code", &fresh[0]).await;
    assert_mfa_accepted(&page);

    let rows = audit_rows(&oidc).await;
    assert_eq!(with_action(&rows, "mfa.recovery_code_used").len(), 2);
    assert_eq!(
        with_action(&rows, "mfa.recovery_codes_generated").len(),
        2,
        "enrolment and regeneration"
    );
    oidc.env.cli(&["audit", "verify"]).await.assert_ok();
}

async fn max_age_zero_and_acr_values_force_a_new_login(backend: Backend) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start(backend).await;
    let app = oidc.code_client("app", "openid", &["--first-party"]).await;
    oidc.user("frank").await;

    // max_age=0: the login page again and a later auth_time.
    let browser = oidc.browser();
    let (pages, tokens) = authorize_and_redeem(
        &oidc,
        &browser,
        &app,
        &AuthRequest::new(&app, "openid"),
        "frank",
    )
    .await;
    assert_eq!(pages, ["/login"]);
    let first = id_claims(&oidc, &tokens).await;
    let t1 = first["auth_time"].as_i64().unwrap();
    let (pages, _) = authorize_and_redeem(
        &oidc,
        &browser,
        &app,
        &AuthRequest::new(&app, "openid"),
        "frank",
    )
    .await;
    assert_eq!(
        pages,
        Vec::<String>::new(),
        "single sign-on without max_age"
    );
    past_second(t1).await;
    let req = AuthRequest::new(&app, "openid").set("max_age", "0");
    let (pages, tokens) = authorize_and_redeem(&oidc, &browser, &app, &req, "frank").await;
    assert_eq!(pages, ["/login"], "max_age=0 shows the login page again");
    let second = id_claims(&oidc, &tokens).await;
    assert!(
        second["auth_time"].as_i64().unwrap() > t1,
        "a fresh auth_time: {first} then {second}"
    );
    assert_eq!(
        second["sid"], first["sid"],
        "the same session, re-authenticated"
    );

    // acr_values=mfa for a user without a second factor.
    let req = AuthRequest::new(&app, "openid").set("acr_values", ACR_MFA);
    let done = browser.authorize(&req, Some(("frank", PASSWORD))).await;
    assert_eq!(
        done.param("error"),
        Some("unmet_authentication_requirements"),
        "{}",
        done.location
    );
    assert_eq!(done.param("state"), Some(req.state()));
    assert!(done.param("code").is_none());

    // acr_values=mfa for a user with a factor whose session is password-only.
    let e = enrol(&oidc, &py, "grace", 10).await;
    let (pages, tokens) = authorize_and_redeem(
        &oidc,
        &e.browser,
        &app,
        &AuthRequest::new(&app, "openid"),
        "grace",
    )
    .await;
    assert_eq!(
        pages,
        Vec::<String>::new(),
        "the enrolling session is still live"
    );
    let pwd_only = id_claims(&oidc, &tokens).await;
    assert_eq!(pwd_only["amr"], json!(["pwd"]));
    // (Past the second of that login: see the same-second test below.)
    past_second(pwd_only["auth_time"].as_i64().unwrap()).await;
    e.browser
        .set_mfa_code(&py.code(&e.secret, e.step + 1).await);
    let req = AuthRequest::new(&app, "openid").set("acr_values", ACR_MFA);
    let (pages, tokens) = authorize_and_redeem(&oidc, &e.browser, &app, &req, "grace").await;
    assert_eq!(
        pages,
        ["/login", "/login/mfa"],
        "acr_values forces the second factor"
    );
    let stepped = id_claims(&oidc, &tokens).await;
    assert_eq!(stepped["acr"], ACR_MFA, "{stepped}");
    assert_eq!(stepped["amr"], json!(["pwd", "otp"]), "{stepped}");
    assert_eq!(stepped["sid"], pwd_only["sid"]);
    // Now the session satisfies it without another login.
    let req = AuthRequest::new(&app, "openid").set("acr_values", ACR_MFA);
    let (pages, tokens) = authorize_and_redeem(&oidc, &e.browser, &app, &req, "grace").await;
    assert_eq!(pages, Vec::<String>::new());
    assert_eq!(id_claims(&oidc, &tokens).await["acr"], ACR_MFA);
}

/// `max_age=0` and `prompt=login` must force a new login even when the
/// previous one happened in the same wall-clock second as the
/// authorization request (OIDC Core §3.1.2.1: "max_age=0 is equivalent to
/// prompt=login"). The tests above step past that second first.
async fn a_login_in_the_same_second_as_the_request_does_not_satisfy_step_up(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let app = oidc.code_client("app", "openid", &["--first-party"]).await;
    oidc.user("heidi").await;

    for (param, value) in [("max_age", "0"), ("prompt", "login")] {
        start_of_a_second().await;
        let browser = signed_in(&oidc, "heidi").await;
        let req = AuthRequest::new(&app, "openid").set(param, value);
        let done = browser.authorize(&req, Some(("heidi", PASSWORD))).await;
        assert_eq!(
            done.pages,
            ["/login"],
            "{param}={value} right after a login must show the login page again"
        );
    }
}

async fn admin_api_challenges_staff_without_a_fresh_second_factor(backend: Backend) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "2s")]).await;
    let admin = oidc
        .code_client("admin-ui", "openid", &["--first-party"])
        .await;
    let api = |path: &str| oidc.server.admin_url(path);
    let terminate = |token: String, id: String| {
        let url = api(&format!("/admin/api/sessions/{id}/terminate"));
        let http = oidc.http.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"reason": "suspected account takeover", "ticket_id": "SEC-6"}))
                .send()
                .await
                .unwrap()
        }
    };

    // A support member who signed in with the password only.
    oidc.user("sam").await;
    oidc.env
        .cli(&["role", "grant", "--username", "sam", "--role", "support"])
        .await
        .assert_ok();
    let sam = oidc.login_and_redeem(&admin, "sam", "openid").await;
    let sam_token = sam["access_token"].as_str().unwrap().to_string();
    let resp = oidc
        .http
        .get(api("/admin/api/sessions"))
        .bearer_auth(&sam_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains(&format!("acr_values=\"{ACR_MFA}\"")),
        "RFC 9470 challenge: {challenge}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_user_authentication", "{body}");

    // Sessions to terminate.
    oidc.user("victor").await;
    let _v1 = signed_in(&oidc, "victor").await;
    let _v2 = signed_in(&oidc, "victor").await;

    // A support member signed in with TOTP just now.
    let tina = staff(&oidc, &admin, "tina", &["support"]).await;
    let staff_step = settled_step(0).await;
    let mine: Value = tina
        .browser
        .http
        .get(oidc.url("/account/sessions"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["current"] == true && s["amr"] == json!(["pwd", "otp"])),
        "{} signed in with TOTP: {mine}",
        tina.username
    );
    let list = || {
        let url = api("/admin/api/sessions?user=victor&state=active");
        let http = oidc.http.clone();
        let token = tina.access_token.clone();
        async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = resp.status();
            let challenge = resp.headers().get("www-authenticate").cloned();
            let body = resp.json::<Value>().await.unwrap();
            assert_eq!(status, 200, "list sessions: {body} {challenge:?}");
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let ids = list().await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    let resp = terminate(tina.access_token.clone(), ids[0].clone()).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(list().await, [ids[1].clone()]);

    // Once the second factor is older than mfa.step_up_max_age (2s), the
    // same call is challenged; reading still works.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resp = terminate(tina.access_token.clone(), ids[1].clone()).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains(&format!("acr_values=\"{ACR_MFA}\""))
            && challenge.contains("max_age=2"),
        "RFC 9470 challenge with max_age: {challenge}"
    );
    assert_eq!(list().await, [ids[1].clone()], "nothing was terminated");

    // Answering the challenge: a new second-factor login in the same
    // session (max_age=0) makes the same token fresh again. The code must
    // be for a later step than the one staff() used, so wait for the next
    // step to begin.
    let step = loop {
        let now = settled_step(5).await;
        if now > staff_step {
            break now;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tina.browser
        .set_mfa_code(&py.code(&tina.totp_secret, step + 1).await);
    let req = AuthRequest::new(&admin, "openid").set("max_age", "0");
    let done = tina.browser.authorize(&req, Some(("tina", PASSWORD))).await;
    assert_eq!(done.pages, ["/login", "/login/mfa"]);
    let resp = terminate(tina.access_token.clone(), ids[1].clone()).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(list().await, Vec::<String>::new());
}

async fn removing_totp_needs_a_fresh_second_factor(backend: Backend) {
    let Some(py) = Pyotp::find() else { return };
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "2s")]).await;
    let e = enrol(&oidc, &py, "judy", 10).await;
    async fn remove(oidc: &Oidc, browser: &Browser) -> (u16, Value) {
        account_post(oidc, browser, "/account/mfa/totp/remove", &[]).await
    }

    // A password-only session may not remove it.
    let (status, body) = remove(&oidc, &e.browser).await;
    assert_eq!(status, 403, "password-only session: {body}");
    assert_eq!(factors(&oidc, &e.browser).await.0["totp"], true);

    // Neither may a second-factor login older than mfa.step_up_max_age.
    let stale = at_second_factor(&oidc, "judy").await;
    let page =
        submit_second_factor(&oidc, &stale, "code", &py.code(&e.secret, e.step + 1).await).await;
    assert_mfa_accepted(&page);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = remove(&oidc, &stale).await;
    assert_eq!(status, 403, "stale second factor: {body}");

    // A fresh one may.
    let fresh = at_second_factor(&oidc, "judy").await;
    let page = submit_second_factor(&oidc, &fresh, "recovery_code", &e.recovery_codes[0]).await;
    assert_mfa_accepted(&page);
    let (status, body) = remove(&oidc, &fresh).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"totp": "removed"})),
        "{body}"
    );
    assert_eq!(factors(&oidc, &fresh).await.0["totp"], false);
    let rows = audit_rows(&oidc).await;
    assert_eq!(with_action(&rows, "mfa.totp_removed").len(), 1);

    // The next login no longer asks for a code.
    let page = password_login(&oidc.browser(), &oidc, "judy").await;
    assert_eq!(
        (page.status, page.location()),
        (303, Some("/login/done")),
        "{}",
        page.body
    );
}
