//! Strict `application/x-www-form-urlencoded` parsing for protocol
//! endpoints: RFC 6749 §3.1 forbids repeating a parameter, and a parameter
//! sent without a value is treated as omitted.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("parameter `{0}` was sent more than once")]
    Duplicate(String),
    #[error("the request contains a malformed or non-UTF-8 parameter")]
    Malformed,
}

#[derive(Debug, Default)]
pub struct Params {
    values: HashMap<String, String>,
    duplicates: Vec<String>,
}

impl Params {
    pub fn parse(input: &[u8]) -> Result<Params, FormError> {
        let mut params = Params::default();
        // `form_urlencoded::parse` decodes lossily: check every name and
        // value for invalid UTF-8 (and NUL) first, one by one.
        crate::security::hardening::check_params(input, usize::MAX, true)
            .map_err(|_| FormError::Malformed)?;
        for (k, v) in form_urlencoded::parse(input) {
            if k.contains('\0') || v.contains('\0') {
                return Err(FormError::Malformed);
            }
            if v.is_empty() {
                continue;
            }
            if params
                .values
                .insert(k.to_string(), v.into_owned())
                .is_some()
            {
                params.duplicates.push(k.into_owned());
            }
        }
        Ok(params)
    }

    /// The parameter's value; an error if it was repeated.
    pub fn get(&self, name: &str) -> Result<Option<&str>, FormError> {
        if self.duplicates.iter().any(|d| d == name) {
            return Err(FormError::Duplicate(name.to_string()));
        }
        Ok(self.values.get(name).map(String::as_str))
    }

    /// First repeated parameter, if any.
    pub fn first_duplicate(&self) -> Option<&str> {
        self.duplicates.first().map(String::as_str)
    }

    /// Lenient access for HTML forms (duplicates resolve to the last value).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}
