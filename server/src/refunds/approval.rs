//! Approval tokens: short-lived, single-use JWTs (ES256, `typ:
//! refund-approval+jwt`) that say "this exact refund may be paid out". The
//! payments service can check one against `/jwks.json` on its own, and
//! presents it to `POST /admin/api/refunds/{id}/executed`, which verifies it
//! again and spends its `jti` once.
//!
//! Claims: `iss`, `aud` (the payments audience), `iat`, `nbf`, `exp`, `jti`,
//! RFC 9396 `authorization_details` with one object of type `refund`
//! (`refund_id`, `payment_id`, `amount_minor`, `currency`, `requester`,
//! `approver`), and the same `requester` / `approver` usernames as
//! top-level claims. `approval` says why the refund is approved:
//! `four_eyes` (a second person approved) or `below_threshold`.

use std::time::Duration;

use josekit::jwt::JwtPayload;
use serde_json::{Value, json};

use crate::crypto;
use crate::keys::{KeyError, KeySet, SigningAlg};

use super::RefundError;

pub const TYP: &str = "refund-approval+jwt";
pub const ALG: SigningAlg = SigningAlg::ES256;
/// Seconds an approval token is valid.
pub const TTL: i64 = 300;
/// RFC 9396 `type` of the authorization details object.
pub const DETAILS_TYPE: &str = "refund";

/// What a token approves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedRefund<'a> {
    pub refund_id: &'a str,
    pub payment_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub requester: &'a str,
    /// `None` when the amount was at or below the threshold.
    pub approver: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct MintedApproval {
    pub token: String,
    pub jti: String,
    pub expires_at: i64,
}

pub fn mint(
    keys: &KeySet,
    issuer: &str,
    audience: &str,
    refund: &ApprovedRefund<'_>,
    now: i64,
) -> Result<MintedApproval, KeyError> {
    let jti = crypto::random_id();
    let expires_at = now + TTL;
    let details = json!([{
        "type": DETAILS_TYPE,
        "refund_id": refund.refund_id,
        "payment_id": refund.payment_id,
        "amount_minor": refund.amount_minor,
        "currency": refund.currency,
        "requester": refund.requester,
        "approver": refund.approver,
    }]);
    let mut p = JwtPayload::new();
    let mut set = |k: &str, v: Value| {
        let _ = p.set_claim(k, Some(v));
    };
    set("iss", issuer.into());
    set("aud", audience.into());
    set("iat", now.into());
    set("nbf", now.into());
    set("exp", expires_at.into());
    set("jti", jti.clone().into());
    set("authorization_details", details);
    set("requester", refund.requester.into());
    set("approver", refund.approver.into());
    set(
        "approval",
        if refund.approver.is_some() {
            "four_eyes"
        } else {
            "below_threshold"
        }
        .into(),
    );
    let token = keys.sign(ALG, TYP, &p)?;
    Ok(MintedApproval {
        token,
        jti,
        expires_at,
    })
}

/// The parts of a verified token the execution checks against the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedApproval {
    pub jti: String,
    pub refund_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

fn rejected(why: &str) -> RefundError {
    RefundError::ApprovalRejected(why.to_string())
}

/// Verifies signature (ES256 only, our keys by `kid`), `typ`, `iss`, `aud`,
/// `nbf`/`exp`, and the shape of `authorization_details`.
pub fn verify(
    keys: &KeySet,
    token: &str,
    issuer: &str,
    audience: &str,
    now: i64,
    retention: Duration,
) -> Result<VerifiedApproval, RefundError> {
    let payload = keys
        .verify(token.trim(), &[ALG], TYP, now, retention)
        .map_err(|e| RefundError::ApprovalRejected(e.to_string()))?;
    let claim = |name: &str| payload.claim(name);
    if claim("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(rejected("wrong issuer"));
    }
    let audience_ok = match claim("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(rejected("not issued for the payments service"));
    }
    let exp = claim("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| rejected("no expiry"))?;
    if exp <= now {
        return Err(rejected("expired"));
    }
    if claim("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf > now + 60)
    {
        return Err(rejected("not valid yet"));
    }
    let jti = claim("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or_else(|| rejected("no jti"))?
        .to_string();
    let details = match claim("authorization_details") {
        Some(Value::Array(list)) if list.len() == 1 => &list[0],
        _ => {
            return Err(rejected(
                "authorization_details must hold exactly one refund",
            ));
        }
    };
    if details["type"].as_str() != Some(DETAILS_TYPE) {
        return Err(rejected("authorization_details is not of type refund"));
    }
    let text = |k: &str| {
        details[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| rejected(&format!("authorization_details lacks {k}")))
    };
    Ok(VerifiedApproval {
        jti,
        refund_id: text("refund_id")?,
        payment_id: text("payment_id")?,
        amount_minor: details["amount_minor"]
            .as_i64()
            .ok_or_else(|| rejected("authorization_details lacks amount_minor"))?,
        currency: text("currency")?,
    })
}
