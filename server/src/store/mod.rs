//! The one module that speaks SQL. Both backends go through sqlx's `Any`
//! driver so that one SQL text (with `$n` placeholders, which SQLite accepts
//! too) serves SQLite and PostgreSQL; where the dialects differ, the query is
//! chosen by [`Backend`] right here and nowhere else.
//!
//! Column conventions shared by both schemas: ids are TEXT, instants are
//! BIGINT unix seconds (milliseconds where named `*_ms`), JSON is TEXT,
//! flags are INTEGER 0/1 (decoded through row structs here).

pub mod admin_ui;
pub mod audit;
pub mod clients;
pub mod lockout;
pub mod mfa;
pub mod oauth;
pub mod outbox;
pub mod refunds;
pub mod roles;
pub mod security;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod webauthn;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Transaction};

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("a row with the same {0} already exists")]
    Conflict(&'static str),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// Names of UNIQUE / PRIMARY KEY constraints mapped to what they protect.
/// SQLite reports the columns (`users.username`), PostgreSQL the constraint
/// name; both are listed so a conflict reads the same on either backend.
const UNIQUE_CONSTRAINTS: &[(&str, &str)] = &[
    ("users.username", "username"),
    ("users_username_key", "username"),
    ("clients.id", "client id"),
    ("clients_pkey", "client id"),
    ("user_roles.user_id, user_roles.role", "role grant"),
    ("user_roles_pkey", "role grant"),
    ("audit_log.seq", "audit sequence number"),
    ("audit_log_pkey", "audit sequence number"),
    ("bootstrap_codes.id", "bootstrap code"),
    ("bootstrap_codes_pkey", "bootstrap code"),
];

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                let text = format!("{} {}", db.constraint().unwrap_or(""), db.message());
                for (needle, what) in UNIQUE_CONSTRAINTS {
                    if text.contains(needle) {
                        return StoreError::Conflict(what);
                    }
                }
                StoreError::Conflict("key")
            }
            sqlx::Error::Database(db) if unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(err.to_string())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
            _ => StoreError::Database(err),
        }
    }
}

/// Database error codes that mean "the database cannot serve us right now"
/// rather than "this statement is wrong": answered 503, never 500, and never
/// taken as a negative answer (a revoked token stays revoked).
///
/// PostgreSQL SQLSTATEs: class 08 (connection exception), 53 (insufficient
/// resources, e.g. too many connections, disk full), 57P01-57P05 (server
/// shutting down, restarting, starting up, idle session killed), 3D000 (the
/// database is gone), 55000 (`ALLOW_CONNECTIONS false`: "database is not
/// currently accepting connections"), 28000/28P01 (our role lost its login),
/// 40001/40P01 (serialization failure, deadlock: try again). SQLite primary
/// result codes (extended codes carry them in the low byte): BUSY (5),
/// LOCKED (6), IOERR (10), FULL (13), CANTOPEN (14).
fn unavailable_code(code: Option<&str>) -> bool {
    let Some(code) = code else {
        return false;
    };
    // A SQLSTATE is always five characters; SQLite codes are at most four digits.
    if code.len() < 5 {
        return code
            .parse::<i32>()
            .is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 14));
    }
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01"
                | "57P02"
                | "57P03"
                | "57P04"
                | "57P05"
                | "3D000"
                | "55000"
                | "28000"
                | "28P01"
                | "40001"
                | "40P01"
        )
}

impl StoreError {
    /// True when the caller should answer 503 rather than 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Connection pools for one database. SQLite gets a single-connection writer
/// pool (SQLite serialises writers anyway; one writer avoids `SQLITE_BUSY`
/// lock-upgrade failures) beside a reader pool; PostgreSQL uses one pool.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    reader: AnyPool,
    writer: AnyPool,
    /// SQLite file databases: one connection that copies the write-ahead log
    /// into the database file (see [`Store::checkpoint`]).
    checkpointer: Option<AnyPool>,
    /// Security-event webhooks: `audit::record` queues a delivery to each
    /// in the transaction that writes the event (see `security::events`).
    webhooks: std::sync::Arc<[crate::config::WebhookEndpoint]>,
}

pub type Tx = Transaction<'static, Any>;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl Store {
    pub async fn connect(url: &str, settings: &PoolSettings) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        match backend {
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    // A connection back in the pool less than
                    // PING_IF_IDLE_FOR ago is handed out without a ping
                    // (sqlx pings before every use by default: one more round
                    // trip per query); an idle one is checked first, so a
                    // restarted or failed-over server is noticed there.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IF_IDLE_FOR {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(options)
                    .await?;
                Ok(Store {
                    backend,
                    reader: pool.clone(),
                    writer: pool,
                    checkpointer: None,
                    webhooks: Vec::new().into(),
                })
            }
            Backend::Sqlite => {
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                if !in_memory {
                    ensure_sqlite_dir(url)?;
                }
                let writer = sqlite_pool(options.clone(), 1, settings).await?;
                // A shared-cache in-memory database uses table locks that a
                // busy timeout does not wait for: keep it on one connection.
                let (reader, checkpointer) = if in_memory {
                    (writer.clone(), None)
                } else {
                    (
                        sqlite_pool(options.clone(), settings.max_connections, settings).await?,
                        Some(sqlite_pool(options, 1, settings).await?),
                    )
                };
                Ok(Store {
                    backend,
                    reader,
                    writer,
                    checkpointer,
                    webhooks: Vec::new().into(),
                })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The same store, queueing security events for `endpoints`.
    pub fn with_webhooks(mut self, endpoints: &[crate::config::WebhookEndpoint]) -> Store {
        self.webhooks = endpoints.into();
        self
    }

    /// Where security events go (empty: nowhere but the audit log).
    pub fn webhooks(&self) -> &[crate::config::WebhookEndpoint] {
        &self.webhooks
    }

    /// Pool for reads outside a transaction.
    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// Pool for single-statement writes outside a transaction.
    pub(crate) fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a read-modify-write can never fail half-way
    /// because another process wrote in between.
    pub async fn begin(&self) -> StoreResult<Tx> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(tx)
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        migrator.run(&self.writer).await?;
        Ok(())
    }

    /// Copies what it can of SQLite's write-ahead log into the database file
    /// without waiting for the writer (a PASSIVE checkpoint). `false`: this
    /// store has no such log to tend (PostgreSQL, in-memory SQLite).
    ///
    /// Run in the background ([`crate::app`]), it takes the copying off the
    /// writer: otherwise the commit that crosses `wal_autocheckpoint` pays for
    /// it, and every request waiting on that commit with it. The writer's own
    /// checkpoint, at [`WRITER_AUTOCHECKPOINT`], then only copies what arrived
    /// since the last pass here, and lets the log start over.
    pub async fn checkpoint(&self) -> StoreResult<bool> {
        let Some(pool) = &self.checkpointer else {
            return Ok(false);
        };
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(pool)
            .await?;
        Ok(true)
    }

    /// Readiness probe: one round trip to the database.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        if let Some(pool) = &self.checkpointer {
            pool.close().await;
        }
    }
}

/// PostgreSQL connections idle at least this long are pinged before use
/// (HikariCP's `aliveBypassWindowMs` has the same default).
const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Write-ahead-log pages (4 KiB each) at which a committing connection runs
/// a checkpoint itself: SQLite's default is 1000; a larger log between
/// restarts lets the background checkpointer do nearly all the copying.
const WRITER_AUTOCHECKPOINT: u32 = 10_000;

async fn sqlite_pool(
    options: AnyConnectOptions,
    max: u32,
    settings: &PoolSettings,
) -> StoreResult<AnyPool> {
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(settings.acquire_timeout)
        // A file on this machine cannot hang up; the check would cost a
        // round trip to the connection's worker thread on every use.
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; synchronous=FULL makes
                // every acknowledged commit durable across power loss.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                // Statement journals (a statement writing several rows
                // inside a transaction, such as revoking a family, needs
                // one) in memory, not in a temporary file created and
                // unlinked each time.
                conn.execute("PRAGMA temp_store = MEMORY").await?;
                // Log pages before the committing connection checkpoints by
                // itself; a background task checkpoints long before that
                // (`Store::checkpoint`).
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT}"
                )))
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// `sqlite://data/portcullis.db?mode=rwc` → create `data/` so a fresh clone
/// starts without a setup step.
fn ensure_sqlite_dir(url: &str) -> StoreResult<()> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or("");
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}
