//! Issue 9: security events reach configured webhooks through the durable
//! outbox, signed with HMAC-SHA256.
//!
//! Each test runs a real HTTP receiver on 127.0.0.1 (a small axum server
//! that records every request), points `[webhooks]` at it, triggers events
//! through the real binary and its CLI, and checks what arrived: the
//! schema, the type, the audit row it came from, and the
//! `Portcullis-Signature` header, recomputed here with OpenSSL's HMAC (an
//! implementation independent of the server's). Delivery is asynchronous
//! by design, so arrivals are awaited with `eventually`; absences are
//! checked in the audit log, which is written synchronously.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::oauth::flow::{AuthRequest, Browser, ClientAuth, Oidc, PASSWORD, Page, free_port};
use crate::oauth::staff::{staff, start_totp, totp_code};
use crate::support::{Backend, TestEnv, eventually, raw_pool};

backend_tests!(
    token_replays_and_error_spikes_reach_the_webhook_signed,
    account_security_events_reach_the_webhook_signed,
    staff_and_operator_events_reach_the_webhook_signed,
    webhook_is_redelivered_after_the_receiver_was_down_and_across_a_restart,
    webhook_delivery_gives_up_after_max_attempts_and_is_counted,
    periodic_audit_verification_reports_a_break_once,
);

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec-test-5d1f0c9a7b3e";
const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

// ---------------------------------------------------------------------------
// The receiver

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    /// What the receiver answered.
    status: u16,
    signature: String,
    event_id: String,
    event_type: String,
    content_type: String,
    body: String,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone)]
struct Inbox {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
}

/// A webhook receiver on 127.0.0.1 answering every POST /hook with the
/// status it is told to.
struct Receiver {
    url: String,
    inbox: Inbox,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    axum::extract::State(inbox): axum::extract::State<Inbox>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let status = inbox.status.load(Ordering::SeqCst);
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    inbox.hits.lock().unwrap().push(Hit {
        status,
        signature: h("portcullis-signature"),
        event_id: h("portcullis-event-id"),
        event_type: h("portcullis-event-type"),
        content_type: h("content-type"),
        body,
    });
    axum::http::StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// Listens on `port` (0: any) and answers `status`.
    async fn start(port: u16, status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let inbox = Inbox {
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            inbox,
            task,
        }
    }

    fn answer(&self, status: u16) {
        self.inbox.status.store(status, Ordering::SeqCst);
    }

    fn hits(&self) -> Vec<Hit> {
        self.inbox.hits.lock().unwrap().clone()
    }

    /// Requests answered 2xx whose body has `type` = `event_type`.
    fn delivered(&self, event_type: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.delivered() && h.json()["type"] == event_type)
            .collect()
    }

    /// Waits for a delivered event of `event_type` that satisfies `pred`.
    async fn wait_for(&self, event_type: &str, pred: impl Fn(&Value) -> bool) -> Hit {
        let found = eventually(WAIT, || async {
            self.delivered(event_type).iter().any(|h| pred(&h.json()))
        })
        .await;
        let hits = self.delivered(event_type);
        assert!(
            found,
            "no matching {event_type} event arrived; received: {:#?}",
            self.hits()
        );
        hits.into_iter().find(|h| pred(&h.json())).unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Signature and schema checks

/// HMAC-SHA256 through OpenSSL, hex: independent of the server's code.
fn hmac_hex(secret: &str, message: &str) -> String {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;
    let key = PKey::hmac(secret.as_bytes()).unwrap();
    let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
    signer.update(message.as_bytes()).unwrap();
    hex::encode(signer.sign_to_vec().unwrap())
}

/// Does `Portcullis-Signature: t=…,v1=…` verify for `body` under `secret`?
fn signature_verifies(header: &str, body: &str, secret: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    v1 == hmac_hex(secret, &format!("{t}.{body}"))
}

/// Checks one delivered event: signature (and that it would not verify
/// with another secret or another body), headers, schema, and that no
/// token, secret or session cookie value is in it. Returns the body.
#[track_caller]
fn assert_event(hit: &Hit, event_type: &str, secret: &str) -> Value {
    assert!(
        signature_verifies(&hit.signature, &hit.body, secret),
        "signature {:?} does not verify for {}",
        hit.signature,
        hit.body
    );
    assert!(
        !signature_verifies(&hit.signature, &hit.body, "some-other-secret"),
        "a signature must depend on the secret"
    );
    assert!(
        !signature_verifies(&hit.signature, &format!("{} ", hit.body), secret),
        "a signature must depend on the body"
    );
    assert!(
        hit.content_type.starts_with("application/json"),
        "{}",
        hit.content_type
    );
    let v = hit.json();
    assert_eq!(v["schema"], "portcullis.security_event/v1", "{v}");
    assert_eq!(v["type"], event_type, "{v}");
    assert_eq!(hit.event_type, event_type);
    let id = v["id"].as_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is a UUID: {id}");
    assert_eq!(hit.event_id, id, "Portcullis-Event-Id is the body's id");
    let at = v["occurred_at"].as_str().expect("occurred_at");
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "occurred_at is RFC 3339: {at}"
    );
    assert!(v["audit_seq"].as_i64().is_some_and(|s| s > 0), "{v}");
    assert!(
        v["actor"]["kind"].is_string() && v["actor"]["id"].is_string(),
        "{v}"
    );
    assert!(v["details"]["audit_action"].is_string(), "{v}");
    for secret_prefix in ["pct_", "pcs_", "pcsid_", "pcb_", "pcmfa_", "pcpk_"] {
        assert!(
            !hit.body.contains(secret_prefix),
            "event carries a secret ({secret_prefix}…): {}",
            hit.body
        );
    }
    v
}

/// The audit log as the CLI exports it.
async fn audit_rows(env: &TestEnv) -> Vec<Value> {
    let out = env.cli(&["audit", "export", "--format", "jsonl"]).await;
    out.assert_ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The event names the audit row it came from, and that row has `action`.
async fn assert_from_audit_row(env: &TestEnv, event: &Value, action: &str) -> Value {
    assert_eq!(event["details"]["audit_action"], action, "{event}");
    let rows = audit_rows(env).await;
    let row = rows
        .iter()
        .find(|r| r["seq"] == event["audit_seq"])
        .unwrap_or_else(|| panic!("no audit row #{}", event["audit_seq"]))
        .clone();
    assert_eq!(row["action"], action, "{row}");
    assert_eq!(row["target"], event["target"], "{row} vs {event}");
    assert_eq!(row["actor"]["id"], event["actor"]["id"], "{row} vs {event}");
    row
}

fn count_actions(rows: &[Value], action: &str) -> usize {
    rows.iter().filter(|r| r["action"] == action).count()
}

/// Environment pointing `[webhooks]` at `url` with [`SECRET`].
fn hook_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("PORTCULLIS_WEBHOOKS_URLS".into(), url.into()),
        ("PORTCULLIS_WEBHOOKS_SECRET".into(), SECRET.into()),
        ("PORTCULLIS_WEBHOOKS_RETRY_BASE".into(), "1s".into()),
    ]
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

// ---------------------------------------------------------------------------
// Browser helpers

/// A browser with its own cookie jar, sending `user_agent` from `source`.
fn browser_from(oidc: &Oidc, source: Ipv4Addr, user_agent: Option<&str>) -> Browser {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .local_address(IpAddr::V4(source));
    if let Some(ua) = user_agent {
        builder = builder.user_agent(ua);
    }
    Browser::with_client(&oidc.issuer, builder.build().unwrap())
}

/// GET /login, then POST username and password; the POST's answer.
async fn password_login(oidc: &Oidc, browser: &Browser, username: &str, password: &str) -> Page {
    let page = browser.get(&oidc.url("/login")).await;
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    browser
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

#[track_caller]
fn assert_signed_in(page: &Page, what: &str) {
    assert_eq!(
        (page.status, page.location()),
        (303, Some("/login/done")),
        "{what}: {}",
        page.body
    );
}

fn id_token_claims(tokens: &Value) -> Value {
    let jwt = tokens["id_token"].as_str().expect("id_token");
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Disables the audit log's append-only guard, as an attacker with
/// database access could.
async fn drop_audit_guard(env: &TestEnv) {
    if env.backend.is_postgres() {
        env.raw_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
            .await
            .unwrap();
    } else {
        env.raw_sql("DROP TRIGGER audit_log_no_update")
            .await
            .unwrap();
        env.raw_sql("DROP TRIGGER audit_log_no_delete")
            .await
            .unwrap();
    }
}

/// `(id, attempts, delivered_at, failed_at, last_error)` of the queued webhooks.
type WebhookRow = (String, i64, Option<i64>, Option<i64>, Option<String>);

async fn webhook_rows(env: &TestEnv) -> Vec<WebhookRow> {
    let pool = raw_pool(&env.database_url()).await;
    let rows = sqlx::query_as::<_, WebhookRow>(
        "SELECT id, CAST(attempts AS BIGINT), delivered_at, failed_at, last_error FROM outbox \
         WHERE kind = 'security_webhook' ORDER BY created_at, id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

// ---------------------------------------------------------------------------
// Tests

/// Authorization-code replay, refresh-token reuse and a client's error
/// spike; a second endpoint with its own secret and an `events` filter
/// gets only what it asked for.
async fn token_replays_and_error_spikes_reach_the_webhook_signed(backend: Backend) {
    let all = Receiver::start(0, 200).await;
    let filtered = Receiver::start(0, 200).await;
    let endpoints =
        json!([{"url": filtered.url, "secret": "second-secret", "events": ["code_reuse"]}])
            .to_string();
    let mut env = hook_env(&all.url);
    env.push(("PORTCULLIS_WEBHOOKS_ENDPOINTS".into(), endpoints));
    // One spike per client per window: a long window keeps this independent of timing.
    env.push(("PORTCULLIS_ALERTS_ERROR_SPIKE_WINDOW".into(), "1h".into()));
    let oidc = Oidc::start_with(backend, &as_refs(&env)).await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    oidc.user("alice").await;

    // A replayed authorization code.
    let req = AuthRequest::new(&shop, "openid");
    let done = oidc
        .browser()
        .authorize(&req, Some(("alice", PASSWORD)))
        .await;
    let code = done.code();
    oidc.exchange_code(&shop, &code, &req.pkce.verifier)
        .await
        .ok();
    oidc.exchange_code(&shop, &code, &req.pkce.verifier)
        .await
        .assert_error(400, "invalid_grant");
    let hit = all.wait_for("code_reuse", |_| true).await;
    let event = assert_event(&hit, "code_reuse", SECRET);
    assert!(!hit.body.contains(&code), "the code is not in the event");
    assert_eq!(
        event["actor"],
        json!({"kind": "client", "id": "shop", "session": null, "ip": null})
    );
    assert_eq!(event["details"]["after"]["client_id"], "shop");
    assert_from_audit_row(&oidc.env, &event, "oauth.code_reuse").await;
    // The filtered endpoint got the same event, signed with its own secret.
    let second = filtered.wait_for("code_reuse", |_| true).await;
    assert_event(&second, "code_reuse", "second-secret");
    assert!(
        !signature_verifies(&second.signature, &second.body, SECRET),
        "each endpoint has its own secret"
    );
    assert_eq!(
        second.event_id, hit.event_id,
        "one event, one id, on every endpoint"
    );

    // A reused (rotated) refresh token.
    let tokens = oidc.login_and_redeem(&shop, "alice", "openid").await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    oidc.refresh(&shop, &rt1).await.ok();
    oidc.refresh(&shop, &rt1)
        .await
        .assert_error(400, "invalid_grant");
    let hit = all.wait_for("refresh_token_reuse", |_| true).await;
    let event = assert_event(&hit, "refresh_token_reuse", SECRET);
    assert!(
        !hit.body.contains(&rt1),
        "the refresh token is not in the event"
    );
    assert_eq!(event["actor"]["id"], "shop");
    assert!(
        event["target"].as_str().unwrap().starts_with("user:"),
        "{event}"
    );
    assert_from_audit_row(&oidc.env, &event, "oauth.refresh_reuse").await;

    // An error spike: 25 requests of `probe` with a wrong secret (401 each).
    let probe = oidc
        .client("probe", &["--grant", "client_credentials"])
        .await;
    let wrong = ClientAuth::Basic(probe.id.clone(), "pcs_wrong-guess".into());
    for _ in 0..25 {
        let r = oidc
            .token(&wrong, &[("grant_type", "client_credentials")])
            .await;
        assert!((400..500).contains(&r.status), "{} {}", r.status, r.text);
    }
    let hit = all
        .wait_for("client_error_spike", |e| e["target"] == "client:probe")
        .await;
    let event = assert_event(&hit, "client_error_spike", SECRET);
    let after = &event["details"]["after"];
    assert!(after["requests"].as_u64().unwrap() >= 20, "{event}");
    assert!(
        after["errors"].as_u64().unwrap() * 2 >= after["requests"].as_u64().unwrap(),
        "{event}"
    );
    assert!(!hit.body.contains("pcs_wrong-guess"));
    assert_from_audit_row(&oidc.env, &event, "security.client_error_spike").await;
    // More failures within the window raise no second spike for `probe`;
    // a spike of another client afterwards shows the queue moved on.
    for _ in 0..25 {
        oidc.token(&wrong, &[("grant_type", "client_credentials")])
            .await;
    }
    let other = ClientAuth::Post("probe-2".into(), "pcs_nope".into());
    for _ in 0..25 {
        oidc.token(&other, &[("grant_type", "client_credentials")])
            .await;
    }
    all.wait_for("client_error_spike", |e| e["target"] == "client:probe-2")
        .await;
    let rows = audit_rows(&oidc.env).await;
    let spikes: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "security.client_error_spike")
        .collect();
    assert_eq!(
        spikes
            .iter()
            .filter(|r| r["target"] == "client:probe")
            .count(),
        1,
        "at most one spike per client per window: {spikes:#?}"
    );
    // `shop` failed twice in a handful of requests: no spike.
    assert!(
        !spikes.iter().any(|r| r["target"] == "client:shop"),
        "{spikes:#?}"
    );

    // Nothing but security events reached the webhook (no user.create,
    // client.create, consent.grant …), and the filter held.
    for h in all.hits() {
        let t = h.json()["type"].as_str().unwrap().to_string();
        assert!(
            ["code_reuse", "refresh_token_reuse", "client_error_spike"].contains(&t.as_str()),
            "unexpected event {t}: {}",
            h.body
        );
    }
    assert!(
        filtered
            .hits()
            .iter()
            .all(|h| h.json()["type"] == "code_reuse"),
        "the filtered endpoint gets only code_reuse: {:#?}",
        filtered.hits()
    );
    assert_eq!(all.delivered("code_reuse").len(), 1, "delivered once");
}

/// Login from a new device and IP, a recovery code used, a lockout.
async fn account_security_events_reach_the_webhook_signed(backend: Backend) {
    let receiver = Receiver::start(0, 200).await;
    let env = hook_env(&receiver.url);
    let oidc = Oidc::start_with(backend, &as_refs(&env)).await;
    oidc.user("alice").await;
    let home = Ipv4Addr::new(127, 0, 0, 1);
    let away = Ipv4Addr::new(127, 0, 0, 2);

    // First login ever (nothing to compare with), then again from the same
    // place: no event.
    for what in ["first login", "same device"] {
        let b = browser_from(&oidc, home, Some(CHROME_WINDOWS));
        assert_signed_in(&password_login(&oidc, &b, "alice", PASSWORD).await, what);
    }
    let rows = audit_rows(&oidc.env).await;
    assert_eq!(count_actions(&rows, "security.new_device_login"), 0);
    // A device and an IP address never seen for alice.
    let b = browser_from(&oidc, away, Some(FIREFOX_LINUX));
    assert_signed_in(
        &password_login(&oidc, &b, "alice", PASSWORD).await,
        "new device",
    );
    let rows = audit_rows(&oidc.env).await;
    assert_eq!(count_actions(&rows, "security.new_device_login"), 1);
    // A new device from a known IP, and a known device from a new IP: no event.
    let b = browser_from(&oidc, away, Some(SAFARI_IPHONE));
    assert_signed_in(
        &password_login(&oidc, &b, "alice", PASSWORD).await,
        "known IP",
    );
    let b = browser_from(&oidc, Ipv4Addr::new(127, 0, 0, 3), Some(CHROME_WINDOWS));
    assert_signed_in(
        &password_login(&oidc, &b, "alice", PASSWORD).await,
        "known device",
    );
    let rows = audit_rows(&oidc.env).await;
    assert_eq!(
        count_actions(&rows, "security.new_device_login"),
        1,
        "only a device and an IP both never seen count"
    );
    let hit = receiver.wait_for("new_device_login", |_| true).await;
    let event = assert_event(&hit, "new_device_login", SECRET);
    assert_eq!(event["actor"]["kind"], "user");
    assert_eq!(event["actor"]["ip"], "127.0.0.2");
    assert_eq!(
        event["details"]["after"]["device"],
        "Firefox on Linux (desktop)"
    );
    assert_from_audit_row(&oidc.env, &event, "security.new_device_login").await;

    // A recovery code used at /login/mfa.
    oidc.user("bob").await;
    let enrolling = browser_from(&oidc, home, None);
    assert_signed_in(
        &password_login(&oidc, &enrolling, "bob", PASSWORD).await,
        "bob",
    );
    let secret = start_totp(&oidc, &enrolling).await;
    let csrf = crate::oauth::staff::csrf_of(&oidc, &enrolling).await;
    let confirm: Value = enrolling
        .http
        .post(oidc.url("/account/mfa/totp/confirm"))
        .header("accept", "application/json")
        .header("x-csrf-token", &csrf)
        .form(&[("code", totp_code(&secret, 0).as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recovery = confirm["recovery_codes"][0]
        .as_str()
        .unwrap_or_else(|| panic!("recovery codes: {confirm}"))
        .to_string();
    let b = browser_from(&oidc, home, None);
    let page = password_login(&oidc, &b, "bob", PASSWORD).await;
    assert_eq!(page.location(), Some("/login/mfa"), "{}", page.body);
    let page = b.get(&oidc.url("/login/mfa")).await;
    let csrf = page.hidden_inputs()["csrf_token"].clone();
    let page = b
        .post_form(
            "/login/mfa",
            &[("recovery_code", recovery.as_str()), ("csrf_token", &csrf)],
        )
        .await;
    assert_signed_in(&page, "recovery code");
    let hit = receiver.wait_for("recovery_code_used", |_| true).await;
    let event = assert_event(&hit, "recovery_code_used", SECRET);
    assert!(
        !hit.body.contains(&recovery),
        "the code is not in the event"
    );
    assert_from_audit_row(&oidc.env, &event, "mfa.recovery_code_used").await;

    // A lockout after repeated wrong passwords.
    oidc.user("carol").await;
    let b = browser_from(&oidc, home, None);
    for _ in 0..8 {
        let page = password_login(&oidc, &b, "carol", "wrong password, wrong").await;
        assert_ne!(page.status, 303, "a wrong password never signs in");
    }
    let hit = receiver.wait_for("lockout", |_| true).await;
    let event = assert_event(&hit, "lockout", SECRET);
    assert!(!hit.body.contains("wrong password"), "{}", hit.body);
    assert_from_audit_row(&oidc.env, &event, "security.lockout").await;
}

/// Staff terminating a session, a client secret rotated by staff, signing
/// keys rotated with the CLI, and a tampered audit log found by
/// `audit verify`.
async fn staff_and_operator_events_reach_the_webhook_signed(backend: Backend) {
    let receiver = Receiver::start(0, 200).await;
    let env = hook_env(&receiver.url);
    let env_refs = as_refs(&env);
    let oidc = Oidc::start_with(backend, &env_refs).await;
    let console = oidc
        .code_client("console", "openid", &["--first-party"])
        .await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let sam = staff(&oidc, &console, "sam", &["security_admin", "auditor"]).await;
    let sam_id = oidc.userinfo(&sam.access_token).await.str("sub");
    oidc.user("alice").await;
    let tokens = oidc.login_and_redeem(&shop, "alice", "openid").await;
    let sid = id_token_claims(&tokens)["sid"]
        .as_str()
        .unwrap()
        .to_string();

    // Staff terminate alice's session.
    let resp = oidc
        .http
        .post(
            oidc.server
                .admin_url(&format!("/admin/api/sessions/{sid}/terminate")),
        )
        .bearer_auth(&sam.access_token)
        .json(&json!({"reason": "stolen phone", "ticket_id": "INC-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let hit = receiver
        .wait_for("admin_termination", |e| {
            e["target"] == format!("session:{sid}")
        })
        .await;
    let event = assert_event(&hit, "admin_termination", SECRET);
    assert_eq!(event["actor"]["kind"], "user");
    assert_eq!(event["actor"]["id"], sam_id.as_str());
    assert_eq!(event["details"]["reason"], "stolen phone");
    assert_eq!(event["details"]["ticket_id"], "INC-7");
    assert_from_audit_row(&oidc.env, &event, "session.terminate").await;

    // Staff rotate a client's secret: neither secret is in the event.
    let svc = oidc.client("svc", &["--grant", "client_credentials"]).await;
    let resp = oidc
        .http
        .post(
            oidc.server
                .admin_url("/admin/api/clients/svc/secret/rotate"),
        )
        .bearer_auth(&sam.access_token)
        .json(&json!({"reason": "secret leaked in a CI log"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let new_secret = body["client_secret"].as_str().unwrap().to_string();
    let hit = receiver
        .wait_for("client_secret_rotation", |e| e["target"] == "client:svc")
        .await;
    let event = assert_event(&hit, "client_secret_rotation", SECRET);
    assert!(!hit.body.contains(&new_secret));
    assert!(!hit.body.contains(svc.secret.as_deref().unwrap()));
    assert_eq!(event["details"]["reason"], "secret leaked in a CI log");
    assert_from_audit_row(&oidc.env, &event, "client.secret_rotated").await;

    // An operator rotates the signing keys with the CLI; the running
    // server's worker delivers what the CLI queued.
    oidc.env
        .cli_with(&["keys", "rotate"], None, &env_refs)
        .await
        .assert_ok();
    let hit = receiver.wait_for("key_rotation", |_| true).await;
    let event = assert_event(&hit, "key_rotation", SECRET);
    assert_eq!(event["actor"]["kind"], "cli");
    assert_eq!(event["actor"]["id"], "test-operator");
    assert_from_audit_row(&oidc.env, &event, "keys.rotate").await;

    // Someone with database access rewrites history; `audit verify` finds
    // it, and the failure becomes an event (once, however often it runs).
    drop_audit_guard(&oidc.env).await;
    let n = oidc
        .env
        .raw_sql("UPDATE audit_log SET reason = 'routine' WHERE seq = 2")
        .await
        .unwrap();
    assert_eq!(n, 1);
    for _ in 0..2 {
        oidc.env
            .cli_with(&["audit", "verify"], None, &env_refs)
            .await
            .assert_err("audit chain broken at row 2");
    }
    let hit = receiver.wait_for("audit_chain_failure", |_| true).await;
    let event = assert_event(&hit, "audit_chain_failure", SECRET);
    assert_eq!(event["target"], "audit_log:2");
    assert_eq!(event["details"]["after"]["first_bad_seq"], 2);
    assert!(
        event["details"]["after"]["problem"]
            .as_str()
            .unwrap()
            .contains("altered"),
        "{event}"
    );
    let row = assert_from_audit_row(&oidc.env, &event, "audit.chain_failure").await;
    assert!(row["seq"].as_i64().unwrap() > 2, "appended after the break");
    // The admin API's verify finds the same break and records nothing new.
    let resp = oidc
        .http
        .get(oidc.server.admin_url("/admin/api/audit/verify"))
        .bearer_auth(&sam.access_token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["first_break"]["seq"], 2, "{report}");
    let rows = audit_rows(&oidc.env).await;
    assert_eq!(
        count_actions(&rows, "audit.chain_failure"),
        1,
        "one row per distinct break"
    );
}

/// With `alerts.audit_verify_interval`, the server verifies the chain by
/// itself and reports a break once, however many runs see it.
async fn periodic_audit_verification_reports_a_break_once(backend: Backend) {
    let receiver = Receiver::start(0, 200).await;
    let mut vars = hook_env(&receiver.url);
    vars.push((
        "PORTCULLIS_ALERTS_AUDIT_VERIFY_INTERVAL".into(),
        "1s".into(),
    ));
    let vars = as_refs(&vars);
    let env = TestEnv::new(backend).await;
    let server = env.serve_with(&vars).await;
    env.create_user("alice", PASSWORD).await;
    drop_audit_guard(&env).await;
    let n = env
        .raw_sql("DELETE FROM audit_log WHERE seq = 1")
        .await
        .unwrap();
    assert_eq!(n, 1);
    let hit = receiver.wait_for("audit_chain_failure", |_| true).await;
    let event = assert_event(&hit, "audit_chain_failure", SECRET);
    assert_eq!(
        event["actor"],
        json!({"kind": "system", "id": "audit_verify", "session": null, "ip": null})
    );
    assert_eq!(event["target"], "audit_log:1");
    assert!(
        event["details"]["after"]["problem"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{event}"
    );
    // Later runs see the same break and add nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = audit_rows(&env).await;
    assert_eq!(count_actions(&rows, "audit.chain_failure"), 1, "{rows:#?}");
    assert_eq!(receiver.delivered("audit_chain_failure").len(), 1);
    assert_eq!(server.stop().await, 0);
}

/// The receiver is not listening when the event happens; the server is
/// restarted while the event is pending; the receiver then answers 500;
/// once it answers 200 the event arrives exactly once, unchanged.
async fn webhook_is_redelivered_after_the_receiver_was_down_and_across_a_restart(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let vars = hook_env(&url);
    let vars = as_refs(&vars);
    let server = env.serve_with(&vars).await;
    env.cli_with(&["keys", "rotate"], None, &vars)
        .await
        .assert_ok();
    // Nobody listens: attempts fail and are recorded, nothing is delivered.
    let tried = eventually(WAIT, || async {
        webhook_rows(&env)
            .await
            .first()
            .is_some_and(|r| r.1 >= 1 && r.4.is_some())
    })
    .await;
    assert!(
        tried,
        "no failed attempt recorded: {:?}",
        webhook_rows(&env).await
    );
    let rows = webhook_rows(&env).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].2.is_none() && rows[0].3.is_none(), "{rows:?}");
    assert_eq!(server.stop().await, 0, "clean shutdown");

    // The receiver comes up answering 500; the server starts again.
    let receiver = Receiver::start(port, 500).await;
    let server = env.serve_with(&vars).await;
    let refused = eventually(Duration::from_secs(120), || async {
        !receiver.hits().is_empty()
    })
    .await;
    assert!(
        refused,
        "no attempt after the restart: {:?}",
        webhook_rows(&env).await
    );
    assert!(
        webhook_rows(&env).await[0].2.is_none(),
        "a 500 is not a delivery"
    );

    // Now it accepts: the event arrives once.
    receiver.answer(200);
    let first = receiver.wait_for("key_rotation", |_| true).await;
    let event = assert_event(&first, "key_rotation", SECRET);
    // Another event afterwards: once it is through, no second copy of the
    // first one can still be on its way.
    env.cli_with(&["keys", "rotate"], None, &vars)
        .await
        .assert_ok();
    let second = receiver
        .wait_for("key_rotation", |e| e["id"] != event["id"])
        .await;
    assert_event(&second, "key_rotation", SECRET);
    let hits = receiver.hits();
    let of_first: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.event_id == first.event_id)
        .collect();
    assert_eq!(
        of_first.iter().filter(|h| h.delivered()).count(),
        1,
        "delivered exactly once: {of_first:#?}"
    );
    for h in &of_first {
        assert_eq!(h.body, first.body, "every attempt carries the same event");
        assert!(signature_verifies(&h.signature, &h.body, SECRET), "{h:?}");
    }
    let rows = webhook_rows(&env).await;
    assert!(
        rows.iter().all(|r| r.2.is_some() && r.3.is_none()),
        "both marked delivered: {rows:?}"
    );
    assert!(rows[0].1 >= 2, "it took retries: {rows:?}");
    assert_eq!(server.stop().await, 0);
}

/// An endpoint that keeps failing: after `webhooks.max_attempts` the event
/// is given up on, audited (with the endpoint's origin only) and counted.
async fn webhook_delivery_gives_up_after_max_attempts_and_is_counted(backend: Backend) {
    let receiver = Receiver::start(0, 503).await;
    let mut vars = hook_env(&receiver.url);
    vars.push(("PORTCULLIS_WEBHOOKS_MAX_ATTEMPTS".into(), "2".into()));
    let vars = as_refs(&vars);
    let env = TestEnv::new(backend).await;
    let server = env.serve_with(&vars).await;
    env.cli_with(&["keys", "rotate"], None, &vars)
        .await
        .assert_ok();
    let failed = eventually(WAIT, || async {
        webhook_rows(&env)
            .await
            .first()
            .is_some_and(|r| r.3.is_some())
    })
    .await;
    assert!(failed, "{:?}", webhook_rows(&env).await);
    let rows = webhook_rows(&env).await;
    assert_eq!(rows[0].1, 2, "two attempts: {rows:?}");
    assert!(rows[0].2.is_none());
    assert!(
        rows[0].4.as_deref().unwrap_or("").contains("503"),
        "{rows:?}"
    );
    assert_eq!(receiver.hits().len(), 2, "{:#?}", receiver.hits());
    let audit = audit_rows(&env).await;
    let row = audit
        .iter()
        .find(|r| r["action"] == "outbox.delivery_failed")
        .unwrap_or_else(|| panic!("not audited: {audit:#?}"));
    let origin = receiver.url.trim_end_matches("/hook");
    assert_eq!(row["target"], format!("webhook:{origin}"));
    assert_eq!(row["after"]["event_type"], "key_rotation");
    assert!(!row.to_string().contains("/hook"), "only the origin: {row}");
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "portcullis_outbox_failed_total 1"),
        "{metrics}"
    );
    assert_eq!(server.stop().await, 0);
}

/// `[webhooks]` refuses what cannot work, naming the key, and never
/// echoes a secret; the TOML forms (arrays, `[[webhooks.endpoints]]`,
/// `secret_file`) load.
#[tokio::test]
async fn webhook_config_refuses_bad_urls_and_empty_secrets() {
    use portcullis::config::Config;
    let load = |vars: &[(&str, &str)]| {
        Config::load_with_env(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("PORTCULLIS_WEBHOOKS_URLS", "ftp://hooks.example/x"),
                ("PORTCULLIS_WEBHOOKS_SECRET", "s3cr3t-value"),
            ],
            "webhooks.urls",
        ),
        (
            &[
                ("PORTCULLIS_WEBHOOKS_URLS", "file:///etc/passwd"),
                ("PORTCULLIS_WEBHOOKS_SECRET", "s3cr3t-value"),
            ],
            "webhooks.urls",
        ),
        (
            &[("PORTCULLIS_WEBHOOKS_URLS", "https://hooks.example/x")],
            "webhooks.secret",
        ),
        (
            &[
                ("PORTCULLIS_WEBHOOKS_URLS", "https://hooks.example/x"),
                ("PORTCULLIS_WEBHOOKS_SECRET", "   "),
            ],
            "webhooks.secret",
        ),
        (
            &[("PORTCULLIS_WEBHOOKS_SECRET", "s3cr3t-value")],
            "webhooks.urls",
        ),
        (
            &[
                ("PORTCULLIS_WEBHOOKS_URLS", "https://hooks.example/x"),
                ("PORTCULLIS_WEBHOOKS_SECRET", "s3cr3t-value"),
                ("PORTCULLIS_WEBHOOKS_EVENTS", "lockout,not_an_event"),
            ],
            "not_an_event",
        ),
        (
            &[(
                "PORTCULLIS_WEBHOOKS_ENDPOINTS",
                r#"[{"url": "javascript:alert(1)", "secret": "s3cr3t-value"}]"#,
            )],
            "webhooks.endpoints[0].url",
        ),
        (
            &[(
                "PORTCULLIS_WEBHOOKS_ENDPOINTS",
                r#"[{"url": "https://a.example/h", "secret": ""}]"#,
            )],
            "webhooks.endpoints[0].secret",
        ),
        (
            &[(
                "PORTCULLIS_WEBHOOKS_ENDPOINTS",
                r#"[{"url": "https://a.example/h", "secret": "s3cr3t-value", "oops": 1}]"#,
            )],
            "webhooks.endpoints",
        ),
        (
            &[
                ("PORTCULLIS_WEBHOOKS_URLS", "https://a.example/h"),
                ("PORTCULLIS_WEBHOOKS_SECRET", "s3cr3t-value"),
                (
                    "PORTCULLIS_WEBHOOKS_ENDPOINTS",
                    r#"[{"url": "https://a.example/h", "secret": "s3cr3t-value"}]"#,
                ),
            ],
            "listed once",
        ),
    ];
    for (vars, needle) in cases {
        let err = load(vars).expect_err(&format!("{vars:?} must be refused"));
        let text = err.to_string();
        assert!(text.contains(needle), "{vars:?}: {text}");
        assert!(
            !text.contains("s3cr3t-value"),
            "never echo a secret: {text}"
        );
    }
    // The CLI stops with that message.
    let env = TestEnv::new(Backend::Sqlite).await;
    env.cli_with(
        &["migrate"],
        None,
        &[
            ("PORTCULLIS_WEBHOOKS_URLS", "ftp://hooks.example/x"),
            ("PORTCULLIS_WEBHOOKS_SECRET", "s3cr3t-value"),
        ],
    )
    .await
    .assert_err("webhooks.urls");

    // TOML: arrays, a table per endpoint, a secret file.
    let secret_file = env.dir.path().join("hook-secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let toml_path = env.dir.path().join("portcullis.toml");
    std::fs::write(
        &toml_path,
        format!(
            "[webhooks]\nurls = [\"https://a.example/hook\", \"http://127.0.0.1:9/h\"]\n\
             secret = \"shared\"\nevents = [\"lockout\", \"key_rotation\"]\nmax_attempts = 3\n\n\
             [[webhooks.endpoints]]\nurl = \"https://chat.example/bridge\"\nsecret_file = {:?}\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let config = Config::load_with_env(Some(&toml_path), std::iter::empty()).unwrap();
    let w = &config.webhooks;
    assert_eq!(w.max_attempts, 3);
    let urls: Vec<&str> = w.endpoints.iter().map(|e| e.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://a.example/hook",
            "http://127.0.0.1:9/h",
            "https://chat.example/bridge"
        ]
    );
    assert_eq!(w.endpoints[0].secret, "shared");
    assert_eq!(
        w.endpoints[2].secret, "from-a-file",
        "read from the file, newline trimmed"
    );
    assert!(w.endpoints[0].wants("lockout") && !w.endpoints[0].wants("code_reuse"));
    assert!(w.endpoints[2].wants("code_reuse"), "no filter: every event");
    assert!(
        !format!("{config:?}").contains("from-a-file"),
        "Debug output hides secrets"
    );
    // No webhooks configured by default.
    assert!(Config::defaults().unwrap().webhooks.endpoints.is_empty());
}
