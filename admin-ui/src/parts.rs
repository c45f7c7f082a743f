//! Pieces shared by the pages: the frame, forms, paging, empty states.

use leptos::prelude::*;

use crate::model::{Flash, FlashKind, Layout, Nav, Paging, SessionRow};

/// Header with navigation (only the sections the viewer may use), the
/// flash message, and the page body.
pub fn frame(layout: &Layout, body: impl IntoView + 'static) -> impl IntoView + 'static {
    let links: Vec<(Nav, &str, &str, bool)> = vec![
        (
            Nav::Sessions,
            "/sessions",
            "Sessions",
            layout.can("sessions:read"),
        ),
        (Nav::Users, "/users", "Users", layout.can("users:read")),
        (
            Nav::Clients,
            "/clients",
            "Clients",
            layout.can("clients:manage"),
        ),
        (
            Nav::Refunds,
            "/refunds",
            "Refunds",
            layout.can("refunds:request") || layout.can("refunds:approve"),
        ),
        (Nav::Audit, "/audit", "Audit log", layout.can("audit:read")),
    ];
    let active = layout.nav;
    let nav = links
        .into_iter()
        .filter(|(_, _, _, allowed)| *allowed)
        .map(|(nav, href, label, _)| {
            let class = if nav == active { "active" } else { "" };
            view! { <a href=href class=class>{label}</a> }
        })
        .collect_view();
    let username = layout.username.clone();
    let csrf = layout.csrf.clone();
    let flash = layout.flash.clone().map(flash_box);
    let title = layout.title.clone();
    view! {
        <header class="top">
            <a href="/" class="brand">{crate::PRODUCT_NAME}</a>
            <nav>{nav}</nav>
            <form method="post" action="/auth/logout" class="signout">
                <span class="who">"Signed in as " <strong>{username}</strong></span>
                {csrf_field(csrf)}
                <button type="submit" class="link">"Sign out"</button>
            </form>
        </header>
        <main>
            <h1>{title}</h1>
            {flash}
            {body}
        </main>
    }
}

fn flash_box(flash: Flash) -> impl IntoView {
    let (class, role) = match flash.kind {
        FlashKind::Success => ("flash ok", "status"),
        FlashKind::Error => ("flash error", "alert"),
    };
    view! { <p class=class role=role>{flash.message}</p> }
}

pub fn csrf_field(token: String) -> impl IntoView {
    view! { <input type="hidden" name="csrf_token" value=token/> }
}

/// The reason (required) and ticket id (optional) every change asks for.
pub fn justification_fields() -> impl IntoView {
    view! {
        <label>"Reason" <input type="text" name="reason" required=true maxlength="500" placeholder="why (required, audited)"/></label>
        <label>"Ticket" <input type="text" name="ticket_id" maxlength="100" placeholder="optional ticket id"/></label>
    }
}

pub fn paging(p: &Paging) -> impl IntoView + use<> {
    let prev = p
        .prev_href
        .clone()
        .map(|h| view! { <a href=h rel="prev">"← Previous"</a> });
    let next = p
        .next_href
        .clone()
        .map(|h| view! { <a href=h rel="next">"Next →"</a> });
    let page = p.page;
    view! { <nav class="paging">{prev}<span>"Page " {page}</span>{next}</nav> }
}

pub fn empty(message: &'static str) -> impl IntoView {
    view! { <p class="empty">{message}</p> }
}

pub fn dash(text: &str) -> String {
    if text.is_empty() {
        "—".to_string()
    } else {
        text.to_string()
    }
}

/// Session table with optional terminate forms (only when the viewer holds
/// `sessions:terminate`).
pub fn sessions_table(
    rows: &[SessionRow],
    can_terminate: bool,
    csrf: &str,
    return_to: &str,
) -> AnyView {
    if rows.is_empty() {
        return empty("No sessions match.").into_any();
    }
    let body = rows
        .iter()
        .map(|s| {
            let state = if s.active {
                view! { <span class="badge ok">"active"</span> }.into_any()
            } else {
                let detail = format!(
                    "ended {} by {}{}{}",
                    dash(&s.ended_at),
                    dash(&s.ended_by),
                    if s.end_reason.is_empty() { String::new() } else { format!(": {}", s.end_reason) },
                    if s.ticket_id.is_empty() { String::new() } else { format!(" (ticket {})", s.ticket_id) },
                );
                view! { <span class="badge">"ended"</span><div class="small">{detail}</div> }
                    .into_any()
            };
            let action = (can_terminate && s.active).then(|| {
                let action = format!("/sessions/{}/terminate", s.id);
                view! {
                    <form method="post" action=action class="inline terminate">
                        {csrf_field(csrf.to_string())}
                        <input type="hidden" name="return_to" value=return_to.to_string()/>
                        <input type="text" name="reason" required=true maxlength="500" placeholder="reason (required)" aria-label="Reason"/>
                        <input type="text" name="ticket_id" maxlength="100" placeholder="ticket" aria-label="Ticket id"/>
                        <button type="submit" class="danger">"Terminate"</button>
                    </form>
                }
            });
            let user_href = format!("/users/{}", s.user);
            view! {
                <tr data-session=s.id.clone()>
                    <td><a href=user_href>{s.user.clone()}</a></td>
                    <td>{dash(&s.client_ids)}</td>
                    <td>{dash(&s.ip)}</td>
                    <td title=s.user_agent.clone()>{dash(&s.device)}</td>
                    <td>{dash(&s.amr)}</td>
                    <td>{s.created_at.clone()}</td>
                    <td>{s.last_seen_at.clone()}</td>
                    <td>{state}</td>
                    <td>{action}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="data sessions">
            <thead><tr>
                <th>"User"</th><th>"Clients"</th><th>"IP"</th><th>"Device"</th><th>"Methods"</th>
                <th>"Started"</th><th>"Last seen"</th><th>"State"</th><th></th>
            </tr></thead>
            <tbody>{body}</tbody>
        </table>
    }
    .into_any()
}
