//! The break-glass grant lifecycle as a service: a request checked and opened
//! (`request`), approvals, activation and closing (`steps`; a close revokes the grant's
//! tokens in the same transaction), the expiry sweep the server's background loop runs,
//! the report, and the audit records and webhook events of grant steps. Every step is
//! recorded before it is made ([`crate::record_first`]). The HTTP handlers
//! (`api::handlers::break_glass`) and the server call it; it does not know HTTP.

mod request;
mod steps;

use broker_client::types::{GrantApproval, GrantReport, GrantTokenEntry};
use serde_json::json;

use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::{Grant, GrantRefusal, GrantStatus};
use crate::error::ApiError;
use crate::state::AppState;

pub use request::{RequestRefusal, check_request, open};
pub use steps::{activate_if_ready, approve, close, close_by};

/// Why a grant step did not happen.
#[derive(Debug)]
#[non_exhaustive]
pub enum StepError {
    /// No such grant.
    UnknownGrant,
    /// The caller may not take this step (the text says why).
    NotAllowed(String),
    /// A break-glass rule refused (not pending, self-approval, twice, …).
    Refused(GrantRefusal),
    /// The answer (503, 500) for a failure already recorded, or not recordable.
    Failed(ApiError),
}

/// The audit record of a grant step: `ev`'s context plus the grant's state.
pub fn grant_event(kind: EventKind, g: &Grant, ev: &AuditEvent) -> AuditEvent {
    let mut e = ev.clone();
    e.event = kind;
    e.identity = Some(g.identity.clone());
    e.task = Some(g.task.clone());
    e.ticket = Some(g.ticket.clone());
    e.reason = Some(g.justification.clone());
    e.detail = Some(json!({
        "grant": g.id, "policy": g.policy, "requester": g.requester, "status": g.status,
        "approvals": g.approvals, "approvals_needed": g.approvals_needed,
        "ends_at": g.ends_at, "duration": g.duration,
    }));
    e
}

/// Sends a grant event to the break-glass webhook.
pub fn notify(st: &AppState, kind: &str, g: &Grant) {
    st.webhook
        .send(json!({ "event": kind, "grant": g, "at": st.clock.unix_secs() }));
}

/// Closes grants that are due (ended, or unapproved in time). Runs at start, before
/// serving, and every second while serving. A close whose record cannot be written is
/// not made and is tried again on the next run (the grant's tokens expire at its end
/// anyway).
pub async fn close_due(st: &AppState, at_start: bool) -> usize {
    let now = st.clock.unix_secs();
    let due = st.break_glass.grants.due(now);
    let mut ev = AuditEvent::new(EventKind::BreakGlassExpired);
    ev.actor = Some("broker".into());
    for g in &due {
        let reason = match g.status {
            GrantStatus::Pending => "not approved in time",
            _ if at_start => "its end passed while the broker was down",
            _ => "its duration passed",
        };
        if let Err(e) = close(st, &g.id, "broker", reason, true, &ev).await {
            tracing::error!(grant = %g.id, error = ?e, "could not close an overdue grant; will retry");
        }
    }
    due.len()
}

/// The full account of grant `id` for `actor` (admins may read every grant, others
/// their own).
pub fn report(st: &AppState, id: &str, actor: &str, admin: bool) -> Result<GrantReport, StepError> {
    let g = st
        .break_glass
        .grants
        .get(id)
        .ok_or(StepError::UnknownGrant)?;
    if !admin && actor != g.requester {
        return Err(StepError::NotAllowed(format!(
            "{actor} may not read grant {id}"
        )));
    }
    Ok(GrantReport {
        status: match g.status {
            GrantStatus::Pending => "pending",
            GrantStatus::Active => "active",
            GrantStatus::Closed => "closed",
        }
        .to_owned(),
        approvals: g
            .approvals
            .iter()
            .map(|a| GrantApproval {
                approver: a.approver.clone(),
                at: a.at,
            })
            .collect(),
        tokens: g
            .tokens
            .iter()
            .map(|t| GrantTokenEntry {
                jti: t.jti.clone(),
                audience: t.audience.clone(),
                scopes: t.scopes.clone(),
                exp: t.exp,
                issued_at: t.issued_at,
            })
            .collect(),
        grant: g.id,
        identity: g.identity,
        task: g.task,
        policy: g.policy,
        requested_by: g.requester,
        requested_at: g.requested_at,
        justification: g.justification,
        ticket: g.ticket,
        approvals_needed: g.approvals_needed,
        opened_at: g.activated_at,
        ends_at: g.ends_at,
        closed_at: g.closed_at,
        closed_by: g.closed_by,
        close_reason: g.close_reason,
    })
}
