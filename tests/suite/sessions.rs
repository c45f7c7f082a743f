//! Issue 5: server-side sessions — the session cookie, self-service at
//! `/account/sessions`, ending sessions (by the person, a password change,
//! timeouts, RP-initiated logout, staff), back-channel logout through the
//! durable outbox, and the admin sessions API.
//!
//! Every "ended" claim is checked where it matters: introspection says
//! `{"active":false}`, refresh is refused with `invalid_grant`, `/userinfo`
//! answers 401 and the old cookie no longer opens `/account`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::oauth::flow::{AuthRequest, Browser, Client, Oidc, PASSWORD, Page, free_port};
use crate::oauth::staff::StaffLogin;
use crate::support::{Backend, TestEnv, eventually, raw_pool};

backend_tests!(
    session_cookie_is_hashed_and_replaced_at_every_login,
    account_sessions_lists_my_devices_as_json_and_html,
    ending_one_session_kills_its_tokens_at_once,
    ending_all_other_sessions_keeps_this_one,
    password_change_ends_every_other_session,
    idle_timeout_ends_the_session_and_its_tokens,
    absolute_timeout_ends_the_session_despite_activity,
    rp_initiated_logout_redirects_and_notifies_the_client,
    backchannel_logout_is_retried_until_delivered,
    backchannel_logout_survives_a_server_restart,
    backchannel_logout_failure_is_audited_and_counted,
    admin_lists_and_filters_sessions,
    admin_terminates_sessions_with_a_reason,
    admin_api_checks_authentication_and_permissions,
);

const INACTIVE: &str = r#"{"active":false}"#;
const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) \
     AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const NEW_PASSWORD: &str = "a brand new long passphrase";
/// Generous: the session sweeper runs every 15 s.
const SLOW: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A browser with a cookie jar we can read and a User-Agent of our choice.
struct Device {
    browser: Browser,
    jar: Arc<Jar>,
    issuer: url::Url,
}

impl Device {
    fn new(oidc: &Oidc, user_agent: Option<&str>) -> Device {
        let jar = Arc::new(Jar::default());
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone());
        if let Some(ua) = user_agent {
            builder = builder.user_agent(ua);
        }
        Device {
            browser: Browser::with_client(&oidc.issuer, builder.build().unwrap()),
            jar,
            issuer: url::Url::parse(&oidc.issuer).unwrap(),
        }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        let header = self.jar.cookies(&self.issuer)?;
        header
            .to_str()
            .unwrap()
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn session_cookie(&self) -> String {
        self.cookie("pc_session")
            .expect("the browser holds a pc_session cookie")
    }

    /// GET /login, then POST the form; returns the POST's response.
    async fn login(&self, username: &str, password: &str) -> Page {
        let form = self.browser.get(&format!("{}login", self.issuer)).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.hidden_inputs()["csrf_token"].clone();
        self.browser
            .post_form(
                "/login",
                &[
                    ("username", username),
                    ("password", password),
                    ("csrf_token", &csrf),
                ],
            )
            .await
    }

    /// Authorizes `client` through this browser (logging in as `username`
    /// if asked) and redeems the code.
    async fn tokens(&self, oidc: &Oidc, client: &Client, username: &str, scope: &str) -> Tokens {
        let req = AuthRequest::new(client, scope);
        let done = self
            .browser
            .authorize(&req, Some((username, PASSWORD)))
            .await;
        let resp = oidc
            .exchange_code(client, &done.code(), &req.pkce.verifier)
            .await;
        let body = resp.ok();
        Tokens {
            access: body["access_token"].as_str().unwrap().to_string(),
            refresh: body["refresh_token"].as_str().unwrap_or("").to_string(),
            id_token: body["id_token"].as_str().unwrap_or("").to_string(),
        }
    }

    /// GET /account/sessions as JSON: (status, body).
    async fn sessions(&self) -> (u16, Value) {
        let resp = self
            .browser
            .http
            .get(format!("{}account/sessions", self.issuer))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The JSON list, asserting 200.
    async fn list(&self) -> Value {
        let (status, body) = self.sessions().await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn csrf(&self) -> String {
        self.list().await["csrf_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The id of this browser's session (the item marked current).
    async fn sid(&self) -> String {
        let list = self.list().await;
        let current: Vec<&Value> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["current"] == true)
            .collect();
        assert_eq!(current.len(), 1, "exactly one current session: {list}");
        current[0]["id"].as_str().unwrap().to_string()
    }

    /// POST a form to `path` with `Accept: application/json` and the CSRF
    /// token in `X-CSRF-Token` (if given).
    async fn post_json(&self, path: &str, csrf: Option<&str>, form: &[(&str, &str)]) -> Page {
        let url = format!("{}{}", self.issuer, path.trim_start_matches('/'));
        let mut req = self
            .browser
            .http
            .post(&url)
            .header("accept", "application/json")
            .form(form);
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Page {
            status,
            headers,
            body: resp.text().await.unwrap_or_default(),
            url,
        }
    }
}

#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    refresh: String,
    id_token: String,
}

/// `/account/sessions` JSON with only the given cookie (no jar).
async fn sessions_with_cookie(oidc: &Oidc, cookie: &str) -> (u16, Value) {
    let resp = oidc
        .http
        .get(oidc.url("/account/sessions"))
        .header("accept", "application/json")
        .header("cookie", format!("pc_session={cookie}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn item<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("session {id} not in {list}"))
}

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {list}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The `pc_session` entry among the response's `Set-Cookie` headers.
fn session_set_cookie(page: &Page) -> String {
    page.set_cookies()
        .lines()
        .find(|c| c.starts_with("pc_session="))
        .unwrap_or_else(|| panic!("no pc_session Set-Cookie in {:?}", page.headers))
        .to_string()
}

fn clears_session_cookie(page: &Page) -> bool {
    page.set_cookies().lines().any(|c| {
        c.starts_with("pc_session=;") || (c.starts_with("pc_session=") && c.contains("Max-Age=0"))
    })
}

/// A gateway allowed to introspect.
async fn gateway(oidc: &Oidc) -> Client {
    oidc.client(
        "gw",
        &[
            "--grant",
            "client_credentials",
            "--scope",
            "api",
            "--may-introspect",
        ],
    )
    .await
}

async fn introspect_raw(oidc: &Oidc, gw: &Client, token: &str) -> String {
    let resp = oidc
        .http
        .post(oidc.url("/introspect"))
        .basic_auth(&gw.id, gw.secret.as_deref())
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

async fn is_active(oidc: &Oidc, gw: &Client, token: &str) -> bool {
    let body = introspect_raw(oidc, gw, token).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["active"] == true
}

/// Every way a dead session's tokens must fail.
async fn assert_tokens_dead(oidc: &Oidc, gw: &Client, client: &Client, t: &Tokens, what: &str) {
    assert_eq!(
        introspect_raw(oidc, gw, &t.access).await,
        INACTIVE,
        "{what}: access token must be inactive at introspection"
    );
    if !t.refresh.is_empty() {
        assert_eq!(
            introspect_raw(oidc, gw, &t.refresh).await,
            INACTIVE,
            "{what}: refresh token must be inactive at introspection"
        );
        let r = oidc.refresh(client, &t.refresh).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (400, Some("invalid_grant")),
            "{what}: refresh must be refused: {}",
            r.text
        );
    }
    let u = oidc.userinfo(&t.access).await;
    assert_eq!(u.status, 401, "{what}: /userinfo must refuse: {}", u.text);
}

async fn assert_tokens_alive(oidc: &Oidc, gw: &Client, t: &Tokens, what: &str) {
    assert!(
        is_active(oidc, gw, &t.access).await,
        "{what}: access token must still be active"
    );
    if !t.refresh.is_empty() {
        assert!(
            is_active(oidc, gw, &t.refresh).await,
            "{what}: refresh token must still be active"
        );
    }
    assert_eq!(
        oidc.userinfo(&t.access).await.status,
        200,
        "{what}: /userinfo"
    );
}

/// `sessions` row: (secret_hash, ended_at, ended_by, end_reason).
type SessionRow = (String, Option<i64>, Option<String>, Option<String>);

async fn session_row(oidc: &Oidc, sid: &str) -> SessionRow {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let row: SessionRow = sqlx::query_as(
        "SELECT secret_hash, ended_at, ended_by, end_reason FROM sessions WHERE id = $1",
    )
    .bind(sid)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    row
}

/// `(created_at, last_seen_at)` of a session, unix seconds.
async fn session_times(oidc: &Oidc, sid: &str) -> (i64, i64) {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let row: (i64, i64) =
        sqlx::query_as("SELECT created_at, last_seen_at FROM sessions WHERE id = $1")
            .bind(sid)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    row
}

/// The server's clock as its `Date` response header says (unix seconds).
fn http_date(headers: &reqwest::header::HeaderMap) -> i64 {
    let text = headers
        .get("date")
        .expect("responses carry a Date header")
        .to_str()
        .unwrap();
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(text, &format)
        .unwrap_or_else(|e| panic!("bad Date {text:?}: {e}"))
        .assume_utc()
        .unix_timestamp()
}

/// Introspection's body and the server time it was answered at.
async fn introspect_dated(oidc: &Oidc, gw: &Client, token: &str) -> (String, i64) {
    let resp = oidc
        .http
        .post(oidc.url("/introspect"))
        .basic_auth(&gw.id, gw.secret.as_deref())
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let date = http_date(resp.headers());
    (resp.text().await.unwrap(), date)
}

/// `outbox` rows: (client_id, attempts, delivered_at, failed_at, last_error).
type OutboxRow = (
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

async fn outbox_rows(oidc: &Oidc) -> Vec<OutboxRow> {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT client_id, CAST(attempts AS BIGINT), delivered_at, failed_at, last_error \
         FROM outbox ORDER BY created_at, id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

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

fn audit_for<'a>(rows: &'a [Value], action: &str, sid: &str) -> Vec<&'a Value> {
    let target = format!("session:{sid}");
    rows.iter()
        .filter(|r| r["action"] == action && r["target"] == target.as_str())
        .collect()
}

/// The user id (`sub`) behind an access token.
async fn sub_of(oidc: &Oidc, access_token: &str) -> String {
    let u = oidc.userinfo(access_token).await;
    u.str("sub")
}

/// A tiny back-channel logout receiver: records every POST; answers 500
/// to the first `failures` requests, then 200.
struct Receiver {
    url: String,
    attempts: Arc<AtomicUsize>,
    /// Bodies of the requests answered 200, with their Content-Type.
    delivered: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Inbox {
    failures: usize,
    attempts: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<(String, String)>>>,
}

async fn receive(
    axum::extract::State(inbox): axum::extract::State<Inbox>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let n = inbox.attempts.fetch_add(1, Ordering::SeqCst);
    if n < inbox.failures {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    inbox.delivered.lock().unwrap().push((ct, body));
    axum::http::StatusCode::OK
}

impl Receiver {
    /// Listens on 127.0.0.1:`port` (0: any) at `/backchannel`.
    async fn start(port: u16, failures: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let inbox = Inbox {
            failures,
            attempts: Arc::new(AtomicUsize::new(0)),
            delivered: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/backchannel", axum::routing::post(receive))
            .with_state(inbox.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/backchannel"),
            attempts: inbox.attempts,
            delivered: inbox.delivered,
            task,
        }
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// The `logout_token` of every delivered message.
    fn logout_tokens(&self) -> Vec<String> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|(ct, body)| {
                assert!(
                    ct.starts_with("application/x-www-form-urlencoded"),
                    "back-channel logout is a form POST, got Content-Type {ct:?}"
                );
                url::form_urlencoded::parse(body.as_bytes())
                    .find(|(k, _)| k == "logout_token")
                    .unwrap_or_else(|| panic!("no logout_token in {body:?}"))
                    .1
                    .into_owned()
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies a logout token (OIDC Back-Channel Logout 1.0 §2.4) for
/// `client_id` and session `sid`; returns its claims.
async fn assert_logout_token(oidc: &Oidc, token: &str, client_id: &str, sid: &str) -> Value {
    let (header, claims) = oidc.verify_jwt(token).await;
    assert_eq!(header["typ"], "logout+jwt", "{header}");
    assert_eq!(claims["iss"], oidc.issuer.as_str(), "{claims}");
    let aud_ok = claims["aud"] == client_id
        || claims["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == client_id));
    assert!(aud_ok, "aud must be the client: {claims}");
    assert_eq!(claims["sid"], sid, "{claims}");
    assert!(
        claims["events"]
            .as_object()
            .is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout")),
        "{claims}"
    );
    assert!(
        claims.get("nonce").is_none(),
        "a logout token has no nonce: {claims}"
    );
    assert!(claims["iat"].is_i64(), "{claims}");
    assert!(claims["exp"].is_i64(), "{claims}");
    assert!(
        claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{claims}"
    );
    claims
}

/// A confidential, first-party code client `rp` that also gets back-channel
/// and post-logout settings.
async fn rp_client(oidc: &Oidc, backchannel: &str) -> Client {
    oidc.code_client(
        "rp",
        "openid profile",
        &[
            "--first-party",
            "--post-logout-redirect-uri",
            "https://rp.example/logged-out",
            "--backchannel-logout-uri",
            backchannel,
        ],
    )
    .await
}

/// Stops the server and, once it is down, runs `between`, then starts it
/// again on the same address, database and keys.
async fn restart<F: std::future::Future<Output = ()>>(
    oidc: Oidc,
    extra_env: &[(&str, &str)],
    between: F,
) -> Oidc {
    let Oidc {
        server,
        env,
        issuer,
        http,
    } = oidc;
    assert_eq!(server.stop().await, 0, "clean shutdown");
    between.await;
    let addr = issuer.trim_start_matches("http://").to_string();
    let mut vars = vec![
        ("PORTCULLIS_HTTP_PUBLIC_ADDR", addr.as_str()),
        ("PORTCULLIS_ISSUER", issuer.as_str()),
    ];
    vars.extend_from_slice(extra_env);
    let server = env.serve_with(&vars).await;
    Oidc {
        server,
        env,
        issuer,
        http,
    }
}

/// Admin API call on the admin listener: (status, headers, JSON body).
async fn admin_call(
    oidc: &Oidc,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = oidc.http.request(method, oidc.server.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn admin_get(oidc: &Oidc, path: &str, token: &str) -> (u16, Value) {
    let (s, _, b) = admin_call(oidc, reqwest::Method::GET, path, Some(token), None).await;
    (s, b)
}

async fn admin_post(oidc: &Oidc, path: &str, token: &str, body: Value) -> (u16, Value) {
    let (s, _, b) = admin_call(oidc, reqwest::Method::POST, path, Some(token), Some(body)).await;
    (s, b)
}

/// The first-party client staff sign in through (the admin console).
async fn console(oidc: &Oidc) -> Client {
    oidc.code_client("console", "openid", &["--first-party"])
        .await
}

/// A staff member `username` with `role`, signed in with password and
/// TOTP through `console` (the bearer token is in `access_token`).
async fn staff_login(oidc: &Oidc, console: &Client, username: &str, role: &str) -> StaffLogin {
    crate::oauth::staff::staff(oidc, console, username, &[role]).await
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn assert_rfc3339(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok(),
        "{what} is not RFC 3339: {s}"
    );
}

// ---------------------------------------------------------------------------
// 1. The cookie

async fn session_cookie_is_hashed_and_replaced_at_every_login(backend: Backend) {
    let is_sqlite = !backend.is_postgres();
    let oidc = Oidc::start(backend.clone()).await;
    oidc.user("alice").await;
    oidc.user("mallory").await;

    // Login: a fresh session cookie with the right attributes.
    let alice = Device::new(&oidc, Some(CHROME_MAC));
    let resp = alice.login("alice", PASSWORD).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let set = session_set_cookie(&resp);
    let attrs: Vec<String> = set
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.contains(&"httponly".to_string()), "{set}");
    assert!(attrs.contains(&"samesite=lax".to_string()), "{set}");
    assert!(attrs.contains(&"path=/".to_string()), "{set}");
    let first = alice.session_cookie();
    assert!(first.starts_with("pcsid_"), "{first}");
    assert!(
        first.len() >= "pcsid_".len() + 43,
        "256 bits of secret: {first}"
    );
    let sid = alice.sid().await;
    assert_ne!(sid, first, "the session id is not the cookie secret");

    // Only the SHA-256 of the secret is stored.
    let (hash, ended_at, _, _) = session_row(&oidc, &sid).await;
    assert_eq!(hash, sha256_hex(&first));
    assert!(ended_at.is_none());
    let pool = raw_pool(&oidc.env.database_url()).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sessions WHERE secret_hash = $1 OR id = $1 OR user_agent = $1 OR ip = $1",
    )
    .bind(&first)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(n, 0, "the cookie value itself is not in the sessions table");

    // Re-login in the same browser: new secret, same session id; the old
    // secret is worthless.
    let resp = alice.login("alice", PASSWORD).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let second = alice.session_cookie();
    assert_ne!(second, first, "re-login must issue a new cookie secret");
    assert_eq!(
        alice.sid().await,
        sid,
        "re-login keeps the session id (sid)"
    );
    assert_eq!(session_row(&oidc, &sid).await.0, sha256_hex(&second));
    let (status, _) = sessions_with_cookie(&oidc, &first).await;
    assert_eq!(status, 401, "the pre-login cookie secret no longer works");
    let (status, body) = sessions_with_cookie(&oidc, &second).await;
    assert_eq!(status, 200, "{body}");

    // A planted secret that names nothing is replaced at login.
    let victim = Device::new(&oidc, None);
    let planted = format!("pcsid_{}", crate::oauth::flow::random_token());
    victim
        .jar
        .add_cookie_str(&format!("pc_session={planted}; Path=/"), &victim.issuer);
    assert_eq!(sessions_with_cookie(&oidc, &planted).await.0, 401);
    assert_eq!(victim.login("alice", PASSWORD).await.status, 303);
    let got = victim.session_cookie();
    assert_ne!(got, planted, "a planted cookie value is never adopted");
    assert_eq!(sessions_with_cookie(&oidc, &planted).await.0, 401);

    // Fixation with a real session: mallory plants her own cookie in the
    // victim's browser; the victim's login makes a new session for the
    // victim and mallory's cookie still only opens mallory's session.
    let mallory = Device::new(&oidc, None);
    assert_eq!(mallory.login("mallory", PASSWORD).await.status, 303);
    let mallory_cookie = mallory.session_cookie();
    let mallory_sid = mallory.sid().await;
    let victim2 = Device::new(&oidc, None);
    victim2.jar.add_cookie_str(
        &format!("pc_session={mallory_cookie}; Path=/"),
        &victim2.issuer,
    );
    assert_eq!(victim2.login("alice", PASSWORD).await.status, 303);
    assert_ne!(victim2.session_cookie(), mallory_cookie);
    let victim_sid = victim2.sid().await;
    assert_ne!(
        victim_sid, mallory_sid,
        "another user's login starts a new session"
    );
    let (status, mallory_view) = sessions_with_cookie(&oidc, &mallory_cookie).await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&mallory_view),
        vec![mallory_sid.clone()],
        "mallory sees only her session"
    );
    let (hash, ..) = session_row(&oidc, &victim_sid).await;
    assert_ne!(hash, sha256_hex(&mallory_cookie));

    // The secret is in neither the logs nor (SQLite) the database files.
    let logs = oidc.server.stdout().join("\n") + &oidc.server.stderr();
    for secret in [&first, &second, &got] {
        assert!(
            !logs.contains(secret.as_str()),
            "a session secret leaked into the logs"
        );
    }
    if is_sqlite {
        let data = oidc.env.dir.path().join("data");
        for entry in std::fs::read_dir(&data).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for secret in [&first, &second, &got] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "a session secret is stored in the SQLite files"
                );
            }
        }
    }
    drop(oidc);

    // With an https issuer the cookie is `__Host-` prefixed and `Secure`.
    let env = TestEnv::new(backend).await;
    env.create_user("alice", PASSWORD).await;
    let server = env
        .serve_with(&[("PORTCULLIS_ISSUER", "https://login.example")])
        .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http.get(server.url("/login")).send().await.unwrap();
    let csrf_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-pc_csrf="))
        .expect("__Host-pc_csrf cookie");
    let csrf_value = csrf_cookie["__Host-pc_csrf=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let hidden = crate::oauth::flow::hidden_inputs(&form.text().await.unwrap());
    let resp = http
        .post(server.url("/login"))
        .header("cookie", format!("__Host-pc_csrf={csrf_value}"))
        .form(&[
            ("username", "alice"),
            ("password", PASSWORD),
            ("csrf_token", hidden["csrf_token"].as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let set = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-pc_session="))
        .unwrap_or_else(|| panic!("no __Host-pc_session cookie: {:?}", resp.headers()));
    let attrs: Vec<String> = set
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs[0].starts_with("__host-pc_session=pcsid_"), "{set}");
    for attr in ["secure", "httponly", "samesite=lax", "path=/"] {
        assert!(attrs.contains(&attr.to_string()), "{attr} missing: {set}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain=")),
        "__Host- cookies have no Domain: {set}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Listing

async fn account_sessions_lists_my_devices_as_json_and_html(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let laptop = Device::new(&oidc, Some(CHROME_MAC));
    let phone = Device::new(&oidc, Some(SAFARI_IPHONE));
    let bobs = Device::new(&oidc, None);
    assert_eq!(laptop.login("alice", PASSWORD).await.status, 303);
    assert_eq!(phone.login("alice", PASSWORD).await.status, 303);
    assert_eq!(bobs.login("bob", PASSWORD).await.status, 303);
    let bob_sid = bobs.sid().await;

    let list = laptop.list().await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "alice's two sessions, not bob's: {list}");
    assert!(!ids(&list).contains(&bob_sid));
    assert!(
        list["csrf_token"].as_str().is_some_and(|t| t.len() >= 16),
        "{list}"
    );
    let laptop_sid = laptop.sid().await;
    let phone_sid = phone.sid().await;
    assert_ne!(laptop_sid, phone_sid);
    for key in [
        "id",
        "current",
        "ip",
        "user_agent",
        "device",
        "created_at",
        "last_seen_at",
        "amr",
        "state",
        "ended_at",
        "ended_by",
        "end_reason",
    ] {
        for i in items {
            assert!(
                i.as_object().unwrap().contains_key(key),
                "{key} missing in {i}"
            );
        }
    }
    let me = item(&list, &laptop_sid);
    assert_eq!(me["current"], true);
    assert_eq!(me["device"], "Chrome on macOS (desktop)");
    assert_eq!(me["user_agent"], CHROME_MAC);
    assert_eq!(me["ip"], "127.0.0.1");
    assert_eq!(me["amr"], json!(["pwd"]));
    assert_eq!(me["state"], "active");
    assert_eq!(me["ended_at"], Value::Null);
    assert_eq!(me["ended_by"], Value::Null);
    assert_eq!(me["end_reason"], Value::Null);
    assert_rfc3339(&me["created_at"], "created_at");
    assert_rfc3339(&me["last_seen_at"], "last_seen_at");
    let other = item(&list, &phone_sid);
    assert_eq!(other["current"], false);
    assert_eq!(other["device"], "Safari on iOS (mobile)");
    assert_eq!(other["user_agent"], SAFARI_IPHONE);
    // The phone sees the same list with itself marked.
    let from_phone = phone.list().await;
    assert_eq!(item(&from_phone, &phone_sid)["current"], true);
    assert_eq!(item(&from_phone, &laptop_sid)["current"], false);

    // HTML: no inline script or style, "this device" marked once, CSRF forms.
    let page = laptop.browser.get(&oidc.url("/account/sessions")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let lower = page.body.to_ascii_lowercase();
    assert!(
        !lower.contains("<script"),
        "no inline script: {}",
        page.body
    );
    assert!(!lower.contains("style="), "no inline style: {}", page.body);
    assert!(!lower.contains("<style"), "no inline style: {}", page.body);
    assert_eq!(page.body.matches("this device").count(), 1, "{}", page.body);
    assert!(page.body.contains("Chrome on macOS (desktop)"));
    assert!(page.body.contains("Safari on iOS (mobile)"));
    assert!(
        page.body
            .contains(&format!("/account/sessions/{phone_sid}/end"))
    );
    assert!(page.body.contains("/account/sessions/end-others"));
    assert_eq!(
        page.hidden_inputs()["csrf_token"],
        list["csrf_token"].as_str().unwrap()
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    // Without a session: 401 for JSON, the login page for HTML.
    let anon = Device::new(&oidc, None);
    assert_eq!(anon.sessions().await.0, 401);
    let page = anon.browser.get(&oidc.url("/account/sessions")).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), Some("/login"));
}

// ---------------------------------------------------------------------------
// 3. Ending sessions

async fn ending_one_session_kills_its_tokens_at_once(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let shop = oidc
        .code_client("shop", "openid profile", &["--first-party"])
        .await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let laptop = Device::new(&oidc, Some(CHROME_MAC));
    let phone = Device::new(&oidc, Some(SAFARI_IPHONE));
    let tablet = Device::new(&oidc, None);
    let bobs = Device::new(&oidc, None);
    let t_laptop = laptop.tokens(&oidc, &shop, "alice", "openid profile").await;
    let t_phone = phone.tokens(&oidc, &shop, "alice", "openid profile").await;
    let t_tablet = tablet.tokens(&oidc, &shop, "alice", "openid profile").await;
    let t_bob = bobs.tokens(&oidc, &shop, "bob", "openid profile").await;
    let (laptop_sid, phone_sid, tablet_sid, bob_sid) = (
        laptop.sid().await,
        phone.sid().await,
        tablet.sid().await,
        bobs.sid().await,
    );
    let alice_id = sub_of(&oidc, &t_laptop.access).await;
    let csrf = laptop.csrf().await;
    let phone_end = format!("/account/sessions/{phone_sid}/end");

    // Without the CSRF token, or with a wrong one: 403, nothing ends.
    let r = laptop.post_json(&phone_end, None, &[]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = laptop
        .post_json(&phone_end, Some("AAAAAAAAAAAAAAAAAAAAAA"), &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Another user's session: 404, and it stays alive.
    let r = laptop
        .post_json(
            &format!("/account/sessions/{bob_sid}/end"),
            Some(&csrf),
            &[],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = laptop
        .post_json(
            "/account/sessions/AAAAAAAAAAAAAAAAAAAAAA/end",
            Some(&csrf),
            &[],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_tokens_alive(&oidc, &gw, &t_phone, "phone after refused ends").await;
    assert_tokens_alive(
        &oidc,
        &gw,
        &t_bob,
        "bob after alice tried to end his session",
    )
    .await;
    assert!(session_row(&oidc, &bob_sid).await.1.is_none());
    assert_eq!(bobs.sessions().await.0, 200);

    // End the phone (CSRF in the header): its tokens die at once.
    let r = laptop.post_json(&phone_end, Some(&csrf), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // No x-request-id was sent: the audit row carries the one we answered with.
    let phone_request_id = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(!phone_request_id.is_empty());
    assert_tokens_dead(&oidc, &gw, &shop, &t_phone, "ended phone session").await;
    assert_eq!(phone.sessions().await.0, 401, "the phone's cookie is dead");
    // The rest are untouched.
    assert_tokens_alive(&oidc, &gw, &t_laptop, "laptop").await;
    assert_tokens_alive(&oidc, &gw, &t_tablet, "tablet").await;
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob").await;

    // End the tablet through the HTML form (CSRF as a form field).
    let r = laptop
        .browser
        .post_form(
            &format!("/account/sessions/{tablet_sid}/end"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), Some("/account/sessions"));
    assert_tokens_dead(&oidc, &gw, &shop, &t_tablet, "ended tablet session").await;

    // The list shows who ended them.
    let list = laptop.list().await;
    for sid in [&phone_sid, &tablet_sid] {
        let i = item(&list, sid);
        assert_eq!(i["state"], "ended", "{i}");
        assert_eq!(i["ended_by"], "user", "{i}");
        assert!(
            i["end_reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{i}"
        );
        assert_rfc3339(&i["ended_at"], "ended_at");
    }
    assert_eq!(item(&list, &laptop_sid)["state"], "active");

    // Audited, with alice (and her current session) as the actor.
    let rows = audit_rows(&oidc).await;
    for sid in [&phone_sid, &tablet_sid] {
        let found = audit_for(&rows, "session.end", sid);
        assert_eq!(found.len(), 1, "one session.end row for {sid}");
        assert_eq!(found[0]["actor"]["kind"], "user");
        assert_eq!(found[0]["actor"]["id"], alice_id.as_str());
        assert_eq!(found[0]["actor"]["session"], laptop_sid.as_str());
        assert_eq!(found[0]["before"]["session"]["state"], "active");
        assert_eq!(found[0]["after"]["state"], "ended");
    }
    assert_eq!(
        audit_for(&rows, "session.end", &phone_sid)[0]["request_id"],
        phone_request_id.as_str()
    );
    assert!(audit_for(&rows, "session.end", &bob_sid).is_empty());

    // Ending this device's own session signs it out (cookie cleared).
    let r = laptop
        .post_json(
            &format!("/account/sessions/{laptop_sid}/end"),
            Some(&csrf),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(clears_session_cookie(&r), "{:?}", r.headers);
    assert_eq!(laptop.sessions().await.0, 401);
    assert_tokens_dead(&oidc, &gw, &shop, &t_laptop, "own session ended").await;
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob at the end").await;
}

async fn ending_all_other_sessions_keeps_this_one(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let shop = oidc
        .code_client("shop", "openid profile", &["--first-party"])
        .await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let laptop = Device::new(&oidc, Some(CHROME_MAC));
    let phone = Device::new(&oidc, Some(SAFARI_IPHONE));
    let tablet = Device::new(&oidc, None);
    let bobs = Device::new(&oidc, None);
    let t_laptop = laptop.tokens(&oidc, &shop, "alice", "openid").await;
    let t_phone = phone.tokens(&oidc, &shop, "alice", "openid").await;
    let t_tablet = tablet.tokens(&oidc, &shop, "alice", "openid").await;
    let t_bob = bobs.tokens(&oidc, &shop, "bob", "openid").await;
    let laptop_sid = laptop.sid().await;
    let laptop_cookie = laptop.session_cookie();

    // Without CSRF: refused, nothing ends.
    let r = laptop
        .post_json("/account/sessions/end-others", None, &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_tokens_alive(&oidc, &gw, &t_phone, "phone after refused end-others").await;

    let csrf = laptop.csrf().await;
    let r = laptop
        .post_json("/account/sessions/end-others", Some(&csrf), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["ended"], 2);
    assert_tokens_dead(&oidc, &gw, &shop, &t_phone, "phone").await;
    assert_tokens_dead(&oidc, &gw, &shop, &t_tablet, "tablet").await;
    assert_eq!(phone.sessions().await.0, 401);
    assert_eq!(tablet.sessions().await.0, 401);
    // This device and other users are untouched.
    assert_tokens_alive(&oidc, &gw, &t_laptop, "this device").await;
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob").await;
    assert_eq!(laptop.session_cookie(), laptop_cookie);
    let list = laptop.list().await;
    let states: HashMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states.len(), 3);
    assert_eq!(states[&laptop_sid], "active");
    assert_eq!(
        states.values().filter(|s| *s == "ended").count(),
        2,
        "{list}"
    );
    assert_eq!(bobs.sessions().await.0, 200);
}

// ---------------------------------------------------------------------------
// 4. Password change

async fn password_change_ends_every_other_session(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let shop = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let laptop = Device::new(&oidc, Some(CHROME_MAC));
    let phone = Device::new(&oidc, Some(SAFARI_IPHONE));
    let tablet = Device::new(&oidc, None);
    let bobs = Device::new(&oidc, None);
    let t_laptop = laptop.tokens(&oidc, &shop, "alice", "openid").await;
    let t_phone = phone.tokens(&oidc, &shop, "alice", "openid").await;
    let t_tablet = tablet.tokens(&oidc, &shop, "alice", "openid").await;
    let t_bob = bobs.tokens(&oidc, &shop, "bob", "openid").await;
    let laptop_sid = laptop.sid().await;
    let (phone_sid, tablet_sid) = (phone.sid().await, tablet.sid().await);
    let old_cookie = laptop.session_cookie();
    let csrf = laptop.csrf().await;

    // Wrong current password: 403, nothing changes.
    let r = laptop
        .post_json(
            "/account/password",
            Some(&csrf),
            &[
                ("current_password", "not the password at all"),
                ("new_password", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Without CSRF: 403.
    let r = laptop
        .post_json(
            "/account/password",
            None,
            &[
                ("current_password", PASSWORD),
                ("new_password", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_tokens_alive(&oidc, &gw, &t_phone, "phone after refused changes").await;
    assert_eq!(laptop.session_cookie(), old_cookie);
    let extra = Device::new(&oidc, None);
    assert_eq!(
        extra.login("alice", PASSWORD).await.status,
        303,
        "the old password still works after refused changes"
    );

    // The change: every other session ends; this one stays, re-keyed.
    let r = laptop
        .post_json(
            "/account/password",
            Some(&csrf),
            &[
                ("current_password", PASSWORD),
                ("new_password", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["changed"], true, "{body}");
    assert_eq!(
        body["sessions_ended"], 3,
        "phone, tablet and the extra login: {body}"
    );
    let set = session_set_cookie(&r);
    let new_cookie = laptop.session_cookie();
    assert!(set.contains(&new_cookie));
    assert_ne!(
        new_cookie, old_cookie,
        "the cookie secret is rotated at a password change"
    );
    assert_eq!(sessions_with_cookie(&oidc, &old_cookie).await.0, 401);
    assert_eq!(laptop.sid().await, laptop_sid, "this session continues");
    assert_tokens_alive(&oidc, &gw, &t_laptop, "this device").await;
    assert_tokens_dead(&oidc, &gw, &shop, &t_phone, "phone").await;
    assert_tokens_dead(&oidc, &gw, &shop, &t_tablet, "tablet").await;
    assert_eq!(extra.sessions().await.0, 401);
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob").await;

    // The old password no longer logs in; the new one does.
    let r = Device::new(&oidc, None).login("alice", PASSWORD).await;
    assert_eq!(r.status, 401, "old password must fail");
    let r = Device::new(&oidc, None).login("alice", NEW_PASSWORD).await;
    assert_eq!(r.status, 303, "new password works: {}", r.body);

    // Audited.
    let rows = audit_rows(&oidc).await;
    assert!(rows.iter().any(|r| r["action"] == "user.password_change"));
    for sid in [&phone_sid, &tablet_sid] {
        let found = audit_for(&rows, "session.end", sid);
        assert_eq!(found.len(), 1, "{sid}");
        assert_eq!(found[0]["reason"], "password changed");
    }
    assert!(audit_for(&rows, "session.end", &laptop_sid).is_empty());
}

// ---------------------------------------------------------------------------
// 5. Timeouts

async fn idle_timeout_ends_the_session_and_its_tokens(backend: Backend) {
    const IDLE: i64 = 3;
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_SESSIONS_IDLE_TIMEOUT", "3s")]).await;
    let gw = gateway(&oidc).await;
    let shop = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    let idle = Device::new(&oidc, None);
    let busy = Device::new(&oidc, None);
    let t_idle = idle.tokens(&oidc, &shop, "alice", "openid").await;
    let mut t_busy = busy.tokens(&oidc, &shop, "alice", "openid").await;
    let idle_sid = idle.sid().await;
    let busy_sid = busy.sid().await;
    let (_, idle_last_seen) = session_times(&oidc, &idle_sid).await;

    // The busy session refreshes twice a second (activity); the idle one
    // does nothing until it is ended. Until then, introspection may call
    // its token active only while the session is within its idle timeout
    // by the server's own clock (the `Date` of the answer).
    let start = std::time::Instant::now();
    loop {
        let r = oidc.refresh(&shop, &t_busy.refresh).await;
        assert_eq!(
            r.status, 200,
            "an active session must not time out: {}",
            r.text
        );
        t_busy.refresh = r.str("refresh_token");
        t_busy.access = r.str("access_token");
        let (body, server_now) = introspect_dated(&oidc, &gw, &t_idle.access).await;
        if body == INACTIVE && session_row(&oidc, &idle_sid).await.1.is_some() {
            break;
        }
        assert!(
            body == INACTIVE || server_now <= idle_last_seen + IDLE + 1,
            "introspection still answers active at {server_now} for a session last seen at \
             {idle_last_seen} with a {IDLE}s idle timeout: the timeout is not enforced per request"
        );
        assert!(
            start.elapsed() < SLOW,
            "the idle session was not ended by the sweeper"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, ended_at, ended_by, reason) = session_row(&oidc, &idle_sid).await;
    assert!(ended_at.is_some());
    assert_eq!(ended_by.as_deref(), Some("system"));
    assert_eq!(reason.as_deref(), Some("idle timeout"));
    assert!(
        session_row(&oidc, &busy_sid).await.1.is_none(),
        "the busy session lives"
    );
    assert_tokens_dead(&oidc, &gw, &shop, &t_idle, "idle session").await;
    assert_eq!(idle.sessions().await.0, 401);

    // Left alone, the busy one ends too.
    let ended = eventually(SLOW, || async {
        introspect_raw(&oidc, &gw, &t_busy.access).await == INACTIVE
    })
    .await;
    assert!(ended, "the second session was not ended after going idle");
    let (_, _, ended_by, reason) = session_row(&oidc, &busy_sid).await;
    assert_eq!(ended_by.as_deref(), Some("system"));
    assert_eq!(reason.as_deref(), Some("idle timeout"));

    let rows = audit_rows(&oidc).await;
    for sid in [&idle_sid, &busy_sid] {
        let found = audit_for(&rows, "session.expire", sid);
        assert_eq!(found.len(), 1, "{sid}");
        assert_eq!(found[0]["actor"]["kind"], "system");
        assert_eq!(found[0]["reason"], "idle timeout");
    }
}

async fn absolute_timeout_ends_the_session_despite_activity(backend: Backend) {
    const ABSOLUTE: i64 = 4;
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_SESSIONS_IDLE_TIMEOUT", "4s"),
            ("PORTCULLIS_SESSIONS_ABSOLUTE_TIMEOUT", "4s"),
        ],
    )
    .await;
    let gw = gateway(&oidc).await;
    let shop = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    let device = Device::new(&oidc, None);
    let mut t = device.tokens(&oidc, &shop, "alice", "openid").await;
    let sid = device.sid().await;
    let (created_at, _) = session_times(&oidc, &sid).await;

    // Constant activity cannot keep the session past its absolute lifetime:
    // no refresh is granted once it is over by the server's own clock.
    let start = std::time::Instant::now();
    let refused = loop {
        let r = oidc.refresh(&shop, &t.refresh).await;
        if r.status != 200 {
            break r;
        }
        let server_now = http_date(&r.headers);
        assert!(
            server_now <= created_at + ABSOLUTE + 1,
            "a refresh was granted at {server_now} for a session created at {created_at} \
             with a {ABSOLUTE}s absolute timeout: the timeout is not enforced per request"
        );
        t.refresh = r.str("refresh_token");
        t.access = r.str("access_token");
        assert!(
            start.elapsed() < SLOW,
            "the session outlived its absolute timeout"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        (refused.status, refused.json["error"].as_str()),
        (400, Some("invalid_grant")),
        "{}",
        refused.text
    );
    // Ended by the sweeper (or by the refused request itself).
    let swept = eventually(SLOW, || async {
        session_row(&oidc, &sid).await.1.is_some()
    })
    .await;
    assert!(swept, "the session was not marked ended");
    let (_, _, ended_by, reason) = session_row(&oidc, &sid).await;
    assert_eq!(ended_by.as_deref(), Some("system"));
    assert_eq!(reason.as_deref(), Some("absolute timeout"));
    assert_eq!(introspect_raw(&oidc, &gw, &t.access).await, INACTIVE);
    assert_eq!(oidc.userinfo(&t.access).await.status, 401);
    assert_eq!(device.sessions().await.0, 401);
    let rows = audit_rows(&oidc).await;
    let found = audit_for(&rows, "session.expire", &sid);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["reason"], "absolute timeout");
}

// ---------------------------------------------------------------------------
// 6. RP-initiated logout and back-channel logout

async fn rp_initiated_logout_redirects_and_notifies_the_client(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let receiver = Receiver::start(0, 0).await;
    let gw = gateway(&oidc).await;
    let rp = rp_client(&oidc, &receiver.url).await;
    oidc.user("alice").await;
    let device = Device::new(&oidc, Some(CHROME_MAC));
    let t = device.tokens(&oidc, &rp, "alice", "openid profile").await;
    let sid = device.sid().await;
    let (_, id_claims) = oidc.verify_jwt(&t.id_token).await;
    assert_eq!(
        id_claims["sid"],
        sid.as_str(),
        "the id_token names the session"
    );
    let logout_url = |redirect: &str| {
        let mut u = url::Url::parse(&oidc.url("/logout")).unwrap();
        u.query_pairs_mut()
            .append_pair("id_token_hint", &t.id_token)
            .append_pair("post_logout_redirect_uri", redirect)
            .append_pair("state", "xyz");
        u.to_string()
    };

    // A post_logout_redirect_uri that is not registered (exactly): a 400
    // page, no redirect, and the session lives on.
    for wrong in [
        "https://evil.example/",
        "https://rp.example/logged-out/",
        "https://rp.example/logged-out?x=1",
        "https://RP.example/logged-out",
    ] {
        let page = device.browser.get(&logout_url(wrong)).await;
        assert_eq!(page.status, 400, "{wrong}: {}", page.body);
        assert!(page.location().is_none(), "{wrong}: never redirected");
        assert!(!page.body.contains("evil.example"));
    }
    assert_tokens_alive(&oidc, &gw, &t, "after refused logouts").await;
    assert_eq!(device.sessions().await.0, 200);

    // The real thing.
    let page = device
        .browser
        .get(&logout_url("https://rp.example/logged-out"))
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let location = url::Url::parse(page.location().unwrap()).unwrap();
    assert_eq!(
        location.as_str().split('?').next().unwrap(),
        "https://rp.example/logged-out"
    );
    let q = crate::oauth::flow::query(&location);
    assert_eq!(q.get("state").map(String::as_str), Some("xyz"));
    assert!(clears_session_cookie(&page), "{:?}", page.headers);
    assert_eq!(device.sessions().await.0, 401);
    assert_tokens_dead(&oidc, &gw, &rp, &t, "logged-out session").await;
    let (_, _, ended_by, _) = session_row(&oidc, &sid).await;
    assert_eq!(ended_by.as_deref(), Some("logout"));

    // The client hears about it on the back channel.
    let got = eventually(SLOW, || async { !receiver.logout_tokens().is_empty() }).await;
    assert!(got, "no back-channel logout arrived");
    let tokens = receiver.logout_tokens();
    assert_eq!(tokens.len(), 1);
    let claims = assert_logout_token(&oidc, &tokens[0], "rp", &sid).await;
    assert_eq!(claims["sub"], id_claims["sub"]);
    let rows = audit_rows(&oidc).await;
    assert_eq!(audit_for(&rows, "session.logout", &sid).len(), 1);

    // Without id_token_hint (or with a hint for another session): a
    // confirmation page; the session lives until the form is posted.
    let device2 = Device::new(&oidc, None);
    let t2 = device2.tokens(&oidc, &rp, "alice", "openid").await;
    let sid2 = device2.sid().await;
    for url in [oidc.url("/logout"), {
        let mut u = url::Url::parse(&oidc.url("/logout")).unwrap();
        u.query_pairs_mut()
            .append_pair("id_token_hint", &t.id_token);
        u.to_string()
    }] {
        let page = device2.browser.get(&url).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        assert!(page.body.contains("<form"), "{}", page.body);
        assert!(page.body.contains("action=\"/logout\""), "{}", page.body);
        assert!(!clears_session_cookie(&page));
        assert_tokens_alive(&oidc, &gw, &t2, "after the confirmation page").await;
    }
    let page = device2.browser.get(&oidc.url("/logout")).await;
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    // A POST without the token (a cross-site form) is refused.
    let r = device2.browser.post_form("/logout", &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_tokens_alive(&oidc, &gw, &t2, "after a logout POST without CSRF").await;
    let r = device2
        .browser
        .post_form("/logout", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(clears_session_cookie(&r));
    assert_tokens_dead(&oidc, &gw, &rp, &t2, "confirmed logout").await;
    assert_eq!(device2.sessions().await.0, 401);
    let got = eventually(SLOW, || async { receiver.logout_tokens().len() == 2 }).await;
    assert!(got, "the second logout was not delivered");
    assert_logout_token(&oidc, &receiver.logout_tokens()[1], "rp", &sid2).await;
}

async fn backchannel_logout_is_retried_until_delivered(backend: Backend) {
    let env = [("PORTCULLIS_OUTBOX_RETRY_BASE", "1s")];
    let oidc = Oidc::start_with(backend, &env).await;
    // Answers 500 once, then 200.
    let receiver = Receiver::start(0, 1).await;
    let bystander = Receiver::start(0, 0).await;
    let gw = gateway(&oidc).await;
    let rp = rp_client(&oidc, &receiver.url).await;
    // A client with a back-channel URI that got no tokens in the session.
    oidc.code_client(
        "other",
        "openid",
        &["--first-party", "--backchannel-logout-uri", &bystander.url],
    )
    .await;
    oidc.user("alice").await;
    let device = Device::new(&oidc, None);
    let t = device.tokens(&oidc, &rp, "alice", "openid").await;
    let sid = device.sid().await;
    let csrf = device.csrf().await;
    let r = device
        .post_json(&format!("/account/sessions/{sid}/end"), Some(&csrf), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_tokens_dead(&oidc, &gw, &rp, &t, "ended session").await;

    let delivered = eventually(SLOW, || async {
        outbox_rows(&oidc)
            .await
            .first()
            .is_some_and(|r| r.2.is_some())
    })
    .await;
    assert!(delivered, "not delivered: {:?}", outbox_rows(&oidc).await);
    let rows = outbox_rows(&oidc).await;
    assert_eq!(rows.len(), 1, "one message, for rp only: {rows:?}");
    let (client_id, attempts, delivered_at, failed_at, _) = &rows[0];
    assert_eq!(client_id.as_deref(), Some("rp"));
    assert!(*attempts >= 2, "the failed attempt counts: {rows:?}");
    assert!(delivered_at.is_some() && failed_at.is_none());
    assert!(receiver.attempts() >= 2);
    let tokens = receiver.logout_tokens();
    assert_eq!(tokens.len(), 1);
    assert_logout_token(&oidc, &tokens[0], "rp", &sid).await;
    assert_eq!(
        bystander.attempts(),
        0,
        "clients without tokens in the session are not told"
    );
    assert_eq!(
        oidc.metric("portcullis_outbox_delivered_total").await,
        Some(1.0)
    );
    assert!(
        oidc.metric("portcullis_outbox_attempt_failures_total")
            .await
            .is_some_and(|n| n >= 1.0)
    );
}

async fn backchannel_logout_survives_a_server_restart(backend: Backend) {
    let env = [("PORTCULLIS_OUTBOX_RETRY_BASE", "1s")];
    let oidc = Oidc::start_with(backend, &env).await;
    // Nobody listens here yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/backchannel");
    let gw = gateway(&oidc).await;
    let rp = rp_client(&oidc, &url).await;
    oidc.user("alice").await;
    let device = Device::new(&oidc, None);
    let t = device.tokens(&oidc, &rp, "alice", "openid").await;
    let sid = device.sid().await;
    let csrf = device.csrf().await;
    let r = device
        .post_json(&format!("/account/sessions/{sid}/end"), Some(&csrf), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // At least one attempt failed (connection refused) and was recorded.
    let tried = eventually(SLOW, || async {
        outbox_rows(&oidc)
            .await
            .first()
            .is_some_and(|r| r.1 >= 1 && r.4.is_some())
    })
    .await;
    assert!(
        tried,
        "no failed attempt recorded: {:?}",
        outbox_rows(&oidc).await
    );
    assert!(outbox_rows(&oidc).await[0].2.is_none());

    // Restart the server; the receiver comes up while it is down.
    let mut receiver = None;
    let oidc = restart(oidc, &env, async {
        receiver = Some(Receiver::start(port, 0).await);
    })
    .await;
    let receiver = receiver.unwrap();
    let delivered = eventually(Duration::from_secs(120), || async {
        !receiver.logout_tokens().is_empty()
    })
    .await;
    assert!(
        delivered,
        "not delivered after restart: {:?}",
        outbox_rows(&oidc).await
    );
    assert_logout_token(&oidc, &receiver.logout_tokens()[0], "rp", &sid).await;
    let marked = eventually(SLOW, || async { outbox_rows(&oidc).await[0].2.is_some() }).await;
    assert!(marked, "{:?}", outbox_rows(&oidc).await);
    // The tokens stay dead across the restart.
    assert_tokens_dead(&oidc, &gw, &rp, &t, "after restart").await;
}

async fn backchannel_logout_failure_is_audited_and_counted(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_OUTBOX_RETRY_BASE", "1s"),
            ("PORTCULLIS_OUTBOX_MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let receiver = Receiver::start(0, usize::MAX).await;
    let rp = rp_client(&oidc, &receiver.url).await;
    oidc.user("alice").await;
    let device = Device::new(&oidc, None);
    device.tokens(&oidc, &rp, "alice", "openid").await;
    let sid = device.sid().await;
    let csrf = device.csrf().await;
    let r = device
        .post_json(&format!("/account/sessions/{sid}/end"), Some(&csrf), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let failed = eventually(SLOW, || async {
        outbox_rows(&oidc)
            .await
            .first()
            .is_some_and(|r| r.3.is_some())
    })
    .await;
    assert!(
        failed,
        "with PORTCULLIS_OUTBOX_MAX_ATTEMPTS=2 the message must be given up: {:?} (receiver saw {} attempts)",
        outbox_rows(&oidc).await,
        receiver.attempts()
    );
    let rows = outbox_rows(&oidc).await;
    let (_, attempts, delivered_at, _, last_error) = &rows[0];
    assert_eq!(*attempts, 2, "{rows:?}");
    assert!(delivered_at.is_none());
    assert!(
        last_error.as_deref().is_some_and(|e| e.contains("500")),
        "{rows:?}"
    );
    // No attempts after giving up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.attempts(), 2);

    let audit = audit_rows(&oidc).await;
    let row = audit
        .iter()
        .find(|r| r["action"] == "outbox.delivery_failed")
        .unwrap_or_else(|| panic!("no outbox.delivery_failed audit row"));
    assert_eq!(row["target"], "client:rp");
    assert_eq!(row["after"]["attempts"], 2);
    assert_eq!(row["after"]["target_url"], receiver.url.as_str());
    assert_eq!(
        oidc.metric("portcullis_outbox_failed_total").await,
        Some(1.0)
    );
    assert_eq!(
        oidc.metric("portcullis_outbox_delivered_total").await,
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------
// 7. Admin API

async fn admin_lists_and_filters_sessions(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let shop = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let laptop = Device::new(&oidc, Some(CHROME_MAC));
    let phone = Device::new(&oidc, Some(SAFARI_IPHONE));
    let bobs = Device::new(&oidc, None);
    laptop.tokens(&oidc, &shop, "alice", "openid").await;
    assert_eq!(phone.login("alice", PASSWORD).await.status, 303);
    bobs.tokens(&oidc, &shop, "bob", "openid").await;
    let (laptop_sid, phone_sid, bob_sid) =
        (laptop.sid().await, phone.sid().await, bobs.sid().await);
    let token = staff_login(&oidc, &console(&oidc).await, "sam", "support")
        .await
        .access_token;
    let (status, body) =
        admin_get(&oidc, "/admin/api/sessions?user=alice&state=active", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body),
        sorted(vec![laptop_sid.clone(), phone_sid.clone()])
    );
    assert!(
        body.as_object().unwrap().contains_key("next_page"),
        "{body}"
    );
    assert_eq!(body["next_page"], Value::Null);
    for i in body["items"].as_array().unwrap() {
        for key in [
            "id",
            "user",
            "client_ids",
            "ip",
            "user_agent",
            "device",
            "created_at",
            "last_seen_at",
            "amr",
            "acr",
            "state",
            "ended_at",
            "ended_by",
            "end_reason",
            "ticket_id",
        ] {
            assert!(
                i.as_object().unwrap().contains_key(key),
                "{key} missing in {i}"
            );
        }
        assert_eq!(i["user"], "alice");
        assert_eq!(i["ip"], "127.0.0.1");
        assert_eq!(i["amr"], json!(["pwd"]));
        assert!(i["acr"].as_str().is_some_and(|a| !a.is_empty()), "{i}");
        assert_eq!(i["state"], "active");
        assert_rfc3339(&i["created_at"], "created_at");
        assert_rfc3339(&i["last_seen_at"], "last_seen_at");
    }
    let l = item(&body, &laptop_sid);
    assert_eq!(l["client_ids"], json!(["shop"]));
    assert_eq!(l["device"], "Chrome on macOS (desktop)");
    assert_eq!(l["user_agent"], CHROME_MAC);
    let p = item(&body, &phone_sid);
    assert_eq!(p["client_ids"], json!([]));
    assert_eq!(p["device"], "Safari on iOS (mobile)");

    // Usernames are case-insensitive.
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?user=ALICE", &token).await;
    assert_eq!(ids(&body).len(), 2, "{body}");
    // By client: only sessions that got tokens for it.
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?client=shop", &token).await;
    assert_eq!(
        ids(&body),
        sorted(vec![laptop_sid.clone(), bob_sid.clone()])
    );
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?client=shop&user=bob", &token).await;
    assert_eq!(ids(&body), vec![bob_sid.clone()]);
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?client=nobody", &token).await;
    assert_eq!(ids(&body), Vec::<String>::new());
    // By IP.
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?ip=127.0.0.1&user=alice", &token).await;
    assert_eq!(ids(&body).len(), 2);
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?ip=10.9.9.9", &token).await;
    assert_eq!(ids(&body), Vec::<String>::new());
    // No filter: everyone's, including the staff member's own session.
    let (_, body) = admin_get(&oidc, "/admin/api/sessions", &token).await;
    assert_eq!(ids(&body).len(), 4, "{body}");
    // By state.
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?state=ended", &token).await;
    assert_eq!(ids(&body), Vec::<String>::new());
    let csrf = laptop.csrf().await;
    let r = laptop
        .post_json(
            &format!("/account/sessions/{phone_sid}/end"),
            Some(&csrf),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?state=ended", &token).await;
    assert_eq!(ids(&body), vec![phone_sid.clone()]);
    let ended = item(&body, &phone_sid);
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["ended_by"], "user");
    assert_rfc3339(&ended["ended_at"], "ended_at");
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?user=alice&state=active", &token).await;
    assert_eq!(ids(&body), vec![laptop_sid.clone()]);
    // By time range (created).
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let q = |from: Option<time::OffsetDateTime>, to: Option<time::OffsetDateTime>| {
        let mut u = url::Url::parse("http://x/admin/api/sessions?user=alice").unwrap();
        if let Some(f) = from {
            u.query_pairs_mut().append_pair("from", &rfc3339(f));
        }
        if let Some(t) = to {
            u.query_pairs_mut().append_pair("to", &rfc3339(t));
        }
        format!("{}?{}", u.path(), u.query().unwrap())
    };
    let (status, body) = admin_get(&oidc, &q(Some(now - hour), Some(now + hour)), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body).len(), 2, "{body}");
    let (_, body) = admin_get(&oidc, &q(Some(now + hour), None), &token).await;
    assert_eq!(
        ids(&body),
        Vec::<String>::new(),
        "nothing created in the future"
    );
    let (_, body) = admin_get(&oidc, &q(None, Some(now - hour)), &token).await;
    assert_eq!(
        ids(&body),
        Vec::<String>::new(),
        "nothing created an hour ago"
    );
    // Paging.
    let (status, body) = admin_get(&oidc, "/admin/api/sessions?page=2", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"], json!([]));
    assert_eq!(body["next_page"], Value::Null);
    // Bad filters: 400 with {error, message}.
    for bad in [
        "/admin/api/sessions?state=zombie",
        "/admin/api/sessions?page=0",
        "/admin/api/sessions?page=two",
        "/admin/api/sessions?from=yesterday",
        "/admin/api/sessions?to=2026-13-45",
    ] {
        let (status, body) = admin_get(&oidc, bad, &token).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "{bad}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: {body}"
        );
    }
}

async fn admin_terminates_sessions_with_a_reason(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let shop = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let phone = Device::new(&oidc, Some(SAFARI_IPHONE));
    let laptop = Device::new(&oidc, Some(CHROME_MAC));
    let bobs = Device::new(&oidc, None);
    let t_phone = phone.tokens(&oidc, &shop, "alice", "openid").await;
    let t_laptop = laptop.tokens(&oidc, &shop, "alice", "openid").await;
    let t_bob = bobs.tokens(&oidc, &shop, "bob", "openid").await;
    let (phone_sid, laptop_sid) = (phone.sid().await, laptop.sid().await);
    let token = staff_login(&oidc, &console(&oidc).await, "sam", "support")
        .await
        .access_token;
    let sam_id = sub_of(&oidc, &token).await;
    let alice_id = sub_of(&oidc, &t_phone.access).await;
    let terminate = format!("/admin/api/sessions/{phone_sid}/terminate");

    // A reason is required: 400 {error, message}, nothing ends.
    for body in [
        json!({}),
        json!({"ticket_id": "INC-1"}),
        json!({"reason": "   "}),
    ] {
        let (status, resp) = admin_post(&oidc, &terminate, &token, body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"], "invalid_request");
        assert!(
            resp["message"].as_str().unwrap().contains("reason"),
            "{resp}"
        );
    }
    let (status, _, resp) =
        admin_call(&oidc, reqwest::Method::POST, &terminate, Some(&token), None).await;
    assert_eq!(status, 400, "no body: {resp}");
    assert_tokens_alive(&oidc, &gw, &t_phone, "after refused terminations").await;
    // Unknown session: 404.
    let (status, _) = admin_post(
        &oidc,
        "/admin/api/sessions/AAAAAAAAAAAAAAAAAAAAAA/terminate",
        &token,
        json!({"reason": "x"}),
    )
    .await;
    assert_eq!(status, 404);

    let (status, resp) = admin_post(
        &oidc,
        &terminate,
        &token,
        json!({"reason": "stolen phone", "ticket_id": "INC-1"}),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["id"], phone_sid.as_str());
    assert_eq!(resp["user"], "alice");
    assert_eq!(resp["state"], "ended");
    assert_eq!(resp["ended_by"], "support");
    assert_eq!(resp["end_reason"], "stolen phone");
    assert_eq!(resp["ticket_id"], "INC-1");
    assert_tokens_dead(&oidc, &gw, &shop, &t_phone, "terminated by support").await;
    assert_eq!(phone.sessions().await.0, 401);
    assert_tokens_alive(&oidc, &gw, &t_laptop, "alice's other session").await;
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob").await;

    // Alice sees who ended it and why.
    let list = laptop.list().await;
    let i = item(&list, &phone_sid);
    assert_eq!(i["state"], "ended");
    assert_eq!(i["ended_by"], "support");
    assert_eq!(i["end_reason"], "stolen phone");
    let page = laptop.browser.get(&oidc.url("/account/sessions")).await;
    assert!(
        page.body.contains("ended by support: stolen phone"),
        "{}",
        page.body
    );
    // Staff see it among the ended ones.
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?user=alice&state=ended", &token).await;
    let i = item(&body, &phone_sid);
    assert_eq!(i["ended_by"], "support");
    assert_eq!(i["ticket_id"], "INC-1");

    // Twice: 409.
    let (status, resp) = admin_post(&oidc, &terminate, &token, json!({"reason": "again"})).await;
    assert_eq!(status, 409, "{resp}");

    // Audited with the staff member, reason, ticket and before/after.
    let rows = audit_rows(&oidc).await;
    let found = audit_for(&rows, "session.terminate", &phone_sid);
    assert_eq!(found.len(), 1, "exactly one row (the 409 wrote none)");
    let row = found[0];
    assert_eq!(row["actor"]["kind"], "user");
    assert_eq!(row["actor"]["id"], sam_id.as_str());
    assert_eq!(row["reason"], "stolen phone");
    assert_eq!(row["ticket_id"], "INC-1");
    assert_eq!(row["before"]["session"]["state"], "active");
    assert_eq!(row["before"]["user_id"], alice_id.as_str());
    assert_eq!(row["after"]["state"], "ended");
    assert_eq!(row["after"]["ended_by"], "support");

    // All of alice's sessions.
    let (status, resp) = admin_post(
        &oidc,
        "/admin/api/users/alice/sessions/terminate",
        &token,
        json!({"reason": "account compromised", "ticket_id": "INC-2"}),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["terminated"], 1, "{resp}");
    assert_eq!(resp["session_ids"], json!([laptop_sid.clone()]));
    assert_tokens_dead(&oidc, &gw, &shop, &t_laptop, "all of alice's").await;
    assert_eq!(laptop.sessions().await.0, 401);
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob after alice's were terminated").await;
    let (_, body) = admin_get(&oidc, "/admin/api/sessions?user=alice&state=active", &token).await;
    assert_eq!(body["items"], json!([]));
    let rows = audit_rows(&oidc).await;
    let found = audit_for(&rows, "session.terminate", &laptop_sid);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["reason"], "account compromised");
    assert_eq!(found[0]["ticket_id"], "INC-2");
    assert_eq!(found[0]["actor"]["id"], sam_id.as_str());
    // Reason required there too; unknown users are 404.
    let (status, _) = admin_post(
        &oidc,
        "/admin/api/users/bob/sessions/terminate",
        &token,
        json!({"ticket_id": "INC-3"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_tokens_alive(&oidc, &gw, &t_bob, "bob after a reasonless request").await;
    let (status, _) = admin_post(
        &oidc,
        "/admin/api/users/nobody/sessions/terminate",
        &token,
        json!({"reason": "x"}),
    )
    .await;
    assert_eq!(status, 404);
}

async fn admin_api_checks_authentication_and_permissions(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    // Not first-party: the user is asked for consent, and its tokens carry
    // no staff authority.
    let shop = oidc.code_client("shop", "openid", &[]).await;
    oidc.user("alice").await;
    let device = Device::new(&oidc, None);
    let t_alice = device.tokens(&oidc, &shop, "alice", "openid").await;
    let sid = device.sid().await;
    let terminate = format!("/admin/api/sessions/{sid}/terminate");
    let reason = json!({"reason": "testing permissions"});
    let console = console(&oidc).await;
    let sam = staff_login(&oidc, &console, "sam", "support").await;
    let support = sam.access_token.clone();
    let auditor = staff_login(&oidc, &console, "audrey", "auditor")
        .await
        .access_token;

    // No token / a bad token: 401 with a Bearer challenge.
    for token in [
        None,
        Some("pct_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some("garbage"),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/admin/api/sessions"),
            (reqwest::Method::POST, terminate.as_str()),
        ] {
            let body = (method == reqwest::Method::POST).then(|| reason.clone());
            let (status, headers, resp) = admin_call(&oidc, method, path, token, body).await;
            assert_eq!(status, 401, "{path} {token:?}: {resp}");
            let challenge = headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{challenge:?}");
        }
    }

    // A staff member without the permission: 403 naming it; nothing changes.
    let (status, resp) = admin_get(&oidc, "/admin/api/sessions", &auditor).await;
    assert_eq!(status, 403, "{resp}");
    assert!(
        resp["message"].as_str().unwrap().contains("sessions:read"),
        "{resp}"
    );
    let (status, resp) = admin_post(&oidc, &terminate, &auditor, reason.clone()).await;
    assert_eq!(status, 403, "{resp}");
    assert!(
        resp["message"]
            .as_str()
            .unwrap()
            .contains("sessions:terminate"),
        "{resp}"
    );
    let (status, resp) = admin_post(
        &oidc,
        "/admin/api/users/alice/sessions/terminate",
        &auditor,
        reason.clone(),
    )
    .await;
    assert_eq!(status, 403, "{resp}");
    assert_tokens_alive(&oidc, &gw, &t_alice, "after the auditor's attempts").await;
    assert!(session_row(&oidc, &sid).await.1.is_none());

    // The right role and a second factor, but a token from a client that
    // is not first-party.
    let req = AuthRequest::new(&shop, "openid");
    let done = sam.browser.authorize(&req, None).await;
    let from_shop = oidc
        .exchange_code(&shop, &done.code(), &req.pkce.verifier)
        .await
        .str("access_token");
    let (status, resp) = admin_post(&oidc, &terminate, &from_shop, reason.clone()).await;
    assert_eq!(status, 403, "{resp}");
    assert!(
        resp["message"].as_str().unwrap().contains("first-party"),
        "{resp}"
    );
    let (status, _) = admin_get(&oidc, "/admin/api/sessions", &from_shop).await;
    assert_eq!(status, 403);
    // The right role and client, but signed in with a password only: staff
    // need a second factor (RFC 9470 challenge).
    oidc.user("pat").await;
    oidc.env
        .cli(&["role", "grant", "--username", "pat", "--role", "support"])
        .await
        .assert_ok();
    let pat = oidc.login_and_redeem(&console, "pat", "openid").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    for (method, path) in [
        (reqwest::Method::GET, "/admin/api/sessions"),
        (reqwest::Method::POST, terminate.as_str()),
    ] {
        let body = (method == reqwest::Method::POST).then(|| reason.clone());
        let (status, headers, resp) = admin_call(&oidc, method, path, Some(&pat), body).await;
        assert_eq!(status, 401, "{path}: {resp}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("insufficient_user_authentication"),
            "{challenge}"
        );
    }
    assert_tokens_alive(&oidc, &gw, &t_alice, "after the shop token's attempt").await;
    // A client-credentials token of a first-party client is nobody.
    let robot = oidc
        .client("robot", &["--grant", "client_credentials", "--first-party"])
        .await;
    let robot_token = oidc
        .client_credentials(&robot, None)
        .await
        .str("access_token");
    let (status, _) = admin_get(&oidc, "/admin/api/sessions", &robot_token).await;
    assert_eq!(status, 401);

    // The admin API is not on the public listener.
    let resp = oidc
        .http
        .get(oidc.url("/admin/api/sessions"))
        .bearer_auth(&support)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The support role works...
    let (status, body) = admin_get(&oidc, "/admin/api/sessions?user=alice", &support).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![sid.clone()]);
    // ...until it is revoked: permissions are the roles at the time of the call.
    oidc.env
        .cli(&["role", "revoke", "--username", "sam", "--role", "support"])
        .await
        .assert_ok();
    let (status, resp) = admin_post(&oidc, &terminate, &support, reason.clone()).await;
    assert_eq!(status, 403, "{resp}");
    assert_tokens_alive(
        &oidc,
        &gw,
        &t_alice,
        "after the revoked staff member's attempt",
    )
    .await;
    let rows = audit_rows(&oidc).await;
    assert!(
        audit_for(&rows, "session.terminate", &sid).is_empty(),
        "refused attempts end nothing and write no termination"
    );
}
