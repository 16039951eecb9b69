//! Grant steps decided in the store's transaction (approve, activate, close), recorded
//! first: each step is planned against the grant as this replica knows it, its records
//! are made durable, then its changes are appended only if the grant is still in that
//! state ([`Grants::commit_if`]). If it changed in between (a racing approval, another
//! replica's close) the records are undone and the step is planned again.

use serde_json::json;

use super::{StepError, grant_event, notify};
use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::{Grant, GrantRefusal, GrantStatus, Grants, check_approval};
use crate::error::ApiError;
use crate::record_first;
use crate::revocation::MAX_TOKEN_LIFETIME_SECS;
use crate::state::AppState;
use crate::store::{GrantChange, Selector, StateChange};

/// How many times a step is planned again when its grant changed between its records
/// and its transaction.
const ATTEMPTS: usize = 3;

/// A planned step: its changes (one transaction), its records (written first) and its
/// webhook events (sent after).
struct Step {
    changes: Vec<StateChange>,
    records: Vec<AuditEvent>,
    events: Vec<&'static str>,
}

/// Plans, records and makes a step on grant `id`; `plan` returns `None` when there is
/// nothing to do (the grant as it is is returned). `revokes`: the step's changes include
/// a revocation rule (committed in the revocations' order, so they apply it).
async fn run(
    st: &AppState,
    id: &str,
    revokes: bool,
    plan: impl Fn(&Grant) -> Result<Option<Step>, StepError>,
) -> Result<Grant, StepError> {
    let grants = &st.break_glass.grants;
    let _serial = grants.one_step_at_a_time().await;
    for _ in 0..ATTEMPTS {
        let base = match grants.get(id) {
            Some(g) => g,
            // Perhaps requested on another replica a moment ago: read the shared store.
            None => grants
                .catch_up(id)
                .map_err(|e| {
                    tracing::error!(error = %e, "state store read failed");
                    StepError::Failed(ApiError::store_unavailable())
                })?
                .ok_or(StepError::UnknownGrant)?,
        };
        let Some(step) = plan(&base)? else {
            return Ok(base);
        };
        let commit = || {
            if revokes {
                st.revocations.commit_with(|| {
                    Ok(match grants.commit_if(id, &base, &step.changes)? {
                        Some((g, events)) => (Some(g), events),
                        None => (None, Vec::new()),
                    })
                })
            } else {
                Ok(grants.commit_if(id, &base, &step.changes)?.map(|(g, _)| g))
            }
        };
        match record_first::decided(st, step.records.clone(), commit).await {
            Ok(Some(g)) => {
                for kind in &step.events {
                    notify(st, kind, &g);
                }
                return Ok(g);
            }
            Ok(None) => {}
            Err(e) => return Err(StepError::Failed(e)),
        }
    }
    tracing::error!(grant = %id, "a grant step kept finding its grant changed");
    Err(StepError::Failed(ApiError::store_unavailable()))
}

/// The activation of `g` at `now` (its access runs for its duration from now).
fn activation(g: &Grant, now: u64) -> StateChange {
    StateChange::Grant(GrantChange::Activated {
        id: g.id.clone(),
        at: now,
        ends_at: now + g.duration,
    })
}

/// Approves grant `id` for `approver` (`may_approve`: the caller has the
/// `break_glass_approve` role). The approval that completes the quorum activates the
/// grant in the same transaction. Records `break_glass_approved` (and
/// `break_glass_activated`) first, from `ev`.
pub async fn approve(
    st: &AppState,
    id: &str,
    approver: &str,
    may_approve: bool,
    ev: &AuditEvent,
) -> Result<Grant, StepError> {
    if !may_approve {
        return Err(StepError::NotAllowed(format!(
            "{approver} lacks the break_glass_approve role"
        )));
    }
    let unknown = || {
        StepError::Refused(GrantRefusal {
            rule: "unknown_grant",
            status: 404,
            reason: format!("no break-glass grant {id}"),
        })
    };
    let planned = run(st, id, false, |base| {
        let now = st.clock.unix_secs();
        check_approval(base, approver, now).map_err(StepError::Refused)?;
        let mut changes = vec![StateChange::Grant(GrantChange::Approved {
            id: id.to_owned(),
            approver: approver.to_owned(),
            at: now,
        })];
        let activates = base.approvals.len() as u32 + 1 >= base.approvals_needed;
        if activates {
            changes.push(activation(base, now));
        }
        let after = Grants::preview_after(base, &changes);
        let mut approved = grant_event(EventKind::BreakGlassApproved, &after, ev);
        approved.approved_by = Some(approver.to_owned());
        let mut step = Step {
            changes,
            records: vec![approved],
            events: vec!["break_glass_approved"],
        };
        if activates {
            step.records
                .push(grant_event(EventKind::BreakGlassActivated, &after, ev));
            step.events.push("break_glass_activated");
        }
        Ok(Some(step))
    })
    .await;
    match planned {
        Err(StepError::UnknownGrant) => Err(unknown()),
        other => other,
    }
}

/// Activates grant `id` if it is pending with its quorum met (a policy needing no
/// approvals); records `break_glass_activated` first, from `ev`.
pub async fn activate_if_ready(
    st: &AppState,
    id: &str,
    ev: &AuditEvent,
) -> Result<Grant, StepError> {
    run(st, id, false, |base| {
        if base.status != GrantStatus::Pending
            || (base.approvals.len() as u32) < base.approvals_needed
        {
            return Ok(None);
        }
        let changes = vec![activation(base, st.clock.unix_secs())];
        let after = Grants::preview_after(base, &changes);
        Ok(Some(Step {
            records: vec![grant_event(EventKind::BreakGlassActivated, &after, ev)],
            changes,
            events: vec!["break_glass_activated"],
        }))
    })
    .await
}

/// Closes grant `id` for `actor` on request: admins with `revoke` or
/// `break_glass_approve` (`privileged`) and the requester may. A closed grant is
/// answered as it is.
pub async fn close_by(
    st: &AppState,
    id: &str,
    actor: &str,
    privileged: bool,
    ev: &AuditEvent,
) -> Result<Grant, StepError> {
    let g = st
        .break_glass
        .grants
        .get(id)
        .ok_or(StepError::UnknownGrant)?;
    if !privileged && actor != g.requester {
        return Err(StepError::NotAllowed(format!(
            "{actor} may not close grant {id}"
        )));
    }
    close(st, id, actor, "closed by request", false, ev).await
}

/// Ends grant `id` now: closes it and revokes every token issued under it, in one
/// transaction, recorded first (`break_glass_closed`, or `break_glass_expired` when
/// `expired`). Used by [`close_by`] and by the expiry sweep (`by = "broker"`). A grant
/// already closed (here or on another replica, whose close did the record and the
/// webhook) is returned as it is.
pub async fn close(
    st: &AppState,
    id: &str,
    by: &str,
    reason: &str,
    expired: bool,
    ev: &AuditEvent,
) -> Result<Grant, StepError> {
    run(st, id, true, |g| {
        if g.status == GrantStatus::Closed {
            return Ok(None);
        }
        let now = st.clock.unix_secs();
        let rule = StateChange::RevokeRule {
            id: format!("rev-{}", g.id),
            selector: Selector::Grant {
                grant: g.id.clone(),
            },
            issued_before: st
                .revocations
                .rule_cutoff(now.max(g.ends_at.unwrap_or(now))),
            until: now + MAX_TOKEN_LIFETIME_SECS,
            at: now,
            actor: by.to_owned(),
            reason: format!("break-glass grant {} ended: {reason}", g.id),
        };
        let changes = vec![
            rule,
            StateChange::Grant(GrantChange::Closed {
                id: g.id.clone(),
                at: now,
                by: by.to_owned(),
                reason: reason.to_owned(),
                expired,
            }),
        ];
        let closed = Grants::preview_after(g, &changes);
        let (kind, event) = if expired {
            (EventKind::BreakGlassExpired, "break_glass_expired")
        } else {
            (EventKind::BreakGlassClosed, "break_glass_closed")
        };
        let mut e = grant_event(kind, &closed, ev);
        e.reason = Some(format!(
            "{reason} (justification was: {})",
            closed.justification
        ));
        e.detail = e.detail.map(|mut d| {
            d["tokens_revoked"] = json!(closed.tokens.len());
            d["close_reason"] = json!(reason);
            d
        });
        Ok(Some(Step {
            changes,
            records: vec![e],
            events: vec![event],
        }))
    })
    .await
}
