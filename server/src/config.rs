//! `portcullis.toml` plus `PORTCULLIS_<SECTION>_<KEY>` environment overrides.
//! Every key is parsed here, and a bad value names the key and what was
//! expected, so start-up fails with a sentence an operator can act on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub issuer: String,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub keys: KeysConfig,
    pub tokens: TokensConfig,
    pub sessions: SessionsConfig,
    pub refunds: RefundsConfig,
    pub outbox: OutboxConfig,
    pub mfa: MfaConfig,
    pub webauthn: WebauthnConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct WebauthnConfig {
    pub user_verification: UserVerification,
}

/// `webauthn.user_verification`: must the authenticator verify the person
/// (PIN, biometric) on every use?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserVerification {
    /// Passkeys: verification on every registration and sign-in.
    Required,
    /// Security keys: verification when the key supports it.
    Preferred,
}

impl UserVerification {
    pub fn as_str(self) -> &'static str {
        match self {
            UserVerification::Required => "required",
            UserVerification::Preferred => "preferred",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MfaConfig {
    /// Sensitive actions need a second factor used within this long.
    pub step_up_max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// First retry delay; doubles with every failed attempt (capped at 1 h).
    pub retry_base: Duration,
    /// Attempts before a message is given up on (audited, counted).
    pub max_attempts: i64,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub id_token_ttl: Duration,
    /// Lifetime of internal JWTs minted by token exchange / introspection.
    pub internal_jwt_ttl: Duration,
    /// Upper bound on how long an introspection result may be served from
    /// memory; revocations also clear the cache at once (LISTEN/NOTIFY).
    pub introspection_cache_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RefundsConfig {
    /// Per ISO 4217 currency, in minor units; currencies not listed use
    /// [`RefundsConfig::default_threshold`].
    pub four_eyes_threshold: BTreeMap<String, i64>,
    pub default_threshold: i64,
    /// How long a request may wait for approval before it expires.
    pub pending_ttl: Duration,
    /// How long an Idempotency-Key and its stored response are kept.
    pub idempotency_ttl: Duration,
    /// `aud` of approval tokens: the payments service.
    pub payments_audience: String,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `portcullis=debug,info`.
    pub level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("invalid value {value:?} for configuration key `{key}`: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    #[error("unknown configuration key `{0}` (check the spelling against the README)")]
    Unknown(String),
}

/// Every key with its default, in the order the README documents them.
const DEFAULTS: &[(&str, &str)] = &[
    ("issuer", "http://127.0.0.1:8080"),
    ("database.url", "sqlite://data/portcullis.db?mode=rwc"),
    ("database.max_connections", "16"),
    ("http.public_addr", "127.0.0.1:8080"),
    ("http.admin_addr", "127.0.0.1:8081"),
    ("keys.dir", "keys"),
    ("tokens.access_ttl", "10m"),
    ("tokens.refresh_ttl", "30d"),
    ("tokens.id_token_ttl", "1h"),
    ("tokens.internal_jwt_ttl", "5m"),
    ("tokens.introspection_cache_ttl", "1s"),
    ("sessions.idle_timeout", "30m"),
    ("sessions.absolute_timeout", "12h"),
    ("refunds.four_eyes_threshold", ""),
    ("refunds.default_threshold", "10000"),
    ("refunds.pending_ttl", "24h"),
    ("refunds.idempotency_ttl", "24h"),
    ("refunds.payments_audience", "payments"),
    ("outbox.retry_base", "5s"),
    ("outbox.max_attempts", "8"),
    ("mfa.step_up_max_age", "5m"),
    ("webauthn.user_verification", "required"),
    ("log.level", "info"),
];

const SECTIONS: &[&str] = &[
    "database", "http", "keys", "tokens", "sessions", "refunds", "outbox", "mfa", "webauthn", "log",
];

impl Config {
    /// Loads `file` (if given, it must exist), then applies the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut values: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        path: path.display().to_string(),
                        message: e.message().to_string(),
                    })?;
            flatten_file(&table, &mut values)?;
        }
        for (name, value) in env {
            if let Some(key) = env_key(&name) {
                if !values.contains_key(&key) {
                    return Err(ConfigError::Unknown(name));
                }
                values.insert(key, value);
            }
        }
        Self::from_values(&values)
    }

    fn from_values(v: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let get = |key: &str| v.get(key).map(String::as_str).unwrap_or("");
        let issuer = parse_issuer(get("issuer"))?;
        let database_url = get("database.url").to_string();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                &database_url,
                "a sqlite://… or postgres://… URL",
            ));
        }
        let max_connections: u32 = parse_num(
            "database.max_connections",
            get("database.max_connections"),
            1,
            1000,
        )?;
        let access_ttl = parse_key_duration("tokens.access_ttl", get("tokens.access_ttl"))?;
        let refresh_ttl = parse_key_duration("tokens.refresh_ttl", get("tokens.refresh_ttl"))?;
        let id_token_ttl = parse_key_duration("tokens.id_token_ttl", get("tokens.id_token_ttl"))?;
        let internal_jwt_ttl =
            parse_key_duration("tokens.internal_jwt_ttl", get("tokens.internal_jwt_ttl"))?;
        let introspection_cache_ttl = parse_key_duration(
            "tokens.introspection_cache_ttl",
            get("tokens.introspection_cache_ttl"),
        )?;
        let idle_timeout =
            parse_key_duration("sessions.idle_timeout", get("sessions.idle_timeout"))?;
        let absolute_timeout = parse_key_duration(
            "sessions.absolute_timeout",
            get("sessions.absolute_timeout"),
        )?;
        if idle_timeout > absolute_timeout {
            return Err(invalid(
                "sessions.idle_timeout",
                get("sessions.idle_timeout"),
                "a duration no longer than sessions.absolute_timeout",
            ));
        }
        Ok(Config {
            issuer,
            database: DatabaseConfig {
                url: database_url,
                max_connections,
            },
            http: HttpConfig {
                public_addr: parse_addr("http.public_addr", get("http.public_addr"))?,
                admin_addr: parse_addr("http.admin_addr", get("http.admin_addr"))?,
            },
            keys: KeysConfig {
                dir: PathBuf::from(get("keys.dir")),
            },
            tokens: TokensConfig {
                access_ttl,
                refresh_ttl,
                id_token_ttl,
                internal_jwt_ttl,
                introspection_cache_ttl,
            },
            sessions: SessionsConfig {
                idle_timeout,
                absolute_timeout,
            },
            refunds: RefundsConfig {
                four_eyes_threshold: parse_thresholds(get("refunds.four_eyes_threshold"))?,
                default_threshold: parse_num(
                    "refunds.default_threshold",
                    get("refunds.default_threshold"),
                    0,
                    i64::MAX,
                )?,
                pending_ttl: parse_key_duration("refunds.pending_ttl", get("refunds.pending_ttl"))?,
                idempotency_ttl: parse_key_duration(
                    "refunds.idempotency_ttl",
                    get("refunds.idempotency_ttl"),
                )?,
                payments_audience: parse_audience(
                    "refunds.payments_audience",
                    get("refunds.payments_audience"),
                )?,
            },
            outbox: OutboxConfig {
                retry_base: parse_key_duration("outbox.retry_base", get("outbox.retry_base"))?,
                max_attempts: parse_num("outbox.max_attempts", get("outbox.max_attempts"), 1, 100)?,
            },
            mfa: MfaConfig {
                step_up_max_age: parse_key_duration(
                    "mfa.step_up_max_age",
                    get("mfa.step_up_max_age"),
                )?,
            },
            webauthn: WebauthnConfig {
                user_verification: match get("webauthn.user_verification") {
                    "required" => UserVerification::Required,
                    "preferred" => UserVerification::Preferred,
                    other => {
                        return Err(invalid(
                            "webauthn.user_verification",
                            other,
                            "`required` or `preferred`",
                        ));
                    }
                },
            },
            log: LogConfig {
                level: get("log.level").to_string(),
            },
        })
    }

    /// Defaults only; for tests and tools that need a starting point.
    pub fn defaults() -> Result<Config, ConfigError> {
        Self::load_with_env(None, std::iter::empty())
    }

    /// How long a retired signing key stays in JWKS: the longest lifetime of
    /// any JWT signed with it, plus clock-skew margin.
    pub fn retired_key_retention(&self) -> Duration {
        self.tokens
            .access_ttl
            .max(self.tokens.id_token_ttl)
            .max(self.tokens.internal_jwt_ttl)
            + Duration::from_secs(300)
    }
}

/// `PORTCULLIS_TOKENS_ACCESS_TTL` → `tokens.access_ttl`; `PORTCULLIS_ISSUER` → `issuer`.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("PORTCULLIS_")?.to_ascii_lowercase();
    // Variables for the test suite and CI tooling, not for the server.
    if rest.starts_with("test_") || rest == "venv" {
        return None;
    }
    if rest == "issuer" {
        return Some(rest);
    }
    for section in SECTIONS {
        if let Some(key) = rest.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            return Some(format!("{section}.{key}"));
        }
    }
    // Any other PORTCULLIS_ variable is a typo: reported as an unknown key.
    Some(rest)
}

fn flatten_file(
    table: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        match value {
            toml::Value::Table(section) if SECTIONS.contains(&name.as_str()) => {
                for (key, value) in section {
                    let full = format!("{name}.{key}");
                    if full == "refunds.four_eyes_threshold" {
                        let text = threshold_table_to_string(&full, value)?;
                        out.insert(full, text);
                        continue;
                    }
                    if !out.contains_key(&full) {
                        return Err(ConfigError::Unknown(full));
                    }
                    out.insert(full.clone(), scalar_to_string(&full, value)?);
                }
            }
            _ if name == "issuer" => {
                out.insert(name.clone(), scalar_to_string(name, value)?);
            }
            _ => return Err(ConfigError::Unknown(name.clone())),
        }
    }
    Ok(())
}

fn scalar_to_string(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(invalid(key, &other.to_string(), "a string or a number")),
    }
}

/// `[refunds.four_eyes_threshold] EUR = 10000` → `"EUR=10000"`, the same text
/// form the environment variable takes.
fn threshold_table_to_string(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    let toml::Value::Table(table) = value else {
        return Err(invalid(
            key,
            &value.to_string(),
            "a table of currency = minor units, e.g. EUR = 10000",
        ));
    };
    let mut parts = Vec::new();
    for (currency, amount) in table {
        let toml::Value::Integer(amount) = amount else {
            return Err(invalid(
                &format!("{key}.{currency}"),
                &amount.to_string(),
                "an integer amount in minor units",
            ));
        };
        parts.push(format!("{currency}={amount}"));
    }
    Ok(parts.join(","))
}

fn parse_thresholds(text: &str) -> Result<BTreeMap<String, i64>, ConfigError> {
    let key = "refunds.four_eyes_threshold";
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((currency, amount)) = part.split_once('=') else {
            return Err(invalid(
                key,
                part,
                "CURRENCY=MINOR_UNITS pairs separated by commas, e.g. EUR=10000,USD=10000",
            ));
        };
        let currency = currency.trim();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                key,
                currency,
                "a three-letter ISO 4217 currency code such as EUR",
            ));
        }
        let amount: i64 = parse_num(&format!("{key}.{currency}"), amount.trim(), 0, i64::MAX)?;
        out.insert(currency.to_string(), amount);
    }
    Ok(out)
}

fn parse_audience(key: &str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    if v.is_empty() || v.len() > 200 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            value,
            "a non-empty audience name without spaces, e.g. payments",
        ));
    }
    Ok(v.to_string())
}

fn parse_issuer(value: &str) -> Result<String, ConfigError> {
    let expected =
        "an absolute http(s) URL without query or fragment, e.g. https://auth.example.com";
    let url = url::Url::parse(value).map_err(|_| invalid("issuer", value, expected))?;
    if !(url.scheme() == "https" || url.scheme() == "http")
        || url.query().is_some()
        || url.fragment().is_some()
        || url.host().is_none()
    {
        return Err(invalid("issuer", value, expected));
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, value, "an IP address and port, e.g. 127.0.0.1:8080"))
}

fn parse_num<T>(key: &str, value: &str, min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(invalid(
            key,
            value,
            &format!("a whole number from {min} to {max}"),
        )),
    }
}

fn parse_key_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    match parse_duration(value) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(invalid(
            key,
            value,
            "a duration such as 3s, 10m, 12h or 30d",
        )),
    }
}

/// `3s`, `10m`, `12h`, `30d` (a whole number and one unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_at);
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn invalid(key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}
