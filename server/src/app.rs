//! Application state, the two routers (public and admin listener), and the
//! server's run loop with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::keys::{self, KeyRing};
use crate::store::{PoolSettings, Store};
use crate::telemetry::metrics::{Listener, Metrics};

/// Shared by every request; one `Arc` so that each middleware layer's
/// clone of the state is one reference count, not one per field.
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

#[derive(Debug)]
pub struct AppStateInner {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: SharedClock,
    pub keys: Arc<KeyRing>,
    pub metrics: Arc<Metrics>,
    pub introspection_cache: Arc<crate::tokens::cache::IntrospectionCache>,
    /// Wakes the outbox worker when a message is queued.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// Outgoing HTTP (back-channel logout, webhooks): short timeouts, no redirects.
    pub http_client: reqwest::Client,
    /// Group commit for standalone access tokens.
    pub token_writer: crate::tokens::batch::TokenWriter,
    /// Client-credentials tokens stored ahead of demand.
    pub preissued: Arc<crate::tokens::preissue::PreIssued>,
    /// The WebAuthn relying party (off when the issuer is on an IP address).
    pub webauthn: Arc<crate::mfa::webauthn::RelyingParty>,
    /// In-memory rate limits (`[rate_limits]`).
    pub limiter: Arc<crate::security::limits::RateLimiter>,
    /// Per-client error ratios at /token and /introspect (security events).
    pub error_spikes: Arc<crate::security::spikes::ErrorSpikes>,
}

/// What start-up did, for the operator.
#[derive(Debug)]
pub struct Startup {
    pub state: AppState,
    pub generated_keys: Vec<keys::KeyMeta>,
    pub bootstrap_code: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("{0}")]
    Webauthn(String),
}

/// Connects, migrates, loads (or creates) signing keys and, on an empty user
/// table, issues the bootstrap code.
pub async fn start(config: Config, clock: SharedClock) -> Result<Startup, StartupError> {
    let webauthn =
        crate::mfa::webauthn::RelyingParty::from_config(&config).map_err(StartupError::Webauthn)?;
    if !webauthn.available() {
        tracing::info!(issuer = %config.issuer, "WebAuthn is off: the issuer's host is not a domain name");
    }
    let store = Store::connect(
        &config.database.url,
        &PoolSettings {
            max_connections: config.database.max_connections,
            ..PoolSettings::default()
        },
    )
    .await?
    .with_webhooks(&config.webhooks.endpoints);
    store.migrate().await?;
    let loaded = keys::load_or_create(&config.keys.dir, clock.now())?;
    if !loaded.generated.is_empty() {
        let kids: Vec<_> = loaded
            .generated
            .iter()
            .map(|k| serde_json::json!({"kid": k.kid, "alg": k.alg}))
            .collect();
        audit::record_alone(
            &store,
            clock.now_ms(),
            &AuditContext::system("startup"),
            AuditEvent::new("keys.generate", "keys").after(serde_json::json!({ "keys": kids })),
        )
        .await?;
    }
    let bootstrap_code =
        crate::users::bootstrap::issue_code_if_needed(&store, clock.as_ref()).await?;
    // SQLite is one process: local invalidation is enough, so the cache is
    // on at once. PostgreSQL replicas enable it when the listener is up.
    let cache = crate::tokens::cache::IntrospectionCache::new(
        config.tokens.introspection_cache_ttl,
        store.backend() == crate::store::Backend::Sqlite,
    );
    let http_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default();
    let metrics = Arc::new(Metrics::default());
    let token_writer = crate::tokens::batch::TokenWriter::spawn(store.clone(), metrics.clone())?;
    // Invalidated like the introspection cache: at once on SQLite, on
    // PostgreSQL only while the listener is up.
    let preissued = crate::tokens::preissue::PreIssued::new(
        config.tokens.preissue,
        store.backend() == crate::store::Backend::Sqlite,
        metrics.clone(),
    );
    let state = AppState(Arc::new(AppStateInner {
        limiter: Arc::new(crate::security::limits::RateLimiter::new(
            &config.rate_limits,
        )),
        webauthn: Arc::new(webauthn),
        outbox_wake: Arc::new(tokio::sync::Notify::new()),
        token_writer,
        preissued: Arc::new(preissued),
        http_client,
        introspection_cache: Arc::new(cache),
        keys: Arc::new(KeyRing::new(config.keys.dir.clone(), loaded.set)),
        config: Arc::new(config),
        store,
        clock,
        metrics,
        error_spikes: Arc::default(),
    }));
    Ok(Startup {
        state,
        generated_keys: loaded.generated,
        bootstrap_code,
    })
}

/// Everything on the public listener (`issuer`).
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .merge(crate::ops::router())
        .merge(crate::oidc::router())
        .merge(crate::oauth::router())
        .merge(crate::tokens::router())
        .merge(crate::sessions::login::router())
        .merge(crate::sessions::account::router())
        .merge(crate::mfa::login::router())
        .merge(crate::mfa::account::router())
        .merge(crate::mfa::webauthn_http::router())
        .route("/static/portcullis.css", axum::routing::get(stylesheet))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::security::limits::public_layer,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::security::spikes::observe,
        ))
        // Size and parameter checks before anything reads the body; the
        // security headers outside them, so every answer carries them.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::security::hardening::public_guard,
        ))
        .layer(middleware::from_fn(crate::web::security_headers))
        .layer(middleware::from_fn_with_state(
            (state.clone(), Listener::Public),
            request_context,
        ))
        .with_state(state)
}

async fn stylesheet() -> impl axum::response::IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        crate::web::html::STYLESHEET,
    )
}

/// Everything on the internal admin listener (admin UI and admin API).
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .merge(crate::ops::router())
        .merge(crate::admin_api::router())
        .merge(crate::admin_web::router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::security::limits::admin_layer,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::security::hardening::admin_guard,
        ))
        .layer(middleware::from_fn(crate::web::security_headers))
        .layer(middleware::from_fn_with_state(
            (state.clone(), Listener::Admin),
            request_context,
        ))
        .with_state(state)
}

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request (ours, or the caller's if it is sane).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| s.to_string())
}

/// Assigns the request id (header, extension, log span) and counts the response.
async fn request_context(
    State((state, listener)): State<(AppState, Listener)>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(crate::crypto::request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    // Handlers that read the header see the id in force, never a refused
    // or missing one.
    if let Ok(value) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    state
        .metrics
        .record_response(listener, resp.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    resp
}

/// Bound listeners, before serving.
#[derive(Debug)]
pub struct Bound {
    public: TcpListener,
    admin: TcpListener,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

pub async fn bind(config: &Config) -> std::io::Result<Bound> {
    let public = TcpListener::bind(config.http.public_addr).await?;
    let admin = TcpListener::bind(config.http.admin_addr).await?;
    Ok(Bound {
        public_addr: public.local_addr()?,
        admin_addr: admin.local_addr()?,
        public,
        admin,
    })
}

/// Serves both listeners until `shutdown` resolves, then drains in-flight
/// requests before returning.
pub async fn serve(
    state: AppState,
    bound: Bound,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let reload = tokio::spawn(reload_keys_periodically(state.clone()));
    let outbox = tokio::spawn(crate::outbox::run(state.clone()));
    let sweeper = tokio::spawn(sweep_sessions_periodically(state.clone()));
    let refund_expiry = tokio::spawn(crate::refunds::expire_periodically(state.clone()));
    let lockout_purge = tokio::spawn(crate::security::lockout::purge_periodically(state.clone()));
    let checkpointer = tokio::spawn(checkpoint_periodically(state.clone()));
    let token_purge = tokio::spawn(crate::tokens::janitor::purge_periodically(state.clone()));
    let audit_verify = tokio::spawn(crate::security::events::verify_audit_chain_periodically(
        state.clone(),
    ));
    let listener = (state.store.backend() == crate::store::Backend::Postgres).then(|| {
        tokio::spawn(crate::tokens::cache::listen_for_revocations(
            state.config.database.url.clone(),
            state.introspection_cache.clone(),
            state.preissued.clone(),
        ))
    });
    // hyper's HTTP/1.1 server rather than `axum::serve`, which cannot limit
    // request heads or time out slow clients (`security::hardening`).
    let limits = state.config.limits.clone();
    let public = crate::security::hardening::serve_listener(
        bound.public,
        public_router(state.clone()),
        limits.clone(),
        rx.clone(),
    );
    let admin = crate::security::hardening::serve_listener(
        bound.admin,
        admin_router(state.clone()),
        limits,
        rx,
    );
    let result = tokio::try_join!(public, admin);
    reload.abort();
    outbox.abort();
    sweeper.abort();
    refund_expiry.abort();
    lockout_purge.abort();
    audit_verify.abort();
    checkpointer.abort();
    token_purge.abort();
    if let Some(l) = listener {
        l.abort();
    }
    state.store.close().await;
    result.map(|_| ())
}

/// Keeps SQLite's write-ahead log copied into the database file while the
/// server writes (`Store::checkpoint`); stops at once on PostgreSQL.
async fn checkpoint_periodically(state: AppState) {
    // Each pass that copies something also syncs the database file, and the
    // writer's next fsync queues behind that one: many small passes keep
    // those waits short. Measured under sustained issuance (bench/README.md):
    // every 10 ms halved token p99 against every 25 ms, at equal throughput;
    // 100 ms and more tripled it.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Logged when it starts failing and when it recovers, not every pass.
    let mut failing = false;
    loop {
        tick.tick().await;
        match state.store.checkpoint().await {
            Ok(true) if failing => {
                failing = false;
                tracing::info!("write-ahead log checkpoints succeed again");
            }
            Ok(true) => {}
            Ok(false) => return,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "write-ahead log checkpoint failed; retrying every pass");
            }
            Err(_) => {}
        }
    }
}

async fn sweep_sessions_periodically(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        match crate::sessions::end::sweep_timeouts(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(ended = n, "ended timed-out sessions"),
            Err(e) => tracing::warn!(error = %e, "session sweeper failed"),
        }
    }
}

async fn reload_keys_periodically(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match state.keys.reload_if_changed() {
            Ok(true) => {
                state
                    .metrics
                    .key_reloads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("signing keys reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot reload signing keys; keeping the current set")
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}
