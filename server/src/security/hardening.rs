//! Request hardening (DESIGN "Security defaults"; `[limits]` in the README):
//!
//! - the HTTP/1.1 server loop of both listeners ([`serve_listener`]):
//!   request heads larger than `limits.max_header_bytes` or with more than
//!   `limits.max_headers` fields are answered `431` by hyper itself, and a
//!   client that has not sent its whole head within
//!   `limits.header_read_timeout` is disconnected (slowloris; the same
//!   timeout closes idle keep-alive connections). Shutdown stops accepting,
//!   lets in-flight requests finish and then returns.
//! - the middleware of both listeners ([`public_guard`], [`admin_guard`]):
//!   bodies over `limits.max_body_bytes` are `413`; query and
//!   `application/x-www-form-urlencoded` parameters that are not
//!   percent-encoded UTF-8, contain NUL, contain CR/LF (except in form
//!   bodies on the admin listener, whose text areas hold one value per
//!   line), or decode to more than `limits.max_field_bytes` are `400`;
//!   reading the body and answering must finish within
//!   `limits.request_timeout` (`408`). Refusals are RFC 6749 errors
//!   (`invalid_request`) on `/token`, `/introspect`, `/revoke` and
//!   `/userinfo`, a page on `/authorize` (before the redirect URI is
//!   validated nothing may be redirected) and on the other pages, and
//!   `{"error", "message"}` on JSON endpoints.
//! - `Strict-Transport-Security` on every answer of a listener whose
//!   external URL is https (the issuer for the public listener,
//!   `http.admin_url` for the admin listener).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::config::LimitsConfig;
use crate::telemetry::metrics::Listener;

/// `Strict-Transport-Security` value: one year, subdomains included.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Why a query or form parameter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("a parameter is not valid percent-encoded UTF-8")]
    InvalidUtf8,
    #[error("a parameter contains a NUL character")]
    Nul,
    #[error("a parameter contains a line break (CR or LF)")]
    LineBreak,
    #[error("a parameter is longer than {0} bytes")]
    TooLong(usize),
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `application/x-www-form-urlencoded` name or value the way
/// `form_urlencoded` does (`+` is a space, `%XY` a byte, a `%` not followed
/// by two hex digits stays literal) and checks the result.
fn check_component(raw: &[u8], max: usize, allow_line_breaks: bool) -> Result<(), ParamError> {
    let mut out = Vec::with_capacity(raw.len().min(max.saturating_add(1)));
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'+' => b' ',
            b'%' => match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    i += 2;
                    h * 16 + l
                }
                _ => b'%',
            },
            other => other,
        };
        i += 1;
        if out.len() == max {
            return Err(ParamError::TooLong(max));
        }
        out.push(b);
    }
    let text = std::str::from_utf8(&out).map_err(|_| ParamError::InvalidUtf8)?;
    if text.contains('\0') {
        return Err(ParamError::Nul);
    }
    if !allow_line_breaks && text.contains(['\r', '\n']) {
        return Err(ParamError::LineBreak);
    }
    Ok(())
}

/// Checks every name and value of a query string or form body: valid UTF-8
/// after percent-decoding, no NUL, no CR/LF unless `allow_line_breaks`, at
/// most `max_field` bytes each once decoded. Pure; never panics.
pub fn check_params(
    input: &[u8],
    max_field: usize,
    allow_line_breaks: bool,
) -> Result<(), ParamError> {
    for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        check_component(name, max_field, allow_line_breaks)?;
        check_component(value, max_field, allow_line_breaks)?;
    }
    Ok(())
}

/// Where a refusal is shown, which decides its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// RFC 6749 §5.2 JSON (`/token`, `/introspect`, `/revoke`, `/userinfo`).
    OAuth,
    /// A page; on `/authorize` this is what RFC 6749 §4.1.2.1 asks for when
    /// the redirect URI has not been validated.
    Page,
    /// `{"error", "message"}` (admin API and other JSON endpoints).
    Json,
}

impl Surface {
    pub fn of(listener: Listener, path: &str, headers: &HeaderMap) -> Surface {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let json_accepted = accept.contains("json") && !accept.contains("text/html");
        match listener {
            Listener::Admin => {
                if path.starts_with("/admin/api/")
                    || path == "/admin/api"
                    || matches!(path, "/healthz" | "/readyz" | "/metrics")
                    || json_accepted
                {
                    Surface::Json
                } else {
                    Surface::Page
                }
            }
            Listener::Public => {
                if matches!(path, "/token" | "/introspect" | "/revoke" | "/userinfo") {
                    return Surface::OAuth;
                }
                if path.starts_with("/authorize") {
                    return Surface::Page;
                }
                if path.starts_with("/login/webauthn/")
                    || path.starts_with("/login/passkey/")
                    || path.starts_with("/account/mfa/webauthn/")
                    || json_accepted
                {
                    return Surface::Json;
                }
                let page = ["/login", "/account", "/logout", "/consent"]
                    .iter()
                    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
                    || path == "/";
                if page { Surface::Page } else { Surface::Json }
            }
        }
    }
}

/// A request refused before it reached a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Param(ParamError),
    TooLarge(usize),
    UnreadableBody,
    Timeout,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Param(_) | Refusal::UnreadableBody => StatusCode::BAD_REQUEST,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Param(e) => format!("malformed request: {e}"),
            Refusal::TooLarge(max) => format!("the request body is larger than {max} bytes"),
            Refusal::UnreadableBody => "the request body could not be read".to_string(),
            Refusal::Timeout => "the request took too long to arrive or to answer".to_string(),
        }
    }

    fn json_code(&self) -> &'static str {
        match self {
            Refusal::Param(_) | Refusal::UnreadableBody => "invalid_request",
            Refusal::TooLarge(_) => "payload_too_large",
            Refusal::Timeout => "request_timeout",
        }
    }

    fn respond(&self, surface: Surface) -> Response {
        let status = self.status();
        let message = self.message();
        let mut resp = match surface {
            Surface::OAuth => (
                status,
                axum::Json(serde_json::json!({
                    "error": "invalid_request",
                    "error_description": message,
                })),
            )
                .into_response(),
            Surface::Json => (
                status,
                axum::Json(serde_json::json!({ "error": self.json_code(), "message": message })),
            )
                .into_response(),
            Surface::Page => crate::web::html::error_page(status, &message),
        };
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if !matches!(self, Refusal::Param(_)) {
            // The rest of the body was not read: the connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start().to_ascii_lowercase();
            v.starts_with("application/json")
                || v.split(';').next().is_some_and(|t| t.ends_with("+json"))
        })
}

/// A NUL in a JSON body, raw or escaped (`\u0000`): PostgreSQL cannot
/// store it in TEXT and no field of ours needs it.
fn json_has_nul(body: &[u8]) -> bool {
    body.contains(&0)
        || body.windows(6).any(|w| {
            w[0] == b'\\' && (w[1] == b'u' || w[1] == b'U') && w[2..].eq_ignore_ascii_case(b"0000")
        })
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// Reads the whole body, refusing it once it passes `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, Refusal> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| Refusal::UnreadableBody)?;
        if let Ok(data) = frame.into_data() {
            if out.len().saturating_add(data.len()) > max {
                return Err(Refusal::TooLarge(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The checks before the handler: parameters, body size, body read.
async fn admit(
    limits: &LimitsConfig,
    listener: Listener,
    req: Request,
    next: Next,
) -> Result<Response, Refusal> {
    if let Some(query) = req.uri().query() {
        check_params(query.as_bytes(), limits.max_field_bytes, false).map_err(Refusal::Param)?;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(Refusal::TooLarge(limits.max_body_bytes));
    }
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, limits.max_body_bytes).await?;
    if is_form(&parts.headers) {
        check_params(
            &bytes,
            limits.max_field_bytes,
            matches!(listener, Listener::Admin),
        )
        .map_err(Refusal::Param)?;
    } else if is_json(&parts.headers) && json_has_nul(&bytes) {
        return Err(Refusal::Param(ParamError::Nul));
    }
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}

async fn guard(state: &AppState, listener: Listener, req: Request, next: Next) -> Response {
    let limits = &state.config.limits;
    let surface = Surface::of(listener, req.uri().path(), req.headers());
    let mut resp = match tokio::time::timeout(
        limits.request_timeout,
        admit(limits, listener, req, next),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(refusal)) => {
            tracing::info!(event = "request_refused", status = refusal.status().as_u16(), reason = %refusal.message(), "request refused before its handler");
            refusal.respond(surface)
        }
        Err(_) => {
            tracing::info!(
                event = "request_timeout",
                "request refused: not finished within limits.request_timeout"
            );
            Refusal::Timeout.respond(surface)
        }
    };
    let https = match listener {
        Listener::Public => state.config.issuer.starts_with("https://"),
        Listener::Admin => state
            .config
            .http
            .admin_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://")),
    };
    if https {
        resp.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    resp
}

/// Middleware on the public listener (inside the security headers, so
/// refusals carry them too).
pub async fn public_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    guard(&state, Listener::Public, req, next).await
}

/// Middleware on the admin listener.
pub async fn admin_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    guard(&state, Listener::Admin, req, next).await
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `router` on `listener` (HTTP/1.1) with the `[limits]` head
/// limits and header-read timeout, until `stop` turns true; then stops
/// accepting, lets every in-flight request finish (keep-alive connections
/// close after their current response) and returns.
pub async fn serve_listener(
    listener: TcpListener,
    router: Router,
    limits: LimitsConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // Every connection task holds a receiver; `closed()` resolves when all
    // of them have finished.
    let (done_tx, done_rx) = tokio::sync::watch::channel(());
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    tower::ServiceExt::oneshot(router, req.map(Body::new))
                        .await
                        .unwrap_or_else(|never| match never {}),
                )
            }
        });
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let mut stop = stop.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error while draining");
                    }
                }
            }
            drop(done);
        });
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}
