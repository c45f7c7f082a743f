//! HTTP plumbing shared by the HTML and form endpoints: strict form
//! parsing, cookies, CSRF, HTML rendering, security headers.

pub mod cookies;
pub mod csrf;
pub mod form;
pub mod html;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The client's IP for sessions and audit rows: the address the rate
/// limiter resolved (which believes `X-Forwarded-For` only from
/// `rate_limits.trusted_proxies`), else the socket's.
pub fn client_ip(ext: &axum::http::Extensions) -> Option<String> {
    ext.get::<crate::security::limits::ClientIp>()
        .map(|c| c.0.to_string())
        .or_else(|| {
            ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        })
}

pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}

/// Headers every response on the public listener carries: no framing, no
/// MIME sniffing, no referrer leaks, and a CSP without inline script or
/// style: scripts only from our own static files (`/static/webauthn.js`),
/// which may call back only to this origin.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}
