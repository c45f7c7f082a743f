//! Issue 9, part 3: response and request hardening, RFC 8725 JWT handling,
//! database outages.
//!
//! Black-box against the real binary: security headers on every listener
//! (and on refusals), HSTS only behind an https URL, 413/431/400 for
//! oversized and malformed requests (raw sockets where the HTTP client
//! would not send it), slow clients cut off, 503 `temporarily_unavailable`
//! while the database cannot serve, and forged JWTs (alg `none`, RS256 →
//! HS256 with our public key as the secret, unknown `kid`, injected `jku` /
//! `x5u` / `jwk`, one kind of our own tokens passed off as another) at every
//! place that accepts a JWT: `id_token_hint` at `/logout` and approval
//! tokens at `/admin/api/refunds/{id}/executed`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::Jwk;
use josekit::jws::{ES256, HS256, JwsHeader, RS256};
use josekit::jwt::{self, JwtPayload};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::oauth::flow::{AuthRequest, Client, Oidc};
use crate::support::{Backend, TestEnv, eventually};

backend_tests!(
    security_headers_on_every_listener,
    hsts_only_behind_https,
    oversized_and_malformed_requests_are_refused,
    slow_clients_are_disconnected,
    database_down_answers_503_temporarily_unavailable,
    forged_jwts_are_refused_everywhere_a_jwt_is_accepted,
);

const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Limits the tests below rely on, set explicitly (these are the defaults).
const LIMITS: [(&str, &str); 4] = [
    ("PORTCULLIS_LIMITS_MAX_BODY_BYTES", "65536"),
    ("PORTCULLIS_LIMITS_MAX_HEADER_BYTES", "16384"),
    ("PORTCULLIS_LIMITS_MAX_HEADERS", "64"),
    ("PORTCULLIS_LIMITS_MAX_FIELD_BYTES", "8192"),
];

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// CSP without inline script or style and without framing, no MIME
/// sniffing, no referrer.
#[track_caller]
fn assert_hardened(headers: &HeaderMap, what: &str) {
    let csp = header(headers, "content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: CSP {csp:?}"
    );
    assert_eq!(
        header(headers, "x-content-type-options"),
        "nosniff",
        "{what}"
    );
    assert_eq!(header(headers, "referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header(headers, "x-frame-options"), "DENY", "{what}");
}

/// A response read off a raw socket.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: String,
}

fn parse_raw(bytes: &[u8]) -> Raw {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    Raw {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Sends `request` as is and reads until the server closes.
async fn raw(base: &str, request: &[u8]) -> Raw {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    // A reset after the answer still leaves the answer in `out`.
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    parse_raw(&out)
}

fn basic(client: &Client) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            client.id,
            client.secret.as_deref().unwrap()
        ))
    )
}

/// POST a raw form body to the public listener with the client's Basic auth.
async fn post_raw(
    oidc: &Oidc,
    path: &str,
    client: &Client,
    body: Vec<u8>,
) -> (u16, HeaderMap, Value) {
    let resp = oidc
        .http
        .post(oidc.url(path))
        .header("authorization", basic(client))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn service(oidc: &Oidc) -> Client {
    oidc.client("svc", &["--grant", "client_credentials", "--scope", "api"])
        .await
}

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

// ---------------------------------------------------------------------------
// Response headers

async fn security_headers_on_every_listener(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let svc = service(&oidc).await;
    let rp = oidc.code_client("rp", "openid", &["--first-party"]).await;
    let browser = oidc.browser();

    // Public listener: pages, protocol endpoints, static files, errors.
    let authorize = AuthRequest::new(&rp, "openid").url(&oidc.issuer);
    for url in [
        oidc.url("/login"),
        authorize.clone(),
        oidc.url("/authorize?client_id=nobody&redirect_uri=https://x.example/cb"),
        oidc.url("/.well-known/openid-configuration"),
        oidc.url("/jwks.json"),
        oidc.url("/static/portcullis.css"),
        oidc.url("/healthz"),
        oidc.url("/userinfo"),
        oidc.url("/no-such-page"),
    ] {
        let page = browser.get(&url).await;
        assert_hardened(&page.headers, &url);
        assert!(
            page.headers.get("strict-transport-security").is_none(),
            "{url}: no HSTS on plain http"
        );
    }
    // The authorization endpoint answered a redirect to the login page.
    assert_eq!(browser.get(&authorize).await.status, 303);

    // Token responses: no-store, success and error alike.
    let ok = oidc.client_credentials(&svc, Some("api")).await;
    ok.ok();
    assert_hardened(&ok.headers, "token 200");
    assert!(
        ok.header("cache-control").contains("no-store"),
        "{:?}",
        ok.headers
    );
    let err = oidc.token(&svc.auth(), &[("grant_type", "password")]).await;
    err.assert_error(400, "unsupported_grant_type");
    assert_hardened(&err.headers, "token 400");

    // Admin listener: the UI's `/` (a redirect into sign-in), the API, probes.
    for path in [
        "/",
        "/admin/api/me",
        "/admin/api/refunds",
        "/healthz",
        "/nope",
    ] {
        let url = oidc.server.admin_url(path);
        let page = browser.get(&url).await;
        assert_hardened(&page.headers, &url);
        if path == "/" {
            assert!(
                (300..400).contains(&page.status),
                "the admin UI's / redirects to sign-in: {}",
                page.status
            );
        }
        if path.starts_with("/admin/api/") {
            assert_eq!(page.status, 401, "{url}");
            assert!(page.headers.get("strict-transport-security").is_none());
        }
    }
}

async fn hsts_only_behind_https(backend: Backend) {
    // An https issuer: the public listener sends HSTS; the admin listener,
    // reached over plain http, does not.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let env = TestEnv::new(backend.clone()).await;
    let server = env
        .serve_with(&[("PORTCULLIS_ISSUER", "https://auth.portcullis.test")])
        .await;
    for path in ["/login", "/.well-known/openid-configuration", "/nope"] {
        let resp = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(
            header(resp.headers(), "strict-transport-security"),
            HSTS,
            "{path}"
        );
        assert_hardened(resp.headers(), path);
    }
    // Refusals carry it too.
    let resp = http
        .get(server.url("/authorize?state=%00"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(resp.headers(), "strict-transport-security"), HSTS);
    for path in ["/", "/healthz", "/admin/api/me"] {
        let resp = http.get(server.admin_url(path)).send().await.unwrap();
        assert!(
            resp.headers().get("strict-transport-security").is_none(),
            "admin {path} is not https"
        );
    }
    server.stop().await;
    drop(env);

    // An https admin URL: the admin listener sends it, the http issuer's
    // listener does not.
    let env = TestEnv::new(backend).await;
    let server = env
        .serve_with(&[("PORTCULLIS_HTTP_ADMIN_URL", "https://admin.portcullis.test")])
        .await;
    for path in ["/", "/healthz", "/admin/api/me"] {
        let resp = http.get(server.admin_url(path)).send().await.unwrap();
        assert_eq!(
            header(resp.headers(), "strict-transport-security"),
            HSTS,
            "admin {path}"
        );
        assert_hardened(resp.headers(), path);
    }
    let resp = http.get(server.url("/login")).send().await.unwrap();
    assert!(resp.headers().get("strict-transport-security").is_none());
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Request limits

async fn oversized_and_malformed_requests_are_refused(backend: Backend) {
    let oidc = Oidc::start_with(backend, &LIMITS).await;
    let svc = service(&oidc).await;
    let rp = oidc.code_client("rp", "openid", &[]).await;
    let public = oidc.server.public.clone();
    let admin = oidc.server.admin.clone();

    // 413: a body over the limit is refused from its Content-Length, before
    // it is read.
    let r = raw(
        &public,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 1000000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(header(&r.headers, "cache-control").contains("no-store"));
    assert_hardened(&r.headers, "413 /token");
    let r = raw(
        &admin,
        b"POST /admin/api/refunds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Authorization: Bearer pct_at_x\r\nContent-Length: 65537\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "payload_too_large", "{body}");
    assert_hardened(&r.headers, "413 admin API");
    // At the limit, the same endpoint reads the body (and answers 401 for
    // the bad token).
    let resp = oidc
        .http
        .post(oidc.server.admin_url("/admin/api/refunds"))
        .bearer_auth("pct_at_x")
        .header("content-type", "application/json")
        .body(vec![b' '; 65536])
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 413, "a body at the limit is read");
    // A NUL inside a JSON body (escaped or raw) is refused before any
    // handler or database sees it.
    for body in [
        &br#"{"reason": "a\u0000b"}"#[..],
        &b"{\"reason\": \"a\x00b\"}"[..],
    ] {
        let resp = oidc
            .http
            .post(oidc.server.admin_url("/admin/api/users/x/lock"))
            .bearer_auth("pct_at_x")
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "NUL in JSON");
    }

    // 431: a request head over limits.max_header_bytes (sent without its
    // end, so the server reads all of it before answering) ...
    for base in [&public, &admin] {
        let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fill: ".to_vec();
        head.resize(16384, b'a');
        let r = raw(base, &head).await;
        assert_eq!(r.status, 431, "{base}: {}", r.body);
    }
    // ... or with more than limits.max_headers fields.
    let mut many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..80 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"Connection: close\r\n\r\n");
    for base in [&public, &admin] {
        assert_eq!(raw(base, &many).await.status, 431, "{base}");
    }
    // A normal head on the same listeners is fine.
    for base in [&public, &admin] {
        let r = raw(
            base,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "{base}");
    }

    // 400 on /token: an overlong field, NUL, CR/LF, invalid UTF-8 (percent-
    // encoded or raw). The well-formed request passes.
    let (status, _, body) = post_raw(
        &oidc,
        "/token",
        &svc,
        b"grant_type=client_credentials&scope=api".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let long = format!("grant_type=client_credentials&scope={}", "a".repeat(8193));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("overlong field", long.into_bytes()),
        (
            "NUL",
            b"grant_type=client_credentials%00&scope=api".to_vec(),
        ),
        (
            "CR/LF",
            b"grant_type=client_credentials&scope=api%0D%0AX-Evil:%201".to_vec(),
        ),
        (
            "LF in a name",
            b"grant_type=client_credentials&sc%0Aope=api".to_vec(),
        ),
        (
            "invalid UTF-8",
            b"grant_type=client_credentials&scope=%FF".to_vec(),
        ),
        (
            "invalid UTF-8 next to a literal U+FFFD",
            b"grant_type=client_credentials&scope=%EF%BF%BD&x=%C3".to_vec(),
        ),
        (
            "raw invalid UTF-8",
            b"grant_type=client_credentials&scope=\xff".to_vec(),
        ),
    ];
    for (what, body) in &cases {
        let (status, headers, json) = post_raw(&oidc, "/token", &svc, body.clone()).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("invalid_request")),
            "/token {what}: {json}"
        );
        assert!(
            header(&headers, "cache-control").contains("no-store"),
            "{what}"
        );
        assert_hardened(&headers, what);
    }
    // /introspect and /revoke answer the same way.
    for path in ["/introspect", "/revoke"] {
        let (status, _, json) = post_raw(&oidc, path, &svc, b"token=%FF".to_vec()).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}"
        );
    }

    // /authorize: shown as a page, never redirected, even with a valid
    // client and redirect URI.
    let good = AuthRequest::new(&rp, "openid");
    let page = oidc.browser().get(&good.url(&oidc.issuer)).await;
    assert_eq!(
        page.status, 303,
        "the well-formed request proceeds: {}",
        page.body
    );
    let base = good.url(&oidc.issuer);
    for (what, extra) in [
        ("NUL", "&login_hint=abc%00"),
        (
            "CR/LF",
            "&login_hint=abc%0D%0ALocation:%20https://evil.example",
        ),
        ("invalid UTF-8", "&login_hint=%FF"),
        (
            "overlong field",
            &format!("&login_hint={}", "n".repeat(8193)),
        ),
    ] {
        let url = format!("{base}{extra}");
        let page = oidc.browser().get(&url).await;
        assert_eq!(page.status, 400, "/authorize {what}: {}", page.body);
        assert!(
            page.location().is_none(),
            "/authorize {what}: never redirected"
        );
        assert!(
            header(&page.headers, "content-type").starts_with("text/html"),
            "{what}"
        );
        assert!(!page.body.contains("evil.example"), "{what}");
        assert_hardened(&page.headers, what);
    }
    let resp = oidc
        .http
        .post(oidc.url("/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "{}&login_hint=%FF",
            base.split_once('?').unwrap().1
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("location").is_none());

    // Admin listener: a JSON error before authentication is looked at.
    let resp = oidc
        .http
        .get(oidc.server.admin_url("/admin/api/refunds?status=%00"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
}

/// Multi-line text areas of the admin UI post CR/LF; the public listener
/// refuses it; both refuse NUL and invalid UTF-8 (the pure check both use).
#[test]
fn parameter_check_allows_line_breaks_only_where_asked() {
    use portcullis::security::hardening::{ParamError, check_params};
    let uris = b"redirect_uris=https%3A%2F%2Fa.example%2Fcb%0D%0Ahttps%3A%2F%2Fb.example%2Fcb";
    assert_eq!(check_params(uris, 8192, true), Ok(()));
    assert_eq!(check_params(uris, 8192, false), Err(ParamError::LineBreak));
    assert_eq!(check_params(b"a=%00", 8192, true), Err(ParamError::Nul));
    assert_eq!(
        check_params(b"a=%E2%82", 8192, true),
        Err(ParamError::InvalidUtf8)
    );
    assert_eq!(check_params(b"a=%E2%82%AC", 8192, true), Ok(()));
    assert_eq!(check_params(b"a=1234", 4, true), Ok(()));
    assert_eq!(
        check_params(b"a=12345", 4, true),
        Err(ParamError::TooLong(4))
    );
    assert_eq!(check_params(b"a=%zz&&=&b", 8192, false), Ok(()));
}

/// Regression: `Params::parse` used to accept invalid UTF-8 whenever the
/// input also held a literal U+FFFD somewhere (its lossy-decoding check).
#[test]
fn params_parse_refuses_invalid_utf8_next_to_a_replacement_character() {
    use portcullis::web::form::{FormError, Params};
    assert_eq!(
        Params::parse(b"a=%EF%BF%BD&b=%FF").err(),
        Some(FormError::Malformed)
    );
    assert_eq!(
        Params::parse("a=\u{FFFD}&b=%C3".as_bytes()).err(),
        Some(FormError::Malformed)
    );
    let ok = Params::parse(b"a=%EF%BF%BD&b=%C3%A9").unwrap();
    assert_eq!(ok.get("b").unwrap(), Some("é"));
}

// ---------------------------------------------------------------------------
// Slow clients

/// Sends a request head one byte every 200 ms to `base`; true when the
/// server closed the connection (or answered 408) before the head was done.
async fn slow_head_is_cut_off(base: &str) -> bool {
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    });
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head {
        if reader.is_finished() || wr.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !cut {
        return false;
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the server closed the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "a slow head got an answer: {text}"
    );
    true
}

async fn slow_clients_are_disconnected(backend: Backend) {
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_LIMITS_HEADER_READ_TIMEOUT", "1s")]).await;
    for base in [&oidc.server.public, &oidc.server.admin] {
        assert!(
            slow_head_is_cut_off(base).await,
            "{base}: a client trickling its request head was never disconnected"
        );
    }
    // Clients that send their request at once are served as usual.
    let (status, _) = oidc.server.get_json(&oidc.url("/healthz")).await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------
// Database outage

async fn introspect(oidc: &Oidc, gw: &Client, token: &str) -> (u16, HeaderMap, Value) {
    post_raw(
        oidc,
        "/introspect",
        gw,
        format!("token={token}").into_bytes(),
    )
    .await
}

#[track_caller]
fn assert_unavailable(status: u16, headers: &HeaderMap, body: &Value, what: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{what}: {body}"
    );
    assert!(
        body.get("active").is_none(),
        "{what}: never an answer: {body}"
    );
    assert!(
        header(headers, "cache-control").contains("no-store"),
        "{what}"
    );
}

async fn database_down_answers_503_temporarily_unavailable(backend: Backend) {
    let oidc = Oidc::start(backend.clone()).await;
    let svc = service(&oidc).await;
    let gw = gateway(&oidc).await;
    let live = oidc
        .client_credentials(&svc, Some("api"))
        .await
        .str("access_token");
    let issue = || async {
        post_raw(
            &oidc,
            "/token",
            &svc,
            b"grant_type=client_credentials&scope=api".to_vec(),
        )
        .await
    };

    match &backend {
        Backend::Sqlite => {
            // Another process holds the write lock: every write waits out
            // the busy timeout, then the request is a 503 — never a 500,
            // never a token that was not stored.
            let pool = crate::support::raw_pool(&oidc.env.database_url()).await;
            let mut conn = pool.acquire().await.unwrap();
            sqlx::Executor::execute(&mut *conn, "BEGIN EXCLUSIVE")
                .await
                .unwrap();
            let (status, headers, body) = issue().await;
            assert_unavailable(
                status,
                &headers,
                &body,
                "/token while the database is locked",
            );
            // WAL readers are not blocked by a writer: introspection keeps
            // answering, and correctly.
            let (status, _, body) = introspect(&oidc, &gw, &live).await;
            assert_eq!((status, &body["active"]), (200, &json!(true)), "{body}");
            sqlx::Executor::execute(&mut *conn, "ROLLBACK")
                .await
                .unwrap();
            drop(conn);
            pool.close().await;
        }
        Backend::Postgres(admin) => {
            // The database refuses connections and ours are cut.
            let name = url::Url::parse(oidc.env.db_url.as_deref().unwrap())
                .unwrap()
                .path()
                .trim_start_matches('/')
                .to_string();
            let pool = crate::support::raw_pool(admin).await;
            let run = |sql: String| {
                let pool = pool.clone();
                async move {
                    sqlx::Executor::execute(&pool, sqlx::AssertSqlSafe(sql))
                        .await
                        .unwrap();
                }
            };
            run(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
            run(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await;
            let (status, headers, body) = issue().await;
            assert_unavailable(status, &headers, &body, "/token while the database is down");
            let (status, headers, body) = introspect(&oidc, &gw, &live).await;
            assert_unavailable(
                status,
                &headers,
                &body,
                "/introspect while the database is down",
            );
            let (status, headers, body) =
                post_raw(&oidc, "/revoke", &svc, format!("token={live}").into_bytes()).await;
            assert_unavailable(
                status,
                &headers,
                &body,
                "/revoke while the database is down",
            );
            let (status, _) = oidc.server.get_json(&oidc.url("/readyz")).await;
            assert_eq!(status, 503, "not ready without a database");
            run(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
            pool.close().await;
        }
    }

    // Back to normal once the database is.
    let recovered = eventually(Duration::from_secs(30), || async { issue().await.0 == 200 }).await;
    assert!(recovered, "no token after the database came back");
    let (status, _, body) = introspect(&oidc, &gw, &live).await;
    assert_eq!((status, &body["active"]), (200, &json!(true)), "{body}");
}

/// The same outage seen from inside the process: with the store's pools
/// closed, the OAuth endpoints answer 503 `temporarily_unavailable`, never
/// `{"active": false}` or `{"active": true}` from a guess.
#[tokio::test]
async fn router_answers_503_when_the_store_is_gone() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use portcullis::audit::AuditContext;
    use portcullis::oauth::clients::{self, NewClient};
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let mut config = portcullis::config::Config::defaults().unwrap();
    config.database.url = format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display());
    config.keys.dir = dir.path().join("keys");
    let clock = std::sync::Arc::new(portcullis::clock::ManualClock::new(1_800_000_000_000));
    let state = portcullis::app::start(config, clock.clone())
        .await
        .unwrap()
        .state;
    let ctx = AuditContext::system("test");
    let mut secrets = Vec::new();
    for (id, introspects) in [("svc", false), ("gw", true)] {
        let (_, secret) = clients::register(
            &state.store,
            clock.as_ref(),
            &ctx,
            NewClient {
                name: id.into(),
                id: Some(id.into()),
                grant_types: vec!["client_credentials".into()],
                scope: Some("api".into()),
                may_introspect: introspects,
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
        secrets.push(Client {
            id: id.into(),
            secret: Some(secret.unwrap().0),
            redirect_uri: String::new(),
        });
    }
    let (svc, gw) = (&secrets[0], &secrets[1]);
    let app = portcullis::app::public_router(state.clone());
    let call = |path: &str, client: &Client, body: String| {
        let app = app.clone();
        let req = axum::http::Request::post(path)
            .header("authorization", basic(client))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                headers,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let grant = "grant_type=client_credentials&scope=api".to_string();
    let (status, _, body) = call("/token", svc, grant.clone()).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();

    state.store.close().await;
    let (status, headers, body) = call("/token", svc, grant).await;
    assert_unavailable(status, &headers, &body, "/token");
    let (status, headers, body) = call("/introspect", gw, format!("token={token}")).await;
    assert_unavailable(status, &headers, &body, "/introspect");
    let (status, headers, body) = call("/revoke", svc, format!("token={token}")).await;
    assert_unavailable(status, &headers, &body, "/revoke");
    let resp = app
        .clone()
        .oneshot(
            axum::http::Request::get("/userinfo")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "/userinfo");
}

/// A body without Content-Length is counted as it is read: over the limit
/// it is a 413, whatever the client declared (router test).
#[tokio::test]
async fn router_counts_bodies_without_content_length() {
    use axum::body::Body;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let mut config = portcullis::config::Config::defaults().unwrap();
    config.database.url = format!(
        "sqlite:file:{}?mode=memory&cache=shared",
        uuid::Uuid::new_v4().simple()
    );
    config.keys.dir = dir.path().join("keys");
    config.limits.max_body_bytes = 4096;
    let clock = std::sync::Arc::new(portcullis::clock::ManualClock::new(1_800_000_000_000));
    let state = portcullis::app::start(config, clock).await.unwrap().state;
    for (router, path) in [
        (portcullis::app::public_router(state.clone()), "/token"),
        (
            portcullis::app::admin_router(state.clone()),
            "/admin/api/refunds",
        ),
    ] {
        // No Content-Length header: only counting the body can tell.
        let req = axum::http::Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(vec![b'a'; 6000]))
            .unwrap();
        assert!(req.headers().get("content-length").is_none());
        let resp = router.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 413, "{path}");
    }
}

// ---------------------------------------------------------------------------
// RFC 8725: forged JWTs

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn claims_of(jwt: &str) -> serde_json::Map<String, Value> {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// `alg: none` with the given header members and claims, empty signature.
fn unsigned(typ: &str, kid: &str, claims: &serde_json::Map<String, Value>) -> String {
    let header = json!({"alg": "none", "typ": typ, "kid": kid});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes())
    )
}

/// Signs `claims` with `signer` under a header carrying `typ`, `kid` and
/// `extra` members.
fn sign(
    signer: &dyn josekit::jws::JwsSigner,
    typ: &str,
    kid: &str,
    extra: &[(&str, Value)],
    claims: &serde_json::Map<String, Value>,
) -> String {
    let mut header = JwsHeader::new();
    header.set_token_type(typ);
    header.set_key_id(kid);
    for (k, v) in extra {
        header.set_claim(k, Some(v.clone())).unwrap();
    }
    let payload = JwtPayload::from_map(claims.clone()).unwrap();
    jwt::encode_with_signer(&payload, &header, signer).unwrap()
}

/// Our public key (from `/jwks.json`) in every form an HS256 verifier
/// confused into using it as the secret might see it.
fn public_key_forms(jwk: &Value) -> Vec<Vec<u8>> {
    use openssl::bn::BigNum;
    let n = |k: &str| {
        BigNum::from_slice(&URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap()).unwrap()
    };
    let mut forms = vec![jwk.to_string().into_bytes()];
    match jwk["kty"].as_str() {
        Some("RSA") => {
            let rsa = openssl::rsa::Rsa::from_public_components(n("n"), n("e")).unwrap();
            forms.push(rsa.public_key_to_pem().unwrap());
            forms.push(rsa.public_key_to_pem_pkcs1().unwrap());
            forms.push(rsa.public_key_to_der().unwrap());
        }
        Some("EC") => {
            let group =
                openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
            let ec =
                openssl::ec::EcKey::from_public_key_affine_coordinates(&group, &n("x"), &n("y"))
                    .unwrap();
            forms.push(ec.public_key_to_pem().unwrap());
            forms.push(ec.public_key_to_der().unwrap());
        }
        other => panic!("unexpected key type {other:?}"),
    }
    // Trailing newline or not, both count.
    let trimmed: Vec<Vec<u8>> = forms
        .iter()
        .filter(|f| f.ends_with(b"\n"))
        .map(|f| f[..f.len() - 1].to_vec())
        .collect();
    forms.extend(trimmed);
    forms
}

/// Every forgery of a token of type `typ` whose real claims are `claims`,
/// against our key `ours` (a JWK from /jwks.json), by name.
fn forgeries(
    typ: &str,
    ours: &Value,
    claims: &serde_json::Map<String, Value>,
) -> Vec<(String, String)> {
    let kid = ours["kid"].as_str().unwrap();
    let mut out = vec![
        ("alg none".to_string(), unsigned(typ, kid, claims)),
        (
            "alg none, no kid".to_string(),
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": typ}).to_string().as_bytes()),
                b64(Value::Object(claims.clone()).to_string().as_bytes())
            ),
        ),
        (
            "alg NONE".to_string(),
            format!(
                "{}.{}.",
                b64(json!({"alg": "NONE", "typ": typ, "kid": kid})
                    .to_string()
                    .as_bytes()),
                b64(Value::Object(claims.clone()).to_string().as_bytes())
            ),
        ),
    ];
    for (i, secret) in public_key_forms(ours).iter().enumerate() {
        let signer = HS256.signer_from_bytes(secret).unwrap();
        out.push((
            format!("HS256 with our public key as the secret (form {i})"),
            sign(&signer, typ, kid, &[], claims),
        ));
    }
    // The attacker's own keys, of both kinds.
    let rsa = RS256.generate_key_pair(2048).unwrap();
    let ec = ES256.generate_key_pair().unwrap();
    let attackers: [(&str, Box<dyn josekit::jws::JwsSigner>, Jwk); 2] = [
        (
            "RS256",
            Box::new(RS256.signer_from_der(rsa.to_der_private_key()).unwrap()),
            rsa.to_jwk_public_key(),
        ),
        (
            "ES256",
            Box::new(ES256.signer_from_der(ec.to_der_private_key()).unwrap()),
            ec.to_jwk_public_key(),
        ),
    ];
    for (alg, signer, public) in &attackers {
        let mut public = public.clone();
        public.set_key_id("attacker-key");
        let public_json = Value::Object(public.as_ref().clone());
        out.push((
            format!("{alg}: unknown kid"),
            sign(signer.as_ref(), typ, "attacker-key", &[], claims),
        ));
        for (member, value) in [
            ("jku", json!("https://attacker.example/jwks.json")),
            ("x5u", json!("https://attacker.example/cert.pem")),
            ("jwk", public_json.clone()),
        ] {
            for k in [kid, "attacker-key"] {
                out.push((
                    format!("{alg}: injected {member}, kid {k}"),
                    sign(signer.as_ref(), typ, k, &[(member, value.clone())], claims),
                ));
            }
        }
    }
    out
}

/// The JWK with `kid` from the server's JWKS.
async fn jwk_of(oidc: &Oidc, jwt: &str) -> Value {
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let (_, jwks) = oidc.server.get_json(&oidc.url("/jwks.json")).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap()
        .clone()
}

async fn forged_jwts_are_refused_everywhere_a_jwt_is_accepted(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let ui = oidc
        .code_client("admin-ui", "openid", &["--first-party"])
        .await;
    let payments = oidc
        .client(
            "payments-svc",
            &[
                "--grant",
                "client_credentials",
                "--scope",
                "refunds:execute",
            ],
        )
        .await;
    // An RP whose ID tokens are ES256, like approval tokens: only `typ`
    // tells those two apart.
    let rp = oidc
        .code_client(
            "rp",
            "openid",
            &["--first-party", "--id-token-alg", "ES256"],
        )
        .await;
    let rs_rp = oidc
        .code_client("rp-rs", "openid", &["--first-party"])
        .await;
    let gw = gateway(&oidc).await;
    let alice = crate::oauth::staff::staff(&oidc, &ui, "alice", &["support"]).await;

    // A refund approved at once carries a genuine approval token.
    let resp = oidc
        .http
        .post(oidc.server.admin_url("/admin/api/refunds"))
        .bearer_auth(&alice.access_token)
        .header("idempotency-key", "hardening-1")
        .json(&json!({
            "payment_id": "pay_1", "amount_minor": 500, "currency": "EUR",
            "reason": "customer complaint", "ticket_id": "T-1"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let refund: Value = resp.json().await.unwrap();
    let refund_id = refund["id"].as_str().unwrap().to_string();
    let approval = refund["approval_token"].as_str().unwrap().to_string();
    let svc = oidc
        .client_credentials(&payments, Some("refunds:execute"))
        .await
        .str("access_token");
    let execute = |token: String| {
        let req = oidc
            .http
            .post(
                oidc.server
                    .admin_url(&format!("/admin/api/refunds/{refund_id}/executed")),
            )
            .bearer_auth(&svc)
            .json(&json!({ "approval_token": token }));
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };

    // A signed-in browser with an RS256 and an ES256 ID token.
    let browser = oidc.browser();
    oidc.user("bob").await;
    let mut id_tokens = Vec::new();
    for client in [&rs_rp, &rp] {
        let req = AuthRequest::new(client, "openid");
        let done = browser
            .authorize(&req, Some(("bob", crate::oauth::flow::PASSWORD)))
            .await;
        let tokens = oidc
            .exchange_code(client, &done.code(), &req.pkce.verifier)
            .await;
        id_tokens.push(tokens.str("id_token"));
    }
    let (rs_id_token, es_id_token) = (id_tokens[0].clone(), id_tokens[1].clone());
    let session_alive = || async {
        browser
            .http
            .get(oidc.url("/account/sessions"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            == 200
    };
    assert!(session_alive().await);
    let logout = |hint: String| {
        let mut u = url::Url::parse(&oidc.url("/logout")).unwrap();
        u.query_pairs_mut().append_pair("id_token_hint", &hint);
        let http = browser.http.clone();
        async move {
            let resp = http.get(u.as_str()).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };

    // Another JWT we sign: the signed introspection answer.
    let resp = oidc
        .http
        .post(oidc.url("/introspect"))
        .basic_auth(&gw.id, gw.secret.as_deref())
        .header("accept", "application/token-introspection+jwt")
        .form(&[("token", svc.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let introspection_jwt = resp.text().await.unwrap();

    // id_token_hint at /logout: every forgery of an RS256 ID token, and our
    // own tokens of other kinds, are refused; the session lives on.
    let id_claims = claims_of(&rs_id_token);
    let mut hints = forgeries("JWT", &jwk_of(&oidc, &rs_id_token).await, &id_claims);
    hints.extend(forgeries(
        "JWT",
        &jwk_of(&oidc, &es_id_token).await,
        &claims_of(&es_id_token),
    ));
    hints.push(("an approval token (typ confusion)".into(), approval.clone()));
    hints.push((
        "a signed introspection answer".into(),
        introspection_jwt.clone(),
    ));
    for (what, hint) in hints {
        let (status, body) = logout(hint).await;
        assert_eq!(status, 400, "id_token_hint {what}: {body}");
        assert!(
            body.contains("not a valid ID token"),
            "id_token_hint {what}: {body}"
        );
        assert!(
            session_alive().await,
            "id_token_hint {what} ended the session"
        );
    }

    // Approval tokens at /executed: every forgery of the real one, an
    // ES256 ID token (typ confusion) and the introspection JWT are refused,
    // and the refund stays executable.
    let approval_claims = claims_of(&approval);
    let mut tokens = forgeries(
        "refund-approval+jwt",
        &jwk_of(&oidc, &approval).await,
        &approval_claims,
    );
    tokens.push((
        "an ES256 ID token (typ confusion)".into(),
        es_id_token.clone(),
    ));
    tokens.push(("an RS256 ID token".into(), rs_id_token.clone()));
    tokens.push(("a signed introspection answer".into(), introspection_jwt));
    for (what, token) in tokens {
        let (status, body) = execute(token).await;
        assert_eq!(status, 403, "approval token {what}: {body}");
        assert!(
            body.contains("approval token rejected"),
            "approval token {what}: {body}"
        );
    }
    let (status, body) = execute(approval).await;
    assert_eq!(status, 200, "the genuine approval token: {body}");

    // The genuine ID token signs out at once.
    let (status, body) = logout(rs_id_token).await;
    assert!(status == 200 || status == 303, "{status}: {body}");
    assert!(!session_alive().await, "the genuine hint signs out");
}
