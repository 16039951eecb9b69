//! The break-glass grant lifecycle as a service: closing a grant (with the rule revoking
//! its tokens, in one transaction), the expiry sweep the server's background loop runs, and
//! the audit records and webhook events of grant steps. The HTTP handlers
//! (`api::handlers::break_glass`) and the server call it; it does not know HTTP.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::audit::event::{AuditEvent, Decision, EventKind};
use crate::breakglass::policy::BreakGlassPolicy;
use crate::breakglass::{Grant, GrantStatus, new_grant_id};
use crate::config::parse_duration;
use crate::error::ApiError;
use crate::revocation::MAX_TOKEN_LIFETIME_SECS;
use crate::state::AppState;
use crate::store::{GrantChange, Selector, StateChange};

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

/// Body of a break-glass request: every field is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    identity: Option<String>,
    task: Option<String>,
    duration: Option<String>,
    justification: Option<String>,
    ticket: Option<String>,
}

/// Why a break-glass request is refused: the audit rule and the answer come from the
/// variant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestRefusal {
    /// The body is not the request's JSON object, or a field is missing or malformed.
    Malformed(String),
    /// No justification.
    JustificationRequired,
    /// No incident ticket.
    TicketRequired,
    /// No break-glass policy lets the identity receive the task.
    NoPolicy {
        /// The identity.
        identity: String,
        /// The task.
        task: String,
    },
    /// The caller may not request under this policy.
    RequesterNotAllowed {
        /// The caller.
        actor: String,
    },
    /// A zero duration.
    DurationInvalid,
    /// Longer than the policy allows.
    DurationExceedsMax {
        /// Seconds asked.
        asked: u64,
        /// The policy.
        policy: String,
        /// Its maximum, seconds.
        max: u64,
    },
    /// The system random generator failed (no grant id).
    Internal,
}

impl RequestRefusal {
    /// The audit rule.
    pub fn rule(&self) -> &'static str {
        match self {
            RequestRefusal::Malformed(_) => "malformed_request",
            RequestRefusal::JustificationRequired => "justification_required",
            RequestRefusal::TicketRequired => "ticket_required",
            RequestRefusal::NoPolicy { .. } => "no_break_glass_policy",
            RequestRefusal::RequesterNotAllowed { .. } => "requester_not_allowed",
            RequestRefusal::DurationInvalid => "duration_invalid",
            RequestRefusal::DurationExceedsMax { .. } => "duration_exceeds_max",
            RequestRefusal::Internal => "internal_error",
        }
    }

    /// The answer.
    pub fn error(&self) -> ApiError {
        let bad = |d: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", d);
        let forbidden = |d: String| ApiError::new(StatusCode::FORBIDDEN, "access_denied", d);
        match self {
            RequestRefusal::Malformed(d) => bad(d.clone()),
            RequestRefusal::JustificationRequired => {
                bad("justification is required for break-glass access".into())
            }
            RequestRefusal::TicketRequired => {
                bad("ticket is required for break-glass access".into())
            }
            RequestRefusal::NoPolicy { identity, task } => forbidden(format!(
                "no break-glass policy lets identity {identity} receive task {task}"
            )),
            RequestRefusal::RequesterNotAllowed { actor } => forbidden(format!(
                "{actor} may not request break-glass access: admins and the policy's on-call requesters may"
            )),
            RequestRefusal::DurationInvalid => bad("duration must be greater than zero".into()),
            RequestRefusal::DurationExceedsMax { asked, policy, max } => bad(format!(
                "duration {asked}s is over policy {policy}'s maximum of {max}s"
            )),
            RequestRefusal::Internal => ApiError::internal(),
        }
    }
}

/// Checks a break-glass request `body` from `actor` (`may_request` says whether the
/// caller may request under a policy) and returns the change that opens it. `ev` gets the
/// identity, task and ticket as soon as they are known.
pub fn check_request(
    st: &AppState,
    body: &[u8],
    actor: &str,
    may_request: impl Fn(&BreakGlassPolicy) -> bool,
    ev: &mut AuditEvent,
) -> Result<GrantChange, RequestRefusal> {
    let req: GrantRequest = serde_json::from_slice(body)
        .map_err(|e| RequestRefusal::Malformed(format!("invalid JSON body: {e}")))?;
    let need = |v: &Option<String>, name: &str| {
        v.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            RequestRefusal::Malformed(format!("{name} is required for break-glass access"))
        })
    };
    let identity = need(&req.identity, "identity")?;
    let task = need(&req.task, "task")?;
    let duration_text = need(&req.duration, "duration")?;
    let justification = need(&req.justification, "justification")
        .map_err(|_| RequestRefusal::JustificationRequired)?;
    let ticket = need(&req.ticket, "ticket").map_err(|_| RequestRefusal::TicketRequired)?;
    let duration = parse_duration(&duration_text)
        .map_err(|e| RequestRefusal::Malformed(format!("duration: {e}")))?;
    ev.identity = Some(identity.clone());
    ev.task = Some(task.clone());
    ev.ticket = Some(ticket.clone());
    let policies = st.policies.break_glass();
    let Some((policy, _)) = policies.find(&identity, &task) else {
        return Err(RequestRefusal::NoPolicy { identity, task });
    };
    if !may_request(policy) {
        return Err(RequestRefusal::RequesterNotAllowed {
            actor: actor.to_owned(),
        });
    }
    if duration.is_zero() {
        return Err(RequestRefusal::DurationInvalid);
    }
    if duration > policy.max_duration {
        return Err(RequestRefusal::DurationExceedsMax {
            asked: duration.as_secs(),
            policy: policy.name.clone(),
            max: policy.max_duration.as_secs(),
        });
    }
    let now = st.clock.unix_secs();
    let id = new_grant_id().map_err(|e| {
        tracing::error!(error = %e, "could not make a grant id");
        RequestRefusal::Internal
    })?;
    Ok(GrantChange::Requested {
        id,
        identity,
        task,
        policy: policy.name.clone(),
        duration: duration.as_secs(),
        justification,
        ticket,
        requester: actor.to_owned(),
        approvals_needed: policy.approvals,
        at: now,
        pending_until: now + st.break_glass.pending_ttl_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_refusal_has_one_rule_and_status() {
        let cases = [
            (
                RequestRefusal::Malformed("x".into()),
                "malformed_request",
                400,
            ),
            (
                RequestRefusal::JustificationRequired,
                "justification_required",
                400,
            ),
            (RequestRefusal::TicketRequired, "ticket_required", 400),
            (
                RequestRefusal::NoPolicy {
                    identity: "i".into(),
                    task: "t".into(),
                },
                "no_break_glass_policy",
                403,
            ),
            (
                RequestRefusal::RequesterNotAllowed { actor: "a".into() },
                "requester_not_allowed",
                403,
            ),
            (RequestRefusal::DurationInvalid, "duration_invalid", 400),
            (RequestRefusal::Internal, "internal_error", 500),
        ];
        for (r, rule, status) in cases {
            assert_eq!(
                (r.rule(), r.error().status.as_u16()),
                (rule, status),
                "{r:?}"
            );
        }
        assert_eq!(
            RequestRefusal::NoPolicy {
                identity: "i".into(),
                task: "t".into()
            }
            .error()
            .code,
            "access_denied"
        );
    }
}
