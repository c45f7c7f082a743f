//! The refund domain's errors and their one mapping onto HTTP.

use crate::error::AppError;
use crate::keys::KeyError;
use crate::mfa::ACR_MFA;
use crate::store::StoreError;

use super::four_eyes::FourEyesRefusal;
use super::state::IllegalTransition;

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// Bad input: unknown currency, bad amount, missing field, bad key.
    #[error("{0}")]
    Invalid(String),
    #[error("no refund {0}")]
    NotFound(String),
    /// The state machine refused.
    #[error("refund {id} {illegal}")]
    IllegalTransition {
        id: String,
        illegal: IllegalTransition,
    },
    #[error(transparent)]
    FourEyes(#[from] FourEyesRefusal),
    /// The caller may not do this to this refund (not theirs to cancel, …).
    #[error("{0}")]
    Forbidden(String),
    /// The same Idempotency-Key came with a different request.
    #[error(
        "this Idempotency-Key was already used with a different request; \
         use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// The approval token does not authorise this execution.
    #[error("approval token rejected: {0}")]
    ApprovalRejected(String),
    /// The approval token's jti was spent before.
    #[error("this approval token has already been used")]
    ApprovalUsed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign the approval token: {0}")]
    Keys(#[from] KeyError),
}

impl RefundError {
    pub fn invalid(message: impl Into<String>) -> Self {
        RefundError::Invalid(message.into())
    }
}

impl From<sqlx::Error> for RefundError {
    fn from(e: sqlx::Error) -> Self {
        RefundError::Store(e.into())
    }
}

impl From<RefundError> for AppError {
    fn from(e: RefundError) -> Self {
        let message = e.to_string();
        match e {
            RefundError::Invalid(_) => AppError::BadRequest(message),
            RefundError::NotFound(_) => AppError::NotFound(message),
            RefundError::IllegalTransition { .. } | RefundError::ApprovalUsed => {
                AppError::Conflict(message)
            }
            RefundError::FourEyes(FourEyesRefusal::StepUpRequired { max_age }) => {
                AppError::StepUpRequired {
                    message,
                    acr_values: ACR_MFA,
                    max_age: Some(max_age),
                }
            }
            RefundError::FourEyes(_)
            | RefundError::Forbidden(_)
            | RefundError::ApprovalRejected(_) => AppError::Forbidden(message),
            RefundError::IdempotencyKeyReused => AppError::Unprocessable(message),
            RefundError::Store(s) => s.into(),
            RefundError::Keys(k) => AppError::Internal(k.to_string()),
        }
    }
}
