//! Issue 6: WebAuthn security keys and passkeys, end to end against the
//! real binary. The authenticator is `webauthn-authenticator-rs`'s
//! `SoftToken` (a software FIDO2 token with packed attestation), driven
//! through the same JSON endpoints and cookies the page script uses.
//!
//! WebAuthn needs a domain name, so these servers use the issuer
//! `http://localhost:<port>` (listening on 127.0.0.1).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::cookie::{CookieStore, Jar};
use serde_json::{Value, json};
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softtoken::SoftToken;

use crate::oauth::flow::{AuthRequest, Browser, Client, Oidc, PASSWORD, Redirected, free_port};
use crate::support::{Backend, TestEnv};

backend_tests!(
    register_list_rename_and_sign_in_with_a_key,
    other_users_key_refused_removal_needs_fresh_mfa_and_lockout,
    cloned_authenticator_is_refused_suspended_and_audited,
    passkey_sign_in_only_after_opting_in,
    preferred_policy_registers_security_keys,
);

const ACR_MFA: &str = "urn:portcullis:acr:mfa";

/// A server whose issuer is `http://localhost:<port>`, with `extra` env.
async fn start(backend: Backend, extra: &[(&str, &str)]) -> Oidc {
    serve(TestEnv::new(backend).await, free_port(), extra).await
}

/// Serves `env` on `port` (a restart keeps the issuer, hence the origin).
async fn serve(env: TestEnv, port: u16, extra: &[(&str, &str)]) -> Oidc {
    let addr = format!("127.0.0.1:{port}");
    let issuer = format!("http://localhost:{port}");
    let mut vars = vec![
        ("PORTCULLIS_HTTP_PUBLIC_ADDR", addr.as_str()),
        ("PORTCULLIS_ISSUER", issuer.as_str()),
    ];
    vars.extend_from_slice(extra);
    let server = env.serve_with(&vars).await;
    Oidc {
        server,
        env,
        issuer,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

/// A software authenticator.
struct Key {
    token: SoftToken,
    origin: Url,
}

impl Key {
    /// Reports user verification (like a key with a PIN).
    fn new(oidc: &Oidc) -> Key {
        Key::with_uv(oidc, true)
    }

    fn with_uv(oidc: &Oidc, uv: bool) -> Key {
        Key {
            token: SoftToken::new(uv).unwrap().0,
            origin: Url::parse(&oidc.issuer).unwrap(),
        }
    }

    /// An exact copy: same private keys, same signature counter.
    fn clone_token(&self) -> Key {
        Key {
            token: SoftToken::from_cbor(&self.token.to_cbor().unwrap()).unwrap(),
            origin: self.origin.clone(),
        }
    }

    /// `navigator.credentials.create()` on the server's start response.
    fn register(&mut self, start: &Value) -> Value {
        let ccr: CreationChallengeResponse = serde_json::from_value(start.clone()).unwrap();
        let cred = self
            .token
            .do_registration(self.origin.clone(), ccr)
            .unwrap();
        serde_json::to_value(cred).unwrap()
    }

    /// `navigator.credentials.get()` on the server's start response.
    fn sign(&mut self, start: &Value) -> Value {
        let rcr: RequestChallengeResponse = serde_json::from_value(start.clone()).unwrap();
        let cred = self
            .token
            .do_authentication(self.origin.clone(), rcr)
            .unwrap();
        serde_json::to_value(cred).unwrap()
    }

    /// A discoverable (resident) passkey answering a passwordless request:
    /// the authenticator picks its credential for the RP and returns the
    /// user handle stored at registration. SoftToken keeps no resident
    /// keys, so the test plays that part: it names the credential and adds
    /// the handle (which the signature does not cover, as in WebAuthn).
    fn sign_discoverable(&mut self, start: &Value, cred_id: &str, user_handle: &str) -> Value {
        let mut start = start.clone();
        start["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": cred_id}]);
        let mut cred = self.sign(&start);
        cred["response"]["userHandle"] = user_handle.into();
        cred
    }
}

/// A browser whose cookie jar the test can read.
struct Agent {
    browser: Browser,
    jar: Arc<Jar>,
    issuer: String,
}

/// Status, JSON body and headers of a response.
struct Answer {
    status: u16,
    json: Value,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    #[track_caller]
    fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "expected 200, got {}", self.json);
        &self.json
    }

    #[track_caller]
    fn refused(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.json["error"].as_str()),
            (status, Some(error)),
            "expected {status} {error}, got {} {}",
            self.status,
            self.json
        );
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "errors carry a message: {}",
            self.json
        );
    }
}

impl Agent {
    fn new(oidc: &Oidc) -> Agent {
        let jar = Arc::new(Jar::default());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .build()
            .unwrap();
        Agent {
            browser: Browser {
                http,
                issuer: oidc.issuer.clone(),
                mfa_code: std::sync::Mutex::new(None),
            },
            jar,
            issuer: oidc.issuer.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The `Cookie` header this browser would send.
    fn cookies(&self) -> String {
        self.jar
            .cookies(&Url::parse(&self.issuer).unwrap())
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    async fn post_json(&self, path: &str, csrf: &str, body: &Value) -> Answer {
        let resp = self
            .browser
            .http
            .post(self.url(path))
            .header("accept", "application/json")
            .header("x-csrf-token", csrf)
            .json(body)
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    async fn get_json(&self, path: &str) -> Answer {
        let resp = self
            .browser
            .http
            .get(self.url(path))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    /// Follows `url` through `/login` (password) to `/login/mfa`; returns
    /// that page's CSRF token and body.
    async fn to_second_factor(&self, url: &str, username: &str) -> (String, String) {
        let mut url = Url::parse(url).unwrap();
        for _ in 0..10 {
            let mut page = self.browser.get(url.as_str()).await;
            if page.status == 200 && url.path() == "/login/mfa" {
                let csrf = attribute(&page.body, "data-csrf-token")
                    .unwrap_or_else(|| panic!("no security key offered:\n{}", page.body));
                return (csrf, page.body);
            }
            if page.status == 200 && url.path() == "/login" {
                let hidden = page.hidden_inputs();
                page = self
                    .browser
                    .post_form(
                        "/login",
                        &[
                            ("username", username),
                            ("password", PASSWORD),
                            ("csrf_token", &hidden["csrf_token"]),
                            ("request", hidden.get("request").map_or("", |r| r.as_str())),
                        ],
                    )
                    .await;
            }
            let location = page
                .location()
                .unwrap_or_else(|| panic!("stopped at {url} with {}: {}", page.status, page.body))
                .to_string();
            url = url.join(&location).unwrap();
        }
        panic!("too many redirects");
    }

    /// Password, then `key` at `/login/mfa`; returns the finish answer.
    async fn sign_in_with_key(&self, url: &str, username: &str, key: &mut Key) -> Answer {
        let (csrf, _) = self.to_second_factor(url, username).await;
        let start = self
            .post_json("/login/webauthn/start", &csrf, &json!({}))
            .await;
        let credential = key.sign(start.ok());
        self.post_json(
            "/login/webauthn/finish",
            &csrf,
            &json!({"challenge_id": start.json["challenge_id"], "credential": credential}),
        )
        .await
    }

    /// A password-only sign-in (the user has no second factor yet).
    async fn sign_in_with_password(&self, username: &str) {
        let page = self.browser.get(&self.url("/login")).await;
        let csrf = page.hidden_inputs()["csrf_token"].clone();
        let page = self
            .browser
            .post_form(
                "/login",
                &[
                    ("username", username),
                    ("password", PASSWORD),
                    ("csrf_token", &csrf),
                ],
            )
            .await;
        assert_eq!(page.location(), Some("/login/done"), "{}", page.body);
    }

    /// The CSRF token of the sign-in page (for a browser without session).
    async fn login_csrf(&self) -> String {
        let page = self.browser.get(&self.url("/login")).await;
        page.hidden_inputs()["csrf_token"].clone()
    }

    /// The account pages' CSRF token.
    async fn account_csrf(&self) -> String {
        self.get_json("/account/mfa").await.ok()["csrf_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Registers `key` as `name`; returns the finish answer.
    async fn register(&self, key: &mut Key, name: &str) -> Answer {
        let csrf = self.account_csrf().await;
        let start = self
            .post_json("/account/mfa/webauthn/register/start", &csrf, &json!({}))
            .await;
        let credential = key.register(start.ok());
        self.post_json(
            "/account/mfa/webauthn/register/finish",
            &csrf,
            &json!({"challenge_id": start.json["challenge_id"], "name": name, "credential": credential}),
        )
        .await
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        json,
        headers,
    }
}

/// The value of the first `name="…"` attribute in `html`.
fn attribute(html: &str, name: &str) -> Option<String> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

/// Claims of the id_token from redeeming the redirect's code.
async fn id_token_claims(
    oidc: &Oidc,
    client: &Client,
    req: &AuthRequest,
    done: &Redirected,
) -> Value {
    let tokens = oidc
        .exchange_code(client, &done.code(), &req.pkce.verifier)
        .await;
    let (_, claims) = oidc.verify_jwt(&tokens.str("id_token")).await;
    claims
}

async fn audit_rows(oidc: &Oidc, action: &str) -> Vec<Value> {
    let out = oidc
        .env
        .cli(&["audit", "export", "--format", "jsonl"])
        .await;
    out.assert_ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == action)
        .collect()
}

/// The stored webauthn-rs credential JSON of a key.
async fn stored_key(oidc: &Oidc, id: &str) -> Value {
    let pool = crate::support::raw_pool(&oidc.env.database_url()).await;
    let (text,): (String,) =
        sqlx::query_as("SELECT passkey FROM webauthn_credentials WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    serde_json::from_str(&text).unwrap()
}

async fn register_list_rename_and_sign_in_with_a_key(backend: Backend) {
    let oidc = start(backend, &[]).await;
    oidc.user("alice").await;
    let client = oidc.code_client("app", "openid", &["--first-party"]).await;
    let agent = Agent::new(&oidc);
    agent.sign_in_with_password("alice").await;

    // The first key needs no step-up and comes with recovery codes.
    let mut blue = Key::new(&oidc);
    let first = agent.register(&mut blue, "Blue key").await;
    let first = first.ok().clone();
    assert_eq!(first["credential"]["name"], "Blue key");
    assert_eq!(first["credential"]["kind"], "passkey");
    assert_eq!(first["recovery_codes"].as_array().unwrap().len(), 10);
    let blue_id = first["credential"]["id"].as_str().unwrap().to_string();

    // Adding another factor now needs a fresh second factor.
    let csrf = agent.account_csrf().await;
    agent
        .post_json("/account/mfa/webauthn/register/start", &csrf, &json!({}))
        .await
        .refused(403, "forbidden");

    // Second factor at /login/mfa: the page offers the key through the
    // static script; no inline script, CSP allows only same-origin script.
    let (_, mfa_page) = agent.to_second_factor(&agent.url("/login"), "alice").await;
    assert!(mfa_page.contains("data-webauthn=\"second-factor\""));
    assert!(mfa_page.contains("<script src=\"/static/webauthn.js\" defer></script>"));
    assert_eq!(
        mfa_page.matches("<script").count(),
        mfa_page.matches("<script src=").count(),
        "no inline script"
    );
    let resp = agent
        .browser
        .http
        .get(agent.url("/login/mfa"))
        .send()
        .await
        .unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let js = reqwest::get(agent.url("/static/webauthn.js"))
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"),
        "{:?}",
        js.headers()
    );
    assert!(js.text().await.unwrap().contains("/login/webauthn/finish"));

    let done = agent
        .sign_in_with_key(&agent.url("/login"), "alice", &mut blue)
        .await;
    assert_eq!(done.ok()["redirect"], "/login/done");
    assert!(
        done.headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("pc_session=")),
        "session cookie set"
    );

    // Now a second key; the first is excluded from the registration.
    let csrf = agent.account_csrf().await;
    let start = agent
        .post_json("/account/mfa/webauthn/register/start", &csrf, &json!({}))
        .await;
    let excluded: Vec<&str> = start.ok()["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(excluded, vec![blue_id.as_str()]);
    assert_eq!(
        start.json["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    let mut green = Key::new(&oidc);
    let credential = green.register(&start.json);
    let second = agent
        .post_json(
            "/account/mfa/webauthn/register/finish",
            &csrf,
            &json!({"challenge_id": start.json["challenge_id"], "name": "Green key", "credential": credential}),
        )
        .await;
    assert_eq!(second.ok()["recovery_codes"], json!([]));
    let green_id = second.json["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The same registration again: the ceremony was used.
    agent
        .post_json(
            "/account/mfa/webauthn/register/finish",
            &csrf,
            &json!({"challenge_id": start.json["challenge_id"], "name": "Again", "credential": credential}),
        )
        .await
        .refused(400, "invalid_challenge");

    // Rename, bad names refused, list.
    agent
        .post_json(
            &format!("/account/mfa/webauthn/{green_id}/rename"),
            &csrf,
            &json!({"name": "  "}),
        )
        .await
        .refused(400, "invalid_request");
    let renamed = agent
        .post_json(
            &format!("/account/mfa/webauthn/{green_id}/rename"),
            &csrf,
            &json!({"name": "Spare key"}),
        )
        .await;
    assert_eq!(renamed.ok()["credential"]["name"], "Spare key");
    // The account page lists the keys (escaped) with rename and remove
    // forms, and registration through the static script.
    let page = agent.browser.get(&agent.url("/account/mfa")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<strong>Spare key</strong>"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(&format!("/account/mfa/webauthn/{green_id}/remove"))
    );
    assert!(page.body.contains("data-webauthn=\"register\""));
    assert!(
        page.body
            .contains("<script src=\"/static/webauthn.js\" defer></script>")
    );
    // An HTML form works as well as JSON.
    let form = agent
        .browser
        .post_form(
            &format!("/account/mfa/webauthn/{green_id}/rename"),
            &[("name", "<Spare key>"), ("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(form.location(), Some("/account/mfa"), "{}", form.body);
    let page = agent.browser.get(&agent.url("/account/mfa")).await;
    assert!(page.body.contains("&lt;Spare key&gt;"), "{}", page.body);
    agent
        .post_json(
            &format!("/account/mfa/webauthn/{green_id}/rename"),
            &csrf,
            &json!({"name": "Spare key"}),
        )
        .await
        .ok();
    let overview = agent.get_json("/account/mfa").await;
    let overview = overview.ok();
    assert_eq!(overview["factors"]["webauthn"], 2);
    assert_eq!(overview["webauthn"]["available"], true);
    let mut listed: Vec<(&str, &str)> = overview["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["id"].as_str().unwrap()))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("Blue key", blue_id.as_str()),
            ("Spare key", green_id.as_str())
        ]
    );
    for c in overview["credentials"].as_array().unwrap() {
        assert!(c["created_at"].is_string(), "{c}");
        assert!(c.get("last_used_at").is_some(), "{c}");
    }
    let by_name = |name: &str| {
        overview["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert!(by_name("Blue key")["last_used_at"].is_string());
    assert!(by_name("Spare key")["last_used_at"].is_null());
    assert_eq!(audit_rows(&oidc, "mfa.webauthn_registered").await.len(), 2);
    let renames = audit_rows(&oidc, "mfa.webauthn_renamed").await;
    assert_eq!(renames.len(), 3);
    assert_eq!(renames[0]["before"]["name"], "Green key");
    assert_eq!(renames[0]["after"]["name"], "Spare key");

    // A code flow with the second key as the second factor: the id_token
    // says so.
    let browser = Agent::new(&oidc);
    let req = AuthRequest::new(&client, "openid");
    let start_url = req.url(&oidc.issuer);
    let (csrf, _) = browser.to_second_factor(&start_url, "alice").await;
    let options = browser
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await;
    let allowed: Vec<&str> = options.ok()["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(allowed.len(), 2);
    let finish_body = json!({
        "challenge_id": options.json["challenge_id"],
        "credential": green.sign(&options.json),
    });
    let cookies_before = browser.cookies();
    let finished = browser
        .post_json("/login/webauthn/finish", &csrf, &finish_body)
        .await;
    let redirect = finished.ok()["redirect"].as_str().unwrap().to_string();
    assert!(
        redirect.starts_with("/authorize/resume?request="),
        "{redirect}"
    );
    let done = browser
        .browser
        .follow(&browser.url(&redirect), None, "allow")
        .await;
    let claims = id_token_claims(&oidc, &client, &req, &done).await;
    assert_eq!(claims["amr"], json!(["pwd", "hwk"]));
    assert_eq!(claims["acr"], ACR_MFA);

    // Replaying the finish with the cookies it was sent with: refused,
    // and no session cookie.
    let replay = oidc
        .http
        .post(oidc.url("/login/webauthn/finish"))
        .header("cookie", cookies_before)
        .header("accept", "application/json")
        .header("x-csrf-token", &csrf)
        .json(&finish_body)
        .send()
        .await
        .unwrap();
    let replay = answer(replay).await;
    assert!(
        [400, 401].contains(&replay.status),
        "replay refused: {} {}",
        replay.status,
        replay.json
    );
    assert!(replay.headers.get("set-cookie").is_none());

    // A burnt ceremony stays burnt: a failed answer uses it up, and a valid
    // answer to the same challenge is then refused.
    let (csrf, _) = browser
        .to_second_factor(&browser.url("/login"), "alice")
        .await;
    let options = browser
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await;
    let good = blue.sign(options.ok());
    let mut forged = good.clone();
    let sig = forged["response"]["signature"].as_str().unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    forged["response"]["signature"] = URL_SAFE_NO_PAD.encode(&bytes).into();
    browser
        .post_json(
            "/login/webauthn/finish",
            &csrf,
            &json!({"challenge_id": options.json["challenge_id"], "credential": forged}),
        )
        .await
        .refused(401, "invalid_credential");
    browser
        .post_json(
            "/login/webauthn/finish",
            &csrf,
            &json!({"challenge_id": options.json["challenge_id"], "credential": good}),
        )
        .await
        .refused(400, "invalid_challenge");
    // A fresh challenge works (the failure did not end the login).
    let options = browser
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await;
    let ok = browser
        .post_json(
            "/login/webauthn/finish",
            &csrf,
            &json!({"challenge_id": options.ok()["challenge_id"], "credential": blue.sign(&options.json)}),
        )
        .await;
    assert_eq!(ok.ok()["redirect"], "/login/done");

    // Without the CSRF header nothing starts.
    let resp = browser
        .browser
        .http
        .post(browser.url("/account/mfa/webauthn/register/start"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

async fn other_users_key_refused_removal_needs_fresh_mfa_and_lockout(backend: Backend) {
    let oidc = start(backend, &[]).await;
    for u in ["alice", "bob", "dave"] {
        oidc.user(u).await;
    }
    let alice = Agent::new(&oidc);
    alice.sign_in_with_password("alice").await;
    let mut alice_key = Key::new(&oidc);
    alice.register(&mut alice_key, "Alice's key").await.ok();
    let bob = Agent::new(&oidc);
    bob.sign_in_with_password("bob").await;
    let mut bob_key = Key::new(&oidc);
    let bob_id = bob.register(&mut bob_key, "Bob's key").await.ok()["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Bob's key answering Alice's second-factor challenge is refused.
    let thief = Agent::new(&oidc);
    let (csrf, _) = thief.to_second_factor(&thief.url("/login"), "alice").await;
    let mut options = thief
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await;
    options.ok();
    options.json["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": bob_id}]);
    let credential = bob_key.sign(&options.json);
    thief
        .post_json(
            "/login/webauthn/finish",
            &csrf,
            &json!({"challenge_id": options.json["challenge_id"], "credential": credential}),
        )
        .await
        .refused(401, "invalid_credential");
    assert!(
        thief.get_json("/account/mfa").await.status == 401,
        "no session"
    );

    // Removing a key needs a second factor used recently: Bob's session
    // has only a password.
    let csrf = bob.account_csrf().await;
    let remove = format!("/account/mfa/webauthn/{bob_id}/remove");
    bob.post_json(&remove, &csrf, &json!({}))
        .await
        .refused(403, "forbidden");
    bob.sign_in_with_key(&bob.url("/login"), "bob", &mut bob_key)
        .await
        .ok();
    let csrf = bob.account_csrf().await;
    // Someone else's key is not found.
    let alice_id = alice.get_json("/account/mfa").await.json["credentials"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    bob.post_json(
        &format!("/account/mfa/webauthn/{alice_id}/remove"),
        &csrf,
        &json!({}),
    )
    .await
    .refused(404, "not_found");
    assert_eq!(
        bob.post_json(&remove, &csrf, &json!({})).await.ok()["removed"],
        bob_id.as_str()
    );
    let overview = bob.get_json("/account/mfa").await;
    assert_eq!(overview.ok()["credentials"], json!([]));
    assert_eq!(overview.json["factors"]["webauthn"], 0);
    let removed = audit_rows(&oidc, "mfa.webauthn_removed").await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["before"]["credential_id"], bob_id.as_str());
    assert_eq!(removed[0]["actor"]["kind"], "user");

    // Wrong answers count toward the lockout shared with TOTP codes.
    let dave = Agent::new(&oidc);
    dave.sign_in_with_password("dave").await;
    let mut dave_key = Key::new(&oidc);
    dave.register(&mut dave_key, "Dave's key").await.ok();
    let (csrf, _) = dave.to_second_factor(&dave.url("/login"), "dave").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let options = dave
            .post_json("/login/webauthn/start", &csrf, &json!({}))
            .await;
        let mut credential = dave_key.sign(options.ok());
        credential["response"]["signature"] = "AAAA".into();
        let r = dave
            .post_json(
                "/login/webauthn/finish",
                &csrf,
                &json!({"challenge_id": options.json["challenge_id"], "credential": credential}),
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 429]);
    let locked = dave
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await;
    locked.refused(429, "too_many_requests");
    assert!(locked.headers.get("retry-after").is_some());
}

async fn cloned_authenticator_is_refused_suspended_and_audited(backend: Backend) {
    let oidc = start(backend, &[]).await;
    oidc.user("alice").await;
    let agent = Agent::new(&oidc);
    agent.sign_in_with_password("alice").await;
    let mut first = Key::new(&oidc);
    let first_id = agent.register(&mut first, "First key").await.ok()["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    agent
        .sign_in_with_key(&oidc.url("/login"), "alice", &mut first)
        .await
        .ok();
    let mut second = Key::new(&oidc);
    let second_id = agent.register(&mut second, "Second key").await.ok()["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let counter = |v: Value| v["key"]["cred"]["counter"].as_u64().unwrap();

    // Someone copies the first key (same private key, same counter)…
    let mut copy = first.clone_token();
    let copied_at = counter(stored_key(&oidc, &first_id).await);
    // …the owner keeps using the genuine one…
    for _ in 0..2 {
        Agent::new(&oidc)
            .sign_in_with_key(&oidc.url("/login"), "alice", &mut first)
            .await
            .ok();
    }
    let stored = counter(stored_key(&oidc, &first_id).await);
    assert_eq!(stored, copied_at + 2);

    // …and the copy, whose counter is behind, is refused.
    let refused = Agent::new(&oidc)
        .sign_in_with_key(&oidc.url("/login"), "alice", &mut copy)
        .await;
    refused.refused(403, "credential_suspended");
    assert!(refused.headers.get("set-cookie").is_none(), "no session");
    assert_eq!(
        counter(stored_key(&oidc, &first_id).await),
        stored,
        "the counter is not updated"
    );
    let rows = audit_rows(&oidc, "mfa.webauthn_possible_clone").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["target"].as_str().unwrap().starts_with("user_id:"));
    assert_eq!(rows[0]["before"]["credential_id"], first_id.as_str());
    assert_eq!(rows[0]["before"]["counter"], stored);
    assert_eq!(rows[0]["after"]["presented_counter"], copied_at + 1);
    assert_eq!(rows[0]["after"]["suspended"], true);

    // The key is suspended: listed as such and no longer offered; the
    // owner removes it and registers it again.
    let overview = agent.get_json("/account/mfa").await;
    let keys = overview.ok()["credentials"].as_array().unwrap().clone();
    let suspended =
        |id: &str| keys.iter().find(|k| k["id"] == id).unwrap()["suspended_at"].is_string();
    assert!(suspended(&first_id), "{keys:?}");
    assert!(!suspended(&second_id), "{keys:?}");

    // A copy that answers a challenge issued before the genuine key's last
    // use gets past the counter in the ceremony state, but not past the
    // stored counter.
    let mut copy = second.clone_token();
    let attacker = Agent::new(&oidc);
    let (csrf, _) = attacker
        .to_second_factor(&oidc.url("/login"), "alice")
        .await;
    let early = attacker
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await;
    let offered: Vec<&str> = early.ok()["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered,
        vec![second_id.as_str()],
        "suspended keys are not offered"
    );
    Agent::new(&oidc)
        .sign_in_with_key(&oidc.url("/login"), "alice", &mut second)
        .await
        .ok();
    let credential = copy.sign(&early.json);
    attacker
        .post_json(
            "/login/webauthn/finish",
            &csrf,
            &json!({"challenge_id": early.json["challenge_id"], "credential": credential}),
        )
        .await
        .refused(403, "credential_suspended");
    assert_eq!(
        audit_rows(&oidc, "mfa.webauthn_possible_clone").await.len(),
        2
    );

    // With every key suspended there is nothing to offer; the genuine key
    // is refused too until it is registered again.
    attacker
        .post_json("/login/webauthn/start", &csrf, &json!({}))
        .await
        .refused(409, "conflict");
}

async fn passkey_sign_in_only_after_opting_in(backend: Backend) {
    let oidc = start(backend, &[]).await;
    oidc.user("carol").await;
    let client = oidc.code_client("app", "openid", &["--first-party"]).await;
    let owner = Agent::new(&oidc);
    owner.sign_in_with_password("carol").await;
    let mut key = Key::new(&oidc);
    let csrf = owner.account_csrf().await;
    let start_reg = owner
        .post_json("/account/mfa/webauthn/register/start", &csrf, &json!({}))
        .await;
    let user_handle = start_reg.ok()["publicKey"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let credential = key.register(&start_reg.json);
    let cred_id = owner
        .post_json(
            "/account/mfa/webauthn/register/finish",
            &csrf,
            &json!({"challenge_id": start_reg.json["challenge_id"], "name": "Laptop", "credential": credential}),
        )
        .await
        .ok()["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The sign-in page offers a passkey; Carol has not opted in yet.
    let stranger = Agent::new(&oidc);
    let page = stranger.browser.get(&stranger.url("/login")).await;
    assert!(page.body.contains("data-webauthn=\"passkey-login\""));
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    let options = stranger
        .post_json("/login/passkey/start", &csrf, &json!({}))
        .await;
    assert_eq!(options.ok()["publicKey"]["allowCredentials"], json!([]));
    assert_eq!(options.json["publicKey"]["userVerification"], "required");
    let credential = key.sign_discoverable(&options.json, &cred_id, &user_handle);
    stranger
        .post_json(
            "/login/passkey/finish",
            &csrf,
            &json!({"challenge_id": options.json["challenge_id"], "credential": credential}),
        )
        .await
        .refused(403, "forbidden");

    // Opting in needs a fresh second factor.
    let csrf = owner.account_csrf().await;
    owner
        .post_json(
            "/account/mfa/passkey-login",
            &csrf,
            &json!({"enabled": true}),
        )
        .await
        .refused(403, "forbidden");
    owner
        .sign_in_with_key(&owner.url("/login"), "carol", &mut key)
        .await
        .ok();
    let csrf = owner.account_csrf().await;
    let on = owner
        .post_json(
            "/account/mfa/passkey-login",
            &csrf,
            &json!({"enabled": true}),
        )
        .await;
    assert_eq!(on.ok()["passkey_login"], true);
    assert_eq!(
        owner.get_json("/account/mfa").await.json["passkey_login"],
        true
    );
    assert_eq!(
        audit_rows(&oidc, "mfa.passkey_login_enabled").await.len(),
        1
    );

    // Now a code flow signs in with the passkey alone.
    let browser = Agent::new(&oidc);
    let req = AuthRequest::new(&client, "openid");
    let page = browser.browser.get(&req.url(&oidc.issuer)).await;
    let login = browser
        .browser
        .get(&browser.url(page.location().unwrap()))
        .await;
    let hidden = login.hidden_inputs();
    let request = hidden["request"].clone();
    assert_eq!(
        attribute(&login.body, "data-request").as_deref(),
        Some(request.as_str())
    );
    let csrf = hidden["csrf_token"].clone();
    let options = browser
        .post_json("/login/passkey/start", &csrf, &json!({"request": request}))
        .await;
    let body = json!({
        "challenge_id": options.ok()["challenge_id"],
        "credential": key.sign_discoverable(&options.json, &cred_id, &user_handle),
    });
    let finished = browser
        .post_json("/login/passkey/finish", &csrf, &body)
        .await;
    assert_eq!(
        finished.ok()["redirect"],
        format!("/authorize/resume?request={request}")
    );
    let done = browser
        .browser
        .follow(
            &browser.url(finished.json["redirect"].as_str().unwrap()),
            None,
            "allow",
        )
        .await;
    let claims = id_token_claims(&oidc, &client, &req, &done).await;
    assert_eq!(claims["amr"], json!(["hwk", "user"]));
    assert_eq!(claims["acr"], ACR_MFA);

    // The passwordless ceremony is single-use too.
    let replay = browser
        .post_json("/login/passkey/finish", &csrf, &body)
        .await;
    assert_eq!(replay.status, 400, "{}", replay.json);

    // Turning it off again stops it.
    let csrf = owner.account_csrf().await;
    owner
        .post_json(
            "/account/mfa/passkey-login",
            &csrf,
            &json!({"enabled": false}),
        )
        .await
        .ok();
    let options = stranger
        .post_json(
            "/login/passkey/start",
            &stranger.login_csrf().await,
            &json!({}),
        )
        .await;
    let credential = key.sign_discoverable(options.ok(), &cred_id, &user_handle);
    stranger
        .post_json(
            "/login/passkey/finish",
            &stranger.login_csrf().await,
            &json!({"challenge_id": options.json["challenge_id"], "credential": credential}),
        )
        .await
        .refused(403, "forbidden");
}

async fn preferred_policy_registers_security_keys(backend: Backend) {
    // A passkey registered under the default policy…
    let oidc = start(backend.clone(), &[]).await;
    oidc.user("erin").await;
    let agent = Agent::new(&oidc);
    agent.sign_in_with_password("erin").await;
    let mut passkey = Key::new(&oidc);
    let first = agent.register(&mut passkey, "Passkey").await;
    assert_eq!(first.ok()["credential"]["kind"], "passkey");

    // …keeps working after a restart with `preferred`.
    let port = Url::parse(&oidc.issuer).unwrap().port().unwrap();
    let Oidc { server, env, .. } = oidc;
    assert_eq!(server.stop().await, 0);
    let oidc = serve(
        env,
        port,
        &[("PORTCULLIS_WEBAUTHN_USER_VERIFICATION", "preferred")],
    )
    .await;
    let agent = Agent::new(&oidc);
    let signed_in = agent
        .sign_in_with_key(&oidc.url("/login"), "erin", &mut passkey)
        .await;
    assert_eq!(signed_in.ok()["redirect"], "/login/done");

    // A key without PIN or biometric is good enough under `preferred`.
    let mut key = Key::with_uv(&oidc, false);
    let csrf = agent.account_csrf().await;
    let start = agent
        .post_json("/account/mfa/webauthn/register/start", &csrf, &json!({}))
        .await;
    assert_eq!(
        start.ok()["publicKey"]["authenticatorSelection"]["userVerification"],
        "preferred"
    );
    let credential = key.register(&start.json);
    let done = agent
        .post_json(
            "/account/mfa/webauthn/register/finish",
            &csrf,
            &json!({"challenge_id": start.json["challenge_id"], "name": "Old U2F key", "credential": credential}),
        )
        .await;
    assert_eq!(done.ok()["credential"]["kind"], "security_key");
    let overview = agent.get_json("/account/mfa").await;
    assert_eq!(overview.ok()["webauthn"]["user_verification"], "preferred");
    let mut kinds: Vec<&str> = overview.json["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec!["passkey", "security_key"]);
    let signed_in = Agent::new(&oidc)
        .sign_in_with_key(&oidc.url("/login"), "erin", &mut key)
        .await;
    assert_eq!(signed_in.ok()["redirect"], "/login/done");

    // On an IP-address issuer WebAuthn is off and says why.
    let ip = Oidc::start(backend).await;
    ip.user("frank").await;
    let agent = Agent::new(&ip);
    agent.sign_in_with_password("frank").await;
    let overview = agent.get_json("/account/mfa").await;
    assert_eq!(overview.ok()["webauthn"]["available"], false);
    let csrf = agent.account_csrf().await;
    let refused = agent
        .post_json("/account/mfa/webauthn/register/start", &csrf, &json!({}))
        .await;
    refused.refused(404, "not_found");
    assert!(
        refused.json["message"]
            .as_str()
            .unwrap()
            .contains("domain name")
    );
}
