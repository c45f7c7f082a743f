//! The `portcullis` command line. Errors go to stderr as one sentence a
//! person can act on, with a non-zero exit code. Every state change made
//! here is audited with the operator as actor.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::{self, AuditContext, AuditEvent, ExportFormat};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::keys::{self, SigningAlg};
use crate::oauth::clients::{self, NewClient};
use crate::store::{PoolSettings, Store};
use crate::users::{self, NewUser};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "OAuth 2.0 / OpenID Connect authorization server"
)]
pub struct Cli {
    /// Configuration file (TOML); every key can be overridden by PORTCULLIS_<SECTION>_<KEY>.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (public and admin listeners).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage OAuth clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Grant, revoke and list roles.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        #[arg(long)]
        username: String,
        /// Read the password from standard input (required: passwords never go in arguments).
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        email: Option<String>,
        /// One-time code printed by `serve` on an empty database: makes this user the first administrator.
        #[arg(long, value_name = "CODE")]
        bootstrap_code: Option<String>,
    },
    /// Lock an account: it can no longer sign in.
    Lock(LockArgs),
    /// Unlock an account.
    Unlock(LockArgs),
}

#[derive(Debug, Args)]
struct LockArgs {
    #[arg(long)]
    username: String,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    ticket_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client; prints client_id and (for confidential clients) the secret, once.
    Create(ClientCreateArgs),
}

#[derive(Debug, Args)]
struct ClientCreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    id: Option<String>,
    /// A public client (no secret; PKCE S256 required).
    #[arg(long)]
    public: bool,
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser afterwards (repeatable).
    #[arg(long = "post-logout-redirect-uri", value_name = "URI")]
    post_logout_redirect_uris: Vec<String>,
    #[arg(long = "grant", value_name = "GRANT")]
    grants: Vec<String>,
    /// Space-separated scopes the client may request (default: "openid").
    #[arg(long)]
    scope: Option<String>,
    #[arg(long, value_name = "URI")]
    backchannel_logout_uri: Option<String>,
    /// Skip the consent screen (clients operated by us).
    #[arg(long)]
    first_party: bool,
    /// May call /introspect (gateways, resource servers).
    #[arg(long)]
    may_introspect: bool,
    /// Audience this client may request through token exchange (repeatable).
    #[arg(long = "exchange-audience", value_name = "AUD")]
    exchange_audiences: Vec<String>,
    /// id_token signing algorithm for this client.
    #[arg(long, value_name = "ALG")]
    id_token_alg: Option<String>,
    /// Print {"client_id", "client_secret"} as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RoleCommand {
    Grant(RoleArgs),
    Revoke(RoleArgs),
    /// List roles and their permissions.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct RoleArgs {
    #[arg(long)]
    username: String,
    #[arg(long)]
    role: String,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List signing keys and their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create new active keys; the previous ones stay in JWKS until their tokens expire.
    Rotate {
        /// Only this algorithm (default: all).
        #[arg(long, value_name = "ALG")]
        alg: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; exits non-zero and names the first bad row.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Export rows as JSON lines or CSV to standard output.
    Export {
        /// Only rows at or after this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Jsonl,
    Csv,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let clock: SharedClock = Arc::new(SystemClock);
    match cli.command {
        Command::Serve => serve(config, clock).await,
        Command::Migrate => {
            let store = connect(&config).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.backend().name());
            Ok(ExitCode::SUCCESS)
        }
        Command::User(cmd) => user(config, clock, cmd).await,
        Command::Client(ClientCommand::Create(args)) => client_create(config, clock, args).await,
        Command::Role(cmd) => role(config, clock, cmd).await,
        Command::Keys(cmd) => keys_cmd(config, clock, cmd).await,
        Command::Audit(cmd) => audit_cmd(config, clock, cmd).await,
    }
}

/// CLI commands work on a migrated database, so every command is usable on
/// a fresh one.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database.url, &PoolSettings::default())
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redact_url(&config.database.url)
            )
        })?
        .with_webhooks(&config.webhooks.endpoints);
    store.migrate().await?;
    Ok(store)
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn serve(config: Config, clock: SharedClock) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&config.log.level);
    let bound = crate::app::bind(&config)
        .await
        .context("cannot listen on http.public_addr / http.admin_addr")?;
    let mut config = config;
    if config.http.admin_url.is_none() {
        config.http.admin_url = Some(format!("http://{}", bound.admin_addr));
    }
    let startup = crate::app::start(config, clock).await?;
    crate::admin_web::register_client(&startup.state)
        .await
        .context("cannot register the admin UI's OAuth client")?;
    for key in &startup.generated_keys {
        tracing::info!(kid = %key.kid, alg = key.alg.as_str(), "generated signing key");
    }
    if let Some(code) = &startup.bootstrap_code {
        tracing::warn!("no users exist yet: bootstrap instructions printed on stderr");
        eprintln!(
            "\n  No administrator exists yet. Create the first one (this code works once, for 1 hour):\n\n    \
             portcullis user create --username admin --password-stdin --bootstrap-code {code}\n\n  \
             It becomes a security_admin; grant other roles with `portcullis role grant`.\n"
        );
    }
    tracing::info!(
        public_addr = %bound.public_addr,
        admin_addr = %bound.admin_addr,
        backend = startup.state.store.backend().name(),
        issuer = %startup.state.config.issuer,
        "listening"
    );
    crate::app::serve(startup.state, bound, crate::app::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("cannot read the password from standard input")?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!(
            "no password on standard input: pipe it in, e.g. `printf '%s' \"$PW\" | portcullis user create --username U --password-stdin`"
        );
    }
    Ok(password.to_string())
}

async fn user(config: Config, clock: SharedClock, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let ctx = AuditContext::cli();
    match cmd {
        UserCommand::Create {
            username,
            password_stdin,
            email,
            bootstrap_code,
        } => {
            if !password_stdin {
                bail!(
                    "pass the password on standard input with --password-stdin (never as an argument)"
                );
            }
            let password = read_password_stdin()?;
            let store = connect(&config).await?;
            let new = NewUser {
                username,
                password,
                email,
            };
            let user = match bootstrap_code {
                Some(code) => {
                    users::bootstrap::create_first_admin(&store, clock.as_ref(), &ctx, &code, new)
                        .await?
                }
                None => users::create_user(&store, clock.as_ref(), &ctx, new).await?,
            };
            println!("created user {} (id {})", user.username, user.id);
        }
        UserCommand::Lock(args) => lock(&config, clock, &ctx, args, true).await?,
        UserCommand::Unlock(args) => lock(&config, clock, &ctx, args, false).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn lock(
    config: &Config,
    clock: SharedClock,
    ctx: &AuditContext,
    args: LockArgs,
    locked: bool,
) -> anyhow::Result<()> {
    let store = connect(config).await?;
    let changed = users::set_locked(
        &store,
        clock.as_ref(),
        ctx,
        &args.username,
        locked,
        args.reason,
        args.ticket_id,
    )
    .await?;
    let state = if locked { "locked" } else { "unlocked" };
    if changed {
        println!("user {} is now {state}", args.username);
    } else {
        println!(
            "user {} was already {state}; nothing changed",
            args.username
        );
    }
    Ok(())
}

async fn client_create(
    config: Config,
    clock: SharedClock,
    a: ClientCreateArgs,
) -> anyhow::Result<ExitCode> {
    let store = connect(&config).await?;
    let (client, secret) = clients::register(
        &store,
        clock.as_ref(),
        &AuditContext::cli(),
        NewClient {
            name: a.name,
            id: a.id,
            is_public: a.public,
            redirect_uris: a.redirect_uris,
            post_logout_redirect_uris: a.post_logout_redirect_uris,
            grant_types: a.grants,
            scope: a.scope,
            backchannel_logout_uri: a.backchannel_logout_uri,
            first_party: a.first_party,
            may_introspect: a.may_introspect,
            exchange_audiences: a.exchange_audiences,
            id_token_alg: a.id_token_alg,
        },
    )
    .await?;
    if a.json {
        let mut out = serde_json::json!({ "client_id": client.id });
        if let Some(secret) = &secret {
            out["client_secret"] = serde_json::Value::String(secret.0.clone());
        }
        println!("{out}");
    } else {
        println!("client_id:     {}", client.id);
        if let Some(secret) = &secret {
            println!("client_secret: {}", secret.0);
            println!("(the secret is shown only now; store it safely)");
        }
        let grants: Vec<&str> = client.grant_types.iter().map(|g| g.as_str()).collect();
        println!("grants:        {}", grants.join(" "));
        println!("scopes:        {}", client.scopes.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

async fn role(config: Config, clock: SharedClock, cmd: RoleCommand) -> anyhow::Result<ExitCode> {
    let store = connect(&config).await?;
    let ctx = AuditContext::cli();
    match cmd {
        RoleCommand::Grant(a) => {
            crate::permissions::grant(&store, clock.as_ref(), &ctx, &a.username, &a.role).await?;
            println!("granted role {} to {}", a.role, a.username);
        }
        RoleCommand::Revoke(a) => {
            crate::permissions::revoke(&store, clock.as_ref(), &ctx, &a.username, &a.role).await?;
            println!("revoked role {} from {}", a.role, a.username);
        }
        RoleCommand::List { json } => {
            let roles = crate::permissions::list_roles(&store).await?;
            if json {
                println!("{}", serde_json::to_string(&roles)?);
            } else {
                for r in roles {
                    println!("{:<16} {}", r.name, r.permissions.join(", "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys_cmd(
    config: Config,
    clock: SharedClock,
    cmd: KeysCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List { json } => {
            let set = keys::load(&config.keys.dir)?;
            let now = clock.now();
            let keep = i64::try_from(config.retired_key_retention().as_secs()).unwrap_or(i64::MAX);
            let rows: Vec<serde_json::Value> = set
                .metas()
                .into_iter()
                .map(|m| {
                    let state = match m.retired_at {
                        None => "active",
                        Some(at) if at.saturating_add(keep) > now => "retired (still in JWKS)",
                        Some(_) => "expired",
                    };
                    serde_json::json!({"kid": m.kid, "alg": m.alg, "state": state,
                        "created_at": crate::clock::rfc3339_ms(m.created_at * 1000),
                        "retired_at": m.retired_at.map(|t| crate::clock::rfc3339_ms(t * 1000))})
                })
                .collect();
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!(
                    "no keys yet: `portcullis serve` or `portcullis keys rotate` creates them"
                );
            } else {
                for r in rows {
                    println!(
                        "{}  {}  {}  created {}",
                        r["kid"].as_str().unwrap_or(""),
                        r["alg"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["created_at"].as_str().unwrap_or("")
                    );
                }
            }
        }
        KeysCommand::Rotate { alg } => {
            let algs = match alg {
                None => SigningAlg::ALL.to_vec(),
                Some(a) => vec![
                    SigningAlg::parse(&a)
                        .ok_or_else(|| anyhow!("unknown algorithm {a:?}: use ES256 or RS256"))?,
                ],
            };
            let store = connect(&config).await?;
            let rotation = keys::rotate(&config.keys.dir, &algs, clock.now())?;
            audit::record_alone(
                &store,
                clock.now_ms(),
                &AuditContext::cli(),
                AuditEvent::new("keys.rotate", "keys")
                    .before(serde_json::json!({"active": rotation.retired}))
                    .after(serde_json::json!({"active": rotation.new})),
            )
            .await?;
            for k in &rotation.new {
                println!("new active {} key {}", k.alg.as_str(), k.kid);
            }
            for k in &rotation.retired {
                println!(
                    "retired {} key {} (stays in JWKS until its tokens expire)",
                    k.alg.as_str(),
                    k.kid
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit_cmd(
    config: Config,
    clock: SharedClock,
    cmd: AuditCommand,
) -> anyhow::Result<ExitCode> {
    let store = connect(&config).await?;
    match cmd {
        AuditCommand::Verify { json } => {
            // A break is also recorded (once per distinct break) as the
            // security event `audit.chain_failure`.
            let report = match crate::security::events::verify_audit_chain(
                &store,
                clock.now_ms(),
                &AuditContext::cli(),
            )
            .await
            {
                Ok((report, _)) => report,
                Err(e) => {
                    eprintln!("warning: cannot record the audit chain failure: {e}");
                    audit::verify(&store).await?
                }
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            match &report.first_break {
                None => {
                    if !json {
                        println!(
                            "audit chain OK: {} rows, head #{} {}",
                            report.rows_checked, report.head_seq, report.head_hash
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    eprintln!(
                        "error: audit chain broken at row {}: {} ({} rows before it verify)",
                        b.seq, b.problem, report.rows_checked
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
        AuditCommand::Export { since, format } => {
            let since_ms = match since {
                Some(s) => Some(crate::clock::parse_rfc3339_ms(&s).ok_or_else(|| {
                    anyhow!("invalid --since {s:?}: use RFC 3339, e.g. 2026-01-31T00:00:00Z")
                })?),
                None => None,
            };
            let format = match format {
                FormatArg::Jsonl => ExportFormat::JsonLines,
                FormatArg::Csv => ExportFormat::Csv,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            audit::export(&store, since_ms, format, &mut out).await?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
