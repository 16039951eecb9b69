//! The break-glass grant lifecycle as a service: closing a grant (with the rule revoking
//! its tokens, in one transaction), the expiry sweep the server's background loop runs, and
//! the audit records and webhook events of grant steps. The HTTP handlers
//! (`api::handlers::break_glass`) and the server call it; it does not know HTTP.

use serde_json::json;

use crate::audit::event::{AuditEvent, Decision, EventKind};
use crate::breakglass::{Grant, GrantStatus};
use crate::revocation::MAX_TOKEN_LIFETIME_SECS;
use crate::state::AppState;
use crate::store::{Selector, StateChange};

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

/// Ends a grant now: closes it and revokes every token issued under it. Used by the
/// close endpoint and by the expiry sweep (`by = "broker"`).
pub async fn close_grant(
    st: &AppState,
    g: &Grant,
    by: &str,
    reason: &str,
    expired: bool,
    ev: &AuditEvent,
) -> Result<Grant, crate::store::StoreError> {
    let now = st.clock.unix_secs();
    // The rule covering its tokens and the close are one transaction: no replica ever
    // sees the grant closed with its tokens still live. Webhook and audit come after.
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
    let closed = st.revocations.commit_with(|| {
        match st
            .break_glass
            .grants
            .close_once(&g.id, now, by, reason, expired, &[rule])
        {
            Ok(Some((c, events))) => Ok((Some(c), events)),
            Ok(None) => Ok((None, Vec::new())),
            Err(e) => Err(e),
        }
    });
    let closed = match closed {
        Ok(Some(c)) => c,
        // Someone else closed it first: their close did the audit and the webhook.
        Ok(None) => {
            return Ok(st
                .break_glass
                .grants
                .get(&g.id)
                .unwrap_or_else(|| g.clone()));
        }
        Err(e) => return Err(e),
    };
    let kind = if expired {
        EventKind::BreakGlassExpired
    } else {
        EventKind::BreakGlassClosed
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
    e.decision = Some(Decision::Allow);
    if let Err(err) = st.audit.append(e).await {
        st.metrics.audit_failure();
        tracing::error!(grant = %g.id, error = %err, "could not audit a grant close; tokens are revoked");
    }
    notify(
        st,
        if expired {
            "break_glass_expired"
        } else {
            "break_glass_closed"
        },
        &closed,
    );
    Ok(closed)
}

/// Closes grants that are due (ended, or unapproved in time). Runs at start, before
/// serving, and every second while serving.
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
        if let Err(e) = close_grant(st, g, "broker", reason, true, &ev).await {
            tracing::error!(grant = %g.id, error = %e, "could not close an overdue grant; will retry");
        }
    }
    due.len()
}
