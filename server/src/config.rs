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
    pub webhooks: WebhooksConfig,
    pub alerts: AlertsConfig,
    pub rate_limits: RateLimitsConfig,
    pub limits: LimitsConfig,
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
    /// The admin listener's external URL (the admin UI's OIDC redirect URI
    /// is built from it); `None`: `http://` + the bound admin address.
    pub admin_url: Option<String>,
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
    /// How long dead tokens, families, codes, authorization requests and
    /// login challenges are kept before the janitor deletes them
    /// (`tokens::janitor`).
    pub purge_after: Duration,
    pub purge_interval: Duration,
    /// Client-credentials tokens stored ahead of demand at most, per
    /// client and scope (`tokens::preissue`); 0 turns it off.
    pub preissue: usize,
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
    ("http.admin_url", ""),
    ("keys.dir", "keys"),
    ("tokens.access_ttl", "10m"),
    ("tokens.refresh_ttl", "30d"),
    ("tokens.id_token_ttl", "1h"),
    ("tokens.internal_jwt_ttl", "5m"),
    ("tokens.introspection_cache_ttl", "1s"),
    ("tokens.purge_after", "1d"),
    ("tokens.purge_interval", "1m"),
    ("tokens.preissue", "64"),
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
    ("webhooks.urls", ""),
    ("webhooks.secret", ""),
    ("webhooks.secret_file", ""),
    ("webhooks.events", ""),
    ("webhooks.endpoints", ""),
    ("webhooks.retry_base", "5s"),
    ("webhooks.max_attempts", "12"),
    ("webhooks.max_age", "24h"),
    ("alerts.audit_verify_interval", "1h"),
    ("alerts.error_spike_window", "1m"),
    ("alerts.error_spike_min_requests", "20"),
    ("alerts.error_spike_percent", "50"),
    ("rate_limits.trusted_proxies", ""),
    ("rate_limits.max_keys", "100000"),
    ("rate_limits.login_per_ip", "120/1m"),
    ("rate_limits.login_per_user", "10/1m"),
    ("rate_limits.login_failures_per_ip", "100/1h"),
    ("rate_limits.token_per_ip", "1200/1m"),
    ("rate_limits.token_per_client", "1200/1m"),
    ("rate_limits.introspect_failures_per_ip", "20/1m"),
    ("rate_limits.introspect_per_client", "0"),
    ("rate_limits.account_per_ip", "300/1m"),
    ("rate_limits.admin_per_ip", "1200/1m"),
    ("rate_limits.admin_per_user", "600/1m"),
    ("rate_limits.login_lockout_after", "5"),
    ("rate_limits.login_lockout_base", "1m"),
    ("rate_limits.login_lockout_max", "1h"),
    ("rate_limits.code_lockout_after", "5"),
    ("rate_limits.code_lockout_base", "30s"),
    ("rate_limits.code_lockout_max", "1h"),
    ("rate_limits.lockout_reset", "24h"),
    ("limits.max_body_bytes", "65536"),
    ("limits.max_header_bytes", "16384"),
    ("limits.max_headers", "64"),
    ("limits.max_field_bytes", "8192"),
    ("limits.header_read_timeout", "10s"),
    ("limits.request_timeout", "30s"),
];

const SECTIONS: &[&str] = &[
    "database",
    "http",
    "keys",
    "tokens",
    "sessions",
    "refunds",
    "outbox",
    "mfa",
    "webauthn",
    "log",
    "webhooks",
    "alerts",
    "rate_limits",
    "limits",
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
        let purge_after = parse_key_duration("tokens.purge_after", get("tokens.purge_after"))?;
        let purge_interval =
            parse_key_duration("tokens.purge_interval", get("tokens.purge_interval"))?;
        let preissue: usize = parse_num("tokens.preissue", get("tokens.preissue"), 0, 4096)?;
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
                admin_url: match get("http.admin_url").trim() {
                    "" => None,
                    url => Some(parse_base_url("http.admin_url", url)?),
                },
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
                purge_after,
                purge_interval,
                preissue,
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
            webhooks: parse_webhooks(v)?,
            alerts: parse_alerts(v)?,
            rate_limits: parse_rate_limits(v)?,
            limits: parse_limits(v)?,
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
                    if let Some(text) = webhooks_file_value(&full, value)? {
                        out.insert(full, text);
                        continue;
                    }
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
    parse_base_url("issuer", value)
}

fn parse_base_url(key: &str, value: &str) -> Result<String, ConfigError> {
    let expected =
        "an absolute http(s) URL without query or fragment, e.g. https://auth.example.com";
    let url = url::Url::parse(value).map_err(|_| invalid(key, value, expected))?;
    if !(url.scheme() == "https" || url.scheme() == "http")
        || url.query().is_some()
        || url.fragment().is_some()
        || url.host().is_none()
    {
        return Err(invalid(key, value, expected));
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

/// `[webhooks]`: where security events are POSTed (README "Security events").
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub endpoints: Vec<WebhookEndpoint>,
    /// First retry delay; doubles with every failed attempt (capped at 1 h).
    pub retry_base: Duration,
    /// Attempts before an event is given up on (audited, counted).
    pub max_attempts: i64,
    /// An event still undelivered this long after it happened is given up on.
    pub max_age: Duration,
}

/// One receiver of security events.
#[derive(Clone)]
pub struct WebhookEndpoint {
    /// Absolute http(s) URL.
    pub url: String,
    /// HMAC-SHA256 key for the `Portcullis-Signature` header.
    pub secret: String,
    /// Event types to send (stable names); `None`: all of them.
    pub events: Option<Vec<String>>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field("secret", &crate::telemetry::redact::REDACTED)
            .field("events", &self.events)
            .finish()
    }
}

impl WebhookEndpoint {
    pub fn wants(&self, event_type: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|list| list.iter().any(|e| e == event_type))
    }
}

/// `[alerts]`: security events the server detects by itself.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// How often the background job verifies the audit chain; `None`: off.
    pub audit_verify_interval: Option<Duration>,
    /// Sliding window for the per-client error ratio at /token and /introspect.
    pub error_spike_window: Duration,
    /// Requests a client must make within the window before its ratio counts.
    pub error_spike_min_requests: u32,
    /// Share of 4xx answers (percent) that makes a spike.
    pub error_spike_percent: u32,
}

/// TOML forms of the `[webhooks]` keys, flattened to the text the
/// environment variables take: arrays of strings become comma-separated
/// lists and `[[webhooks.endpoints]]` becomes a JSON array.
fn webhooks_file_value(full: &str, value: &toml::Value) -> Result<Option<String>, ConfigError> {
    match (full, value) {
        ("webhooks.urls" | "webhooks.events", toml::Value::Array(items)) => {
            let mut parts = Vec::new();
            for item in items {
                let toml::Value::String(s) = item else {
                    return Err(invalid(full, &item.to_string(), "an array of strings"));
                };
                parts.push(s.clone());
            }
            Ok(Some(parts.join(",")))
        }
        ("webhooks.endpoints", toml::Value::Array(_)) => serde_json::to_string(value)
            .map(Some)
            .map_err(|_| invalid(full, "[…]", WEBHOOK_ENDPOINTS_EXPECTED)),
        ("webhooks.endpoints", _) => Err(invalid(full, "…", WEBHOOK_ENDPOINTS_EXPECTED)),
        _ => Ok(None),
    }
}

const WEBHOOK_ENDPOINTS_EXPECTED: &str = "an array of tables [[webhooks.endpoints]] with `url`, \
     `secret` or `secret_file`, and optionally `events` (environment: the same as a JSON array)";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    url: String,
    secret: Option<String>,
    secret_file: Option<String>,
    #[serde(default)]
    events: Vec<String>,
}

fn parse_webhooks(v: &BTreeMap<String, String>) -> Result<WebhooksConfig, ConfigError> {
    let get = |key: &str| v.get(key).map(String::as_str).unwrap_or("").trim();
    let mut endpoints = Vec::new();
    let urls: Vec<&str> = get("webhooks.urls")
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let shared_secret = webhook_secret(
        "webhooks",
        Some(get("webhooks.secret")).filter(|s| !s.is_empty()),
        Some(get("webhooks.secret_file")).filter(|s| !s.is_empty()),
    );
    if urls.is_empty() {
        if !get("webhooks.secret").is_empty() || !get("webhooks.secret_file").is_empty() {
            return Err(invalid(
                "webhooks.urls",
                "",
                "at least one URL when webhooks.secret or webhooks.secret_file is set",
            ));
        }
    } else {
        let secret = shared_secret?;
        let events = parse_event_list("webhooks.events", get("webhooks.events").split(','))?;
        for url in urls {
            endpoints.push(WebhookEndpoint {
                url: parse_webhook_url("webhooks.urls", url)?,
                secret: secret.clone(),
                events: events.clone(),
            });
        }
    }
    let listed = get("webhooks.endpoints");
    if !listed.is_empty() {
        let key = "webhooks.endpoints";
        let specs: Vec<EndpointSpec> = serde_json::from_str(listed).map_err(|e| {
            // The message names the problem without echoing the text, which may hold secrets.
            invalid(
                key,
                &format!("(not readable: {})", json_error_kind(&e)),
                WEBHOOK_ENDPOINTS_EXPECTED,
            )
        })?;
        for (i, spec) in specs.into_iter().enumerate() {
            let at = format!("{key}[{i}]");
            endpoints.push(WebhookEndpoint {
                url: parse_webhook_url(&format!("{at}.url"), &spec.url)?,
                secret: webhook_secret(&at, spec.secret.as_deref(), spec.secret_file.as_deref())?,
                events: parse_event_list(
                    &format!("{at}.events"),
                    spec.events.iter().map(String::as_str),
                )?,
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &endpoints {
        if !seen.insert(e.url.as_str()) {
            return Err(invalid(
                "webhooks",
                &e.url,
                "each webhook URL listed once (its secret is looked up by URL)",
            ));
        }
    }
    Ok(WebhooksConfig {
        endpoints,
        retry_base: parse_key_duration("webhooks.retry_base", get("webhooks.retry_base"))?,
        max_attempts: parse_num(
            "webhooks.max_attempts",
            get("webhooks.max_attempts"),
            1,
            100,
        )?,
        max_age: parse_key_duration("webhooks.max_age", get("webhooks.max_age"))?,
    })
}

/// What is wrong with a JSON text, without quoting it.
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "JSON syntax error",
        serde_json::error::Category::Data => "missing, unknown or mistyped field",
        serde_json::error::Category::Eof => "unexpected end",
    }
}

fn parse_webhook_url(key: &str, value: &str) -> Result<String, ConfigError> {
    let expected = "an absolute http:// or https:// URL";
    let url = url::Url::parse(value.trim()).map_err(|_| invalid(key, value, expected))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(key, value, expected));
    }
    Ok(url.to_string())
}

/// The secret of `at` from `secret` or `secret_file` (exactly one, non-empty).
/// Error messages never contain the secret.
fn webhook_secret(
    at: &str,
    secret: Option<&str>,
    secret_file: Option<&str>,
) -> Result<String, ConfigError> {
    let text = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &format!("{at}.secret"),
                "[redacted]",
                "either a secret or a secret_file, not both",
            ));
        }
        (Some(s), None) => s.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            invalid(
                &format!("{at}.secret_file"),
                path,
                &format!("a readable file holding the webhook secret ({e})"),
            )
        })?,
        (None, None) => String::new(),
    };
    let text = text.trim_end_matches(['\r', '\n']).to_string();
    if text.trim().is_empty() {
        return Err(invalid(
            &format!("{at}.secret"),
            "",
            "a non-empty shared secret (or secret_file) to sign webhook requests with",
        ));
    }
    Ok(text)
}

fn parse_event_list<'a>(
    key: &str,
    items: impl Iterator<Item = &'a str>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let mut out = Vec::new();
    for item in items.map(str::trim).filter(|i| !i.is_empty()) {
        if crate::security::events::is_event_type(item) {
            out.push(item.to_string());
        } else {
            let names: Vec<&str> = crate::security::events::EVENT_TYPES
                .iter()
                .map(|t| t.name)
                .collect();
            return Err(invalid(
                key,
                item,
                &format!("security event names: {}", names.join(", ")),
            ));
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn parse_alerts(v: &BTreeMap<String, String>) -> Result<AlertsConfig, ConfigError> {
    let get = |key: &str| v.get(key).map(String::as_str).unwrap_or("").trim();
    let interval = get("alerts.audit_verify_interval");
    Ok(AlertsConfig {
        audit_verify_interval: match interval {
            "off" => None,
            _ => Some(
                parse_duration(interval)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        invalid(
                            "alerts.audit_verify_interval",
                            interval,
                            "a duration such as 10m or 1h, or `off`",
                        )
                    })?,
            ),
        },
        error_spike_window: parse_key_duration(
            "alerts.error_spike_window",
            get("alerts.error_spike_window"),
        )?,
        error_spike_min_requests: parse_num(
            "alerts.error_spike_min_requests",
            get("alerts.error_spike_min_requests"),
            1,
            1_000_000,
        )?,
        error_spike_percent: parse_num(
            "alerts.error_spike_percent",
            get("alerts.error_spike_percent"),
            1,
            100,
        )?,
    })
}

/// A rate limit: at most `count` requests at once, refilling at `count`
/// per `period` (`rate_limits.*` values such as `30/1m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

/// `[rate_limits]`: request rate limits per endpoint class and key
/// (`security::limits`) and the exponential lockout of logins and codes
/// (`security::lockout`). A rate of `None` is off (`0` in the file).
#[derive(Debug, Clone)]
pub struct RateLimitsConfig {
    /// Peers whose `X-Forwarded-For` is believed (IPs or CIDR networks).
    pub trusted_proxies: Vec<crate::security::limits::IpNet>,
    /// Upper bound on the keys the in-memory limiter holds.
    pub max_keys: usize,
    pub login_per_ip: Option<Rate>,
    pub login_per_user: Option<Rate>,
    pub login_failures_per_ip: Option<Rate>,
    pub token_per_ip: Option<Rate>,
    pub token_per_client: Option<Rate>,
    pub introspect_failures_per_ip: Option<Rate>,
    pub introspect_per_client: Option<Rate>,
    pub account_per_ip: Option<Rate>,
    pub admin_per_ip: Option<Rate>,
    pub admin_per_user: Option<Rate>,
    /// Passwords: failures before the first lock, its length, the cap.
    pub login_lockout: LockoutConfig,
    /// Second-factor codes (TOTP, recovery codes, security keys).
    pub code_lockout: LockoutConfig,
}

/// One exponential lockout policy: after `after` failures the subject is
/// locked for `base`, doubling with every further failure up to `max`. A
/// subject without failures for `reset` starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutConfig {
    pub after: i64,
    pub base: Duration,
    pub max: Duration,
    pub reset: Duration,
}

fn parse_rate_limits(v: &BTreeMap<String, String>) -> Result<RateLimitsConfig, ConfigError> {
    let get = |key: &str| v.get(key).map(String::as_str).unwrap_or("").trim();
    let rate = |key: &str| parse_rate(key, get(key));
    let mut trusted_proxies = Vec::new();
    for part in get("rate_limits.trusted_proxies")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        trusted_proxies.push(crate::security::limits::IpNet::parse(part).ok_or_else(|| {
            invalid(
                "rate_limits.trusted_proxies",
                part,
                "IP addresses or CIDR networks separated by commas, e.g. 10.0.0.0/8,::1",
            )
        })?);
    }
    let reset = parse_key_duration(
        "rate_limits.lockout_reset",
        get("rate_limits.lockout_reset"),
    )?;
    let lockout = |prefix: &str| -> Result<LockoutConfig, ConfigError> {
        let key = |k: &str| format!("rate_limits.{prefix}_lockout_{k}");
        let after = parse_num(&key("after"), get(&key("after")), 1, 1000)?;
        let base = parse_key_duration(&key("base"), get(&key("base")))?;
        let max = parse_key_duration(&key("max"), get(&key("max")))?;
        if max < base {
            return Err(invalid(
                &key("max"),
                get(&key("max")),
                &format!("a duration no shorter than {}", key("base")),
            ));
        }
        Ok(LockoutConfig {
            after,
            base,
            max,
            reset,
        })
    };
    Ok(RateLimitsConfig {
        trusted_proxies,
        max_keys: parse_num(
            "rate_limits.max_keys",
            get("rate_limits.max_keys"),
            100,
            100_000_000,
        )?,
        login_per_ip: rate("rate_limits.login_per_ip")?,
        login_per_user: rate("rate_limits.login_per_user")?,
        login_failures_per_ip: rate("rate_limits.login_failures_per_ip")?,
        token_per_ip: rate("rate_limits.token_per_ip")?,
        token_per_client: rate("rate_limits.token_per_client")?,
        introspect_failures_per_ip: rate("rate_limits.introspect_failures_per_ip")?,
        introspect_per_client: rate("rate_limits.introspect_per_client")?,
        account_per_ip: rate("rate_limits.account_per_ip")?,
        admin_per_ip: rate("rate_limits.admin_per_ip")?,
        admin_per_user: rate("rate_limits.admin_per_user")?,
        login_lockout: lockout("login")?,
        code_lockout: lockout("code")?,
    })
}

/// `N/period` (`30/1m`, `5/s`) or `0` for off.
fn parse_rate(key: &str, value: &str) -> Result<Option<Rate>, ConfigError> {
    let expected = "a rate such as 30/1m (at most 30 at once, refilling 30 per minute; \
                    count 1 to 1000000, period 1s to 30d) or 0 to turn the limit off";
    let value = value.trim();
    if value == "0" {
        return Ok(None);
    }
    let Some((count, period)) = value.split_once('/') else {
        return Err(invalid(key, value, expected));
    };
    let period = period.trim();
    let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(period)
    } else {
        parse_duration(&format!("1{period}"))
    };
    match (count.trim().parse::<u32>(), period) {
        (Ok(count), Some(period))
            if (1..=1_000_000).contains(&count)
                && !period.is_zero()
                && period <= Duration::from_secs(30 * 86_400) =>
        {
            Ok(Some(Rate { count, period }))
        }
        _ => Err(invalid(key, value, expected)),
    }
}

/// `[limits]`: request size limits and slow-client timeouts
/// (`security::hardening`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Largest request body; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers); larger: 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more: 431.
    pub max_headers: usize,
    /// Longest decoded query or form parameter (name or value); longer: 400.
    pub max_field_bytes: usize,
    /// A client must send its whole request head within this time, or the
    /// connection is closed (slowloris); also how long an idle keep-alive
    /// connection is kept.
    pub header_read_timeout: Duration,
    /// Reading the body and answering must finish within this time (408).
    pub request_timeout: Duration,
}

fn parse_limits(v: &BTreeMap<String, String>) -> Result<LimitsConfig, ConfigError> {
    let get = |key: &str| v.get(key).map(String::as_str).unwrap_or("").trim();
    let num = |key: &str, min: usize, max: usize| parse_num(key, get(key), min, max);
    let max_header_bytes = num("limits.max_header_bytes", 8192, 1024 * 1024)?;
    let max_field_bytes = num("limits.max_field_bytes", 256, 1024 * 1024)?;
    Ok(LimitsConfig {
        max_body_bytes: num("limits.max_body_bytes", 1024, 64 * 1024 * 1024)?,
        max_header_bytes,
        max_headers: num("limits.max_headers", 16, 1000)?,
        max_field_bytes,
        header_read_timeout: parse_key_duration(
            "limits.header_read_timeout",
            get("limits.header_read_timeout"),
        )?,
        request_timeout: parse_key_duration(
            "limits.request_timeout",
            get("limits.request_timeout"),
        )?,
    })
}
