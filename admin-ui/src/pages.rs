//! One function per page: view model in, complete HTML document out.

use leptos::prelude::*;

use crate::document;
use crate::model::*;
use crate::parts::{csrf_field, dash, empty, frame, justification_fields, paging, sessions_table};

/// Landing page: what this staff member can do.
pub fn home_page(layout: &Layout) -> String {
    let perms = layout
        .permissions
        .iter()
        .cloned()
        .map(|p| view! { <li><code>{p}</code></li> })
        .collect_view();
    let none = layout
        .permissions
        .is_empty()
        .then(|| empty("You hold no staff permissions. Ask a security administrator for a role."));
    document(
        &layout.title,
        frame(
            layout,
            view! {
                <p>"Your permissions:"</p>
                <ul class="perms">{perms}</ul>
                {none}
            },
        ),
    )
}

/// Error or information page (signed in or not).
pub fn message_page(
    layout: Option<&Layout>,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> String {
    let link = link.map(|(href, label)| {
        let href = href.to_string();
        let label = label.to_string();
        view! { <p><a href=href class="button">{label}</a></p> }
    });
    let message = message.to_string();
    let body = view! { <p class="message">{message}</p>{link} };
    match layout {
        Some(l) => document(title, frame(l, body)),
        None => {
            let title_text = title.to_string();
            document(
                title,
                view! {
                    <header class="top"><span class="brand">{crate::PRODUCT_NAME}</span></header>
                    <main><h1>{title_text}</h1>{body}</main>
                },
            )
        }
    }
}

pub fn sessions_page(layout: &Layout, v: SessionsView) -> String {
    let f = v.filter.clone();
    let can_terminate = layout.can("sessions:terminate");
    let table = sessions_table(&v.rows, can_terminate, &layout.csrf, &v.return_to);
    let user_wide = (can_terminate && !f.user.is_empty()).then(|| {
        let action = format!("/users/{}/sessions/terminate", f.user);
        let label = format!("Terminate every active session of {}", f.user);
        view! {
            <form method="post" action=action class="card danger-zone terminate-all">
                <h2>{label.clone()}</h2>
                {csrf_field(layout.csrf.clone())}
                <input type="hidden" name="return_to" value=v.return_to.clone()/>
                {justification_fields()}
                <button type="submit" class="danger">{label}</button>
            </form>
        }
    });
    let state_options = ["", "active", "ended"]
        .into_iter()
        .map(|s| {
            let label = if s.is_empty() { "any" } else { s };
            view! { <option value=s selected=f.state == s>{label}</option> }
        })
        .collect_view();
    let body = view! {
        <form method="get" action="/sessions" class="filters">
            <label>"User" <input type="text" name="user" value=f.user.clone()/></label>
            <label>"Client" <input type="text" name="client" value=f.client.clone()/></label>
            <label>"IP" <input type="text" name="ip" value=f.ip.clone()/></label>
            <label>"State" <select name="state">{state_options}</select></label>
            <label>"From" <input type="text" name="from" value=f.from.clone() placeholder="2026-01-31T00:00:00Z"/></label>
            <label>"To" <input type="text" name="to" value=f.to.clone() placeholder="2026-02-01T00:00:00Z"/></label>
            <button type="submit">"Search"</button>
        </form>
        {table}
        {paging(&v.paging)}
        {user_wide}
    };
    document(&layout.title, frame(layout, body))
}

pub fn users_page(layout: &Layout, v: UsersView) -> String {
    let table = if v.rows.is_empty() {
        empty("No users match.").into_any()
    } else {
        let rows = v
            .rows
            .iter()
            .map(|u| {
                let href = format!("/users/{}", u.username);
                let state = if u.locked {
                    view! { <span class="badge error">"locked"</span> }.into_any()
                } else {
                    view! { <span class="badge ok">"active"</span> }.into_any()
                };
                view! {
                    <tr>
                        <td><a href=href>{u.username.clone()}</a></td>
                        <td>{state}</td>
                        <td>{dash(&u.roles)}</td>
                        <td>{u.active_sessions}</td>
                        <td>{u.created_at.clone()}</td>
                    </tr>
                }
            })
            .collect_view();
        view! {
            <table class="data">
                <thead><tr><th>"Username"</th><th>"State"</th><th>"Roles"</th><th>"Active sessions"</th><th>"Created"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    let body = view! {
        <form method="get" action="/users" class="filters">
            <label>"Username contains" <input type="text" name="q" value=v.q.clone()/></label>
            <button type="submit">"Search"</button>
        </form>
        {table}
        {paging(&v.paging)}
    };
    document(&layout.title, frame(layout, body))
}

pub fn user_page(layout: &Layout, v: UserDetailView) -> String {
    let u = v.user.clone();
    let manage = layout.can("users:manage") && !v.is_self;
    let keys = if v.security_keys.is_empty() {
        empty("No security keys or passkeys.").into_any()
    } else {
        v.security_keys
            .iter()
            .cloned()
            .map(|k| {
                view! { <li>{k.name}" — added "{k.created_at}", last used "{dash(&k.last_used_at)}</li> }
            })
            .collect_view()
            .into_any()
    };
    let lock_form = manage.then(|| {
        let (action, label, class) = if u.locked {
            (
                format!("/users/{}/unlock", u.username),
                "Unlock account",
                "",
            )
        } else {
            (
                format!("/users/{}/lock", u.username),
                "Lock account",
                "danger",
            )
        };
        view! {
            <form method="post" action=action class="card">
                <h2>{label}</h2>
                {csrf_field(layout.csrf.clone())}
                {justification_fields()}
                <button type="submit" class=class>{label}</button>
            </form>
        }
    });
    let reset_form = manage.then(|| {
        let action = format!("/users/{}/mfa/reset", u.username);
        view! {
            <form method="post" action=action class="card danger-zone">
                <h2>"Reset second factors"</h2>
                <p class="small">"Removes the authenticator app, recovery codes and every security key, and ends the user's sessions. The user enrols again at next sign-in."</p>
                {csrf_field(layout.csrf.clone())}
                {justification_fields()}
                <label class="confirm"><input type="checkbox" name="confirm" value="yes" required=true/>" I have verified this person's identity"</label>
                <button type="submit" class="danger">"Reset second factors"</button>
            </form>
        }
    });
    let self_note = v
        .is_self
        .then(|| empty("This is your own account: manage it at /account on the sign-in server."));
    let return_to = format!("/users/{}", u.username);
    let sessions = sessions_table(
        &v.sessions,
        layout.can("sessions:terminate"),
        &layout.csrf,
        &return_to,
    );
    let state = if u.locked { "locked" } else { "active" };
    let body = view! {
        <dl class="facts">
            <dt>"Username"</dt><dd>{u.username.clone()}</dd>
            <dt>"State"</dt><dd>{state}</dd>
            <dt>"Roles"</dt><dd>{dash(&u.roles)}</dd>
            <dt>"Created"</dt><dd>{u.created_at.clone()}</dd>
            <dt>"Authenticator app"</dt><dd>{if v.totp { "enrolled" } else { "not enrolled" }}</dd>
            <dt>"Recovery codes left"</dt><dd>{v.recovery_codes_left}</dd>
            <dt>"Passkey sign-in"</dt><dd>{if v.passkey_sign_in { "on" } else { "off" }}</dd>
        </dl>
        <h2>"Security keys and passkeys"</h2>
        <ul>{keys}</ul>
        {self_note}
        <div class="actions">{lock_form}{reset_form}</div>
        <h2>"Sessions"</h2>
        {sessions}
    };
    document(&layout.title, frame(layout, body))
}

pub fn clients_page(layout: &Layout, v: ClientsView) -> String {
    let table = if v.rows.is_empty() {
        empty("No clients registered yet.").into_any()
    } else {
        let rows = v
            .rows
            .iter()
            .map(|c| {
                let href = format!("/clients/{}", c.client_id);
                view! {
                    <tr>
                        <td><a href=href>{c.client_id.clone()}</a></td>
                        <td>{c.kind.clone()}</td>
                        <td>{dash(&c.grant_types)}</td>
                        <td>{dash(&c.scopes)}</td>
                        <td>{c.created_at.clone()}</td>
                    </tr>
                }
            })
            .collect_view();
        view! {
            <table class="data">
                <thead><tr><th>"Client id"</th><th>"Kind"</th><th>"Grants"</th><th>"Scopes"</th><th>"Registered"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    let body = view! {
        {table}
        {paging(&v.paging)}
        <form method="post" action="/clients" class="card">
            <h2>"Register a client"</h2>
            {csrf_field(layout.csrf.clone())}
            <label>"Client id" <input type="text" name="client_id" required=true maxlength="128"/></label>
            <label>"Redirect URIs (one per line)" <textarea name="redirect_uris" rows="3"></textarea></label>
            <label>"Scopes (space separated)" <input type="text" name="scopes" value="openid"/></label>
            <fieldset>
                <legend>"Grants"</legend>
                <label><input type="checkbox" name="grant_types" value="authorization_code" checked=true/>" authorization_code"</label>
                <label><input type="checkbox" name="grant_types" value="refresh_token"/>" refresh_token"</label>
                <label><input type="checkbox" name="grant_types" value="client_credentials"/>" client_credentials"</label>
            </fieldset>
            <label><input type="checkbox" name="public" value="yes"/>" Public client (no secret, PKCE only)"</label>
            <label><input type="checkbox" name="may_introspect" value="yes"/>" May call /introspect (gateway)"</label>
            {justification_fields()}
            <button type="submit">"Register"</button>
        </form>
    };
    document(&layout.title, frame(layout, body))
}

pub fn client_page(layout: &Layout, v: ClientDetailView) -> String {
    let c = v.client.clone();
    let secret = v.new_secret.clone().map(|s| {
        view! {
            <div class="card secret" role="status">
                <h2>"Client secret — shown once"</h2>
                <p>"Copy it now into the client's secret store. It cannot be shown again; rotate it if it is lost."</p>
                <code class="secret-value">{s}</code>
            </div>
        }
    });
    let uris = c.redirect_uris.join("\n");
    let protected = c.first_party.then(|| {
        empty("This is a first-party client of Portcullis itself; it is managed by the server and cannot be changed here.")
    });
    let controls = (!c.first_party).then(|| {
        let edit = format!("/clients/{}", c.client_id);
        let rotate = format!("/clients/{}/secret/rotate", c.client_id);
        let revoke = format!("/clients/{}/tokens/revoke", c.client_id);
        let rotate_form = (c.kind == "confidential").then(|| {
            view! {
                <form method="post" action=rotate class="card">
                    <h2>"Rotate secret"</h2>
                    <p class="small">"The current secret stops working at once."</p>
                    {csrf_field(layout.csrf.clone())}
                    {justification_fields()}
                    <button type="submit">"Rotate secret"</button>
                </form>
            }
        });
        view! {
            <form method="post" action=edit class="card">
                <h2>"Edit"</h2>
                {csrf_field(layout.csrf.clone())}
                <label>"Redirect URIs (one per line)" <textarea name="redirect_uris" rows="4">{uris}</textarea></label>
                <label>"Scopes (space separated)" <input type="text" name="scopes" value=c.scopes.clone()/></label>
                {justification_fields()}
                <button type="submit">"Save"</button>
            </form>
            {rotate_form}
            <form method="post" action=revoke class="card danger-zone">
                <h2>"Revoke every token of this client"</h2>
                <p class="small">"Incident response: every access and refresh token issued to this client stops working on every server at once."</p>
                {csrf_field(layout.csrf.clone())}
                {justification_fields()}
                <label>"Type the client id to confirm" <input type="text" name="confirm" required=true autocomplete="off"/></label>
                <button type="submit" class="danger">"Revoke all tokens"</button>
            </form>
        }
    });
    let uri_list = c
        .redirect_uris
        .iter()
        .cloned()
        .map(|u| view! { <li><code>{u}</code></li> })
        .collect_view();
    let body = view! {
        {secret}
        <dl class="facts">
            <dt>"Client id"</dt><dd>{c.client_id.clone()}</dd>
            <dt>"Kind"</dt><dd>{c.kind.clone()}</dd>
            <dt>"Grants"</dt><dd>{dash(&c.grant_types)}</dd>
            <dt>"Scopes"</dt><dd>{dash(&c.scopes)}</dd>
            <dt>"May introspect"</dt><dd>{if c.may_introspect { "yes" } else { "no" }}</dd>
            <dt>"Registered"</dt><dd>{c.created_at.clone()}</dd>
            <dt>"Redirect URIs"</dt><dd><ul>{uri_list}</ul></dd>
        </dl>
        {protected}
        <div class="actions">{controls}</div>
    };
    document(&layout.title, frame(layout, body))
}

fn refunds_table(rows: &[RefundRow], message: &'static str) -> AnyView {
    if rows.is_empty() {
        return empty(message).into_any();
    }
    let body = rows
        .iter()
        .map(|r| {
            let href = format!("/refunds/{}", r.id);
            let status_class = format!("badge status-{}", r.status);
            view! {
                <tr data-refund=r.id.clone()>
                    <td><a href=href>{r.payment_id.clone()}</a></td>
                    <td class="num">{r.amount.clone()}</td>
                    <td><span class=status_class>{r.status.clone()}</span></td>
                    <td>{r.requested_by.clone()}</td>
                    <td>{dash(&r.decided_by)}</td>
                    <td>{dash(&r.reason)}</td>
                    <td>{r.created_at.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="data refunds">
            <thead><tr><th>"Payment"</th><th>"Amount"</th><th>"Status"</th><th>"Requested by"</th><th>"Decided by"</th><th>"Reason"</th><th>"Requested"</th></tr></thead>
            <tbody>{body}</tbody>
        </table>
    }
    .into_any()
}

pub fn refunds_page(layout: &Layout, v: RefundsView) -> String {
    let approver = layout.can("refunds:approve");
    let queue = approver.then(|| {
        view! {
            <section class="queue">
                <h2>"Waiting for approval"</h2>
                {refunds_table(&v.pending, "Nothing is waiting for approval.")}
            </section>
        }
    });
    let request = layout.can("refunds:request").then(|| {
        view! {
            <form method="post" action="/refunds" class="card request-refund">
                <h2>"Request a refund"</h2>
                <p class="small">{v.threshold_note.clone()}</p>
                {csrf_field(layout.csrf.clone())}
                <input type="hidden" name="idempotency_key" value=v.idempotency_key.clone()/>
                <label>"Payment id" <input type="text" name="payment_id" required=true maxlength="100"/></label>
                <label>"Amount (minor units, e.g. cents)" <input type="text" name="amount_minor" required=true inputmode="numeric" pattern="[0-9]+"/></label>
                <label>"Currency" <input type="text" name="currency" required=true maxlength="3" placeholder="EUR"/></label>
                {justification_fields()}
                <button type="submit">"Request refund"</button>
            </form>
        }
    });
    let options = std::iter::once(String::new())
        .chain(v.statuses.iter().cloned())
        .map(|s| {
            let selected = s == v.status;
            let label = if s.is_empty() {
                "any".to_string()
            } else {
                s.clone()
            };
            view! { <option value=s selected=selected>{label}</option> }
        })
        .collect_view();
    let body = view! {
        {queue}
        <h2>"History"</h2>
        <form method="get" action="/refunds" class="filters">
            <label>"Status" <select name="status">{options}</select></label>
            <button type="submit">"Filter"</button>
        </form>
        {refunds_table(&v.rows, "No refunds yet.")}
        {paging(&v.paging)}
        {request}
    };
    document(&layout.title, frame(layout, body))
}

pub fn refund_page(layout: &Layout, v: RefundDetailView) -> String {
    let r = v.refund.clone();
    let token = v.approval_token.clone().map(|t| {
        view! {
            <div class="card secret" role="status">
                <h2>"Approval token for the payments service"</h2>
                <p>"Single use, valid for a few minutes. The payments service verifies it against /jwks.json."</p>
                <code class="secret-value">{t}</code>
            </div>
        }
    });
    let decide = (v.pending && v.may_decide).then(|| {
        let approve = if v.step_up_needed {
            let href = v.step_up_href.clone();
            view! {
                <div class="card step-up" role="alert">
                    <h2>"Confirm it is you"</h2>
                    <p>"Approving a refund needs a second factor used within the last 5 minutes."</p>
                    <a href=href class="button">"Confirm with your second factor"</a>
                </div>
            }
            .into_any()
        } else {
            let action = format!("/refunds/{}/approve", r.id);
            view! {
                <form method="post" action=action class="card approve">
                    <h2>"Approve"</h2>
                    {csrf_field(layout.csrf.clone())}
                    {justification_fields()}
                    <button type="submit">"Approve refund"</button>
                </form>
            }
            .into_any()
        };
        let reject = format!("/refunds/{}/reject", r.id);
        view! {
            {approve}
            <form method="post" action=reject class="card reject">
                <h2>"Reject"</h2>
                {csrf_field(layout.csrf.clone())}
                {justification_fields()}
                <button type="submit" class="danger">"Reject refund"</button>
            </form>
        }
    });
    let own = (v.pending && v.own_request).then(|| {
        empty("You requested this refund; another person with the refunds:approve permission must approve it.")
    });
    let cancel = (v.pending && v.may_cancel).then(|| {
        let action = format!("/refunds/{}/cancel", r.id);
        view! {
            <form method="post" action=action class="card">
                <h2>"Cancel request"</h2>
                {csrf_field(layout.csrf.clone())}
                {justification_fields()}
                <button type="submit">"Cancel request"</button>
            </form>
        }
    });
    let status_class = format!("badge status-{}", r.status);
    let body = view! {
        {token}
        <dl class="facts">
            <dt>"Refund"</dt><dd><code>{r.id.clone()}</code></dd>
            <dt>"Status"</dt><dd><span class=status_class id="refund-status">{r.status.clone()}</span></dd>
            <dt>"Payment"</dt><dd>{r.payment_id.clone()}</dd>
            <dt>"Amount"</dt><dd id="amount">{r.amount.clone()}</dd>
            <dt>"Reason"</dt><dd>{dash(&r.reason)}</dd>
            <dt>"Ticket"</dt><dd>{dash(&r.ticket_id)}</dd>
            <dt>"Requested by"</dt><dd id="requested-by">{r.requested_by.clone()}</dd>
            <dt>"Approved by"</dt><dd id="approved-by">{dash(&r.approved_by)}</dd>
            <dt>"Decided by"</dt><dd>{dash(&r.decided_by)}</dd>
            <dt>"Requested"</dt><dd>{r.created_at.clone()}</dd>
            <dt>"Updated"</dt><dd>{r.updated_at.clone()}</dd>
        </dl>
        {own}
        <div class="actions">{decide}{cancel}</div>
    };
    document(&layout.title, frame(layout, body))
}

pub fn audit_page(layout: &Layout, v: AuditView) -> String {
    let f = v.filter.clone();
    let chain = v.chain.clone().map(|c| {
        let class = if c.ok { "flash ok" } else { "flash error" };
        view! { <p class=class id="chain-status" role="status">{c.message}</p> }
    });
    let table = if v.rows.is_empty() {
        empty("No audit rows match.").into_any()
    } else {
        let rows = v
            .rows
            .iter()
            .map(|a| {
                let changes = (!a.before.is_empty() || !a.after.is_empty()).then(|| {
                    view! {
                        <details>
                            <summary>"before / after"</summary>
                            <div class="diff">
                                <pre>{dash(&a.before)}</pre>
                                <pre>{dash(&a.after)}</pre>
                            </div>
                        </details>
                    }
                });
                let reason = if a.ticket_id.is_empty() {
                    a.reason.clone()
                } else {
                    format!("{} (ticket {})", a.reason, a.ticket_id)
                };
                view! {
                    <tr data-action=a.action.clone()>
                        <td class="num">{a.seq}</td>
                        <td>{a.time.clone()}</td>
                        <td>{a.actor.clone()}</td>
                        <td><code>{a.action.clone()}</code></td>
                        <td>{a.target.clone()}</td>
                        <td>{dash(&reason)}</td>
                        <td class="small">{dash(&a.ip)}<br/>{dash(&a.request_id)}</td>
                        <td>{changes}</td>
                    </tr>
                }
            })
            .collect_view();
        view! {
            <table class="data audit">
                <thead><tr><th>"#"</th><th>"Time"</th><th>"Actor"</th><th>"Action"</th><th>"Target"</th><th>"Reason"</th><th>"IP / request"</th><th>"Change"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    let body = view! {
        <div class="toolbar">
            <a href=v.verify_href.clone() class="button">"Verify hash chain"</a>
            <a href=v.export_csv_href.clone() class="button">"Export CSV"</a>
            <a href=v.export_jsonl_href.clone() class="button">"Export JSON lines"</a>
        </div>
        {chain}
        <form method="get" action="/audit" class="filters">
            <label>"Actor" <input type="text" name="actor" value=f.actor.clone()/></label>
            <label>"Action" <input type="text" name="action" value=f.action.clone() placeholder="e.g. session. or refund.approve"/></label>
            <label>"Target" <input type="text" name="target" value=f.target.clone()/></label>
            <label>"From" <input type="text" name="from" value=f.from.clone() placeholder="2026-01-31T00:00:00Z"/></label>
            <label>"To" <input type="text" name="to" value=f.to.clone() placeholder="2026-02-01T00:00:00Z"/></label>
            <button type="submit">"Filter"</button>
        </form>
        {table}
        {paging(&v.paging)}
    };
    document(&layout.title, frame(layout, body))
}
