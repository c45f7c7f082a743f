//! Cookie names and attributes. With an https issuer cookies are
//! `__Host-`-prefixed and `Secure`; with an http issuer (development,
//! tests) browsers would reject both, so the plain names are used.

use axum::http::{HeaderMap, HeaderValue, header};

#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy {
    pub secure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

impl CookiePolicy {
    pub fn for_issuer(issuer: &str) -> Self {
        CookiePolicy {
            secure: issuer.starts_with("https://"),
        }
    }

    pub fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_string()
        }
    }

    /// `Set-Cookie` value; `max_age` None means a browser-session cookie.
    pub fn set(
        &self,
        base: &str,
        value: &str,
        max_age: Option<i64>,
        same_site: SameSite,
    ) -> HeaderValue {
        let mut c = format!("{}={value}; Path=/; HttpOnly", self.name(base));
        c.push_str(match same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
        });
        if self.secure {
            c.push_str("; Secure");
        }
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn clear(&self, base: &str) -> HeaderValue {
        self.set(base, "", Some(0), SameSite::Lax)
    }

    pub fn get(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        let name = self.name(base);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}
