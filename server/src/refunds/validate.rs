//! Input rules for refund requests: ISO 4217 currencies, integer minor-unit
//! amounts (never floats), and the text fields. Every refusal is a sentence
//! the caller can act on.

use serde_json::{Map, Value};

use super::RefundError;

/// Active ISO 4217 codes of currencies in circulation (2025 list). Fund codes (BOV, CHE, …), precious
/// metals (XAU, …), bond-market units, SDR and the test codes XTS/XXX are
/// left out: nobody refunds a payment in them.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW",
    "ZWG",
];

/// True for an active ISO 4217 code (exact, upper case).
pub fn is_currency(code: &str) -> bool {
    ISO_4217.contains(&code)
}

/// The ISO 4217 code for `text`: three letters, case-insensitive, and
/// on the list of active codes.
pub fn currency(text: &str) -> Result<String, RefundError> {
    let code = text.trim().to_ascii_uppercase();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RefundError::invalid(format!(
            "currency must be a three-letter ISO 4217 code such as EUR, not {text:?}"
        )));
    }
    if !is_currency(&code) {
        return Err(RefundError::invalid(format!(
            "currency {code:?} is not an active ISO 4217 currency code"
        )));
    }
    Ok(code)
}

/// `amount_minor`: a JSON integer of minor units, 1 ..= i64::MAX.
pub fn amount_minor(value: Option<&Value>) -> Result<i64, RefundError> {
    let field = "amount_minor";
    let bad = |why: &str| {
        Err(RefundError::invalid(format!(
            "{field} {why}; send a whole number of minor units, e.g. 1050 for 10.50 EUR"
        )))
    };
    match value {
        None | Some(Value::Null) => bad("is required"),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                if i > 0 {
                    Ok(i)
                } else {
                    bad("must be greater than zero")
                }
            } else if n.is_u64() {
                bad(&format!("is too large (at most {})", i64::MAX))
            } else {
                // serde_json reads a decimal point, an exponent, or an integer
                // beyond u64 as a float.
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() && f.fract() == 0.0 && f.abs() >= 9.2e18 {
                    if f > 0.0 {
                        bad(&format!("is too large (at most {})", i64::MAX))
                    } else {
                        bad("must be greater than zero")
                    }
                } else {
                    bad("must be an integer, not a decimal or exponent number")
                }
            }
        }
        Some(Value::String(_)) => bad("must be a JSON number, not a string"),
        Some(_) => bad("must be a JSON integer"),
    }
}

/// A required, trimmed text field of at most `max` characters, without
/// control characters.
pub fn text(body: &Map<String, Value>, field: &str, max: usize) -> Result<String, RefundError> {
    optional_text(body, field, max)?
        .ok_or_else(|| RefundError::invalid(format!("{field} is required")))
}

/// Like [`text`], but absent, `null` or blank is `None`.
pub fn optional_text(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, RefundError> {
    let text = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(_) => {
            return Err(RefundError::invalid(format!("{field} must be a string")));
        }
    };
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > max {
        return Err(RefundError::invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(RefundError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(Some(text.to_string()))
}

/// Refuses members other than `allowed`, so a misspelt field is an error
/// rather than silently ignored.
pub fn only_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), RefundError> {
    if let Some(unknown) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(RefundError::invalid(format!(
            "unknown field {unknown:?}; expected {}",
            allowed.join(", ")
        )));
    }
    Ok(())
}

/// Parses a JSON object body.
pub fn object(bytes: &[u8], shape: &str) -> Result<Map<String, Value>, RefundError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RefundError::invalid(format!("send a JSON object {shape}"))),
        Err(e) => Err(RefundError::invalid(format!(
            "the body is not valid JSON ({e}); send {shape}"
        ))),
    }
}
