//! GET pages: load through the staff operations, turn domain values into
//! the admin-ui view models, render.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use admin_ui::model::{self as m, Flash, FlashKind, Nav};

use super::{Page, StaffSession, html_response};
use crate::admin_api::{self, Paged};
use crate::app::AppState;
use crate::error::AppError;
use crate::permissions::Permission;

/// `2026-11-21 09:30:05 UTC` from unix seconds.
pub(super) fn when(secs: i64) -> String {
    let text = crate::clock::rfc3339_ms(secs.saturating_mul(1000));
    let text = text
        .split('.')
        .next()
        .unwrap_or(&text)
        .trim_end_matches('Z');
    format!("{} UTC", text.replacen('T', " ", 1))
}

fn when_opt(secs: Option<i64>) -> String {
    secs.map(when).unwrap_or_default()
}

/// Query string without `page` and `done`, for paging links.
fn keep_query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

fn paging<T>(path: &str, query: &str, page: &Paged<T>) -> m::Paging {
    let href = |n: i64| {
        if query.is_empty() {
            format!("{path}?page={n}")
        } else {
            format!("{path}?{query}&page={n}")
        }
    };
    m::Paging {
        page: page.page,
        prev_href: (page.page > 1).then(|| href(page.page - 1)),
        next_href: page.next_page.map(href),
    }
}

/// Fixed confirmation messages after a redirect (the query carries only a
/// code, so a crafted link cannot put words on the page).
fn flash(done: Option<&str>) -> Option<Flash> {
    let message = match done? {
        "terminated" => "Session terminated; its tokens are revoked.",
        "terminated_all" => "Every active session of the user was terminated.",
        "locked" => "Account locked; the user's sessions were ended.",
        "unlocked" => "Account unlocked.",
        "mfa_reset" => "Second factors reset; the user's sessions were ended.",
        "client_updated" => "Client updated.",
        "tokens_revoked" => "Every token of the client was revoked.",
        "refund_requested" => "Refund requested.",
        "refund_rejected" => "Refund rejected.",
        "refund_cancelled" => "Refund request cancelled.",
        _ => return None,
    };
    Some(Flash {
        kind: FlashKind::Success,
        message: message.to_string(),
    })
}

fn render(
    session: &StaffSession,
    title: &str,
    nav: Nav,
    done: Option<&str>,
    page: impl FnOnce(&m::Layout) -> String,
) -> Response {
    let mut layout = session.layout(title, nav);
    layout.flash = flash(done);
    html_response(StatusCode::OK, page(&layout))
}

fn fail(session: &StaffSession, title: &str, nav: Nav, e: AppError) -> Page {
    Page::error(Some(&session.layout(title, nav)), e)
}

pub async fn home(session: StaffSession) -> Response {
    render(&session, "Overview", Nav::Home, None, admin_ui::home_page)
}

pub(super) fn session_row(s: &admin_api::sessions::SessionListing) -> m::SessionRow {
    let x = &s.session;
    let ended_by = match (&x.ended_by, &x.ended_by_id) {
        (Some(kind), Some(id)) if kind == "support" => format!("support ({id})"),
        (Some(kind), _) => kind.clone(),
        _ => String::new(),
    };
    m::SessionRow {
        id: x.id.clone(),
        user: s.username.clone(),
        client_ids: s.client_ids.join(", "),
        ip: x.ip.clone().unwrap_or_default(),
        device: crate::sessions::device::describe(x.user_agent.as_deref()),
        user_agent: x.user_agent.clone().unwrap_or_default(),
        created_at: when(x.created_at),
        last_seen_at: when(x.last_seen_at),
        amr: x.amr.join(", "),
        active: x.is_live(),
        ended_at: when_opt(x.ended_at),
        ended_by,
        end_reason: x.end_reason.clone().unwrap_or_default(),
        ticket_id: x.ticket_id.clone().unwrap_or_default(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SessionsQuery {
    user: Option<String>,
    client: Option<String>,
    ip: Option<String>,
    state: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<String>,
    done: Option<String>,
}

pub async fn sessions(
    State(state): State<AppState>,
    session: StaffSession,
    Query(q): Query<SessionsQuery>,
) -> Result<Response, Page> {
    let title = "Sessions";
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let filter = m::SessionFilterView {
        user: s(&q.user),
        client: s(&q.client),
        ip: s(&q.ip),
        state: s(&q.state),
        from: s(&q.from),
        to: s(&q.to),
    };
    let query = admin_api::sessions::SearchQuery {
        user: q.user.clone(),
        client: q.client.clone(),
        ip: q.ip.clone(),
        state: q.state.clone(),
        from: q.from.clone(),
        to: q.to.clone(),
        page: q.page.clone(),
    };
    let found = admin_api::sessions::search(&state, &session.staff, query)
        .await
        .map_err(|e| fail(&session, title, Nav::Sessions, e))?;
    let kept = keep_query(&[
        ("user", &filter.user),
        ("client", &filter.client),
        ("ip", &filter.ip),
        ("state", &filter.state),
        ("from", &filter.from),
        ("to", &filter.to),
    ]);
    let view = m::SessionsView {
        rows: found.items.iter().map(session_row).collect(),
        paging: paging("/sessions", &kept, &found),
        return_to: if kept.is_empty() {
            "/sessions".into()
        } else {
            format!("/sessions?{kept}")
        },
        filter,
    };
    Ok(render(
        &session,
        title,
        Nav::Sessions,
        q.done.as_deref(),
        |l| admin_ui::sessions_page(l, view),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct UsersQuery {
    q: Option<String>,
    page: Option<String>,
}

fn user_row(u: &admin_api::users::UserSummary) -> m::UserRow {
    m::UserRow {
        username: u.username.clone(),
        locked: u.locked,
        created_at: when(u.created_at),
        roles: u.roles.join(", "),
        active_sessions: u.active_sessions,
    }
}

pub async fn users(
    State(state): State<AppState>,
    session: StaffSession,
    Query(q): Query<UsersQuery>,
) -> Result<Response, Page> {
    let title = "Users";
    let page = admin_api::parse_page(q.page.as_deref())
        .map_err(|e| fail(&session, title, Nav::Users, e))?;
    let found = admin_api::users::search(&state, &session.staff, q.q.as_deref(), page)
        .await
        .map_err(|e| fail(&session, title, Nav::Users, e))?;
    let needle = q.q.clone().unwrap_or_default();
    let view = m::UsersView {
        rows: found.items.iter().map(user_row).collect(),
        paging: paging("/users", &keep_query(&[("q", &needle)]), &found),
        q: needle,
    };
    Ok(render(&session, title, Nav::Users, None, |l| {
        admin_ui::users_page(l, view)
    }))
}

#[derive(Debug, Default, Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

pub async fn user(
    State(state): State<AppState>,
    session: StaffSession,
    Path(username): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, Page> {
    let title = format!("User {username}");
    let detail = admin_api::users::detail(&state, &session.staff, &username)
        .await
        .map_err(|e| fail(&session, &title, Nav::Users, e))?;
    // The user's sessions, when the viewer may see sessions.
    let sessions = if session
        .staff
        .permissions
        .contains(&Permission::SessionsRead)
    {
        let query = admin_api::sessions::SearchQuery {
            user: Some(detail.user.username.clone()),
            ..Default::default()
        };
        admin_api::sessions::search(&state, &session.staff, query)
            .await
            .map_err(|e| fail(&session, &title, Nav::Users, e))?
            .items
            .iter()
            .map(session_row)
            .collect()
    } else {
        Vec::new()
    };
    let f = &detail.factors;
    let view = m::UserDetailView {
        user: user_row(&detail.user),
        totp: f.totp,
        security_keys: f
            .security_keys
            .iter()
            .map(|k| m::SecurityKeyRow {
                name: k.name.clone(),
                created_at: when(k.created_at),
                last_used_at: when_opt(k.last_used_at),
            })
            .collect(),
        recovery_codes_left: f.recovery_codes_left,
        passkey_sign_in: f.passkey_sign_in,
        sessions,
        is_self: detail.user.id == session.staff.user_id,
    };
    Ok(render(
        &session,
        &title,
        Nav::Users,
        q.done.as_deref(),
        |l| admin_ui::user_page(l, view),
    ))
}

pub(super) fn client_row(c: &admin_api::clients::ClientView) -> m::ClientRow {
    m::ClientRow {
        client_id: c.client_id.clone(),
        kind: if c.public { "public" } else { "confidential" }.into(),
        redirect_uris: c.redirect_uris.clone(),
        scopes: c.scopes.join(" "),
        grant_types: c.grant_types.join(", "),
        may_introspect: c.may_introspect,
        first_party: c.first_party,
        created_at: when(c.created_at),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    page: Option<String>,
}

pub async fn clients(
    State(state): State<AppState>,
    session: StaffSession,
    Query(q): Query<PageQuery>,
) -> Result<Response, Page> {
    let title = "Clients";
    let page = admin_api::parse_page(q.page.as_deref())
        .map_err(|e| fail(&session, title, Nav::Clients, e))?;
    let found = admin_api::clients::list(&state, &session.staff, page)
        .await
        .map_err(|e| fail(&session, title, Nav::Clients, e))?;
    let view = m::ClientsView {
        rows: found.items.iter().map(client_row).collect(),
        paging: paging("/clients", "", &found),
    };
    Ok(render(&session, title, Nav::Clients, None, |l| {
        admin_ui::clients_page(l, view)
    }))
}

pub async fn client(
    State(state): State<AppState>,
    session: StaffSession,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, Page> {
    let title = format!("Client {id}");
    let c = admin_api::clients::show(&state, &session.staff, &id)
        .await
        .map_err(|e| fail(&session, &title, Nav::Clients, e))?;
    let view = m::ClientDetailView {
        client: client_row(&c),
        new_secret: None,
    };
    Ok(render(
        &session,
        &title,
        Nav::Clients,
        q.done.as_deref(),
        |l| admin_ui::client_page(l, view),
    ))
}

async fn username_of(state: &AppState, user_id: Option<&str>) -> String {
    match user_id {
        None => String::new(),
        Some(id) => crate::store::users::find_by_id(&state.store, id)
            .await
            .ok()
            .flatten()
            .map(|u| u.username)
            .unwrap_or_else(|| id.to_string()),
    }
}

pub(super) async fn refund_row(state: &AppState, r: &crate::refunds::Refund) -> m::RefundRow {
    let decided_by = match (&r.approved_by_username, &r.rejected_by, &r.cancelled_by) {
        (Some(a), _, _) => a.clone(),
        (None, Some(id), _) | (None, None, Some(id)) => username_of(state, Some(id)).await,
        _ => String::new(),
    };
    m::RefundRow {
        id: r.id.clone(),
        status: r.status.as_str().to_string(),
        payment_id: r.payment_id.clone(),
        amount: crate::refunds::amount_text(r.amount_minor, &r.currency),
        currency: r.currency.clone(),
        reason: r.reason.clone(),
        ticket_id: r.ticket_id.clone().unwrap_or_default(),
        requested_by: r.requested_by_username.clone(),
        approved_by: r.approved_by_username.clone().unwrap_or_default(),
        decided_by,
        created_at: when(r.created_at),
        updated_at: when(r.updated_at),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RefundsQuery {
    status: Option<String>,
    page: Option<String>,
    done: Option<String>,
}

pub async fn refunds(
    State(state): State<AppState>,
    session: StaffSession,
    Query(q): Query<RefundsQuery>,
) -> Result<Response, Page> {
    let title = "Refunds";
    let err = |e| fail(&session, title, Nav::Refunds, e);
    let page = admin_api::parse_page(q.page.as_deref()).map_err(err)?;
    let found = admin_api::refunds::list_refunds(&state, &session.staff, q.status.as_deref(), page)
        .await
        .map_err(|e| fail(&session, title, Nav::Refunds, e))?;
    let mut rows = Vec::with_capacity(found.items.len());
    for r in &found.items {
        rows.push(refund_row(&state, r).await);
    }
    let mut pending = Vec::new();
    if session
        .staff
        .permissions
        .contains(&Permission::RefundsApprove)
    {
        let queue = admin_api::refunds::list_refunds(
            &state,
            &session.staff,
            Some(crate::refunds::Status::PendingApproval.as_str()),
            1,
        )
        .await
        .map_err(|e| fail(&session, title, Nav::Refunds, e))?;
        for r in &queue.items {
            pending.push(refund_row(&state, r).await);
        }
    }
    let status = q.status.clone().unwrap_or_default();
    let settings = crate::refunds::Settings::from_config(&state.config);
    let view = m::RefundsView {
        paging: paging("/refunds", &keep_query(&[("status", &status)]), &found),
        status,
        statuses: crate::refunds::Status::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        pending,
        rows,
        idempotency_key: crate::crypto::random_id(),
        threshold_note: format!(
            "Above {} minor units (EUR; per-currency thresholds may differ) a second person with refunds:approve must approve.",
            settings.threshold("EUR")
        ),
    };
    Ok(render(
        &session,
        title,
        Nav::Refunds,
        q.done.as_deref(),
        |l| admin_ui::refunds_page(l, view),
    ))
}

/// The refund page, optionally with the approval token just minted.
pub(super) async fn refund_view(
    state: &AppState,
    session: &StaffSession,
    refund: &crate::refunds::Refund,
    approval_token: Option<String>,
) -> m::RefundDetailView {
    let staff = &session.staff;
    let pending = refund.status == crate::refunds::Status::PendingApproval;
    let own = refund.requested_by == staff.user_id;
    let fresh = crate::mfa::fresh_second_factor(
        &staff.amr,
        staff.auth_time,
        state.clock.now(),
        staff.step_up_max_age,
    );
    let here = format!("/refunds/{}", refund.id);
    m::RefundDetailView {
        refund: refund_row(state, refund).await,
        pending,
        may_decide: staff.permissions.contains(&Permission::RefundsApprove) && !own,
        step_up_needed: !fresh,
        step_up_href: format!(
            "/auth/login?step_up=1&return_to={}",
            form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
        ),
        may_cancel: own && staff.permissions.contains(&Permission::RefundsRequest),
        own_request: own,
        approval_token,
    }
}

pub async fn refund(
    State(state): State<AppState>,
    session: StaffSession,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, Page> {
    let title = "Refund";
    let r = admin_api::refunds::show_refund(&state, &session.staff, &id)
        .await
        .map_err(|e| fail(&session, title, Nav::Refunds, e))?;
    let view = refund_view(&state, &session, &r, None).await;
    Ok(render(
        &session,
        title,
        Nav::Refunds,
        q.done.as_deref(),
        |l| admin_ui::refund_page(l, view),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<String>,
    verify: Option<String>,
    format: Option<String>,
}

impl AuditQuery {
    fn filter(&self) -> Result<admin_api::audit::AuditFilter, AppError> {
        admin_api::audit::AuditFilter::from_query(
            self.actor.as_deref(),
            self.action.as_deref(),
            self.target.as_deref(),
            self.from.as_deref(),
            self.to.as_deref(),
        )
    }

    fn view(&self) -> m::AuditFilterView {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        m::AuditFilterView {
            actor: s(&self.actor),
            action: s(&self.action),
            target: s(&self.target),
            from: s(&self.from),
            to: s(&self.to),
        }
    }
}

fn audit_row(a: &crate::audit::AuditRecord) -> m::AuditRow {
    let pretty = |j: &Option<String>| {
        j.as_deref()
            .map(|t| {
                serde_json::from_str::<serde_json::Value>(t)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or_else(|| t.to_string())
            })
            .unwrap_or_default()
    };
    m::AuditRow {
        seq: a.seq,
        time: when(a.at_ms.div_euclid(1000)),
        actor: format!("{}:{}", a.actor_kind, a.actor_id),
        action: a.action.clone(),
        target: a.target.clone().unwrap_or_default(),
        reason: a.reason.clone().unwrap_or_default(),
        ticket_id: a.ticket_id.clone().unwrap_or_default(),
        before: pretty(&a.before_json),
        after: pretty(&a.after_json),
        request_id: a.request_id.clone().unwrap_or_default(),
        ip: a.ip.clone().unwrap_or_default(),
    }
}

pub async fn audit(
    State(state): State<AppState>,
    session: StaffSession,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Page> {
    let title = "Audit log";
    let filter = q
        .filter()
        .map_err(|e| fail(&session, title, Nav::Audit, e))?;
    let page = admin_api::parse_page(q.page.as_deref())
        .map_err(|e| fail(&session, title, Nav::Audit, e))?;
    let found = admin_api::audit::search(&state, &session.staff, &filter, page)
        .await
        .map_err(|e| fail(&session, title, Nav::Audit, e))?;
    let chain = if q.verify.as_deref() == Some("1") {
        let report = admin_api::audit::verify(&state, &session.staff)
            .await
            .map_err(|e| fail(&session, title, Nav::Audit, e))?;
        Some(match &report.first_break {
            None => m::ChainStatus {
                ok: true,
                message: format!(
                    "Hash chain verified: {} rows, head #{} {}.",
                    report.rows_checked, report.head_seq, report.head_hash
                ),
            },
            Some(b) => m::ChainStatus {
                ok: false,
                message: format!("Hash chain BROKEN at row #{}: {}", b.seq, b.problem),
            },
        })
    } else {
        None
    };
    let fv = q.view();
    let kept = keep_query(&[
        ("actor", &fv.actor),
        ("action", &fv.action),
        ("target", &fv.target),
        ("from", &fv.from),
        ("to", &fv.to),
    ]);
    let with = |extra: &str| {
        if kept.is_empty() {
            format!("?{extra}")
        } else {
            format!("?{kept}&{extra}")
        }
    };
    let view = m::AuditView {
        rows: found.items.iter().map(audit_row).collect(),
        paging: paging("/audit", &kept, &found),
        chain,
        export_csv_href: format!("/audit/export{}", with("format=csv")),
        export_jsonl_href: format!("/audit/export{}", with("format=jsonl")),
        verify_href: format!("/audit{}", with("verify=1")),
        filter: fv,
    };
    Ok(render(&session, title, Nav::Audit, None, |l| {
        admin_ui::audit_page(l, view)
    }))
}

pub async fn audit_export(
    State(state): State<AppState>,
    session: StaffSession,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Page> {
    let title = "Audit log";
    let filter = q
        .filter()
        .map_err(|e| fail(&session, title, Nav::Audit, e))?;
    let (format, mime, ext) = match q.format.as_deref() {
        Some("csv") => (
            crate::audit::ExportFormat::Csv,
            "text/csv; charset=utf-8",
            "csv",
        ),
        Some("jsonl") | None => (
            crate::audit::ExportFormat::JsonLines,
            "application/jsonl; charset=utf-8",
            "jsonl",
        ),
        Some(_) => {
            return Err(fail(
                &session,
                title,
                Nav::Audit,
                AppError::BadRequest("format must be csv or jsonl".into()),
            ));
        }
    };
    let bytes = admin_api::audit::export(&state, &session.staff, &filter, format)
        .await
        .map_err(|e| fail(&session, title, Nav::Audit, e))?;
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"portcullis-audit.{ext}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}
