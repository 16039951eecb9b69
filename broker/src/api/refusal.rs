//! Every way the admin, introspection, feed, revocation and break-glass endpoints refuse
//! a caller, as one typed enum: the audit `rule` and the answer come from the variant, in
//! this one place. (The token endpoint's refusals are [`crate::issuance::Refusal`]; the
//! break-glass request's are [`crate::grant_lifecycle::RequestRefusal`]; the admin
//! changes' are [`crate::admin_changes::ChangeRefusal`].)

use axum::http::StatusCode;

use crate::breakglass::GrantRefusal;
use crate::error::ApiError;

/// Why an admin-side call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallRefusal {
    /// A workload called an admin endpoint (`what` says so).
    AdminRequired {
        /// The refusal's text.
        what: String,
    },
    /// An admin lacks the role (`what` says which).
    RoleRequired {
        /// The refusal's text, e.g. `admin ops lacks the revoke role`.
        what: String,
    },
    /// The caller may not introspect.
    IntrospectionNotAllowed {
        /// The caller.
        actor: String,
    },
    /// The caller may not read the revocation feed.
    FeedNotAllowed {
        /// The caller.
        actor: String,
    },
    /// A workload revoking another identity's token.
    NotTokenOwner {
        /// The caller.
        actor: String,
        /// The token's identity.
        owner: String,
    },
    /// No such anomaly.
    UnknownAnomaly {
        /// The id.
        id: String,
    },
    /// No such break-glass grant.
    UnknownGrant {
        /// The id.
        id: String,
    },
    /// A break-glass rule refused (not pending, self-approval, twice, …).
    Grant(GrantRefusal),
}

impl CallRefusal {
    /// The audit rule.
    pub fn rule(&self) -> &'static str {
        match self {
            CallRefusal::AdminRequired { .. } => "admin_required",
            CallRefusal::RoleRequired { .. } => "role_required",
            CallRefusal::IntrospectionNotAllowed { .. } => "introspection_not_allowed",
            CallRefusal::FeedNotAllowed { .. } => "feed_not_allowed",
            CallRefusal::NotTokenOwner { .. } => "not_token_owner",
            CallRefusal::UnknownAnomaly { .. } => "unknown_anomaly",
            CallRefusal::UnknownGrant { .. } => "unknown_grant",
            CallRefusal::Grant(r) => r.rule,
        }
    }

    /// The answer.
    pub fn error(&self) -> ApiError {
        let forbidden = |d: String| ApiError::new(StatusCode::FORBIDDEN, "access_denied", d);
        let not_found = |d: String| ApiError::new(StatusCode::NOT_FOUND, "not_found", d);
        match self {
            CallRefusal::AdminRequired { what } | CallRefusal::RoleRequired { what } => {
                forbidden(what.clone())
            }
            CallRefusal::IntrospectionNotAllowed { actor } => forbidden(format!(
                "{actor} may not introspect: set may_introspect = true in its [identity]"
            )),
            CallRefusal::FeedNotAllowed { actor } => forbidden(format!(
                "{actor} may not read the revocation feed: set may_introspect = true"
            )),
            CallRefusal::NotTokenOwner { actor, owner } => ApiError::new(
                StatusCode::FORBIDDEN,
                "unauthorized_client",
                format!("{actor} may revoke only its own tokens; this token belongs to {owner}"),
            ),
            CallRefusal::UnknownAnomaly { id } => not_found(format!("no anomaly {id}")),
            CallRefusal::UnknownGrant { id } => not_found(format!("no break-glass grant {id}")),
            CallRefusal::Grant(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                let code = if r.status == 403 {
                    "access_denied"
                } else {
                    "invalid_request"
                };
                ApiError::new(status, code, r.reason.clone())
            }
        }
    }
}

/// Records `refusal` as a `denied` event and answers with it.
pub async fn deny(
    st: &crate::state::AppState,
    ev: crate::audit::event::AuditEvent,
    refusal: CallRefusal,
) -> axum::response::Response {
    super::record::deny(st, ev, refusal.rule(), refusal.error()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_refusal_has_one_rule_status_and_code() {
        let cases = [
            (
                CallRefusal::AdminRequired { what: "w".into() },
                "admin_required",
                403,
                "access_denied",
            ),
            (
                CallRefusal::NotTokenOwner {
                    actor: "a".into(),
                    owner: "b".into(),
                },
                "not_token_owner",
                403,
                "unauthorized_client",
            ),
            (
                CallRefusal::UnknownGrant { id: "bg-1".into() },
                "unknown_grant",
                404,
                "not_found",
            ),
            (
                CallRefusal::FeedNotAllowed { actor: "a".into() },
                "feed_not_allowed",
                403,
                "access_denied",
            ),
        ];
        for (r, rule, status, code) in cases {
            let e = r.error();
            assert_eq!(
                (r.rule(), e.status.as_u16(), e.code),
                (rule, status, code),
                "{r:?}"
            );
        }
    }
}
