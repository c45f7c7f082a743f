//! The admin JSON API for users, clients and the audit log, black-box
//! through the real binary: permissions (401 without a token, 403 without
//! the permission), RFC 9470 step-up, locking (sessions and tokens die,
//! sign-in refused), second-factor reset, client registration / update /
//! secret rotation / token revocation with their effect at `/token`,
//! `/authorize` and `/introspect`, and audit search, export and verify.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use portcullis::audit::{AuditContext, AuditEvent, AuditFilter};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::oauth::flow::{AuthRequest, Client, Oidc, PASSWORD};
use crate::oauth::staff::{enrol_totp, staff, totp_code};
use crate::support::Backend;

backend_tests!(
    permissions_authentication_and_step_up_are_enforced,
    locking_ends_sessions_and_refuses_sign_in,
    second_factor_reset_removes_every_factor,
    staff_manage_clients,
    revoking_every_token_of_a_client,
    audit_search_export_and_verify,
);

/// The first-party client staff sign in through in these tests.
const UI: &str = "console";
/// The admin UI's own client, registered by the server at start-up.
const ADMIN_UI: &str = "portcullis-admin-ui";

/// A running server with the admin UI client, a third-party code client
/// (`shop`), an introspecting gateway (`gw`), staff signed in with TOTP and
/// plain users.
struct Desk {
    oidc: Oidc,
    ui: Client,
    shop: Client,
    gw: Client,
    /// Bearer tokens for the admin API by username.
    tokens: HashMap<String, String>,
}

async fn desk(backend: Backend, env: &[(&str, &str)], staff_roles: &[(&str, &[&str])]) -> Desk {
    let oidc = Oidc::start_with(backend, env).await;
    let ui = oidc.code_client(UI, "openid", &["--first-party"]).await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let gw = oidc
        .client("gw", &["--grant", "client_credentials", "--may-introspect"])
        .await;
    let mut tokens = HashMap::new();
    for (user, roles) in staff_roles {
        let login = staff(&oidc, &ui, user, roles).await;
        tokens.insert(user.to_string(), login.access_token);
    }
    oidc.user("carol").await;
    Desk {
        oidc,
        ui,
        shop,
        gw,
        tokens,
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
        assert_eq!(self.header("cache-control"), "no-store");
    }

    #[track_caller]
    fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(
            self.header("cache-control"),
            "no-store",
            "{:?}",
            self.headers
        );
        &self.json
    }
}

fn why(reason: &str) -> Value {
    json!({"reason": reason, "ticket_id": "SEC-42"})
}

impl Desk {
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

    fn bearer(&self, req: reqwest::RequestBuilder, who: Option<&str>) -> reqwest::RequestBuilder {
        match who {
            Some(user) => req.bearer_auth(
                self.tokens
                    .get(user)
                    .cloned()
                    .unwrap_or_else(|| user.to_string()),
            ),
            None => req,
        }
    }

    /// GET on the admin listener as `who` (a username with a token, or a
    /// raw bearer value); `None`: no Authorization header.
    async fn get(&self, who: Option<&str>, path: &str) -> Resp {
        let req = self.oidc.server.http.get(self.url(path));
        self.send(self.bearer(req, who)).await
    }

    async fn post(&self, who: Option<&str>, path: &str, body: &Value) -> Resp {
        let req = self.oidc.server.http.post(self.url(path)).json(body);
        self.send(self.bearer(req, who)).await
    }

    /// Is `token` active at `/introspect` (asked by the gateway)?
    async fn active(&self, token: &str) -> bool {
        let resp = self
            .oidc
            .http
            .post(self.oidc.url("/introspect"))
            .basic_auth(&self.gw.id, self.gw.secret.as_deref())
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["active"] == true
    }

    /// Audit rows matching `filter`, read straight from the database.
    async fn audit(&self, filter: AuditFilter) -> Vec<portcullis::audit::AuditRecord> {
        let store = self.oidc.env.store().await;
        portcullis::store::audit::search(&store, &filter, 0, false, 10_000, 0)
            .await
            .unwrap()
    }

    async fn audit_actions(&self, target: &str) -> Vec<String> {
        self.audit(AuditFilter {
            target: Some(target.to_string()),
            ..AuditFilter::default()
        })
        .await
        .into_iter()
        .map(|r| r.action)
        .collect()
    }

    /// `username` signs in with the password at `/login` (fresh browser):
    /// `(status, body)`; 303 means signed in.
    async fn password_login(&self, username: &str) -> (u16, String) {
        let browser = self.oidc.browser();
        let page = browser.get(&self.oidc.url("/login")).await;
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
        (page.status, page.body)
    }
}

fn parse(v: &Option<String>) -> Value {
    v.as_deref()
        .map(|t| serde_json::from_str(t).unwrap())
        .unwrap_or(Value::Null)
}

/// 401 without a token or with a bad one, 403 without the permission
/// (checked before anything else, so nothing changes), and once the
/// second factor is older than `mfa.step_up_max_age` the sensitive actions
/// answer the RFC 9470 challenge while reads still work.
async fn permissions_authentication_and_step_up_are_enforced(backend: Backend) {
    let d = desk(
        backend,
        &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "2s")],
        &[
            ("sec", &["security_admin"]),
            ("aud", &["auditor"]),
            ("sup", &["support"]),
        ],
    )
    .await;
    // eve: no role at all; her token works for the API but grants nothing.
    d.oidc.user("eve").await;
    let eve = d.oidc.login_and_redeem(&d.ui, "eve", "openid").await;
    let eve = eve["access_token"].as_str().unwrap().to_string();
    // carol's token from a third-party client carries no staff authority.
    let carols = d.oidc.login_and_redeem(&d.shop, "carol", "openid").await;
    let carols = carols["access_token"].as_str().unwrap().to_string();

    let registration = json!({
        "client_id": "newco", "redirect_uris": [], "scopes": ["api"],
        "grant_types": ["client_credentials"], "reason": "onboarding",
    });
    let update = json!({"redirect_uris": ["https://shop.example/new"], "scopes": ["openid"], "reason": "move"});
    // (method, path, body, permission, someone lacking it)
    let endpoints: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "GET",
            "/admin/api/users?q=car",
            Value::Null,
            "users:read",
            "aud",
        ),
        (
            "GET",
            "/admin/api/users/carol",
            Value::Null,
            "users:read",
            "aud",
        ),
        (
            "POST",
            "/admin/api/users/carol/lock",
            why("x"),
            "users:manage",
            "sup",
        ),
        (
            "POST",
            "/admin/api/users/carol/unlock",
            why("x"),
            "users:manage",
            "sup",
        ),
        (
            "POST",
            "/admin/api/users/carol/mfa/reset",
            why("x"),
            "users:manage",
            "sup",
        ),
        (
            "GET",
            "/admin/api/clients",
            Value::Null,
            "clients:manage",
            "sup",
        ),
        (
            "POST",
            "/admin/api/clients",
            registration.clone(),
            "clients:manage",
            "sup",
        ),
        (
            "GET",
            "/admin/api/clients/shop",
            Value::Null,
            "clients:manage",
            "aud",
        ),
        (
            "POST",
            "/admin/api/clients/shop",
            update.clone(),
            "clients:manage",
            "sup",
        ),
        (
            "POST",
            "/admin/api/clients/shop/secret/rotate",
            why("x"),
            "clients:manage",
            "sup",
        ),
        (
            "POST",
            "/admin/api/clients/shop/tokens/revoke",
            why("x"),
            "clients:manage",
            "aud",
        ),
        ("GET", "/admin/api/audit", Value::Null, "audit:read", "sec"),
        (
            "GET",
            "/admin/api/audit/export?format=csv",
            Value::Null,
            "audit:read",
            "sec",
        ),
        (
            "GET",
            "/admin/api/audit/verify",
            Value::Null,
            "audit:read",
            "sup",
        ),
    ];
    for (method, path, body, permission, lacking) in &endpoints {
        let call = |who: Option<String>| {
            let d = &d;
            async move {
                match *method {
                    "GET" => d.get(who.as_deref(), path).await,
                    _ => d.post(who.as_deref(), path, body).await,
                }
            }
        };
        let r = call(None).await;
        assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.text);
        assert!(
            r.header("www-authenticate").starts_with("Bearer"),
            "{method} {path}"
        );
        let r = call(Some("pct_at_not-a-real-token".into())).await;
        assert_eq!(
            r.status, 401,
            "{method} {path} with a bogus token: {}",
            r.text
        );
        call(Some(lacking.to_string()))
            .await
            .assert_error(403, &[permission]);
        call(Some(eve.clone()))
            .await
            .assert_error(403, &[permission]);
        call(Some(carols.clone()))
            .await
            .assert_error(403, &["first-party"]);
    }
    // Nothing of the refused calls happened.
    let carol = d.get(Some("sup"), "/admin/api/users/carol").await;
    assert_eq!(carol.ok()["locked"], false);
    assert_eq!(carol.json["active_sessions"], 1);
    d.get(Some("sec"), "/admin/api/clients/newco")
        .await
        .assert_error(404, &["newco"]);
    assert!(d.active(&carols).await, "carol's shop token survived");
    let shop = d.get(Some("sec"), "/admin/api/clients/shop").await;
    assert_eq!(
        shop.ok()["redirect_uris"],
        json!(["https://shop.example/cb"])
    );

    // The second factor ages past mfa.step_up_max_age (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (path, body) in [
        ("/admin/api/users/carol/lock", why("fraud")),
        ("/admin/api/users/carol/mfa/reset", why("lost phone")),
        ("/admin/api/clients/shop/secret/rotate", why("leak")),
        ("/admin/api/clients/shop/tokens/revoke", why("leak")),
    ] {
        let r = d.post(Some("sec"), path, &body).await;
        r.assert_error(401, &["second factor"]);
        assert_eq!(
            r.json["error"], "insufficient_user_authentication",
            "{path}"
        );
        let challenge = r.header("www-authenticate");
        assert!(
            challenge.starts_with("Bearer")
                && challenge.contains("error=\"insufficient_user_authentication\"")
                && challenge.contains("acr_values=\"urn:portcullis:acr:mfa\"")
                && challenge.contains("max_age=2"),
            "{path}: {challenge}"
        );
    }
    // Reads need no step-up; and the refused actions changed nothing.
    let carol = d.get(Some("sec"), "/admin/api/users/carol").await;
    assert_eq!(carol.ok()["locked"], false);
    assert!(d.active(&carols).await);
    let carol_actions = d.audit_actions("user:carol").await;
    assert!(
        carol_actions.iter().all(|a| a == "user.create"),
        "{carol_actions:?}"
    );
    let shop_actions = d.audit_actions("client:shop").await;
    assert!(
        shop_actions
            .iter()
            .all(|a| a == "client.create" || a == "consent.grant"),
        "{shop_actions:?}"
    );
}

/// Locking ends every session of the person (their tokens introspect
/// inactive, refresh fails) and refuses sign-in; locking twice is 409;
/// unlocking lets them back in. Search and detail show it.
async fn locking_ends_sessions_and_refuses_sign_in(backend: Backend) {
    let d = desk(backend, &[], &[("sec", &["security_admin"])]).await;
    let tokens = d.oidc.login_and_redeem(&d.shop, "carol", "openid").await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    assert!(d.active(&access).await);

    // Search: case-insensitive substring; wildcards are literal.
    let found = d.get(Some("sec"), "/admin/api/users?q=CAR").await;
    let names: Vec<&str> = found.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carol"]);
    assert_eq!(found.json["page"], 1);
    assert!(found.json["next_page"].is_null());
    let wild = d.get(Some("sec"), "/admin/api/users?q=%25").await;
    assert_eq!(wild.ok()["items"], json!([]));
    let everyone = d.get(Some("sec"), "/admin/api/users").await;
    assert_eq!(everyone.ok()["items"].as_array().unwrap().len(), 2);
    let sec = everyone.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "sec")
        .unwrap()
        .clone();
    assert_eq!(sec["roles"], json!(["security_admin"]));
    d.get(Some("sec"), "/admin/api/users?page=0")
        .await
        .assert_error(400, &["page"]);

    let detail = d.get(Some("sec"), "/admin/api/users/Carol").await;
    let detail = detail.ok();
    assert_eq!(detail["username"], "carol");
    assert_eq!(detail["locked"], false);
    assert_eq!(detail["active_sessions"], 1);
    assert_eq!(detail["factors"]["totp"], false);
    d.get(Some("sec"), "/admin/api/users/nobody")
        .await
        .assert_error(404, &["nobody"]);

    // A reason is required; staff cannot lock themselves out.
    d.post(Some("sec"), "/admin/api/users/carol/lock", &json!({}))
        .await
        .assert_error(400, &["reason"]);
    d.post(
        Some("sec"),
        "/admin/api/users/carol/lock",
        &json!({"reason": "   "}),
    )
    .await
    .assert_error(400, &["reason"]);
    d.post(Some("sec"), "/admin/api/users/sec/lock", &why("oops"))
        .await
        .assert_error(403, &["your own"]);
    assert!(d.active(&access).await, "refused locks changed nothing");

    let locked = d
        .post(
            Some("sec"),
            "/admin/api/users/carol/lock",
            &why("fraud report"),
        )
        .await;
    let locked = locked.ok();
    assert_eq!(locked["locked"], true);
    assert_eq!(locked["active_sessions"], 0);
    assert!(!d.active(&access).await, "the locked user's token is dead");
    d.oidc
        .refresh(&d.shop, &refresh)
        .await
        .assert_error(400, "invalid_grant");
    let (status, body) = d.password_login("carol").await;
    assert_ne!(status, 303, "a locked user cannot sign in");
    assert!(body.contains("invalid username or password"), "{body}");
    d.post(Some("sec"), "/admin/api/users/carol/lock", &why("again"))
        .await
        .assert_error(409, &["already locked"]);

    // Audited with reason, ticket and before/after; the session end too.
    let rows = d
        .audit(AuditFilter {
            target: Some("user:carol".into()),
            action: Some("user.lock".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reason.as_deref(), Some("fraud report"));
    assert_eq!(rows[0].ticket_id.as_deref(), Some("SEC-42"));
    assert_eq!(rows[0].actor_id, sec["id"].as_str().unwrap());
    assert_eq!(parse(&rows[0].before_json)["locked"], false);
    assert_eq!(parse(&rows[0].after_json)["locked"], true);
    let ends = d
        .audit(AuditFilter {
            action: Some("session.terminate".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(ends.len(), 1);
    assert!(
        ends[0].reason.as_deref().unwrap().contains("fraud report"),
        "{:?}",
        ends[0].reason
    );

    let unlocked = d
        .post(
            Some("sec"),
            "/admin/api/users/carol/unlock",
            &why("cleared"),
        )
        .await;
    assert_eq!(unlocked.ok()["locked"], false);
    d.post(Some("sec"), "/admin/api/users/carol/unlock", &why("again"))
        .await
        .assert_error(409, &["already unlocked"]);
    let (status, _) = d.password_login("carol").await;
    assert_eq!(status, 303, "an unlocked user signs in again");
    assert_eq!(
        d.audit_actions("user:carol").await,
        ["user.create", "user.lock", "user.unlock"]
    );
}

/// Resetting removes the authenticator app, recovery codes, every WebAuthn
/// credential and the passkey opt-in at once, ends the person's sessions,
/// and is one `user.mfa_reset` row; the person then signs in with the
/// password alone. Nobody resets their own factors.
async fn second_factor_reset_removes_every_factor(backend: Backend) {
    let d = desk(backend, &[], &[("sec", &["security_admin"])]).await;
    d.oidc.user("dave").await;
    let (_enrolled, secret) = enrol_totp(&d.oidc, "dave").await;
    let browser = d.oidc.browser();
    browser.set_mfa_code(&totp_code(&secret, 1));
    let req = AuthRequest::new(&d.shop, "openid");
    let done = browser.authorize(&req, Some(("dave", PASSWORD))).await;
    assert!(
        done.pages.iter().any(|p| p == "/login/mfa"),
        "{:?}",
        done.pages
    );
    let tokens = d
        .oidc
        .exchange_code(&d.shop, &done.code(), &req.pkce.verifier)
        .await;
    let access = tokens.str("access_token");
    assert!(d.active(&access).await);

    let dave = d.get(Some("sec"), "/admin/api/users/dave").await;
    let dave_id = dave.ok()["id"].as_str().unwrap().to_string();
    // A security key and the passwordless opt-in, as registration leaves them.
    d.oidc
        .env
        .raw_sql(&format!(
            "INSERT INTO webauthn_credentials (id, user_id, name, passkey, created_at) \
             VALUES ('cred-1', '{dave_id}', 'YubiKey', '{{}}', 1700000000)"
        ))
        .await
        .unwrap();
    d.oidc
        .env
        .raw_sql(&format!(
            "INSERT INTO webauthn_users (user_id, user_handle, passkey_login, created_at, updated_at) \
             VALUES ('{dave_id}', 'handle-1', 1, 1700000000, 1700000000)"
        ))
        .await
        .unwrap();
    let before = d.get(Some("sec"), "/admin/api/users/dave").await;
    let f = &before.ok()["factors"];
    assert_eq!(f["totp"], true);
    assert_eq!(f["recovery_codes_left"], 10);
    assert_eq!(f["passkey_sign_in"], true);
    assert_eq!(f["security_keys"][0]["name"], "YubiKey");
    assert_eq!(f["security_keys"][0]["created_at"], 1700000000);

    d.post(Some("sec"), "/admin/api/users/sec/mfa/reset", &why("mine"))
        .await
        .assert_error(403, &["your own"]);
    d.post(
        Some("sec"),
        "/admin/api/users/dave/mfa/reset",
        &json!({"ticket_id": "T"}),
    )
    .await
    .assert_error(400, &["reason"]);
    d.post(Some("sec"), "/admin/api/users/nobody/mfa/reset", &why("x"))
        .await
        .assert_error(404, &["nobody"]);
    assert!(d.active(&access).await, "refused resets changed nothing");

    let reset = d
        .post(
            Some("sec"),
            "/admin/api/users/dave/mfa/reset",
            &why("lost phone"),
        )
        .await;
    let after = reset.ok();
    assert_eq!(
        after["factors"],
        json!({"totp": false, "security_keys": [], "recovery_codes_left": 0, "passkey_sign_in": false})
    );
    assert_eq!(after["active_sessions"], 0);
    // Gone from the database, not only from the view.
    let store = d.oidc.env.store().await;
    let factors = portcullis::mfa::factors(&store, &dave_id).await.unwrap();
    assert!(!factors.totp && factors.webauthn == 0 && factors.recovery_codes_left == 0);
    assert!(
        portcullis::store::mfa::totp(&store, &dave_id)
            .await
            .unwrap()
            .is_none(),
        "the TOTP secret row is deleted"
    );
    assert!(
        !portcullis::store::webauthn::passkey_login(&store, &dave_id)
            .await
            .unwrap()
    );
    assert!(!d.active(&access).await, "dave's sessions were ended");

    // The password alone signs dave in now: no second-factor step.
    let req = AuthRequest::new(&d.shop, "openid");
    let done = d
        .oidc
        .browser()
        .authorize(&req, Some(("dave", PASSWORD)))
        .await;
    assert!(
        !done.pages.iter().any(|p| p == "/login/mfa"),
        "{:?}",
        done.pages
    );
    d.oidc
        .exchange_code(&d.shop, &done.code(), &req.pkce.verifier)
        .await
        .ok();

    d.post(
        Some("sec"),
        "/admin/api/users/dave/mfa/reset",
        &why("again"),
    )
    .await
    .assert_error(409, &["no second factor"]);
    let rows = d
        .audit(AuditFilter {
            action: Some("user.mfa_reset".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(rows.len(), 1, "one audit row for the whole reset");
    assert_eq!(rows[0].target.as_deref(), Some("user:dave"));
    assert_eq!(rows[0].reason.as_deref(), Some("lost phone"));
    let before = parse(&rows[0].before_json);
    assert_eq!(before["totp"], true);
    assert_eq!(before["recovery_codes_left"], 10);
    assert_eq!(before["passkey_sign_in"], true);
    assert_eq!(before["security_keys"][0]["id"], "cred-1");
    let after = parse(&rows[0].after_json);
    assert_eq!(after["totp"], false);
    assert_eq!(after["security_keys"], json!([]));
}

/// Register (secret once, works at /token; duplicate 409; bad redirect
/// 400; unknown fields 400), update redirect URIs (the old one is refused
/// at /authorize at once, the new one accepted), rotate the secret (the old
/// one is `invalid_client` at once), and first-party clients are off limits.
async fn staff_manage_clients(backend: Backend) {
    let d = desk(backend, &[], &[("sec", &["security_admin"])]).await;

    let listed = d.get(Some("sec"), "/admin/api/clients").await;
    let items = listed.ok()["items"].as_array().unwrap();
    let ids: BTreeSet<&str> = items
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.is_superset(&BTreeSet::from([UI, "shop", "gw"])),
        "{ids:?}"
    );
    let ui = items.iter().find(|c| c["client_id"] == UI).unwrap();
    assert_eq!(ui["first_party"], true);
    assert!(listed.json["next_page"].is_null());
    assert!(!listed.text.contains("secret"), "{}", listed.text);

    let reg = json!({
        "client_id": "partner", "redirect_uris": [], "scopes": ["api", "api"],
        "grant_types": ["client_credentials"], "may_introspect": false,
        "reason": "new partner", "ticket_id": "T-9",
    });
    let created = d.post(Some("sec"), "/admin/api/clients", &reg).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("cache-control"), "no-store");
    let secret = created.json["client_secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pcs_"));
    assert_eq!(created.json["first_party"], false);
    assert_eq!(created.json["public"], false);
    assert_eq!(created.json["scopes"], json!(["api"]));
    assert_eq!(created.json["grant_types"], json!(["client_credentials"]));
    let partner = Client {
        id: "partner".into(),
        secret: Some(secret.clone()),
        redirect_uri: String::new(),
    };
    d.oidc.client_credentials(&partner, Some("api")).await.ok();
    let shown = d.get(Some("sec"), "/admin/api/clients/partner").await;
    assert_eq!(shown.ok()["client_id"], "partner");
    assert!(!shown.text.contains(&secret) && !shown.text.contains("secret"));

    d.post(Some("sec"), "/admin/api/clients", &reg)
        .await
        .assert_error(409, &["already exists"]);
    let mut bad = reg.clone();
    bad["client_id"] = "evil".into();
    bad["grant_types"] = json!(["authorization_code"]);
    bad["redirect_uris"] = json!(["http://evil.example/cb"]);
    d.post(Some("sec"), "/admin/api/clients", &bad)
        .await
        .assert_error(400, &["redirect URI"]);
    let mut no_reason = reg.clone();
    no_reason["client_id"] = "other".into();
    no_reason["reason"] = Value::Null;
    d.post(Some("sec"), "/admin/api/clients", &no_reason)
        .await
        .assert_error(400, &["reason"]);
    // Staff cannot mint first-party clients (they carry staff authority).
    let mut sneaky = reg.clone();
    sneaky["client_id"] = "sneaky".into();
    sneaky["first_party"] = true.into();
    d.post(Some("sec"), "/admin/api/clients", &sneaky)
        .await
        .assert_error(400, &["first_party"]);
    for id in ["evil", "other", "sneaky"] {
        d.get(Some("sec"), &format!("/admin/api/clients/{id}"))
            .await
            .assert_error(404, &[id]);
    }

    // A public code-flow client; then its redirect URI moves.
    let webapp = json!({
        "client_id": "webapp", "redirect_uris": ["https://webapp.example/cb"],
        "scopes": ["openid"], "grant_types": ["authorization_code"], "public": true,
        "reason": "new app",
    });
    let created = d.post(Some("sec"), "/admin/api/clients", &webapp).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(created.json.get("client_secret").is_none());
    let authorize = |redirect: &'static str| {
        let d = &d;
        async move {
            let client = Client {
                id: "webapp".into(),
                secret: None,
                redirect_uri: redirect.into(),
            };
            let url = AuthRequest::new(&client, "openid").url(&d.oidc.issuer);
            let resp = d.oidc.http.get(url).send().await.unwrap();
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (resp.status().as_u16(), location)
        }
    };
    let (status, location) = authorize("https://webapp.example/cb").await;
    assert!(
        (300..400).contains(&status) && location.contains("/login"),
        "{status} {location}"
    );
    let upd = json!({
        "redirect_uris": ["https://webapp.example/new"], "scopes": ["openid", "profile"],
        "reason": "domain move",
    });
    let updated = d.post(Some("sec"), "/admin/api/clients/webapp", &upd).await;
    assert_eq!(
        updated.ok()["redirect_uris"],
        json!(["https://webapp.example/new"])
    );
    assert_eq!(updated.json["scopes"], json!(["openid", "profile"]));
    let (status, location) = authorize("https://webapp.example/cb").await;
    assert_eq!(
        (status, location.as_str()),
        (400, ""),
        "old redirect URI refused"
    );
    let (status, location) = authorize("https://webapp.example/new").await;
    assert!(
        (300..400).contains(&status) && location.contains("/login"),
        "new redirect URI accepted: {status} {location}"
    );
    for (uris, needle) in [
        (json!(["https://webapp.example/cb#frag"]), "fragment"),
        (json!(["http://webapp.example/cb"]), "loopback"),
        (json!([]), "redirect URI"),
    ] {
        let body = json!({"redirect_uris": uris, "scopes": ["openid"], "reason": "x"});
        d.post(Some("sec"), "/admin/api/clients/webapp", &body)
            .await
            .assert_error(400, &[needle]);
    }
    let body = json!({"redirect_uris": ["https://webapp.example/x"], "scopes": ["bad\"scope"], "reason": "x"});
    d.post(Some("sec"), "/admin/api/clients/webapp", &body)
        .await
        .assert_error(400, &["scope"]);
    d.post(Some("sec"), "/admin/api/clients/nothing", &upd)
        .await
        .assert_error(404, &["nothing"]);

    // Rotation: the old secret is refused at once, the new one works.
    d.post(
        Some("sec"),
        "/admin/api/clients/partner/secret/rotate",
        &json!({}),
    )
    .await
    .assert_error(400, &["reason"]);
    let rotated = d
        .post(
            Some("sec"),
            "/admin/api/clients/partner/secret/rotate",
            &why("leaked in a log"),
        )
        .await;
    let new_secret = rotated.ok()["client_secret"].as_str().unwrap().to_string();
    assert!(new_secret.starts_with("pcs_") && new_secret != secret);
    d.oidc
        .client_credentials(&partner, Some("api"))
        .await
        .assert_error(401, "invalid_client");
    let partner = Client {
        secret: Some(new_secret.clone()),
        ..partner
    };
    d.oidc.client_credentials(&partner, Some("api")).await.ok();
    d.post(
        Some("sec"),
        "/admin/api/clients/webapp/secret/rotate",
        &why("x"),
    )
    .await
    .assert_error(409, &["public"]);

    // First-party clients are managed with the CLI only.
    let mut first_party = vec![UI];
    if ids.contains(ADMIN_UI) {
        first_party.push(ADMIN_UI);
    }
    for id in first_party {
        let path = format!("/admin/api/clients/{id}");
        d.post(Some("sec"), &path, &upd)
            .await
            .assert_error(409, &["first-party"]);
        d.post(Some("sec"), &format!("{path}/secret/rotate"), &why("x"))
            .await
            .assert_error(409, &["first-party"]);
        d.post(Some("sec"), &format!("{path}/tokens/revoke"), &why("x"))
            .await
            .assert_error(409, &["first-party"]);
    }
    let ui_path = format!("/admin/api/clients/{UI}");
    assert!(d.active(&d.tokens["sec"]).await, "the staff token survived");
    let shown = d.get(Some("sec"), &ui_path).await;
    assert_eq!(shown.ok()["redirect_uris"], json!([d.ui.redirect_uri]));

    // Audited, never with secret material.
    assert_eq!(
        d.audit_actions("client:partner").await,
        ["client.register", "client.secret_rotated"]
    );
    assert_eq!(
        d.audit_actions("client:webapp").await,
        ["client.register", "client.update"]
    );
    let rows = d
        .audit(AuditFilter {
            target: Some("client:".into()),
            ..AuditFilter::default()
        })
        .await;
    for r in &rows {
        let text = format!("{:?} {:?}", r.before_json, r.after_json);
        assert!(
            !text.contains("pcs_") && !text.contains("secret_hash"),
            "{text}"
        );
    }
    let update = rows.iter().find(|r| r.action == "client.update").unwrap();
    assert_eq!(update.reason.as_deref(), Some("domain move"));
    assert_eq!(
        parse(&update.before_json)["redirect_uris"],
        json!(["https://webapp.example/cb"])
    );
    assert_eq!(
        parse(&update.after_json)["redirect_uris"],
        json!(["https://webapp.example/new"])
    );
}

/// Incident response: every access and refresh token of one client is
/// revoked at once (and an unredeemed code dies too); another client's
/// token stays active.
async fn revoking_every_token_of_a_client(backend: Backend) {
    let d = desk(backend, &[], &[("sec", &["security_admin"])]).await;
    let other = d.oidc.code_client("other", "openid", &[]).await;
    let shop_tokens = d.oidc.login_and_redeem(&d.shop, "carol", "openid").await;
    let shop_access = shop_tokens["access_token"].as_str().unwrap().to_string();
    let shop_refresh = shop_tokens["refresh_token"].as_str().unwrap().to_string();
    let other_tokens = d.oidc.login_and_redeem(&other, "carol", "openid").await;
    let other_access = other_tokens["access_token"].as_str().unwrap().to_string();
    // A code issued before the incident, not yet redeemed.
    let req = AuthRequest::new(&d.shop, "openid");
    let pending = d
        .oidc
        .browser()
        .authorize(&req, Some(("carol", PASSWORD)))
        .await
        .code();
    assert!(d.active(&shop_access).await && d.active(&other_access).await);

    d.post(
        Some("sec"),
        "/admin/api/clients/shop/tokens/revoke",
        &json!({}),
    )
    .await
    .assert_error(400, &["reason"]);
    d.post(
        Some("sec"),
        "/admin/api/clients/nope/tokens/revoke",
        &why("x"),
    )
    .await
    .assert_error(404, &["nope"]);
    let r = d
        .post(
            Some("sec"),
            "/admin/api/clients/shop/tokens/revoke",
            &why("client breach"),
        )
        .await;
    assert_eq!(
        r.ok()["revoked"],
        2,
        "one access and one refresh token were live"
    );
    assert!(!d.active(&shop_access).await, "shop's access token is dead");
    d.oidc
        .refresh(&d.shop, &shop_refresh)
        .await
        .assert_error(400, "invalid_grant");
    d.oidc
        .exchange_code(&d.shop, &pending, &req.pkce.verifier)
        .await
        .assert_error(400, "invalid_grant");
    assert!(
        d.active(&other_access).await,
        "another client's token is untouched"
    );

    let again = d
        .post(
            Some("sec"),
            "/admin/api/clients/shop/tokens/revoke",
            &why("again"),
        )
        .await;
    assert_eq!(again.ok()["revoked"], 0);
    // The client itself still works: new sign-ins get new tokens.
    let fresh = d.oidc.login_and_redeem(&d.shop, "carol", "openid").await;
    assert!(d.active(fresh["access_token"].as_str().unwrap()).await);

    let rows = d
        .audit(AuditFilter {
            action: Some("client.tokens_revoked".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].target.as_deref(), Some("client:shop"));
    assert_eq!(rows[0].reason.as_deref(), Some("client breach"));
    assert_eq!(parse(&rows[0].after_json)["revoked"], 2);
}

/// Removes the append-only guard, as an attacker with database access could.
async fn drop_guard(env: &crate::support::TestEnv) {
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

fn seqs(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

fn strs<'a>(page: &'a Value, key: &str) -> Vec<&'a str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_str().unwrap_or(""))
        .collect()
}

/// Search by actor, action (exact and prefix), target (exact and prefix)
/// and time, 50 per page newest first; export CSV and JSON lines of the
/// same filter (audited); verify, before and after a row is tampered with.
async fn audit_search_export_and_verify(backend: Backend) {
    let d = desk(
        backend,
        &[],
        &[("sec", &["security_admin"]), ("aud", &["auditor"])],
    )
    .await;
    d.post(Some("sec"), "/admin/api/users/carol/lock", &why("fraud"))
        .await
        .ok();
    d.post(
        Some("sec"),
        "/admin/api/users/carol/unlock",
        &why("cleared"),
    )
    .await
    .ok();
    // 60 more rows, appended the way the server does.
    let store = d.oidc.env.store().await;
    let clock = portcullis::clock::SystemClock;
    for i in 0..60 {
        portcullis::audit::record_alone(
            &store,
            portcullis::clock::Clock::now_ms(&clock),
            &AuditContext::system("test"),
            AuditEvent::new("test.bulk", format!("n:{i}")),
        )
        .await
        .unwrap();
    }

    // Paging: 50, then 10, newest first, no overlap.
    let p1 = d
        .get(Some("aud"), "/admin/api/audit?action=test.bulk")
        .await;
    let p1 = p1.ok().clone();
    assert_eq!(p1["page"], 1);
    assert_eq!(p1["next_page"], 2);
    let p2 = d
        .get(Some("aud"), "/admin/api/audit?action=test.bulk&page=2")
        .await;
    let p2 = p2.ok().clone();
    assert!(p2["next_page"].is_null());
    let mut all = seqs(&p1);
    assert_eq!(all.len(), 50);
    all.extend(seqs(&p2));
    assert_eq!(all.len(), 60);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    assert!(strs(&p1, "action").iter().all(|a| *a == "test.bulk"));
    for bad in [
        "page=0",
        "page=x",
        "from=yesterday",
        "to=2026-13-01",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        d.get(Some("aud"), &format!("/admin/api/audit?{bad}"))
            .await
            .assert_error(400, &[]);
    }

    // Action: exact, or a prefix ending in "." (or "*").
    let exact = d
        .get(Some("aud"), "/admin/api/audit?action=user.lock")
        .await;
    assert_eq!(strs(exact.ok(), "action"), ["user.lock"]);
    let prefix = d.get(Some("aud"), "/admin/api/audit?action=user.").await;
    let actions: BTreeSet<&str> = strs(prefix.ok(), "action").into_iter().collect();
    assert_eq!(
        actions,
        BTreeSet::from(["user.create", "user.lock", "user.unlock"])
    );
    let star = d.get(Some("aud"), "/admin/api/audit?action=user.un*").await;
    assert_eq!(strs(star.ok(), "action"), ["user.unlock"]);
    let none = d.get(Some("aud"), "/admin/api/audit?action=user").await;
    assert_eq!(none.ok()["items"], json!([]));

    // Actor: an id, or a username standing for that user's id.
    let by_name = d.get(Some("aud"), "/admin/api/audit?actor=sec").await;
    let by_name = by_name.ok().clone();
    let sec_id = by_name["items"][0]["actor"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        by_name["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["actor"]["id"] == sec_id),
        "{by_name}"
    );
    let sec_actions: Vec<&str> = strs(&by_name, "action");
    assert!(sec_actions.contains(&"user.lock") && sec_actions.contains(&"user.unlock"));
    assert!(!sec_actions.contains(&"test.bulk"));
    let by_id = d
        .get(Some("aud"), &format!("/admin/api/audit?actor={sec_id}"))
        .await;
    assert_eq!(seqs(by_id.ok()), seqs(&by_name));
    let cli = d
        .get(Some("aud"), "/admin/api/audit?actor=test-operator")
        .await;
    assert!(!cli.ok()["items"].as_array().unwrap().is_empty());
    assert!(
        cli.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["actor"]["kind"] == "cli"),
        "{}",
        cli.text
    );

    // Target: exact, or a prefix ending in ":".
    let carol = d
        .get(Some("aud"), "/admin/api/audit?target=user:carol")
        .await;
    assert_eq!(
        strs(carol.ok(), "action"),
        ["user.unlock", "user.lock", "user.create"]
    );
    let users = d.get(Some("aud"), "/admin/api/audit?target=user:").await;
    let targets = strs(users.ok(), "target");
    assert!(
        targets.iter().all(|t| t.starts_with("user:")),
        "{targets:?}"
    );
    assert!(targets.contains(&"user:sec") && targets.contains(&"user:carol"));

    // Time: inclusive bounds.
    let lock = &exact.json["items"][0];
    let at = lock["at_ms"].as_i64().unwrap();
    let time = lock["time"].as_str().unwrap();
    let from = d
        .get(
            Some("aud"),
            &format!("/admin/api/audit?from={time}&action=user."),
        )
        .await;
    let from = from.ok();
    assert!(strs(from, "action").contains(&"user.lock"));
    assert!(!strs(from, "action").contains(&"user.create"));
    assert!(
        from["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["at_ms"].as_i64().unwrap() >= at)
    );
    let to = d
        .get(Some("aud"), &format!("/admin/api/audit?to={time}"))
        .await;
    let to = to.ok();
    assert!(seqs(to).contains(&lock["seq"].as_i64().unwrap()));
    assert!(!strs(to, "action").contains(&"test.bulk"));
    assert!(
        to["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["at_ms"].as_i64().unwrap() <= at)
    );
    let future = d
        .get(Some("aud"), "/admin/api/audit?from=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future.ok()["items"], json!([]));

    // Export: the same filters, chain order, as an attachment; audited.
    let csv = d
        .oidc
        .server
        .http
        .get(d.url("/admin/api/audit/export?format=csv&action=user."))
        .bearer_auth(&d.tokens["aud"])
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let disposition = csv.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment") && disposition.contains(".csv"),
        "{disposition}"
    );
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(csv.headers()["cache-control"], "no-store");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("seq,time,actor_kind"), "{csv}");
    let csv_actions: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(5).unwrap())
        .collect();
    assert_eq!(
        csv_actions.len(),
        prefix.json["items"].as_array().unwrap().len()
    );
    assert!(csv_actions.iter().all(|a| a.starts_with("user.")), "{csv}");
    let jsonl = d
        .oidc
        .server
        .http
        .get(d.url("/admin/api/audit/export?format=jsonl&target=user:carol"))
        .bearer_auth(&d.tokens["aud"])
        .send()
        .await
        .unwrap();
    assert_eq!(jsonl.status(), 200);
    assert!(
        jsonl.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(".jsonl")
    );
    let rows: Vec<Value> = jsonl
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["user.create", "user.lock", "user.unlock"],
        "chain order"
    );
    assert!(rows.iter().all(|r| r["target"] == "user:carol"));
    assert_eq!(rows[1]["reason"], "fraud");
    assert_eq!(rows[1]["after"]["locked"], true);
    d.get(Some("aud"), "/admin/api/audit/export?format=xml")
        .await
        .assert_error(400, &["format"]);
    let exports = d
        .get(Some("aud"), "/admin/api/audit?action=audit.export")
        .await;
    let exports = exports.ok();
    assert_eq!(exports["items"].as_array().unwrap().len(), 2, "{exports}");
    assert_eq!(exports["items"][0]["after"]["format"], "jsonl");
    assert_eq!(exports["items"][0]["after"]["rows"], 3);
    assert_eq!(exports["items"][1]["after"]["format"], "csv");
    assert_eq!(exports["items"][1]["after"]["filter"]["action"], "user.");
    let aud_id = exports["items"][0]["actor"]["id"].as_str().unwrap();
    assert_ne!(aud_id, sec_id);

    // Verify: ok, then the lock's reason is rewritten behind our back.
    let report = d.get(Some("aud"), "/admin/api/audit/verify").await;
    let report = report.ok();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["first_break"].is_null());
    assert_eq!(report["rows_checked"], report["head_seq"]);
    drop_guard(&d.oidc.env).await;
    let tampered = lock["seq"].as_i64().unwrap();
    let n = d
        .oidc
        .env
        .raw_sql(&format!(
            "UPDATE audit_log SET reason = 'routine' WHERE seq = {tampered}"
        ))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let report = d.get(Some("aud"), "/admin/api/audit/verify").await;
    let report = report.ok();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_break"]["seq"], tampered);
    assert!(
        report["first_break"]["problem"]
            .as_str()
            .unwrap()
            .contains("altered"),
        "{report}"
    );
}
