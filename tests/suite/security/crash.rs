//! Issue 9: crash safety. Every write the server acknowledged survives a
//! SIGKILL at any moment.
//!
//! Black-box against the real binary: several rounds of concurrent load —
//! client-credentials issuance, revocation, refresh-token rotation, session
//! ends (by the person and by staff), refund request → approve → executed —
//! each ended by SIGKILL at a random moment while requests are in flight,
//! then a restart on the same data. Every request whose success response
//! arrived in full is written to an in-memory log with what it established;
//! requests cut off by the kill are "unacknowledged" and their subjects
//! become unknown (the write may or may not have landed; both are fine).
//! After the last restart the log is checked: issued tokens are active,
//! revoked and rotated ones inactive, ended sessions ended with their tokens
//! inactive, refunds at least as far along as acknowledged, an audit row for
//! every acknowledged audited request (by `x-request-id`), idempotency keys
//! still replay, and `portcullis audit verify` passes.
//!
//! The random choices (load length per round, worker choices) come from a
//! seeded RNG; the seed is printed and named in every failure, and
//! `PORTCULLIS_CRASH_SEED=<n>` replays it (thread scheduling still varies).
//!
//! What a SIGKILL shows: the server answers only after its transaction
//! committed (including the group-commit token writer). It cannot show
//! fsync-level durability across power loss — the kernel keeps what a
//! killed process wrote — which rests on SQLite `synchronous=FULL` and
//! PostgreSQL's defaults (`server/src/store/mod.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::oauth::flow::{AuthRequest, Browser, Client, Oidc, PASSWORD};
use crate::oauth::staff::staff;
use crate::support::{Backend, eventually, raw_pool};

backend_tests!(acknowledged_writes_survive_sigkill);

/// Load rounds, each ended by SIGKILL.
const ROUNDS: usize = 5;
/// Sessions signed in beforehand, to be ended during the load.
const END_POOL: usize = 30;
/// Refresh-token families rotated during the load.
const FAMILIES: usize = 16;
/// Acknowledged writes every round must reach, so a round that did
/// nothing cannot pass as a round that lost nothing.
const MIN_ACKS_PER_ROUND: usize = 5;
/// The customer whose sessions and grants are used.
const USER: &str = "carl";
/// Refund amounts: above this the refund waits for a second person.
const THRESHOLD: i64 = 10_000;

/// Server configuration for every start: staff step-up and tokens outlive
/// the test; rate limits off (the load is deliberate).
const SERVER_ENV: &[(&str, &str)] = &[
    ("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "1h"),
    ("PORTCULLIS_TOKENS_ACCESS_TTL", "1h"),
    ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_IP", "0"),
    ("PORTCULLIS_RATE_LIMITS_LOGIN_PER_USER", "0"),
    ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_IP", "0"),
    ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_CLIENT", "0"),
    ("PORTCULLIS_RATE_LIMITS_ACCOUNT_PER_IP", "0"),
    ("PORTCULLIS_RATE_LIMITS_ADMIN_PER_IP", "0"),
    ("PORTCULLIS_RATE_LIMITS_ADMIN_PER_USER", "0"),
];

// ---------------------------------------------------------------------------
// The log of acknowledged writes

/// What a token must look like at introspection after the crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Active,
    Inactive,
    /// An operation on it was cut off by a kill: either state is right.
    Unknown,
}

#[derive(Debug)]
struct TokenEntry {
    expect: Expect,
    /// How it was issued and, once settled, why it must be inactive.
    what: String,
    round: usize,
}

#[derive(Debug)]
struct RefundEntry {
    /// 0 `pending_approval`, 1 `approved`, 2 `executed`.
    level: u8,
    round: usize,
    idempotency_key: String,
    body: Value,
}

/// Acknowledged writes of one round, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    issued: usize,
    revoked: usize,
    rotated: usize,
    sessions_ended: usize,
    refund_steps: usize,
    audited: usize,
}

impl Counts {
    fn add(self, o: Counts) -> Counts {
        Counts {
            issued: self.issued + o.issued,
            revoked: self.revoked + o.revoked,
            rotated: self.rotated + o.rotated,
            sessions_ended: self.sessions_ended + o.sessions_ended,
            refund_steps: self.refund_steps + o.refund_steps,
            audited: self.audited + o.audited,
        }
    }

    fn every_kind(&self) -> bool {
        [
            self.issued,
            self.revoked,
            self.rotated,
            self.sessions_ended,
            self.refund_steps,
            self.audited,
        ]
        .iter()
        .all(|n| *n > 0)
    }

    fn writes(&self) -> usize {
        // Audited requests are also counted under their own kind.
        self.issued + self.revoked + self.rotated + self.sessions_ended + self.refund_steps
    }
}

#[derive(Debug, Default)]
struct Ledger {
    tokens: HashMap<String, TokenEntry>,
    /// Acknowledged session ends: (sid, round).
    ended: Vec<(String, usize)>,
    refunds: HashMap<String, RefundEntry>,
    /// Acknowledged audited requests: (request id, audit action, round).
    audited: Vec<(String, &'static str, usize)>,
    /// Responses that arrived in full but were not a success.
    unexpected: Vec<String>,
    /// Per round (index 0: setup).
    counts: Vec<Counts>,
}

impl Ledger {
    /// Acknowledged writes of every load round (setup excluded).
    fn total(&self) -> Counts {
        self.counts
            .iter()
            .skip(1)
            .fold(Counts::default(), |a, c| a.add(*c))
    }

    fn executed(&self) -> usize {
        self.refunds.values().filter(|r| r.level == 2).count()
    }

    fn count(&mut self, round: usize) -> &mut Counts {
        if self.counts.len() <= round {
            self.counts.resize(round + 1, Counts::default());
        }
        &mut self.counts[round]
    }

    /// An acknowledged token (counted by the caller: one write may issue two).
    fn issued(&mut self, token: &str, what: &str, round: usize) {
        self.tokens.insert(
            token.to_string(),
            TokenEntry {
                expect: Expect::Active,
                what: what.to_string(),
                round,
            },
        );
    }

    /// An operation that may end `token` is about to be sent.
    fn doubt(&mut self, token: &str) {
        if let Some(e) = self.tokens.get_mut(token) {
            e.expect = Expect::Unknown;
        }
    }

    /// An acknowledged operation ended `token`.
    fn ended_token(&mut self, token: &str, why: &str, round: usize) {
        if let Some(e) = self.tokens.get_mut(token) {
            e.expect = Expect::Inactive;
            e.what = format!("{}, then {why} in round {round}", e.what);
        }
    }

    fn audited(&mut self, request_id: &str, action: &'static str, round: usize) {
        self.audited.push((request_id.to_string(), action, round));
        self.count(round).audited += 1;
    }

    fn refund(&mut self, id: &str, level: u8, round: usize) {
        if let Some(r) = self.refunds.get_mut(id) {
            r.level = r.level.max(level);
        }
        self.count(round).refund_steps += 1;
    }
}

fn level_of(status: &str) -> Option<u8> {
    match status {
        "pending_approval" => Some(0),
        "approved" => Some(1),
        "executed" => Some(2),
        _ => None,
    }
}

fn short(token: &str) -> String {
    format!("{}…", &token[..token.len().min(14)])
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

// ---------------------------------------------------------------------------
// Fixture: clients, staff, and what the workers draw from

struct Fixture {
    /// A service using `client_credentials`.
    svc: Client,
    /// A gateway allowed to introspect.
    gw: Client,
    /// The customer's code-flow app (refresh tokens).
    shop: Client,
    /// The payments service (`refunds:execute`).
    payments: Client,
    /// Bearer tokens: alice (support), bob (refund_approver).
    alice: String,
    bob: String,
}

/// A session of the customer to be ended, with the tokens issued through it.
struct EndTarget {
    browser: Browser,
    sid: String,
    csrf: String,
    tokens: Vec<String>,
}

#[derive(Default)]
struct Pools {
    /// Acknowledged client-credentials tokens not yet picked for revocation.
    revocable: Mutex<Vec<String>>,
    /// Current refresh token of each family still in use.
    families: Mutex<Vec<String>>,
    /// Live sessions not yet picked for ending.
    sessions: Mutex<Vec<EndTarget>>,
}

/// One round of load against one server process.
struct Round {
    n: usize,
    public: String,
    admin: String,
    http: reqwest::Client,
    fx: Arc<Fixture>,
    pools: Arc<Pools>,
    ledger: Arc<Mutex<Ledger>>,
    stop: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests whose response never arrived in full.
    lost: AtomicUsize,
    /// Of those, failures before the kill (the server was supposed to be
    /// up): count and a few samples.
    failed_early: AtomicUsize,
    early_samples: Mutex<Vec<String>>,
}

impl Round {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A request whose answer never arrived in full.
    fn lose(&self, what: &str, err: &reqwest::Error) {
        self.lost.fetch_add(1, Ordering::SeqCst);
        if !self.stopped() {
            self.failed_early.fetch_add(1, Ordering::SeqCst);
            let mut samples = self.early_samples.lock().unwrap();
            if samples.len() < 5 {
                samples.push(format!("{what}: {err:?}"));
            }
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }

    /// Sends `req` with a fresh `x-request-id`. `Some((body, request id))`
    /// only when a success answer arrived in full (acknowledged); a cut-off
    /// request is `None`, a complete non-success answer is logged as
    /// unexpected and `None`.
    async fn call(&self, what: &str, req: reqwest::RequestBuilder) -> Option<(Value, String)> {
        let rid = format!("crash-{}-{}", self.n, uuid::Uuid::new_v4().simple());
        let req = req.header("x-request-id", &rid);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let got = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let echoed = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let text = resp.text().await?;
            Ok::<_, reqwest::Error>((status, echoed, text))
        }
        .await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let (status, echoed, text) = match got {
            Ok(answer) => answer,
            Err(e) => {
                self.lose(what, &e);
                return None;
            }
        };
        let json = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        if !(200..300).contains(&status) || echoed != rid || json.is_null() {
            self.ledger().unexpected.push(format!(
                "round {}: {what} answered {status} (x-request-id {echoed:?}, sent {rid}): {}",
                self.n,
                truncate(&text)
            ));
            return None;
        }
        Some((json, rid))
    }

    fn unexpected(&self, what: &str, body: &Value) {
        self.ledger().unexpected.push(format!(
            "round {}: {what}: {}",
            self.n,
            truncate(&body.to_string())
        ));
    }

    fn token_request(&self, client: &Client, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/token", self.public))
            .basic_auth(&client.id, client.secret.as_deref())
            .form(form)
    }
}

// ---------------------------------------------------------------------------
// Workers: each loops until the round is stopped (right after the kill).

/// Client-credentials issuance.
async fn issue_worker(r: Arc<Round>, _rng: StdRng) {
    while !r.stopped() {
        let req = r.token_request(
            &r.fx.svc,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders:read"),
            ],
        );
        let Some((body, _)) = r.call("client_credentials", req).await else {
            continue;
        };
        let Some(token) = body["access_token"].as_str() else {
            r.unexpected("client_credentials without access_token", &body);
            continue;
        };
        {
            let mut l = r.ledger();
            l.issued(token, "client_credentials token", r.n);
            l.count(r.n).issued += 1;
        }
        r.pools.revocable.lock().unwrap().push(token.to_string());
    }
}

/// Revocation (RFC 7009) of acknowledged client-credentials tokens.
async fn revoke_worker(r: Arc<Round>, mut rng: StdRng) {
    while !r.stopped() {
        let picked = {
            let mut pool = r.pools.revocable.lock().unwrap();
            (!pool.is_empty()).then(|| {
                let i = rng.gen_range(0..pool.len());
                pool.swap_remove(i)
            })
        };
        let Some(token) = picked else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        r.ledger().doubt(&token);
        let req = r
            .http
            .post(format!("{}/revoke", r.public))
            .basic_auth(&r.fx.svc.id, r.fx.svc.secret.as_deref())
            .form(&[
                ("token", token.as_str()),
                ("token_type_hint", "access_token"),
            ]);
        // /revoke answers 200 with an empty body.
        let req_id = format!("crash-{}-{}", r.n, uuid::Uuid::new_v4().simple());
        r.in_flight.fetch_add(1, Ordering::SeqCst);
        let got = async {
            let resp = req.header("x-request-id", &req_id).send().await?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        }
        .await;
        r.in_flight.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok((200, _)) => {
                let mut l = r.ledger();
                l.ended_token(&token, "revoked at /revoke", r.n);
                l.count(r.n).revoked += 1;
            }
            Ok((status, text)) => r.ledger().unexpected.push(format!(
                "round {}: /revoke answered {status}: {}",
                r.n,
                truncate(&text)
            )),
            Err(e) => r.lose("/revoke", &e),
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
    }
}

/// Refresh-token rotation. A family whose rotation was cut off is dropped
/// (its current token is unknown; presenting it again could be reuse).
async fn rotate_worker(r: Arc<Round>, mut rng: StdRng) {
    while !r.stopped() {
        let picked = {
            let mut pool = r.pools.families.lock().unwrap();
            (!pool.is_empty()).then(|| {
                let i = rng.gen_range(0..pool.len());
                pool.swap_remove(i)
            })
        };
        let Some(old) = picked else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        r.ledger().doubt(&old);
        let req = r.token_request(
            &r.fx.shop,
            &[("grant_type", "refresh_token"), ("refresh_token", &old)],
        );
        let Some((body, _)) = r.call("refresh_token", req).await else {
            continue;
        };
        let (Some(access), Some(refresh)) = (
            body["access_token"].as_str(),
            body["refresh_token"].as_str(),
        ) else {
            r.unexpected("refresh without tokens", &body);
            continue;
        };
        {
            let mut l = r.ledger();
            l.ended_token(&old, "rotated", r.n);
            l.issued(access, "access token from a rotation", r.n);
            l.issued(refresh, "refresh token from a rotation", r.n);
            l.count(r.n).rotated += 1;
        }
        r.pools.families.lock().unwrap().push(refresh.to_string());
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
    }
}

/// Session ends: by the person (`/account/sessions/{id}/end`) or by staff
/// (`/admin/api/sessions/{id}/terminate`).
async fn end_worker(r: Arc<Round>, mut rng: StdRng) {
    while !r.stopped() {
        let Some(target) = r.pools.sessions.lock().unwrap().pop() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        {
            let mut l = r.ledger();
            for t in &target.tokens {
                l.doubt(t);
            }
        }
        let by_staff = rng.gen_bool(0.5);
        let (req, action, how) = if by_staff {
            (
                r.http
                    .post(format!(
                        "{}/admin/api/sessions/{}/terminate",
                        r.admin, target.sid
                    ))
                    .bearer_auth(&r.fx.alice)
                    .json(&json!({"reason": "crash test", "ticket_id": "CRASH-1"})),
                "session.terminate",
                "session terminated by staff",
            )
        } else {
            (
                target
                    .browser
                    .http
                    .post(format!("{}/account/sessions/{}/end", r.public, target.sid))
                    .header("accept", "application/json")
                    .header("x-csrf-token", &target.csrf),
                "session.end",
                "session ended by the person",
            )
        };
        if let Some((_, rid)) = r.call(how, req).await {
            let mut l = r.ledger();
            l.ended.push((target.sid.clone(), r.n));
            l.count(r.n).sessions_ended += 1;
            l.audited(&rid, action, r.n);
            for t in &target.tokens {
                l.ended_token(t, how, r.n);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
    }
}

/// Refunds: alice requests, bob approves (above the threshold), the
/// payments service executes; each step only after the previous one was
/// acknowledged.
async fn refund_worker(r: Arc<Round>, mut rng: StdRng) {
    let mut payments_token: Option<String> = None;
    while !r.stopped() {
        let key = uuid::Uuid::new_v4().to_string();
        let amount = if rng.gen_bool(0.75) {
            THRESHOLD + rng.gen_range(1..1_000_000)
        } else {
            rng.gen_range(1..=THRESHOLD)
        };
        let body = json!({
            "payment_id": format!("pay_{key}"),
            "amount_minor": amount,
            "currency": "EUR",
            "reason": "crash test",
            "ticket_id": "CRASH-2",
        });
        let req = r
            .http
            .post(format!("{}/admin/api/refunds", r.admin))
            .bearer_auth(&r.fx.alice)
            .header("idempotency-key", &key)
            .json(&body);
        let Some((created, rid)) = r.call("refund request", req).await else {
            continue;
        };
        let (Some(id), Some(level)) = (
            created["id"].as_str().map(str::to_string),
            created["status"].as_str().and_then(level_of),
        ) else {
            r.unexpected("refund request", &created);
            continue;
        };
        {
            let mut l = r.ledger();
            l.refunds.insert(
                id.clone(),
                RefundEntry {
                    level,
                    round: r.n,
                    idempotency_key: key.clone(),
                    body: body.clone(),
                },
            );
            l.refund(&id, level, r.n);
            l.audited(&rid, "refund.request", r.n);
        }
        let mut approval = created["approval_token"].as_str().map(str::to_string);
        if level == 0 {
            if r.stopped() {
                break;
            }
            let req = r
                .http
                .post(format!("{}/admin/api/refunds/{id}/approve", r.admin))
                .bearer_auth(&r.fx.bob)
                .json(&json!({"reason": "verified", "ticket_id": "CRASH-3"}));
            let Some((approved, rid)) = r.call("refund approve", req).await else {
                continue;
            };
            if approved["status"] != "approved" {
                r.unexpected("refund approve", &approved);
                continue;
            }
            let mut l = r.ledger();
            l.refund(&id, 1, r.n);
            l.audited(&rid, "refund.approve", r.n);
            approval = approved["approval_token"].as_str().map(str::to_string);
        }
        let Some(approval) = approval else {
            r.unexpected("approved refund without approval_token", &created);
            continue;
        };
        if payments_token.is_none() {
            let req = r.token_request(
                &r.fx.payments,
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", "refunds:execute"),
                ],
            );
            if let Some((t, _)) = r.call("payments client_credentials", req).await
                && let Some(t) = t["access_token"].as_str()
            {
                let mut l = r.ledger();
                l.issued(t, "payments service token", r.n);
                l.count(r.n).issued += 1;
                drop(l);
                payments_token = Some(t.to_string());
            }
        }
        let Some(bearer) = &payments_token else {
            continue;
        };
        if r.stopped() {
            break;
        }
        let req = r
            .http
            .post(format!("{}/admin/api/refunds/{id}/executed", r.admin))
            .bearer_auth(bearer)
            .json(&json!({ "approval_token": approval }));
        let Some((executed, rid)) = r.call("refund executed", req).await else {
            continue;
        };
        if executed["status"] != "executed" {
            r.unexpected("refund executed", &executed);
            continue;
        }
        let mut l = r.ledger();
        l.refund(&id, 2, r.n);
        l.audited(&rid, "refund.execute", r.n);
    }
}

// ---------------------------------------------------------------------------
// Setup

/// A browser whose connections are never pooled, so none outlives a kill.
fn fresh_browser(issuer: &str) -> Browser {
    Browser::with_client(
        issuer,
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    )
}

/// Authorizes `shop` in `browser` (signing in if asked) and redeems the code.
async fn grant(oidc: &Oidc, browser: &Browser, shop: &Client) -> (String, String) {
    let req = AuthRequest::new(shop, "openid");
    let done = browser.authorize(&req, Some((USER, PASSWORD))).await;
    let tokens = oidc
        .exchange_code(shop, &done.code(), &req.pkce.verifier)
        .await;
    let body = tokens.ok();
    (
        body["access_token"].as_str().unwrap().to_string(),
        body["refresh_token"].as_str().unwrap().to_string(),
    )
}

/// The browser's own session id and its CSRF token.
async fn current_session(oidc: &Oidc, browser: &Browser) -> (String, String) {
    let list: Value = browser
        .http
        .get(oidc.url("/account/sessions"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["current"] == true)
        .unwrap_or_else(|| panic!("no current session in {list}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    (sid, list["csrf_token"].as_str().unwrap().to_string())
}

fn restart_env(oidc: &Oidc) -> Vec<(&'static str, String)> {
    let addr = oidc.issuer.trim_start_matches("http://").to_string();
    let mut env: Vec<(&'static str, String)> = vec![
        ("PORTCULLIS_HTTP_PUBLIC_ADDR", addr),
        ("PORTCULLIS_ISSUER", oidc.issuer.clone()),
    ];
    env.extend(SERVER_ENV.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

async fn restart(oidc: &mut Oidc) {
    let env = restart_env(oidc);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    oidc.server = oidc.env.serve_with(&env).await;
    assert_eq!(
        oidc.server.public, oidc.issuer,
        "the restarted server listens where the issuer says"
    );
}

// ---------------------------------------------------------------------------
// The test

async fn acknowledged_writes_survive_sigkill(backend: Backend) {
    let seed: u64 = std::env::var("PORTCULLIS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let label = format!(
        "crash test on {} with seed {seed} (replay: PORTCULLIS_CRASH_SEED={seed})",
        if backend.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    eprintln!("{label}");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut oidc = Oidc::start_with(backend, SERVER_ENV).await;
    let ui = oidc
        .code_client("crash-ui", "openid", &["--first-party"])
        .await;
    let svc = oidc
        .client(
            "svc",
            &["--grant", "client_credentials", "--scope", "orders:read"],
        )
        .await;
    let gw = oidc
        .client("gw", &["--grant", "client_credentials", "--may-introspect"])
        .await;
    let shop = oidc.code_client("shop", "openid", &["--first-party"]).await;
    let payments = oidc
        .client(
            "payments",
            &[
                "--grant",
                "client_credentials",
                "--scope",
                "refunds:execute",
            ],
        )
        .await;
    let alice = staff(&oidc, &ui, "alice", &["support"]).await;
    let bob = staff(&oidc, &ui, "bob", &["refund_approver"]).await;
    oidc.user(USER).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let pools = Arc::new(Pools::default());
    // Sessions to end, each with the tokens issued through it.
    for _ in 0..END_POOL {
        let browser = fresh_browser(&oidc.issuer);
        let (access, refresh) = grant(&oidc, &browser, &shop).await;
        let (sid, csrf) = current_session(&oidc, &browser).await;
        let mut l = ledger.lock().unwrap();
        l.issued(&access, "access token of a session to end", 0);
        l.issued(&refresh, "refresh token of a session to end", 0);
        pools.sessions.lock().unwrap().push(EndTarget {
            browser,
            sid,
            csrf,
            tokens: vec![access, refresh],
        });
    }
    // Refresh families, all in one session that is never ended.
    let browser = fresh_browser(&oidc.issuer);
    for _ in 0..FAMILIES {
        let (access, refresh) = grant(&oidc, &browser, &shop).await;
        let mut l = ledger.lock().unwrap();
        l.issued(&access, "access token of a refresh family", 0);
        l.issued(&refresh, "refresh token of a refresh family", 0);
        pools.families.lock().unwrap().push(refresh);
    }
    let fx = Arc::new(Fixture {
        svc,
        gw,
        shop,
        payments,
        alice: alice.access_token.clone(),
        bob: bob.access_token.clone(),
    });

    let mut summary = Vec::new();
    let mut killed_mid_load = 0;
    let mut lost_total = 0;
    for n in 1..=ROUNDS {
        if n > 1 {
            restart(&mut oidc).await;
        }
        let round = Arc::new(Round {
            n,
            public: oidc.server.public.clone(),
            admin: oidc.server.admin.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            fx: fx.clone(),
            pools: pools.clone(),
            ledger: ledger.clone(),
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            failed_early: AtomicUsize::new(0),
            early_samples: Mutex::new(Vec::new()),
        });
        let mut workers = tokio::task::JoinSet::new();
        let mut seeded = || StdRng::seed_from_u64(rng.r#gen());
        for _ in 0..2 {
            workers.spawn(issue_worker(round.clone(), seeded()));
            workers.spawn(rotate_worker(round.clone(), seeded()));
            workers.spawn(refund_worker(round.clone(), seeded()));
        }
        workers.spawn(revoke_worker(round.clone(), seeded()));
        workers.spawn(end_worker(round.clone(), seeded()));

        // Warm up until this round has done something and the test as a
        // whole has seen every kind of write (so the assertions below never
        // depend on how fast the machine is), then kill at a random moment.
        let started = std::time::Instant::now();
        let warm = eventually(Duration::from_secs(60), || {
            let ledger = ledger.clone();
            async move {
                let mut l = ledger.lock().unwrap();
                l.count(n).writes() >= MIN_ACKS_PER_ROUND
                    && l.total().every_kind()
                    && l.executed() > 0
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=1700))).await;
        let load = started.elapsed();
        if !warm {
            eprintln!("round {n}: the load made no progress within 60 s");
        }
        // No new requests from here on (a refused connection would only
        // drop its subject from the log); those in flight die with the
        // process.
        round.stop.store(true, Ordering::SeqCst);
        let in_flight = round.in_flight.load(Ordering::SeqCst);
        let exited = oidc.server.kill().await;
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
        let failed_early = round.failed_early.load(Ordering::SeqCst);
        if exited.is_some() || failed_early > 0 {
            let stdout = oidc.server.stdout();
            let tail = stdout[stdout.len().saturating_sub(30)..].join("\n");
            panic!(
                "{label}: round {n}: the server {} before the kill; {failed_early} requests \
                 failed while it should have been up, e.g.:\n{}\nstderr:\n{}\nstdout (tail):\n{tail}",
                match exited {
                    Some(status) => format!("exited by itself ({status})"),
                    None => "was still running".to_string(),
                },
                round.early_samples.lock().unwrap().join("\n"),
                oidc.server.stderr(),
            );
        }
        let lost = round.lost.load(Ordering::SeqCst);
        if in_flight > 0 {
            killed_mid_load += 1;
        }
        lost_total += lost;
        let counts = *ledger.lock().unwrap().count(n);
        let line = format!(
            "round {n}: killed after {} ms with {in_flight} requests in flight; \
             {lost} requests cut off; acknowledged: {counts:?}",
            load.as_millis()
        );
        eprintln!("{line}");
        summary.push(line);
    }

    // Final restart on the same data, then the check.
    restart(&mut oidc).await;
    let summary = summary.join("\n");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.unexpected.is_empty(),
        "{label}: {} complete answers that were not a success (a lost write looks like \
         this after a restart; first 40):\n{}\n{summary}",
        ledger.unexpected.len(),
        ledger
            .unexpected
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for n in 1..=ROUNDS {
        let c = ledger.counts.get(n).copied().unwrap_or_default();
        assert!(
            c.writes() >= MIN_ACKS_PER_ROUND,
            "{label}: round {n} acknowledged only {} writes:\n{summary}",
            c.writes()
        );
    }
    let total = ledger.total();
    assert!(
        total.every_kind(),
        "{label}: every kind of write must have been acknowledged at least once: \
         {total:?}\n{summary}"
    );
    assert!(
        ledger.executed() > 0,
        "{label}: no refund went all the way to executed\n{summary}"
    );
    assert!(
        killed_mid_load > 0 && lost_total > 0,
        "{label}: no kill hit requests in flight\n{summary}"
    );

    let mut problems = Vec::new();
    check_tokens(&oidc, &fx.gw, &ledger, &mut problems).await;
    check_sessions(&oidc, &ledger, &mut problems).await;
    check_refunds(&oidc, &fx, &ledger, &mut problems).await;
    check_audit(&oidc, &ledger, &mut problems).await;
    let verify = oidc.env.cli(&["audit", "verify"]).await;
    if verify.code != 0 {
        problems.push(format!(
            "`portcullis audit verify` failed ({}):\n{}{}",
            verify.code, verify.stdout, verify.stderr
        ));
    }
    let shown = problems
        .iter()
        .take(40)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        problems.is_empty(),
        "{label}: {} acknowledged writes lost or broken after SIGKILL + restart \
         (first 40):\n{shown}\n{summary}",
        problems.len(),
    );
}

// ---------------------------------------------------------------------------
// Checks after the last restart

/// Every token whose state is known is active or inactive at `/introspect`.
async fn check_tokens(oidc: &Oidc, gw: &Client, ledger: &Ledger, problems: &mut Vec<String>) {
    let http = reqwest::Client::new();
    let url = oidc.url("/introspect");
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    let mut checked = 0;
    for (token, entry) in &ledger.tokens {
        let want = match entry.expect {
            Expect::Active => true,
            Expect::Inactive => false,
            Expect::Unknown => continue,
        };
        checked += 1;
        let (http, url, gate, gw) = (http.clone(), url.clone(), gate.clone(), gw.clone());
        let token = token.clone();
        let what = format!("{} (round {})", entry.what, entry.round);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let resp = http
                .post(&url)
                .basic_auth(&gw.id, gw.secret.as_deref())
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            match body["active"].as_bool() {
                Some(active) if status == 200 && active == want => None,
                _ => Some(format!(
                    "token {}: {what}: must be {} at /introspect, got {status} {body}",
                    short(&token),
                    if want { "active" } else { "inactive" },
                )),
            }
        });
    }
    while let Some(r) = set.join_next().await {
        problems.extend(r.unwrap());
    }
    assert!(checked > 0, "no token had a known state");
}

/// Every acknowledged session end is recorded.
async fn check_sessions(oidc: &Oidc, ledger: &Ledger, problems: &mut Vec<String>) {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let ended: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT id FROM sessions WHERE ended_at IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    pool.close().await;
    for (sid, round) in &ledger.ended {
        if !ended.contains(sid) {
            problems.push(format!(
                "session {sid}: end acknowledged in round {round} but the session is live"
            ));
        }
    }
}

/// Every acknowledged refund is at least as far along as acknowledged, and
/// its idempotency key still replays the first answer.
async fn check_refunds(oidc: &Oidc, fx: &Fixture, ledger: &Ledger, problems: &mut Vec<String>) {
    let http = reqwest::Client::new();
    let mut replayed = 0;
    for (id, entry) in &ledger.refunds {
        let resp = http
            .get(oidc.server.admin_url(&format!("/admin/api/refunds/{id}")))
            .bearer_auth(&fx.alice)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let found = body["status"].as_str().unwrap_or("");
        match level_of(found) {
            Some(level) if status == 200 && level >= entry.level => {}
            _ => problems.push(format!(
                "refund {id} (round {}): acknowledged at level {} \
                 (0 pending_approval, 1 approved, 2 executed), found {status} {found:?}",
                entry.round, entry.level
            )),
        }
        // A few replays of the request: the key and the answer are durable.
        if replayed < 5 {
            replayed += 1;
            let resp = http
                .post(oidc.server.admin_url("/admin/api/refunds"))
                .bearer_auth(&fx.alice)
                .header("idempotency-key", &entry.idempotency_key)
                .json(&entry.body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let replay_header = resp
                .headers()
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status != 201 || replay_header != "true" || body["id"] != id.as_str() {
                problems.push(format!(
                    "refund {id}: its Idempotency-Key no longer replays the request: \
                     {status} (Idempotent-Replayed {replay_header:?}) {body}"
                ));
            }
        }
    }
}

/// Every acknowledged audited request has its audit row.
async fn check_audit(oidc: &Oidc, ledger: &Ledger, problems: &mut Vec<String>) {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT request_id, action FROM audit_log WHERE request_id LIKE 'crash-%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let mut by_request: HashMap<String, Vec<String>> = HashMap::new();
    for (rid, action) in rows {
        by_request.entry(rid).or_default().push(action);
    }
    for (rid, action, round) in &ledger.audited {
        let found = by_request.get(rid).cloned().unwrap_or_default();
        if !found.iter().any(|a| a == action) {
            problems.push(format!(
                "request {rid} (round {round}): acknowledged, but no {action} audit row \
                 (rows for it: {found:?})"
            ));
        }
    }
}
