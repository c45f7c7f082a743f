//! Four-eyes refunds. Support staff request a refund (integer minor units,
//! ISO 4217 currency); at or below the currency's threshold it is approved
//! at once, above it a different person holding `refunds:approve`, with a
//! second factor used in the last five minutes, must approve it. Approval
//! mints a single-use approval JWT that the payments service presents to
//! `POST /admin/api/refunds/{id}/executed`.
//!
//! Every change is one transaction: the refund row is read under a row
//! lock (PostgreSQL `FOR UPDATE`; SQLite's IMMEDIATE transaction holds the
//! single write lock), the state machine ([`state`]) decides, the row is
//! written with a compare-and-set on the old status, and the audit row is
//! appended — all or nothing.

pub mod approval;
pub mod error;
pub mod four_eyes;
pub mod idempotency;
pub mod state;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::keys::KeySet;
use crate::permissions::Permission;
use crate::store::refunds::IdempotencyRecord;
use crate::store::{Store, Tx};

pub use error::RefundError;
pub use four_eyes::{ApproverFacts, FourEyesRefusal};
pub use idempotency::IdempotentResponse;
pub use state::{Status, Transition};

/// The endpoint idempotency keys of refund requests are scoped to.
pub const CREATE_ENDPOINT: &str = "POST /admin/api/refunds";
/// How often the expiry job looks for pending requests past their window.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);
/// Refunds looked at per query of the expiry job, and queries per run.
const EXPIRY_BATCH: i64 = 200;
const EXPIRY_BATCHES_PER_RUN: usize = 50;

/// A refund as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub status: Status,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub ticket_id: Option<String>,
    /// User id of the requester.
    pub requested_by: String,
    pub requested_by_username: String,
    /// True when the amount was above the threshold (a second person approves).
    pub four_eyes: bool,
    pub threshold_minor: i64,
    pub approved_by: Option<String>,
    pub approved_by_username: Option<String>,
    pub approved_at: Option<i64>,
    pub rejected_by: Option<String>,
    pub cancelled_by: Option<String>,
    /// Reason given with the approval, rejection, cancellation or expiry.
    pub decision_reason: Option<String>,
    /// The `jti` of the approval token that may execute the refund.
    pub approval_jti: Option<String>,
    pub approval_expires_at: Option<i64>,
    /// Client id of the payments service that executed it.
    pub executed_by: Option<String>,
    pub executed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// End of the approval window (pending requests only).
    pub expires_at: Option<i64>,
}

fn time(t: i64) -> String {
    crate::clock::rfc3339_ms(t.saturating_mul(1000))
}

impl Refund {
    /// The refund record of the admin API (DESIGN.md, "Details pinned").
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "payment_id": self.payment_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "reason": self.reason,
            "ticket_id": self.ticket_id,
            "requested_by": self.requested_by_username,
            "approved_by": self.approved_by_username,
            "created_at": time(self.created_at),
            "updated_at": time(self.updated_at),
        })
    }

    /// Everything, for the audit log's before/after.
    fn audit_view(&self) -> Value {
        let mut v = self.view();
        v["requested_by_id"] = self.requested_by.clone().into();
        v["approved_by_id"] = self.approved_by.clone().into();
        v["four_eyes"] = self.four_eyes.into();
        v["threshold_minor"] = self.threshold_minor.into();
        v["rejected_by_id"] = self.rejected_by.clone().into();
        v["cancelled_by_id"] = self.cancelled_by.clone().into();
        v["decision_reason"] = self.decision_reason.clone().into();
        v["approval_jti"] = self.approval_jti.clone().into();
        v["approval_expires_at"] = self.approval_expires_at.map(time).into();
        v["executed_by_client"] = self.executed_by.clone().into();
        v["executed_at"] = self.executed_at.map(time).into();
        v["expires_at"] = self.expires_at.map(time).into();
        v
    }

    fn approved_refund(&self) -> approval::ApprovedRefund<'_> {
        approval::ApprovedRefund {
            refund_id: &self.id,
            payment_id: &self.payment_id,
            amount_minor: self.amount_minor,
            currency: &self.currency,
            requester: &self.requested_by_username,
            approver: self.approved_by_username.as_deref(),
        }
    }
}

/// A validated refund request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefund {
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub ticket_id: Option<String>,
}

impl NewRefund {
    pub const SHAPE: &str =
        "{\"payment_id\", \"amount_minor\", \"currency\", \"reason\", \"ticket_id\"}";

    /// Parses and validates a JSON body.
    pub fn from_json(bytes: &[u8]) -> Result<NewRefund, RefundError> {
        let body = validate::object(bytes, Self::SHAPE)?;
        validate::only_fields(
            &body,
            &[
                "payment_id",
                "amount_minor",
                "currency",
                "reason",
                "ticket_id",
            ],
        )?;
        let payment_id = validate::text(&body, "payment_id", 128)?;
        let amount_minor = validate::amount_minor(body.get("amount_minor"))?;
        let currency = match body.get("currency") {
            Some(Value::String(c)) => validate::currency(c)?,
            None | Some(Value::Null) => {
                return Err(RefundError::invalid(
                    "currency is required (an ISO 4217 code such as EUR)",
                ));
            }
            Some(_) => {
                return Err(RefundError::invalid(
                    "currency must be a string (an ISO 4217 code such as EUR)",
                ));
            }
        };
        let reason = validate::text(&body, "reason", 500)?;
        let ticket_id = validate::optional_text(&body, "ticket_id", 100)?;
        Ok(NewRefund {
            payment_id,
            amount_minor,
            currency,
            reason,
            ticket_id,
        })
    }

    /// The request as compared between an original and a replay: two bodies
    /// that validate to the same request are the same request.
    fn fingerprint(&self) -> String {
        idempotency::request_hash(&json!([
            self.payment_id,
            self.amount_minor,
            self.currency,
            self.reason,
            self.ticket_id,
        ]))
    }
}

/// A staff member acting on refunds, as the admin API authenticated them.
#[derive(Debug, Clone)]
pub struct StaffMember {
    pub user_id: String,
    pub username: String,
    pub permissions: BTreeSet<Permission>,
    /// RFC 8176 methods of the current session.
    pub amr: Vec<String>,
    /// When the session last authenticated (unix seconds).
    pub auth_time: Option<i64>,
}

impl StaffMember {
    fn facts(&self) -> ApproverFacts<'_> {
        ApproverFacts {
            user_id: &self.user_id,
            permissions: &self.permissions,
            amr: &self.amr,
            auth_time: self.auth_time,
        }
    }

    fn require(&self, p: Permission) -> Result<(), RefundError> {
        if self.permissions.contains(&p) {
            Ok(())
        } else {
            Err(RefundError::Forbidden(format!(
                "this action needs the permission {p}"
            )))
        }
    }
}

/// The configuration the refund domain reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub thresholds: BTreeMap<String, i64>,
    pub default_threshold: i64,
    pub pending_ttl: Duration,
    pub idempotency_ttl: Duration,
    pub payments_audience: String,
    /// How long retired signing keys still verify (see `Config`).
    pub key_retention: Duration,
    /// `mfa.step_up_max_age`: how recent an approver's second factor must be.
    pub step_up_max_age: Duration,
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            issuer: c.issuer.clone(),
            thresholds: c.refunds.four_eyes_threshold.clone(),
            default_threshold: c.refunds.default_threshold,
            pending_ttl: c.refunds.pending_ttl,
            idempotency_ttl: c.refunds.idempotency_ttl,
            payments_audience: c.refunds.payments_audience.clone(),
            key_retention: c.retired_key_retention(),
            step_up_max_age: c.mfa.step_up_max_age,
        }
    }

    /// The four-eyes threshold for `currency`, in minor units.
    pub fn threshold(&self, currency: &str) -> i64 {
        self.thresholds
            .get(currency)
            .copied()
            .unwrap_or(self.default_threshold)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The refund domain over one store, key set, configuration and clock.
#[derive(Debug, Clone)]
pub struct Refunds {
    pub store: Store,
    pub keys: Arc<KeySet>,
    pub settings: Settings,
    pub clock: SharedClock,
}

impl Refunds {
    pub fn new(store: Store, keys: Arc<KeySet>, settings: Settings, clock: SharedClock) -> Self {
        Refunds {
            store,
            keys,
            settings,
            clock,
        }
    }

    /// The domain as the running server sees it (current signing keys).
    pub fn from_state(state: &AppState) -> Self {
        Refunds::new(
            state.store.clone(),
            state.keys.current(),
            Settings::from_config(&state.config),
            state.clock.clone(),
        )
    }

    pub async fn get(&self, id: &str) -> Result<Refund, RefundError> {
        crate::store::refunds::find(&self.store, id)
            .await?
            .ok_or_else(|| RefundError::NotFound(id.to_string()))
    }

    /// Newest first; `limit`/`offset` page through.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Refund>, RefundError> {
        Ok(crate::store::refunds::list(&self.store, status, limit, offset).await?)
    }

    /// Requests a refund under an idempotency key (the raw header value).
    /// Answers 201 with the record — plus `approval_token` when the amount
    /// is at or below the threshold and the refund is approved at once — or
    /// the stored answer of the first request with the same key.
    pub async fn create(
        &self,
        requester: &StaffMember,
        idempotency_key: Option<&[u8]>,
        new: NewRefund,
        ctx: &AuditContext,
    ) -> Result<IdempotentResponse, RefundError> {
        requester.require(Permission::RefundsRequest)?;
        let key = idempotency::key(idempotency_key)?;
        let fingerprint = new.fingerprint();
        // Everything the answer says is known before the transaction, so the
        // stored answer and the refund are written together or not at all.
        let now = self.clock.now();
        let threshold = self.settings.threshold(&new.currency);
        let change = state::initial(new.amount_minor, threshold);
        let four_eyes = change.to() == Status::PendingApproval;
        let mut refund = Refund {
            id: crate::crypto::random_id(),
            status: change.to(),
            payment_id: new.payment_id,
            amount_minor: new.amount_minor,
            currency: new.currency,
            reason: new.reason,
            ticket_id: new.ticket_id,
            requested_by: requester.user_id.clone(),
            requested_by_username: requester.username.clone(),
            four_eyes,
            threshold_minor: threshold,
            approved_by: None,
            approved_by_username: None,
            approved_at: None,
            rejected_by: None,
            cancelled_by: None,
            decision_reason: None,
            approval_jti: None,
            approval_expires_at: None,
            executed_by: None,
            executed_at: None,
            created_at: now,
            updated_at: now,
            expires_at: four_eyes.then(|| now.saturating_add(secs(self.settings.pending_ttl))),
        };
        let mut body = refund.view();
        if !four_eyes {
            let minted = approval::mint(
                &self.keys,
                &self.settings.issuer,
                &self.settings.payments_audience,
                &refund.approved_refund(),
                now,
            )?;
            refund.approved_at = Some(now);
            refund.approval_jti = Some(minted.jti);
            refund.approval_expires_at = Some(minted.expires_at);
            body["approval_token"] = minted.token.into();
        }
        let record = IdempotencyRecord {
            requester: requester.user_id.clone(),
            endpoint: CREATE_ENDPOINT.to_string(),
            idem_key: key,
            request_hash: fingerprint,
            response_status: 201,
            response_body: body.to_string(),
            created_at: now,
            expires_at: now.saturating_add(secs(self.settings.idempotency_ttl)),
        };
        // A key can be taken by a request that then expires between our
        // failed claim and our read; try again then (bounded).
        for _ in 0..3 {
            let mut tx = self.store.begin().await?;
            crate::store::refunds::drop_expired_key(
                &mut tx,
                &record.requester,
                &record.endpoint,
                &record.idem_key,
                now,
            )
            .await?;
            if crate::store::refunds::claim_key(&mut tx, &record).await? {
                crate::store::refunds::insert(&mut tx, &change, &refund).await?;
                let mut after = refund.audit_view();
                after["idempotency_key"] = record.idem_key.clone().into();
                audit::record(
                    &self.store,
                    &mut tx,
                    self.clock.now_ms(),
                    ctx,
                    AuditEvent::new("refund.request", format!("refund:{}", refund.id))
                        .reason(Some(refund.reason.clone()), refund.ticket_id.clone())
                        .after(after),
                )
                .await?;
                tx.commit().await?;
                return Ok(IdempotentResponse {
                    status: 201,
                    body: record.response_body,
                    replayed: false,
                });
            }
            tx.rollback().await?;
            let stored = crate::store::refunds::find_key(
                &self.store,
                &record.requester,
                &record.endpoint,
                &record.idem_key,
                now,
            )
            .await?;
            if let Some(stored) = stored {
                if stored.request_hash != record.request_hash {
                    return Err(RefundError::IdempotencyKeyReused);
                }
                return Ok(IdempotentResponse {
                    status: u16::try_from(stored.response_status).unwrap_or(500),
                    body: stored.response_body,
                    replayed: true,
                });
            }
        }
        Err(RefundError::Store(crate::store::StoreError::Unavailable(
            "idempotency key kept changing under concurrent use".into(),
        )))
    }

    /// Approves a pending refund and mints its approval token. The
    /// four-eyes rule ([`four_eyes::check`]) runs with the row locked.
    pub async fn approve(
        &self,
        approver: &StaffMember,
        id: &str,
        reason: &str,
        ticket_id: Option<&str>,
        ctx: &AuditContext,
    ) -> Result<(Refund, String), RefundError> {
        let (mut tx, before) = self.lock_live(id, Transition::Approve).await?;
        let now = self.clock.now();
        four_eyes::check(
            &before.requested_by,
            &approver.facts(),
            now,
            secs(self.settings.step_up_max_age),
        )?;
        let change = self.transition(&before, Transition::Approve)?;
        let mut after = before.clone();
        after.status = change.to();
        after.approved_by = Some(approver.user_id.clone());
        after.approved_by_username = Some(approver.username.clone());
        after.approved_at = Some(now);
        after.decision_reason = Some(reason.to_string());
        after.updated_at = now;
        let minted = approval::mint(
            &self.keys,
            &self.settings.issuer,
            &self.settings.payments_audience,
            &after.approved_refund(),
            now,
        )?;
        after.approval_jti = Some(minted.jti);
        after.approval_expires_at = Some(minted.expires_at);
        let event = Decision {
            reason,
            ticket_id,
            ctx,
        };
        self.write(&mut tx, &change, &before, &after, &event)
            .await?;
        tx.commit().await?;
        Ok((after, minted.token))
    }

    /// An approver turns a pending request down. Requesters withdraw their
    /// own requests with [`Refunds::cancel`].
    pub async fn reject(
        &self,
        approver: &StaffMember,
        id: &str,
        reason: &str,
        ticket_id: Option<&str>,
        ctx: &AuditContext,
    ) -> Result<Refund, RefundError> {
        approver.require(Permission::RefundsApprove)?;
        let (tx, before) = self.lock_live(id, Transition::Reject).await?;
        if before.requested_by == approver.user_id {
            return Err(RefundError::Forbidden(
                "you requested this refund: withdraw it with cancel instead of rejecting it".into(),
            ));
        }
        let decider = approver.user_id.clone();
        self.decide(
            tx,
            &before,
            Transition::Reject,
            reason,
            ticket_id,
            ctx,
            |r| r.rejected_by = Some(decider),
        )
        .await
    }

    /// The requester withdraws a pending request.
    pub async fn cancel(
        &self,
        requester: &StaffMember,
        id: &str,
        reason: &str,
        ticket_id: Option<&str>,
        ctx: &AuditContext,
    ) -> Result<Refund, RefundError> {
        requester.require(Permission::RefundsRequest)?;
        let (tx, before) = self.lock_live(id, Transition::Cancel).await?;
        if before.requested_by != requester.user_id {
            return Err(RefundError::Forbidden(
                "only the person who requested a refund can cancel it; approvers reject".into(),
            ));
        }
        let decider = requester.user_id.clone();
        self.decide(
            tx,
            &before,
            Transition::Cancel,
            reason,
            ticket_id,
            ctx,
            |r| r.cancelled_by = Some(decider),
        )
        .await
    }

    /// The shared tail of reject and cancel: transition, record who decided
    /// and why, write with its audit row, commit.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        mut tx: Tx,
        before: &Refund,
        attempted: Transition,
        reason: &str,
        ticket_id: Option<&str>,
        ctx: &AuditContext,
        mark_decider: impl FnOnce(&mut Refund),
    ) -> Result<Refund, RefundError> {
        let change = self.transition(before, attempted)?;
        let mut after = before.clone();
        after.status = change.to();
        mark_decider(&mut after);
        after.decision_reason = Some(reason.to_string());
        after.updated_at = self.clock.now();
        let event = Decision {
            reason,
            ticket_id,
            ctx,
        };
        self.write(&mut tx, &change, before, &after, &event).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The payments service reports that it paid out an approved refund,
    /// presenting the approval token. The token must verify (ES256, our
    /// keys, `typ`, `iss`, `aud`, `exp`), name this refund with its payment,
    /// amount and currency, be the refund's current approval, and not have
    /// been used; then approved → executed, exactly once.
    pub async fn execute(
        &self,
        client_id: &str,
        id: &str,
        approval_token: &str,
        ctx: &AuditContext,
    ) -> Result<Refund, RefundError> {
        let now = self.clock.now();
        let token = approval::verify(
            &self.keys,
            approval_token,
            &self.settings.issuer,
            &self.settings.payments_audience,
            now,
            self.settings.key_retention,
        )?;
        if token.refund_id != id {
            return Err(RefundError::ApprovalRejected(
                "it was issued for another refund".into(),
            ));
        }
        let mut tx = self.store.begin().await?;
        let before = self.lock(&mut tx, id).await?;
        if token.payment_id != before.payment_id
            || token.amount_minor != before.amount_minor
            || token.currency != before.currency
        {
            return Err(RefundError::ApprovalRejected(
                "its payment, amount or currency differ from the refund's".into(),
            ));
        }
        if before.approval_jti.as_deref() != Some(token.jti.as_str()) {
            return Err(RefundError::ApprovalRejected(
                "it is not the refund's current approval".into(),
            ));
        }
        if !crate::store::refunds::spend_approval_jti(&mut tx, &token.jti, id, client_id, now)
            .await?
        {
            return Err(RefundError::ApprovalUsed);
        }
        let change = self.transition(&before, Transition::Execute)?;
        let mut after = before.clone();
        after.status = change.to();
        after.executed_by = Some(client_id.to_string());
        after.executed_at = Some(now);
        after.updated_at = now;
        let event = Decision {
            reason: "paid out by the payments service",
            ticket_id: None,
            ctx,
        };
        self.write(&mut tx, &change, &before, &after, &event)
            .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Moves pending requests whose approval window has closed to
    /// `expired`, one transaction (and audit row) each; returns how many.
    /// Safe to run on every replica at once: the row lock and the state
    /// machine let exactly one of them expire a given refund.
    pub async fn expire_due(&self) -> Result<usize, RefundError> {
        let mut expired = 0;
        for _ in 0..EXPIRY_BATCHES_PER_RUN {
            let now = self.clock.now();
            let due = crate::store::refunds::due_for_expiry(&self.store, now, EXPIRY_BATCH).await?;
            let batch = due.len();
            for id in due {
                let mut tx = self.store.begin().await?;
                let Some(refund) =
                    crate::store::refunds::find_for_update(&self.store, &mut tx, &id).await?
                else {
                    continue;
                };
                if self.is_due(&refund, self.clock.now()) {
                    self.expire_in(&mut tx, &refund).await?;
                    tx.commit().await?;
                    expired += 1;
                }
            }
            if i64::try_from(batch).unwrap_or(0) < EXPIRY_BATCH {
                break;
            }
        }
        // Anything left over is picked up by the next run.
        Ok(expired)
    }

    /// Deletes idempotency keys past their retention; returns how many.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, RefundError> {
        Ok(crate::store::refunds::purge_expired_keys(&self.store, self.clock.now()).await?)
    }

    fn is_due(&self, refund: &Refund, now: i64) -> bool {
        refund.status == Status::PendingApproval && refund.expires_at.is_some_and(|e| e <= now)
    }

    async fn lock(&self, tx: &mut Tx, id: &str) -> Result<Refund, RefundError> {
        crate::store::refunds::find_for_update(&self.store, tx, id)
            .await?
            .ok_or_else(|| RefundError::NotFound(id.to_string()))
    }

    /// Locks the refund for a staff decision. A pending request past its
    /// window is expired first (committed, audited as the system), and the
    /// attempted transition is then refused as one from `expired`: the
    /// outcome never depends on whether the expiry job ran yet.
    async fn lock_live(
        &self,
        id: &str,
        attempted: Transition,
    ) -> Result<(Tx, Refund), RefundError> {
        let mut tx = self.store.begin().await?;
        let refund = self.lock(&mut tx, id).await?;
        if !self.is_due(&refund, self.clock.now()) {
            return Ok((tx, refund));
        }
        let expired = self.expire_in(&mut tx, &refund).await?;
        tx.commit().await?;
        Err(match self.transition(&expired, attempted) {
            Err(e) => e,
            Ok(_) => RefundError::Store(crate::store::StoreError::Corrupt(format!(
                "refund {id}: a transition out of expired was allowed"
            ))),
        })
    }

    async fn expire_in(&self, tx: &mut Tx, before: &Refund) -> Result<Refund, RefundError> {
        let change = self.transition(before, Transition::Expire)?;
        let mut after = before.clone();
        after.status = change.to();
        after.updated_at = self.clock.now();
        // The window the request was created with, not today's setting.
        let window = before
            .expires_at
            .map(|e| e.saturating_sub(before.created_at))
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.pending_ttl, Duration::from_secs);
        let reason = format!("not approved within {}", humanize(window));
        after.decision_reason = Some(reason.clone());
        let ctx = AuditContext::system("refunds");
        let event = Decision {
            reason: &reason,
            ticket_id: None,
            ctx: &ctx,
        };
        self.write(tx, &change, before, &after, &event).await?;
        Ok(after)
    }

    fn transition(
        &self,
        refund: &Refund,
        attempted: Transition,
    ) -> Result<state::StatusChange, RefundError> {
        state::transition(refund.status, attempted).map_err(|illegal| {
            RefundError::IllegalTransition {
                id: refund.id.clone(),
                illegal,
            }
        })
    }

    /// Stores a checked change and its audit row (same transaction).
    async fn write(
        &self,
        tx: &mut Tx,
        change: &state::StatusChange,
        before: &Refund,
        after: &Refund,
        event: &Decision<'_>,
    ) -> Result<(), RefundError> {
        if !crate::store::refunds::apply(tx, change, after).await? {
            return Err(RefundError::Store(crate::store::StoreError::Corrupt(
                format!("refund {} changed while locked", after.id),
            )));
        }
        let action = change
            .via()
            .map(Transition::audit_action)
            .unwrap_or("refund.request");
        let ticket = event
            .ticket_id
            .map(str::to_string)
            .or_else(|| before.ticket_id.clone());
        audit::record(
            &self.store,
            tx,
            self.clock.now_ms(),
            event.ctx,
            AuditEvent::new(action, format!("refund:{}", after.id))
                .reason(Some(event.reason.to_string()), ticket)
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(())
    }
}

/// Why and by whom a transition happens, for its audit row.
struct Decision<'a> {
    reason: &'a str,
    /// Falls back to the refund's own ticket.
    ticket_id: Option<&'a str>,
    ctx: &'a AuditContext,
}

/// `86400s` → `24h`; the units the configuration is written in.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The expiry job, spawned by `app::serve`: runs at start-up (so requests
/// that expired while the server was down are expired at once) and every
/// [`EXPIRY_INTERVAL`]; also drops idempotency keys past their retention.
/// All its state is in the database, so restarts lose nothing.
pub async fn expire_periodically(state: AppState) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let refunds = Refunds::from_state(&state);
        match refunds.expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired pending refund requests"),
            Err(e) => tracing::warn!(error = %e, "refund expiry job failed"),
        }
        if let Err(e) = refunds.purge_idempotency_keys().await {
            tracing::warn!(error = %e, "purging idempotency keys failed");
        }
    }
}

/// ISO 4217 minor-unit digits (2 unless listed).
fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `250.00 EUR (25000 minor units)`: integer arithmetic only, so what
/// staff read is exactly what is stored.
pub fn amount_text(amount_minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    if digits == 0 {
        return format!("{amount_minor} {currency} (minor units)");
    }
    let scale = 10_i64.pow(digits);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$} {currency} ({amount_minor} minor units)",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}
