//! CSRF defence for HTML forms: a double-submit token. The token lives in
//! an HttpOnly, SameSite=Strict cookie and in a hidden form field; a POST
//! is accepted only when both are present and equal (constant time). A
//! cross-site page can neither read the cookie nor make the browser send it.

use axum::http::{HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;

use super::cookies::{CookiePolicy, SameSite};

pub const CSRF_COOKIE: &str = "pc_csrf";
pub const CSRF_FIELD: &str = "csrf_token";

/// The token for a form being rendered, and the cookie to set if the
/// browser does not have one yet.
pub fn token_for_form(policy: &CookiePolicy, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match policy.get(headers, CSRF_COOKIE).filter(|t| valid_shape(t)) {
        Some(token) => (token, None),
        None => {
            let token = crate::crypto::random_id();
            let cookie = policy.set(CSRF_COOKIE, &token, None, SameSite::Strict);
            (token, Some(cookie))
        }
    }
}

fn valid_shape(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// True when the submitted field matches the cookie.
pub fn verify(policy: &CookiePolicy, headers: &HeaderMap, submitted: Option<&str>) -> bool {
    match (policy.get(headers, CSRF_COOKIE), submitted) {
        (Some(cookie), Some(field)) if valid_shape(&cookie) => {
            cookie.as_bytes().ct_eq(field.as_bytes()).into()
        }
        _ => false,
    }
}
