//! Test harness: one suite, parameterised by backend.
//!
//! `backend_tests!(a, b)` turns each `async fn a(backend: Backend)` into two
//! tests, `a::sqlite` and `a::postgres`. The PostgreSQL variant needs
//! `PORTCULLIS_TEST_PG` (an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test gets a fresh
//! database of its own. Without the variable the PostgreSQL variants are
//! skipped with a notice — unless `CI` is set, where that is an error.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::store::{PoolSettings, Store};
use sqlx::Executor;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::support::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(pg) = crate::support::Backend::postgres() {
                        super::$name(pg).await
                    }
                }
            }
        )*
    };
}

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// Admin URL of the PostgreSQL server.
    Postgres(String),
}

impl Backend {
    pub fn postgres() -> Option<Backend> {
        match std::env::var("PORTCULLIS_TEST_PG") {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ if std::env::var_os("CI").is_some() => {
                panic!(
                    "CI is set but PORTCULLIS_TEST_PG is not: the PostgreSQL suite must run in CI"
                )
            }
            _ => {
                eprintln!(
                    "skipped: set PORTCULLIS_TEST_PG=postgres://… to run the PostgreSQL variant"
                );
                None
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A scratch directory (cwd of the binary, `keys/`, SQLite file) and a
/// fresh database.
pub struct TestEnv {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    /// `None` for SQLite: the binary uses its default `sqlite://data/portcullis.db`.
    pub db_url: Option<String>,
    pg_drop: Option<(String, String)>,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let (db_url, pg_drop) = match &backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres(admin) => {
                let name = unique_name("pc_t_");
                let pool = raw_pool(admin).await;
                pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .unwrap();
                pool.close().await;
                let mut url = url::Url::parse(admin).unwrap();
                url.set_path(&name);
                (Some(url.to_string()), Some((admin.clone(), name)))
            }
        };
        TestEnv {
            backend,
            dir,
            db_url,
            pg_drop,
        }
    }

    /// The URL the binary and the library see.
    /// Terminates, as `admin` (a server URL without a database), the
    /// backends connected to this environment's PostgreSQL database that
    /// match the SQL condition `filter` on `pg_stat_activity`, as a
    /// failover or an operator would; how many.
    pub async fn terminate_backends(&self, admin: &str, filter: &str) -> i64 {
        let name = url::Url::parse(&self.database_url())
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_string();
        let pool = raw_pool(admin).await;
        let (killed,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid() AND ({filter})) AS t"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        killed
    }

    pub fn database_url(&self) -> String {
        match &self.db_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}/data/portcullis.db?mode=rwc",
                self.dir.path().display()
            ),
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Environment for the binary: everything in the scratch dir, ports chosen by the OS.
    fn envs(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (
                "PORTCULLIS_HTTP_PUBLIC_ADDR".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "PORTCULLIS_HTTP_ADMIN_ADDR".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            ("PORTCULLIS_LOG_LEVEL".to_string(), "info".to_string()),
        ];
        if let Some(url) = &self.db_url {
            v.push(("PORTCULLIS_DATABASE_URL".to_string(), url.clone()));
        }
        v
    }

    fn command(&self, extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USER", "test-operator")
            .envs(self.envs())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .kill_on_drop(true);
        cmd
    }

    /// Runs the CLI to completion.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with(args, None, &[]).await
    }

    pub async fn cli_stdin(&self, args: &[&str], stdin: &str) -> CliOutput {
        self.cli_with(args, Some(stdin), &[]).await
    }

    pub async fn cli_with(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> CliOutput {
        let mut cmd = self.command(env);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Creates a user through the CLI.
    pub async fn create_user(&self, username: &str, password: &str) {
        let out = self
            .cli_stdin(
                &["user", "create", "--username", username, "--password-stdin"],
                password,
            )
            .await;
        out.assert_ok();
    }

    /// Starts `portcullis serve` and waits until it listens.
    pub async fn serve(&self) -> Server {
        self.serve_with(&[]).await
    }

    pub async fn serve_with(&self, env: &[(&str, &str)]) -> Server {
        let mut cmd = self.command(env);
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        let lines = stdout_lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["msg"] == "listening"
                    && let Some(tx) = addr_tx.take()
                {
                    let f = &v["fields"];
                    let _ = tx.send((
                        f["public_addr"].as_str().unwrap_or_default().to_string(),
                        f["admin_addr"].as_str().unwrap_or_default().to_string(),
                    ));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let err_text = stderr_text.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut t = err_text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        let (public, admin) = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
            Ok(Ok(addrs)) => addrs,
            _ => panic!(
                "server did not start; stderr:\n{}\nstdout:\n{}",
                stderr_text.lock().unwrap(),
                stdout_lines.lock().unwrap().join("\n")
            ),
        };
        Server {
            child,
            public: format!("http://{public}"),
            admin: format!("http://{admin}"),
            stdout_lines,
            stderr_text,
            http: reqwest::Client::new(),
        }
    }

    /// Direct database access, for inspecting and tampering.
    pub async fn store(&self) -> Store {
        Store::connect(&self.database_url(), &PoolSettings::default())
            .await
            .unwrap()
    }

    /// Runs raw SQL directly (an attacker or operator with database access).
    pub async fn raw_sql(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let pool = raw_pool(&self.database_url()).await;
        let r = pool
            .execute(sqlx::AssertSqlSafe(sql.to_string()))
            .await
            .map(|r| r.rows_affected());
        pool.close().await;
        r
    }
}

/// A pool of our own, outside the application's store.
pub async fn raw_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_drop.take() {
            // Best effort, on a thread of its own (we may be inside a runtime).
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let pool = raw_pool(&admin).await;
                    let _ = pool
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    pool.close().await;
                });
            })
            .join();
        }
    }
}

#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Fails with a non-zero exit code and `needle` in stderr.
    #[track_caller]
    pub fn assert_err(&self, needle: &str) -> &Self {
        assert_ne!(
            self.code, 0,
            "command should have failed:\nstdout: {}",
            self.stdout
        );
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A running `portcullis serve`.
pub struct Server {
    child: Child,
    pub public: String,
    pub admin: String,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_text: Arc<Mutex<String>>,
    pub http: reqwest::Client,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    pub async fn get_json(&self, url: &str) -> (u16, serde_json::Value) {
        let resp = self.http.get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr_text.lock().unwrap().clone()
    }

    /// SIGKILL (no draining, no clean-up), then reap the process. The data
    /// directory and database stay, so `serve` restarts on the same data.
    /// Returns the exit status if the process had already exited by itself.
    pub async fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill().await;
        exited
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) -> i32 {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status.code().unwrap_or(-1),
            _ => {
                let _ = self.child.kill().await;
                -1
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    unix_ms().div_euclid(1000)
}

/// Polls `check` until it returns true or `deadline` passes; for effects
/// that are asynchronous by design (key reload), never for timing claims.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
