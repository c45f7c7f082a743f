//! Rate limits: an in-memory GCRA (generic cell rate algorithm, i.e. a
//! token bucket without a refill task) keyed by (rule, key), where a rule is
//! an endpoint class and a key kind — per IP, per username, per client, per
//! staff user — each configured in `[rate_limits]` as `N/period` (at most
//! `N` at once, refilling at `N` per period) or `0` for off.
//!
//! Classes: `login` (POST `/login`, `/login/mfa`, `/login/webauthn/…`,
//! `/login/passkey/…`), `token` (`/token`), `introspect` (`/introspect`:
//! per IP only for callers that fail client authentication, so gateways are
//! not throttled; per client off by default), `account` (`/account/…`) and
//! `admin` (everything on the admin listener but the probes). Failed logins
//! and codes also feed a per-IP failure budget (`login_failures_per_ip`).
//!
//! Memory is bounded: at most `rate_limits.max_keys` keys, in shards; a key
//! whose bucket is full again carries no state and is dropped first, then
//! the keys closest to full. Limits are per process (each replica counts on
//! its own); the lockout (`security::lockout`) is the persistent defence.
//!
//! Client IPs come from the socket. `X-Forwarded-For` is read only when the
//! socket peer is in `rate_limits.trusted_proxies`: the address is the
//! right-most entry that is not itself a trusted proxy. IPv6 clients are
//! keyed by their /64, which one subscriber usually holds whole.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::config::{Rate, RateLimitsConfig};

/// Endpoint classes, as named in `/metrics` (`portcullis_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Login,
    Token,
    Introspect,
    Account,
    Admin,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Login,
        Class::Token,
        Class::Introspect,
        Class::Account,
        Class::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Login => "login",
            Class::Token => "token",
            Class::Introspect => "introspect",
            Class::Account => "account",
            Class::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One limit: an endpoint class and what it is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Login requests per client IP.
    LoginPerIp,
    /// Login requests per normalised username (password step) or user id
    /// (second-factor step).
    LoginPerUser,
    /// Failed logins and codes per client IP (checked before each attempt,
    /// charged by each failure).
    LoginFailuresPerIp,
    TokenPerIp,
    /// Charged only when the client authenticated (a wrong secret does not
    /// use up the real client's budget).
    TokenPerClient,
    /// Introspection calls that failed client authentication, per IP.
    IntrospectFailuresPerIp,
    /// Introspection calls per authenticated client.
    IntrospectPerClient,
    AccountPerIp,
    AdminPerIp,
    /// Admin API calls per staff user (bearer token's user).
    AdminPerUser,
}

impl Rule {
    pub const ALL: [Rule; 10] = [
        Rule::LoginPerIp,
        Rule::LoginPerUser,
        Rule::LoginFailuresPerIp,
        Rule::TokenPerIp,
        Rule::TokenPerClient,
        Rule::IntrospectFailuresPerIp,
        Rule::IntrospectPerClient,
        Rule::AccountPerIp,
        Rule::AdminPerIp,
        Rule::AdminPerUser,
    ];

    pub fn class(self) -> Class {
        match self {
            Rule::LoginPerIp | Rule::LoginPerUser | Rule::LoginFailuresPerIp => Class::Login,
            Rule::TokenPerIp | Rule::TokenPerClient => Class::Token,
            Rule::IntrospectFailuresPerIp | Rule::IntrospectPerClient => Class::Introspect,
            Rule::AccountPerIp => Class::Account,
            Rule::AdminPerIp | Rule::AdminPerUser => Class::Admin,
        }
    }

    fn rate(self, c: &RateLimitsConfig) -> Option<Rate> {
        match self {
            Rule::LoginPerIp => c.login_per_ip,
            Rule::LoginPerUser => c.login_per_user,
            Rule::LoginFailuresPerIp => c.login_failures_per_ip,
            Rule::TokenPerIp => c.token_per_ip,
            Rule::TokenPerClient => c.token_per_client,
            Rule::IntrospectFailuresPerIp => c.introspect_failures_per_ip,
            Rule::IntrospectPerClient => c.introspect_per_client,
            Rule::AccountPerIp => c.account_per_ip,
            Rule::AdminPerIp => c.admin_per_ip,
            Rule::AdminPerUser => c.admin_per_user,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A refused request: which rule, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub rule: Rule,
    /// Whole seconds until one more request would pass (at least 1).
    pub retry_after: u64,
}

/// An IP network from `rate_limits.trusted_proxies` (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `ADDR` or `ADDR/PREFIX`; `None` if not one.
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The limiter key of a client address: IPv4 as is, IPv6 by its /64.
pub fn ip_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The client's address as the limiter sees it, put into the request's
/// extensions by the limiter middleware (handlers read it from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// GCRA parameters of one rule, in units of µs × count so that the
/// emission interval (`period / count`) is exact.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    count: i128,
    /// The period in µs; one request advances the scaled TAT by this much.
    period_us: i128,
}

impl Gcra {
    fn new(rate: Rate) -> Gcra {
        Gcra {
            count: i128::from(rate.count.max(1)),
            period_us: i128::try_from(rate.period.as_micros())
                .unwrap_or(i128::MAX / 4)
                .max(1),
        }
    }

    fn now_scaled(&self, now_ms: i64) -> i128 {
        i128::from(now_ms) * 1000 * self.count
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Theoretical arrival time, scaled (µs × count).
    tat: i128,
    /// When the bucket is full again (ms): from then on the slot carries no
    /// state and may be dropped.
    idle_at_ms: i64,
}

type Shard = HashMap<(Rule, Box<str>), Slot>;

const SHARDS: usize = 16;

/// The in-memory limiter: one per process, in `AppState`.
#[derive(Debug)]
pub struct RateLimiter {
    rates: [Option<Gcra>; Rule::ALL.len()],
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    trusted_proxies: Vec<IpNet>,
}

impl RateLimiter {
    pub fn new(config: &RateLimitsConfig) -> RateLimiter {
        let rates = Rule::ALL.map(|r| r.rate(config).filter(|r| r.count > 0).map(Gcra::new));
        RateLimiter {
            rates,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (config.max_keys / SHARDS).max(8),
            hasher: RandomState::new(),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    pub fn enabled(&self, rule: Rule) -> bool {
        self.rates[rule.index()].is_some()
    }

    /// Counts one request against `rule` for `key`; `Err` (and nothing
    /// counted) when the budget is spent.
    pub fn hit(&self, rule: Rule, key: &str, now_ms: i64) -> Result<(), Limited> {
        self.run(rule, key, now_ms, true)
    }

    /// Would [`hit`](Self::hit) pass? Counts nothing.
    pub fn peek(&self, rule: Rule, key: &str, now_ms: i64) -> Result<(), Limited> {
        self.run(rule, key, now_ms, false)
    }

    /// Keys currently held (for tests and diagnostics).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn run(&self, rule: Rule, key: &str, now_ms: i64, charge: bool) -> Result<(), Limited> {
        let Some(g) = self.rates[rule.index()] else {
            return Ok(());
        };
        let k: (Rule, Box<str>) = (rule, key.chars().take(256).collect::<String>().into());
        let shard =
            &self.shards[usize::try_from(self.hasher.hash_one(&k) % SHARDS as u64).unwrap_or(0)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = g.now_scaled(now_ms);
        let tat = map.get(&k).map_or(now, |s| s.tat).max(now);
        let new_tat = tat + g.period_us;
        let tolerance = g.period_us * g.count;
        if new_tat - now > tolerance {
            // The next request fits once the scaled TAT is within tolerance.
            let wait_us = (new_tat - tolerance - now) / g.count;
            let secs = (wait_us + 999_999) / 1_000_000;
            return Err(Limited {
                rule,
                retry_after: u64::try_from(secs.max(1)).unwrap_or(u64::MAX),
            });
        }
        if charge {
            let idle_at_ms = i64::try_from(new_tat / g.count / 1000 + 1).unwrap_or(i64::MAX);
            if !map.contains_key(&k) && map.len() >= self.per_shard {
                evict(&mut map, self.per_shard, now_ms);
            }
            map.insert(
                k,
                Slot {
                    tat: new_tat,
                    idle_at_ms,
                },
            );
        }
        Ok(())
    }

    /// The client address: the socket peer, or — when the peer is a
    /// trusted proxy — the right-most `X-Forwarded-For` entry that is not.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Unreadable: nothing left of it can be trusted either.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// Makes room in a full shard: drops the slots whose bucket is full again
/// (they hold no state); if that is not enough, the eighth of the slots
/// closest to full.
fn evict(map: &mut Shard, capacity: usize, now_ms: i64) {
    map.retain(|_, s| s.idle_at_ms > now_ms);
    if map.len() < capacity {
        return;
    }
    let mut idle: Vec<i64> = map.values().map(|s| s.idle_at_ms).collect();
    let cut = (capacity / 8).max(1).min(idle.len() - 1);
    let (_, threshold, _) = idle.select_nth_unstable(cut);
    let threshold = *threshold;
    let mut dropped = 0usize;
    map.retain(|_, s| {
        if s.idle_at_ms < threshold || (s.idle_at_ms == threshold && dropped < cut) {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

// ---- HTTP -----------------------------------------------------------------------

/// Which class a request on the public listener belongs to.
fn public_class(method: &Method, path: &str) -> Option<Class> {
    let login = path == "/login"
        || path == "/login/mfa"
        || path.starts_with("/login/webauthn/")
        || path.starts_with("/login/passkey/");
    if login && method == Method::POST {
        Some(Class::Login)
    } else if path == "/token" {
        Some(Class::Token)
    } else if path == "/introspect" {
        Some(Class::Introspect)
    } else if path == "/account" || path.starts_with("/account/") {
        Some(Class::Account)
    } else {
        None
    }
}

fn peer_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| state.limiter.client_ip(c.0.ip(), req.headers()))
}

/// Middleware on the public listener.
pub async fn public_layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = peer_ip(&state, &req);
    if let Some(ip) = ip {
        req.extensions_mut().insert(ClientIp(ip));
    }
    let Some(class) = public_class(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let ip_key = ip.map(ip_key);
    let now = state.clock.now_ms();
    let limiter = &state.limiter;
    let per_ip = match class {
        Class::Login => Some(Rule::LoginPerIp),
        Class::Token => Some(Rule::TokenPerIp),
        Class::Account => Some(Rule::AccountPerIp),
        // Only failed callers count per IP: a gateway must not be throttled.
        Class::Introspect => None,
        Class::Admin => Some(Rule::AdminPerIp),
    };
    if let (Some(rule), Some(key)) = (per_ip, &ip_key)
        && let Err(l) = limiter.hit(rule, key, now)
    {
        return refused(&state, l, req.uri().path(), req.headers());
    }
    match class {
        Class::Token => per_client(&state, req, next, Rule::TokenPerClient, None).await,
        Class::Introspect => {
            if let Some(key) = &ip_key
                && let Err(l) = limiter.peek(Rule::IntrospectFailuresPerIp, key, now)
            {
                return refused(&state, l, req.uri().path(), req.headers());
            }
            per_client(
                &state,
                req,
                next,
                Rule::IntrospectPerClient,
                ip_key.map(|k| (Rule::IntrospectFailuresPerIp, k)),
            )
            .await
        }
        _ => next.run(req).await,
    }
}

/// Body size the token and introspection endpoints accept (axum's default
/// for `Bytes`), buffered here to read `client_id`.
const FORM_LIMIT: usize = 2 * 1024 * 1024;

/// Runs a token or introspection request under `rule` (per client): refused
/// if the named client's budget is spent; charged only when the client did
/// not fail authentication (401). A 401 charges `on_auth_failure` instead.
async fn per_client(
    state: &AppState,
    req: Request,
    next: Next,
    rule: Rule,
    on_auth_failure: Option<(Rule, String)>,
) -> Response {
    let limiter = &state.limiter;
    let mut req = req;
    let enabled = limiter.enabled(rule);
    let mut client_id = if enabled {
        basic_client_id(req.headers())
    } else {
        None
    };
    if enabled && client_id.is_none() {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, FORM_LIMIT).await {
            Ok(b) => b,
            Err(_) => {
                let mut resp = crate::oauth::error::OAuthError::invalid_request(
                    "the request body is too large",
                )
                .into_response();
                *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return resp;
            }
        };
        client_id = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.into_owned());
        req = Request::from_parts(parts, Body::from(bytes));
    }
    let client_id = client_id.filter(|c| !c.is_empty());
    if let Some(id) = &client_id
        && let Err(l) = limiter.peek(rule, id, state.clock.now_ms())
    {
        return refused(state, l, req.uri().path(), req.headers());
    }
    let resp = next.run(req).await;
    let now = state.clock.now_ms();
    if resp.status() == StatusCode::UNAUTHORIZED {
        if let Some((fail_rule, key)) = on_auth_failure {
            let _ = limiter.hit(fail_rule, &key, now);
        }
    } else if let Some(id) = &client_id {
        let _ = limiter.hit(rule, id, now);
    }
    resp
}

/// The client id of an `Authorization: Basic` header (RFC 6749 §2.3.1:
/// form-urlencoded before base64), if there is one.
fn basic_client_id(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let text = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, _) = decoded.split_once(':')?;
    form_urlencoded::parse(format!("id={id}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// Middleware on the admin listener: every path but the probes.
pub async fn admin_layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = peer_ip(&state, &req);
    if let Some(ip) = ip {
        req.extensions_mut().insert(ClientIp(ip));
    }
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    let now = state.clock.now_ms();
    if let Some(ip) = ip
        && let Err(l) = state.limiter.hit(Rule::AdminPerIp, &ip_key(ip), now)
    {
        return refused(&state, l, req.uri().path(), req.headers());
    }
    if state.limiter.enabled(Rule::AdminPerUser)
        && let Some(user) = bearer_user(&state, req.headers()).await
        && let Err(l) = state.limiter.hit(Rule::AdminPerUser, &user, now)
    {
        return refused(&state, l, req.uri().path(), req.headers());
    }
    next.run(req).await
}

/// The user an admin API bearer token speaks for (the cached lookup the
/// admin API's own extractor does next).
async fn bearer_user(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    crate::tokens::active_access_token(state, token)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.user_id)
}

/// The 429 answer for `path`, counted in `/metrics`: an RFC 6749-style
/// error on the OAuth endpoints, `{"error": "rate_limited", "message"}` on
/// JSON endpoints, a small page otherwise; always with `Retry-After`.
pub fn refused(state: &AppState, limited: Limited, path: &str, headers: &HeaderMap) -> Response {
    let class = limited.rule.class();
    state.metrics.rate_limited[class.index()].fetch_add(1, Ordering::Relaxed);
    tracing::info!(event = "rate_limited", class = class.as_str(), rule = ?limited.rule, retry_after = limited.retry_after, "request refused by a rate limit");
    let secs = limited.retry_after;
    let message = format!("too many requests; retry after {secs} seconds");
    let mut resp = if matches!(path, "/token" | "/introspect" | "/revoke") {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "error": "temporarily_unavailable",
                "error_description": message,
            })),
        )
            .into_response()
    } else if wants_json(path, headers) {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({ "error": "rate_limited", "message": message })),
        )
            .into_response()
    } else {
        crate::web::html::page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            &format!(
                "<p class=\"error\" role=\"alert\">Too many attempts. Try again in {secs} seconds.</p>"
            ),
        )
    };
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn wants_json(path: &str, headers: &HeaderMap) -> bool {
    if path.starts_with("/admin/api/")
        || path.starts_with("/login/webauthn/")
        || path.starts_with("/login/passkey/")
        || path.starts_with("/account/mfa/webauthn/")
    {
        return true;
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/html") {
        return false;
    }
    accept.contains("json") || !path.starts_with("/login") && !path.starts_with("/account")
}
