//! Issue 8: the admin UI's server side, black-box through the real binary
//! and driven like a browser without JavaScript (a cookie jar, redirects
//! followed by hand, forms posted as `application/x-www-form-urlencoded`).
//! Complements the headless-Chromium run in `admin_ui.rs`: sign-in attacks
//! (state, replay, code injection, open redirect, non-staff and
//! single-factor accounts), cookie attributes, security headers, CSRF
//! defences, every mutating form checked from outside the UI (database,
//! `/introspect`, `/token`, `/authorize`, audit rows), permissions in
//! pages, audit export and hash-chain verification, and sign-out.

use std::sync::Arc;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::Value;

use crate::oauth::flow::{
    AuthRequest, Browser, Client, Oidc, PASSWORD, Page, hidden_inputs, query, random_token,
};
use crate::oauth::staff::{enrol_totp, totp_code};
use crate::support::{Backend, raw_pool};

backend_tests!(
    unauthenticated_page_is_sent_to_sign_in,
    unauthenticated_post_gets_a_401_page,
    callback_with_a_state_mismatch_is_refused,
    replayed_callback_is_refused,
    code_of_another_client_is_refused,
    return_to_never_leaves_the_admin_ui,
    account_without_a_staff_role_is_refused,
    staff_without_a_second_factor_cannot_get_in,
    admin_cookie_is_httponly_strict_and_holds_no_token,
    admin_pages_carry_security_headers,
    stylesheet_is_served_as_css,
    post_without_csrf_token_is_refused,
    post_with_a_wrong_csrf_token_is_refused,
    post_from_another_origin_is_refused,
    post_with_cross_site_fetch_metadata_is_refused,
    same_origin_post_with_null_origin_is_accepted,
    lock_and_unlock_a_user,
    second_factor_reset_needs_the_confirmation,
    client_update_replaces_redirect_uris,
    rotated_secret_is_shown_once_and_replaces_the_old_one,
    revoking_every_token_needs_the_exact_client_id,
    terminating_all_sessions_of_a_user,
    requester_cancels_a_refund,
    approver_rejects_a_refund,
    missing_reason_is_a_400_page_with_the_sentence,
    auditor_sees_only_the_audit_log,
    auditor_exports_filtered_rows,
    audit_page_verifies_the_chain_and_detects_tampering,
    sign_out_ends_the_ui_and_the_sign_in_session,
    stale_second_factor_gets_a_step_up_prompt_back_to_the_section,
);

/// The admin UI's own client, registered by the server at start-up.
const ADMIN_UI: &str = "portcullis-admin-ui";
const ACR_MFA: &str = "urn:portcullis:acr:mfa";

/// A server whose second factors stay fresh for the whole test, so
/// step-up never depends on how fast the machine is.
async fn start(backend: Backend) -> Oidc {
    Oidc::start_with(backend, &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "1h")]).await
}

/// A user holding `roles` who enrolled an authenticator app (which used
/// the current step's code); the TOTP secret.
async fn staff_member(oidc: &Oidc, username: &str, roles: &[&str]) -> String {
    oidc.user(username).await;
    for role in roles {
        oidc.env
            .cli(&["role", "grant", "--username", username, "--role", role])
            .await
            .assert_ok();
    }
    let (_browser, secret) = enrol_totp(oidc, username).await;
    secret
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `Set-Cookie` line that sets `name`, if any.
fn set_cookie(page: &Page, name: &str) -> Option<String> {
    page.headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The value a `Set-Cookie` line sets.
fn cookie_value(line: &str) -> String {
    line.split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// The target of `<meta http-equiv="refresh" content="0;url=…">`.
fn meta_refresh(body: &str) -> Option<String> {
    let marker = "http-equiv=\"refresh\" content=\"";
    let start = body.find(marker)? + marker.len();
    let rest = &body[start..];
    let content = &rest[..rest.find('"')?];
    let url = content.split_once("url=")?.1;
    Some(
        url.replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The `href`s of the header navigation.
fn nav_links(body: &str) -> Vec<String> {
    let header_start = body.find("<header").expect("page has a header");
    let header = &body[header_start..];
    let header = &header[..header.find("</header>").expect("header closes")];
    let nav = &header[header.find("<nav").expect("header has a nav")..];
    let nav = &nav[..nav.find("</nav>").expect("nav closes")];
    let mut links = Vec::new();
    let mut rest = nav;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        let end = rest.find('"').unwrap_or(rest.len());
        links.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    links
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A user agent for the admin listener: its own cookie jar (shared with
/// the issuer's pages, as in a browser: cookies are not per port), no
/// automatic redirects. Every admin response is checked for leaked tokens.
struct Agent {
    http: reqwest::Client,
    jar: Arc<Jar>,
    /// The same client, for walking the issuer's login pages.
    browser: Browser,
    admin: String,
    issuer: String,
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
            browser: Browser::with_client(&oidc.issuer, http.clone()),
            http,
            jar,
            admin: oidc.server.admin.clone(),
            issuer: oidc.issuer.clone(),
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.admin)
        }
    }

    async fn send(&self, url: String, req: reqwest::RequestBuilder) -> Page {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let page = Page {
            status,
            headers,
            body,
            url,
        };
        // BFF: no token ever reaches the browser.
        assert!(
            !page.body.contains("pct_"),
            "a token in the body of {}: {}",
            page.url,
            page.body
        );
        assert!(
            !page.set_cookies().contains("pct_"),
            "a token in a cookie set by {}: {}",
            page.url,
            page.set_cookies()
        );
        page
    }

    async fn get(&self, path: &str) -> Page {
        let url = self.url(path);
        self.send(url.clone(), self.http.get(&url)).await
    }

    /// POSTs `form` with extra `headers`.
    async fn post(&self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let url = self.url(path);
        let mut req = self.http.post(&url).form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(url.clone(), req).await
    }

    /// The cookie `name` this agent would send to the admin listener.
    fn cookie(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(&self.admin).unwrap();
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// GET /auth/login`query`: the 303 to the issuer's /authorize.
    async fn begin(&self, query: &str) -> String {
        let page = self.get(&format!("/auth/login{query}")).await;
        assert_eq!(page.status, 303, "start sign-in: {}", page.body);
        let location = page.location().unwrap().to_string();
        assert!(
            location.starts_with(&format!("{}/authorize?", self.issuer)),
            "sign-in goes to the issuer: {location}"
        );
        location
    }

    /// Walks the issuer's pages (logging in with `login` when asked) to
    /// the redirect back to the admin UI's callback.
    async fn to_callback(&self, authorize: &str, login: Option<(&str, &str)>) -> String {
        let done = self.browser.follow(authorize, login, "allow").await;
        assert!(
            done.location
                .starts_with(&format!("{}/auth/callback?", self.admin)),
            "back to the admin UI: {}",
            done.location
        );
        done.location
    }

    /// The whole sign-in; asserts the callback's 200 with `pc_admin` set
    /// and returns the callback page.
    async fn sign_in(&self, return_to: &str, login: Option<(&str, &str)>) -> Page {
        let authorize = self
            .begin(&format!("?return_to={}", urlencode(return_to)))
            .await;
        let callback = self.to_callback(&authorize, login).await;
        let page = self.get(&callback).await;
        assert_eq!(page.status, 200, "callback: {}", page.body);
        assert!(
            set_cookie(&page, "pc_admin").is_some(),
            "callback sets the admin session cookie: {:?}",
            page.headers
        );
        page
    }

    /// The CSRF token of this agent's admin session (the sign-out form's).
    async fn csrf(&self) -> String {
        let home = self.get("/").await;
        assert_eq!(home.status, 200, "home: {}", home.body);
        hidden_inputs(&home.body)
            .get("csrf_token")
            .cloned()
            .expect("the sign-out form carries the CSRF token")
    }
}

/// A staff member signed into the admin UI.
struct Ui {
    agent: Agent,
    csrf: String,
    /// The callback page that set the cookie.
    callback: Page,
}

impl Ui {
    async fn get(&self, path: &str) -> Page {
        self.agent.get(path).await
    }

    /// POSTs a form with this session's CSRF token.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut form = form.to_vec();
        form.push(("csrf_token", &self.csrf));
        self.agent.post(path, &form, &[]).await
    }

    /// The `pc_admin` cookie value.
    fn cookie(&self) -> String {
        self.agent.cookie("pc_admin").expect("signed in")
    }
}

/// Signs `username` into the admin UI with password and TOTP (the step
/// after enrolment's, as `staff()` does).
async fn sign_in(oidc: &Oidc, username: &str, secret: &str) -> Ui {
    let agent = Agent::new(oidc);
    agent.browser.set_mfa_code(&totp_code(secret, 1));
    let callback = agent.sign_in("/", Some((username, PASSWORD))).await;
    assert_eq!(meta_refresh(&callback.body).as_deref(), Some("/"));
    let csrf = agent.csrf().await;
    Ui {
        agent,
        csrf,
        callback,
    }
}

/// An introspecting gateway.
async fn gateway(oidc: &Oidc) -> Client {
    oidc.client("gw", &["--grant", "client_credentials", "--may-introspect"])
        .await
}

/// Direct database access (outside the UI).
struct Db(sqlx::AnyPool);

impl Db {
    async fn open(oidc: &Oidc) -> Db {
        Db(raw_pool(&oidc.env.database_url()).await)
    }

    async fn user_id(&self, username: &str) -> String {
        sqlx::query_as::<_, (String,)>("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_one(&self.0)
            .await
            .unwrap()
            .0
    }

    async fn locked(&self, username: &str) -> bool {
        sqlx::query_as::<_, (i64,)>("SELECT CAST(locked AS BIGINT) FROM users WHERE username = $1")
            .bind(username)
            .fetch_one(&self.0)
            .await
            .unwrap()
            .0
            == 1
    }

    /// Audit rows of `action`: (actor_id, target, reason, ticket_id).
    async fn audit(
        &self,
        action: &str,
    ) -> Vec<(String, Option<String>, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT actor_id, target, reason, ticket_id FROM audit_log WHERE action = $1 ORDER BY seq",
        )
        .bind(action)
        .fetch_all(&self.0)
        .await
        .unwrap()
    }

    async fn count_audit(&self, action: &str) -> i64 {
        sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM audit_log WHERE action = $1")
            .bind(action)
            .fetch_one(&self.0)
            .await
            .unwrap()
            .0
    }

    async fn admin_sessions(&self) -> i64 {
        sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM admin_ui_sessions")
            .fetch_one(&self.0)
            .await
            .unwrap()
            .0
    }

    /// (status, cancelled_by, rejected_by, decision_reason) of a refund.
    async fn refund(&self, id: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        sqlx::query_as(
            "SELECT status, cancelled_by, rejected_by, decision_reason FROM refunds WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.0)
        .await
        .unwrap()
    }
}

/// Asserts a refused sign-in: `status`, the page names `needle`, no admin
/// session cookie, and the browser is still not signed in.
async fn assert_sign_in_refused(agent: &Agent, page: &Page, status: u16, needle: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(
        page.body.contains(needle),
        "the page should say {needle:?}: {}",
        page.body
    );
    assert!(
        set_cookie(page, "pc_admin").is_none(),
        "no admin session for a refused sign-in: {}",
        page.set_cookies()
    );
    let home = agent.get("/").await;
    assert_eq!(home.status, 303, "still signed out: {}", home.body);
}

// ---------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------

async fn unauthenticated_page_is_sent_to_sign_in(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    oidc.user("carol").await;
    let agent = Agent::new(&oidc);

    let page = agent.get("/sessions?user=carol").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        Some("/auth/login?return_to=%2Fsessions%3Fuser%3Dcarol")
    );
    assert_eq!(header(&page.headers, "cache-control"), "no-store");

    // The sign-in it leads to: code flow with PKCE S256 and the MFA acr,
    // as the admin UI's own client, back to its callback.
    let authorize = agent.begin("?return_to=%2Fsessions%3Fuser%3Dcarol").await;
    let q = query(&url::Url::parse(&authorize).unwrap());
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], ADMIN_UI);
    assert_eq!(q["redirect_uri"], format!("{}/auth/callback", agent.admin));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["acr_values"], ACR_MFA);
    assert!(!q["state"].is_empty() && !q["nonce"].is_empty());
    assert!(
        !authorize.contains("return_to"),
        "return_to stays server-side"
    );

    // Signing in lands on the page that was asked for.
    agent.browser.set_mfa_code(&totp_code(&secret, 1));
    let callback = agent.to_callback(&authorize, Some(("sue", PASSWORD))).await;
    let done = agent.get(&callback).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(
        meta_refresh(&done.body).as_deref(),
        Some("/sessions?user=carol")
    );
    let sessions = agent.get("/sessions?user=carol").await;
    assert_eq!(sessions.status, 200, "{}", sessions.body);
    oidc.server.stop().await;
}

async fn unauthenticated_post_gets_a_401_page(backend: Backend) {
    let oidc = start(backend).await;
    oidc.user("carol").await;
    let db = Db::open(&oidc).await;
    let agent = Agent::new(&oidc);

    let page = agent
        .post("/users/carol/lock", &[("reason", "no session")], &[])
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(
        page.body.contains("Your admin session has ended."),
        "{}",
        page.body
    );
    assert!(page.location().is_none(), "a POST is not redirected");

    // A made-up session cookie is no better.
    let forged = agent
        .post(
            "/users/carol/lock",
            &[("reason", "forged cookie"), ("csrf_token", "x")],
            &[("cookie", &format!("pc_admin={}", random_token()))],
        )
        .await;
    assert_eq!(forged.status, 401, "{}", forged.body);

    assert!(!db.locked("carol").await, "nothing changed");
    assert_eq!(db.count_audit("user.lock").await, 0);
    oidc.server.stop().await;
}

async fn callback_with_a_state_mismatch_is_refused(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    let db = Db::open(&oidc).await;
    let agent = Agent::new(&oidc);
    agent.browser.set_mfa_code(&totp_code(&secret, 1));

    let authorize = agent.begin("").await;
    let callback = agent.to_callback(&authorize, Some(("sue", PASSWORD))).await;
    // A real code with somebody else's state.
    let mut forged = url::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                random_token()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(&pairs);
    let page = agent.get(forged.as_str()).await;
    assert_sign_in_refused(&agent, &page, 400, "state mismatch").await;
    assert_eq!(db.admin_sessions().await, 0);

    // The same person gets in with a sign-in of their own (the sign-in
    // session at the issuer already has the second factor).
    agent.sign_in("/", Some(("sue", PASSWORD))).await;
    assert_eq!(agent.get("/").await.status, 200);
    oidc.server.stop().await;
}

async fn replayed_callback_is_refused(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    let db = Db::open(&oidc).await;
    let agent = Agent::new(&oidc);
    agent.browser.set_mfa_code(&totp_code(&secret, 1));

    let authorize = agent.begin("").await;
    let flow = agent.cookie("pc_admin_flow").expect("flow cookie set");
    let callback = agent.to_callback(&authorize, Some(("sue", PASSWORD))).await;
    let first = agent.get(&callback).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(set_cookie(&first, "pc_admin").is_some());
    assert_eq!(db.admin_sessions().await, 1);

    // An attacker who copied the flow cookie and the callback URL replays
    // both; another browser without the cookie tries the URL alone.
    let attacker = Agent::new(&oidc);
    let replay = attacker
        .send(
            callback.clone(),
            attacker
                .http
                .get(&callback)
                .header("cookie", format!("pc_admin_flow={flow}")),
        )
        .await;
    assert_sign_in_refused(&attacker, &replay, 400, "already completed").await;
    let bare = attacker.get(&callback).await;
    assert_sign_in_refused(&attacker, &bare, 400, "not started in this browser").await;
    assert_eq!(db.admin_sessions().await, 1, "no second session");

    // The code was not redeemed twice (which would revoke the first
    // redemption's tokens): the real session still works.
    assert_eq!(agent.get("/").await.status, 200);
    oidc.server.stop().await;
}

async fn code_of_another_client_is_refused(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    // Another first-party client that (mis)registered the admin UI's
    // callback, so only the code's client binding stands in the way.
    let callback_uri = format!("{}/auth/callback", oidc.server.admin);
    let console = oidc
        .client(
            "console",
            &["--redirect-uri", &callback_uri, "--first-party"],
        )
        .await;
    let db = Db::open(&oidc).await;

    // The victim's browser starts an admin UI sign-in: state and PKCE
    // challenge are visible in the URL.
    let agent = Agent::new(&oidc);
    let authorize = agent.begin("").await;
    let admin_q = query(&url::Url::parse(&authorize).unwrap());

    // A staff member's code, with a second factor, the same redirect URI
    // and the same PKCE challenge, but issued to the other client.
    let other = oidc.browser();
    other.set_mfa_code(&totp_code(&secret, 1));
    let req = AuthRequest::new(&console, "openid")
        .set("acr_values", ACR_MFA)
        .set("code_challenge", &admin_q["code_challenge"]);
    let done = other.authorize(&req, Some(("sue", PASSWORD))).await;
    assert!(
        done.location.starts_with(&callback_uri),
        "{}",
        done.location
    );
    let code = done.code();

    // Injected into the admin UI's sign-in with the right state.
    let mut callback = url::Url::parse(&callback_uri).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &admin_q["state"])
        .append_pair("iss", &oidc.issuer);
    let page = agent.get(callback.as_str()).await;
    assert_sign_in_refused(&agent, &page, 400, "refused to redeem the code").await;
    assert_eq!(db.admin_sessions().await, 0);
    oidc.server.stop().await;
}

async fn return_to_never_leaves_the_admin_ui(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    let agent = Agent::new(&oidc);
    agent.browser.set_mfa_code(&totp_code(&secret, 1));
    // The first sign-in logs in at the issuer; the others ride on that
    // sign-in session.
    for target in [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "//evil.example/sessions",
    ] {
        let authorize = agent
            .begin(&format!("?return_to={}", urlencode(target)))
            .await;
        assert!(!authorize.contains("evil"), "{authorize}");
        let callback = agent.to_callback(&authorize, Some(("sue", PASSWORD))).await;
        let page = agent.get(&callback).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(
            meta_refresh(&page.body).as_deref(),
            Some("/"),
            "return_to {target:?}: {}",
            page.body
        );
        assert!(
            !page.body.contains("evil.example"),
            "return_to {target:?} leaked into the page: {}",
            page.body
        );
    }
    oidc.server.stop().await;
}

async fn account_without_a_staff_role_is_refused(backend: Backend) {
    let oidc = start(backend).await;
    // A second factor, but no role.
    let secret = staff_member(&oidc, "nora", &[]).await;
    let db = Db::open(&oidc).await;
    let agent = Agent::new(&oidc);
    agent.browser.set_mfa_code(&totp_code(&secret, 1));
    let authorize = agent.begin("").await;
    let callback = agent
        .to_callback(&authorize, Some(("nora", PASSWORD)))
        .await;
    let page = agent.get(&callback).await;
    assert_sign_in_refused(&agent, &page, 403, "holds no staff role").await;
    assert_eq!(db.admin_sessions().await, 0);
    oidc.server.stop().await;
}

async fn staff_without_a_second_factor_cannot_get_in(backend: Backend) {
    let oidc = start(backend).await;
    oidc.user("sid").await;
    oidc.env
        .cli(&[
            "role",
            "grant",
            "--username",
            "sid",
            "--role",
            "security_admin",
        ])
        .await
        .assert_ok();
    let db = Db::open(&oidc).await;
    let agent = Agent::new(&oidc);
    let authorize = agent.begin("").await;
    // The password is right; no second factor is asked because there is none.
    let callback = agent.to_callback(&authorize, Some(("sid", PASSWORD))).await;
    let page = agent.get(&callback).await;
    assert_sign_in_refused(&agent, &page, 403, "unmet_authentication_requirements").await;
    assert_eq!(db.admin_sessions().await, 0);
    oidc.server.stop().await;
}

// ---------------------------------------------------------------------
// Cookies and headers
// ---------------------------------------------------------------------

async fn admin_cookie_is_httponly_strict_and_holds_no_token(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(
        &oidc,
        "sam",
        &["security_admin", "support", "auditor", "refund_approver"],
    )
    .await;
    oidc.user("carol").await;
    let ui = sign_in(&oidc, "sam", &secret).await;

    let line = set_cookie(&ui.callback, "pc_admin").unwrap();
    let attrs: Vec<String> = line
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for want in ["httponly", "samesite=strict", "path=/"] {
        assert!(
            attrs.iter().any(|a| a == want),
            "pc_admin lacks {want}: {line}"
        );
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain=")),
        "host-only cookie: {line}"
    );
    let value = cookie_value(&line);
    assert!(value.len() >= 32, "a random session id: {line}");
    assert_eq!(ui.cookie(), value);

    // The flow cookie of a sign-in is HttpOnly as well.
    let begun = ui.get("/auth/login").await;
    let flow = set_cookie(&begun, "pc_admin_flow").unwrap();
    assert!(flow.contains("HttpOnly"), "{flow}");

    // Every page and export of the UI (each response is checked for
    // `pct_` in its body and Set-Cookie by the agent) and every cookie the
    // browser holds is free of tokens.
    for path in [
        "/",
        "/sessions",
        "/users",
        "/users/carol",
        "/clients",
        "/clients/portcullis-admin-ui",
        "/refunds",
        "/audit",
        "/audit?verify=1",
        "/audit/export?format=jsonl",
        "/audit/export?format=csv",
    ] {
        let page = ui.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
    }
    let jar = ui
        .agent
        .jar
        .cookies(&url::Url::parse(&ui.agent.admin).unwrap())
        .unwrap();
    let jar = jar.to_str().unwrap();
    assert!(jar.contains("pc_admin="), "{jar}");
    assert!(!jar.contains("pct_"), "a token in the cookie jar: {jar}");
    oidc.server.stop().await;
}

/// CSP without inline allowances and with `frame-ancestors 'none'`,
/// `no-store`, `nosniff`, and no inline script or style in the page.
#[track_caller]
fn assert_page_headers(page: &Page) {
    let csp = header(&page.headers, "content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'"),
        "{}: CSP {csp:?}",
        page.url
    );
    assert!(!csp.contains("unsafe-inline"), "{}: CSP {csp:?}", page.url);
    assert!(!csp.contains("unsafe-eval"), "{}: CSP {csp:?}", page.url);
    assert!(
        csp.contains("default-src 'none'"),
        "{}: CSP {csp:?}",
        page.url
    );
    assert_eq!(
        header(&page.headers, "cache-control"),
        "no-store",
        "{}",
        page.url
    );
    assert_eq!(
        header(&page.headers, "x-content-type-options"),
        "nosniff",
        "{}",
        page.url
    );
    assert!(
        header(&page.headers, "content-type").starts_with("text/html"),
        "{}",
        page.url
    );
    assert!(
        !page.body.contains("<script"),
        "{}: inline script",
        page.url
    );
    assert!(!page.body.contains("<style"), "{}: inline style", page.url);
    assert!(
        !page.body.contains(" style="),
        "{}: style attribute",
        page.url
    );
}

async fn admin_pages_carry_security_headers(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support", "auditor"]).await;
    oidc.user("carol").await;
    let ui = sign_in(&oidc, "sue", &secret).await;
    assert_page_headers(&ui.callback);
    for (path, status) in [
        ("/", 200),
        ("/sessions", 200),
        ("/users/carol", 200),
        ("/refunds", 200),
        ("/audit", 200),
        // Error pages too.
        ("/clients", 403),
        ("/users/nobody-here", 404),
    ] {
        let page = ui.get(path).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert_page_headers(&page);
    }
    let refused = ui.agent.post("/users/carol/lock", &[], &[]).await;
    assert_eq!(refused.status, 403);
    assert_page_headers(&refused);
    let signed_out = Agent::new(&oidc)
        .post("/sessions/x/terminate", &[], &[])
        .await;
    assert_eq!(signed_out.status, 401);
    assert_page_headers(&signed_out);
    oidc.server.stop().await;
}

async fn stylesheet_is_served_as_css(backend: Backend) {
    let oidc = start(backend).await;
    let agent = Agent::new(&oidc);
    let css = agent.get("/assets/admin.css").await;
    assert_eq!(css.status, 200);
    assert!(
        header(&css.headers, "content-type").starts_with("text/css"),
        "{:?}",
        css.headers
    );
    assert_eq!(header(&css.headers, "x-content-type-options"), "nosniff");
    assert!(css.body.contains('{'), "a stylesheet: {}", css.body);
    // Pages load it as a file (no inline style).
    let page = agent.post("/sessions/x/terminate", &[], &[]).await;
    assert!(
        page.body
            .contains("<link rel=\"stylesheet\" href=\"/assets/admin.css\""),
        "{}",
        page.body
    );
    oidc.server.stop().await;
}

// ---------------------------------------------------------------------
// CSRF
// ---------------------------------------------------------------------

/// A support desk member signed in, a customer session to terminate and
/// a gateway to see the effect.
struct CsrfDesk {
    oidc: Oidc,
    ui: Ui,
    gw: Client,
    db: Db,
    carol_sid: String,
    carol_token: String,
}

async fn csrf_desk(backend: Backend) -> CsrfDesk {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    oidc.user("carol").await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let gw = gateway(&oidc).await;
    let (carol_sid, carol_token) = oidc.customer_session(&shop, "carol").await;
    assert!(oidc.is_active(&gw, &carol_token).await);
    let ui = sign_in(&oidc, "sue", &secret).await;
    let db = Db::open(&oidc).await;
    CsrfDesk {
        oidc,
        ui,
        gw,
        db,
        carol_sid,
        carol_token,
    }
}

impl CsrfDesk {
    fn terminate_path(&self) -> String {
        format!("/sessions/{}/terminate", self.carol_sid)
    }

    /// Refused with 403 and nothing changed.
    async fn assert_refused(&self, page: &Page, needle: &str) {
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains(needle), "{needle:?}: {}", page.body);
        assert!(
            self.oidc.is_active(&self.gw, &self.carol_token).await,
            "the session survived"
        );
        assert_eq!(self.db.count_audit("session.terminate").await, 0);
    }
}

async fn post_without_csrf_token_is_refused(backend: Backend) {
    let d = csrf_desk(backend).await;
    let page =
        d.ui.agent
            .post(
                &d.terminate_path(),
                &[("reason", "forged"), ("ticket_id", "X-1")],
                &[],
            )
            .await;
    d.assert_refused(&page, "out of date or was not sent from the admin UI")
        .await;
    d.oidc.server.stop().await;
}

async fn post_with_a_wrong_csrf_token_is_refused(backend: Backend) {
    let d = csrf_desk(backend).await;
    // Same length, last character changed; and a random one.
    let mut wrong = d.ui.csrf.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    for token in [wrong, random_token()] {
        let page =
            d.ui.agent
                .post(
                    &d.terminate_path(),
                    &[("reason", "forged"), ("csrf_token", &token)],
                    &[],
                )
                .await;
        d.assert_refused(&page, "out of date or was not sent from the admin UI")
            .await;
    }
    d.oidc.server.stop().await;
}

async fn post_from_another_origin_is_refused(backend: Backend) {
    let d = csrf_desk(backend).await;
    // Even with the right token: the form was on another site.
    for origin in ["https://evil.example", d.oidc.issuer.as_str()] {
        let page =
            d.ui.agent
                .post(
                    &d.terminate_path(),
                    &[("reason", "forged"), ("csrf_token", &d.ui.csrf)],
                    &[("origin", origin)],
                )
                .await;
        d.assert_refused(&page, "sent from another site").await;
    }
    d.oidc.server.stop().await;
}

async fn post_with_cross_site_fetch_metadata_is_refused(backend: Backend) {
    let d = csrf_desk(backend).await;
    for site in ["cross-site", "same-site"] {
        let page =
            d.ui.agent
                .post(
                    &d.terminate_path(),
                    &[("reason", "forged"), ("csrf_token", &d.ui.csrf)],
                    &[("sec-fetch-site", site)],
                )
                .await;
        d.assert_refused(&page, "sent from another site").await;
    }
    d.oidc.server.stop().await;
}

async fn same_origin_post_with_null_origin_is_accepted(backend: Backend) {
    let d = csrf_desk(backend).await;
    // What Chromium sends for a form post under Referrer-Policy: no-referrer.
    let page =
        d.ui.agent
            .post(
                &d.terminate_path(),
                &[
                    ("reason", "customer asked"),
                    ("csrf_token", &d.ui.csrf),
                    ("return_to", "/sessions"),
                ],
                &[("origin", "null"), ("sec-fetch-site", "same-origin")],
            )
            .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), Some("/sessions?done=terminated"));
    assert!(!d.oidc.is_active(&d.gw, &d.carol_token).await);
    assert_eq!(d.db.count_audit("session.terminate").await, 1);
    d.oidc.server.stop().await;
}

// ---------------------------------------------------------------------
// Forms, checked from outside the UI
// ---------------------------------------------------------------------

async fn lock_and_unlock_a_user(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sam", &["security_admin"]).await;
    oidc.user("carol").await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let gw = gateway(&oidc).await;
    let (_sid, token) = oidc.customer_session(&shop, "carol").await;
    assert!(oidc.is_active(&gw, &token).await);
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sam", &secret).await;

    let page = ui
        .post(
            "/users/carol/lock",
            &[
                ("reason", "account takeover suspected"),
                ("ticket_id", "SEC-7"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), Some("/users/carol?done=locked"));
    assert!(db.locked("carol").await);
    assert!(!oidc.is_active(&gw, &token).await, "locked user's token");
    let sam = db.user_id("sam").await;
    let rows = db.audit("user.lock").await;
    assert_eq!(
        rows,
        vec![(
            sam.clone(),
            Some("user:carol".to_string()),
            Some("account takeover suspected".to_string()),
            Some("SEC-7".to_string()),
        )]
    );
    let shown = ui.get("/users/carol?done=locked").await;
    assert!(shown.body.contains("Account locked"), "{}", shown.body);
    assert!(shown.body.contains("/users/carol/unlock"), "{}", shown.body);

    // A locked account cannot sign in.
    let browser = oidc.browser();
    let form = browser.get(&oidc.url("/login")).await;
    let csrf = form.hidden_inputs()["csrf_token"].clone();
    let refused = browser
        .post_form(
            "/login",
            &[
                ("username", "carol"),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
            ],
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    let page = ui
        .post(
            "/users/carol/unlock",
            &[("reason", "phone recovered"), ("ticket_id", "SEC-7")],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), Some("/users/carol?done=unlocked"));
    assert!(!db.locked("carol").await);
    let rows = db.audit("user.unlock").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, sam);
    assert_eq!(rows[0].2.as_deref(), Some("phone recovered"));
    // And signs in again.
    oidc.login_and_redeem(&shop, "carol", "openid").await;
    oidc.server.stop().await;
}

async fn second_factor_reset_needs_the_confirmation(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sam", &["security_admin"]).await;
    staff_member(&oidc, "dave", &[]).await;
    let db = Db::open(&oidc).await;
    let dave = db.user_id("dave").await;
    let factors = |db: &Db, dave: String| {
        let pool = db.0.clone();
        async move {
            let totp: (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM totp_credentials WHERE user_id = $1")
                    .bind(&dave)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let codes: (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1")
                    .bind(&dave)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (totp.0, codes.0)
        }
    };
    let before = factors(&db, dave.clone()).await;
    assert_eq!(before.0, 1, "dave enrolled an authenticator app");
    assert!(before.1 > 0, "and got recovery codes");
    let ui = sign_in(&oidc, "sam", &secret).await;

    // Without ticking the identity check.
    let page = ui
        .post(
            "/users/dave/mfa/reset",
            &[("reason", "lost phone"), ("ticket_id", "HD-1")],
        )
        .await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("tick the box"), "{}", page.body);
    assert_eq!(factors(&db, dave.clone()).await, before, "factors kept");
    assert_eq!(db.count_audit("user.mfa_reset").await, 0);

    let page = ui
        .post(
            "/users/dave/mfa/reset",
            &[
                ("reason", "lost phone"),
                ("ticket_id", "HD-1"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), Some("/users/dave?done=mfa_reset"));
    assert_eq!(factors(&db, dave.clone()).await, (0, 0), "factors removed");
    let rows = db.audit("user.mfa_reset").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2.as_deref(), Some("lost phone"));
    assert_eq!(rows[0].3.as_deref(), Some("HD-1"));
    let shown = ui.get("/users/dave").await;
    assert!(shown.body.contains("not enrolled"), "{}", shown.body);
    oidc.server.stop().await;
}

/// Status of GET /authorize for `client` with `redirect_uri`.
async fn authorize_status(oidc: &Oidc, client: &Client, redirect_uri: &str) -> u16 {
    let req = AuthRequest::new(client, "openid").set("redirect_uri", redirect_uri);
    oidc.http
        .get(req.url(&oidc.issuer))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn client_update_replaces_redirect_uris(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sam", &["security_admin"]).await;
    let partner = oidc.code_client("partner", "openid", &[]).await;
    let old = partner.redirect_uri.clone();
    let new = "https://partner.example/new-cb";
    assert_eq!(authorize_status(&oidc, &partner, &old).await, 303);
    assert_eq!(authorize_status(&oidc, &partner, new).await, 400);
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sam", &secret).await;

    let page = ui
        .post(
            "/clients/partner",
            &[
                ("redirect_uris", &format!("{new}\r\n")),
                ("scopes", "openid"),
                ("reason", "partner moved their callback"),
                ("ticket_id", "CHG-9"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        Some("/clients/partner?done=client_updated")
    );

    assert_eq!(
        authorize_status(&oidc, &partner, new).await,
        303,
        "new redirect URI accepted"
    );
    assert_eq!(
        authorize_status(&oidc, &partner, &old).await,
        400,
        "old redirect URI refused"
    );
    let rows = db.audit("client.update").await;
    let ours: Vec<_> = rows
        .iter()
        .filter(|r| r.1.as_deref() == Some("client:partner"))
        .collect();
    assert_eq!(ours.len(), 1, "{rows:?}");
    assert_eq!(ours[0].2.as_deref(), Some("partner moved their callback"));
    let shown = ui.get("/clients/partner").await;
    assert!(shown.body.contains(new), "{}", shown.body);
    oidc.server.stop().await;
}

/// POST /token client_credentials as `id` with `secret`.
async fn client_credentials(oidc: &Oidc, id: &str, secret: &str) -> (u16, Value) {
    let resp = oidc
        .http
        .post(oidc.url("/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The text of `<code class="secret-value">…</code>`.
fn shown_secret(body: &str) -> Option<String> {
    let marker = "class=\"secret-value\">";
    let start = body.find(marker)? + marker.len();
    let rest = &body[start..];
    Some(rest[..rest.find('<')?].trim().to_string())
}

async fn rotated_secret_is_shown_once_and_replaces_the_old_one(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sam", &["security_admin"]).await;
    let partner = oidc
        .client(
            "partner",
            &[
                "--redirect-uri",
                "https://partner.example/cb",
                "--grant",
                "authorization_code",
                "--grant",
                "client_credentials",
            ],
        )
        .await;
    let old = partner.secret.clone().unwrap();
    assert_eq!(client_credentials(&oidc, "partner", &old).await.0, 200);
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sam", &secret).await;

    let page = ui
        .post(
            "/clients/partner/secret/rotate",
            &[
                ("reason", "secret pasted in a chat"),
                ("ticket_id", "SEC-11"),
            ],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("shown once"), "{}", page.body);
    let new = shown_secret(&page.body).expect("the new secret is on the page");
    assert!(new.starts_with("pcs_"), "{new}");
    assert_ne!(new, old);

    let (status, body) = client_credentials(&oidc, "partner", &old).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = client_credentials(&oidc, "partner", &new).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());

    // Shown once: reloading the client page does not show it again.
    let again = ui.get("/clients/partner").await;
    assert_eq!(again.status, 200);
    assert!(!again.body.contains(&new), "{}", again.body);
    assert!(shown_secret(&again.body).is_none(), "{}", again.body);
    let rows = db.audit("client.secret_rotated").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2.as_deref(), Some("secret pasted in a chat"));
    oidc.server.stop().await;
}

async fn revoking_every_token_needs_the_exact_client_id(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sam", &["security_admin"]).await;
    let partner = oidc
        .client("partner", &["--grant", "client_credentials"])
        .await;
    let gw = gateway(&oidc).await;
    let (_, tokens) =
        client_credentials(&oidc, "partner", partner.secret.as_deref().unwrap()).await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    assert!(oidc.is_active(&gw, &token).await);
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sam", &secret).await;

    for wrong in ["partne", "PARTNER", "gw"] {
        let page = ui
            .post(
                "/clients/partner/tokens/revoke",
                &[("reason", "leaked"), ("confirm", wrong)],
            )
            .await;
        assert_eq!(page.status, 400, "{wrong}: {}", page.body);
        assert!(page.body.contains("type the client id"), "{}", page.body);
        assert!(
            oidc.is_active(&gw, &token).await,
            "token kept after {wrong:?}"
        );
    }
    let page = ui
        .post("/clients/partner/tokens/revoke", &[("reason", "leaked")])
        .await;
    assert_eq!(page.status, 400, "no confirmation: {}", page.body);
    assert!(oidc.is_active(&gw, &token).await);
    assert_eq!(db.count_audit("client.tokens_revoked").await, 0);

    let page = ui
        .post(
            "/clients/partner/tokens/revoke",
            &[
                ("reason", "leaked"),
                ("ticket_id", "INC-5"),
                ("confirm", "partner"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        Some("/clients/partner?done=tokens_revoked")
    );
    assert!(!oidc.is_active(&gw, &token).await, "revoked");
    assert!(
        oidc.is_active(&gw, &gateway_token(&oidc, &gw).await).await,
        "other clients untouched"
    );
    assert_eq!(db.count_audit("client.tokens_revoked").await, 1);
    oidc.server.stop().await;
}

/// A client_credentials token of the gateway itself.
async fn gateway_token(oidc: &Oidc, gw: &Client) -> String {
    let (status, body) = client_credentials(oidc, &gw.id, gw.secret.as_deref().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn terminating_all_sessions_of_a_user(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    oidc.user("carol").await;
    oidc.user("dora").await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let gw = gateway(&oidc).await;
    let (_, carol1) = oidc.customer_session(&shop, "carol").await;
    let (_, carol2) = oidc.customer_session(&shop, "carol").await;
    let (_, dora) = oidc.customer_session(&shop, "dora").await;
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sue", &secret).await;

    let page = ui
        .post(
            "/users/carol/sessions/terminate",
            &[
                ("reason", "customer reported a stolen laptop"),
                ("ticket_id", "INC-8"),
                ("return_to", "/sessions?user=carol"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        Some("/sessions?user=carol&done=terminated_all")
    );
    assert!(!oidc.is_active(&gw, &carol1).await);
    assert!(!oidc.is_active(&gw, &carol2).await);
    assert!(oidc.is_active(&gw, &dora).await, "another user's session");
    let live: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND ended_at IS NULL")
            .bind(db.user_id("carol").await)
            .fetch_one(&db.0)
            .await
            .unwrap();
    assert_eq!(live.0, 0);
    let rows = db.audit("session.terminate").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r.0, db.user_id("sue").await);
        assert_eq!(r.2.as_deref(), Some("customer reported a stolen laptop"));
        assert_eq!(r.3.as_deref(), Some("INC-8"));
    }
    let shown = ui.get("/sessions?user=carol&done=terminated_all").await;
    assert!(
        shown
            .body
            .contains("Every active session of the user was terminated."),
        "{}",
        shown.body
    );
    oidc.server.stop().await;
}

/// Requests a refund above the default threshold through the UI; its id.
async fn request_refund(ui: &Ui, payment: &str) -> String {
    let key = random_token();
    let page = ui
        .post(
            "/refunds",
            &[
                ("payment_id", payment),
                ("amount_minor", "25000"),
                ("currency", "EUR"),
                ("reason", "duplicate charge"),
                ("ticket_id", "PAY-3"),
                ("idempotency_key", &key),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let location = page.location().unwrap();
    location
        .strip_prefix("/refunds/")
        .and_then(|r| r.strip_suffix("?done=refund_requested"))
        .unwrap_or_else(|| panic!("refund page: {location}"))
        .to_string()
}

async fn requester_cancels_a_refund(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sue", &secret).await;
    let id = request_refund(&ui, "pay_cancel_1").await;
    assert_eq!(db.refund(&id).await.0, "pending_approval");
    let shown = ui.get(&format!("/refunds/{id}")).await;
    assert!(
        shown.body.contains(&format!("/refunds/{id}/cancel")),
        "the requester is offered the cancel form: {}",
        shown.body
    );

    let page = ui
        .post(
            &format!("/refunds/{id}/cancel"),
            &[("reason", "customer withdrew the claim")],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        Some(format!("/refunds/{id}?done=refund_cancelled").as_str())
    );
    let (status, cancelled_by, rejected_by, why) = db.refund(&id).await;
    assert_eq!(status, "cancelled");
    assert_eq!(cancelled_by, Some(db.user_id("sue").await));
    assert_eq!(rejected_by, None);
    assert_eq!(why.as_deref(), Some("customer withdrew the claim"));
    let rows = db.audit("refund.cancel").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, Some(format!("refund:{id}")));
    oidc.server.stop().await;
}

async fn approver_rejects_a_refund(backend: Backend) {
    let oidc = start(backend).await;
    let sue_secret = staff_member(&oidc, "sue", &["support"]).await;
    let ben_secret = staff_member(&oidc, "ben", &["refund_approver"]).await;
    let db = Db::open(&oidc).await;
    let sue = sign_in(&oidc, "sue", &sue_secret).await;
    let id = request_refund(&sue, "pay_reject_1").await;

    // The requester holds no refunds:approve and cannot reject.
    let page = sue
        .post(&format!("/refunds/{id}/reject"), &[("reason", "mine")])
        .await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(db.refund(&id).await.0, "pending_approval");

    let ben = sign_in(&oidc, "ben", &ben_secret).await;
    let shown = ben.get(&format!("/refunds/{id}")).await;
    assert!(
        shown.body.contains(&format!("/refunds/{id}/reject")),
        "{}",
        shown.body
    );
    let page = ben
        .post(
            &format!("/refunds/{id}/reject"),
            &[
                ("reason", "payment was never captured"),
                ("ticket_id", "PAY-4"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        Some(format!("/refunds/{id}?done=refund_rejected").as_str())
    );
    let (status, cancelled_by, rejected_by, why) = db.refund(&id).await;
    assert_eq!(status, "rejected");
    assert_eq!(rejected_by, Some(db.user_id("ben").await));
    assert_eq!(cancelled_by, None);
    assert_eq!(why.as_deref(), Some("payment was never captured"));
    let rows = db.audit("refund.reject").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, db.user_id("ben").await);
    oidc.server.stop().await;
}

async fn missing_reason_is_a_400_page_with_the_sentence(backend: Backend) {
    let d = csrf_desk(backend).await;
    for reason in [None, Some("   ")] {
        let mut form = vec![("return_to", "/sessions")];
        if let Some(r) = reason {
            form.push(("reason", r));
        }
        let page = d.ui.post(&d.terminate_path(), &form).await;
        assert_eq!(page.status, 400, "{}", page.body);
        assert!(
            page.body.contains("a reason is required for this action"),
            "{}",
            page.body
        );
        assert!(
            header(&page.headers, "content-type").starts_with("text/html"),
            "a page"
        );
        assert!(
            d.oidc.is_active(&d.gw, &d.carol_token).await,
            "nothing changed"
        );
    }
    assert_eq!(d.db.count_audit("session.terminate").await, 0);
    d.oidc.server.stop().await;
}

// ---------------------------------------------------------------------
// Permissions, audit
// ---------------------------------------------------------------------

async fn auditor_sees_only_the_audit_log(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "aud", &["auditor"]).await;
    let ui = sign_in(&oidc, "aud", &secret).await;
    let home = ui.get("/").await;
    assert_eq!(
        nav_links(&home.body),
        vec!["/audit".to_string()],
        "{}",
        home.body
    );
    for path in ["/sessions", "/users", "/users/aud", "/clients", "/refunds"] {
        let page = ui.get(path).await;
        assert_eq!(page.status, 403, "{path}: {}", page.body);
        assert!(page.body.contains("Not allowed"), "{path}: {}", page.body);
        assert_eq!(nav_links(&page.body), vec!["/audit".to_string()]);
    }
    let audit = ui.get("/audit").await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    oidc.server.stop().await;
}

async fn auditor_exports_filtered_rows(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "aud", &["auditor"]).await;
    oidc.user("carol").await;
    oidc.env
        .cli(&["role", "grant", "--username", "carol", "--role", "support"])
        .await
        .assert_ok();
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "aud", &secret).await;
    let grants = db.count_audit("role.grant").await;
    assert_eq!(grants, 2);
    assert!(db.count_audit("user.create").await > 0, "other rows exist");

    let jsonl = ui.get("/audit/export?format=jsonl&action=role.grant").await;
    assert_eq!(jsonl.status, 200, "{}", jsonl.body);
    let disposition = header(&jsonl.headers, "content-disposition");
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains(".jsonl"), "{disposition}");
    let rows: Vec<Value> = jsonl
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as i64, grants, "{}", jsonl.body);
    assert!(rows.iter().all(|r| r["action"] == "role.grant"), "{rows:?}");

    let csv = ui.get("/audit/export?format=csv&action=role.grant").await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(header(&csv.headers, "content-type").starts_with("text/csv"));
    let disposition = header(&csv.headers, "content-disposition");
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains(".csv"), "{disposition}");
    let mut lines = csv.body.lines();
    let head = lines.next().unwrap();
    assert!(head.starts_with("seq,"), "{head}");
    let data: Vec<&str> = lines.collect();
    assert_eq!(data.len() as i64, grants, "{}", csv.body);
    assert!(
        data.iter().all(|l| l.contains(",role.grant,")),
        "{}",
        csv.body
    );
    assert!(!csv.body.contains("user.create"), "{}", csv.body);

    // Both exports were audited.
    assert_eq!(db.count_audit("audit.export").await, 2);
    oidc.server.stop().await;
}

/// Disables the append-only guard, as an attacker with database access
/// could (see foundation/audit.rs).
async fn drop_audit_guard(oidc: &Oidc) {
    if oidc.env.backend.is_postgres() {
        oidc.env
            .raw_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
            .await
            .unwrap();
    } else {
        oidc.env
            .raw_sql("DROP TRIGGER audit_log_no_update")
            .await
            .unwrap();
        oidc.env
            .raw_sql("DROP TRIGGER audit_log_no_delete")
            .await
            .unwrap();
    }
}

async fn audit_page_verifies_the_chain_and_detects_tampering(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "aud", &["auditor"]).await;
    let ui = sign_in(&oidc, "aud", &secret).await;
    let page = ui.get("/audit?verify=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Hash chain verified"), "{}", page.body);
    assert!(!page.body.contains("BROKEN"), "{}", page.body);

    drop_audit_guard(&oidc).await;
    let n = oidc
        .env
        .raw_sql("UPDATE audit_log SET reason = 'routine' WHERE seq = 2")
        .await
        .unwrap();
    assert_eq!(n, 1);
    let page = ui.get("/audit?verify=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Hash chain BROKEN at row #2"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("Hash chain verified"), "{}", page.body);
    oidc.server.stop().await;
}

// ---------------------------------------------------------------------
// Sign-out
// ---------------------------------------------------------------------

async fn sign_out_ends_the_ui_and_the_sign_in_session(backend: Backend) {
    let oidc = start(backend).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    let console = oidc
        .code_client("console", "openid", &["--first-party"])
        .await;
    let gw = gateway(&oidc).await;
    let db = Db::open(&oidc).await;
    let ui = sign_in(&oidc, "sue", &secret).await;
    let cookie = ui.cookie();

    // A token issued through the same sign-in session (no new login).
    let req = AuthRequest::new(&console, "openid").set("acr_values", ACR_MFA);
    let done = ui.agent.browser.authorize(&req, None).await;
    let sso_token = oidc
        .exchange_code(&console, &done.code(), &req.pkce.verifier)
        .await
        .str("access_token");
    assert!(oidc.is_active(&gw, &sso_token).await);
    // The UI's own access token, known to the test only by its hash.
    let (ui_token_hash,): (String,) =
        sqlx::query_as("SELECT access_token_hash FROM admin_ui_sessions WHERE id_hash = $1")
            .bind(portcullis::crypto::sha256_hex(&cookie))
            .fetch_one(&db.0)
            .await
            .unwrap();
    let revoked = |hash: String| {
        let pool = db.0.clone();
        async move {
            let (at,): (Option<i64>,) =
                sqlx::query_as("SELECT revoked_at FROM access_tokens WHERE token_hash = $1")
                    .bind(hash)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            at.is_some()
        }
    };
    assert!(!revoked(ui_token_hash.clone()).await);

    let page = ui.post("/auth/logout", &[]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("You have signed out"), "{}", page.body);
    let cleared = set_cookie(&page, "pc_admin").expect("cookie cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // The old cookie, replayed by anyone, leads to sign-in.
    let replay = Agent::new(&oidc);
    let old = replay
        .send(
            replay.url("/sessions"),
            replay
                .http
                .get(replay.url("/sessions"))
                .header("cookie", format!("pc_admin={cookie}")),
        )
        .await;
    assert_eq!(old.status, 303, "{}", old.body);
    assert!(
        old.location().unwrap_or("").starts_with("/auth/login"),
        "{:?}",
        old.location()
    );
    let post = replay
        .send(
            replay.url("/auth/logout"),
            replay
                .http
                .post(replay.url("/auth/logout"))
                .header("cookie", format!("pc_admin={cookie}"))
                .form(&[("csrf_token", ui.csrf.as_str())]),
        )
        .await;
    assert_eq!(post.status, 401, "{}", post.body);
    assert_eq!(ui.get("/").await.status, 303, "the browser is signed out");
    assert_eq!(db.admin_sessions().await, 0);

    // The sign-in server's session ended: its tokens are inactive, the
    // UI's own included.
    assert!(
        !oidc.is_active(&gw, &sso_token).await,
        "token of the sign-in session"
    );
    assert!(revoked(ui_token_hash).await, "the admin UI's access token");
    assert_eq!(db.count_audit("session.logout").await, 1);
    // And signing in again at the issuer needs the password again.
    let again = ui.agent.begin("").await;
    let first = ui.agent.browser.get(&again).await;
    assert_eq!(first.status, 303);
    assert!(
        first.location().unwrap_or("").starts_with("/login"),
        "{:?}",
        first.location()
    );
    oidc.server.stop().await;
}

/// With a second factor older than `mfa.step_up_max_age`, terminating a
/// session is refused with a 401 page whose step-up link comes back to the
/// sessions page; nothing ends.
async fn stale_second_factor_gets_a_step_up_prompt_back_to_the_section(backend: Backend) {
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "1s")]).await;
    let secret = staff_member(&oidc, "sue", &["support"]).await;
    oidc.user("carol").await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let gw = gateway(&oidc).await;
    let (sid, token) = oidc.customer_session(&shop, "carol").await;
    let ui = sign_in(&oidc, "sue", &secret).await;
    // Let the sign-in's second factor age past the one-second window.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let page = ui
        .post(
            &format!("/sessions/{sid}/terminate"),
            &[("reason", "stolen phone"), ("return_to", "/sessions")],
        )
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("Confirm it is you"), "{}", page.body);
    assert!(
        page.body
            .contains("/auth/login?step_up=1&amp;return_to=%2Fsessions"),
        "{}",
        page.body
    );
    assert!(oidc.is_active(&gw, &token).await, "nothing ended");
}
