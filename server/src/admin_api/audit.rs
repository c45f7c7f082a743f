//! Staff access to the audit log (`audit:read`): search, export, verify.
//! Both the JSON API (handlers below) and the admin UI call these
//! functions. Reading a page is not audited; an export is (`audit.export`,
//! with the filter, format and row count), since it takes the log out of
//! the system.
//!
//! `GET /admin/api/audit?actor=&action=&target=&from=&to=&page=` (newest
//! first), `GET /admin/api/audit/export?format=csv|jsonl&…` (the same
//! filters, chain order, as an attachment), `GET /admin/api/audit/verify`.
//! Filter semantics: [`AuditFilter`].

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::{Paged, Staff, no_store_json, page_window};
use crate::app::AppState;
use crate::audit::{AuditEvent, AuditRecord, ExportFormat, VerifyReport};
use crate::error::AppError;
use crate::permissions::Permission;

pub use crate::audit::AuditFilter;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/audit", get(search_handler))
        .route("/admin/api/audit/export", get(export_handler))
        .route("/admin/api/audit/verify", get(verify_handler))
}

/// Longest actor, action or target filter accepted.
const MAX_FILTER_CHARS: usize = 200;

impl AuditFilter {
    /// From query parameters: blank values are absent; `from` / `to` are
    /// RFC 3339 times (inclusive); each text filter at most 200 characters.
    /// See [`AuditFilter`] for exact vs prefix matching.
    pub fn from_query(
        actor: Option<&str>,
        action: Option<&str>,
        target: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Self, AppError> {
        let text = |name: &str, v: Option<&str>| -> Result<Option<String>, AppError> {
            match v.map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if v.chars().count() > MAX_FILTER_CHARS => Err(AppError::BadRequest(
                    format!("{name} is longer than {MAX_FILTER_CHARS} characters"),
                )),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        let instant = |name: &str, v: Option<&str>| -> Result<Option<i64>, AppError> {
            match v.map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(t) => crate::clock::parse_rfc3339_ms(t).map(Some).ok_or_else(|| {
                    AppError::BadRequest(format!(
                        "{name} must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z"
                    ))
                }),
            }
        };
        let filter = AuditFilter {
            actor: text("actor", actor)?,
            action: text("action", action)?,
            target: text("target", target)?,
            from_ms: instant("from", from)?,
            to_ms: instant("to", to)?,
        };
        if let (Some(f), Some(t)) = (filter.from_ms, filter.to_ms)
            && f > t
        {
            return Err(AppError::BadRequest("from is after to".into()));
        }
        Ok(filter)
    }
}

/// `audit:read`; newest first, [`super::PAGE_SIZE`] per page. Not audited.
pub async fn search(
    state: &AppState,
    staff: &Staff,
    filter: &AuditFilter,
    page: i64,
) -> Result<Paged<AuditRecord>, AppError> {
    staff.require(Permission::AuditRead)?;
    let (limit, offset) = page_window(page);
    let rows = crate::store::audit::search(&state.store, filter, 0, true, limit, offset).await?;
    Ok(Paged::from_rows(rows, page))
}

/// `audit:read`. The matching rows in chain order, in the CLI's export
/// format (CSV or JSON lines). Audited `audit.export` before the data is
/// handed out.
pub async fn export(
    state: &AppState,
    staff: &Staff,
    filter: &AuditFilter,
    format: ExportFormat,
) -> Result<Vec<u8>, AppError> {
    staff.require(Permission::AuditRead)?;
    let mut out = Vec::new();
    let rows = crate::audit::export_filtered(&state.store, filter, format, &mut out)
        .await
        .map_err(|e| match e {
            crate::audit::ExportError::Store(e) => AppError::from(e),
            other => AppError::Internal(other.to_string()),
        })?;
    crate::audit::record_alone(
        &state.store,
        state.clock.now_ms(),
        &staff.audit_ctx(),
        AuditEvent {
            action: "audit.export".into(),
            target: Some("audit_log".into()),
            after: Some(json!({
                "filter": {
                    "actor": filter.actor,
                    "action": filter.action,
                    "target": filter.target,
                    "from_ms": filter.from_ms,
                    "to_ms": filter.to_ms,
                },
                "format": format_name(format),
                "rows": rows,
            })),
            ..AuditEvent::default()
        },
    )
    .await?;
    Ok(out)
}

/// `audit:read`. Walks the whole chain (see [`crate::audit::verify`]); a
/// break is recorded as the security event `audit.chain_failure` (once per
/// distinct break).
pub async fn verify(state: &AppState, staff: &Staff) -> Result<VerifyReport, AppError> {
    staff.require(Permission::AuditRead)?;
    let (report, recorded) = crate::security::events::verify_audit_chain(
        &state.store,
        state.clock.now_ms(),
        &staff.audit_ctx(),
    )
    .await?;
    if recorded {
        state.outbox_wake.notify_one();
    }
    Ok(report)
}

fn format_name(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::JsonLines => "jsonl",
    }
}

// ---- HTTP ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<String>,
    format: Option<String>,
}

impl AuditQuery {
    fn filter(&self) -> Result<AuditFilter, AppError> {
        AuditFilter::from_query(
            self.actor.as_deref(),
            self.action.as_deref(),
            self.target.as_deref(),
            self.from.as_deref(),
            self.to.as_deref(),
        )
    }
}

async fn search_handler(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<AuditQuery>,
) -> Result<Response, AppError> {
    let page = super::parse_page(q.page.as_deref())?;
    let found = search(&state, &staff, &q.filter()?, page).await?;
    // The rows as the export shows them (before/after parsed, RFC 3339 time).
    Ok(no_store_json(
        StatusCode::OK,
        &found.map(|r| crate::audit::export_json(&r)),
    ))
}

async fn export_handler(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<AuditQuery>,
) -> Result<Response, AppError> {
    let format = match q.format.as_deref().map(str::trim) {
        None | Some("") | Some("jsonl") => ExportFormat::JsonLines,
        Some("csv") => ExportFormat::Csv,
        Some(_) => return Err(AppError::BadRequest("format must be csv or jsonl".into())),
    };
    let bytes = export(&state, &staff, &q.filter()?, format).await?;
    let (content_type, ext) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ExportFormat::JsonLines => ("application/x-ndjson", "jsonl"),
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"portcullis-audit.{ext}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn verify_handler(State(state): State<AppState>, staff: Staff) -> Result<Response, AppError> {
    let report = verify(&state, &staff).await?;
    let mut out = serde_json::to_value(&report).map_err(|e| AppError::Internal(e.to_string()))?;
    out["ok"] = report.first_break.is_none().into();
    Ok(no_store_json(StatusCode::OK, &out))
}
