//! The four-eyes rule as a pure decision: who may approve a refund, given
//! who asked for it and how the would-be approver signed in. No I/O, so it
//! can be tested on its own; [`super::Refunds::approve`] calls it with the
//! refund row locked.

use std::collections::BTreeSet;

use crate::permissions::Permission;

/// Why an approval is refused, in the order the checks run: a missing
/// permission first, then self-approval (no point asking the requester for a
/// second factor), then the freshness of the second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FourEyesRefusal {
    #[error("approving a refund needs the permission refunds:approve")]
    MissingPermission,
    #[error("four-eyes rule: the person who requested a refund cannot approve it")]
    SelfApproval,
    /// RFC 9470: the approver must sign in with a second factor again.
    #[error(
        "sign in again with a second factor to approve a refund (it must have been used \
         within the last {max_age} seconds)"
    )]
    StepUpRequired { max_age: i64 },
}

/// The approver as the decision sees them.
#[derive(Debug, Clone, Copy)]
pub struct ApproverFacts<'a> {
    pub user_id: &'a str,
    pub permissions: &'a BTreeSet<Permission>,
    /// RFC 8176 methods of the approver's current session.
    pub amr: &'a [String],
    /// When the approver's session last authenticated (unix seconds).
    pub auth_time: Option<i64>,
}

/// May `approver` approve a refund requested by `requested_by` at `now`?
/// `step_up_max_age` is `mfa.step_up_max_age` in seconds; freshness is the
/// rule of `Staff::require_step_up` ([`crate::mfa::fresh_second_factor`]).
pub fn check(
    requested_by: &str,
    approver: &ApproverFacts<'_>,
    now: i64,
    step_up_max_age: i64,
) -> Result<(), FourEyesRefusal> {
    if !approver.permissions.contains(&Permission::RefundsApprove) {
        return Err(FourEyesRefusal::MissingPermission);
    }
    if approver.user_id == requested_by {
        return Err(FourEyesRefusal::SelfApproval);
    }
    if !crate::mfa::fresh_second_factor(approver.amr, approver.auth_time, now, step_up_max_age) {
        return Err(FourEyesRefusal::StepUpRequired {
            max_age: step_up_max_age,
        });
    }
    Ok(())
}
