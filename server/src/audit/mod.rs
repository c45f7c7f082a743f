//! Append-only, hash-chained audit log: one row per admin or security
//! decision, written in the same transaction as the change it records, so
//! there is never a change without its row or a row without its change.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, StoreResult, Tx};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// A person, by user id.
    User,
    /// An OAuth client acting for itself (client credentials).
    Client,
    /// An operator at the command line (the OS user is recorded as id).
    Cli,
    /// The server itself (expiry jobs, bootstrap).
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Client => "client",
            ActorKind::Cli => "cli",
            ActorKind::System => "system",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    pub session: Option<String>,
}

/// Who is acting and through which request; passed into every domain
/// function that changes state.
#[derive(Debug, Clone)]
pub struct AuditContext {
    pub actor: Actor,
    pub request_id: Option<String>,
    pub ip: Option<String>,
}

impl AuditContext {
    /// An operator running the CLI on this machine.
    pub fn cli() -> Self {
        let who = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".to_string());
        AuditContext {
            actor: Actor {
                kind: ActorKind::Cli,
                id: who,
                session: None,
            },
            request_id: Some(format!("cli-{}", uuid::Uuid::new_v4())),
            ip: None,
        }
    }

    pub fn system(job: &str) -> Self {
        AuditContext {
            actor: Actor {
                kind: ActorKind::System,
                id: job.to_string(),
                session: None,
            },
            request_id: None,
            ip: None,
        }
    }
}

/// What happened. `before`/`after` are JSON snapshots of the target.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub action: String,
    pub target: Option<String>,
    pub reason: Option<String>,
    pub ticket_id: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl AuditEvent {
    pub fn new(action: &str, target: impl Into<String>) -> Self {
        AuditEvent {
            action: action.to_string(),
            target: Some(target.into()),
            ..Default::default()
        }
    }

    pub fn reason(mut self, reason: Option<String>, ticket_id: Option<String>) -> Self {
        self.reason = reason;
        self.ticket_id = ticket_id;
        self
    }

    pub fn before(mut self, v: serde_json::Value) -> Self {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: serde_json::Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_session: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub reason: Option<String>,
    pub ticket_id: Option<String>,
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The exact bytes the hash covers: every column but `hash`, as a JSON
/// array in a fixed order (no map ordering to drift).
fn canonical(r: &AuditRecord) -> String {
    serde_json::json!([
        r.seq,
        r.at_ms,
        r.actor_kind,
        r.actor_id,
        r.actor_session,
        r.action,
        r.target,
        r.reason,
        r.ticket_id,
        r.before_json,
        r.after_json,
        r.request_id,
        r.ip,
        r.prev_hash,
    ])
    .to_string()
}

pub fn compute_hash(r: &AuditRecord) -> String {
    hex::encode(Sha256::digest(canonical(r).as_bytes()))
}

/// Appends one row inside the caller's transaction.
pub async fn record(
    store: &Store,
    tx: &mut Tx,
    now_ms: i64,
    ctx: &AuditContext,
    event: AuditEvent,
) -> StoreResult<AuditRecord> {
    let head = crate::store::audit::lock_head(store, tx).await?;
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS_HASH.to_string()),
    };
    let mut row = AuditRecord {
        seq,
        at_ms: now_ms,
        actor_kind: ctx.actor.kind.as_str().to_string(),
        actor_id: ctx.actor.id.clone(),
        actor_session: ctx.actor.session.clone(),
        action: event.action,
        target: event.target,
        reason: event.reason,
        ticket_id: event.ticket_id,
        before_json: event.before.map(|v| v.to_string()),
        after_json: event.after.map(|v| v.to_string()),
        request_id: ctx.request_id.clone(),
        ip: ctx.ip.clone(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = compute_hash(&row);
    crate::store::audit::insert(tx, &row).await?;
    // A security event also goes to the webhooks, in this same transaction.
    crate::security::events::on_audit(store, tx, &row).await?;
    Ok(row)
}

/// Appends one row in a transaction of its own (events with no other write).
pub async fn record_alone(
    store: &Store,
    now_ms: i64,
    ctx: &AuditContext,
    event: AuditEvent,
) -> StoreResult<AuditRecord> {
    let mut tx = store.begin().await?;
    let row = record(store, &mut tx, now_ms, ctx, event).await?;
    tx.commit().await?;
    Ok(row)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// Sequence number of the first row that does not verify (for a removed
    /// row: the sequence number that is missing).
    pub seq: i64,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub rows_checked: u64,
    pub head_seq: i64,
    pub head_hash: String,
    pub first_break: Option<ChainBreak>,
}

const PAGE: i64 = 1000;

/// Walks the whole chain. Detects edited rows (hash mismatch), removed or
/// reordered rows (sequence gap, broken `prev_hash` link). Removal of the
/// newest rows is only visible against a head recorded elsewhere, which is
/// why the report carries `head_seq`/`head_hash` for operators to keep.
pub async fn verify(store: &Store) -> StoreResult<VerifyReport> {
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut checked = 0u64;
    loop {
        let rows = crate::store::audit::page(store, expected_seq - 1, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let problem = if row.seq != expected_seq {
                Some((
                    expected_seq,
                    format!("row {expected_seq} is missing (next row is {})", row.seq),
                ))
            } else if row.prev_hash != prev_hash {
                Some((
                    row.seq,
                    "prev_hash does not match the previous row's hash".to_string(),
                ))
            } else if compute_hash(&row) != row.hash {
                Some((
                    row.seq,
                    "contents do not match the row's hash (row was altered)".to_string(),
                ))
            } else {
                None
            };
            if let Some((seq, problem)) = problem {
                return Ok(VerifyReport {
                    rows_checked: checked,
                    head_seq: expected_seq - 1,
                    head_hash: prev_hash,
                    first_break: Some(ChainBreak { seq, problem }),
                });
            }
            checked += 1;
            expected_seq = row.seq + 1;
            prev_hash = row.hash;
        }
    }
    Ok(VerifyReport {
        rows_checked: checked,
        head_seq: expected_seq - 1,
        head_hash: prev_hash,
        first_break: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    JsonLines,
    Csv,
}

const CSV_HEADER: &str = "seq,time,actor_kind,actor_id,actor_session,action,target,reason,ticket_id,before,after,request_id,ip,prev_hash,hash";

/// Which rows a search or export covers; every field optional, all given
/// fields must match.
///
/// - `actor`: exact actor id (a user id, a client id, `cli:` operator or
///   system job), or a username, which stands for that user's id.
/// - `action`: exact, or a prefix when it ends in `.` or `*`
///   (`refund.` or `refund*` match every refund action).
/// - `target`: exact, or a prefix when it ends in `:` or `*`
///   (`client:` matches every client, `user:al*` users from `al`).
/// - `from_ms` / `to_ms`: inclusive bounds on the row's time (ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// `(exact, prefix)`: a value ending in `*` or `sep` is a prefix (the `*`
/// itself dropped), anything else exact.
fn exact_or_prefix(value: &Option<String>, sep: char) -> (Option<String>, Option<String>) {
    match value.as_deref() {
        None | Some("") => (None, None),
        Some(v) => match v.strip_suffix('*') {
            Some("") => (None, None),
            Some(p) => (None, Some(p.to_string())),
            None if v.ends_with(sep) => (None, Some(v.to_string())),
            None => (Some(v.to_string()), None),
        },
    }
}

impl AuditFilter {
    /// `(exact, prefix)` of the action filter.
    pub fn action_match(&self) -> (Option<String>, Option<String>) {
        exact_or_prefix(&self.action, '.')
    }

    /// `(exact, prefix)` of the target filter.
    pub fn target_match(&self) -> (Option<String>, Option<String>) {
        exact_or_prefix(&self.target, ':')
    }
}

/// Writes rows at or after `since_ms` to `out`, in chain order.
pub async fn export<W: std::io::Write>(
    store: &Store,
    since_ms: Option<i64>,
    format: ExportFormat,
    out: &mut W,
) -> Result<u64, ExportError> {
    let filter = AuditFilter {
        from_ms: since_ms,
        ..AuditFilter::default()
    };
    export_filtered(store, &filter, format, out).await
}

/// Writes the rows matching `filter` to `out`, in chain order, one format
/// for the CLI and the admin API.
pub async fn export_filtered<W: std::io::Write>(
    store: &Store,
    filter: &AuditFilter,
    format: ExportFormat,
    out: &mut W,
) -> Result<u64, ExportError> {
    let mut after = 0;
    let mut count = 0u64;
    if format == ExportFormat::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    loop {
        let rows = crate::store::audit::search(store, filter, after, false, PAGE, 0).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            after = row.seq;
            count += 1;
            match format {
                ExportFormat::JsonLines => {
                    writeln!(out, "{}", export_json(&row))?;
                }
                ExportFormat::Csv => {
                    let fields = [
                        row.seq.to_string(),
                        crate::clock::rfc3339_ms(row.at_ms),
                        row.actor_kind.clone(),
                        row.actor_id.clone(),
                        row.actor_session.clone().unwrap_or_default(),
                        row.action.clone(),
                        row.target.clone().unwrap_or_default(),
                        row.reason.clone().unwrap_or_default(),
                        row.ticket_id.clone().unwrap_or_default(),
                        row.before_json.clone().unwrap_or_default(),
                        row.after_json.clone().unwrap_or_default(),
                        row.request_id.clone().unwrap_or_default(),
                        row.ip.clone().unwrap_or_default(),
                        row.prev_hash.clone(),
                        row.hash.clone(),
                    ];
                    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    writeln!(out, "{}", line.join(","))?;
                }
            }
        }
    }
    Ok(count)
}

/// One row as the JSON object the export and the admin API show.
pub fn export_json(row: &AuditRecord) -> serde_json::Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::String(t.to_string())))
    };
    serde_json::json!({
        "seq": row.seq,
        "time": crate::clock::rfc3339_ms(row.at_ms),
        "at_ms": row.at_ms,
        "actor": {"kind": row.actor_kind, "id": row.actor_id, "session": row.actor_session},
        "action": row.action,
        "target": row.target,
        "reason": row.reason,
        "ticket_id": row.ticket_id,
        "before": parse(&row.before_json),
        "after": parse(&row.after_json),
        "request_id": row.request_id,
        "ip": row.ip,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    })
}

/// RFC 4180 quoting; a leading `=`, `+`, `-`, `@` is prefixed with `'` so a
/// spreadsheet never evaluates audit text as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) || text.starts_with('\'') {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
}
