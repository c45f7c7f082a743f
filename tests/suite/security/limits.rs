//! Rate limits (per IP, per username, per client, per staff user, per
//! endpoint class; 429 with `Retry-After`) and the exponential lockout of
//! logins and second-factor codes (persistent across restarts and new
//! sessions, audited as `security.lockout`, indistinguishable from a wrong
//! password).
//!
//! Black-box tests drive the real binary with small limits set through
//! `PORTCULLIS_RATE_LIMITS_…`; requests from "other" clients come from
//! 127.0.0.2 (reqwest `local_address`: every 127/8 address is loopback).
//! Lock durations are read from the `auth_failures` row (`locked_until -
//! updated_at`), never measured, and a lock is ended by moving its
//! `locked_until` into the past with raw SQL.

use std::net::{IpAddr, Ipv4Addr};

use portcullis::config::Config;
use portcullis::security::limits::{IpNet, RateLimiter, Rule};
use reqwest::header::HeaderMap;

use crate::oauth::flow::{Browser, Client, ClientAuth, Oidc, PASSWORD, Page};
use crate::oauth::staff::{enrol_totp, staff, totp_code};
use crate::support::{Backend, raw_pool};

backend_tests!(
    login_is_limited_per_ip_and_other_ips_are_not,
    login_is_limited_per_username_known_or_not,
    failed_logins_feed_the_ip_limiter,
    token_endpoint_is_limited_per_client_and_per_ip,
    introspection_throttles_failed_callers_not_gateways,
    introspection_per_client_limit_when_configured,
    account_pages_are_limited_per_ip,
    admin_listener_is_limited_per_ip_and_per_staff_user,
    forwarded_for_is_believed_only_from_trusted_proxies,
    sessions_record_the_forwarded_client_only_behind_a_trusted_proxy,
    login_lockout_grows_exponentially_survives_restart_and_looks_like_a_wrong_password,
    code_lockout_is_the_same_exponential_lockout_and_is_audited,
);

const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

// ---- in-process: the limiter and its configuration ----------------------------

fn config(env: &[(&str, &str)]) -> Config {
    Config::load_with_env(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

#[test]
fn limiter_allows_a_burst_then_refills_at_the_configured_rate() {
    let cfg = config(&[("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "3/1m")]);
    let l = RateLimiter::new(&cfg.rate_limits);
    let t0 = 1_700_000_000_000;
    for i in 0..3 {
        assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0), Ok(()), "hit {i}");
    }
    let refused = l.hit(Rule::LoginPerIp, "192.0.2.1", t0).unwrap_err();
    assert_eq!(refused.rule, Rule::LoginPerIp);
    assert_eq!(refused.retry_after, 20, "one request refills every 60/3 s");
    // Another key has a budget of its own.
    assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.2", t0), Ok(()));
    // Just before the refill still refused (Retry-After rounds up), then one more.
    let almost = l
        .hit(Rule::LoginPerIp, "192.0.2.1", t0 + 19_999)
        .unwrap_err();
    assert_eq!(almost.retry_after, 1);
    assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0 + 20_000), Ok(()));
    assert!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0 + 20_000).is_err());
    // After a full period the whole burst is back.
    for _ in 0..3 {
        assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0 + 80_000), Ok(()));
    }
    // peek counts nothing.
    for _ in 0..10 {
        assert_eq!(l.peek(Rule::LoginPerIp, "192.0.2.3", t0), Ok(()));
    }
    for _ in 0..3 {
        assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.3", t0), Ok(()));
    }
    assert!(l.peek(Rule::LoginPerIp, "192.0.2.3", t0).is_err());
    // Rules are separate budgets; a rule set to 0 is off.
    let cfg = config(&[
        ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "1/1h"),
        ("PORTCULLIS_RATE_LIMITS_ACCOUNT_PER_IP", "0"),
    ]);
    let l = RateLimiter::new(&cfg.rate_limits);
    assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0), Ok(()));
    assert!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0).is_err());
    assert_eq!(l.hit(Rule::TokenPerIp, "192.0.2.1", t0), Ok(()));
    assert!(!l.enabled(Rule::AccountPerIp));
    for _ in 0..1000 {
        assert_eq!(l.hit(Rule::AccountPerIp, "192.0.2.1", t0), Ok(()));
    }
    // Introspection by authenticated clients is not limited by default.
    assert!(!RateLimiter::new(&config(&[]).rate_limits).enabled(Rule::IntrospectPerClient));
}

#[test]
fn a_flood_of_distinct_keys_does_not_grow_memory_without_bound() {
    let cfg = config(&[
        ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "5/1h"),
        ("PORTCULLIS_RATE_LIMITS_MAX_KEYS", "160"),
    ]);
    let l = RateLimiter::new(&cfg.rate_limits);
    let t0 = 1_700_000_000_000;
    for i in 0..50_000u32 {
        let ip = Ipv4Addr::from(0x0a00_0000 + i).to_string();
        assert_eq!(l.hit(Rule::LoginPerIp, &ip, t0), Ok(()), "{ip}");
        assert!(l.tracked_keys() <= 160, "after {i}: {}", l.tracked_keys());
    }
    // Keys whose bucket refilled carry no state and make room first.
    assert_eq!(l.hit(Rule::LoginPerIp, "192.0.2.1", t0 + 3_600_000), Ok(()));
    assert!(l.tracked_keys() <= 160);
}

#[test]
fn forwarded_for_is_read_only_from_trusted_peers() {
    let cfg = config(&[(
        "PORTCULLIS_RATE_LIMITS_TRUSTED_PROXIES",
        "10.0.0.0/8, 192.0.2.7",
    )]);
    let l = RateLimiter::new(&cfg.rate_limits);
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        "x-forwarded-for",
        "198.51.100.9, 203.0.113.5, 10.1.2.3".parse().unwrap(),
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // From a trusted proxy: the right-most address that is not a proxy.
    assert_eq!(l.client_ip(ip("10.9.9.9"), &h), ip("203.0.113.5"));
    assert_eq!(l.client_ip(ip("192.0.2.7"), &h), ip("203.0.113.5"));
    // From anyone else the header is ignored.
    assert_eq!(l.client_ip(ip("192.0.2.8"), &h), ip("192.0.2.8"));
    // An unreadable hop stops the walk at the last trusted one.
    h.insert("x-forwarded-for", "bogus, 10.1.2.3".parse().unwrap());
    assert_eq!(l.client_ip(ip("10.9.9.9"), &h), ip("10.1.2.3"));
    // IPv6 clients are keyed by their /64; mapped IPv4 as IPv4.
    assert_eq!(
        portcullis::security::limits::ip_key(ip("2001:db8:1:2:aaaa::1")),
        portcullis::security::limits::ip_key(ip("2001:db8:1:2:bbbb::2"))
    );
    assert_eq!(
        portcullis::security::limits::ip_key(ip("::ffff:192.0.2.1")),
        "192.0.2.1"
    );
    assert!(
        IpNet::parse("10.0.0.0/8")
            .unwrap()
            .contains(ip("10.255.0.1"))
    );
    assert!(!IpNet::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
}

#[test]
fn bad_rate_limit_settings_name_the_key_and_what_is_expected() {
    for (var, value, key, expected) in [
        (
            "PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP",
            "lots",
            "rate_limits.login_per_ip",
            "a rate such as 30/1m",
        ),
        (
            "PORTCULLIS_RATE_LIMITS_TOKEN_PER_CLIENT",
            "10/0s",
            "rate_limits.token_per_client",
            "a rate such as 30/1m",
        ),
        (
            "PORTCULLIS_RATE_LIMITS_ADMIN_PER_USER",
            "-5/1m",
            "rate_limits.admin_per_user",
            "or 0 to turn the limit off",
        ),
        (
            "PORTCULLIS_RATE_LIMITS_TRUSTED_PROXIES",
            "10.0.0.0/33",
            "rate_limits.trusted_proxies",
            "CIDR networks",
        ),
        (
            "PORTCULLIS_RATE_LIMITS_LOGIN_LOCKOUT_AFTER",
            "0",
            "rate_limits.login_lockout_after",
            "a whole number from 1 to 1000",
        ),
        (
            "PORTCULLIS_RATE_LIMITS_CODE_LOCKOUT_MAX",
            "10s",
            "rate_limits.code_lockout_max",
            "no shorter than rate_limits.code_lockout_base",
        ),
        (
            "PORTCULLIS_RATE_LIMITS_LOCKOUT_RESET",
            "soon",
            "rate_limits.lockout_reset",
            "a duration such as",
        ),
    ] {
        let err = Config::load_with_env(None, [(var.to_string(), value.to_string())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(expected),
            "{var}={value}: {err}"
        );
    }
    let err = Config::load_with_env(
        None,
        [(
            "PORTCULLIS_RATE_LIMITS_LOGIN_PER_IPS".to_string(),
            "1/1m".to_string(),
        )],
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown"), "{err}");
    // Accepted forms.
    let cfg = config(&[
        ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "5/s"),
        ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_IP", "0"),
        ("PORTCULLIS_RATE_LIMITS_ADMIN_PER_USER", "100/10m"),
    ]);
    let rl = &cfg.rate_limits;
    assert_eq!(
        rl.login_per_ip.map(|r| (r.count, r.period.as_secs())),
        Some((5, 1))
    );
    assert_eq!(rl.token_per_ip, None);
    assert_eq!(
        rl.admin_per_user.map(|r| (r.count, r.period.as_secs())),
        Some((100, 600))
    );
}

// ---- helpers ------------------------------------------------------------------------

/// A cookie-keeping browser whose requests leave from `ip`.
fn browser_at(oidc: &Oidc, ip: IpAddr) -> Browser {
    Browser::with_client(
        &oidc.issuer,
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .local_address(ip)
            .build()
            .unwrap(),
    )
}

/// A plain client whose requests leave from `ip`.
fn http_at(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip)
        .build()
        .unwrap()
}

/// Fetches the login form (not limited) and submits it.
async fn login(oidc: &Oidc, browser: &Browser, username: &str, password: &str) -> Page {
    let form = browser.get(&oidc.url("/login")).await;
    assert_eq!(form.status, 200, "login form: {}", form.body);
    let csrf = form.hidden_inputs()["csrf_token"].clone();
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

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Retry-After in whole seconds; panics if absent or not a positive number.
#[track_caller]
fn retry_after(headers: &HeaderMap) -> u64 {
    let secs: u64 = header(headers, "retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After missing: {headers:?}"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// A 429 login page (HTML) with Retry-After.
#[track_caller]
fn assert_limited_page(page: &Page, what: &str) {
    assert_eq!(page.status, 429, "{what}: {}", page.body);
    retry_after(&page.headers);
    assert!(
        header(&page.headers, "content-type").starts_with("text/html"),
        "{what}: {:?}",
        page.headers
    );
    assert!(page.body.contains("Too many"), "{what}: {}", page.body);
    assert!(!page.set_cookies().contains("pc_session"), "{what}");
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    json: serde_json::Value,
    text: String,
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    }
}

/// The OAuth 429: `temporarily_unavailable`, Retry-After, no-store.
#[track_caller]
fn assert_oauth_limited(a: &Answer, what: &str) {
    assert_eq!(a.status, 429, "{what}: {}", a.text);
    assert_eq!(
        a.json["error"], "temporarily_unavailable",
        "{what}: {}",
        a.text
    );
    let secs = retry_after(&a.headers);
    assert_eq!(
        a.json["error_description"],
        format!("too many requests; retry after {secs} seconds"),
        "{what}"
    );
    assert_eq!(header(&a.headers, "cache-control"), "no-store", "{what}");
}

/// The JSON 429 of the admin API and JSON pages: `rate_limited`.
#[track_caller]
fn assert_json_limited(a: &Answer, what: &str) {
    assert_eq!(a.status, 429, "{what}: {}", a.text);
    assert_eq!(a.json["error"], "rate_limited", "{what}: {}", a.text);
    let secs = retry_after(&a.headers);
    assert!(
        a.json["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("retry after {secs} seconds")),
        "{what}: {}",
        a.text
    );
}

/// POST /token (client_credentials) from `http` with `auth`.
async fn client_credentials(oidc: &Oidc, http: &reqwest::Client, auth: &ClientAuth) -> Answer {
    let mut form = vec![("grant_type", "client_credentials")];
    let mut req = http.post(oidc.url("/token"));
    match auth {
        ClientAuth::Basic(id, secret) => req = req.basic_auth(id, Some(secret)),
        ClientAuth::Post(id, secret) => {
            form.push(("client_id", id));
            form.push(("client_secret", secret));
        }
        ClientAuth::None(id) => form.push(("client_id", id)),
    }
    answer(req.form(&form).send().await.unwrap()).await
}

async fn service(oidc: &Oidc, id: &str) -> Client {
    oidc.client(id, &["--grant", "client_credentials", "--scope", "api"])
        .await
}

fn basic(c: &Client) -> ClientAuth {
    ClientAuth::Basic(c.id.clone(), c.secret.clone().unwrap())
}

fn wrong_secret(c: &Client) -> ClientAuth {
    ClientAuth::Basic(c.id.clone(), "pcs_not-the-secret".into())
}

async fn introspect(oidc: &Oidc, http: &reqwest::Client, auth: &ClientAuth, token: &str) -> Answer {
    let ClientAuth::Basic(id, secret) = auth else {
        panic!("introspection callers use Basic here")
    };
    answer(
        http.post(oidc.url("/introspect"))
            .basic_auth(id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// `portcullis_rate_limited_total{class}` from /metrics.
async fn limited_total(oidc: &Oidc, class: &str) -> u64 {
    metric(
        oidc,
        &format!("portcullis_rate_limited_total{{class=\"{class}\"}}"),
    )
    .await
}

/// A sample of /metrics by its name and labels; the test fails if it is missing.
async fn metric(oidc: &Oidc, sample: &str) -> u64 {
    let value = oidc
        .metric(sample)
        .await
        .unwrap_or_else(|| panic!("no {sample} in /metrics"));
    value as u64
}

/// Stops the server and starts it again on the same address and database.
async fn restart(oidc: Oidc, extra_env: &[(&str, &str)]) -> Oidc {
    let Oidc {
        server,
        env,
        issuer,
        http,
    } = oidc;
    assert_eq!(server.stop().await, 0);
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

/// `(failures, locked_until - updated_at, locked_until)` of a lockout subject.
async fn lockout_row(oidc: &Oidc, subject: &str) -> Option<(i64, i64, i64)> {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT failures, locked_until, updated_at FROM auth_failures WHERE subject = $1",
    )
    .bind(subject)
    .fetch_optional(&pool)
    .await
    .unwrap();
    pool.close().await;
    row.map(|(n, until, at)| (n, if until > 0 { until - at } else { 0 }, until))
}

/// Ends a lock by moving it into the past (the count stays).
async fn end_lock(oidc: &Oidc, subject: &str) {
    let n = oidc
        .env
        .raw_sql(&format!(
            "UPDATE auth_failures SET locked_until = 1 WHERE subject = '{subject}'"
        ))
        .await
        .unwrap();
    assert_eq!(n, 1, "lockout row {subject}");
}

/// `(actor_kind, target, after)` of every `security.lockout` audit row.
async fn lockout_audits(oidc: &Oidc) -> Vec<(String, String, serde_json::Value)> {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor_kind, target, after_json FROM audit_log \
         WHERE action = 'security.lockout' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(k, t, a)| (k, t, serde_json::from_str(&a).unwrap()))
        .collect()
}

async fn user_id(oidc: &Oidc, username: &str) -> String {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let (id,): (String,) = sqlx::query_as("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    id
}

// ---- black-box: rate limits -------------------------------------------------------

async fn login_is_limited_per_ip_and_other_ips_are_not(backend: Backend) {
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "3/1h")]).await;
    oidc.user("alice").await;
    let here = oidc.browser();
    for i in 0..3 {
        let page = login(&oidc, &here, "alice", "wrong password, long enough").await;
        assert_eq!(page.status, 401, "attempt {i}: {}", page.body);
    }
    // The fourth POST from this IP is refused before the form is read,
    // even with the right password; the form itself is still served.
    let page = login(&oidc, &here, "alice", PASSWORD).await;
    assert_limited_page(&page, "fourth login from 127.0.0.1");
    // Second factor and passkey endpoints are in the same class.
    let page = here.post_form("/login/mfa", &[("code", "123456")]).await;
    assert_limited_page(&page, "/login/mfa from 127.0.0.1");
    let passkey = answer(
        here.http
            .post(oidc.url("/login/passkey/start"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_json_limited(&passkey, "/login/passkey/start from 127.0.0.1");
    // Another address is not affected.
    let there = browser_at(&oidc, OTHER_IP);
    let page = login(&oidc, &there, "alice", PASSWORD).await;
    assert_eq!(page.status, 303, "login from 127.0.0.2: {}", page.body);
    assert!(page.set_cookies().contains("pc_session"));
    assert_eq!(limited_total(&oidc, "login").await, 3);
}

async fn login_is_limited_per_username_known_or_not(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[("PORTCULLIS_RATE_LIMITS_LOGIN_PER_USER", "2/1h")],
    )
    .await;
    oidc.user("alice").await;
    oidc.user("bob").await;
    let browser = oidc.browser();
    for name in ["alice", "ghost"] {
        for i in 0..2 {
            let page = login(&oidc, &browser, name, "wrong password, long enough").await;
            assert_eq!(page.status, 401, "{name} attempt {i}: {}", page.body);
        }
    }
    // The name is normalised, and an unknown name is limited the same way
    // (the 429 says nothing about whether the account exists).
    let alice = login(&oidc, &browser, " ALICE ", PASSWORD).await;
    assert_limited_page(&alice, "third attempt on alice");
    let ghost = login(&oidc, &browser, "ghost", PASSWORD).await;
    assert_limited_page(&ghost, "third attempt on ghost");
    // From another IP too: the key is the name.
    let there = browser_at(&oidc, OTHER_IP);
    assert_limited_page(
        &login(&oidc, &there, "alice", PASSWORD).await,
        "alice from 127.0.0.2",
    );
    // Another name is not affected.
    let page = login(&oidc, &browser, "bob", PASSWORD).await;
    assert_eq!(page.status, 303, "bob: {}", page.body);
}

async fn failed_logins_feed_the_ip_limiter(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[("PORTCULLIS_RATE_LIMITS_LOGIN_FAILURES_PER_IP", "3/1h")],
    )
    .await;
    oidc.user("alice").await;
    let here = oidc.browser();
    // Password spraying: one attempt on each of several names.
    for name in ["alice", "bob", "carol"] {
        let page = login(&oidc, &here, name, "Winter2024!Winter").await;
        assert_eq!(page.status, 401, "{name}: {}", page.body);
    }
    let page = login(&oidc, &here, "alice", PASSWORD).await;
    assert_limited_page(&page, "right password after three failures from this IP");
    // Successes do not use up the budget, and other IPs have their own.
    let there = browser_at(&oidc, OTHER_IP);
    for i in 0..5 {
        let page = login(&oidc, &there, "alice", PASSWORD).await;
        assert_eq!(page.status, 303, "login {i} from 127.0.0.2: {}", page.body);
    }
}

async fn token_endpoint_is_limited_per_client_and_per_ip(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_CLIENT", "2/1h"),
            ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_IP", "8/1h"),
        ],
    )
    .await;
    let a = service(&oidc, "svc-a").await;
    let b = service(&oidc, "svc-b").await;
    let c = service(&oidc, "svc-c").await;
    let here = http_at(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let there = http_at(OTHER_IP);

    // Wrong secrets do not use up the real client's budget (IP: 3).
    for _ in 0..3 {
        let r = client_credentials(&oidc, &here, &wrong_secret(&a)).await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    // Two tokens for A, then 429 (IP: 6).
    for i in 0..2 {
        let r = client_credentials(&oidc, &here, &basic(&a)).await;
        assert_eq!(r.status, 200, "A {i}: {}", r.text);
    }
    assert_oauth_limited(
        &client_credentials(&oidc, &here, &basic(&a)).await,
        "third token for A",
    );
    // B (client_secret_post: the id comes from the body) has its own (IP: 8).
    let b_post = ClientAuth::Post(b.id.clone(), b.secret.clone().unwrap());
    for i in 0..2 {
        let r = client_credentials(&oidc, &here, &b_post).await;
        assert_eq!(r.status, 200, "B {i}: {}", r.text);
    }
    // This IP has used its 8: even C, untouched so far, is refused here…
    assert_oauth_limited(
        &client_credentials(&oidc, &here, &basic(&c)).await,
        "C from 127.0.0.1 after 8 requests",
    );
    // …but not from another IP; A stays limited from anywhere.
    let r = client_credentials(&oidc, &there, &basic(&c)).await;
    assert_eq!(r.status, 200, "C from 127.0.0.2: {}", r.text);
    assert_oauth_limited(
        &client_credentials(&oidc, &there, &basic(&a)).await,
        "A from 127.0.0.2",
    );
    assert_eq!(limited_total(&oidc, "token").await, 3);
}

async fn introspection_throttles_failed_callers_not_gateways(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[("PORTCULLIS_RATE_LIMITS_INTROSPECT_FAILURES_PER_IP", "2/1h")],
    )
    .await;
    let gw = oidc
        .client("gw", &["--grant", "client_credentials", "--may-introspect"])
        .await;
    let svc = service(&oidc, "svc").await;
    let token = oidc
        .client_credentials(&svc, Some("api"))
        .await
        .str("access_token");
    let here = http_at(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let there = http_at(OTHER_IP);
    // An authenticated gateway is not throttled (no per-client limit by default).
    for i in 0..60 {
        let r = introspect(&oidc, &here, &basic(&gw), &token).await;
        assert_eq!(r.status, 200, "introspection {i}: {}", r.text);
        assert_eq!(r.json["active"], true);
    }
    // A caller guessing secrets from 127.0.0.2 is stopped after two failures,
    // and then even right credentials are refused from there.
    for i in 0..2 {
        let r = introspect(&oidc, &there, &wrong_secret(&gw), &token).await;
        assert_eq!(r.status, 401, "guess {i}: {}", r.text);
    }
    assert_oauth_limited(
        &introspect(&oidc, &there, &wrong_secret(&gw), &token).await,
        "third guess",
    );
    assert_oauth_limited(
        &introspect(&oidc, &there, &basic(&gw), &token).await,
        "right secret from the guessing IP",
    );
    // The gateway's own address is unaffected.
    let r = introspect(&oidc, &here, &basic(&gw), &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(limited_total(&oidc, "introspect").await, 2);
}

async fn introspection_per_client_limit_when_configured(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[("PORTCULLIS_RATE_LIMITS_INTROSPECT_PER_CLIENT", "3/1h")],
    )
    .await;
    let args = ["--grant", "client_credentials", "--may-introspect"];
    let gw1 = oidc.client("gw1", &args).await;
    let gw2 = oidc.client("gw2", &args).await;
    let here = http_at(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for i in 0..3 {
        let r = introspect(&oidc, &here, &basic(&gw1), "pct_at_unknown").await;
        assert_eq!(r.status, 200, "gw1 {i}: {}", r.text);
        assert_eq!(r.json, serde_json::json!({"active": false}));
    }
    assert_oauth_limited(
        &introspect(&oidc, &here, &basic(&gw1), "pct_at_unknown").await,
        "fourth call of gw1",
    );
    let r = introspect(&oidc, &here, &basic(&gw2), "pct_at_unknown").await;
    assert_eq!(r.status, 200, "gw2: {}", r.text);
}

async fn account_pages_are_limited_per_ip(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[("PORTCULLIS_RATE_LIMITS_ACCOUNT_PER_IP", "2/1h")],
    )
    .await;
    oidc.user("alice").await;
    let here = oidc.browser();
    let page = login(&oidc, &here, "alice", PASSWORD).await;
    assert_eq!(page.status, 303, "{}", page.body);
    for i in 0..2 {
        let page = here.get(&oidc.url("/account/sessions")).await;
        assert_eq!(page.status, 200, "account page {i}: {}", page.body);
    }
    assert_limited_page(
        &here.get(&oidc.url("/account/sessions")).await,
        "third account page",
    );
    let json = answer(
        here.http
            .get(oidc.url("/account/sessions"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_json_limited(&json, "account JSON");
    // Another IP (here without a session: the usual redirect, not a 429).
    let there = browser_at(&oidc, OTHER_IP);
    let page = there.get(&oidc.url("/account/sessions")).await;
    assert_ne!(page.status, 429, "{}", page.body);
    assert_eq!(limited_total(&oidc, "account").await, 2);
}

async fn admin_listener_is_limited_per_ip_and_per_staff_user(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_RATE_LIMITS_ADMIN_PER_USER", "3/1h"),
            ("PORTCULLIS_RATE_LIMITS_ADMIN_PER_IP", "10/1h"),
        ],
    )
    .await;
    let console = oidc
        .code_client("console", "openid", &["--first-party"])
        .await;
    let s1 = staff(&oidc, &console, "sam", &["support"]).await;
    let s2 = staff(&oidc, &console, "sue", &["support"]).await;
    let here = http_at(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let there = http_at(OTHER_IP);
    let me = |http: &reqwest::Client, token: Option<&str>| {
        let mut req = http.get(oidc.server.admin_url("/admin/api/me"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // Per staff user (IP: 3, then 4 with the refused one).
    for i in 0..3 {
        let r = answer(me(&here, Some(&s1.access_token)).await.unwrap()).await;
        assert_eq!(r.status, 200, "sam {i}: {}", r.text);
    }
    let r = answer(me(&here, Some(&s1.access_token)).await.unwrap()).await;
    assert_json_limited(&r, "fourth call by sam");
    let r = answer(me(&here, Some(&s2.access_token)).await.unwrap()).await;
    assert_eq!(r.status, 200, "sue: {}", r.text);
    // Per IP: ten calls from 127.0.0.2, then 429 — probes are exempt.
    for i in 0..10 {
        let r = answer(me(&there, None).await.unwrap()).await;
        assert_eq!(r.status, 401, "anonymous {i}: {}", r.text);
    }
    assert_json_limited(
        &answer(me(&there, None).await.unwrap()).await,
        "eleventh call from 127.0.0.2",
    );
    assert_json_limited(
        &answer(me(&there, Some(&s2.access_token)).await.unwrap()).await,
        "sue from the exhausted IP",
    );
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = there
            .get(oidc.server.admin_url(probe))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe} from 127.0.0.2");
    }
    let r = answer(me(&here, Some(&s2.access_token)).await.unwrap()).await;
    assert_eq!(r.status, 200, "sue from 127.0.0.1: {}", r.text);
    assert_eq!(limited_total(&oidc, "admin").await, 3);
}

async fn forwarded_for_is_believed_only_from_trusted_proxies(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "2/1h"),
            ("PORTCULLIS_RATE_LIMITS_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let post = |http: reqwest::Client, xff: &str| {
        let req = http
            .post(oidc.url("/login"))
            .header("x-forwarded-for", xff)
            .form(&[("username", "x")]);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let proxy = http_at(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // Behind the trusted proxy, each client has its own budget.
    for _ in 0..2 {
        assert_ne!(post(proxy.clone(), "203.0.113.7").await, 429);
    }
    assert_eq!(post(proxy.clone(), "203.0.113.7").await, 429);
    assert_ne!(post(proxy.clone(), "203.0.113.8").await, 429);
    // The proxy's own address in the chain is skipped.
    assert_eq!(post(proxy.clone(), "203.0.113.7, 127.0.0.1").await, 429);
    // From an untrusted peer the header is ignored: spoofing it does not
    // buy a fresh budget.
    let direct = http_at(OTHER_IP);
    assert_ne!(post(direct.clone(), "198.51.100.1").await, 429);
    assert_ne!(post(direct.clone(), "198.51.100.2").await, 429);
    assert_eq!(post(direct.clone(), "198.51.100.3").await, 429);
}

// ---- black-box: lockout ------------------------------------------------------------

async fn login_lockout_grows_exponentially_survives_restart_and_looks_like_a_wrong_password(
    backend: Backend,
) {
    // Only the lockout here: the request limits are off.
    let env = [
        ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_USER", "0"),
        ("PORTCULLIS_RATE_LIMITS_LOGIN_FAILURES_PER_IP", "0"),
    ];
    let oidc = Oidc::start_with(backend, &env).await;
    oidc.user("alice").await;
    let alice = user_id(&oidc, "alice").await;
    let browser = oidc.browser();
    let wrong = "wrong password, long enough";

    // The answer to a wrong password; every failure below must match it.
    let baseline = login(&oidc, &browser, "alice", wrong).await;
    assert_eq!(baseline.status, 401, "{}", baseline.body);
    assert!(baseline.body.contains("invalid username or password"));
    let same_as_wrong = |page: &Page, what: &str| {
        assert_eq!(
            (page.status, &page.body),
            (401, &baseline.body),
            "{what}: same answer as a wrong password"
        );
        assert!(page.headers.get("retry-after").is_none(), "{what}");
        assert!(!page.set_cookies().contains("pc_session"), "{what}");
    };
    for i in 2..=4 {
        same_as_wrong(
            &login(&oidc, &browser, "alice", wrong).await,
            &format!("wrong {i}"),
        );
    }
    assert_eq!(lockout_row(&oidc, "login:alice").await, Some((4, 0, 0)));
    assert!(lockout_audits(&oidc).await.is_empty(), "no lock yet");

    // The fifth failure locks for the base duration (1m).
    same_as_wrong(&login(&oidc, &browser, "alice", wrong).await, "wrong 5");
    let (failures, first_lock, locked_until) = lockout_row(&oidc, "login:alice").await.unwrap();
    assert_eq!((failures, first_lock), (5, 60));
    // Locked: even the right password gets the wrong-password answer, and
    // so does a name no account has.
    same_as_wrong(
        &login(&oidc, &browser, "alice", PASSWORD).await,
        "right password while locked",
    );
    same_as_wrong(
        &login(&oidc, &browser, "ghost", wrong).await,
        "unknown user",
    );
    // Audited as a security event, with the lock it set.
    let audits = lockout_audits(&oidc).await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    let (actor_kind, target, after) = &audits[0];
    assert_eq!(actor_kind, "system");
    assert_eq!(target, &format!("user:{alice}"));
    assert_eq!(
        after,
        &serde_json::json!({"subject": "login:alice", "failures": 5, "locked_until": locked_until})
    );

    // The lock survives a restart and a new browser (new cookies, new session).
    let oidc = restart(oidc, &env).await;
    let fresh = oidc.browser();
    let fresh_baseline = login(&oidc, &fresh, "nobody-at-all", wrong).await;
    assert_eq!(fresh_baseline.status, 401);
    let page = login(&oidc, &fresh, "alice", PASSWORD).await;
    assert_eq!(
        (page.status, &page.body),
        (401, &fresh_baseline.body),
        "still locked after a restart"
    );
    assert!(!page.set_cookies().contains("pc_session"));
    assert_eq!(
        lockout_row(&oidc, "login:alice").await,
        Some((5, 60, locked_until)),
        "refused attempts while locked are not counted"
    );

    // Once the lock is over, the next failure locks again for twice as long.
    end_lock(&oidc, "login:alice").await;
    let page = login(&oidc, &fresh, "alice", wrong).await;
    assert_eq!((page.status, &page.body), (401, &fresh_baseline.body));
    let (failures, second_lock, second_until) = lockout_row(&oidc, "login:alice").await.unwrap();
    assert_eq!((failures, second_lock), (6, 2 * first_lock), "exponential");
    end_lock(&oidc, "login:alice").await;
    same_as_wrong(&login(&oidc, &browser, "alice", wrong).await, "wrong 7");
    assert_eq!(
        lockout_row(&oidc, "login:alice").await.map(|r| (r.0, r.1)),
        Some((7, 4 * first_lock))
    );
    let audits = lockout_audits(&oidc).await;
    assert_eq!(audits.len(), 3, "{audits:?}");
    assert_eq!(audits[1].2["failures"], 6);
    assert_eq!(audits[1].2["locked_until"], second_until);

    // After the lock, the right password works and resets the counter.
    end_lock(&oidc, "login:alice").await;
    let page = login(&oidc, &fresh, "alice", PASSWORD).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert!(page.set_cookies().contains("pc_session"));
    assert_eq!(lockout_row(&oidc, "login:alice").await, None);
    let page = login(&oidc, &fresh, "alice", wrong).await;
    assert_eq!(page.status, 401);
    assert_eq!(lockout_row(&oidc, "login:alice").await, Some((1, 0, 0)));

    // Unknown names are counted and locked alike, so after five attempts
    // they still cannot be told from real accounts.
    for _ in 0..5 {
        same_as_wrong(&login(&oidc, &browser, "ghost", wrong).await, "ghost");
    }
    let (n, lock, _) = lockout_row(&oidc, "login:ghost").await.unwrap();
    assert_eq!((n, lock), (5, 60), "the first ghost attempt counted too");
    let audits = lockout_audits(&oidc).await;
    assert_eq!(audits.last().unwrap().1, "username:ghost");
    // Locks since the restart: alice twice, ghost once.
    assert_eq!(metric(&oidc, "portcullis_lockouts_total").await, 3);
}

async fn code_lockout_is_the_same_exponential_lockout_and_is_audited(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_RATE_LIMITS_CODE_LOCKOUT_AFTER", "2"),
            ("PORTCULLIS_RATE_LIMITS_CODE_LOCKOUT_BASE", "10m"),
        ],
    )
    .await;
    oidc.user("dave").await;
    let dave = user_id(&oidc, "dave").await;
    let subject = format!("mfa:{dave}");
    let (_, secret) = enrol_totp(&oidc, "dave").await;
    // A code that is wrong at every step the server accepts now.
    let near: Vec<String> = (-2..=2).map(|o| totp_code(&secret, o)).collect();
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .unwrap();

    let browser = oidc.browser();
    let page = login(&oidc, &browser, "dave", PASSWORD).await;
    assert_eq!(page.location(), Some("/login/mfa"), "{}", page.body);
    let submit = |code: String| {
        let browser = &browser;
        let oidc = &oidc;
        async move {
            let form = browser.get(&oidc.url("/login/mfa")).await;
            let csrf = form.hidden_inputs()["csrf_token"].clone();
            browser
                .post_form("/login/mfa", &[("code", &code), ("csrf_token", &csrf)])
                .await
        }
    };
    let page = submit(wrong.clone()).await;
    assert_eq!(page.status, 401, "{}", page.body);
    // The second wrong code locks for the configured base: 429 + Retry-After.
    let page = submit(wrong.clone()).await;
    assert_eq!(page.status, 429, "{}", page.body);
    let secs = retry_after(&page.headers);
    let (n, first_lock, until) = lockout_row(&oidc, &subject).await.unwrap();
    assert_eq!((n, first_lock), (2, 600));
    assert!(secs <= 600);
    let audits = lockout_audits(&oidc).await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0].1, format!("user:{dave}"));
    assert_eq!(
        audits[0].2,
        serde_json::json!({"subject": subject, "failures": 2, "locked_until": until})
    );
    // Doubling, as for passwords.
    end_lock(&oidc, &subject).await;
    let page = submit(wrong.clone()).await;
    assert_eq!(page.status, 429, "{}", page.body);
    assert!(retry_after(&page.headers) > 600);
    assert_eq!(
        lockout_row(&oidc, &subject).await.map(|r| (r.0, r.1)),
        Some((3, 1200))
    );
    assert_eq!(lockout_audits(&oidc).await.len(), 2);
}

/// Sessions (and so the admin UI and audit rows) record the address the
/// limiter resolved: the forwarded client behind a trusted proxy, the
/// socket's address otherwise (a spoofed header changes nothing).
async fn sessions_record_the_forwarded_client_only_behind_a_trusted_proxy(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[("PORTCULLIS_RATE_LIMITS_TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    oidc.user("alice").await;
    let via = |local: IpAddr| {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .local_address(local)
            .default_headers(headers)
            .build()
            .unwrap();
        Browser::with_client(&oidc.issuer, http)
    };
    for (local, expected) in [
        (IpAddr::V4(Ipv4Addr::LOCALHOST), "203.0.113.7"),
        (OTHER_IP, "127.0.0.2"),
    ] {
        let browser = via(local);
        let page = login(&oidc, &browser, "alice", PASSWORD).await;
        assert_eq!(page.status, 303, "{}", page.body);
        let list: serde_json::Value = browser
            .http
            .get(oidc.url("/account/sessions"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let current = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == true)
            .unwrap();
        assert_eq!(current["ip"], expected, "from {local}: {current}");
    }
}
