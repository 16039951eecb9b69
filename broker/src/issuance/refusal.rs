//! Every way the token endpoint refuses, in one place: the audit `rule` and the OAuth
//! error, status and description of each, built by one constructor apiece.

use std::time::Duration;

use axum::http::StatusCode;
use broker_client::types::{
    GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT,
};

use super::parse::clip;
use crate::authn::AuthnError;
use crate::authn::mtls::CertRefusal;
use crate::error::ApiError;
use crate::policy;

/// A refusal: the rule to record and the error to answer with.
#[derive(Debug)]
pub struct Refusal {
    /// The stable rule name (the audit record's `rule`, the metric's label).
    pub rule: &'static str,
    /// What the caller is told.
    pub error: ApiError,
}

impl Refusal {
    fn new(rule: &'static str, error: ApiError) -> Self {
        Self { rule, error }
    }

    fn malformed(description: impl Into<String>) -> Self {
        Self::new("malformed_request", ApiError::invalid_request(description))
    }

    /// This replica's view of the shared state is not confirmed.
    pub fn state_stale() -> Self {
        Self::new("state_stale", ApiError::state_stale())
    }

    /// The body is over `listen.max_body_bytes`.
    pub fn body_too_large() -> Self {
        Self::new(
            "body_too_large",
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body is larger than this broker accepts (listen.max_body_bytes)",
            ),
        )
    }

    /// The body could not be read.
    pub fn body_unreadable() -> Self {
        Self::malformed("request body could not be read")
    }

    /// Not a form body.
    pub fn not_a_form() -> Self {
        Self::malformed(
            "the token endpoint takes application/x-www-form-urlencoded bodies (RFC 6749 §4)",
        )
    }

    /// The form does not parse.
    pub fn malformed_form(e: &serde_urlencoded::de::Error) -> Self {
        Self::malformed(format!("malformed form body: {e}"))
    }

    /// An unknown `grant_type`.
    pub fn unsupported_grant_type(other: &str) -> Self {
        Self::new(
            "unsupported_grant_type",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant_type {:?} is not supported: use {GRANT_TYPE_TOKEN_EXCHANGE} or {GRANT_TYPE_CLIENT_CREDENTIALS}",
                    clip(other)
                ),
            ),
        )
    }

    /// A required parameter is missing (`what` says which and why).
    pub fn missing(what: &'static str) -> Self {
        Self::malformed(what)
    }

    /// An unsupported `subject_token_type`.
    pub fn unsupported_subject_token_type(other: &str) -> Self {
        Self::malformed(format!(
            "subject_token_type {:?} is not supported: use {TOKEN_TYPE_JWT}",
            clip(other)
        ))
    }

    /// `actor_token` was sent.
    pub fn delegation_unsupported() -> Self {
        Self::malformed("delegation (actor_token) is not supported")
    }

    /// An unsupported `requested_token_type`.
    pub fn unsupported_requested_token_type(other: &str) -> Self {
        Self::malformed(format!(
            "requested_token_type {:?} is not supported",
            clip(other)
        ))
    }

    /// `audience` and `resource` disagree.
    pub fn audience_conflict() -> Self {
        Self::new(
            "audience_conflict",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "audience and resource name different targets; a token has exactly one audience",
            ),
        )
    }

    /// `requested_ttl` is not a positive number.
    pub fn bad_ttl(s: &str) -> Self {
        Self::malformed(format!(
            "requested_ttl {:?} must be a positive number of seconds",
            clip(s)
        ))
    }

    /// The TLS client certificate could not be used.
    pub fn certificate_unusable(why: String) -> Self {
        Self::new(
            "client_certificate_unusable",
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", why),
        )
    }

    /// `client_credentials` without a certificate.
    pub fn certificate_required() -> Self {
        Self::new(
            "client_certificate_required",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client_credentials needs a TLS client certificate (tls_client_auth, RFC 8705); none was presented",
            ),
        )
    }

    /// The certificate does not map to an identity.
    pub fn certificate(r: CertRefusal) -> Self {
        let error = if r.rule == "unknown_identity" {
            ApiError::new(StatusCode::FORBIDDEN, "unauthorized_client", r.reason)
        } else {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", r.reason)
        };
        Self::new(r.rule, error)
    }

    /// `client_id` names another identity than the certificate.
    pub fn client_id_mismatch(client_id: &str, identity: &str) -> Self {
        Self::new(
            "client_id_mismatch",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!(
                    "client_id {:?} does not match the identity {identity} the certificate proves",
                    clip(client_id)
                ),
            ),
        )
    }

    /// The subject token was refused. Issuer-key failures are told plainly (their detail
    /// names the broker's files and URLs: it goes to the audit record and the log).
    pub fn subject_token(e: &AuthnError) -> Self {
        let error = match e {
            AuthnError::KeysUnavailable(_) => {
                tracing::warn!(error = %e, "subject_token not checked: issuer keys unavailable");
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    format!("cannot check the subject_token: {}", e.public_message()),
                )
                .with_operator_detail(format!("cannot check the subject_token: {e}"));
                // Keys that failed to load are fetched again at most this often.
                err.retry_after = Some(crate::authn::issuers::MIN_REFRESH_INTERVAL.as_secs());
                err
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                format!("subject_token rejected: {e}"),
            ),
        };
        Self::new(e.rule(), error)
    }

    /// No registered identity matches the JWT.
    pub fn unknown_identity(issuer: &str, subject: &str) -> Self {
        Self::new(
            policy::Rule::UnknownIdentity.as_str(),
            ApiError::new(
                StatusCode::FORBIDDEN,
                policy::Rule::UnknownIdentity.oauth_error(),
                format!(
                    "no registered identity matches issuer {issuer} subject {}: register it with an [[identity.match]] in the policy directory",
                    clip(subject)
                ),
            ),
        )
    }

    /// The JWT and the certificate prove different identities.
    pub fn identity_mismatch(by_jwt: &str, by_cert: &str) -> Self {
        Self::new(
            "identity_mismatch",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "the subject_token proves identity {by_jwt} but the client certificate proves {by_cert}: present credentials of one workload"
                ),
            ),
        )
    }

    /// The kill switch is on for the identity.
    pub fn identity_disabled(identity: &str, why: &str) -> Self {
        Self::new(
            "identity_disabled",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!("identity {identity} is disabled ({why}): an admin must enable it"),
            ),
        )
    }

    /// The policy denied the request.
    pub fn policy(d: &policy::Denial) -> Self {
        let status = StatusCode::from_u16(d.rule.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        Self::new(
            d.rule.as_str(),
            ApiError::new(status, d.rule.oauth_error(), d.reason.clone()),
        )
    }

    /// The grant's break-glass task is in no break-glass policy any more.
    pub fn no_break_glass_policy(grant: &str, task: &str) -> Self {
        Self::new(
            "no_break_glass_policy",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "grant {grant} names task {task} that no break-glass policy allows any more"
                ),
            ),
        )
    }

    /// A break-glass task asked for another audience.
    pub fn break_glass_audience(task: &str, audience: &str, asked: &str) -> Self {
        Self::new(
            "audience_not_allowed",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                format!(
                    "break-glass task {task} is for audience {audience}, not {}",
                    clip(asked)
                ),
            ),
        )
    }

    /// A break-glass task asked for a scope it does not grant.
    pub fn break_glass_scope(task: &str, scope: &str) -> Self {
        Self::new(
            "scope_not_allowed",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!(
                    "scope {} is not granted by break-glass task {task}",
                    clip(scope)
                ),
            ),
        )
    }

    /// A break-glass task asked for more than its `max_ttl`.
    pub fn break_glass_ttl(asked: u64, task: &str, max: u64) -> Self {
        Self::new(
            "ttl_too_long",
            ApiError::invalid_request(format!(
                "requested_ttl {asked}s is over break-glass task {task}'s max_ttl of {max}s"
            )),
        )
    }

    /// A rate limit's bucket is empty; `what` names the limit.
    pub fn rate_limited(what: &str, wait: Duration) -> Self {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            format!("{what}; retry after {secs}s"),
        );
        e.retry_after = Some(secs);
        Self::new("rate_limited", e)
    }

    /// An open `deny` anomaly holds the identity.
    pub fn held_by_anomaly(identity: &str, a: &crate::anomaly::Anomaly) -> Self {
        Self::new(
            "anomaly_unacknowledged",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "identity {identity} is held by anomaly {} ({}): an admin must acknowledge it (POST /v1/admin/anomalies/{}/ack)",
                    a.id, a.kind, a.id
                ),
            ),
        )
    }

    /// A record (of an anomaly) could not be made durable.
    pub fn audit_unavailable() -> Self {
        Self::new("audit_unavailable", ApiError::audit_unavailable())
    }

    /// Something inside the broker failed (the caller is told nothing more; the log is).
    pub fn internal(rule: &'static str) -> Self {
        Self::new(rule, ApiError::internal())
    }
}
