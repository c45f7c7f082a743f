//! A small OAuth 2.0 / OIDC test client for black-box tests against the
//! real binary: server start-up with `issuer` = public URL, client and user
//! registration through the CLI, PKCE, a cookie-keeping "browser" that walks
//! `/authorize` → `/login` → `/authorize/resume` → `/consent` until the
//! redirect to the client, and token-endpoint / userinfo calls.
//!
//! Nothing here asserts protocol behaviour beyond what is needed to drive
//! the flow; tests make their own assertions on what these helpers return.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use reqwest::header::{HeaderMap, LOCATION};
use sha2::{Digest, Sha256};

use crate::support::{Backend, Server, TestEnv};

/// Password used by [`Oidc::user`].
pub const PASSWORD: &str = "correct horse battery staple";

/// A running server whose issuer is its public URL, with its environment.
pub struct Oidc {
    // Declared before `env`: the server stops before the scratch dir and
    // database go away.
    pub server: Server,
    pub env: TestEnv,
    /// `http://127.0.0.1:<port>`, equal to the public URL.
    pub issuer: String,
    /// No redirects, no cookies: the back channel (token, userinfo).
    pub http: reqwest::Client,
}

/// A client registered through the CLI.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    /// `None` for public clients.
    pub secret: Option<String>,
    /// The first `--redirect-uri` given at registration, if any.
    pub redirect_uri: String,
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_secret_basic`.
    Basic(String, String),
    /// `client_secret_post`.
    Post(String, String),
    /// Public client: `client_id` in the body only.
    None(String),
}

impl Client {
    /// Basic auth for confidential clients, `none` for public ones.
    pub fn auth(&self) -> ClientAuth {
        match &self.secret {
            Some(s) => ClientAuth::Basic(self.id.clone(), s.clone()),
            None => ClientAuth::None(self.id.clone()),
        }
    }
}

/// A response of the token endpoint (or any JSON endpoint).
#[derive(Debug)]
pub struct JsonResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// `Value::Null` when the body is not JSON; see `text`.
    pub json: serde_json::Value,
    pub text: String,
}

impl JsonResponse {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `self.json[key]` as a string (panics with the body otherwise).
    #[track_caller]
    pub fn str(&self, key: &str) -> String {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key:?} in {} {}", self.status, self.text))
            .to_string()
    }

    /// Asserts an OAuth error response: status, `error` and `no-store`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.json["error"].as_str()),
            (status, Some(error)),
            "expected {status} {error}, got: {} {}",
            self.status,
            self.text
        );
        assert!(
            self.header("cache-control").contains("no-store"),
            "error responses carry Cache-Control: no-store: {:?}",
            self.headers
        );
    }

    /// Asserts 200 and returns the body.
    #[track_caller]
    pub fn ok(&self) -> &serde_json::Value {
        assert_eq!(self.status, 200, "expected 200, got: {}", self.text);
        &self.json
    }
}

/// A PKCE pair (RFC 7636), method S256.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let verifier = random_token();
        let challenge = s256(&verifier);
        Pkce {
            verifier,
            challenge,
        }
    }
}

/// 256 random bits, base64url (43 characters: a valid PKCE verifier).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `BASE64URL(SHA256(verifier))`.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An authorization request: `response_type=code`, fresh `state`, `nonce`
/// and PKCE S256; change or drop any parameter with `set` / `remove`.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub params: Vec<(String, String)>,
    pub pkce: Pkce,
}

impl AuthRequest {
    pub fn new(client: &Client, scope: &str) -> AuthRequest {
        let pkce = Pkce::new();
        let params = [
            ("response_type", "code"),
            ("client_id", client.id.as_str()),
            ("redirect_uri", client.redirect_uri.as_str()),
            ("scope", scope),
            ("state", &random_token()),
            ("nonce", &random_token()),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        AuthRequest { params, pkce }
    }

    /// Replaces (or adds) a parameter.
    pub fn set(mut self, key: &str, value: &str) -> AuthRequest {
        self.params.retain(|(k, _)| k != key);
        self.params.push((key.to_string(), value.to_string()));
        self
    }

    pub fn remove(mut self, key: &str) -> AuthRequest {
        self.params.retain(|(k, _)| k != key);
        self
    }

    pub fn get(&self, key: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub fn state(&self) -> &str {
        self.get("state")
    }

    /// `<issuer>/authorize?…`
    pub fn url(&self, issuer: &str) -> String {
        let mut url = url::Url::parse(&format!("{issuer}/authorize")).unwrap();
        url.query_pairs_mut().extend_pairs(&self.params);
        url.to_string()
    }
}

/// Where a browser walk ended: the redirect to the client.
#[derive(Debug)]
pub struct Redirected {
    /// The full `Location` (redirect_uri + query).
    pub location: String,
    /// Its query: `code`, `state`, `iss`, or `error`, `error_description`.
    pub params: HashMap<String, String>,
    /// Server paths shown as pages on the way (`/login`, `/consent`).
    pub pages: Vec<String>,
}

impl Redirected {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    #[track_caller]
    pub fn code(&self) -> String {
        self.param("code")
            .unwrap_or_else(|| panic!("no code in redirect {}", self.location))
            .to_string()
    }
}

/// A raw HTTP response with its body read.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// The URL requested.
    pub url: String,
}

impl Page {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    /// The `Set-Cookie` headers, joined.
    pub fn set_cookies(&self) -> String {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The hidden inputs of the page's forms, by name.
    pub fn hidden_inputs(&self) -> HashMap<String, String> {
        hidden_inputs(&self.body)
    }
}

/// A user agent with a cookie jar that never follows redirects by itself.
pub struct Browser {
    pub http: reqwest::Client,
    pub issuer: String,
    /// Code to enter when `/login/mfa` comes up (used once).
    pub mfa_code: std::sync::Mutex<Option<String>>,
}

impl Browser {
    pub fn new(issuer: &str) -> Browser {
        Browser::with_client(
            issuer,
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .cookie_store(true)
                .build()
                .unwrap(),
        )
    }

    /// A browser around a client of the caller's making (its own cookie
    /// jar, User-Agent, …); it must not follow redirects.
    pub fn with_client(issuer: &str, http: reqwest::Client) -> Browser {
        Browser {
            http,
            issuer: issuer.to_string(),
            mfa_code: std::sync::Mutex::new(None),
        }
    }

    /// Sets the second-factor code for the next `/login/mfa` page.
    pub fn set_mfa_code(&self, code: &str) {
        *self.mfa_code.lock().unwrap() = Some(code.to_string());
    }

    pub async fn get(&self, url: &str) -> Page {
        read(url, self.http.get(url).send().await.unwrap()).await
    }

    /// POSTs a form to `<issuer><path>`.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let url = format!("{}{path}", self.issuer);
        read(&url, self.http.post(&url).form(form).send().await.unwrap()).await
    }

    /// Walks the authorization request to the redirect to the client,
    /// logging in with `login` if a login page comes up and allowing consent.
    pub async fn authorize(&self, req: &AuthRequest, login: Option<(&str, &str)>) -> Redirected {
        self.follow(&req.url(&self.issuer), login, "allow").await
    }

    /// Follows redirects from `url` on the issuer, submitting the login form
    /// (with `login`) and the consent form (with `decision`) when they come
    /// up, until a redirect leaves the issuer. Panics on anything else.
    pub async fn follow(
        &self,
        url: &str,
        login: Option<(&str, &str)>,
        decision: &str,
    ) -> Redirected {
        let issuer = url::Url::parse(&self.issuer).unwrap();
        let mut url = url::Url::parse(url).unwrap();
        let mut pages = Vec::new();
        for _ in 0..10 {
            let mut page = self.get(url.as_str()).await;
            if page.status == 200 && url.path() == "/login/mfa" {
                pages.push(url.path().to_string());
                let csrf = page
                    .hidden_inputs()
                    .get("csrf_token")
                    .cloned()
                    .unwrap_or_default();
                let code = self
                    .mfa_code
                    .lock()
                    .unwrap()
                    .take()
                    .unwrap_or_else(|| panic!("second factor asked but no code set: {url}"));
                page = self
                    .post_form("/login/mfa", &[("code", &code), ("csrf_token", &csrf)])
                    .await;
            } else if page.status == 200 && matches!(url.path(), "/login" | "/consent") {
                pages.push(url.path().to_string());
                let hidden = page.hidden_inputs();
                let csrf = hidden.get("csrf_token").cloned().unwrap_or_default();
                let request = hidden.get("request").cloned().unwrap_or_default();
                page = if url.path() == "/login" {
                    let (user, pass) = login.unwrap_or_else(|| {
                        panic!("login page shown but no credentials given: {url}")
                    });
                    self.post_form(
                        "/login",
                        &[
                            ("username", user),
                            ("password", pass),
                            ("csrf_token", &csrf),
                            ("request", &request),
                        ],
                    )
                    .await
                } else {
                    self.post_form(
                        "/consent",
                        &[
                            ("decision", decision),
                            ("csrf_token", &csrf),
                            ("request", &request),
                        ],
                    )
                    .await
                };
            }
            let Some(location) = page.location().filter(|_| is_redirect(page.status)) else {
                panic!(
                    "authorization stopped at {} with {} (no redirect):\n{}",
                    page.url, page.status, page.body
                );
            };
            let next = url.join(location).unwrap();
            if next.origin() != issuer.origin() {
                return Redirected {
                    location: next.to_string(),
                    params: query(&next),
                    pages,
                };
            }
            url = next;
        }
        panic!("too many redirects");
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

async fn read(url: &str, resp: reqwest::Response) -> Page {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Page {
        status,
        headers,
        body,
        url: url.to_string(),
    }
}

/// The query of a URL as a map (last value wins).
pub fn query(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `name` → `value` of every `<input type="hidden">` in `html`. A minimal
/// attribute scanner, enough for the server's own pages.
pub fn hidden_inputs(html: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = html;
    while let Some(start) = rest.find("<input") {
        rest = &rest[start + 6..];
        let end = rest.find('>').unwrap_or(rest.len());
        let attrs = attributes(&rest[..end]);
        if attrs
            .get("type")
            .is_some_and(|t| t.eq_ignore_ascii_case("hidden"))
            && let Some(name) = attrs.get("name")
        {
            out.insert(
                name.clone(),
                attrs.get("value").cloned().unwrap_or_default(),
            );
        }
        rest = &rest[end..];
    }
    out
}

fn attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut s = tag.trim_start();
    while !s.is_empty() {
        let name_end = s
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
            .unwrap_or(s.len());
        let name = s[..name_end].to_ascii_lowercase();
        s = s[name_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = s.strip_prefix('=') {
            let after = after.trim_start();
            let (v, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let inner = &after[1..];
                    let close = inner.find(q).unwrap_or(inner.len());
                    (&inner[..close], inner.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            value = unescape(v);
            s = tail;
        } else if name.is_empty() {
            // A stray '/' or similar: skip one character.
            s = s.get(1..).unwrap_or("");
        }
        if !name.is_empty() {
            out.insert(name, value);
        }
        s = s.trim_start();
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
/// One unlabelled value from the `/metrics` page at `metrics_url` (any
/// server, a replica too), if it exports it.
pub async fn metric_at(metrics_url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Oidc {
    /// A fresh environment and a server whose issuer is its public URL.
    pub async fn start(backend: Backend) -> Oidc {
        Oidc::start_with(backend, &[]).await
    }

    /// Same, with extra environment for `serve`.
    pub async fn start_with(backend: Backend, extra_env: &[(&str, &str)]) -> Oidc {
        let env = TestEnv::new(backend).await;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let issuer = format!("http://{addr}");
        let mut vars = vec![
            ("PORTCULLIS_HTTP_PUBLIC_ADDR", addr.as_str()),
            ("PORTCULLIS_ISSUER", issuer.as_str()),
        ];
        vars.extend_from_slice(extra_env);
        let server = env.serve_with(&vars).await;
        assert_eq!(
            server.public, issuer,
            "server listens where the issuer says"
        );
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

    /// A second server process on the same database and keys, with the
    /// same issuer, on a port of its own (`extra_env` on top).
    pub async fn replica(&self, extra_env: &[(&str, &str)]) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut vars = vec![
            ("PORTCULLIS_HTTP_PUBLIC_ADDR", addr.as_str()),
            ("PORTCULLIS_ISSUER", self.issuer.as_str()),
        ];
        vars.extend_from_slice(extra_env);
        self.env.serve_with(&vars).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// One unlabelled value from `/metrics`, if the server exports it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_at(&self.url("/metrics"), name).await
    }

    /// `active` at `/introspect`, asked by the gateway client `gw`.
    pub async fn is_active(&self, gw: &Client, token: &str) -> bool {
        let v: serde_json::Value = self
            .http
            .post(self.url("/introspect"))
            .basic_auth(&gw.id, gw.secret.as_deref())
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["active"] == true
    }

    /// `username` signs in at `client` (password only, no second factor)
    /// in a fresh browser; the session id and the access token.
    pub async fn customer_session(&self, client: &Client, username: &str) -> (String, String) {
        let browser = self.browser();
        let req = AuthRequest::new(client, "openid");
        let done = browser.authorize(&req, Some((username, PASSWORD))).await;
        let tokens = self
            .exchange_code(client, &done.code(), &req.pkce.verifier)
            .await;
        let sessions: serde_json::Value = browser
            .http
            .get(self.url("/account/sessions"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sid = sessions["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == true)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        (sid, tokens.str("access_token"))
    }

    /// A fresh browser (empty cookie jar).
    pub fn browser(&self) -> Browser {
        Browser::new(&self.issuer)
    }

    /// Creates a user with [`PASSWORD`].
    pub async fn user(&self, username: &str) {
        self.env.create_user(username, PASSWORD).await;
    }

    /// `portcullis client create --name <id> --id <id> <args…> --json`.
    pub async fn client(&self, id: &str, args: &[&str]) -> Client {
        let mut argv = vec!["client", "create", "--name", id, "--id", id];
        argv.extend_from_slice(args);
        argv.push("--json");
        let out = self.env.cli(&argv).await;
        out.assert_ok();
        let json = out.json();
        let redirect_uri = args
            .iter()
            .position(|a| *a == "--redirect-uri")
            .map(|i| args[i + 1].to_string())
            .unwrap_or_default();
        Client {
            id: json["client_id"].as_str().unwrap().to_string(),
            secret: json["client_secret"].as_str().map(str::to_string),
            redirect_uri,
        }
    }

    /// A confidential code-flow client (`authorization_code refresh_token`)
    /// redirecting to `https://<id>.example/cb`, with `scope`; `extra` flags
    /// such as `--first-party` or `--public` are appended.
    pub async fn code_client(&self, id: &str, scope: &str, extra: &[&str]) -> Client {
        let redirect = format!("https://{id}.example/cb");
        let mut args = vec![
            "--redirect-uri",
            redirect.as_str(),
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--scope",
            scope,
        ];
        args.extend_from_slice(extra);
        self.client(id, &args).await
    }

    /// POST /token with `auth` and `form`.
    pub async fn token(&self, auth: &ClientAuth, form: &[(&str, &str)]) -> JsonResponse {
        let mut body: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(self.url("/token"));
        match auth {
            ClientAuth::Basic(id, secret) => {
                // RFC 6749 §2.3.1: form-urlencode, then Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(id), Some(enc(secret)));
            }
            ClientAuth::Post(id, secret) => {
                body.push(("client_id", id));
                body.push(("client_secret", secret));
            }
            ClientAuth::None(id) => body.push(("client_id", id)),
        }
        json_response(req.form(&body).send().await.unwrap()).await
    }

    /// `grant_type=authorization_code`.
    pub async fn exchange_code(&self, client: &Client, code: &str, verifier: &str) -> JsonResponse {
        self.token(
            &client.auth(),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &client.redirect_uri),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// `grant_type=refresh_token`.
    pub async fn refresh(&self, client: &Client, refresh_token: &str) -> JsonResponse {
        self.token(
            &client.auth(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// `grant_type=client_credentials`, with `scope` if given.
    pub async fn client_credentials(&self, client: &Client, scope: Option<&str>) -> JsonResponse {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.token(&client.auth(), &form).await
    }

    /// GET /userinfo with a bearer token.
    pub async fn userinfo(&self, access_token: &str) -> JsonResponse {
        let resp = self
            .http
            .get(self.url("/userinfo"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        json_response(resp).await
    }

    /// Logs `username` in with a fresh browser, authorizes `client` for
    /// `scope` (consenting if asked) and redeems the code. Asserts 200.
    pub async fn login_and_redeem(
        &self,
        client: &Client,
        username: &str,
        scope: &str,
    ) -> serde_json::Value {
        let req = AuthRequest::new(client, scope);
        let done = self
            .browser()
            .authorize(&req, Some((username, PASSWORD)))
            .await;
        let tokens = self
            .exchange_code(client, &done.code(), &req.pkce.verifier)
            .await;
        tokens.ok().clone()
    }

    /// Verifies `jwt` against the server's `/jwks.json` (by header `kid`)
    /// and returns (header, claims).
    pub async fn verify_jwt(&self, jwt: &str) -> (serde_json::Value, serde_json::Value) {
        let (status, jwks) = self.server.get_json(&self.url("/jwks.json")).await;
        assert_eq!(status, 200);
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        let kid = header["kid"].as_str().expect("JWT header has a kid");
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("kid {kid} not in JWKS {jwks}"));
        let jwk = josekit::jwk::Jwk::from_bytes(jwk.to_string()).unwrap();
        let verifier: Box<dyn josekit::jws::JwsVerifier> = match header["alg"].as_str() {
            Some("RS256") => Box::new(josekit::jws::RS256.verifier_from_jwk(&jwk).unwrap()),
            Some("ES256") => Box::new(josekit::jws::ES256.verifier_from_jwk(&jwk).unwrap()),
            other => panic!("unexpected alg {other:?}"),
        };
        let (payload, _) = josekit::jwt::decode_with_verifier(jwt, verifier.as_ref())
            .unwrap_or_else(|e| panic!("JWT does not verify: {e}"));
        (
            header,
            serde_json::Value::Object(payload.claims_set().clone()),
        )
    }
}

async fn json_response(resp: reqwest::Response) -> JsonResponse {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    JsonResponse {
        status,
        headers,
        json,
        text,
    }
}
