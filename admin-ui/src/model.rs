//! What the pages show. The server fills these from its domain types (the
//! admin UI never reads the database or decides anything itself); values
//! are display-ready text so this crate needs nothing from the server.

use std::collections::BTreeSet;

/// The frame around every signed-in page.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub title: String,
    pub nav: Nav,
    pub username: String,
    /// Permission names, e.g. `sessions:terminate`.
    pub permissions: BTreeSet<String>,
    /// The synchronizer token every form posts back as `csrf_token`.
    pub csrf: String,
    pub flash: Option<Flash>,
}

impl Layout {
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Nav {
    #[default]
    Home,
    Sessions,
    Users,
    Clients,
    Refunds,
    Audit,
}

#[derive(Debug, Clone)]
pub struct Flash {
    pub kind: FlashKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKind {
    Success,
    Error,
}

/// Links to the neighbouring pages of a table (query strings kept).
#[derive(Debug, Clone, Default)]
pub struct Paging {
    pub page: i64,
    pub prev_href: Option<String>,
    pub next_href: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilterView {
    pub user: String,
    pub client: String,
    pub ip: String,
    pub state: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default)]
pub struct SessionRow {
    pub id: String,
    pub user: String,
    pub client_ids: String,
    pub ip: String,
    pub device: String,
    pub user_agent: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub amr: String,
    pub active: bool,
    pub ended_at: String,
    pub ended_by: String,
    pub end_reason: String,
    pub ticket_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct SessionsView {
    pub filter: SessionFilterView,
    pub rows: Vec<SessionRow>,
    pub paging: Paging,
    /// Where terminate forms send the browser back to.
    pub return_to: String,
}

#[derive(Debug, Clone, Default)]
pub struct UserRow {
    pub username: String,
    pub locked: bool,
    pub created_at: String,
    pub roles: String,
    pub active_sessions: i64,
}

#[derive(Debug, Clone, Default)]
pub struct UsersView {
    pub q: String,
    pub rows: Vec<UserRow>,
    pub paging: Paging,
}

#[derive(Debug, Clone, Default)]
pub struct SecurityKeyRow {
    pub name: String,
    pub created_at: String,
    pub last_used_at: String,
}

#[derive(Debug, Clone, Default)]
pub struct UserDetailView {
    pub user: UserRow,
    pub totp: bool,
    pub security_keys: Vec<SecurityKeyRow>,
    pub recovery_codes_left: i64,
    pub passkey_sign_in: bool,
    pub sessions: Vec<SessionRow>,
    /// The viewer is looking at their own account (no self-service here).
    pub is_self: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ClientRow {
    pub client_id: String,
    pub kind: String,
    pub redirect_uris: Vec<String>,
    pub scopes: String,
    pub grant_types: String,
    pub may_introspect: bool,
    pub first_party: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Default)]
pub struct ClientsView {
    pub rows: Vec<ClientRow>,
    pub paging: Paging,
}

#[derive(Debug, Clone, Default)]
pub struct ClientDetailView {
    pub client: ClientRow,
    /// Shown exactly once, right after registration or rotation.
    pub new_secret: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RefundRow {
    pub id: String,
    pub status: String,
    pub payment_id: String,
    /// With its currency, e.g. `250.00 EUR (25000 minor units)`.
    pub amount: String,
    pub currency: String,
    pub reason: String,
    pub ticket_id: String,
    pub requested_by: String,
    pub approved_by: String,
    pub decided_by: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default)]
pub struct RefundsView {
    pub status: String,
    pub statuses: Vec<String>,
    pub pending: Vec<RefundRow>,
    pub rows: Vec<RefundRow>,
    pub paging: Paging,
    /// A fresh key per rendered form: a double submit creates one refund.
    pub idempotency_key: String,
    pub threshold_note: String,
}

#[derive(Debug, Clone, Default)]
pub struct RefundDetailView {
    pub refund: RefundRow,
    pub pending: bool,
    /// The viewer may approve or reject this refund (permission, and not
    /// the requester).
    pub may_decide: bool,
    /// The viewer's last second factor is too old to approve.
    pub step_up_needed: bool,
    pub step_up_href: String,
    pub may_cancel: bool,
    pub own_request: bool,
    /// Shown once, right after approval, for the payments service.
    pub approval_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilterView {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditRow {
    pub seq: i64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub ticket_id: String,
    pub before: String,
    pub after: String,
    pub request_id: String,
    pub ip: String,
}

#[derive(Debug, Clone)]
pub struct ChainStatus {
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditView {
    pub filter: AuditFilterView,
    pub rows: Vec<AuditRow>,
    pub paging: Paging,
    pub chain: Option<ChainStatus>,
    pub export_csv_href: String,
    pub export_jsonl_href: String,
    pub verify_href: String,
}
