//! The one place where log output is scrubbed. Every log line passes through
//! [`redact_field`]: fields named like secrets are replaced wholesale, and
//! any value that contains one of our token/secret prefixes or a bearer
//! credential is masked wherever it appears.

pub const REDACTED: &str = "[redacted]";

/// Field names (lower-case, matched as substrings) whose values are never logged.
const SECRET_FIELD_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "code",
    "assertion",
    "verifier",
    "otp",
    "credential",
    "private",
    "session_id",
    "csrf",
];

/// Prefixes of Portcullis-issued secrets (access, refresh, client secret,
/// bootstrap code, session id).
const SECRET_PREFIXES: &[&str] = &["pct_at_", "pct_rt_", "pcs_", "pcb_", "pcsid_"];

pub fn is_secret_field(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    // `status_code`/`error_code` are not secrets.
    if lower.ends_with("status_code") || lower == "error_code" {
        return false;
    }
    SECRET_FIELD_PARTS.iter().any(|p| lower.contains(p))
}

/// Redacts a field value for the log.
pub fn redact_field(name: &str, value: &str) -> String {
    if is_secret_field(name) {
        return REDACTED.to_string();
    }
    redact_text(value)
}

/// Masks secrets embedded in free text: our prefixed tokens, `Bearer`/`Basic`
/// credentials, and compact JWTs.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let next = SECRET_PREFIXES
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
            .chain(
                ["Bearer ", "Basic ", "bearer ", "basic "]
                    .iter()
                    .filter_map(|p| rest.find(p).map(|i| (i, p.len()))),
            )
            .chain(find_jwt(rest).map(|i| (i, 0)))
            .min_by_key(|(i, _)| *i);
        match next {
            Some((start, prefix_len)) => {
                out.push_str(&rest[..start + prefix_len]);
                out.push_str(REDACTED);
                let tail = &rest[start + prefix_len..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.~+/=".contains(c)))
                    .unwrap_or(tail.len());
                rest = &tail[end..];
            }
            None => {
                out.push_str(rest);
                break;
            }
        }
    }
    out
}

/// Start of something shaped like a compact JWS (`eyJ….eyJ….…`).
fn find_jwt(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("eyJ") {
        let start = from + i;
        let candidate = &text[start..];
        let end = candidate
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .unwrap_or(candidate.len());
        if candidate[..end].matches('.').count() >= 2 {
            return Some(start);
        }
        from = start + 3;
    }
    None
}
