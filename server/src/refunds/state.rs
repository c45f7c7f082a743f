//! The refund state machine: the one place that decides which status a
//! refund may move to. Nothing else produces a [`StatusChange`] (its fields
//! are private), and the store writes a status only from one, so every
//! status in the database went through [`transition`] or [`initial`].
//!
//! ```text
//! created above threshold ─▶ pending_approval ──approve──▶ approved ──execute──▶ executed
//!                                 │  ├──reject──▶ rejected
//!                                 │  ├──cancel──▶ cancelled
//!                                 │  └──expire──▶ expired
//! created at/below threshold ───────────────────▶ approved
//! ```

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Status {
    PendingApproval,
    Approved,
    Rejected,
    Cancelled,
    Expired,
    Executed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::PendingApproval,
        Status::Approved,
        Status::Rejected,
        Status::Cancelled,
        Status::Expired,
        Status::Executed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingApproval => "pending_approval",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Executed => "executed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::PendingApproval | Status::Approved)
    }
}

impl From<Status> for &'static str {
    fn from(s: Status) -> Self {
        s.as_str()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can happen to an existing refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Approve,
    Reject,
    Cancel,
    Expire,
    Execute,
}

impl Transition {
    pub const ALL: [Transition; 5] = [
        Transition::Approve,
        Transition::Reject,
        Transition::Cancel,
        Transition::Expire,
        Transition::Execute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Approve => "approve",
            Transition::Reject => "reject",
            Transition::Cancel => "cancel",
            Transition::Expire => "expire",
            Transition::Execute => "execute",
        }
    }

    /// The only status this transition starts from, and where it leads.
    pub fn edge(self) -> (Status, Status) {
        match self {
            Transition::Approve => (Status::PendingApproval, Status::Approved),
            Transition::Reject => (Status::PendingApproval, Status::Rejected),
            Transition::Cancel => (Status::PendingApproval, Status::Cancelled),
            Transition::Expire => (Status::PendingApproval, Status::Expired),
            Transition::Execute => (Status::Approved, Status::Executed),
        }
    }

    /// The audit action recorded for this transition.
    pub fn audit_action(self) -> &'static str {
        match self {
            Transition::Approve => "refund.approve",
            Transition::Reject => "refund.reject",
            Transition::Cancel => "refund.cancel",
            Transition::Expire => "refund.expire",
            Transition::Execute => "refund.execute",
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the machine refused. Displays as a predicate
/// ("is approved; cannot cancel it (…)") for "refund <id> …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is {current}; cannot {attempted} it ({attempted} is only possible from {allowed_from})")]
pub struct IllegalTransition {
    pub current: Status,
    pub attempted: Transition,
    pub allowed_from: Status,
}

/// A checked move from one status to the next; only [`transition`] and
/// [`initial`] make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    from: Option<Status>,
    to: Status,
    via: Option<Transition>,
}

impl StatusChange {
    /// `None` for a new refund.
    pub fn from(&self) -> Option<Status> {
        self.from
    }

    pub fn to(&self) -> Status {
        self.to
    }

    /// `None` for a new refund.
    pub fn via(&self) -> Option<Transition> {
        self.via
    }
}

/// Decides whether `attempted` may happen to a refund in `current`.
pub fn transition(
    current: Status,
    attempted: Transition,
) -> Result<StatusChange, IllegalTransition> {
    let (from, to) = attempted.edge();
    if current != from {
        return Err(IllegalTransition {
            current,
            attempted,
            allowed_from: from,
        });
    }
    Ok(StatusChange {
        from: Some(current),
        to,
        via: Some(attempted),
    })
}

/// The status of a new request: `approved` at or below the four-eyes
/// threshold, `pending_approval` above it.
pub fn initial(amount_minor: i64, threshold_minor: i64) -> StatusChange {
    let to = if amount_minor <= threshold_minor {
        Status::Approved
    } else {
        Status::PendingApproval
    };
    StatusChange {
        from: None,
        to,
        via: None,
    }
}
