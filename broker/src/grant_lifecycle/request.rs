//! A break-glass request as a service: the body checked against the policies
//! ([`check_request`], with the typed [`RequestRefusal`]), then the grant opened recorded
//! first ([`open`]) and activated at once when its policy needs no approval.

use axum::http::StatusCode;
use serde::Deserialize;

use super::{StepError, activate_if_ready, grant_event, notify};
use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::policy::BreakGlassPolicy;
use crate::breakglass::{Grant, Grants, new_grant_id};
use crate::config::parse_duration;
use crate::error::ApiError;
use crate::record_first;
use crate::state::AppState;
use crate::store::GrantChange;

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

/// Opens the grant `change` requests: its `break_glass_requested` record (from `ev`) is
/// made durable first, then the grant; then it is sent to the webhook and, when its policy
/// needs no (more) approvals, activated (recorded first too).
pub async fn open(st: &AppState, change: GrantChange, ev: &AuditEvent) -> Result<Grant, StepError> {
    let Some(preview) = Grants::preview(&change) else {
        return Err(StepError::Failed(ApiError::internal()));
    };
    let requested = grant_event(EventKind::BreakGlassRequested, &preview, ev);
    let g = record_first::change(st, requested, || st.break_glass.grants.commit(change))
        .await
        .map_err(StepError::Failed)?
        .ok_or_else(|| StepError::Failed(ApiError::store_unavailable()))?;
    notify(st, "break_glass_requested", &g);
    activate_if_ready(st, &g.id, ev).await
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
