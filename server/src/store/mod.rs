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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
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
    /// From a connection outside sqlx (`tokens::DirectTokenWriter`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
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

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, message) = &err {
            if failure.code == rusqlite::ErrorCode::ConstraintViolation
                && matches!(
                    failure.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                )
            {
                let text = message.as_deref().unwrap_or("");
                return StoreError::Conflict(
                    UNIQUE_CONSTRAINTS
                        .iter()
                        .find(|(needle, _)| text.contains(needle))
                        .map_or("key", |(_, what)| what),
                );
            }
            if unavailable_code(Some(&failure.extended_code.to_string())) {
                return StoreError::Unavailable(err.to_string());
            }
        }
        StoreError::Sqlite(err)
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
    /// SQLite file databases: the file, for connections opened outside the
    /// pools (`tokens::DirectTokenWriter`).
    sqlite_file: Option<Arc<Path>>,
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
                    sqlite_file: None,
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
                let (reader, checkpointer, sqlite_file) = if in_memory {
                    (writer.clone(), None, None)
                } else {
                    (
                        sqlite_pool(options.clone(), settings.max_connections, settings).await?,
                        Some(sqlite_pool(options, 1, settings).await?),
                        Some(sqlite_main_file(&writer).await?),
                    )
                };
                Ok(Store {
                    backend,
                    reader,
                    writer,
                    checkpointer,
                    sqlite_file,
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
    /// checkpoint, at `wal_autocheckpoint` ([`SQLITE_CONNECTION_SETUP`]), then only copies what arrived
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

    /// The database file of a SQLite store (not in memory).
    pub(crate) fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Readiness probe: one round trip to the database.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// After [`Store::close`].
    pub(crate) fn is_closed(&self) -> bool {
        self.writer.is_closed()
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

/// Run on every SQLite connection, pooled or not. WAL lets readers run
/// beside the writer; synchronous=FULL makes every acknowledged commit
/// durable across power loss. Statement journals (a statement writing
/// several rows inside a transaction, such as revoking a family, needs one)
/// live in memory, not in a temporary file created and unlinked each time.
/// `wal_autocheckpoint`: log pages (4 KiB each) before a committing
/// connection checkpoints by itself; SQLite's default is 1000, a larger log
/// between restarts lets the background checkpointer (`Store::checkpoint`)
/// do nearly all the copying.
pub(crate) const SQLITE_CONNECTION_SETUP: &str = concat!(
    "PRAGMA journal_mode = WAL; ",
    "PRAGMA synchronous = FULL; ",
    "PRAGMA foreign_keys = ON; ",
    "PRAGMA busy_timeout = 5000; ",
    "PRAGMA temp_store = MEMORY; ",
    "PRAGMA wal_autocheckpoint = 10000;",
);

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
                conn.execute(SQLITE_CONNECTION_SETUP).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// The path SQLite opened for the main database (absolute, so a later
/// change of working directory cannot point another connection elsewhere).
async fn sqlite_main_file(writer: &AnyPool) -> StoreResult<Arc<Path>> {
    let (file,): (String,) =
        sqlx::query_as("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(writer)
            .await?;
    if file.is_empty() {
        return Err(StoreError::Corrupt(
            "SQLite reports no file for the main database".into(),
        ));
    }
    Ok(PathBuf::from(file).into())
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
