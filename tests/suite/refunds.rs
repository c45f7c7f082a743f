//! Issue 7: four-eyes refunds — state machine, idempotency, row locks,
//! approval tokens, expiry.
//!
//! Black-box against the real binary: staff enrol TOTP and sign in with it
//! through a first-party client (`oauth::staff`), so approvals over HTTP
//! carry a real, fresh second factor; the payments service executes with a
//! `client_credentials` token. The four-eyes rule and the state machine are
//! also tested as pure functions, and a few cases that need a controlled
//! clock or hand-made tokens call the domain (`portcullis::refunds`) on the
//! test's own connection to the server's database — real code on a real
//! database, next to the running server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis::audit::{Actor, ActorKind, AuditContext};
use portcullis::clock::ManualClock;
use portcullis::permissions::Permission;
use portcullis::refunds::state::{self, Status, Transition};
use portcullis::refunds::{
    ApproverFacts, FourEyesRefusal, RefundError, Refunds, Settings, StaffMember, four_eyes,
};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::oauth::flow::{Client, Oidc};
use crate::support::{Backend, eventually, unix_now};

backend_tests!(
    requests_validate_money_and_currency,
    threshold_decides_between_approved_and_pending,
    idempotent_replay_is_byte_identical,
    concurrent_creations_with_one_key_make_one_refund,
    approval_needs_another_person_with_a_fresh_second_factor,
    approve_and_execute_end_to_end,
    execution_refuses_bad_tokens_and_replays,
    every_transition_is_checked_and_audited,
    concurrent_approvals_exactly_one_wins,
    pending_requests_expire_after_restart,
);

const UI: &str = "admin-ui";
const PAYMENTS: &str = "payments-svc";
/// Staff of every test: alice (support), bob and carol (refund_approver),
/// dave (both). eve is a user without any role.
const STAFF: [(&str, &[&str]); 4] = [
    ("alice", &["support"]),
    ("bob", &["refund_approver"]),
    ("carol", &["refund_approver"]),
    ("dave", &["support", "refund_approver"]),
];

/// A running server with staff signed in, the admin UI client and the
/// payments service.
struct Desk {
    oidc: Oidc,
    ui: Client,
    payments: Client,
    /// Bearer tokens by username (staff: password + TOTP; eve: password).
    tokens: HashMap<String, String>,
}

async fn desk(backend: Backend, env: &[(&str, &str)]) -> Desk {
    let oidc = Oidc::start_with(backend, env).await;
    let ui = oidc.code_client(UI, "openid", &["--first-party"]).await;
    let payments = oidc
        .client(
            PAYMENTS,
            &[
                "--grant",
                "client_credentials",
                "--scope",
                "refunds:execute",
            ],
        )
        .await;
    let mut tokens = HashMap::new();
    for (user, roles) in STAFF {
        let login = crate::oauth::staff::staff(&oidc, &ui, user, roles).await;
        tokens.insert(user.to_string(), login.access_token);
    }
    oidc.user("eve").await;
    let eve = oidc.login_and_redeem(&ui, "eve", "openid").await;
    tokens.insert(
        "eve".into(),
        eve["access_token"].as_str().unwrap().to_string(),
    );
    Desk {
        oidc,
        ui,
        payments,
        tokens,
    }
}

impl Desk {
    /// The user's bearer token for the admin API.
    fn token(&self, username: &str) -> String {
        self.tokens[username].clone()
    }

    async fn payments_token(&self) -> String {
        self.oidc
            .client_credentials(&self.payments, Some("refunds:execute"))
            .await
            .str("access_token")
    }

    fn url(&self, path: &str) -> String {
        self.oidc.server.admin_url(path)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    /// POST /admin/api/refunds with a raw body.
    async fn request_raw(&self, token: &str, key: Option<&str>, body: &str) -> Resp {
        let mut req = self
            .oidc
            .http
            .post(self.url("/admin/api/refunds"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        self.send(req).await
    }

    async fn request(&self, token: &str, key: &str, body: &Value) -> Resp {
        self.request_raw(token, Some(key), &body.to_string()).await
    }

    /// A new refund of `amount` EUR cents requested by `user`; asserts 201.
    async fn new_refund(&self, user: &str, amount: i64) -> Value {
        let key = uuid::Uuid::new_v4().to_string();
        let r = self
            .request(
                &self.token(user),
                &key,
                &refund_body(&format!("pay_{key}"), amount, "EUR"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json
    }

    /// POST /admin/api/refunds/{id}/{action} as `user`.
    async fn action(&self, user: &str, id: &str, action: &str, body: &Value) -> Resp {
        let req = self
            .oidc
            .http
            .post(self.url(&format!("/admin/api/refunds/{id}/{action}")))
            .bearer_auth(self.token(user))
            .json(body);
        self.send(req).await
    }

    async fn get(&self, user: &str, path: &str) -> Resp {
        let req = self
            .oidc
            .http
            .get(self.url(path))
            .bearer_auth(self.token(user));
        self.send(req).await
    }

    async fn status_of(&self, id: &str) -> String {
        let r = self.get("alice", &format!("/admin/api/refunds/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["status"].as_str().unwrap().to_string()
    }

    async fn execute(&self, bearer: Option<&str>, id: &str, approval_token: &str) -> Resp {
        let mut req = self
            .oidc
            .http
            .post(self.url(&format!("/admin/api/refunds/{id}/executed")))
            .json(&json!({ "approval_token": approval_token }));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        self.send(req).await
    }

    /// The refund domain on the test's own connection to the server's
    /// database, with its signing keys and the default settings.
    async fn domain_with_clock(&self, clock: portcullis::clock::SharedClock) -> Refunds {
        let mut config = portcullis::config::Config::defaults().unwrap();
        config.issuer = self.oidc.issuer.clone();
        let keys = portcullis::keys::load(&self.oidc.env.keys_dir()).unwrap();
        Refunds::new(
            self.oidc.env.store().await,
            Arc::new(keys),
            Settings::from_config(&config),
            clock,
        )
    }

    async fn domain(&self) -> Refunds {
        self.domain_with_clock(Arc::new(portcullis::clock::SystemClock))
            .await
    }

    /// `username` as the domain sees a staff member: real id and
    /// permissions from the database; `amr` and `auth_time` as given.
    async fn member(&self, username: &str, amr: &[&str], auth_time: Option<i64>) -> StaffMember {
        let store = self.oidc.env.store().await;
        let user = portcullis::store::users::find_by_username(&store, username)
            .await
            .unwrap()
            .unwrap();
        let permissions = portcullis::permissions::permissions_of(&store, &user.id)
            .await
            .unwrap();
        StaffMember {
            user_id: user.id,
            username: user.username,
            permissions,
            amr: amr.iter().map(|s| s.to_string()).collect(),
            auth_time,
        }
    }

    /// Audit rows for `refund:<id>`, in order.
    async fn audit(&self, id: &str) -> Vec<Value> {
        let out = self
            .oidc
            .env
            .cli(&["audit", "export", "--format", "jsonl"])
            .await;
        out.assert_ok();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|row| row["target"] == format!("refund:{id}"))
            .collect()
    }

    async fn audit_actions(&self, id: &str) -> Vec<String> {
        self.audit(id)
            .await
            .iter()
            .map(|r| r["action"].as_str().unwrap().to_string())
            .collect()
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts the status and that `message` mentions every needle.
    #[track_caller]
    fn assert_error(&self, status: u16, needles: &[&str]) {
        assert_eq!(self.status, status, "{}", self.text);
        let message = self.json["message"].as_str().unwrap_or("");
        for n in needles {
            assert!(
                message.contains(n),
                "message should mention {n:?}: {}",
                self.text
            );
        }
    }
}

fn refund_body(payment_id: &str, amount: i64, currency: &str) -> Value {
    json!({
        "payment_id": payment_id,
        "amount_minor": amount,
        "currency": currency,
        "reason": "customer returned the goods",
        "ticket_id": "SUP-1234",
    })
}

fn why(reason: &str) -> Value {
    json!({ "reason": reason, "ticket_id": "SUP-77" })
}

fn ctx(user: &StaffMember) -> AuditContext {
    AuditContext {
        actor: Actor {
            kind: ActorKind::User,
            id: user.user_id.clone(),
            session: None,
        },
        request_id: Some(format!("test-{}", uuid::Uuid::new_v4())),
        ip: None,
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The HTTP status the admin API answers for a domain error.
fn http_status(e: RefundError) -> u16 {
    use axum::response::IntoResponse;
    portcullis::error::AppError::from(e)
        .into_response()
        .status()
        .as_u16()
}

const RECORD_FIELDS: [&str; 11] = [
    "id",
    "status",
    "payment_id",
    "amount_minor",
    "currency",
    "reason",
    "ticket_id",
    "requested_by",
    "approved_by",
    "created_at",
    "updated_at",
];

/// The record has exactly the DESIGN.md fields (plus `extra`).
#[track_caller]
fn assert_record_shape(v: &Value, extra: &[&str]) {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = RECORD_FIELDS.iter().chain(extra).copied().collect();
    want.sort_unstable();
    assert_eq!(keys, want, "{v}");
}

// ---- pure rules -------------------------------------------------------------

/// Every (status, transition) pair: the five designed edges succeed; the
/// other 25 fail naming the current status and the attempted transition.
#[test]
fn state_machine_allows_exactly_the_designed_transitions() {
    let legal = [
        (
            Status::PendingApproval,
            Transition::Approve,
            Status::Approved,
        ),
        (
            Status::PendingApproval,
            Transition::Reject,
            Status::Rejected,
        ),
        (
            Status::PendingApproval,
            Transition::Cancel,
            Status::Cancelled,
        ),
        (Status::PendingApproval, Transition::Expire, Status::Expired),
        (Status::Approved, Transition::Execute, Status::Executed),
    ];
    let mut refused = 0;
    for from in Status::ALL {
        for t in Transition::ALL {
            match legal.iter().find(|(f, tt, _)| *f == from && *tt == t) {
                Some((_, _, to)) => {
                    let change = state::transition(from, t).unwrap();
                    assert_eq!((change.from(), change.to()), (Some(from), *to));
                    assert_eq!(change.via(), Some(t));
                }
                None => {
                    refused += 1;
                    let e = state::transition(from, t).unwrap_err();
                    assert_eq!((e.current, e.attempted), (from, t));
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("is {from}; cannot {t}")), "{msg}");
                    let err = RefundError::IllegalTransition {
                        id: "r1".into(),
                        illegal: e,
                    };
                    assert_eq!(http_status(err), 409);
                }
            }
        }
    }
    assert_eq!(refused, 25);
    for s in [
        Status::Rejected,
        Status::Cancelled,
        Status::Expired,
        Status::Executed,
    ] {
        assert!(s.is_final());
    }
    // At or below the threshold a request is approved on creation.
    assert_eq!(state::initial(10_000, 10_000).to(), Status::Approved);
    assert_eq!(state::initial(1, 10_000).to(), Status::Approved);
    assert_eq!(state::initial(10_001, 10_000).to(), Status::PendingApproval);
    assert_eq!(
        state::initial(i64::MAX, 10_000).to(),
        Status::PendingApproval
    );
    assert_eq!(state::initial(1, 0).to(), Status::PendingApproval);
}

/// The four-eyes decision: the permission, a different person, a second
/// factor within `mfa.step_up_max_age` — checked in that order.
#[test]
fn four_eyes_rule() {
    let approve: std::collections::BTreeSet<Permission> =
        [Permission::RefundsApprove].into_iter().collect();
    let request_only: std::collections::BTreeSet<Permission> =
        [Permission::RefundsRequest].into_iter().collect();
    let now = 1_800_000_000;
    let amr = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let otp = amr(&["pwd", "otp"]);
    let check = |approver: &str, perms, amr: &[String], auth_time: Option<i64>| {
        four_eyes::check(
            "requester-id",
            &ApproverFacts {
                user_id: approver,
                permissions: perms,
                amr,
                auth_time,
            },
            now,
            300,
        )
    };
    assert_eq!(check("approver-id", &approve, &otp, Some(now)), Ok(()));
    assert_eq!(
        check("approver-id", &approve, &otp, Some(now - 300)),
        Ok(())
    );
    for methods in [&["hwk"][..], &["swk", "pwd"][..], &["pwd", "otp"][..]] {
        assert_eq!(
            check("approver-id", &approve, &amr(methods), Some(now - 10)),
            Ok(()),
            "{methods:?}"
        );
    }
    // Stale, password only, no methods, no auth_time: the step-up challenge.
    let step_up = Err(FourEyesRefusal::StepUpRequired { max_age: 300 });
    for (methods, at) in [
        (otp.clone(), Some(now - 301)),
        (amr(&["pwd"]), Some(now)),
        (vec![], Some(now)),
        (otp.clone(), None),
    ] {
        assert_eq!(
            check("approver-id", &approve, &methods, at),
            step_up,
            "{methods:?} {at:?}"
        );
    }
    // The requester never approves, however fresh; refused before step-up.
    assert_eq!(
        check("requester-id", &approve, &otp, Some(now)),
        Err(FourEyesRefusal::SelfApproval)
    );
    assert_eq!(
        check("requester-id", &approve, &amr(&["pwd"]), None),
        Err(FourEyesRefusal::SelfApproval)
    );
    // Without refunds:approve nothing else matters.
    assert_eq!(
        check("approver-id", &request_only, &otp, Some(now)),
        Err(FourEyesRefusal::MissingPermission)
    );
    // The configured age is honoured.
    let facts = ApproverFacts {
        user_id: "approver-id",
        permissions: &approve,
        amr: &otp,
        auth_time: Some(now - 60),
    };
    assert_eq!(
        four_eyes::check("requester-id", &facts, now, 30),
        Err(FourEyesRefusal::StepUpRequired { max_age: 30 })
    );
    assert_eq!(four_eyes::check("requester-id", &facts, now, 60), Ok(()));
    // How the API answers each refusal.
    assert_eq!(http_status(FourEyesRefusal::SelfApproval.into()), 403);
    assert_eq!(http_status(FourEyesRefusal::MissingPermission.into()), 403);
    assert_eq!(
        http_status(FourEyesRefusal::StepUpRequired { max_age: 300 }.into()),
        401
    );
}

#[test]
fn currencies_and_amounts() {
    use portcullis::refunds::NewRefund;
    use portcullis::refunds::validate::{currency, is_currency};
    for code in [
        "EUR", "USD", "JPY", "GBP", "CHF", "KWD", "XOF", "ZWG", "SLE",
    ] {
        assert!(is_currency(code), "{code}");
    }
    for code in ["XYZ", "XXX", "XTS", "XAU", "EURO", "EU", "", "E1R", "eur "] {
        assert!(!is_currency(code), "{code}");
    }
    assert_eq!(currency(" eur ").unwrap(), "EUR");
    let parse = |amount: &str| {
        NewRefund::from_json(
            format!(
                r#"{{"payment_id":"p","amount_minor":{amount},"currency":"EUR","reason":"r"}}"#
            )
            .as_bytes(),
        )
    };
    assert_eq!(parse("1").unwrap().amount_minor, 1);
    assert_eq!(parse("9223372036854775807").unwrap().amount_minor, i64::MAX);
    for (amount, needle) in [
        ("0", "greater than zero"),
        ("-1", "greater than zero"),
        ("-9223372036854775808", "greater than zero"),
        ("-99999999999999999999", "greater than zero"),
        ("9223372036854775808", "too large"),
        ("18446744073709551616", "too large"),
        ("1e30", "too large"),
        ("10.5", "integer"),
        ("10.0", "integer"),
        ("1e3", "integer"),
        ("\"1000\"", "not a string"),
        ("null", "required"),
        ("true", "integer"),
        ("[1]", "integer"),
    ] {
        let e = parse(amount).unwrap_err();
        assert!(
            matches!(e, RefundError::Invalid(_)) && e.to_string().contains(needle),
            "{amount}: {e}"
        );
        assert_eq!(http_status(e), 400);
    }
}

/// `refunds.pending_ttl`, `refunds.idempotency_ttl`, `refunds.payments_audience`.
#[test]
fn refund_settings_have_defaults_and_name_bad_values() {
    use portcullis::config::Config;
    let c = Config::defaults().unwrap();
    assert_eq!(c.refunds.pending_ttl, Duration::from_secs(86_400));
    assert_eq!(c.refunds.idempotency_ttl, Duration::from_secs(86_400));
    assert_eq!(c.refunds.payments_audience, "payments");
    let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let c = Config::load_with_env(None, env("PORTCULLIS_REFUNDS_PENDING_TTL", "2h")).unwrap();
    assert_eq!(c.refunds.pending_ttl, Duration::from_secs(7200));
    for (key, value) in [
        ("PORTCULLIS_REFUNDS_PENDING_TTL", "soon"),
        ("PORTCULLIS_REFUNDS_IDEMPOTENCY_TTL", "0s"),
        ("PORTCULLIS_REFUNDS_PAYMENTS_AUDIENCE", "two words"),
        ("PORTCULLIS_REFUNDS_PAYMENTS_AUDIENCE", " "),
    ] {
        let e = Config::load_with_env(None, env(key, value)).unwrap_err();
        let name = key
            .trim_start_matches("PORTCULLIS_REFUNDS_")
            .to_ascii_lowercase();
        assert!(
            e.to_string().contains(&format!("refunds.{name}")),
            "{key}={value}: {e}"
        );
    }
}

// ---- over HTTP ----------------------------------------------------------------

async fn requests_validate_money_and_currency(backend: Backend) {
    let d = desk(backend, &[]).await;
    let alice = d.token("alice");
    let good = refund_body("pay_1", 500, "EUR");

    // Idempotency-Key is required (before the body is looked at).
    d.request_raw(&alice, None, &good.to_string())
        .await
        .assert_error(400, &["Idempotency-Key"]);
    d.request_raw(&alice, Some(&"k".repeat(256)), &good.to_string())
        .await
        .assert_error(400, &["Idempotency-Key"]);

    let bad_amounts: [(&str, &str); 8] = [
        ("0", "greater than zero"),
        ("-100", "greater than zero"),
        ("9223372036854775808", "too large"),
        ("99999999999999999999999", "too large"),
        ("10.5", "integer"),
        ("1.0e2", "integer"),
        ("\"100\"", "string"),
        ("null", "required"),
    ];
    for (i, (amount, needle)) in bad_amounts.iter().enumerate() {
        let body = format!(
            r#"{{"payment_id":"pay_1","amount_minor":{amount},"currency":"EUR","reason":"r"}}"#
        );
        d.request_raw(&alice, Some(&format!("amount-{i}")), &body)
            .await
            .assert_error(400, &["amount_minor", needle]);
    }
    for (i, cur) in ["XYZ", "EURO", "€", "", "XXX"].iter().enumerate() {
        d.request(&alice, &format!("cur-{i}"), &refund_body("pay_1", 500, cur))
            .await
            .assert_error(400, &["currency", "ISO 4217"]);
    }
    let mut no_payment = good.clone();
    no_payment.as_object_mut().unwrap().remove("payment_id");
    d.request(&alice, "np", &no_payment)
        .await
        .assert_error(400, &["payment_id"]);
    let mut no_reason = good.clone();
    no_reason["reason"] = "  ".into();
    d.request(&alice, "nr", &no_reason)
        .await
        .assert_error(400, &["reason"]);
    let mut typo = good.clone();
    typo["amount"] = 5.into();
    d.request(&alice, "typo", &typo)
        .await
        .assert_error(400, &["unknown field", "amount"]);
    d.request_raw(&alice, Some("junk"), "{not json")
        .await
        .assert_error(400, &["JSON"]);
    d.request_raw(&alice, Some("arr"), "[1,2]")
        .await
        .assert_error(400, &["JSON object"]);

    // Nothing was stored by the refusals.
    let list = d.get("alice", "/admin/api/refunds").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["items"], json!([]));

    // Lower-case codes are read as the ISO code.
    let ok = d
        .request(&alice, "lower", &refund_body("pay_1", 500, "eur"))
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(ok.json["currency"], "EUR");

    // Permissions and authentication.
    d.request(&d.token("eve"), "eve-1", &good)
        .await
        .assert_error(403, &["refunds:request"]);
    d.request(&d.token("bob"), "bob-1", &good)
        .await
        .assert_error(403, &["refunds:request"]);
    let r = d
        .send(
            d.oidc
                .http
                .post(d.url("/admin/api/refunds"))
                .header("idempotency-key", "x")
                .json(&good),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").starts_with("Bearer"));
    assert_eq!(d.get("eve", "/admin/api/refunds").await.status, 403);
    d.get("alice", "/admin/api/refunds?status=paid")
        .await
        .assert_error(400, &["pending_approval"]);
    d.get("alice", "/admin/api/refunds/nope")
        .await
        .assert_error(404, &["nope"]);
}

async fn threshold_decides_between_approved_and_pending(backend: Backend) {
    let d = desk(
        backend,
        &[("PORTCULLIS_REFUNDS_FOUR_EYES_THRESHOLD", "JPY=500")],
    )
    .await;
    let alice = d.token("alice");

    // EUR uses the default threshold, 10000: at it → approved at once.
    let at = d.new_refund("alice", 10_000).await;
    assert_record_shape(&at, &["approval_token"]);
    assert_eq!(at["status"], "approved");
    assert_eq!(at["requested_by"], "alice");
    assert_eq!(at["approved_by"], Value::Null);
    assert_eq!(at["amount_minor"], 10_000);
    assert_eq!(at["ticket_id"], "SUP-1234");
    assert_eq!(at["approval_token"].as_str().unwrap().split('.').count(), 3);

    // Above it → pending, no token.
    let above = d.new_refund("alice", 10_001).await;
    assert_record_shape(&above, &[]);
    assert_eq!(above["status"], "pending_approval");

    // Per-currency threshold.
    let jpy = d
        .request(&alice, "jpy", &refund_body("pay_jpy", 501, "JPY"))
        .await;
    assert_eq!(jpy.json["status"], "pending_approval", "{}", jpy.text);
    let jpy_ok = d
        .request(&alice, "jpy2", &refund_body("pay_jpy2", 500, "JPY"))
        .await;
    assert_eq!(jpy_ok.json["status"], "approved", "{}", jpy_ok.text);

    // Approvers read refunds too; the record is the same through GET.
    let got = d
        .get("bob", &format!("/admin/api/refunds/{}", id_of(&above)))
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json, above);
    assert_eq!(got.header("cache-control"), "no-store");
    let pending = d
        .get("bob", "/admin/api/refunds?status=pending_approval")
        .await;
    let ids: Vec<&str> = pending.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{}", pending.text);
    assert!(ids.contains(&id_of(&above).as_str()));
    let all = d.get("bob", "/admin/api/refunds").await;
    assert_eq!(all.json["items"].as_array().unwrap().len(), 4);
    assert_eq!(all.json["next_page"], Value::Null);

    // The request is audited with who asked, why and the ticket.
    let rows = d.audit(&id_of(&above)).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["action"], "refund.request");
    assert_eq!(rows[0]["reason"], "customer returned the goods");
    assert_eq!(rows[0]["ticket_id"], "SUP-1234");
    assert_eq!(rows[0]["before"], Value::Null);
    assert_eq!(rows[0]["after"]["status"], "pending_approval");
    assert_eq!(rows[0]["after"]["four_eyes"], true);
    assert_eq!(rows[0]["actor"]["kind"], "user");
}

async fn idempotent_replay_is_byte_identical(backend: Backend) {
    let d = desk(backend, &[]).await;
    let (alice, dave) = (d.token("alice"), d.token("dave"));
    let body = refund_body("pay_42", 25_000, "EUR");

    let first = d.request(&alice, "key-1", &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), "");
    let second = d.request(&alice, "key-1", &body).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.text, first.text, "a replay is byte for byte");
    assert_eq!(second.header("idempotent-replayed"), "true");
    // The same request written differently is the same request.
    let reordered = r#"{ "ticket_id": "SUP-1234", "reason": "customer returned the goods",
        "currency": "eur", "amount_minor": 25000, "payment_id": "pay_42" }"#;
    let third = d.request_raw(&alice, Some("key-1"), reordered).await;
    assert_eq!(third.status, 201);
    assert_eq!(third.text, first.text);

    // A replay after the refund moved on still answers what was first answered.
    assert_eq!(
        d.action("alice", &id_of(&first.json), "cancel", &why("dup"))
            .await
            .status,
        200
    );
    let after_cancel = d.request(&alice, "key-1", &body).await;
    assert_eq!(after_cancel.text, first.text);

    // Same key, different request: 422, and nothing new is stored.
    let mut other = body.clone();
    other["amount_minor"] = 25_001.into();
    d.request(&alice, "key-1", &other)
        .await
        .assert_error(422, &["Idempotency-Key"]);
    let mut other_ticket = body.clone();
    other_ticket["ticket_id"] = "SUP-9".into();
    assert_eq!(d.request(&alice, "key-1", &other_ticket).await.status, 422);

    // Keys are scoped per requester: dave's "key-1" is his own.
    let daves = d.request(&dave, "key-1", &body).await;
    assert_eq!(daves.status, 201);
    assert_ne!(daves.json["id"], first.json["id"]);
    assert_eq!(daves.json["requested_by"], "dave");
    // A new key is a new refund, even with the same body.
    let again = d.request(&alice, "key-2", &body).await;
    assert_eq!(again.status, 201);
    assert_ne!(again.json["id"], first.json["id"]);

    let list = d.get("alice", "/admin/api/refunds").await;
    assert_eq!(list.json["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        d.audit_actions(&id_of(&first.json)).await,
        ["refund.request", "refund.cancel"]
    );

    // Answers with an approval token (at or below the threshold) replay
    // identically too.
    let small = refund_body("pay_small", 100, "EUR");
    let a = d.request(&alice, "small", &small).await;
    let b = d.request(&alice, "small", &small).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.text, b.text);
    assert!(a.json["approval_token"].is_string());
}

/// 20 requests with one key at once: one refund, 20 identical answers.
/// Keys are kept for `refunds.idempotency_ttl`, then free again.
async fn concurrent_creations_with_one_key_make_one_refund(backend: Backend) {
    let d = desk(backend, &[("PORTCULLIS_REFUNDS_IDEMPOTENCY_TTL", "3s")]).await;
    let alice = d.token("alice");
    let body = refund_body("pay_race", 50_000, "EUR");
    let d = Arc::new(d);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (d, token, body) = (d.clone(), alice.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            d.request(&token, "race-key", &body).await
        }));
    }
    let mut texts = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        texts.push(r.text);
    }
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    let list = d.get("alice", "/admin/api/refunds").await;
    assert_eq!(
        list.json["items"].as_array().unwrap().len(),
        1,
        "{}",
        list.text
    );
    let id = id_of(&serde_json::from_str(&texts[0]).unwrap());
    assert_eq!(d.audit(&id).await.len(), 1);

    // After the retention period the key starts over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fresh = d.request(&alice, "race-key", &body).await;
    assert_eq!(fresh.status, 201);
    assert_ne!(id_of(&fresh.json), id);
    assert_eq!(fresh.header("idempotent-replayed"), "");
}

/// The four-eyes rule over HTTP: the requester is refused (403, before any
/// step-up: the rule is about who, not how fresh), people without
/// `refunds:approve` are refused, and an approver whose second factor is
/// older than `mfa.step_up_max_age` gets the RFC 9470 challenge.
async fn approval_needs_another_person_with_a_fresh_second_factor(backend: Backend) {
    let d = desk(backend, &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "2s")]).await;
    let pending = id_of(&d.new_refund("alice", 50_000).await);
    let daves = id_of(&d.new_refund("dave", 50_000).await);
    let ok = why("checked the order");

    // Self-approval: dave holds refunds:approve but requested this one.
    d.action("dave", &daves, "approve", &ok)
        .await
        .assert_error(403, &["four-eyes"]);
    // No permission.
    d.action("eve", &pending, "approve", &ok)
        .await
        .assert_error(403, &["refunds:approve"]);
    d.action("alice", &pending, "approve", &ok)
        .await
        .assert_error(403, &["refunds:approve"]);
    // A reason is required.
    d.action("bob", &pending, "approve", &json!({}))
        .await
        .assert_error(400, &["reason"]);

    // bob signed in with TOTP, but more than 2 s ago: step up first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = d.action("bob", &pending, "approve", &ok).await;
    r.assert_error(401, &["second factor"]);
    assert_eq!(r.json["error"], "insufficient_user_authentication");
    let challenge = r.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer")
            && challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains("acr_values=\"urn:portcullis:acr:mfa\"")
            && challenge.contains("max_age=2"),
        "{challenge}"
    );
    // Rejecting needs no step-up (saying no moves no money).
    let r = d.action("carol", &daves, "reject", &why("no")).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Nothing else changed and nothing else was audited.
    assert_eq!(d.status_of(&pending).await, "pending_approval");
    assert_eq!(d.audit_actions(&pending).await, ["refund.request"]);
    assert_eq!(
        d.audit_actions(&daves).await,
        ["refund.request", "refund.reject"]
    );
}

/// Create, approve (bob, fresh TOTP) and execute (payments service) over
/// HTTP; the approval token verifies against `/jwks.json` with josekit and
/// with PyJWT.
async fn approve_and_execute_end_to_end(backend: Backend) {
    let d = desk(backend, &[]).await;
    let pending = d.new_refund("alice", 123_456).await;
    let id = id_of(&pending);

    let approved = d
        .action("bob", &id, "approve", &why("verified with the bank"))
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text);
    assert_record_shape(&approved.json, &["approval_token"]);
    assert_eq!(approved.json["status"], "approved");
    assert_eq!(approved.json["approved_by"], "bob");
    assert_eq!(approved.json["requested_by"], "alice");
    assert_eq!(approved.header("cache-control"), "no-store");
    let token = approved.json["approval_token"]
        .as_str()
        .unwrap()
        .to_string();

    // The API shows the approval (without the token).
    let got = d.get("alice", &format!("/admin/api/refunds/{id}")).await;
    assert_record_shape(&got.json, &[]);
    assert_eq!(got.json["status"], "approved");
    assert_eq!(got.json["approved_by"], "bob");

    // The token verifies against /jwks.json (josekit here, PyJWT below).
    let (header, claims) = d.oidc.verify_jwt(&token).await;
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "refund-approval+jwt");
    assert_eq!(claims["iss"], d.oidc.issuer);
    assert_eq!(claims["aud"], "payments");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 300, "short-lived: {claims}");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert_eq!(
        claims["authorization_details"],
        json!([{
            "type": "refund",
            "refund_id": id,
            "payment_id": pending["payment_id"],
            "amount_minor": 123_456,
            "currency": "EUR",
            "requester": "alice",
            "approver": "bob",
        }])
    );
    assert_eq!(claims["requester"], "alice");
    assert_eq!(claims["approver"], "bob");
    assert_eq!(claims["approval"], "four_eyes");
    if let Some(v) = pyjwt_verify(&d.oidc, &token, "refund-approval+jwt", "payments").await {
        assert_eq!(v["claims"]["authorization_details"][0]["refund_id"], id);
        assert_eq!(
            v["claims"]["authorization_details"][0]["amount_minor"],
            123_456
        );
        assert_eq!(v["header"]["kid"], header["kid"]);
    }

    // A second approval is a conflict naming the states.
    d.action("carol", &id, "approve", &why("me too"))
        .await
        .assert_error(409, &["is approved", "cannot approve"]);

    // The payments service executes it, once.
    let svc = d.payments_token().await;
    let done = d.execute(Some(&svc), &id, &token).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_record_shape(&done.json, &[]);
    assert_eq!(done.json["status"], "executed");
    d.execute(Some(&svc), &id, &token)
        .await
        .assert_error(409, &["already been used"]);

    // Audit: request, approve (user bob), execute (client), chain intact.
    let rows = d.audit(&id).await;
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["refund.request", "refund.approve", "refund.execute"]
    );
    assert_eq!(rows[1]["actor"]["kind"], "user");
    assert_eq!(rows[1]["reason"], "verified with the bank");
    assert_eq!(rows[1]["ticket_id"], "SUP-77");
    assert_eq!(rows[1]["before"]["status"], "pending_approval");
    assert_eq!(rows[1]["after"]["status"], "approved");
    assert_eq!(rows[1]["after"]["approved_by"], "bob");
    assert_eq!(rows[1]["after"]["approval_jti"], claims["jti"]);
    assert_eq!(rows[2]["actor"]["kind"], "client");
    assert_eq!(rows[2]["actor"]["id"], PAYMENTS);
    assert_eq!(rows[2]["ticket_id"], "SUP-1234");
    assert_eq!(rows[2]["before"]["status"], "approved");
    assert_eq!(rows[2]["after"]["status"], "executed");
    assert_eq!(rows[2]["after"]["executed_by_client"], PAYMENTS);
    assert!(
        !rows.iter().any(|r| r.to_string().contains(&token)),
        "the approval token itself is never audited"
    );
    d.oidc.env.cli(&["audit", "verify"]).await.assert_ok();
}

/// The payments-service endpoint refuses anything but a valid, unused
/// approval token for exactly this refund, from a client holding scope
/// `refunds:execute`.
async fn execution_refuses_bad_tokens_and_replays(backend: Backend) {
    let d = desk(backend, &[]).await;
    let svc = d.payments_token().await;
    // Two refunds approved at once (below the threshold) carry tokens.
    let a = d.new_refund("alice", 700).await;
    let b = d.new_refund("alice", 800).await;
    let (a_id, b_id) = (id_of(&a), id_of(&b));
    let a_token = a["approval_token"].as_str().unwrap().to_string();
    let b_token = b["approval_token"].as_str().unwrap().to_string();
    let (_, a_claims) = d.oidc.verify_jwt(&a_token).await;
    assert_eq!(a_claims["approval"], "below_threshold");
    assert_eq!(a_claims["approver"], Value::Null);

    // Caller authentication.
    let r = d.execute(None, &a_id, &a_token).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").starts_with("Bearer"));
    assert_eq!(
        d.execute(Some("pct_at_nope"), &a_id, &a_token).await.status,
        401
    );
    // A staff member's (user) token is not the payments service.
    let r = d.execute(Some(&d.token("alice")), &a_id, &a_token).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{}",
        r.text
    );
    // A service without the scope.
    let other = d
        .oidc
        .client(
            "other-svc",
            &["--grant", "client_credentials", "--scope", "api"],
        )
        .await;
    let other_token = d
        .oidc
        .client_credentials(&other, None)
        .await
        .str("access_token");
    let r = d.execute(Some(&other_token), &a_id, &a_token).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.header("www-authenticate").contains("insufficient_scope"));

    // A's token on B's URL.
    d.execute(Some(&svc), &b_id, &a_token)
        .await
        .assert_error(403, &["another refund"]);
    // Tampered payload (amount raised), signature kept.
    let mut parts: Vec<String> = a_token.split('.').map(str::to_string).collect();
    let mut forged = a_claims.clone();
    forged["authorization_details"][0]["amount_minor"] = 70_000.into();
    parts[1] = portcullis::crypto::b64url(forged.to_string().as_bytes());
    d.execute(Some(&svc), &a_id, &parts.join("."))
        .await
        .assert_error(403, &["approval token rejected", "signature"]);
    // Tampered signature.
    let mut sig = a_token.clone();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(d.execute(Some(&svc), &a_id, &sig).await.status, 403);
    // alg none, and garbage.
    let none = format!(
        "{}.{}.",
        portcullis::crypto::b64url(br#"{"alg":"none","typ":"refund-approval+jwt"}"#),
        parts[1]
    );
    d.execute(Some(&svc), &a_id, &none)
        .await
        .assert_error(403, &["algorithm"]);
    assert_eq!(d.execute(Some(&svc), &a_id, "not-a-jwt").await.status, 403);
    // Another JWT signed by us (an id_token) is no approval.
    let id_token = d.oidc.login_and_redeem(&d.ui, "eve", "openid").await["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(d.execute(Some(&svc), &a_id, &id_token).await.status, 403);
    // Missing token in the body.
    let r = d
        .send(
            d.oidc
                .http
                .post(d.url(&format!("/admin/api/refunds/{a_id}/executed")))
                .bearer_auth(&svc)
                .json(&json!({})),
        )
        .await;
    r.assert_error(400, &["approval_token"]);

    // Correctly signed tokens that still must not work: another audience,
    // expired, and one that is not the approval the refund holds.
    let domain = d.domain().await;
    let refund = domain.get(&a_id).await.unwrap();
    let details = portcullis::refunds::approval::ApprovedRefund {
        refund_id: &refund.id,
        payment_id: &refund.payment_id,
        amount_minor: refund.amount_minor,
        currency: &refund.currency,
        requester: "alice",
        approver: None,
    };
    let mint = |aud: &str, at: i64| {
        portcullis::refunds::approval::mint(&domain.keys, &d.oidc.issuer, aud, &details, at)
            .unwrap()
            .token
    };
    d.execute(Some(&svc), &a_id, &mint("ledger", unix_now()))
        .await
        .assert_error(403, &["payments service"]);
    d.execute(Some(&svc), &a_id, &mint("payments", unix_now() - 600))
        .await
        .assert_error(403, &["expired"]);
    d.execute(Some(&svc), &a_id, &mint("payments", unix_now()))
        .await
        .assert_error(403, &["current approval"]);

    // Nothing moved; the real token works once; a replay is 409.
    assert_eq!(d.status_of(&a_id).await, "approved");
    let ok = d.execute(Some(&svc), &a_id, &a_token).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["status"], "executed");
    d.execute(Some(&svc), &a_id, &a_token)
        .await
        .assert_error(409, &["already been used"]);
    // B is untouched and still executes with its own token.
    assert_eq!(d.execute(Some(&svc), &b_id, &b_token).await.status, 200);
    // A pending refund has no approval to execute.
    let pending = id_of(&d.new_refund("alice", 99_999).await);
    d.execute(Some(&svc), &pending, &a_token)
        .await
        .assert_error(403, &["another refund"]);
    assert_eq!(
        d.audit_actions(&a_id).await,
        ["refund.request", "refund.execute"]
    );
}

/// Each legal transition, each illegal one a 409 naming the current status
/// and the attempted transition; every change audited with before/after,
/// reason and ticket.
async fn every_transition_is_checked_and_audited(backend: Backend) {
    let d = desk(backend, &[]).await;
    let svc = d.payments_token().await;

    // pending → cancelled, by the requester only.
    let p1 = id_of(&d.new_refund("alice", 20_000).await);
    d.action("dave", &p1, "cancel", &why("not mine"))
        .await
        .assert_error(403, &["only the person who requested"]);
    d.action("bob", &p1, "cancel", &why("no permission"))
        .await
        .assert_error(403, &["refunds:request"]);
    let c = d
        .action("alice", &p1, "cancel", &why("customer withdrew"))
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["status"], "cancelled");
    for (user, action) in [("alice", "cancel"), ("bob", "approve"), ("bob", "reject")] {
        d.action(user, &p1, action, &why("again"))
            .await
            .assert_error(409, &["is cancelled", &format!("cannot {action}")]);
    }

    // pending → rejected, by an approver other than the requester.
    let p2 = id_of(&d.new_refund("alice", 20_000).await);
    let own = id_of(&d.new_refund("dave", 20_000).await);
    d.action("dave", &own, "reject", &why("mine"))
        .await
        .assert_error(403, &["cancel"]);
    d.action("alice", &p2, "reject", &why("no"))
        .await
        .assert_error(403, &["refunds:approve"]);
    let r = d
        .action("bob", &p2, "reject", &why("duplicate of SUP-76"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "rejected");
    assert_eq!(r.json["approved_by"], Value::Null);
    for (user, action) in [
        ("alice", "cancel"),
        ("carol", "approve"),
        ("carol", "reject"),
    ] {
        d.action(user, &p2, action, &why("again"))
            .await
            .assert_error(409, &["is rejected", &format!("cannot {action}")]);
    }

    // pending → approved → executed; then nothing more.
    let p3 = id_of(&d.new_refund("alice", 20_000).await);
    let a = d.action("carol", &p3, "approve", &why("ok")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let token = a.json["approval_token"].as_str().unwrap().to_string();
    for (user, action) in [("bob", "approve"), ("bob", "reject"), ("alice", "cancel")] {
        d.action(user, &p3, action, &why("again"))
            .await
            .assert_error(409, &["is approved", &format!("cannot {action}")]);
    }
    assert_eq!(d.execute(Some(&svc), &p3, &token).await.status, 200);
    for (user, action) in [("bob", "approve"), ("bob", "reject"), ("alice", "cancel")] {
        d.action(user, &p3, action, &why("again"))
            .await
            .assert_error(409, &["is executed", &format!("cannot {action}")]);
    }

    // approved on creation: same rules.
    let small = id_of(&d.new_refund("alice", 100).await);
    d.action("bob", &small, "approve", &why("x"))
        .await
        .assert_error(409, &["is approved; cannot approve"]);

    // Unknown refunds.
    d.action("alice", "nope", "cancel", &why("x"))
        .await
        .assert_error(404, &[]);

    // Audit: each transition once, with before/after, reason and ticket.
    let rows = d.audit(&p1).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["action"], "refund.cancel");
    assert_eq!(rows[1]["reason"], "customer withdrew");
    assert_eq!(rows[1]["ticket_id"], "SUP-77");
    assert_eq!(rows[1]["before"]["status"], "pending_approval");
    assert_eq!(rows[1]["after"]["status"], "cancelled");
    let rows = d.audit(&p2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["action"], "refund.reject");
    assert_eq!(rows[1]["reason"], "duplicate of SUP-76");
    assert_eq!(rows[1]["after"]["decision_reason"], "duplicate of SUP-76");
    assert_eq!(rows[1]["after"]["status"], "rejected");
    assert_eq!(
        d.audit_actions(&p3).await,
        ["refund.request", "refund.approve", "refund.execute"]
    );
    let rows = d.audit(&small).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["after"]["status"], "approved");
    assert_eq!(rows[0]["after"]["four_eyes"], false);
    d.oidc.env.cli(&["audit", "verify"]).await.assert_ok();
}

/// 20 approvals at once over HTTP (bob and carol, ten each): exactly one
/// 200, nineteen 409s, one audit row. Then 20 more straight through the
/// domain with distinct calls on a fresh refund: the same.
async fn concurrent_approvals_exactly_one_wins(backend: Backend) {
    let d = Arc::new(desk(backend, &[]).await);
    let id = id_of(&d.new_refund("alice", 1_000_000).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (d, id) = (d.clone(), id.clone());
        let who = if i % 2 == 0 { "bob" } else { "carol" };
        tasks.push(tokio::spawn(async move {
            d.action(who, &id, "approve", &why("race")).await
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => winners.push(r.json["approved_by"].as_str().unwrap().to_string()),
            409 => {
                r.assert_error(409, &["is approved; cannot approve"]);
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!((winners.len(), conflicts), (1, 19), "{winners:?}");
    let got = d.get("alice", &format!("/admin/api/refunds/{id}")).await;
    assert_eq!(got.json["approved_by"], winners[0]);
    assert_eq!(
        d.audit_actions(&id).await,
        ["refund.request", "refund.approve"]
    );

    // The domain on its own connection pool, 20 calls at once.
    let id = id_of(&d.new_refund("alice", 1_000_000).await);
    let domain = Arc::new(d.domain().await);
    let approvers = [
        d.member("bob", &["pwd", "otp"], Some(unix_now())).await,
        d.member("carol", &["pwd", "otp"], Some(unix_now())).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (domain, who, id) = (domain.clone(), approvers[i % 2].clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            domain.approve(&who, &id, "race", None, &ctx(&who)).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => {
                assert!(e.to_string().contains("is approved; cannot approve"), "{e}");
                assert_eq!(http_status(e), 409);
            }
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        d.audit_actions(&id).await,
        ["refund.request", "refund.approve"]
    );
    d.oidc.env.cli(&["audit", "verify"]).await.assert_ok();
}

/// Pending requests expire after `refunds.pending_ttl`, also when the
/// server was down at the time: the job runs at start-up.
async fn pending_requests_expire_after_restart(backend: Backend) {
    let ttl = ("PORTCULLIS_REFUNDS_PENDING_TTL", "2s");
    let d = desk(backend, &[ttl]).await;
    let pending = id_of(&d.new_refund("alice", 50_000).await);
    let approved = id_of(&d.new_refund("alice", 500).await);

    // Stop the server before the window closes; wait past it; restart.
    let Desk {
        oidc,
        ui,
        payments,
        tokens,
    } = d;
    let Oidc {
        server,
        env,
        issuer,
        http,
    } = oidc;
    assert_eq!(server.stop().await, 0);
    let store = env.store().await;
    let stored = portcullis::store::refunds::find(&store, &pending)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    assert_eq!(stored.status, Status::PendingApproval);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let addr = issuer.trim_start_matches("http://").to_string();
    let server = env
        .serve_with(&[
            ("PORTCULLIS_HTTP_PUBLIC_ADDR", addr.as_str()),
            ("PORTCULLIS_ISSUER", issuer.as_str()),
            ttl,
        ])
        .await;
    let d = Desk {
        oidc: Oidc {
            server,
            env,
            issuer,
            http,
        },
        ui,
        payments,
        tokens,
    };
    let expired = eventually(Duration::from_secs(10), || async {
        d.status_of(&pending).await == "expired"
    })
    .await;
    assert!(expired, "the expiry job runs after a restart");
    // Approved refunds never expire.
    assert_eq!(d.status_of(&approved).await, "approved");

    let rows = d.audit(&pending).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["action"], "refund.expire");
    assert_eq!(rows[1]["actor"]["kind"], "system");
    assert_eq!(rows[1]["actor"]["id"], "refunds");
    assert_eq!(rows[1]["before"]["status"], "pending_approval");
    assert_eq!(rows[1]["after"]["status"], "expired");
    assert_eq!(rows[1]["reason"], "not approved within 2s");
    assert_eq!(rows[1]["ticket_id"], "SUP-1234");
    for (user, action) in [("bob", "approve"), ("bob", "reject"), ("alice", "cancel")] {
        d.action(user, &pending, action, &why("late"))
            .await
            .assert_error(409, &["is expired", &format!("cannot {action}")]);
    }

    // A request past its window is expired by whoever touches it first, so
    // an approval that beats the job to it still finds it expired.
    let clock = Arc::new(ManualClock::new(unix_now() * 1000));
    let domain = d.domain_with_clock(clock.clone()).await;
    let late = id_of(&d.new_refund("alice", 50_000).await);
    clock.advance(Duration::from_secs(3));
    let bob = d.member("bob", &["pwd", "otp"], Some(unix_now() + 3)).await;
    let e = domain
        .approve(&bob, &late, "x", None, &ctx(&bob))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is expired; cannot approve"), "{e}");
    assert_eq!(http_status(e), 409);
    assert_eq!(
        d.audit_actions(&late).await,
        ["refund.request", "refund.expire"]
    );
    d.oidc.env.cli(&["audit", "verify"]).await.assert_ok();
}

/// Verifies a JWT with PyJWT (an independent implementation) against the
/// server's JWKS; `None` (skipped) where PyJWT is not installed, except in CI.
async fn pyjwt_verify(oidc: &Oidc, token: &str, typ: &str, aud: &str) -> Option<Value> {
    let python = std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import jwt"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{python} cannot import jwt; .ci/run installs tests/interop/requirements.txt");
        }
        eprintln!("skipped: {python} has no PyJWT (pip install -r tests/interop/requirements.txt)");
        return None;
    }
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

/// What the admin UI shows for an amount: major units by the currency's
/// ISO 4217 digits, computed with integers, plus the stored minor units.
#[test]
fn amounts_are_shown_in_major_units_without_floats() {
    use portcullis::refunds::amount_text;
    assert_eq!(amount_text(25000, "EUR"), "250.00 EUR (25000 minor units)");
    assert_eq!(amount_text(5, "EUR"), "0.05 EUR (5 minor units)");
    assert_eq!(amount_text(1500, "JPY"), "1500 JPY (minor units)");
    assert_eq!(amount_text(1234, "KWD"), "1.234 KWD (1234 minor units)");
    assert_eq!(
        amount_text(i64::MAX, "EUR"),
        "92233720368547758.07 EUR (9223372036854775807 minor units)"
    );
}
