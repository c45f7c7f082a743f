//! Registered OAuth clients. Secrets are server-generated (256 bits), shown
//! once, stored as SHA-256 and compared in constant time.

use std::fmt;

use serde::Serialize;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::Clock;
use crate::crypto;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    ClientCredentials,
    RefreshToken,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

impl GrantType {
    pub const TOKEN_EXCHANGE_URN: &'static str = "urn:ietf:params:oauth:grant-type:token-exchange";

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
            GrantType::TokenExchange => Self::TOKEN_EXCHANGE_URN,
        }
    }

    pub fn parse(text: &str) -> Option<GrantType> {
        match text {
            "authorization_code" => Some(GrantType::AuthorizationCode),
            "client_credentials" => Some(GrantType::ClientCredentials),
            "refresh_token" => Some(GrantType::RefreshToken),
            Self::TOKEN_EXCHANGE_URN => Some(GrantType::TokenExchange),
            _ => None,
        }
    }
}

impl fmt::Display for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub is_public: bool,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub scopes: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub first_party: bool,
    pub may_introspect: bool,
    pub exchange_audiences: Vec<String>,
    pub id_token_alg: String,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip)]
    pub secret_hash: Option<String>,
}

impl Client {
    pub fn allows_grant(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Constant-time check of a presented secret; public clients have none.
    pub fn secret_matches(&self, presented: &str) -> bool {
        match &self.secret_hash {
            Some(hash) => crypto::secret_matches(presented, hash),
            None => false,
        }
    }

    pub fn audit_view(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub name: String,
    pub id: Option<String>,
    pub is_public: bool,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scope: Option<String>,
    pub backchannel_logout_uri: Option<String>,
    pub first_party: bool,
    pub may_introspect: bool,
    pub exchange_audiences: Vec<String>,
    pub id_token_alg: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid client id {0:?}: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', '-'")]
    InvalidId(String),
    #[error("a client name is required (1 to 200 characters)")]
    InvalidName,
    #[error("a client with id {0:?} already exists")]
    AlreadyExists(String),
    #[error("no client with id {0:?}")]
    NotFound(String),
    #[error("invalid redirect URI {uri:?}: {why}")]
    InvalidRedirectUri { uri: String, why: &'static str },
    #[error(
        "invalid back-channel logout URI {0:?}: use an absolute https URL (http only on loopback)"
    )]
    InvalidLogoutUri(String),
    #[error(
        "unknown grant type {0:?}: use authorization_code, client_credentials or refresh_token"
    )]
    UnknownGrant(String),
    #[error("{0}")]
    IncompatibleSettings(&'static str),
    #[error(
        "invalid scope {0:?}: scope names are printable ASCII without spaces, quotes or backslashes"
    )]
    InvalidScope(String),
    #[error("invalid exchange audience {0:?}")]
    InvalidAudience(String),
    #[error("unsupported id_token algorithm {0:?}: use RS256 or ES256")]
    InvalidAlg(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        ClientError::Store(e)
    }
}

/// The secret, shown once at registration or rotation.
#[derive(Clone)]
pub struct ClientSecret(pub String);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

fn valid_client_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
pub fn valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Redirect URIs are matched exactly later, so they are checked strictly
/// here: absolute, no fragment, https (http only on loopback) or a native
/// app's private-use scheme in reverse-domain form (RFC 8252 §7.1).
pub fn check_redirect_uri(uri: &str) -> Result<(), ClientError> {
    let bad = |why| ClientError::InvalidRedirectUri {
        uri: uri.to_string(),
        why,
    };
    let url = url::Url::parse(uri).map_err(|_| bad("not an absolute URL"))?;
    if url.fragment().is_some() {
        return Err(bad("must not contain a fragment"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(bad("http is allowed only for loopback hosts; use https")),
        scheme if scheme.contains('.') => Ok(()),
        _ => Err(bad(
            "use https, loopback http, or a reverse-domain private-use scheme",
        )),
    }
}

/// Scope names as registered: each an RFC 6749 scope-token, duplicates
/// dropped, order kept, empty entries ignored.
pub fn parse_scopes<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, ClientError> {
    let mut scopes: Vec<String> = Vec::new();
    for s in names.into_iter().filter(|s| !s.is_empty()) {
        if !valid_scope_token(s) {
            return Err(ClientError::InvalidScope(s.to_string()));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    Ok(scopes)
}

fn check_logout_uri(uri: &str) -> Result<(), ClientError> {
    let url = url::Url::parse(uri).map_err(|_| ClientError::InvalidLogoutUri(uri.to_string()))?;
    let ok = url.fragment().is_none()
        && match url.scheme() {
            "https" => url.host().is_some(),
            "http" => is_loopback(&url),
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err(ClientError::InvalidLogoutUri(uri.to_string()))
    }
}

/// Validates the registration and fills in defaults.
fn build(new: NewClient, now: i64) -> Result<(Client, Option<ClientSecret>), ClientError> {
    let name = new.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ClientError::InvalidName);
    }
    let id = match new.id {
        Some(id) if valid_client_id(&id) => id,
        Some(id) => return Err(ClientError::InvalidId(id)),
        None => crypto::random_id(),
    };
    for uri in new
        .redirect_uris
        .iter()
        .chain(&new.post_logout_redirect_uris)
    {
        check_redirect_uri(uri)?;
    }
    let mut grants = Vec::new();
    for g in &new.grant_types {
        let grant = GrantType::parse(g).ok_or_else(|| ClientError::UnknownGrant(g.clone()))?;
        if grant == GrantType::TokenExchange {
            return Err(ClientError::IncompatibleSettings(
                "the token-exchange grant is enabled with --exchange-audience, not --grant",
            ));
        }
        if !grants.contains(&grant) {
            grants.push(grant);
        }
    }
    if grants.is_empty() {
        // Keycloak's "standard flow" default: code flow with refresh for
        // clients that have somewhere to redirect, service accounts otherwise.
        grants = if !new.redirect_uris.is_empty() {
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        } else if !new.is_public {
            vec![GrantType::ClientCredentials]
        } else {
            return Err(ClientError::IncompatibleSettings(
                "a public client needs --redirect-uri for the authorization code flow",
            ));
        };
    }
    if grants.contains(&GrantType::AuthorizationCode) && new.redirect_uris.is_empty() {
        return Err(ClientError::IncompatibleSettings(
            "the authorization_code grant needs at least one --redirect-uri",
        ));
    }
    if new.is_public && grants.contains(&GrantType::ClientCredentials) {
        return Err(ClientError::IncompatibleSettings(
            "a public client cannot use client_credentials (it has no secret)",
        ));
    }
    if new.is_public && (new.may_introspect || !new.exchange_audiences.is_empty()) {
        return Err(ClientError::IncompatibleSettings(
            "introspection and token exchange need a confidential client",
        ));
    }
    let mut audiences = Vec::new();
    for aud in &new.exchange_audiences {
        if aud.is_empty()
            || aud.len() > 255
            || aud.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ClientError::InvalidAudience(aud.clone()));
        }
        if !audiences.contains(aud) {
            audiences.push(aud.clone());
        }
    }
    if !audiences.is_empty() {
        grants.push(GrantType::TokenExchange);
    }
    let scope_text = new.scope.unwrap_or_else(|| "openid".to_string());
    let scopes = parse_scopes(scope_text.split(' '))?;
    if let Some(uri) = &new.backchannel_logout_uri {
        check_logout_uri(uri)?;
    }
    let id_token_alg = match new.id_token_alg.as_deref() {
        None | Some("RS256") => "RS256".to_string(),
        Some("ES256") => "ES256".to_string(),
        Some(other) => return Err(ClientError::InvalidAlg(other.to_string())),
    };
    let secret = (!new.is_public).then(|| ClientSecret(crypto::random_secret("pcs_")));
    let client = Client {
        id,
        name,
        is_public: new.is_public,
        redirect_uris: new.redirect_uris,
        post_logout_redirect_uris: new.post_logout_redirect_uris,
        grant_types: grants,
        scopes,
        backchannel_logout_uri: new.backchannel_logout_uri,
        first_party: new.first_party,
        may_introspect: new.may_introspect,
        exchange_audiences: audiences,
        id_token_alg,
        created_at: now,
        updated_at: now,
        secret_hash: secret.as_ref().map(|s| crypto::sha256_hex(&s.0)),
    };
    Ok((client, secret))
}

pub async fn register(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    new: NewClient,
) -> Result<(Client, Option<ClientSecret>), ClientError> {
    register_as(store, clock, ctx, new, AuditEvent::new("client.create", "")).await
}

/// [`register`] with the caller's audit event: its action, reason and
/// ticket are kept; target and `after` are set here (the client, never its
/// secret).
pub async fn register_as(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    new: NewClient,
    event: AuditEvent,
) -> Result<(Client, Option<ClientSecret>), ClientError> {
    let (client, secret) = build(new, clock.now())?;
    insert_audited(store, clock, ctx, &client, event).await?;
    Ok((client, secret))
}

/// Registers a client whose secret the server itself holds (the admin UI's
/// own client): the caller supplies the secret's SHA-256.
pub async fn register_with_secret(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    new: NewClient,
    secret_hash: &str,
) -> Result<Client, ClientError> {
    let (mut client, _) = build(new, clock.now())?;
    client.secret_hash = Some(secret_hash.to_string());
    insert_audited(
        store,
        clock,
        ctx,
        &client,
        AuditEvent::new("client.create", ""),
    )
    .await?;
    Ok(client)
}

async fn insert_audited(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client: &Client,
    event: AuditEvent,
) -> Result<(), ClientError> {
    let mut tx = store.begin().await?;
    match crate::store::clients::insert(&mut tx, client).await {
        Err(StoreError::Conflict("client id")) => {
            return Err(ClientError::AlreadyExists(client.id.clone()));
        }
        other => other?,
    }
    audit::record(
        store,
        &mut tx,
        clock.now_ms(),
        ctx,
        AuditEvent {
            target: Some(format!("client:{}", client.id)),
            after: Some(client.audit_view()),
            ..event
        },
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

pub async fn find(store: &Store, id: &str) -> Result<Client, ClientError> {
    crate::store::clients::find(store, id)
        .await?
        .ok_or_else(|| ClientError::NotFound(id.to_string()))
}

/// [`find`] through the hot-path cache (client authentication on every
/// introspection); entries live at most `tokens.introspection_cache_ttl`
/// and are dropped on any change notification.
pub async fn find_cached(state: &crate::app::AppState, id: &str) -> Result<Client, ClientError> {
    if let Some(c) = state.introspection_cache.get_client(id) {
        return Ok(c);
    }
    let generation = state.introspection_cache.generation();
    let client = find(&state.store, id).await?;
    state
        .introspection_cache
        .insert_client(client.clone(), generation);
    Ok(client)
}
