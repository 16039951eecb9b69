//! The admin API's changes as a service: revocation by selector (`jti`, identity, task,
//! owner, break-glass grant), the kill switch (disable, enable) and anomaly
//! acknowledgement. Each call checks its request and plans the change: the audit record to
//! write first, the state changes, and the answer. The handlers
//! (`api::handlers::admin`) authenticate, translate HTTP, and make the change recorded
//! first ([`crate::record_first`]); nothing here knows HTTP.

use axum::http::StatusCode;
use broker_client::types::{IdentityStateResponse, RevocationResponse};
use serde::Deserialize;
use serde_json::json;

use crate::audit::event::AuditEvent;
use crate::error::ApiError;
use crate::revocation::MAX_TOKEN_LIFETIME_SECS;
use crate::state::AppState;
use crate::store::{Selector, StateChange};

pub mod anomaly_ack;
pub mod keys;

/// Body of `POST /v1/admin/revocations`: exactly one selector (`task` may be combined
/// with `identity`), and a reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    jti: Option<String>,
    identity: Option<String>,
    task: Option<String>,
    owner: Option<String>,
    grant: Option<String>,
    reason: Option<String>,
}

/// Body of the disable/enable calls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

/// Why an admin change is refused: the audit rule and the answer come from the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeRefusal {
    /// The body is not the call's JSON object, or a field is missing (the text says).
    Malformed(String),
    /// No registered identity has this owner.
    UnknownOwner(String),
    /// No such registered identity (or, for enable, no such disabled one either).
    UnknownIdentity {
        /// The id asked for.
        id: String,
        /// Whether disabled identities were looked at too.
        or_disabled: bool,
    },
    /// The system random generator failed (no rule id).
    Internal,
}

impl ChangeRefusal {
    /// The audit rule; `None` for an internal failure, which is answered unrecorded.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            ChangeRefusal::Malformed(_) => Some("malformed_request"),
            ChangeRefusal::UnknownOwner(_) => Some("unknown_owner"),
            ChangeRefusal::UnknownIdentity { .. } => Some("unknown_identity"),
            ChangeRefusal::Internal => None,
        }
    }

    /// The answer.
    pub fn error(&self) -> ApiError {
        match self {
            ChangeRefusal::Malformed(d) => ApiError::invalid_request(d.clone()),
            ChangeRefusal::UnknownOwner(o) => {
                ApiError::invalid_request(format!("no registered identity has owner {o:?}"))
            }
            ChangeRefusal::UnknownIdentity { id, or_disabled } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                if *or_disabled {
                    format!("no registered or disabled identity {id:?}")
                } else {
                    format!("no registered identity {id:?}")
                },
            ),
            ChangeRefusal::Internal => ApiError::internal(),
        }
    }
}

/// A planned admin change: `changes` are made durable as one unit after the record
/// (`ev`, filled in here) is, and `answer` is the caller's answer once they are.
#[derive(Debug)]
pub struct Planned<A> {
    /// The state changes, one unit.
    pub changes: Vec<StateChange>,
    /// The answer.
    pub answer: A,
}

/// A new rule id, or [`ChangeRefusal::Internal`] (logged) if the random generator failed.
fn new_rule_id() -> Result<String, ChangeRefusal> {
    crate::ids::random_id("rev").map_err(|e| {
        tracing::error!(error = %e, "could not make an id");
        ChangeRefusal::Internal
    })
}

/// The selector a revocation body names: `Err(jti)` for a single token.
fn selector_of(
    st: &AppState,
    req: &RevocationRequest,
) -> Result<Result<Selector, String>, ChangeRefusal> {
    let sel = match (&req.jti, &req.identity, &req.task, &req.owner, &req.grant) {
        (Some(jti), None, None, None, None) => Err(jti.clone()),
        (None, Some(i), None, None, None) => Ok(Selector::Identity {
            identity: i.clone(),
        }),
        (None, i, Some(t), None, None) => Ok(Selector::Task {
            task: t.clone(),
            identity: i.clone(),
        }),
        (None, None, None, Some(o), None) => {
            if !st.policies.current().identities().any(|i| &i.owner == o) {
                return Err(ChangeRefusal::UnknownOwner(o.clone()));
            }
            Ok(Selector::Owner { owner: o.clone() })
        }
        (None, None, None, None, Some(g)) => Ok(Selector::Grant { grant: g.clone() }),
        _ => {
            return Err(ChangeRefusal::Malformed(
                "give exactly one of jti, identity, task (optionally with identity), owner, grant"
                    .into(),
            ));
        }
    };
    Ok(sel)
}

/// Plans a revocation by selector from `actor`'s `body`; fills `ev` (reason, jti or
/// rule detail, identity).
pub fn plan_revocation(
    st: &AppState,
    actor: &str,
    body: &[u8],
    ev: &mut AuditEvent,
) -> Result<Planned<RevocationResponse>, ChangeRefusal> {
    let req: RevocationRequest = serde_json::from_slice(body)
        .map_err(|e| ChangeRefusal::Malformed(format!("invalid JSON body: {e}")))?;
    let reason = req
        .reason
        .clone()
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| ChangeRefusal::Malformed("reason is required".into()))?;
    let now = st.clock.unix_secs();
    let selector = selector_of(st, &req)?;
    ev.reason = Some(reason.clone());
    let mut answer = RevocationResponse {
        revoked: "jti".into(),
        jti: None,
        rule: None,
        selector: None,
        issued_before: None,
        live_tokens_covered: None,
    };
    let change = match selector {
        Err(jti) => {
            ev.jti = Some(jti.clone());
            answer.jti = Some(jti.clone());
            StateChange::RevokeJti {
                jti,
                exp: now + MAX_TOKEN_LIFETIME_SECS,
                at: now,
                actor: actor.to_owned(),
                reason,
            }
        }
        Ok(sel) => {
            let owned: Vec<String> = match &sel {
                Selector::Owner { owner } => st
                    .policies
                    .current()
                    .identities()
                    .filter(|i| &i.owner == owner)
                    .map(|i| i.id.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let n = st.revocations.live_count(&sel, now, &owned);
            let id = new_rule_id()?;
            ev.detail = Some(json!({ "rule": id, "selector": sel, "live_tokens_covered": n }));
            if let Selector::Identity { identity } = &sel {
                ev.identity = Some(identity.clone());
            }
            let issued_before = st.revocations.rule_cutoff(now);
            answer.revoked = "rule".into();
            answer.rule = Some(id.clone());
            answer.selector = serde_json::to_value(&sel).ok();
            answer.issued_before = Some(issued_before);
            answer.live_tokens_covered = Some(n);
            StateChange::RevokeRule {
                id,
                selector: sel,
                issued_before,
                until: now + MAX_TOKEN_LIFETIME_SECS,
                at: now,
                actor: actor.to_owned(),
                reason,
            }
        }
    };
    Ok(Planned {
        changes: vec![change],
        answer,
    })
}

/// The optional `reason` of a disable/enable body (empty body: none).
fn parse_reason(body: &[u8]) -> Result<Option<String>, ChangeRefusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<ReasonBody>(body)
        .map(|b| b.reason)
        .map_err(|e| ChangeRefusal::Malformed(format!("invalid JSON body: {e}")))
}

/// Plans the kill switch for identity `id`: disabled, and every live token revoked, in one
/// unit (no replica ever sees the identity disabled without its tokens revoked).
pub fn plan_disable(
    st: &AppState,
    actor: &str,
    id: &str,
    body: &[u8],
    ev: &mut AuditEvent,
) -> Result<Planned<IdentityStateResponse>, ChangeRefusal> {
    let reason = parse_reason(body)?.unwrap_or_else(|| "disabled by an admin".into());
    if st.policies.current().identity(id).is_none() {
        return Err(ChangeRefusal::UnknownIdentity {
            id: id.to_owned(),
            or_disabled: false,
        });
    }
    let now = st.clock.unix_secs();
    let selector = Selector::Identity {
        identity: id.to_owned(),
    };
    let covered = st.revocations.live_count(&selector, now, &[]);
    let rule = new_rule_id()?;
    let changes = vec![
        StateChange::Disable {
            identity: id.to_owned(),
            at: now,
            actor: actor.to_owned(),
            reason: reason.clone(),
        },
        StateChange::RevokeRule {
            id: rule.clone(),
            selector,
            issued_before: st.revocations.rule_cutoff(now),
            until: now + MAX_TOKEN_LIFETIME_SECS,
            at: now,
            actor: actor.to_owned(),
            reason: format!("identity disabled: {reason}"),
        },
    ];
    ev.reason = Some(reason);
    ev.detail = Some(json!({ "rule": rule, "live_tokens_revoked": covered }));
    Ok(Planned {
        changes,
        answer: IdentityStateResponse {
            identity: id.to_owned(),
            disabled: true,
            rule: Some(rule),
            live_tokens_revoked: Some(covered),
        },
    })
}

/// Plans lifting the kill switch for `id`; tokens revoked by it stay revoked.
pub fn plan_enable(
    st: &AppState,
    actor: &str,
    id: &str,
    body: &[u8],
) -> Result<Planned<IdentityStateResponse>, ChangeRefusal> {
    parse_reason(body)?;
    if st.policies.current().identity(id).is_none() && st.revocations.disabled(id).is_none() {
        return Err(ChangeRefusal::UnknownIdentity {
            id: id.to_owned(),
            or_disabled: true,
        });
    }
    Ok(Planned {
        changes: vec![StateChange::Enable {
            identity: id.to_owned(),
            at: st.clock.unix_secs(),
            actor: actor.to_owned(),
        }],
        answer: IdentityStateResponse {
            identity: id.to_owned(),
            disabled: false,
            rule: None,
            live_tokens_revoked: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_refusal_has_one_rule_and_status() {
        let cases = [
            (
                ChangeRefusal::Malformed("x".into()),
                Some("malformed_request"),
                400,
            ),
            (
                ChangeRefusal::UnknownOwner("o".into()),
                Some("unknown_owner"),
                400,
            ),
            (
                ChangeRefusal::UnknownIdentity {
                    id: "i".into(),
                    or_disabled: false,
                },
                Some("unknown_identity"),
                404,
            ),
            (ChangeRefusal::Internal, None, 500),
        ];
        for (r, rule, status) in cases {
            assert_eq!(
                (r.rule(), r.error().status.as_u16()),
                (rule, status),
                "{r:?}"
            );
        }
    }
}
